"""The backend: selection by NPVAE_BACKEND, clear errors, the edges, and the generator."""

import importlib
import sys
import types

import numpy as np
import pytest

import npvae
from npvae import backend, cli
from conftest import EXPECTED_BACKEND, host


def test_the_suite_runs_on_the_backend_it_claims(be):
    # Arrays that the model makes come from the active namespace, not from NumPy by accident.
    model = npvae.VAE(4, (3,), 2, seed=0)
    assert model.backend.name == EXPECTED_BACKEND
    assert backend.xp is be.xp
    for a in (model.params, model.grads, model.encode(np.full((2, 4), 0.5))[0]):
        assert be.owns(a), type(a)
        assert backend.array_namespace(a) is be.xp
    if EXPECTED_BACKEND == "strict":
        assert type(model.params).__module__.startswith("array_api_strict")
        assert "device1" in str(model.params.device)
    if EXPECTED_BACKEND == "numpy":
        assert isinstance(model.params, np.ndarray)


def test_unknown_backend_name_says_what_to_do():
    with pytest.raises(backend.BackendError, match=r"NPVAE_BACKEND: expected one of numpy, cupy, strict, got 'tpu'"):
        backend.make_backend("tpu")


def test_missing_cupy_says_how_to_install(monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *args):
        if name == "cupy":
            raise ImportError("No module named 'cupy'")
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake_import)
    with pytest.raises(backend.BackendError, match="CuPy is not installed.*pip install cupy-cuda12x"):
        backend.make_backend("cupy")


def test_cupy_without_a_gpu_says_so(monkeypatch):
    def no_device():
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    fake = types.ModuleType("cupy")
    fake.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=no_device))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(backend.BackendError, match="cannot use a GPU here.*no CUDA-capable device.*nvidia-smi"):
        backend.make_backend("cupy")


def test_env_variable_picks_the_backend(monkeypatch, use_backend):
    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.setenv("NPVAE_BACKEND", "strict")
    assert backend.get_backend().name == "strict"
    monkeypatch.setattr(backend, "_active", None)
    monkeypatch.delenv("NPVAE_BACKEND")
    assert backend.get_backend().name == "numpy"


def test_switch_in_process(use_backend):
    use_backend("strict")
    model = npvae.VAE(4, (3,), 2)
    assert type(model.params).__module__.startswith("array_api_strict")
    use_backend("numpy")
    assert isinstance(npvae.VAE(4, (3,), 2).params, np.ndarray)
    # A model keeps the backend it was made on.
    assert type(model.params).__module__.startswith("array_api_strict")


def test_strict_refuses_what_a_gpu_would(use_backend):
    be = use_backend("strict")
    a = be.asarray(np.ones((2, 3)))
    with pytest.raises(RuntimeError, match="NumPy"):
        np.asarray(a)  # an implicit device-to-host conversion
    with pytest.raises(TypeError):
        a + np.ones((2, 3))  # mixing with a host array
    assert not hasattr(a, "astype")  # outside the standard


def test_asarray_and_to_numpy_round_trip(be):
    data = np.arange(12, dtype=np.float64).reshape(3, 4) / 7
    a = npvae.asarray(data, dtype="float32")
    assert be.owns(a)
    assert a.dtype == be.xp.float32
    back = npvae.to_numpy(a)
    assert isinstance(back, np.ndarray) and back.dtype == np.float32
    np.testing.assert_allclose(back, data, rtol=1e-6)
    assert npvae.asarray([[1.0, 2.0]], dtype="float64").dtype == be.xp.float64
    np.testing.assert_array_equal(npvae.to_numpy(npvae.asarray(a)), back)  # already on the backend


def test_dtype_policy(be):
    assert backend.DEFAULT_DTYPE == "float32"
    assert be.dtype() == be.xp.float32
    assert be.dtype("float64") == be.xp.float64
    with pytest.raises(ValueError, match=r"dtype: expected one of \('float32', 'float64'\), got 'float16'"):
        be.dtype("float16")


def test_generator_is_seeded_and_explicit(be):
    g1, g2 = npvae.Generator(7), npvae.Generator(7)
    a, b = g1.standard_normal((5, 3)), g2.standard_normal((5, 3))
    assert be.owns(a) and a.dtype == be.xp.float32
    np.testing.assert_array_equal(host(a), host(b))
    assert not np.array_equal(host(a), host(g1.standard_normal((5, 3))))  # the stream moves on
    u = host(g1.uniform((1000,), low=-2.0, high=3.0, dtype="float64"))
    assert u.min() >= -2.0 and u.max() < 3.0 and abs(u.mean() - 0.5) < 0.25
    p = host(g1.permutation(10)).astype(int)
    assert sorted(p.tolist()) == list(range(10))


def test_generator_gives_the_same_numbers_on_every_backend(use_backend):
    use_backend("numpy")
    on_numpy = host(npvae.Generator(3).standard_normal((4, 2), dtype="float64"))
    use_backend("strict")
    on_strict = host(npvae.Generator(3).standard_normal((4, 2), dtype="float64"))
    np.testing.assert_array_equal(on_numpy, on_strict)


def test_same_model_same_numbers_on_numpy_and_strict(use_backend, rng):
    x = rng.uniform(size=(6, 5))
    eps = rng.standard_normal((6, 2))
    results = {}
    for name in ("numpy", "strict"):
        use_backend(name)
        model = npvae.VAE(5, (4,), 2, dtype="float64", seed=11)
        res = model.loss_and_grads(x, eps=eps)
        results[name] = (res.loss, host(res.grads))
    assert results["numpy"][0] == pytest.approx(results["strict"][0], rel=1e-12)
    np.testing.assert_allclose(results["numpy"][1], results["strict"][1], rtol=1e-10, atol=1e-13)


def test_info_names_backend_and_versions(be):
    info = cli.info()
    assert info["backend"] == be.name
    assert info["numpy"] == np.__version__
    assert info["default dtype"] == "float32"
