"""CuPy on a real GPU. Skipped cleanly where there is no CuPy or no usable GPU (as in CI).

On a GPU machine, also run the whole suite with NPVAE_BACKEND=cupy and record the summary
line in tests/GPU_RUNS.md.
"""

import numpy as np
import pytest

import npvae
from npvae import backend
from conftest import host


def cupy_backend_or_skip():
    try:
        return backend.make_backend("cupy")
    except backend.BackendError as exc:
        pytest.skip(f"no usable GPU: {exc}")


pytestmark = pytest.mark.gpu


def test_cupy_gives_the_numbers_numpy_gives(use_backend):
    cupy_backend_or_skip()
    rng = np.random.default_rng(0)
    x, eps = rng.uniform(size=(16, 30)), rng.standard_normal((16, 4))
    results = {}
    for name in ("numpy", "cupy"):
        use_backend(name)
        model = npvae.VAE(30, (20, 10), 4, dtype="float64", seed=9)
        res = model.loss_and_grads(x, eps=eps)
        results[name] = (res.loss, host(res.grads), type(model.params).__module__)
    assert results["cupy"][2].startswith("cupy")
    assert results["numpy"][0] == pytest.approx(results["cupy"][0], rel=1e-10)
    np.testing.assert_allclose(results["numpy"][1], results["cupy"][1], rtol=1e-8, atol=1e-12)


def test_cupy_gradient_check(use_backend):
    cupy_backend_or_skip()
    use_backend("cupy")
    rng = np.random.default_rng(1)
    model = npvae.VAE(8, (6, 5), 3, likelihood="gaussian", activation="tanh", dtype="float64", seed=2)
    report = npvae.gradcheck.check_model(model, rng.standard_normal((4, 8)), rng.standard_normal((4, 3)))
    assert report.max_error < 1e-6, str(report)


def test_fused_cupy_kernels_match_the_formulas(use_backend):
    """The fused CuPy kernels (Adam, the activation gradients) against the math on the host."""
    cupy_backend_or_skip()
    use_backend("cupy")
    from npvae import kernels

    rng = np.random.default_rng(3)
    for dtype, rtol in (("float32", 2e-6), ("float64", 1e-13)):
        p, g = rng.standard_normal(1000), rng.standard_normal(1000)
        m, v = rng.standard_normal(1000) * 1e-2, rng.uniform(size=1000) * 1e-3
        arrays = [npvae.asarray(a, dtype=dtype) for a in (p, g, m, v)]
        generic = [npvae.asarray(a, dtype=dtype) for a in (p, g, m, v)]
        kernels.adam_update(*arrays, None, 1e-3, 0.9, 0.999, 1e-8)
        kernels._adam_generic(*generic, 1e-3, 0.9, 0.999, 1e-8)  # the plain xp code, on CuPy arrays
        m_new, v_new = 0.9 * m + g, 0.999 * v + g * g
        expected = (p - 1e-3 * m_new / (np.sqrt(v_new) + 1e-8), g, m_new, v_new)
        for got, xp_code, want in zip(arrays, generic, expected, strict=True):
            np.testing.assert_allclose(host(got), want, rtol=rtol, atol=1e-12)
            np.testing.assert_allclose(host(got), host(xp_code), rtol=rtol, atol=1e-12)
        dout, out = rng.standard_normal((9, 7)), np.maximum(rng.standard_normal((9, 7)), 0)
        relu = kernels.relu_backward(npvae.asarray(dout, dtype=dtype), npvae.asarray(out, dtype=dtype))
        np.testing.assert_allclose(host(relu), dout * (out > 0), rtol=rtol)
        tanh = kernels.tanh_backward(npvae.asarray(dout, dtype=dtype), npvae.asarray(out, dtype=dtype))
        np.testing.assert_allclose(host(tanh), dout * (1 - out * out), rtol=rtol, atol=1e-7)
        assert type(relu).__module__.startswith("cupy") and str(relu.dtype) == dtype


def _latent_and_decoder_cases(rng, dtype):
    """Each fused kernel of npvae.distributions, called through the public function that
    uses it, on fresh random inputs (logits up to +-40, where exp(-|l|) underflows in float32)."""
    from npvae import distributions as dist

    n, z, d = 33, 7, 50
    mu, logvar, eps, dz = (rng.standard_normal((n, z)) for _ in range(4))
    x, logits = rng.uniform(size=(n, d)), 40 * rng.standard_normal((n, d)) ** 3 / 27
    dkl_rows = rng.standard_normal(n)

    def a(v):
        return npvae.asarray(v, dtype=dtype)

    return {
        "reparameterize": lambda: dist.reparameterize(a(mu), a(logvar), a(eps))[0],
        "reparameterize_backward": lambda: dist.reparameterize_backward(a(dz), a(logvar), a(eps))[1],
        "gaussian_kl": lambda: dist.gaussian_kl(a(mu), a(logvar)),
        "gaussian_kl_backward": lambda: dist.gaussian_kl_backward(-0.25, a(mu), a(logvar))
        + dist.gaussian_kl_backward(a(dkl_rows), a(mu), a(logvar)),
        "bernoulli_log_likelihood": lambda: dist.bernoulli_log_likelihood_and_grad(a(x), a(logits))[0],
        "bernoulli_grad": lambda: dist.bernoulli_log_likelihood_and_grad(a(x), a(logits))[1],
    }


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_fused_distribution_kernels_match_the_xp_code(use_backend, monkeypatch, dtype, rtol):
    """On CuPy, the reparameterization, the KL, their gradients and the Bernoulli decoder run
    as fused kernels; each gives what the plain xp code gives on NumPy, and is really used."""
    cupy_backend_or_skip()
    from npvae import kernels

    launched = []
    build = kernels._cupy_kernel
    monkeypatch.setattr(kernels, "_cupy_kernel", lambda cupy, name: launched.append(name) or build(cupy, name))
    fused_names = (set(kernels._CUPY_SOURCES) | set(kernels._CUPY_ROW_SUMS)) - {"adam", "relu_backward", "tanh_backward"}
    for name in sorted(fused_names):
        results = {}
        for backend_name in ("numpy", "cupy"):
            use_backend(backend_name)
            out = _latent_and_decoder_cases(np.random.default_rng(7), dtype)[name]()
            outs = out if isinstance(out, tuple) else (out,)
            results[backend_name] = [host(o) for o in outs]
            if backend_name == "cupy":
                assert all(str(o.dtype) == dtype for o in outs), name
        assert name in launched, f"{name}: the fused kernel was not used on CuPy"
        for want, got in zip(results["numpy"], results["cupy"], strict=True):
            assert np.all(np.isfinite(got)), name
            np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * np.abs(want).max(), err_msg=name)


def test_fused_kernels_step_aside_for_mixed_dtypes(use_backend):
    """A kernel computes in one type, so arrays of two dtypes take the xp code (no error),
    and the result has NumPy's promoted dtype, as on every other backend."""
    cupy_backend_or_skip()
    use_backend("cupy")
    from npvae import distributions as dist, kernels

    rng = np.random.default_rng(5)
    mu, logvar = (npvae.asarray(rng.standard_normal((4, 3)), dtype="float32") for _ in range(2))
    eps = npvae.asarray(rng.standard_normal((4, 3)), dtype="float64")
    assert kernels.fused("reparameterize", mu, logvar, eps) is None
    z, _ = dist.reparameterize(mu, logvar, eps)
    assert str(z.dtype) == "float64"
    want = host(mu) + np.exp(host(logvar) / 2) * host(eps)
    np.testing.assert_allclose(host(z), want, rtol=1e-6)


def test_generator_on_cupy_gives_numpys_draws_while_the_gpu_is_busy(use_backend):
    """The draws reach the GPU through pinned buffers used in turn, copied without waiting for
    the GPU: with work queued ahead of every copy, each draw still arrives intact (a buffer
    overwritten before its copy ran would show here), equal to NumPy's draws from the seed."""
    cupy_backend_or_skip()
    use_backend("cupy")
    import cupy

    from npvae.backend import _PinnedUploads

    gpu_rng, host_rng = npvae.Generator(11), np.random.default_rng(11)
    busy = cupy.ones((2048, 2048), dtype=cupy.float32)
    draws, expected = [], []
    for i in range(3 * _PinnedUploads.SLOTS):
        busy = (busy @ busy) * (1.0 / 2048)  # queued GPU work ahead of the copy
        shape = (64 * (i % 5 + 1), 20)  # sizes that grow and shrink: buffers replaced and reused
        draws.append(gpu_rng.standard_normal(shape))
        expected.append(host_rng.standard_normal(shape, dtype=np.float32))
    draws.append(gpu_rng.permutation(1000))
    expected.append(host_rng.permutation(1000))
    n_big = _PinnedUploads.MAX_BYTES // 4 + 1  # above the pinned size: the ordinary copy
    draws.append(gpu_rng.uniform((n_big,)))
    expected.append(host_rng.uniform(0.0, 1.0, size=(n_big,)).astype(np.float32))
    for got, want in zip(draws, expected, strict=True):
        assert type(got).__module__.startswith("cupy") and got.dtype == want.dtype
        np.testing.assert_array_equal(npvae.to_numpy(got), want)
