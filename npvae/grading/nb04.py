"""Graders for notebooks/04_kl_regularizer.ipynb.

- 04.1 ``gaussian_kl(mu, logvar)``: KL(N(mu, diag(exp(logvar))) || N(0, I)) per row,
  1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j). Compared with
  ``npvae.distributions.gaussian_kl``; checked against a Monte Carlo estimate of
  E_q[log q(z) - log p(z)] (within standard errors) and for KL >= 0 (0 at the prior);
  the common slips (the 1/2 missing, the sign of logvar, logvar or sigma in place of the
  variance exp(logvar), the -1 missing, the wrong axis) are named.
- 04.2 ``gaussian_kl_backward(dkl, mu, logvar)`` -> (dmu, dlogvar): a gradient check of
  sum_n dkl_n KL_n against central differences, and a comparison with
  ``npvae.distributions.gaussian_kl_backward``; the 1/2 missing (or applied to dmu), the -1
  missing, and dkl left out are named. dkl may also be one number for every row (a Python float
  or a 0-d array), as npvae's model passes it: ``nb03.check_one_number`` names a function that
  fails on that form.
"""

from __future__ import annotations

import numpy as np

from .. import distributions as dist
from ..backend import array_namespace, asarray
from . import ExerciseFailed, call, compare, fail, gradient_check, host, inputs, passed
from .nb03 import check_one_number

GAUSSIAN_KL = "04.1"
GAUSSIAN_KL_BACKWARD = "04.2"

N, Z = 6, 3  # N != Z, so a (N,) array that should be a column (N, 1) does not broadcast by accident


def _close(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------
# 04.1 gaussian_kl
# ---------------------------------------------------------------------------------------
def _kl_slips(mu, logvar):
    """(value, message) for the common wrong KLs, host float64 (N,)."""
    s = lambda a: np.sum(a, axis=-1)  # noqa: E731
    right = 0.5 * s(mu**2 + np.expm1(logvar) - logvar)
    return [
        (2 * right, "your KL is twice the right one: the factor 1/2 in front of the sum is missing "
                    "(KL = 1/2 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j))"),
        (0.5 * s(mu**2 + np.expm1(logvar) + logvar),
         "the sign of logvar is wrong: the term is -logvar (it comes from -1/2 log sigma^2 in log q), "
         "KL = 1/2 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)"),
        (s(mu**2 + np.expm1(logvar) + logvar),
         "the 1/2 is missing and the sign of logvar is wrong: KL = 1/2 * sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j)"),
        (0.5 * s(mu**2 - 1.0), "you used logvar where the variance belongs: sigma^2 = exp(logvar), so the term is "
                               "exp(logvar) - 1 - logvar, not logvar - 1 - logvar"),
        (s(mu**2 - 1.0), "the 1/2 is missing, and you used logvar where the variance exp(logvar) belongs"),
        (0.5 * s(mu**2 + np.exp(0.5 * logvar) - 1 - logvar),
         "you used the standard deviation sigma = exp(logvar / 2) where the variance sigma^2 = exp(logvar) belongs"),
        (0.5 * s(mu**2 + np.exp(logvar) - logvar),
         "the -1 is missing: then the KL of the prior from itself (mu = 0, logvar = 0) is Z/2 instead of 0"),
        (0.5 * s(mu + np.expm1(logvar) - logvar), "mu must be squared: the term is mu_j^2 (from E[z^2] = mu^2 + sigma^2)"),
        (0.5 * s(mu**2 + np.expm1(logvar) - logvar) / mu.shape[-1],
         "you averaged over the Z dimensions: the KL is a sum over them (xp.sum, not xp.mean)"),
    ]


def _monte_carlo_kl(mu, logvar, draws=20_000, seed=4):
    """Per row: the mean and standard error of log q(z) - log p(z) for z ~ q, host NumPy."""
    rng = np.random.default_rng(seed)
    sd = np.exp(0.5 * logvar)
    means, ses = [], []
    for m, lv, s in zip(mu, logvar, sd):
        z = m + s * rng.standard_normal((draws, m.shape[0]))
        log_q = np.sum(-0.5 * np.log(2 * np.pi) - 0.5 * lv - 0.5 * ((z - m) / s) ** 2, axis=1)
        log_p = np.sum(-0.5 * np.log(2 * np.pi) - 0.5 * z**2, axis=1)
        terms = log_q - log_p
        means.append(terms.mean())
        ses.append(terms.std(ddof=1) / np.sqrt(draws))
    return np.array(means), np.array(ses)


def check_gaussian_kl(gaussian_kl):
    """Exercise 04.1: ``gaussian_kl(mu, logvar)`` -> (N,) KL of each row from N(0, I)."""
    ex = GAUSSIAN_KL
    mu, logvar = inputs(41, (N, Z), (N, Z))
    got = host(call(ex, gaussian_kl, mu, logvar), ex, "gaussian_kl(mu, logvar)")
    want = host(dist.gaussian_kl.textbook(mu, logvar))
    mu_h, logvar_h = host(mu), host(logvar)
    if got.shape != want.shape:
        if got.shape == ():
            fail(ex, "you returned one number: return one KL per row, (N,), summing over the Z latent "
                     "dimensions only (axis=-1)")
        if got.shape == (N, Z):
            fail(ex, f"you returned shape {got.shape}, one value per dimension: sum over the Z dimensions "
                     "(axis=-1) to get one KL per row, (N,)")
        if got.shape == (Z,):
            fail(ex, "you summed over the rows (axis=0): sum over the Z dimensions (axis=-1), one KL per row")
        fail(ex, f"expected one KL per row, shape {want.shape}, got shape {got.shape}")
    if not _close(got, want):
        for value, message in _kl_slips(mu_h, logvar_h):
            if _close(got, value):
                fail(ex, message)
    # KL >= 0, and 0 exactly at the prior (mu = 0, logvar = 0)
    zeros = asarray(np.zeros((2, Z)), dtype="float64")
    at_prior = host(call(ex, gaussian_kl, zeros, zeros), ex, "the KL at the prior")
    if at_prior.shape == (2,) and not np.all(np.abs(at_prior) <= 1e-15):
        fail(ex, f"at the prior itself (mu = 0, logvar = 0) your KL is {at_prior[0]:.3g}, not 0: "
                 "KL(P || P) = 0")
    if np.any(got < 0):
        row = int(np.argmin(got))
        fail(ex, f"your KL of row {row} is {got[row]:.3g} < 0: a KL is never negative "
                 "(each term exp(t) - 1 - t is >= 0, and mu^2 >= 0)")
    # a Monte Carlo estimate of the definition E_q[log q(z) - log p(z)], within standard errors
    mc_mu, mc_logvar = inputs(42, (4, Z), (4, Z), low=-1.5, high=1.5)
    mc_got = host(call(ex, gaussian_kl, mc_mu, mc_logvar), ex, "gaussian_kl(mu, logvar)")
    mc, se = _monte_carlo_kl(host(mc_mu), host(mc_logvar))
    dev = np.abs(mc_got - mc) / se
    if not np.all(dev < 5):
        row = int(np.argmax(dev))
        fail(ex, f"for row {row} your KL is {mc_got[row]:.4f} nats, but a Monte Carlo estimate of "
                 f"E_q[log q(z) - log p(z)] from 20,000 draws gives {mc[row]:.4f} +- {se[row]:.4f}: "
                 f"{dev[row]:.0f} standard errors away")
    compare(ex, got, want, "gaussian_kl(mu, logvar)")
    passed(ex, f"equals npvae's gaussian_kl on {N} random posteriors, agrees with a Monte Carlo "
               f"estimate (largest deviation {dev.max():.1f} standard errors), is >= 0 and 0 at the prior")


# ---------------------------------------------------------------------------------------
# 04.2 gaussian_kl_backward
# ---------------------------------------------------------------------------------------
def check_gaussian_kl_backward(gaussian_kl_backward):
    """Exercise 04.2: ``gaussian_kl_backward(dkl, mu, logvar)`` -> (dmu, dlogvar), (N, Z) each."""
    ex = GAUSSIAN_KL_BACKWARD
    mu, logvar = inputs(43, (N, Z), (N, Z))
    (dkl,) = inputs(44, (N,), low=0.5, high=2.0)
    try:
        out = call(ex, gaussian_kl_backward, dkl, mu, logvar)
    except ExerciseFailed as exc:
        if "broadcast" in str(exc):  # dkl (N,) times mu (N, Z)
            fail(ex, "dkl has shape (N,), one number per row, and mu (N, Z): reshape dkl to a column "
                     f"(N, 1) so that it multiplies each row ({str(exc).split(': ', 1)[1]})")
        raise
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        fail(ex, "return the pair (dmu, dlogvar)")
    dmu = host(out[0], ex, "dmu")
    dlogvar = host(out[1], ex, "dlogvar")
    want_dmu, want_dlogvar = (host(a) for a in dist.gaussian_kl_backward.textbook(dkl, mu, logvar))
    for name, got, want in [("dmu", dmu, want_dmu), ("dlogvar", dlogvar, want_dlogvar)]:
        if got.shape != want.shape:
            fail(ex, f"{name}: expected shape {want.shape} (one gradient per entry of {name[1:]}), got {got.shape}")

    col = host(dkl)[:, None]  # (N, 1)
    mu_h, logvar_h = host(mu), host(logvar)
    if not _close(dlogvar, want_dlogvar):
        for value, message in [
            (2 * want_dlogvar, "dlogvar: the gradient is twice the right one: the 1/2 is missing "
                               "(d/dlogvar of 1/2 (exp(logvar) - 1 - logvar) is (exp(logvar) - 1) / 2)"),
            (col * 0.5 * np.exp(logvar_h), "dlogvar: the -1 is missing: d/dlogvar of -logvar is -1, "
                                           "so dKL/dlogvar = (exp(logvar) - 1) / 2"),
            (-want_dlogvar, "dlogvar has the wrong sign: dKL/dlogvar = (exp(logvar) - 1) / 2"),
            (0.5 * np.expm1(logvar_h), "dlogvar: you did not multiply by the upstream gradient dkl of each row"),
            (np.expm1(logvar_h), "dlogvar: the 1/2 is missing, and you did not multiply by dkl"),
        ]:
            if _close(dlogvar, value):
                fail(ex, message)
    if not _close(dmu, want_dmu):
        for value, message in [
            (0.5 * col * mu_h, "dmu is half the right one: d/dmu of 1/2 mu^2 is mu (the 1/2 cancels the 2)"),
            (2 * col * mu_h, "dmu is twice the right one: d/dmu of 1/2 mu^2 is mu"),
            (mu_h, "dmu: you did not multiply by the upstream gradient dkl of each row"),
            (-col * mu_h, "dmu has the wrong sign: dKL/dmu = mu"),
        ]:
            if _close(dmu, value):
                fail(ex, message)

    # central differences of the scalar sum_n dkl_n KL_n(mu, logvar), computed with npvae's KL
    xp = array_namespace(mu)
    total = lambda: float(xp.sum(dkl * dist.gaussian_kl.textbook(mu, logvar)))  # noqa: E731
    err_mu = gradient_check(ex, total, mu, dmu, "dmu")
    err_logvar = gradient_check(ex, total, logvar, dlogvar, "dlogvar")
    compare(ex, dmu, want_dmu, "dmu")
    compare(ex, dlogvar, want_dlogvar, "dlogvar")
    check_one_number(ex, gaussian_kl_backward, dist.gaussian_kl_backward.textbook, "dkl", (mu, logvar),
                     ("dmu", "dlogvar"))
    passed(ex, f"dmu and dlogvar match central differences (relative errors {err_mu:.0e}, "
               f"{err_logvar:.0e}) and npvae's gaussian_kl_backward; dkl may also be one number, as npvae passes it")
