"""Shared fixtures and helpers. The suite runs on the backend named by NPVAE_BACKEND (numpy by
default); `.ci/run` runs it on numpy, on strict, and on numpy with NPVAE_FAST=0. Tests marked
``slow`` (notebook runs, `npvae train` runs, subprocesses) are left out by `pytest -m "not slow"`."""

import csv
import functools
import importlib
import math
import os
import re
import signal
from pathlib import Path

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import npvae
from npvae import backend, layers

settings.register_profile(
    "npvae", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("npvae")

# A test run started as a background job inherits Ctrl-C ignored, and so would every npvae it
# starts; the tests of Ctrl-C need Python's own handler, as a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

EXPECTED_BACKEND = (os.environ.get("NPVAE_BACKEND") or "numpy").strip().lower()
NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# A tiny model for `npvae train` runs on the embedded digits: about a second an epoch.
SMALL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "256", "--no-progress"]


@pytest.fixture
def be():
    """The active backend, the one NPVAE_BACKEND names."""
    active = backend.get_backend()
    assert active.name == EXPECTED_BACKEND
    return active


@pytest.fixture
def use_backend():
    """Switch backend in-process for one test; the suite's backend comes back afterwards."""
    before = backend.get_backend().name

    def switch(name):
        return backend.set_backend(name)

    yield switch
    backend.set_backend(before)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def host(a):
    """Any array as a float64 NumPy array, for comparisons in tests."""
    return np.asarray(npvae.to_numpy(a), dtype=np.float64)


def on_backend(*arrays):
    """Host arrays as float64 arrays of the active backend."""
    return [npvae.asarray(np.asarray(a, dtype=np.float64), "float64") for a in arrays]


def values(shape, lo=-3.0, hi=3.0):
    """A hypothesis strategy: float64 host arrays of ``shape`` with entries in [lo, hi]."""
    return hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False))


def weighted_sum(a, w):
    """sum(a * w): a scalar whose gradient with respect to a is w."""
    return float(backend.get_backend().xp.sum(a * w))


def joined(*grads):
    """Gradients as one host vector. The finite differences of a function carry rounding noise
    of about 1e-16 * |f| / h in every entry, so with |mu| up to 1e3 (|f| up to 1e6) a gradient
    entry of 1e-3 is below the noise; the check is relative to the largest entry of all the
    gradients together, as when they are one parameter vector."""
    return np.concatenate([host(g).ravel() for g in grads])


def one_line(text):
    """``text`` (stderr, an error message, or pytest's ExceptionInfo of an error), stripped,
    after checking that it is one line and no traceback."""
    if isinstance(text, pytest.ExceptionInfo):
        text = str(text.value)
    text = text.strip()
    assert text and "\n" not in text and "Traceback" not in text, text
    return text


def history_rows(path):
    """The rows of a run's history.csv, less the "seconds" column (no two runs share it)."""
    with open(path) as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def read_notebook(path):
    import nbformat

    return nbformat.read(str(path), as_version=4)


@pytest.fixture(scope="session")
def run2(tmp_path_factory):
    """A finished 2-epoch `npvae train` run with SMALL (Z = 2, so it has manifold.png), to read
    or copy from; no test changes it."""
    from npvae import cli

    out = tmp_path_factory.mktemp("run2") / "run"
    assert cli.main(["train", "--epochs", "2", "--out", str(out), *SMALL]) == 0
    return out


def toy_images(n=300, d=36, classes=4, seed=0):
    """Small grey-level "images" in [0, 1]: noisy copies of a few random prototypes, with the
    labels. Enough structure for a VAE to learn in a few epochs, in milliseconds."""
    g = np.random.default_rng(seed)
    prototypes = (g.uniform(size=(classes, d)) > 0.6).astype(np.float64)
    labels = g.integers(0, classes, size=n)
    x = np.clip(prototypes[labels] * 0.8 + 0.1 + 0.1 * g.standard_normal((n, d)), 0.0, 1.0)
    return x.astype(np.float32), labels


def scale_dense_gradient(monkeypatch, name, factor):
    """Break every Dense layer's backward: its ``name`` gradient ("dW" or "db") comes out
    ``factor`` times too large. What a gradient check must catch."""
    original = layers.Dense.backward

    def wrong(self, dout, cache, need_dx=True):
        dx = original(self, dout, cache, need_dx)
        getattr(self, name)[...] = factor * getattr(self, name)
        return dx

    monkeypatch.setattr(layers.Dense, "backward", wrong)


# --- Step 10 item 1: the math tests run the textbook ---------------------------------------------
# The gradient checks, the statistical tests and the properties of the teaching modules test the
# code a student reads, whatever NPVAE_FAST says: their tests run inside ``npvae.textbook()``, as
# does any test marked ``textbook``. Training tests (test_train, test_fast, ...) keep the
# replacements that ``npvae.fit`` runs by default; test_fast compares the two.
MATH_TESTS = ("test_layers", "test_distributions", "test_vae", "test_full_vae", "test_full_covariance",
              "test_gradcheck", "test_optim", "test_metrics")


def pytest_configure(config):
    config.addinivalue_line("markers", "textbook: runs with npvae's replacements off (npvae.textbook())")


def pytest_collection_modifyitems(items):
    for item in items:
        if item.module is not None and item.module.__name__.rpartition(".")[2] in MATH_TESTS:
            item.add_marker(pytest.mark.textbook)


@pytest.fixture(autouse=True)
def _textbook_where_marked(request):
    if request.node.get_closest_marker("textbook") is None:
        yield
    else:
        with npvae.textbook():
            yield


# --- Step 11: the exercises' solutions as functions, and their graders ---------------------------
GRADER_CALL = re.compile(r"^(nb\d\d)\.(check_\w+)\((\w+)\)\s*$", re.M)


@functools.cache
def notebook_exercises():
    """{exercise: (the function its notebook's solution defines, its grader)} for every exercise of
    the notebooks. The exercise cell runs as the notebook runs it, in a namespace with npvae,
    ``dist``, ``backend``, ``math`` and ``np`` (what the notebooks' setup cells import); the grader
    is the one the grader cell calls, ``nbNN.check_x(name)``."""
    from npvae import distributions, exercises

    found = {}
    for path in NOTEBOOKS:
        cells = read_notebook(path).cells
        for cell, grader in zip(cells, cells[1:]):
            exercise = exercises.exercise_id(cell)
            if exercise is None:
                continue
            module, check, name = GRADER_CALL.search(grader.source).groups()
            namespace = {"npvae": npvae, "dist": distributions, "backend": backend, "math": math, "np": np}
            exec(compile(cell.source, f"<exercise {exercise}>", "exec"), namespace)
            found[exercise] = (namespace[name], getattr(importlib.import_module(f"npvae.grading.{module}"), check))
    return found
