"""The full-covariance posterior in the whole model (Step 7): VAE(..., posterior="full") trains,
checks, saves and evaluates wherever the diagonal one does; its gradient is right; with zero
off-diagonal entries it is the diagonal model; and on probabilistic PCA, whose exact posterior
is a correlated Gaussian, it makes the importance-sampled log p(x) exact."""

import numpy as np
import pytest

import npvae
from npvae import distributions as dist
from npvae.gradcheck import check_model
from conftest import host, toy_images

D, Z = 7, 3


def batch(rng, n=5):
    return rng.uniform(size=(n, D)), rng.standard_normal((n, Z))


def block(model, name):
    b = next(b for b in model.blocks if b.name == name)
    return b.start, b.stop


@pytest.mark.parametrize("likelihood, activation", [("bernoulli", "tanh"), ("gaussian", "relu")])
def test_gradient_check_of_the_whole_full_covariance_vae(rng, likelihood, activation):
    model = npvae.VAE(D, (6,), Z, likelihood=likelihood, activation=activation, dtype="float64", seed=4,
                      posterior="full-absolute")
    names = [b.name for b in model.blocks]
    assert "theta.log_diag.W" in names and "theta.lower.W" in names and "theta.logvar.W" not in names
    assert model.n_params == npvae.vae.parameter_count(D, (6,), Z, "full-absolute")
    x, eps = batch(rng)
    if likelihood == "gaussian":
        x = rng.standard_normal((5, D))
    report = check_model(model, x, eps)
    assert report.passed(1e-6), str(report)


def test_zero_off_diagonal_is_the_diagonal_model(rng):
    # s = log diag(L) = logvar / 2: halve the logvar head's weights; the lower head's are 0.
    diag = npvae.VAE(D, (6,), Z, dtype="float64", seed=2)
    full = npvae.VAE(D, (6,), Z, dtype="float64", seed=2, posterior="full-absolute")
    p_diag, p_full = host(diag.params), host(full.params).copy()
    for b in diag.blocks:
        target = "theta.log_diag" + b.name[len("theta.logvar"):] if b.name.startswith("theta.logvar") else b.name
        a, z = block(full, target)
        p_full[a:z] = p_diag[b.start:b.stop] * (0.5 if b.name.startswith("theta.logvar") else 1.0)
    for name in ("theta.lower.W", "theta.lower.b"):
        a, z = block(full, name)
        p_full[a:z] = 0.0
    full.params[...] = npvae.asarray(p_full, dtype="float64")
    x, eps = batch(rng)
    res_d, res_f = diag.loss_and_grads(x, eps), full.loss_and_grads(x, eps)
    assert res_f.loss == pytest.approx(res_d.loss, rel=1e-12)
    assert res_f.kl == pytest.approx(res_d.kl, rel=1e-12)
    g_d, g_f = host(res_d.grads), host(res_f.grads)
    for b in diag.blocks:
        scale = 2.0 if b.name.startswith("theta.logvar") else 1.0  # d/ds = 2 d/dlogvar
        target = "theta.log_diag" + b.name[len("theta.logvar"):] if b.name.startswith("theta.logvar") else b.name
        a, z = block(full, target)
        np.testing.assert_allclose(g_f[a:z], scale * g_d[b.start:b.stop], rtol=1e-10, atol=1e-14, err_msg=b.name)


@pytest.mark.parametrize("posterior", ["diagonal", "full"])
def test_the_posterior_object(rng, posterior):
    model = npvae.VAE(D, (6,), Z, dtype="float64", seed=1, posterior=posterior)
    x, eps = batch(rng)
    q = model.posterior(x)
    mean, L, cov = host(q.mean), host(q.scale_tril), host(q.covariance)
    assert mean.shape == (5, Z) and L.shape == cov.shape == (5, Z, Z)
    np.testing.assert_array_equal(L, np.tril(L))
    np.testing.assert_allclose(cov, L @ np.swapaxes(L, 1, 2), rtol=1e-12)
    fwd = model.forward(x, eps)
    np.testing.assert_allclose(host(q.kl()), host(fwd.kl), rtol=1e-12)
    np.testing.assert_allclose(host(q.rsample(npvae.asarray(eps, dtype="float64"))), host(fwd.z), rtol=1e-12)
    z = q.rsample(npvae.asarray(eps, dtype="float64"))
    np.testing.assert_allclose(host(q.log_prob(z)), host(q.log_prob_at_sample(npvae.asarray(eps, dtype="float64"))),
                               rtol=1e-9)
    # log_prob against NumPy's linear algebra on the same Sigma
    for n in range(5):
        diff = host(z)[n] - mean[n]
        _, logdet = np.linalg.slogdet(cov[n])
        want = -0.5 * (diff @ np.linalg.solve(cov[n], diff) + logdet + Z * np.log(2 * np.pi))
        assert float(host(q.log_prob(z))[n]) == pytest.approx(want, rel=1e-9)
    mu, logvar = model.encode(x)  # encode: mu and the log of Sigma's diagonal
    np.testing.assert_allclose(host(mu), mean, rtol=1e-12)
    np.testing.assert_allclose(np.exp(host(logvar)), np.diagonal(cov, axis1=1, axis2=2), rtol=1e-10)


def test_full_needs_two_latent_dimensions():
    with pytest.raises(ValueError, match=r"posterior: 'full' needs latent_dim >= 2"):
        npvae.VAE(D, (6,), 1, posterior="full")
    with pytest.raises(ValueError, match=r"posterior: expected one of \('diagonal', 'full', 'full-absolute'\), got 'tied'"):
        npvae.VAE(D, (6,), 2, posterior="tied")


def test_fit_evaluate_save_and_resume_with_a_full_posterior(tmp_path):
    x, _ = toy_images(n=300, d=36, seed=3)
    kw = {"batch_size": 32, "seed": 5, "progress": False}
    straight = npvae.VAE(36, (16,), 3, posterior="full", seed=1)
    h_straight = npvae.fit(straight, x[:240], x[240:], epochs=3, **kw)
    assert h_straight[-1]["test_loss"] < h_straight[0]["test_loss"]
    model = npvae.VAE(36, (16,), 3, posterior="full", seed=1)
    npvae.fit(model, x[:240], x[240:], epochs=2, **kw)
    npvae.save(model, tmp_path / "full.npz")
    loaded = npvae.load(tmp_path / "full.npz")
    assert loaded.posterior_kind == "full" and loaded.config["posterior"] == "full"
    h = npvae.fit(loaded, x[:240], x[240:], epochs=3, resume=True, progress=False)
    assert [r["loss"] for r in h] == [r["loss"] for r in h_straight]  # resumes exactly
    ll = npvae.log_marginal_likelihood(loaded, x[240:], k=50)
    elbo = npvae.evaluate(loaded, x[240:])["loss"]
    assert -elbo - 1.0 < ll < 0 and np.isfinite(ll)
    assert host(loaded.sample(4)).shape == (4, 36) and host(loaded.reconstruct(x[:3])).shape == (3, 36)


def correlated_ppca(seed=0, d=5, z=2):
    """Probabilistic PCA with W's columns NOT orthogonal: the exact posterior
    q(z|x) = N(M^-1 W^T (x - b), M^-1), M = W^T W + I, has a correlated covariance, which the
    full posterior can represent exactly and the diagonal one cannot."""
    g = np.random.default_rng(seed)
    w = g.standard_normal((d, z)) * np.array([1.5, 1.0])
    w[:, 1] += 0.9 * w[:, 0]  # strongly correlated columns
    b = g.standard_normal(d)
    m = w.T @ w + np.eye(z)
    x = g.multivariate_normal(b, w @ w.T + np.eye(d), size=30)
    cov = w @ w.T + np.eye(d)
    _, logdet = np.linalg.slogdet(cov)
    diff = x - b
    true = -0.5 * (np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff) + logdet + d * np.log(2 * np.pi))
    return w, b, m, x, true


def linear_vae(w, b, posterior):
    d, z = w.shape
    model = npvae.VAE(d, (), z, likelihood="gaussian", dtype="float64", seed=0, posterior=posterior)
    model.decoder.layers[0].W[...] = npvae.asarray(w.T)
    model.decoder.layers[0].b[...] = npvae.asarray(b)
    return model


def test_ppca_log_likelihood_is_exact_with_the_full_proposal_and_noisier_with_the_diagonal():
    w, b, m, x, true = correlated_ppca()
    m_inv = np.linalg.inv(m)
    post_w = w @ m_inv  # mu = (x - b) W M^-1
    # the exact posterior, as the full encoder's heads
    full = linear_vae(w, b, "full-absolute")
    full.head.layers["mu"].W[...] = npvae.asarray(post_w)
    full.head.layers["mu"].b[...] = npvae.asarray(-(b @ post_w))
    chol = np.linalg.cholesky(m_inv)
    full.head.layers["log_diag"].W[...] = 0.0
    full.head.layers["log_diag"].b[...] = npvae.asarray(np.log(np.diag(chol)))
    full.head.layers["lower"].W[...] = 0.0
    full.head.layers["lower"].b[...] = npvae.asarray(chol[np.tril_indices(2, -1)])
    # the best diagonal Gaussian (the KL(q||p)-optimal one: precision = diag(M)), same mean
    diag = linear_vae(w, b, "diagonal")
    diag.head.layers["mu"].W[...] = npvae.asarray(post_w)
    diag.head.layers["mu"].b[...] = npvae.asarray(-(b @ post_w))
    diag.head.layers["logvar"].W[...] = 0.0
    diag.head.layers["logvar"].b[...] = npvae.asarray(-np.log(np.diag(m)))
    k = 10
    est_full = np.array([npvae.log_marginal_likelihood(full, x, k=k, seed=s, per_example=True) for s in range(8)])
    est_diag = np.array([npvae.log_marginal_likelihood(diag, x, k=k, seed=s, per_example=True) for s in range(8)])
    np.testing.assert_allclose(est_full, np.broadcast_to(true, est_full.shape), rtol=1e-9)  # every weight is p(x)
    spread_full, spread_diag = est_full.std(axis=0).mean(), est_diag.std(axis=0).mean()
    assert spread_full < 1e-8 < 1e-3 < spread_diag  # measured: ~1e-14 against ~0.05
    # The diagonal proposal's estimate is biased low at small k (measured 0.34 nat at k = 10)
    # and closes the gap as k grows.
    gap_10 = true.mean() - est_diag.mean()
    gap_2000 = true.mean() - npvae.log_marginal_likelihood(diag, x, k=2000, seed=9)
    assert 0.1 < gap_10 and abs(gap_2000) < gap_10 / 3  # measured: 0.34 and 0.07
