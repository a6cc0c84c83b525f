"""Step 11, item 8: every notebook's setup cell calls one helper, ``npvae.exercises.setup_notebook()``,
which turns the textbook code on (Step 10's rule), prints one line naming the backend and
returns the backend's array namespace ``xp``."""

import contextvars
from pathlib import Path

import nbformat
import pytest

import npvae
from npvae import replaceable

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


def test_setup_notebook_turns_the_textbook_on_prints_one_line_and_returns_xp(capsys):
    from npvae.exercises import setup_notebook

    context = contextvars.copy_context()  # the switch it turns stays in this copy, not in the test's context
    xp = context.run(setup_notebook)
    assert xp is npvae.get_backend().xp
    assert capsys.readouterr().out == f"npvae backend: {npvae.get_backend().name} (the textbook code)\n"
    assert context.run(replaceable.active) == {}  # the textbook code runs in the cells that follow
    if replaceable.FAST:
        assert replaceable.active() != {}  # ... there, and only there


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name[:2] for p in NOTEBOOKS])
def test_every_setup_cell_calls_the_helper_and_repeats_none_of_it(path):
    setup = next(c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code").source
    assert "setup_notebook()" in setup
    for repeated in ("npvae.textbook()", "get_backend().xp", "print(\"npvae backend:\"", "print(\"backend:\""):
        assert repeated not in setup, f"{path.name}: its setup cell still has {repeated!r}"
