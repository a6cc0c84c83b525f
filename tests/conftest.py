"""Shared fixtures. The suite runs on the backend named by NPVAE_BACKEND (numpy by default);
`.ci/run` runs it twice, on numpy and on strict."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import npvae
from npvae import backend

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
