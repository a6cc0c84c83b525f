"""The NumPy fast paths in npvae.kernels against the generic array-API versions.

Each kernel runs twice on the same numbers: on the numpy backend (its fast path: out=,
chunks, threads) and on the strict backend (the plain xp code every other backend runs).
"""

import numpy as np
import pytest

import npvae
from npvae import distributions as dist
from npvae import kernels, optim
from conftest import host


def on_both(use_backend, fn, *host_arrays):
    """fn(*arrays) on numpy and on strict; returns each run's arrays afterwards (as host)."""
    results = {}
    for name in ("numpy", "strict"):
        be = use_backend(name)
        arrays = [be.asarray(a.copy()) for a in host_arrays]
        out = fn(*arrays)
        results[name] = [host(a) for a in arrays] + ([host(out)] if out is not None else [])
    return results["numpy"], results["strict"]


@pytest.mark.parametrize("size", [10, kernels.CHUNK * 3 + 17])  # one chunk; several, uneven
def test_adam_update(use_backend, size, rng):
    p, g = rng.standard_normal(size).astype(np.float32), rng.standard_normal(size).astype(np.float32)
    m, v = rng.standard_normal(size).astype(np.float32) * 1e-2, rng.uniform(size=size).astype(np.float32) * 1e-3

    def update(*arrays):
        kernels.adam_update(*arrays, kernels.work_vector(arrays[0]), 1e-3, 0.9, 0.999, 1e-8)

    fast, generic = on_both(use_backend, update, p, g, m, v)
    for a, b in zip(fast[:4], generic[:4]):  # params, grads, m_sum, v_sum
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-12)
    assert not np.array_equal(fast[0], p)  # it did update


@pytest.mark.parametrize("kernel, derivative", [
    (kernels.relu_backward, lambda out: (out > 0).astype(np.float32)),
    (kernels.tanh_backward, lambda out: 1.0 - out * out),
])
def test_activation_gradients(use_backend, rng, kernel, derivative):
    dout = rng.standard_normal((33, 17)).astype(np.float32)
    out = np.maximum(rng.standard_normal((33, 17)), 0).astype(np.float32)  # zeros included
    fast, generic = on_both(use_backend, kernel, dout, out)
    np.testing.assert_allclose(fast[2], dout * derivative(out), rtol=1e-6)
    np.testing.assert_array_equal(fast[2], generic[2])
    np.testing.assert_array_equal(fast[0], dout)  # dout is not overwritten
    assert fast[2].dtype == fast[0].dtype  # the mask does not change the precision


def test_flush_tiny(use_backend):
    a = np.array([1e-30, -1e-35, 0.0, 2e-31, -5e-3, 1e-33, 3.0], np.float32)
    fast, generic = on_both(use_backend, lambda x: kernels.flush_tiny(x, 1e-32), a)
    expected = np.array([1e-30, 0.0, 0.0, 2e-31, -5e-3, 0.0, 3.0], np.float32)
    np.testing.assert_array_equal(fast[0], expected)
    np.testing.assert_array_equal(generic[0], expected)


def test_matmul_and_row_sums_into(use_backend, rng):
    a, b = rng.standard_normal((7, 5)), rng.standard_normal((7, 3))
    out, col = np.zeros((5, 3)), np.zeros(3)
    fast, generic = on_both(use_backend, lambda x, y, o: kernels.matmul_into(x.T, y, out=o), a, b, out)
    np.testing.assert_allclose(fast[2], a.T @ b, rtol=1e-12)
    np.testing.assert_allclose(generic[2], a.T @ b, rtol=1e-12)
    fast, generic = on_both(use_backend, lambda x, o: kernels.sum_rows_into(x, out=o), b, col)
    np.testing.assert_allclose(fast[1], b.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(generic[1], b.sum(axis=0), rtol=1e-12)


def test_fused_bernoulli_equals_the_two_separate_functions(be, rng):
    x = be.asarray(rng.uniform(size=(6, 9)))
    logits = be.asarray(np.concatenate([rng.uniform(-40, 40, size=(5, 9)), np.full((1, 9), -1e4)]))
    log_p, dlog_p = dist.bernoulli_log_likelihood_and_grad(x, logits)
    np.testing.assert_allclose(host(log_p), host(dist.bernoulli_log_likelihood(x, logits)), rtol=1e-12)
    np.testing.assert_allclose(host(dlog_p), host(dist.bernoulli_log_likelihood_backward(1.0, x, logits)), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("binary, rows", [(True, 128), (False, 128), (False, 400)])  # 400: three row blocks
def test_bernoulli_fast_path_matches_generic_in_float32(use_backend, rng, binary, rows):
    # A training batch's shapes and dtype; logits from -30 to 30 (saturated sigmoids included).
    assert rows == 128 or rows > 2 * (kernels.ROW_BLOCK // 784)
    x = rng.uniform(size=(rows, 784)).astype(np.float32)
    if binary:
        x = (x > 0.5).astype(np.float32)
    logits = rng.uniform(-30, 30, size=(rows, 784)).astype(np.float32)
    results = {}
    for name in ("numpy", "strict"):
        use_backend(name)
        log_p, grad = kernels.bernoulli_log_likelihood_and_grad(npvae.asarray(x), npvae.asarray(logits))
        results[name] = host(log_p), host(grad)
    (log_p_fast, grad_fast), (log_p_generic, grad_generic) = results["numpy"], results["strict"]
    # log P is a sum of 784 terms of size ~10: float32 rounding allows ~1e-5 relative.
    np.testing.assert_allclose(log_p_fast, log_p_generic, rtol=2e-5)
    np.testing.assert_allclose(grad_fast, grad_generic, rtol=0, atol=2e-7)
    assert log_p_fast.shape == (rows,) and grad_fast.shape == (rows, 784)


def test_adam_flushes_entries_bound_for_subnormal(be):
    # A gradient that is nonzero once and then 0: m decays by 0.9 a step, and without the
    # flush it would sink below float32's smallest normal number after ~800 steps.
    params = npvae.asarray(np.zeros(4, np.float32))
    opt = optim.Adam(params, lr=1e-3)
    opt.step(npvae.asarray(np.array([1e-3, 0.0, 0.0, 0.0], np.float32)))
    zero = npvae.asarray(np.zeros(4, np.float32))
    tiny = np.finfo(np.float32).smallest_normal
    for _ in range(1500):
        opt.step(zero)
        m = host(opt.m_sum)
        assert not ((m != 0) & (np.abs(m) < tiny)).any(), f"subnormal m at step {opt.t}"
    assert host(opt.m_sum)[0] == 0.0  # flushed: 1e-4 * 0.9^1500 is far below the threshold
