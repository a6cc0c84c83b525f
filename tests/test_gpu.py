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


def _cupy_cases(rng, dtype):
    """Each CuPy replacement, called through the textbook function it replaces, on fresh
    random inputs (logits up to +-40, where exp(-|l|) underflows in float32)."""
    from npvae import distributions as dist
    from npvae.layers import Dense, FlatParameters, ReLU, Tanh
    from npvae.optim import Adam

    n, z, d = 33, 7, 50
    mu, logvar, eps, dz = (rng.standard_normal((n, z)) for _ in range(4))
    x, logits = rng.uniform(size=(n, d)), 40 * rng.standard_normal((n, d)) ** 3 / 27
    rows, dout, out = rng.standard_normal(n), rng.standard_normal((n, d)), np.maximum(rng.standard_normal((n, d)), 0)
    p0, grads = rng.standard_normal(1000), [rng.standard_normal(1000) for _ in range(3)]

    def a(v):
        return npvae.asarray(v, dtype=dtype)

    def dense():
        layer = Dense(z, d)
        FlatParameters([("d", layer)], seed=0, dtype=dtype)
        dx = layer.backward(a(dout), a(dz))
        return dx, layer.dW, layer.db

    def adam():
        opt = Adam(a(p0), lr=1e-2)
        for g in grads:
            opt.step(a(g))
        return opt.params, opt.m, opt.v

    return {
        "distributions.reparameterize": lambda: dist.reparameterize(a(mu), a(logvar), a(eps)),
        "distributions.reparameterize_backward": lambda: dist.reparameterize_backward(a(dz), a(logvar), a(eps)),
        "distributions.gaussian_kl": lambda: dist.gaussian_kl(a(mu), a(logvar)),
        "distributions.gaussian_kl_backward": lambda: dist.gaussian_kl_backward(-0.25, a(mu), a(logvar))
        + dist.gaussian_kl_backward(a(rows), a(mu), a(logvar)),
        "distributions.bernoulli_log_likelihood": lambda: dist.bernoulli_log_likelihood(a(x), a(logits)),
        "distributions.bernoulli_log_likelihood_backward": lambda: (
            dist.bernoulli_log_likelihood_backward(-1.0 / n, a(x), a(logits)),
            dist.bernoulli_log_likelihood_backward(a(rows), a(x), a(logits))),
        "layers.Dense.backward": dense,
        "layers.ReLU.backward": lambda: ReLU().backward(a(dout), a(out)),
        "layers.Tanh.backward": lambda: Tanh().backward(a(dout), a(np.tanh(out))),
        "optim.Adam.step": adam,
    }


def _replaceable_functions():
    from npvae import distributions as dist
    from npvae.layers import Dense, ReLU, Tanh
    from npvae.optim import Adam

    return [dist.reparameterize, dist.reparameterize_backward, dist.gaussian_kl, dist.gaussian_kl_backward,
            dist.bernoulli_log_likelihood, dist.bernoulli_log_likelihood_backward, Dense.backward, ReLU.backward,
            Tanh.backward, Adam.step]


@pytest.mark.parametrize("dtype, rtol", [("float32", 2e-5), ("float64", 1e-12)])
def test_every_cupy_replacement_equals_its_textbook_function(use_backend, dtype, rtol):
    """On CuPy arrays, each replacement in npvae.fast.cupy_kernels runs (it is counted) and
    gives what the textbook function gives on the same CuPy arrays."""
    cupy_backend_or_skip()
    use_backend("cupy")
    from npvae import replaceable

    names = sorted(n for n, libs in replaceable.active().items() if "cupy" in libs)
    assert names == sorted(_cupy_cases(np.random.default_rng(0), dtype))
    functions = {f.replaceable_name: f for f in _replaceable_functions()}
    for name in names:
        ran, function = [], functions[name]
        fast = replaceable.replacement(function, "cupy")
        replaceable.register(function, "cupy", lambda *a, _f=fast, **k: ran.append(1) or _f(*a, **k))
        try:
            got = _cupy_cases(np.random.default_rng(7), dtype)[name]()
        finally:
            replaceable.register(function, "cupy", fast)
        with npvae.textbook():
            want = _cupy_cases(np.random.default_rng(7), dtype)[name]()
        assert ran, f"{name}: the CuPy replacement did not run"
        got, want = (got if isinstance(got, tuple) else (got,)), (want if isinstance(want, tuple) else (want,))
        for g, w in zip(got, want, strict=True):
            assert type(g).__module__.startswith("cupy") and str(g.dtype) == dtype, name
            g, w = host(g), host(w)
            assert np.all(np.isfinite(g)), name
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * np.abs(w).max(), err_msg=name)


def test_cupy_replacements_step_aside_for_mixed_dtypes(use_backend):
    """A kernel computes in one type, so arrays of two dtypes take the textbook code (no
    error), and the result has NumPy's promoted dtype, as on every other backend."""
    cupy_backend_or_skip()
    use_backend("cupy")
    from npvae import distributions as dist

    rng = np.random.default_rng(5)
    mu, logvar = (npvae.asarray(rng.standard_normal((4, 3)), dtype="float32") for _ in range(2))
    eps = npvae.asarray(rng.standard_normal((4, 3)), dtype="float64")
    z = dist.reparameterize(mu, logvar, eps)
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

    from npvae.backend import PinnedUploads as _PinnedUploads

    gpu_rng, host_rng = npvae.Generator(11), np.random.default_rng(11)
    assert isinstance(gpu_rng._to_device, _PinnedUploads)  # the CuPy backend's own uploads, fast paths or not
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
