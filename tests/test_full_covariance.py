"""The full-covariance posterior N(mu, L L^T): gradients against central differences
(float64), the sampler against the covariance it claims, the KL and the log-density against
NumPy's linear algebra, and the diagonal case against the diagonal functions."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import distributions as dist
from npvae.random import Generator
from npvae.gradcheck import assert_gradients_match, numerical_gradient
from npvae.vae import GaussianPosterior
from conftest import host, joined, on_backend, values, weighted_sum

rows, dims = st.integers(1, 3), st.integers(1, 4)


def draw_params(data, n, z):
    """mu, s, lower (host) of moderate size: |mu| <= 3, s in [-3, 2] (L_jj from 0.05 to 7.4)."""
    k = dist.lower_size(z)
    return (data.draw(values((n, z), -3.0, 3.0)), data.draw(values((n, z), -3.0, 2.0)),
            data.draw(values((n, k), -3.0, 3.0)))


def tril_indices_flat(n, z):
    """Flat indices of the entries on and below the diagonal of an (n, z, z) array."""
    return [(b * z + i) * z + j for b in range(n) for i in range(z) for j in range(i + 1)]


def packed_lower(L):
    """The strictly-lower entries of a host (Z, Z) matrix, row by row, as ``lower`` holds them."""
    return np.array([L[i, j] for i in range(L.shape[0]) for j in range(i)])


# One covariance for the checks against NumPy: standard deviations 0.05, 5 and 1 (a factor
# 100 apart) and correlations +0.9, -0.9, -0.8.
SD = np.array([0.05, 5.0, 1.0])
CORR = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, -0.8], [-0.9, -0.8, 1.0]])
SIGMA = CORR * np.outer(SD, SD)
MU = np.array([1.0, -2.0, 0.5])
CHOL = np.linalg.cholesky(SIGMA)
S, LOWER = np.log(np.diag(CHOL)), packed_lower(CHOL)


# --- building L -------------------------------------------------------------------------
def test_lower_size():
    assert [dist.lower_size(z) for z in range(1, 6)] == [0, 1, 3, 6, 10]


def test_scale_tril_places_the_entries_row_by_row():
    s, lower = on_backend([[0.0, math.log(2.0), 0.0, math.log(3.0)]], [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    L = host(dist.scale_tril(s, lower))
    assert L.shape == (1, 4, 4)
    np.testing.assert_allclose(L[0], [[1, 0, 0, 0], [1, 2, 0, 0], [2, 3, 1, 0], [4, 5, 6, 3]], rtol=1e-15)
    np.testing.assert_allclose(host(dist.scale_tril(*on_backend(S[None], LOWER[None])))[0], CHOL, rtol=1e-14)
    one = dist.scale_tril(*on_backend(np.zeros((2, 1)), np.zeros((2, 0))))  # Z = 1: K = 0
    assert host(one).tolist() == [[[1.0]], [[1.0]]]


@given(data=st.data(), n=rows, z=dims)
def test_scale_tril_backward(data, n, z):
    _, s_h, lower_h = draw_params(data, n, z)
    s, lower, g = on_backend(s_h, lower_h, data.draw(values((n, z, z), -1.0, 1.0)))  # g above the diagonal too
    f = lambda: weighted_sum(dist.scale_tril(s, lower), g)  # noqa: E731
    ds, dlower = dist.scale_tril_backward(g, s)
    assert ds.shape == (n, z) and dlower.shape == (n, dist.lower_size(z))
    assert_gradients_match(joined(ds, dlower), joined(numerical_gradient(f, s), numerical_gradient(f, lower)))


# --- the reparameterization z = mu + L eps ------------------------------------------------
@given(data=st.data(), n=rows, z=dims)
def test_reparameterize_full_backward(data, n, z):
    mu_h, s_h, lower_h = draw_params(data, n, z)
    L_h = host(dist.scale_tril(*on_backend(s_h, lower_h)))
    mu, L, eps, g = on_backend(mu_h, L_h, data.draw(values((n, z), -3.0, 3.0)), data.draw(values((n, z), -1.0, 1.0)))
    f = lambda: weighted_sum(dist.reparameterize_full(mu, L, eps), g)  # noqa: E731
    dmu, dL = dist.reparameterize_full_backward(g, eps)
    tril = tril_indices_flat(n, z)  # L's parameters: the entries on and below the diagonal
    numeric = joined(numerical_gradient(f, mu), numerical_gradient(f, L, indices=tril))
    assert_gradients_match(joined(dmu, host(dL).ravel()[tril]), numeric)
    assert not np.triu(host(dL), k=1).any()  # above the diagonal: 0


def test_reparameterize_full_is_mu_plus_L_eps_and_broadcasts(rng):
    mu_h, eps_h = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    L_h = np.tril(rng.standard_normal((3, 4, 4)))
    z = host(dist.reparameterize_full(*on_backend(mu_h, L_h, eps_h)))
    np.testing.assert_allclose(z, mu_h + np.einsum("nij,nj->ni", L_h, eps_h), rtol=1e-12)
    # mu (b, 1, Z), L (b, 1, Z, Z), eps (b, k, Z): k draws for each row (importance sampling)
    mu3, L3 = rng.standard_normal((2, 1, 3)), np.tril(rng.standard_normal((2, 1, 3, 3)))
    eps3 = rng.standard_normal((2, 5, 3))
    z3 = host(dist.reparameterize_full(*on_backend(mu3, L3, eps3)))
    assert z3.shape == (2, 5, 3)
    np.testing.assert_allclose(z3, mu3 + np.einsum("bij,bkj->bki", L3[:, 0], eps3), rtol=1e-12)


def sampler_moments_match(sample, n=50_000, k=4.0):
    """Draw n samples z = sample(mu, s, lower, eps) for (MU, SIGMA), with fresh eps; True when
    the sample mean is within k standard errors of MU and every entry of the sample covariance
    within k standard errors of SIGMA. SE(mean_i) = sqrt(Sigma_ii / n);
    SE(cov_ij) = sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / n)."""
    mu, s, lower = on_backend(MU[None, None], S[None, None], LOWER[None, None])  # (1, 1, .)
    eps = Generator(2024).standard_normal((1, n, 3), dtype="float64")
    z = host(sample(mu, s, lower, eps))[0]
    var = np.diag(SIGMA)
    mean_ok = np.abs(z.mean(axis=0) - MU) <= k * np.sqrt(var / n)
    cov_ok = np.abs(np.cov(z, rowvar=False) - SIGMA) <= k * np.sqrt((np.outer(var, var) + SIGMA**2) / n)
    return bool(mean_ok.all() and cov_ok.all())


def test_samples_have_mean_mu_and_covariance_L_LT():
    assert sampler_moments_match(lambda mu, s, lower, eps: dist.reparameterize_full(mu, dist.scale_tril(s, lower), eps))


@pytest.mark.parametrize("bug", ["L^T eps", "exp(s) as the variance"])
def test_the_moment_test_catches_a_wrong_sampler(bug):
    def wrong(mu, s, lower, eps):
        if bug == "L^T eps":  # Cov = L^T L, not L L^T
            return dist.reparameterize_full(mu, dist.scale_tril(s, lower).mT, eps)
        return dist.reparameterize_full(mu, dist.scale_tril(0.5 * s, lower), eps)  # L_jj = exp(s_j / 2)

    assert not sampler_moments_match(wrong)


# --- KL( N(mu, L L^T) || N(0, I) ) --------------------------------------------------------
@given(data=st.data(), n=rows, z=dims)
def test_full_kl_backward(data, n, z):
    mu_h, s_h, lower_h = draw_params(data, n, z)
    mu, s, lower, g = on_backend(mu_h, s_h, lower_h, data.draw(values((n,), -1.0, 1.0)))
    f = lambda: weighted_sum(dist.full_gaussian_kl(mu, s, lower), g)  # noqa: E731
    grads = dist.full_gaussian_kl_backward(g, mu, s, lower)
    assert_gradients_match(joined(*grads), joined(*(numerical_gradient(f, a) for a in (mu, s, lower))))


@given(data=st.data(), n=rows, z=dims)
def test_kl_and_samples_chained_through_scale_tril(data, n, z):
    # loss(mu, s, lower) = sum g_z * z + sum g_kl * KL, with L = scale_tril(s, lower) and
    # z = mu + L eps: the backward pieces composed by hand, as the VAE composes them.
    mu_h, s_h, lower_h = draw_params(data, n, z)
    mu, s, lower, eps, g_z, g_kl = on_backend(mu_h, s_h, lower_h, data.draw(values((n, z), -3.0, 3.0)),
                                             data.draw(values((n, z), -1.0, 1.0)), data.draw(values((n,), -1.0, 1.0)))

    def f():
        z_ = dist.reparameterize_full(mu, dist.scale_tril(s, lower), eps)
        return weighted_sum(z_, g_z) + weighted_sum(dist.full_gaussian_kl(mu, s, lower), g_kl)

    dmu, dL = dist.reparameterize_full_backward(g_z, eps)
    ds, dlower = dist.scale_tril_backward(dL, s)
    kl_mu, kl_s, kl_lower = dist.full_gaussian_kl_backward(g_kl, mu, s, lower)
    analytic = joined(dmu + kl_mu, ds + kl_s, dlower + kl_lower)
    assert_gradients_match(analytic, joined(*(numerical_gradient(f, a) for a in (mu, s, lower))))


def test_full_kl_matches_numpy_linalg_and_a_monte_carlo_estimate():
    mu, s, lower = on_backend(MU[None], S[None], LOWER[None])
    closed = float(host(dist.full_gaussian_kl(mu, s, lower))[0])
    logdet = np.linalg.slogdet(SIGMA)[1]
    by_linalg = 0.5 * (np.trace(SIGMA) + MU @ MU - 3 - logdet)
    assert closed == pytest.approx(by_linalg, rel=1e-10, abs=1e-10)
    # KL = E_{z~q}[ log q(z) - log p(z) ]: average over m samples, with its standard error.
    m = 100_000
    L = dist.scale_tril(s, lower)
    z = dist.reparameterize_full(mu, L, Generator(11).standard_normal((m, 3), dtype="float64"))
    zeros = on_backend(np.zeros((1, 3)))[0]
    terms = host(dist.full_gaussian_log_density(z, mu, L) - dist.gaussian_log_density(z, zeros, zeros))
    estimate, se = terms.mean(), terms.std(ddof=1) / np.sqrt(m)
    assert abs(estimate - closed) < 4 * se, (estimate, closed, se)


@given(data=st.data(), n=rows, z=dims)
def test_full_kl_is_nonnegative(data, n, z):
    # wider than draw_params: |mu|, |lower| up to 1e3, s in [-10, 5] (L_jj from 4.5e-5 to 148)
    mu_h, s_h = data.draw(values((n, z), -1e3, 1e3)), data.draw(values((n, z), -10.0, 5.0))
    lower_h = data.draw(values((n, dist.lower_size(z)), -1e3, 1e3))
    kl = host(dist.full_gaussian_kl(*on_backend(mu_h, s_h, lower_h)))
    assert kl.shape == (n,)
    assert (kl >= 0).all()


def test_full_kl_is_exactly_zero_at_the_prior():
    mu, s, lower = on_backend(np.zeros((2, 4)), np.zeros((2, 4)), np.zeros((2, 6)))
    assert host(dist.full_gaussian_kl(mu, s, lower)).tolist() == [0.0, 0.0]
    assert not any(host(g).any() for g in dist.full_gaussian_kl_backward(1.0, mu, s, lower))


# --- log N(z; mu, L L^T) -----------------------------------------------------------------
def numpy_log_density(z, mu, sigma):
    """log N(z; mu, Sigma) with np.linalg: -1/2 r^T Sigma^{-1} r - 1/2 log det Sigma - Z/2 log 2 pi."""
    r = z - mu
    quad = np.einsum("...i,...i->...", r, np.linalg.solve(sigma, r[..., None])[..., 0])
    return -0.5 * quad - 0.5 * np.linalg.slogdet(sigma)[1] - 0.5 * z.shape[-1] * np.log(2 * np.pi)


def test_full_log_density_matches_numpy_linalg(rng):
    z_h = MU + rng.standard_normal((6, 3)) * SD
    mu, s, lower = on_backend(MU[None], S[None], LOWER[None])
    got = host(dist.full_gaussian_log_density(on_backend(z_h)[0], mu, dist.scale_tril(s, lower)))
    np.testing.assert_allclose(got, numpy_log_density(z_h, MU, SIGMA), rtol=1e-10)
    # leading dims broadcast: z (b, k, Z), mu (b, 1, Z), L (b, 1, Z, Z)
    mu3, s3, lower3 = rng.standard_normal((2, 1, 4)), rng.uniform(-1, 1, (2, 1, 4)), rng.standard_normal((2, 1, 6))
    z3 = rng.standard_normal((2, 5, 4))
    L3 = dist.scale_tril(*on_backend(s3, lower3))
    got3 = host(dist.full_gaussian_log_density(*on_backend(z3, mu3), L3))
    L3_h = host(L3)
    assert got3.shape == (2, 5)
    np.testing.assert_allclose(got3, numpy_log_density(z3, mu3, L3_h @ np.swapaxes(L3_h, -1, -2)), rtol=1e-10)


def test_full_log_density_at_sample_equals_the_density_at_z():
    q = GaussianPosterior(*on_backend(MU[None], S[None], LOWER[None]))  # one row
    eps = Generator(5).standard_normal((1, 8, 3), dtype="float64")  # 8 draws of it
    at_sample = host(q.log_prob_at_sample(eps))
    assert at_sample.shape == (1, 8)
    L = host(q.scale_tril)[0]
    z = host(q.rsample(eps))[0]  # mu + L eps, (8, 3)
    np.testing.assert_allclose(at_sample[0], numpy_log_density(z, MU, L @ L.T), rtol=1e-10)


# --- with lower = 0: the diagonal Gaussian, logvar = 2 s -----------------------------------
def test_with_no_correlations_everything_is_the_diagonal_gaussian(rng):
    n, z = 4, 3
    mu, s, eps, zz = on_backend(rng.standard_normal((n, z)), rng.uniform(-2, 2, (n, z)),
                                rng.standard_normal((n, z)), rng.standard_normal((n, z)))
    lower = on_backend(np.zeros((n, dist.lower_size(z))))[0]
    L, logvar = dist.scale_tril(s, lower), 2.0 * s
    np.testing.assert_allclose(host(L), np.eye(z) * np.exp(host(s))[:, None, :], rtol=1e-15)

    def same(a, b):
        np.testing.assert_allclose(host(a), host(b), rtol=1e-12, atol=1e-12)

    same(dist.reparameterize_full(mu, L, eps), dist.reparameterize(mu, logvar, eps))
    same(dist.full_gaussian_kl(mu, s, lower), dist.gaussian_kl(mu, logvar))
    same(dist.full_gaussian_log_density(zz, mu, L), dist.gaussian_log_density(zz, mu, logvar))
    # and the gradients: dlogvar = dlog_diag / 2 (s = logvar / 2)
    g_kl = on_backend(rng.uniform(-1, 1, (n,)))[0]
    full, diag = dist.full_gaussian_kl_backward(g_kl, mu, s, lower), dist.gaussian_kl_backward(g_kl, mu, logvar)
    same(full[0], diag[0])
    same(full[1], 2.0 * diag[1])
    g_z = on_backend(rng.uniform(-1, 1, (n, z)))[0]
    dmu, dL = dist.reparameterize_full_backward(g_z, eps)
    ds = dist.scale_tril_backward(dL, s)[0]
    dmu_d, dlogvar_d = dist.reparameterize_backward(g_z, logvar, eps)
    same(dmu, dmu_d)
    same(ds, 2.0 * dlogvar_d)
