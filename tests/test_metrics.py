"""-ELBO, the importance-sampled log-likelihood, and active units."""

import math

import numpy as np
import pytest

import npvae
from npvae import metrics as ev
from npvae.random import EVALUATION_STREAMS, streams
from conftest import host, toy_images

D = 36


@pytest.fixture(scope="module")
def trained():
    x, _ = toy_images(n=300, d=D, seed=2)
    model = npvae.VAE(D, (16,), 2, dtype="float64", seed=0)
    npvae.fit(model, x[:240], epochs=8, batch_size=32, lr=3e-3, progress=False)
    return model, x[240:]


def test_evaluate_is_the_mean_negative_elbo(trained):
    model, x = trained
    result = npvae.evaluate(model, x, batch_size=25)  # several batches
    assert set(result) == {"loss", "reconstruction", "kl"}
    assert result["loss"] == pytest.approx(result["reconstruction"] + result["kl"], rel=1e-12)
    assert result == pytest.approx(npvae.evaluate(model, x, batch_size=7), rel=1e-12)  # batching changes nothing
    # The same number from the model's own loss with one eps for the whole set:
    eps = npvae.Generator(streams(0, EVALUATION_STREAMS).elbo).standard_normal((60, 2), dtype="float64")
    assert result["loss"] == pytest.approx(model.loss(x, eps), rel=1e-10)


def test_log_likelihood_is_above_the_elbo(trained):
    model, x = trained
    elbo = -npvae.evaluate(model, x)["loss"]
    # k = 1 is an unbiased estimate of the ELBO: equal within a few standard errors.
    per = ev.log_marginal_likelihood(model, x, k=1, seed=1, per_example=True)
    assert per.shape == (60,)
    assert abs(per.mean() - elbo) < 4 * per.std(ddof=1) / math.sqrt(len(per))
    ll = npvae.log_marginal_likelihood(model, x, k=1000, seed=1)
    assert elbo < ll < 0


def ppca(d=5, z=2, seed=0):
    """A linear Gaussian VAE, i.e. probabilistic PCA: x = W z + b + noise, noise ~ N(0, I),
    z ~ N(0, I), so p(x) = N(b, W W^T + I) in closed form. The columns of W are orthogonal,
    so the exact posterior has a diagonal covariance, which the encoder can represent:
        M = W^T W + I (diagonal),  q(z|x) = N(M^-1 W^T (x - b), M^-1)."""
    g = np.random.default_rng(seed)
    q, _ = np.linalg.qr(g.standard_normal((d, z)))
    w = q * np.array([2.0, 0.7])[:z]  # (D, Z), orthogonal columns
    b = g.standard_normal(d)
    model = npvae.VAE(d, (), z, likelihood="gaussian", dtype="float64", seed=0)
    model.decoder.layers[0].W[...] = npvae.asarray(w.T)  # out = z @ W^T + b
    model.decoder.layers[0].b[...] = npvae.asarray(b)
    m_diag = np.sum(w * w, axis=0) + 1.0
    x = g.multivariate_normal(b, w @ w.T + np.eye(d), size=40)
    sign, logdet = np.linalg.slogdet(w @ w.T + np.eye(d))
    diff = x - b
    cov_inv = np.linalg.inv(w @ w.T + np.eye(d))
    true = -0.5 * (np.einsum("nd,de,ne->n", diff, cov_inv, diff) + logdet + d * np.log(2 * np.pi))
    return model, x, true, w, b, m_diag


def test_exact_posterior_makes_the_estimate_exact_for_any_k_and_chunking():
    model, x, true, w, b, m_diag = ppca()
    model.head.layers["mu"].W[...] = npvae.asarray(w / m_diag)  # mu = (x - b) W M^-1 = x @ (W / m) + (-b W / m)
    model.head.layers["mu"].b[...] = npvae.asarray(-(b @ w) / m_diag)
    model.head.layers["logvar"].W[...] = 0.0
    model.head.layers["logvar"].b[...] = npvae.asarray(-np.log(m_diag))
    for k, max_rows in ((1, 8192), (7, 3), (50, 16)):  # k=7 with 3 rows at a time: streaming log-sum-exp
        est = ev.log_marginal_likelihood(model, x, k=k, max_rows=max_rows, per_example=True)
        np.testing.assert_allclose(est, true, rtol=1e-10)
    # With the exact posterior, KL(Q || P(z|x)) = 0, so the ELBO is log p(x) too (in
    # expectation: the loss's single-sample reconstruction term varies with eps).
    reps = 2000
    eps = np.random.default_rng(0).standard_normal((40 * reps, 2))
    assert -model.loss(np.repeat(x, reps, axis=0), eps) == pytest.approx(true.mean(), abs=0.02)


def test_estimate_grows_with_k_and_converges_to_the_true_log_likelihood():
    model, x, true, *_ = ppca(seed=1)  # the encoder is random: a poor proposal, a wide gap
    lls = [npvae.log_marginal_likelihood(model, x, k=k, seed=2) for k in (1, 10, 100, 1000, 10000)]
    assert lls == sorted(lls)  # grows with k ...
    assert lls[0] < true.mean() - 1.0  # ... from far below ...
    assert abs(lls[-1] - true.mean()) < 0.05  # ... to the true value


def test_active_units(trained):
    model, x = trained
    activity = ev.unit_activity(model, x)
    assert activity.shape == (2,) and (activity >= 0).all()
    assert npvae.active_units(model, x) == int(np.sum(activity > 1e-2))
    # Silence unit 0: its posterior mean no longer depends on x.
    # (Its variance is 0 or a rounding residue, ~1e-35, depending on how the backend sums.)
    model.head.layers["mu"].W[:, 0] = 0.0
    silenced = ev.unit_activity(model, x)
    assert silenced[0] == pytest.approx(0.0, abs=1e-20)
    np.testing.assert_allclose(silenced[1], activity[1], rtol=1e-12)  # unit 1 unchanged
    assert npvae.active_units(model, x) == int(activity[1] > 1e-2)  # unit 0 no longer counts
    assert activity[1] > 1e-3  # the threshold decides: unit 1 counts below its activity, not above
    assert npvae.active_units(model, x, threshold=activity[1] / 2) == 1
    assert npvae.active_units(model, x, threshold=activity[1] * 2) == 0


def test_bad_k(trained):
    model, x = trained
    with pytest.raises(ValueError, match="k: expected a positive integer, got 0"):
        npvae.log_marginal_likelihood(model, x, k=0)


# -- a very small or very large posterior variance -----------------------------------------
def _direct_estimate(model, x, k, seed=0):
    """The importance-sampled estimate per example, written out in host float64 from the
    definition, with the eps that ``log_likelihood`` draws for n * k <= max_rows (one chunk),
    and the model's parameters copied into a float64 model:

        z_i = mu + sigma eps_i,  log w_i = log P(x|z_i) + log N(z_i; 0, I) - log N(z_i; mu, sigma^2),
        (z_i - mu) / sigma = eps_i exactly, so log N(z_i; mu, sigma^2) = -1/2 sum(eps_i^2 + logvar + log 2 pi).
    """
    n, zdim = x.shape[0], model.latent_dim
    g = npvae.Generator(streams(seed, EVALUATION_STREAMS).importance)
    eps = host(g.standard_normal((n, k, zdim), dtype=model.dtype))  # (N, k, Z)
    m64 = npvae.VAE(model.input_dim, model.hidden_dims, zdim, dtype="float64")
    m64.params[...] = npvae.asarray(host(model.params), "float64")
    mu, logvar = (host(a)[:, None, :] for a in m64.encode(x))  # (N, 1, Z)
    z = mu + np.exp(0.5 * logvar) * eps  # (N, k, Z)
    logits = host(m64.decode(z.reshape(n * k, zdim))).reshape(n, k, -1)
    log_px = np.sum(x[:, None, :] * logits - np.logaddexp(0.0, logits), axis=-1)
    log_pz = -0.5 * np.sum(z**2 + np.log(2 * np.pi), axis=-1)
    log_q = -0.5 * np.sum(eps**2 + logvar + np.log(2 * np.pi), axis=-1)
    return np.logaddexp.reduce(log_px + log_pz - log_q, axis=1) - np.log(k)  # (N,)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-10), ("float32", 1e-5)])
@pytest.mark.parametrize("logvars", [
    [-150.0, -108.0, -60.0, -20.0, -1.0],  # near point masses (logvar ~ -108 comes from training)
    [-150.0, -108.0, -30.0, 0.0, 20.0, 50.0],  # and very wide ones
])
def test_log_likelihood_is_finite_and_right_for_extreme_logvar(dtype, rtol, logvars):
    x, _ = toy_images(n=8, d=12, seed=3)
    model = npvae.VAE(12, (8,), len(logvars), dtype=dtype, seed=1)
    blocks = {name: (a, b) for name, a, b, _shape in model.blocks}
    a, b = blocks["theta.logvar.W"]
    model.params[a:b] = 0.0  # logvar no longer depends on x ...
    a, b = blocks["theta.logvar.b"]
    model.params[a:b] = npvae.asarray(np.array(logvars), dtype)  # ... it is these numbers
    np.testing.assert_array_equal(host(model.encode(x)[1]), np.tile(np.array(logvars, dtype), (8, 1)))
    est = ev.log_marginal_likelihood(model, x, k=20, per_example=True)
    assert np.all(np.isfinite(est))
    # float64: the same number as the direct computation; float32: as its float64 version
    np.testing.assert_allclose(est, _direct_estimate(model, x, k=20), rtol=rtol)


# -- bad arguments and empty data ----------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    x, _ = toy_images(n=10, d=D, seed=4)
    return npvae.VAE(D, (4,), 2, seed=0), x


@pytest.mark.parametrize("call", [
    lambda m, x: npvae.evaluate(m, x),
    lambda m, x: ev.log_marginal_likelihood(m, x, k=3),
    lambda m, x: ev.log_marginal_likelihood(m, x, k=3, per_example=True),
    lambda m, x: ev.unit_activity(m, x),
    lambda m, x: npvae.active_units(m, x),
])
def test_no_rows_is_an_error(small, call):
    model, x = small
    with pytest.raises(ValueError, match=r"^x: expected at least one row, got 0$"):
        call(model, x[:0])
    call(model, x[:1])  # one row is enough


@pytest.mark.parametrize("value", [0, -1, 2.5])
@pytest.mark.parametrize("name, call", [
    ("batch_size", lambda m, x, v: npvae.evaluate(m, x, batch_size=v)),
    ("batch_size", lambda m, x, v: ev.unit_activity(m, x, batch_size=v)),
    ("batch_size", lambda m, x, v: npvae.active_units(m, x, batch_size=v)),
    ("max_rows", lambda m, x, v: ev.log_marginal_likelihood(m, x, k=3, max_rows=v)),
])
def test_bad_batch_size_and_max_rows(small, name, call, value):
    model, x = small
    with pytest.raises(ValueError, match=rf"^{name}: expected a positive integer, got {value}$"):
        call(model, x, value)
