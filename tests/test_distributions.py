"""The distributions: values against independent formulas, gradients against central
differences (float64), and the sampler against the distribution it claims to sample."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npvae
from npvae import distributions as dist
from npvae.backend import get_backend
from npvae.random import Generator
from npvae.gradcheck import assert_gradients_match, numerical_gradient
from conftest import host, joined, on_backend, values, weighted_sum

dims = st.integers(1, 5)


# --- the reparameterization -----------------------------------------------------------
@given(data=st.data(), n=dims, z=dims)
def test_reparameterize_backward(data, n, z):
    # Large |mu| and logvar over [-20, 10]: sigma from 4.5e-5 to 148.
    mu_h, logvar_h = data.draw(values((n, z), -1e3, 1e3)), data.draw(values((n, z), -20.0, 10.0))
    eps_h, g_h = data.draw(values((n, z), -3.0, 3.0)), data.draw(values((n, z), -1.0, 1.0))
    mu, logvar, eps, g = on_backend(mu_h, logvar_h, eps_h, g_h)
    f = lambda: weighted_sum(dist.reparameterize(mu, logvar, eps), g)  # noqa: E731
    dmu, dlogvar = dist.reparameterize_backward(g, logvar, eps)
    assert_gradients_match(joined(dmu, dlogvar), joined(numerical_gradient(f, mu), numerical_gradient(f, logvar)))


def test_reparameterize_is_mu_plus_sigma_eps(rng):
    mu, logvar, eps = on_backend(rng.standard_normal((3, 2)), rng.standard_normal((3, 2)), rng.standard_normal((3, 2)))
    z = dist.reparameterize(mu, logvar, eps)
    np.testing.assert_allclose(host(z), host(mu) + np.exp(host(logvar) / 2) * host(eps), rtol=1e-12)
    # mu, logvar (b, 1, Z) against eps (b, k, Z): k draws for each row, as importance sampling uses it
    mu3, logvar3, eps3 = on_backend(rng.standard_normal((2, 1, 3)), rng.standard_normal((2, 1, 3)),
                                    rng.standard_normal((2, 4, 3)))
    z3 = host(dist.reparameterize(mu3, logvar3, eps3))
    assert z3.shape == (2, 4, 3)
    np.testing.assert_allclose(z3, host(mu3) + np.exp(host(logvar3) / 2) * host(eps3), rtol=1e-12)


def test_the_model_refuses_eps_of_the_wrong_shape(rng):
    model = npvae.VAE(4, (3,), 2, dtype="float64")
    with pytest.raises(ValueError, match=r"eps: expected shape \(N, 2\), got \(3, 3\)"):
        model.forward(rng.uniform(size=(3, 4)), np.zeros((3, 3)))


def sampler_moments_match(reparameterize, n=20_000, k=4.0):
    """Draw n samples of z for each (mu, logvar) with fresh eps; True when the sample mean is
    within k standard errors of mu and the sample variance within k standard errors of
    exp(logvar). SE(mean) = sqrt(var / n); SE(variance) = var * sqrt(2 / (n - 1))."""
    mu_h = np.array([-2.0, 0.0, 3.0, 0.5])
    logvar_h = np.array([-1.0, 0.0, 2.0, -3.0])
    mu, logvar = on_backend(np.tile(mu_h, (n, 1)), np.tile(logvar_h, (n, 1)))
    eps = Generator(2024).standard_normal((n, 4), dtype="float64")
    z = host(reparameterize(mu, logvar, eps))
    var = np.exp(logvar_h)
    mean_ok = np.abs(z.mean(axis=0) - mu_h) <= k * np.sqrt(var / n)
    var_ok = np.abs(z.var(axis=0, ddof=1) - var) <= k * var * np.sqrt(2.0 / (n - 1))
    return bool(mean_ok.all() and var_ok.all())


def test_samples_have_mean_mu_and_variance_exp_logvar():
    assert sampler_moments_match(dist.reparameterize)


def test_the_moment_test_catches_a_sampler_that_takes_exp_logvar_as_sigma():
    # A bug seen in published NumPy VAEs: sigma = exp(logvar) while the KL reads logvar as a
    # log-variance. Forward and backward agree with each other, so a gradient check passes;
    # the moments do not.
    def wrong(mu, logvar, eps):
        return mu + get_backend().xp.exp(logvar) * eps

    assert not sampler_moments_match(wrong)


# --- KL( N(mu, exp(logvar)) || N(0, I) ) ---------------------------------------------
@given(data=st.data(), n=dims, z=dims)
def test_kl_backward(data, n, z):
    mu, logvar, g = on_backend(data.draw(values((n, z), -1e3, 1e3)), data.draw(values((n, z), -20.0, 10.0)),
                               data.draw(values((n,), -1.0, 1.0)))
    f = lambda: weighted_sum(dist.gaussian_kl(mu, logvar), g)  # noqa: E731
    dmu, dlogvar = dist.gaussian_kl_backward(g, mu, logvar)
    assert_gradients_match(joined(dmu, dlogvar), joined(numerical_gradient(f, mu), numerical_gradient(f, logvar)))


@pytest.mark.parametrize("backward", ["reparameterize", "kl"])
def test_logvar_gradient_alone_with_moderate_mu(backward, rng):
    # With |mu| <= 3 the noise is small enough to check dlogvar as a block of its own.
    mu, logvar, eps = on_backend(rng.uniform(-3, 3, (4, 3)), rng.uniform(-20, 10, (4, 3)), rng.standard_normal((4, 3)))
    if backward == "kl":
        g = on_backend(rng.uniform(-1, 1, (4,)))[0]
        f = lambda: weighted_sum(dist.gaussian_kl(mu, logvar), g)  # noqa: E731
        dlogvar = dist.gaussian_kl_backward(g, mu, logvar)[1]
    else:
        g = on_backend(rng.uniform(-1, 1, (4, 3)))[0]
        f = lambda: weighted_sum(dist.reparameterize(mu, logvar, eps), g)  # noqa: E731
        dlogvar = dist.reparameterize_backward(g, logvar, eps)[1]
    assert_gradients_match(dlogvar, numerical_gradient(f, logvar))


@given(data=st.data(), n=dims, z=dims)
def test_kl_is_nonnegative(data, n, z):
    mu, logvar = on_backend(data.draw(values((n, z), -1e3, 1e3)), data.draw(values((n, z), -20.0, 10.0)))
    kl = host(dist.gaussian_kl(mu, logvar))
    assert kl.shape == (n,)
    assert (kl >= 0).all()


def test_kl_is_exactly_zero_at_the_prior():
    mu, logvar = on_backend(np.zeros((2, 7)), np.zeros((2, 7)))
    assert host(dist.gaussian_kl(mu, logvar)).tolist() == [0.0, 0.0]
    dmu, dlogvar = dist.gaussian_kl_backward(1.0, mu, logvar)
    assert not host(dmu).any() and not host(dlogvar).any()


def test_kl_matches_its_formula_and_a_monte_carlo_estimate():
    mu_h, logvar_h = np.array([[0.7, -1.5, 0.0]]), np.array([[0.3, -1.0, 1.2]])
    closed = float(host(dist.gaussian_kl(*on_backend(mu_h, logvar_h)))[0])
    by_hand = 0.5 * sum(m * m + math.exp(lv) - 1 - lv for m, lv in zip(mu_h[0], logvar_h[0]))
    assert closed == pytest.approx(by_hand, rel=1e-12)
    # KL = E_{z~q}[ log q(z) - log p(z) ]: average over M samples, with its standard error.
    m = 200_000
    mu, logvar = on_backend(np.tile(mu_h, (m, 1)), np.tile(logvar_h, (m, 1)))
    z = dist.reparameterize(mu, logvar, Generator(11).standard_normal((m, 3), dtype="float64"))
    zeros = on_backend(np.zeros((1, 3)))[0]
    terms = host(dist.gaussian_log_density(z, mu, logvar) - dist.gaussian_log_density(z, zeros, zeros))
    estimate, se = terms.mean(), terms.std(ddof=1) / np.sqrt(m)
    assert abs(estimate - closed) < 4 * se, (estimate, closed, se)


def test_gaussian_log_density_is_a_product_of_normal_densities(rng):
    z_h, mu_h, logvar_h = rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    got = host(dist.gaussian_log_density(*on_backend(z_h, mu_h, logvar_h)))
    sd = np.exp(logvar_h / 2)
    density = np.prod(np.exp(-0.5 * ((z_h - mu_h) / sd) ** 2) / (sd * np.sqrt(2 * np.pi)), axis=1)
    np.testing.assert_allclose(got, np.log(density), rtol=1e-12)


# --- Bernoulli from logits --------------------------------------------------------------
@given(data=st.data(), n=dims, d=dims)
def test_bernoulli_backward(data, n, d):
    x, logits, g = on_backend(data.draw(values((n, d), 0.0, 1.0)), data.draw(values((n, d), -30.0, 30.0)),
                              data.draw(values((n,), -1.0, 1.0)))
    f = lambda: weighted_sum(dist.bernoulli_log_likelihood(x, logits), g)  # noqa: E731
    dlogits = dist.bernoulli_log_likelihood_backward(g, x, logits)
    assert_gradients_match(dlogits, numerical_gradient(f, logits))


def test_bernoulli_matches_the_textbook_formula(rng):
    x_h, l_h = rng.uniform(size=(5, 6)), rng.uniform(-6, 6, size=(5, 6))
    p = 1 / (1 + np.exp(-l_h))
    expected = np.sum(x_h * np.log(p) + (1 - x_h) * np.log(1 - p), axis=1)
    np.testing.assert_allclose(host(dist.bernoulli_log_likelihood(*on_backend(x_h, l_h))), expected, rtol=1e-10)


def test_bernoulli_is_stable_at_huge_logits():
    x, logits = on_backend(np.array([[1.0, 0.0, 1.0, 0.0]]), np.array([[1e4, 1e4, -1e4, -1e4]]))
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        terms = [host(dist.bernoulli_log_likelihood(x[:, i : i + 1], logits[:, i : i + 1]))[0] for i in range(4)]
        grad = host(dist.bernoulli_log_likelihood_backward(1.0, x, logits))
    assert terms == [0.0, -1e4, -1e4, 0.0]  # log 1, log e^-1e4, log e^-1e4, log 1
    np.testing.assert_array_equal(grad, [[0.0, -1.0, 1.0, 0.0]])


# --- the lecture's Gaussian with unit variance --------------------------------------------
@given(data=st.data(), n=dims, d=dims)
def test_gaussian_backward(data, n, d):
    x, mean, g = on_backend(data.draw(values((n, d), -5.0, 5.0)), data.draw(values((n, d), -5.0, 5.0)),
                            data.draw(values((n,), -1.0, 1.0)))
    f = lambda: weighted_sum(dist.gaussian_log_likelihood(x, mean), g)  # noqa: E731
    dmean = dist.gaussian_log_likelihood_backward(g, x, mean)
    assert_gradients_match(dmean, numerical_gradient(f, mean))


def test_gaussian_is_in_nats_with_its_constant(rng):
    x_h, m_h = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    one_d = np.log(np.exp(-0.5 * (x_h - m_h) ** 2) / np.sqrt(2 * np.pi))  # log N(x_d; m_d, 1)
    got = host(dist.gaussian_log_likelihood(*on_backend(x_h, m_h)))
    np.testing.assert_allclose(got, one_d.sum(axis=1), rtol=1e-12)
