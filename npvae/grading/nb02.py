"""Graders for notebook 02 (the encoder and the reparameterization trick).

- ``check_reparameterize(reparameterize)``, exercise 02.1: z = mu + exp(logvar / 2) * eps,
  compared with ``npvae.distributions.reparameterize``; the mistakes with sigma (exp(logvar),
  the variance, used as sigma; the 1/2 outside the exponent; logvar itself; a sigma averaged
  over the batch; mu - sigma * eps) are named; and 20,000 draws z (eps ~ N(0, I) passed in),
  each row with its own mu and logvar, must give (z - mu) / sigma with mean 0 and variance 1
  within 4 standard errors (a sigma shared by the rows fails there); mu and logvar (b, 1, Z) with
  eps (b, k, Z) must give k draws for each row, as npvae's do.
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
from . import ExerciseFailed, call, compare, fail, gradient_check, host, inputs, passed

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


def _z_mistake(z, m, lv, e):
    """What is wrong when ``z`` is a known wrong z for (mu, logvar, eps), on the host; else None."""
    s = np.exp(0.5 * lv)
    for sigma, message in _sigma_mistakes(lv):
        if _close(z, m + sigma * e):
            return message
    for shared in (s.mean(axis=0), np.exp(0.5 * lv.mean(axis=0)), s.mean(), np.exp(0.5 * lv.mean())):
        if _close(z, m + shared * e):
            return ("you averaged sigma over the batch: each row has its own mu and logvar, so its own sigma = "
                    "exp(logvar / 2), row by row (no mean over the rows)")
    if _close(z, m - s * e):
        return ("z = mu - sigma * eps has the right distribution (eps and -eps are both N(0, I)), but it is not the z "
                "the rest of the model assumes for this eps: the backward pass (02.2) differentiates "
                "z = mu + sigma * eps; use the + sign")
    if _close(z, m + e):
        return "z = mu + eps leaves out sigma: z = mu + exp(logvar / 2) * eps"
    if _close(z, m + s):
        return "z = mu + sigma leaves out the noise: z = mu + sigma * eps, with the eps passed in"
    if _close(z, s + m * e):
        return "mu and sigma are swapped: z = mu + sigma * eps, the mean plus the scaled noise"
    return None


def _moments(reparameterize, exercise, what):
    """Draw K_DRAWS z, each row with its own mu and logvar (sigma from 0.22 to 2.1), with eps from
    N(0, I); returns the largest deviations of (z - mu) / sigma from mean 0 and from variance 1,
    in standard errors, over the 4 coordinates."""
    rng = np.random.default_rng(2021)
    mu_h = rng.uniform(-2.0, 2.0, size=(K_DRAWS, 4))
    lv_h = rng.uniform(-3.0, 1.5, size=(K_DRAWS, 4))
    eps_h = rng.standard_normal((K_DRAWS, 4))
    mu, lv, eps = (asarray(a, dtype="float64") for a in (mu_h, lv_h, eps_h))
    z = host(call(exercise, reparameterize, mu, lv, eps), exercise, what)
    if z.shape != eps_h.shape:
        fail(exercise, f"{what}: expected shape {eps_h.shape} (eps's), got {z.shape}")
    u = (z - mu_h) / np.exp(0.5 * lv_h)  # N(0, 1) for a right sampler
    z_mean = np.abs(u.mean(axis=0)) * np.sqrt(K_DRAWS)
    z_var = np.abs(u.var(axis=0, ddof=1) - 1.0) / np.sqrt(2.0 / (K_DRAWS - 1))
    return float(np.max(z_mean)), float(np.max(z_var))


def _wrong_moments(ex, zs_mean, zs_var):
    if not (zs_mean < K_SE and zs_var < K_SE):
        fail(ex, f"{K_DRAWS} draws of z, each row with its own mu and logvar, have the wrong moments: (z - mu) / sigma "
                 f"should be N(0, 1), but its sample mean is {zs_mean:.1f} standard errors from 0 and its sample "
                 f"variance {zs_var:.1f} standard errors from 1 (a right sampler: below {K_SE:g}); is sigma "
                 f"computed row by row, sigma = exp(logvar / 2)?")


def check_reparameterize(reparameterize):
    """Grade exercise 02.1: ``reparameterize(mu, logvar, eps)`` is mu + exp(logvar / 2) * eps."""
    ex = REPARAM_EX
    mu, logvar, eps = inputs(201, (6, 5), (6, 5), (6, 5))  # logvar in [-2, 2): sigma and sigma^2 differ
    got = host(call(ex, reparameterize, mu, logvar, eps), ex, "z")
    want = host(dist.reparameterize.textbook(mu, logvar, eps))
    if got.shape != want.shape:
        fail(ex, f"z: expected shape {want.shape} (one z per entry of eps), got {got.shape}")
    if not _close(got, want):
        message = _z_mistake(got, *(host(a) for a in (mu, logvar, eps)))
        if message:
            fail(ex, message)
        # Not a known form: is it at least a right sampler that ignores the eps given to it?
        zs_mean, zs_var = _moments(reparameterize, ex, "z")
        if zs_mean < K_SE and zs_var < K_SE:
            fail(ex, "your z has the right distribution, but it is not mu + sigma * eps for the eps passed in: "
                     "use the argument eps (the trick needs eps as an input, so that the backward pass can use it "
                     "again)")
        if np.all(np.isfinite(got)):
            _wrong_moments(ex, zs_mean, zs_var)
        compare(ex, got, want, "z = mu + exp(logvar / 2) * eps")
    zs_mean, zs_var = _moments(reparameterize, ex, "z (20000 draws)")
    _wrong_moments(ex, zs_mean, zs_var)
    _broadcast(reparameterize, ex)
    passed(ex, f"z equals mu + exp(logvar / 2) * eps, and {K_DRAWS} draws, each row with its own mu and logvar, give "
               f"(z - mu) / sigma with mean 0 and variance 1 (largest deviations {zs_mean:.2f} and {zs_var:.2f} "
               f"standard errors; bound {K_SE:g}); k draws per row by broadcasting, as npvae's")


def _broadcast(reparameterize, ex):
    """Fail unless mu, logvar (b, 1, Z) with eps (b, k, Z) give k draws for each row, as npvae's
    reparameterize does (the importance-sampled log-likelihood draws that way)."""
    mu, logvar, eps = inputs(203, (2, 1, 3), (2, 1, 3), (2, 4, 3))
    want = host(dist.reparameterize.textbook(mu, logvar, eps))
    try:
        got = host(call(ex, reparameterize, mu, logvar, eps), ex, "z")
    except ExerciseFailed as exc:
        if "your function raised" not in str(exc):
            raise
        got = None
    if got is None or not _close(got, want):
        fail(ex, "your function fails when mu and logvar broadcast against eps: with mu and logvar of shape (b, 1, Z) "
                 "and eps (b, k, Z), npvae's reparameterize gives k draws for each row, z of eps's shape (b, k, Z) "
                 "(npvae's importance-sampled log-likelihood draws that way); compute z entry by entry, with no "
                 "reshape to mu's shape")


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
