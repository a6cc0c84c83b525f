"""Optimizers against the update rules written out step by step in NumPy."""

import numpy as np
import pytest

import npvae
from npvae import optim
from conftest import host


def run(opt_name, grads_seq, p0, **kw):
    params = npvae.asarray(p0.copy(), dtype="float64")  # a copy: on NumPy asarray would alias p0
    opt = optim.make_optimizer(opt_name, params, **kw)
    for g in grads_seq:
        opt.step(npvae.asarray(g, dtype="float64"))
    return host(params), opt


@pytest.fixture
def problem(rng):
    return rng.standard_normal(6), [rng.standard_normal(6) * s for s in (1.0, 0.1, 3.0, 0.0, 1e-3)]


def test_adam_matches_the_paper(problem):
    p0, grads = problem
    got, opt = run("adam", grads, p0, lr=0.01)
    p, m, v = p0.copy(), np.zeros(6), np.zeros(6)
    for t, g in enumerate(grads, start=1):  # Kingma & Ba (2015), Algorithm 1
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        m_hat, v_hat = m / (1 - 0.9**t), v / (1 - 0.999**t)
        p = p - 0.01 * m_hat / (np.sqrt(v_hat) + 1e-8)
    np.testing.assert_allclose(got, p, rtol=1e-12)
    # the state is the paper's moments, whichever path (textbook or npvae.fast) ran
    np.testing.assert_allclose(host(opt.m), m, rtol=1e-12)
    np.testing.assert_allclose(host(opt.v), v, rtol=1e-12)
    assert opt.t == 5 and repr(opt) == "Adam(lr=0.01, beta1=0.9, beta2=0.999, eps=1e-08)"


def test_sgd_with_momentum(problem):
    p0, grads = problem
    got, _ = run("sgd", grads, p0, lr=0.1, momentum=0.5)
    p, vel = p0.copy(), np.zeros(6)
    for g in grads:
        vel = 0.5 * vel + g
        p = p - 0.1 * vel
    np.testing.assert_allclose(got, p, rtol=1e-12)


def test_adagrad(problem):
    p0, grads = problem
    got, _ = run("adagrad", grads, p0, lr=0.1)
    p, s = p0.copy(), np.zeros(6)
    for g in grads:
        s = s + g * g
        p = p - 0.1 * g / (np.sqrt(s) + 1e-10)
    np.testing.assert_allclose(got, p, rtol=1e-12)


@pytest.mark.parametrize("name, lr", [("sgd", 0.05), ("adagrad", 0.5), ("adam", 0.05)])
def test_each_minimizes_a_quadratic(name, lr):
    # f(p) = 1/2 ||p - 3||^2, gradient p - 3.
    params = npvae.asarray(np.zeros(4), dtype="float64")
    opt = optim.make_optimizer(name, params, lr=lr)
    for _ in range(500):
        opt.step(params - 3.0)
    np.testing.assert_allclose(host(params), 3.0, atol=1e-2)


def test_updates_reach_the_model_through_its_views(rng):
    model = npvae.VAE(5, (4,), 2, dtype="float64")
    w_before = host(model.head.layers["mu"].W).copy()
    opt = optim.make_optimizer("sgd", model.params, lr=0.1)
    model.loss_and_grads(rng.uniform(size=(3, 5)))
    opt.step(model.grads)
    assert not np.array_equal(host(model.head.layers["mu"].W), w_before)


def test_state_dict_round_trip_continues_identically(problem):
    p0, grads = problem
    straight, _ = run("adam", grads, p0, lr=0.01)
    first, opt = run("adam", grads[:2], p0, lr=0.01)
    state = opt.state_dict()
    assert set(state) == {"name", "t", "lr", "beta1", "beta2", "eps", "buffers"}
    assert all(isinstance(b, np.ndarray) for b in state["buffers"].values())
    params = npvae.asarray(first, dtype="float64")
    again = optim.from_state_dict(state, params)
    for g in grads[2:]:
        again.step(npvae.asarray(g, dtype="float64"))
    np.testing.assert_allclose(host(params), straight, rtol=1e-12)


def test_adam_reads_a_state_that_holds_running_sums(problem):
    # npvae 0.1 saved Adam's running sums m_sum = m / (1 - b1), v_sum = v / (1 - b2); such a
    # state still resumes.
    p0, grads = problem
    straight, _ = run("adam", grads, p0, lr=0.01)
    first, opt = run("adam", grads[:2], p0, lr=0.01)
    state = opt.state_dict()
    state["buffers"] = {"m_sum": host(opt.m) / 0.1, "v_sum": host(opt.v) / 0.001}
    params = npvae.asarray(first, dtype="float64")
    again = optim.from_state_dict(state, params)
    for g in grads[2:]:
        again.step(npvae.asarray(g, dtype="float64"))
    np.testing.assert_allclose(host(params), straight, rtol=1e-12)
    state["buffers"] = {"m": host(opt.m)}  # v missing: named in the error
    with pytest.raises(ValueError, match=r"optimizer: expected the state arrays \('m', 'v'\), got \('m',\)"):
        optim.from_state_dict(state, params)


def test_bad_arguments():
    params = npvae.asarray(np.zeros(3))
    with pytest.raises(ValueError, match=r"optimizer: expected one of \('sgd', 'adagrad', 'adam'\), got 'rmsprop'"):
        optim.make_optimizer("rmsprop", params)
    with pytest.raises(ValueError, match=r"lr: expected a positive number, got -0.1"):
        optim.make_optimizer("adam", params, lr=-0.1)
    state = optim.make_optimizer("adam", params).state_dict()
    with pytest.raises(ValueError, match=r"optimizer: expected state of 'sgd', got 'adam'"):
        optim.make_optimizer("sgd", params).load_state_dict(state)
