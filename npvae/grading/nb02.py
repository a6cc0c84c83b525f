"""Graders for notebook 02 (the encoder and the reparameterization trick).

- ``check_reparameterize(reparameterize)``, exercise 02.1: z = mu + exp(logvar / 2) * eps,
  compared with ``npvae.distributions.reparameterize``; the mistakes with sigma (exp(logvar),
  the variance, used as sigma; the 1/2 outside the exponent; logvar itself) are named; and the
  moments of 20,000 draws z (eps ~ N(0, I) passed in) must be mu and exp(logvar) within 4
  standard errors.
- ``check_reparameterize_backward(reparameterize_backward)``, exercise 02.2: (dmu, dlogvar) =
  (dz, dz * exp(logvar / 2) * eps / 2), compared with ``npvae.distributions.
  reparameterize_backward`` and gradient-checked (float64 central differences) against npvae's
  own forward ``reparameterize``, not the student's: a backward that matches the derivative of a
  wrong forward must still fail. A backward that draws its own eps is caught by calling it twice.

Each recognises the common mistakes and says what is wrong in words.
"""

from __future__ import annotations

import numpy as np

from ..backend import array_namespace, asarray
from .. import distributions as dist
from . import call, compare, fail, gradient_check, host, inputs, passed

REPARAM_EX = "02.1"
BACKWARD_EX = "02.2"
K_DRAWS = 20_000  # draws for the moment check
K_SE = 4.0  # a right sampler exceeds 4 standard errors in one coordinate with probability 6e-5
GRAD_TOL = 1e-6  # a right backward gives about 1e-10 here


def _close(a, b):
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and np.allclose(a, b, rtol=1e-8, atol=1e-12)


# ---------------------------------------------------------------------------------------
# 02.1: z = mu + exp(logvar / 2) * eps
# ---------------------------------------------------------------------------------------
def _sigma_mistakes(lv):
    """(the sigma a mistake uses, what is wrong), on the host."""
    return [
        (np.exp(lv), "you used exp(logvar) as the standard deviation: exp(logvar) is the variance sigma^2 (the 1/2 "
                     "in the exponent is missing); sigma = exp(logvar / 2)"),
        (0.5 * np.exp(lv), "the 1/2 belongs inside the exponent: sigma = exp(logvar / 2), not exp(logvar) / 2"),
        (np.exp(-0.5 * lv), "the exponent has the wrong sign: sigma = exp(+logvar / 2); exp(-logvar / 2) is 1 / sigma"),
        (np.exp(2.0 * lv), "sigma = exp(logvar / 2); you used exp(2 logvar), the variance squared"),
        (lv, "you used logvar itself as sigma: logvar = log sigma^2, so sigma = exp(logvar / 2)"),
        (0.5 * lv, "you used logvar / 2 = log sigma as sigma: take its exponential, sigma = exp(logvar / 2)"),
    ]


def _moments(reparameterize, exercise, what):
    """Draw K_DRAWS z for fixed mu and logvar (4 coordinates, sigma from 0.22 to 2.1) with eps from
    N(0, I); returns (largest |mean - mu| in SE, largest |variance - exp(logvar)| in SE)."""
    mu_h = np.array([0.5, -1.0, 2.0, 0.0])
    lv_h = np.array([-3.0, -1.0, 0.5, 1.5])
    eps_h = np.random.default_rng(2021).standard_normal((K_DRAWS, mu_h.size))
    mu, lv, eps = (asarray(a, dtype="float64") for a in (np.tile(mu_h, (K_DRAWS, 1)), np.tile(lv_h, (K_DRAWS, 1)), eps_h))
    z = host(call(exercise, reparameterize, mu, lv, eps), exercise, what)
    if z.shape != eps_h.shape:
        fail(exercise, f"{what}: expected shape {eps_h.shape} (eps's), got {z.shape}")
    var = np.exp(lv_h)
    se_mean, se_var = np.sqrt(var / K_DRAWS), var * np.sqrt(2.0 / (K_DRAWS - 1))
    z_mean = np.abs(z.mean(axis=0) - mu_h) / se_mean
    z_var = np.abs(z.var(axis=0, ddof=1) - var) / se_var
    return float(np.max(z_mean)), float(np.max(z_var))


def check_reparameterize(reparameterize):
    """Grade exercise 02.1: ``reparameterize(mu, logvar, eps)`` is mu + exp(logvar / 2) * eps."""
    ex = REPARAM_EX
    mu, logvar, eps = inputs(201, (6, 5), (6, 5), (6, 5))  # logvar in [-2, 2): sigma and sigma^2 differ
    got = host(call(ex, reparameterize, mu, logvar, eps), ex, "z")
    want = host(dist.reparameterize.textbook(mu, logvar, eps))
    m, lv, e = (host(a) for a in (mu, logvar, eps))
    if got.shape != want.shape:
        fail(ex, f"z: expected shape {want.shape} (one z per entry of eps), got {got.shape}")
    if not _close(got, want):
        for sigma, message in _sigma_mistakes(lv):
            if _close(got, m + sigma * e):
                fail(ex, message)
        if _close(got, m + e):
            fail(ex, "z = mu + eps leaves out sigma: z = mu + exp(logvar / 2) * eps")
        if _close(got, m + np.exp(0.5 * lv)):
            fail(ex, "z = mu + sigma leaves out the noise: z = mu + sigma * eps, with the eps passed in")
        if _close(got, np.exp(0.5 * lv) + m * e):
            fail(ex, "mu and sigma are swapped: z = mu + sigma * eps, the mean plus the scaled noise")
        # Not a known form: is it at least a right sampler that ignores the eps given to it?
        zs_mean, zs_var = _moments(reparameterize, ex, "z")
        if zs_mean < K_SE and zs_var < K_SE:
            fail(ex, "your z has the right distribution, but it is not mu + sigma * eps for the eps passed in: "
                     "use the argument eps (the trick needs eps as an input, so that the backward pass can use it "
                     "again)")
        compare(ex, got, want, "z = mu + exp(logvar / 2) * eps")
    zs_mean, zs_var = _moments(reparameterize, ex, "z (20000 draws)")
    if not (zs_mean < K_SE and zs_var < K_SE):
        fail(ex, f"20000 draws of z have the wrong moments: the sample mean is {zs_mean:.1f} standard errors from "
                 f"mu and the sample variance {zs_var:.1f} standard errors from exp(logvar) (a right sampler: "
                 f"below {K_SE:g})")
    passed(ex, f"z equals mu + exp(logvar / 2) * eps, and {K_DRAWS} draws have mean mu and variance exp(logvar) "
               f"(largest deviations {zs_mean:.2f} and {zs_var:.2f} standard errors; bound {K_SE:g})")


# ---------------------------------------------------------------------------------------
# 02.2: the backward pass of z = mu + exp(logvar / 2) * eps
# ---------------------------------------------------------------------------------------
def _pair(res, ex):
    if not (isinstance(res, (tuple, list)) and len(res) == 2):
        fail(ex, f"return the pair (dmu, dlogvar); got {type(res).__name__}")
    return host(res[0], ex, "dmu"), host(res[1], ex, "dlogvar")


def _dlogvar_mistakes(dz, lv, e):
    """(a wrong dlogvar, what is wrong), on the host."""
    s = np.exp(0.5 * lv)
    return [
        (dz * s * e, "dlogvar is missing the factor 1/2: z = mu + exp(logvar / 2) * eps, so d z / d logvar = "
                     "exp(logvar / 2) * eps / 2 (the chain rule brings down the 1/2 of logvar / 2), and dlogvar = "
                     "dz * sigma * eps / 2"),
        (dz * e, "dz * eps is the gradient with respect to sigma; the parameter is logvar: multiply by "
                 "d sigma / d logvar = sigma / 2, so dlogvar = dz * sigma * eps / 2"),
        (dz * 0.5 * e, "dlogvar is missing sigma: d z / d logvar = exp(logvar / 2) * eps / 2 = sigma * eps / 2"),
        (dz * np.exp(lv) * e, "you differentiated z = mu + exp(logvar) * eps, with the variance as sigma; for "
                              "z = mu + exp(logvar / 2) * eps, dlogvar = dz * exp(logvar / 2) * eps / 2"),
        (dz * 0.5 * np.exp(lv) * e, "you used exp(logvar) (the variance) where the derivative has sigma = "
                                    "exp(logvar / 2): dlogvar = dz * exp(logvar / 2) * eps / 2"),
        (dz * 0.5 * s, "dlogvar is missing eps: d z / d logvar = sigma * eps / 2, with the forward pass's eps"),
        (0.5 * s * e, "dlogvar is d z / d logvar alone: multiply it by the upstream gradient dz (chain rule)"),
        (-dz * 0.5 * s * e, "dlogvar has the wrong sign: dlogvar = + dz * sigma * eps / 2"),
    ]


def check_reparameterize_backward(reparameterize_backward):
    """Grade exercise 02.2: ``reparameterize_backward(dz, logvar, eps)`` returns (dz, dz * sigma * eps / 2)."""
    ex = BACKWARD_EX
    dz, mu, logvar, eps = inputs(202, (6, 5), (6, 5), (6, 5), (6, 5))
    dzh, lv, e = host(dz), host(logvar), host(eps)
    dmu, dlv = _pair(call(ex, reparameterize_backward, dz, logvar, eps), ex)
    dmu2, dlv2 = _pair(call(ex, reparameterize_backward, dz, logvar, eps), ex)
    if dmu.shape == dmu2.shape and dlv.shape == dlv2.shape and not (
            np.array_equal(dmu, dmu2, equal_nan=True) and np.array_equal(dlv, dlv2, equal_nan=True)):
        fail(ex, "two calls with the same (dz, logvar, eps) gave different gradients: your backward draws new "
                 "noise. It must use the eps passed in, the one the forward pass used: with a fresh eps the "
                 "gradient belongs to a z that the forward pass never computed")
    want_mu, want_lv = (host(a) for a in dist.reparameterize_backward.textbook(dz, logvar, eps))
    for got, want, what in ((dmu, want_mu, "dmu"), (dlv, want_lv, "dlogvar")):
        if got.shape != want.shape:
            fail(ex, f"{what}: expected shape {want.shape} (dz's), got {got.shape}")
    if not _close(dmu, want_mu):
        if _close(dmu, np.ones_like(dzh)):
            fail(ex, "dmu is d z / d mu = 1 alone: multiply by the upstream gradient, dmu = dz * 1 = dz")
        if _close(dmu, want_lv):
            fail(ex, "dmu and dlogvar are swapped: return (dmu, dlogvar) = (dz, dz * sigma * eps / 2)")
        compare(ex, dmu, want_mu, "dmu (d z / d mu = 1, so dmu = dz)")
    if not _close(dlv, want_lv):
        for candidate, message in _dlogvar_mistakes(dzh, lv, e):
            if _close(dlv, candidate):
                fail(ex, message)

    # The gradient check: central differences of sum(dz * z) through npvae's own forward pass
    # (a backward that differentiates the student's own wrong forward would pass its own check).
    xp = array_namespace(dz)

    def f():
        return float(xp.sum(dz * dist.reparameterize.textbook(mu, logvar, eps)))

    errs = [gradient_check(ex, f, x, got, what, rtol=GRAD_TOL, of="sum(dz * z), z = mu + exp(logvar / 2) * eps")
            for got, x, what in ((dmu, mu, "dmu"), (dlv, logvar, "dlogvar"))]
    compare(ex, dmu, want_mu, "dmu")
    compare(ex, dlv, want_lv, "dlogvar")
    passed(ex, f"(dmu, dlogvar) = (dz, dz * exp(logvar / 2) * eps / 2), the same as npvae's; gradient check against "
               f"npvae's forward in float64: relative errors {errs[0]:.1e} (dmu) and {errs[1]:.1e} (dlogvar), bound "
               f"{GRAD_TOL:g}; the same answer on a second call")
