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


def test_from_state_dict_refuses_a_state_that_is_not_exactly_the_optimizers(problem):
    # A checkpoint's optimizer state is checked where optimizers are made: the name, exactly
    # that optimizer's keys, t, the hyperparameters (by the constructor) and the buffers.
    _, opt = run("adam", problem[1][:2], problem[0], lr=0.01)
    params = npvae.asarray(np.zeros(6), dtype="float64")
    cases = [({"name": "rmsprop"}, r"^name: expected one of \('sgd', 'adagrad', 'adam'\), got 'rmsprop'$"),
             ({"weight_decay": 0.0}, r"^unexpected key 'weight_decay'$"),
             ({"beta2": None}, r"^missing key 'beta2'$"),
             ({"t": -1}, r"^t: expected a non-negative integer, got -1$"),
             ({"t": 2.0}, r"^t: expected a non-negative integer, got 2\.0$"),
             ({"lr": "0.01"}, r"^lr: expected a positive number, got '0\.01'$"),
             ({"beta2": 1.0}, r"^beta2: expected a number in \[0, 1\), got 1\.0$"),
             ({"eps": -1e-8}, r"^eps: expected a non-negative number, got -1e-08$"),
             ({"eps": 10**400}, r"^eps: expected a non-negative number, got 1000000"),
             ({"buffers": {"m": host(opt.m)}}, r"^buffers: expected \('m', 'v'\), got \('m',\)$"),
             ({"buffers": {"m": host(opt.m), "v": host(opt.v), "m_sum": host(opt.m)}},
              r"^buffers: expected \('m', 'v'\), got \('m', 'm_sum', 'v'\)$"),
             ({"buffers": {"m": host(opt.m)[:-1], "v": host(opt.v)}}, r"^m: expected shape \(6,\), got \(5,\)$")]
    for change, pattern in cases:
        state = {**opt.state_dict(), **change}
        if change.get("beta2", 0) is None:
            del state["beta2"]
        with pytest.raises(ValueError, match=pattern):
            optim.from_state_dict(state, params)


@pytest.mark.parametrize("name, kwargs, pattern", [
    ("sgd", {"momentum": -0.5}, r"^momentum: expected a non-negative number, got -0\.5$"),
    ("adagrad", {"eps": float("nan")}, r"^eps: expected a non-negative number, got nan$"),
    ("adam", {"betas": (1.0, 0.999)}, r"^beta1: expected a number in \[0, 1\), got 1\.0$"),
    ("adam", {"betas": (0.9, -0.1)}, r"^beta2: expected a number in \[0, 1\), got -0\.1$"),
])
def test_constructors_refuse_bad_hyperparameters(name, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        optim.make_optimizer(name, npvae.asarray(np.zeros(3)), **kwargs)


def test_bad_arguments():
    params = npvae.asarray(np.zeros(3))
    with pytest.raises(ValueError, match=r"optimizer: expected one of \('sgd', 'adagrad', 'adam'\), got 'rmsprop'"):
        optim.make_optimizer("rmsprop", params)
    with pytest.raises(ValueError, match=r"lr: expected a positive number, got -0.1"):
        optim.make_optimizer("adam", params, lr=-0.1)
    state = optim.make_optimizer("adam", params).state_dict()
    with pytest.raises(ValueError, match=r"optimizer: expected state of 'sgd', got 'adam'"):
        optim.make_optimizer("sgd", params).load_state_dict(state)
