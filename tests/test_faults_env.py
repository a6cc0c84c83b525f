"""Step 9 faults in the environment and the exercises: NPVAE_FAST's spellings (a value npvae does
not know is refused in one line), `npvae exercises` on malformed notebooks (one line naming the
file and the key, nothing written), and student copies whose untouched stubs end in one
NotImplementedError each (no cascade; skipping the challenge 08.2 leaves the rest of 08 running).
"""

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import EXPECTED_BACKEND, NOTEBOOK_DIR, NOTEBOOKS, read_notebook
from npvae import cli
from npvae import exercises as ex
from npvae import replaceable

NOTEBOOK_08 = NOTEBOOK_DIR / "08_backends_and_gradient_checks.ipynb"


def run_python(args, **env):
    """``python args...`` with NPVAE_* set as given (the numpy backend unless said otherwise)."""
    full = {**os.environ, "NPVAE_BACKEND": "numpy", **env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, timeout=120)


# --- 4. NPVAE_FAST: 1 or 0, a few documented spellings, anything else refused --------------------
@pytest.mark.parametrize("value, on", [
    (None, True), ("", True), ("  ", True), ("1", True), (" 1\n", True), ("true", True), ("On", True),
    ("YES", True), ("0", False), ("0 ", False), (" 0", False), ("false", False), ("OFF", False), ("no", False),
])
def test_npvae_fast_spellings(value, on):
    assert replaceable.fast_setting(value) is on


@pytest.mark.parametrize("value", ["maybe", "2", "00", "-1", "0 1", "of", "disable"])
def test_npvae_fast_refuses_other_values(value):
    with pytest.raises(ValueError, match=r"^NPVAE_FAST: expected 1 .* or 0 .*; got " + re.escape(repr(value)) + "$"):
        replaceable.fast_setting(value)


@pytest.mark.slow
def test_npvae_fast_maybe_is_refused_at_import_and_by_the_command_in_one_line():
    imported = run_python(["-c", "import npvae"], NPVAE_FAST="maybe")
    assert imported.returncode != 0
    assert imported.stderr.strip().splitlines()[-1].startswith("ValueError: NPVAE_FAST: expected 1"), imported.stderr
    info = run_python(["-m", "npvae", "info"], NPVAE_FAST="maybe")
    assert info.returncode == 2 and info.stdout == "", info.stdout
    lines = info.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npvae info: error: NPVAE_FAST: expected 1"), info.stderr
    assert "got 'maybe'" in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("value", ["0 ", "off"])
def test_npvae_fast_off_whatever_the_spelling_and_info_says_why(value):
    code = "import sys, npvae; from npvae import cli; print('npvae.fast' in sys.modules); print(cli.info()['fast paths'])"
    out = run_python(["-c", code], NPVAE_FAST=value)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["False", f"none: the textbook code runs (NPVAE_FAST={value.strip()})"]


# --- 11. `npvae exercises` on malformed notebooks: one line naming the file and the key ----------
def good_notebook():
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("# setup\nimport math"),
        nbformat.v4.new_code_cell("# Exercise 01.1: a square\ndef square(a):\n    ### BEGIN SOLUTION\n    return a * a\n"
                                  "    ### END SOLUTION\n", metadata={"npvae": {"exercise": "01.1"}}),
    ]
    return json.loads(nbformat.writes(nb))


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


def with_cell_metadata(d, metadata):
    d = json.loads(json.dumps(d))
    d["cells"][1]["metadata"] = metadata
    return d


BAD_NOTEBOOKS = {  # name: (file text, what the one line must say besides the file's name)
    "no_cells": (json.dumps(without(good_notebook(), "cells")), "cells"),
    "cells_a_dict": (json.dumps({**good_notebook(), "cells": {"0": {}}}), "cells"),
    "cells_a_string": (json.dumps({**good_notebook(), "cells": "abc"}), "cells"),
    "a_cell_a_string": (json.dumps({**good_notebook(), "cells": ["cell"]}), "cells[0]"),
    "source_a_number": (json.dumps({**good_notebook(), "cells": [{"cell_type": "code", "source": 5, "metadata": {}}]}),
                        "cells[0].source"),
    "notebook_metadata_a_list": (json.dumps({**good_notebook(), "metadata": [1]}), "metadata"),
    "cell_metadata_a_list": (json.dumps(with_cell_metadata(good_notebook(), [1])), "cells[1].metadata"),
    "cell_metadata_a_number": (json.dumps(with_cell_metadata(good_notebook(), 7)), "cells[1].metadata"),
    "npvae_metadata_a_list": (json.dumps(with_cell_metadata(good_notebook(), {"npvae": [1]})), "cells[1].metadata.npvae"),
    "npvae_metadata_a_string": (json.dumps(with_cell_metadata(good_notebook(), {"npvae": "x"})), "cells[1].metadata.npvae"),
    "a_list": ("[1, 2]", "a JSON object"),
    "not_json": ("{not json", "not JSON"),
    "not_text": ("\udcff\udcfe garbage", "not JSON"),
}


def expect_one_line_and_nothing_written(tmp_path, capsys, bad, words):
    out = tmp_path / "students"
    assert cli.main(["exercises", str(out), "--notebooks", str(tmp_path / "src")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("npvae exercises: error: "), err
    assert str(bad) in err and words in err, err
    assert not out.exists()  # not even the good notebook, which comes first


@pytest.mark.parametrize("name", list(BAD_NOTEBOOKS))
def test_npvae_exercises_refuses_a_malformed_notebook_in_one_line(name, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "01_good.ipynb").write_text(json.dumps(good_notebook()))
    text, words = BAD_NOTEBOOKS[name]
    bad = src / f"02_{name}.ipynb"
    bad.write_bytes(text.encode("utf-8", "surrogateescape"))
    expect_one_line_and_nothing_written(tmp_path, capsys, bad, words)


@pytest.mark.parametrize("kind", ["folder", "dangling link", "fifo"])
def test_npvae_exercises_refuses_an_unreadable_notebook_in_one_line(kind, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "01_good.ipynb").write_text(json.dumps(good_notebook()))
    bad = src / "02_bad.ipynb"
    if kind == "folder":
        bad.mkdir()
    elif kind == "dangling link":
        bad.symlink_to(tmp_path / "gone.ipynb")
    else:
        os.mkfifo(bad)  # reading it would wait for a writer for ever
    expect_one_line_and_nothing_written(tmp_path, capsys, bad, "a notebook file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_npvae_exercises_refuses_a_notebook_it_may_not_read(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "01_good.ipynb").write_text(json.dumps(good_notebook()))
    bad = src / "02_secret.ipynb"
    bad.write_text(json.dumps(good_notebook()))
    bad.chmod(0)
    expect_one_line_and_nothing_written(tmp_path, capsys, bad, "cannot read")


def test_a_malformed_exercise_cell_is_named_by_file_and_cell(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    nb = good_notebook()
    nb["cells"][1]["source"] = "# a cell\n### BEGIN SOLUTION\n### END SOLUTION\n"
    (src / "01_good.ipynb").write_text(json.dumps(good_notebook()))
    (src / "02_bad.ipynb").write_text(json.dumps(nb))
    expect_one_line_and_nothing_written(tmp_path, capsys, src / "02_bad.ipynb", "cells[1]: a cell with")


# --- 23. untouched stubs: one NotImplementedError each, at the exercise or its grader ----------------
def exercises_in(nb):
    """[(exercise id, index of its cell)] in the order of the notebook."""
    return [(ex.exercise_id(c), i) for i, c in enumerate(nb.cells) if ex.exercise_id(c)]


def errors_of_a_full_run(nb):
    """Execute every cell of ``nb`` (an error does not stop the run); [(cell index, error name,
    error value)] of the cells that raised."""
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(NOTEBOOK_DIR)}}).execute()
    return [(i, out.ename, out.evalue) for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "error"]


WITH_EXERCISES = [p for p in NOTEBOOKS if exercises_in(read_notebook(p))]


@pytest.mark.slow
@pytest.mark.skipif(EXPECTED_BACKEND != "numpy" or not replaceable.FAST,
                    reason="run once, on NumPy with the default setting: the stubs are backend-free")
@pytest.mark.parametrize("path", WITH_EXERCISES, ids=[p.name for p in WITH_EXERCISES])
def test_a_student_copy_ends_each_stub_in_one_not_implemented_error(path):
    original = read_notebook(path)
    errors = errors_of_a_full_run(ex.student_copy(original))
    expected = exercises_in(original)
    assert len(errors) == len(expected), f"expected one NotImplementedError per exercise {expected}, got {errors}"
    for (exercise, index), (at, name, value) in zip(expected, errors):
        assert name == "NotImplementedError" and f"Exercise {exercise}" in value, (exercise, at, name, value)
        assert at in (index, index + 1), f"exercise {exercise} (cell {index}) stopped cell {at}: {name}: {value}"


@pytest.mark.slow
def test_skipping_the_challenge_08_2_leaves_the_rest_of_08_running():
    original = read_notebook(NOTEBOOK_08)
    challenge = dict(exercises_in(original))["08.2"]
    nb = ex.student_copy(original, only=["08.2"])
    assert "### BEGIN SOLUTION" in nb.cells[dict(exercises_in(original))["08.1"]].source  # 08.1 keeps its solution
    errors = errors_of_a_full_run(nb)
    assert [(i, name) for i, name, _ in errors] == [(challenge + 1, "NotImplementedError")], errors
    after = [c for c in nb.cells[challenge + 2:] if c.cell_type == "code"]
    assert after and all(c.execution_count is not None for c in after)
