"""Shared fixtures. The suite runs on the backend named by NPVAE_BACKEND (numpy by default);
`.ci/run` runs it twice, on numpy and on strict."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import npvae
from npvae import backend, layers

settings.register_profile(
    "npvae", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("npvae")

EXPECTED_BACKEND = (os.environ.get("NPVAE_BACKEND") or "numpy").strip().lower()


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
