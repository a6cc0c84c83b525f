"""Step 10, items 1-3: the student runs what they read.

The notebooks, the graders and the math tests run the textbook functions whatever NPVAE_FAST
says; training (``npvae.fit``) keeps the replacements. A replaced function says so in its
docstring and repr. ``npvae.textbook()`` is context-local (a block in one thread leaves the
others alone; the call form holds for the rest of a Jupyter session), and the library a call
dispatches on comes from all its array arguments: a mix of libraries is refused.
"""

import contextlib
import contextvars
import inspect
import threading
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

import npvae
from npvae import distributions as dist
from npvae import replaceable
from npvae.layers import Dense, ReLU, Tanh
from npvae.optim import Adam
from conftest import EXPECTED_BACKEND, MATH_TESTS, notebook_exercises

REPLACEABLE = [dist.reparameterize, dist.reparameterize_backward, dist.gaussian_kl, dist.gaussian_kl_backward,
               dist.bernoulli_log_likelihood, dist.bernoulli_log_likelihood_backward, Dense.backward, ReLU.backward,
               Tanh.backward, Adam.step]
NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
fast_on = pytest.mark.skipif(not replaceable.FAST, reason="NPVAE_FAST=0: no replacement ever runs")


def library():
    """The library of the active backend's arrays ("numpy", "array_api_strict")."""
    return type(npvae.asarray([0.0])).__module__.split(".")[0]


@contextlib.contextmanager
def spied(*functions):
    """Register, for the active backend's arrays, a replacement of each function that records
    its name and runs the textbook; the previous registrations come back afterwards."""
    lib, ran = library(), []
    before = [(f, replaceable.replacement(f, lib)) for f in functions]
    for f in functions:
        replaceable.register(f, lib, lambda *a, _f=f, **k: ran.append(_f.replaceable_name) or _f.textbook(*a, **k))
    try:
        yield ran
    finally:
        for f, r in before:
            replaceable.register(f, lib, r)


def kl_inputs():
    rng = np.random.default_rng(0)
    return [npvae.asarray(rng.standard_normal((3, 2)), dtype="float64") for _ in range(2)]


# --- item 1: the graders, the math tests and the notebooks run the textbook ---------------------
@fast_on
def test_the_graders_compare_with_the_textbook_never_a_replacement(capsys):
    # the notebooks' own solutions: npvae's function itself is refused by its grader (Step 11)
    exercises = notebook_exercises()
    graded = ("02.1", "02.2", "03.1", "03.2", "04.1", "04.2", "07.1", "07.2")
    with spied(*REPLACEABLE) as ran:
        for exercise in graded:
            solution, grader = exercises[exercise]
            grader(solution)
        assert ran == []
        dist.gaussian_kl(*kl_inputs())  # outside a grader the replacement runs: the spy sees calls
        assert ran == ["distributions.gaussian_kl"]
    assert capsys.readouterr().out.count("passed") == len(graded)


@fast_on
def test_training_runs_the_replacements_and_a_textbook_block_turns_them_off():
    x = np.random.default_rng(0).uniform(size=(64, 12)).astype(np.float32)
    with spied(Adam.step) as ran:
        npvae.fit(npvae.VAE(12, (8,), 2, seed=0), x, epochs=1, batch_size=32, progress=False)
        assert ran == ["optim.Adam.step"] * 2
        with npvae.textbook():
            npvae.fit(npvae.VAE(12, (8,), 2, seed=0), x, epochs=1, batch_size=32, progress=False)
        assert len(ran) == 2


@pytest.mark.textbook
@fast_on
def test_a_math_test_runs_the_textbook():
    assert replaceable.active() == {}
    with spied(dist.gaussian_kl) as ran:
        dist.gaussian_kl(*kl_inputs())
    assert ran == []


def test_the_math_test_modules_are_named_and_exist():
    here = Path(__file__).parent
    assert sorted(MATH_TESTS) == ["test_distributions", "test_full_covariance", "test_full_vae", "test_gradcheck",
                                  "test_layers", "test_metrics", "test_optim", "test_vae"]
    assert all((here / f"{name}.py").exists() for name in MATH_TESTS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_notebook_turns_the_textbook_on_in_its_setup_cell(path):
    """The setup cell calls npvae.exercises.setup_notebook(), which calls npvae.textbook()
    (tests/test_notebook_setup.py checks that it does, and the next test that it holds)."""
    first = next(c for c in nbformat.read(str(path), as_version=4).cells if c.cell_type == "code")
    assert any(line.startswith("xp = setup_notebook()  #") for line in first.source.splitlines())


@fast_on
def test_the_setup_cells_switch_holds_in_the_next_notebook_cell():
    """A kernel runs notebook 02's setup cell, then a cell that checks which function runs."""
    setup = next(c for c in nbformat.read(str(NOTEBOOKS[1]), as_version=4).cells if c.cell_type == "code")
    check = ("from npvae import distributions as dist, replaceable\n"
             "ran = []\n"
             "lib = type(npvae.asarray([0.0])).__module__.split('.')[0]\n"
             "replaceable.register(dist.gaussian_kl, lib, lambda *a: ran.append(1))\n"
             "dist.gaussian_kl(npvae.asarray([[0.5]]), npvae.asarray([[0.1]]))\n"
             "assert ran == [], 'the replacement ran in the cell after npvae.textbook()'\n"
             "print(replaceable.active())")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(setup.source), nbformat.v4.new_code_cell(check)]
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS[1].parent)}}).execute()
    assert nb.cells[1].outputs[-1]["text"].strip() == "{}"


# --- item 2: a replaced function says so --------------------------------------------------------
def fake_kl(mu, logvar):
    """A stand-in replacement."""


@fast_on
def test_a_replaced_function_names_its_replacement_in_its_docstring_and_repr():
    lib = library()
    name = {"numpy": "NumPy", "array_api_strict": "array_api_strict"}[lib]
    before = replaceable.replacement(dist.gaussian_kl, lib)
    replaceable.register(dist.gaussian_kl, lib, fake_kl)
    try:
        first = dist.gaussian_kl.__doc__.splitlines()[0]
        assert first.startswith("For ") and f"{name} arrays, test_textbook_path.fake_kl" in first
        assert "npvae.textbook()" in first and "NPVAE_FAST=0" in first
        assert "test_textbook_path.fake_kl" in repr(dist.gaussian_kl)
        assert dist.gaussian_kl.__doc__.endswith(inspect.cleandoc(dist.gaussian_kl.textbook.__doc__))  # the textbook's own text follows
    finally:
        replaceable.register(dist.gaussian_kl, lib, before)
    assert "fake_kl" not in dist.gaussian_kl.__doc__ and "fake_kl" not in repr(dist.gaussian_kl)


@fast_on
@pytest.mark.skipif(EXPECTED_BACKEND != "numpy", reason="names npvae.fast's registrations")
def test_the_docstrings_name_npvae_fasts_replacements():
    assert Adam.step.__doc__.splitlines()[0].startswith(
        "For NumPy arrays, npvae.fast.numpy_paths.adam_step runs instead, for CuPy arrays, "
        "npvae.fast.cupy_kernels.adam_step")
    assert Dense.backward.__doc__.splitlines()[0].startswith(
        "For NumPy and CuPy arrays, npvae.fast.dense_backward runs instead")
    assert dist.gaussian_kl.__doc__.splitlines()[0].startswith(
        "For CuPy arrays, npvae.fast.cupy_kernels.gaussian_kl runs instead")
    assert "npvae.fast.numpy_paths.adam_step" in repr(Adam.step)
    help_text = __import__("pydoc").render_doc(Adam.step)
    assert "npvae.fast.numpy_paths.adam_step runs instead" in help_text


# --- item 3: the switch is context-local, the dispatch looks at every array -------------------
@fast_on
def test_a_textbook_block_in_one_thread_leaves_the_fast_paths_on_in_another():
    inside, seen = threading.Event(), []

    def other_thread():
        inside.wait(10)
        with spied(dist.gaussian_kl) as ran:
            dist.gaussian_kl(*kl_inputs())
        seen.extend(ran)

    worker = threading.Thread(target=other_thread)
    worker.start()
    with npvae.textbook():
        inside.set()
        worker.join(30)
    assert seen == ["distributions.gaussian_kl"]


@fast_on
def test_the_call_form_holds_for_the_rest_of_its_context_and_only_there():
    context = contextvars.copy_context()
    context.run(npvae.textbook)
    with spied(dist.gaussian_kl) as ran:
        context.run(dist.gaussian_kl, *kl_inputs())
        assert ran == []
        dist.gaussian_kl(*kl_inputs())  # this context: untouched
        assert ran == ["distributions.gaussian_kl"]
        context.run(npvae.textbook, False)  # and back on
        context.run(dist.gaussian_kl, *kl_inputs())
        assert len(ran) == 2


def test_a_mix_of_array_libraries_is_refused_in_one_line():
    strict = pytest.importorskip("array_api_strict")
    mu = np.zeros((2, 3))
    with pytest.raises(TypeError, match=r"^distributions\.gaussian_kl: arrays of two libraries, "
                                        r"array_api_strict and numpy; put them on one backend \(npvae\.asarray\)$"):
        dist.gaussian_kl(mu, strict.asarray(mu))
    with pytest.raises(TypeError, match=r"^distributions\.gaussian_kl: arrays of two libraries"):
        dist.gaussian_kl(strict.asarray(mu), mu)  # whichever comes first


def test_library_of_names_arrays_only():
    strict = pytest.importorskip("array_api_strict")
    from npvae.backend import library_of

    assert library_of(np.zeros(2)) == "numpy"
    assert library_of(strict.asarray([1.0])) == "array_api_strict"
    for other in (1.0, np.float32(2.0), [1.0], None, npvae.get_backend()):  # numbers, lists, a Backend: not arrays
        assert library_of(other) is None
