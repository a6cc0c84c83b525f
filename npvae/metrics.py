"""Measuring a trained VAE: the ELBO, the importance-sampled log-likelihood, active units.

- ``evaluate(model, x)``: -ELBO and its two terms, nats per example, one eps per example.
- ``log_likelihood(model, x, k)``: log p(x) estimated by importance sampling with the
  encoder as proposal (Burda et al. 2016):

      log p(x) ~ log (1/k) sum_{i=1..k} w_i,   w_i = P(x|z_i) P(z_i) / Q(z_i|x),  z_i ~ Q(z|x)

  computed with log-sum-exp. For k = 1 its expectation is the ELBO; it grows with k and
  tends to log p(x). (The gap at k = 1 is KL(Q(z|x) || P(z|x)).) log Q(z_i|x) is computed
  from the noise eps_i that made z_i, never from z_i - mu: see ``_log_q_from_eps``.
- ``active_units(model, x)``: latent units u whose posterior mean moves with x,
  Cov_x(E_Q[z_u]) > 0.01 (Burda et al. 2016); the rest have collapsed onto the prior.
"""

from __future__ import annotations

import math

from . import distributions as dist
from .backend import Generator, array_namespace, check_int, get_backend, spawn_seeds, to_numpy

MAX_ROWS = 8192  # rows decoded at once by log_likelihood: memory ~ MAX_ROWS * (D + H) floats


def evaluate(model, x, batch_size=1000, seed=0) -> dict:
    """-ELBO of ``model`` on ``x`` (N, D) with one eps per example drawn from ``seed``.

    Returns {"loss", "reconstruction", "kl"}: means over x, in nats per example;
    loss = reconstruction + kl.
    """
    check_int("batch_size", batch_size)
    x = _check_rows(model.check_x(x))
    xp = model.xp
    rng = Generator(spawn_seeds(seed, 2)[0])
    n = int(x.shape[0])
    totals = {"reconstruction": 0.0, "kl": 0.0}
    for a in range(0, n, batch_size):
        xb = x[a : min(a + batch_size, n), ...]
        mu, logvar, _ = model._encode(xb)
        eps = rng.standard_normal(tuple(mu.shape), dtype=model.dtype)
        z, _ = dist.reparameterize(mu, logvar, eps)
        out, _ = model.decoder.forward(z)
        totals["reconstruction"] += float(xp.sum(-model.log_likelihood(xb, out)))
        totals["kl"] += float(xp.sum(dist.gaussian_kl(mu, logvar)))
    rec, kl = totals["reconstruction"] / n, totals["kl"] / n
    return {"loss": rec + kl, "reconstruction": rec, "kl": kl}


def log_likelihood(model, x, k=5000, seed=0, max_rows=MAX_ROWS, progress=False, per_example=False):
    """Importance-sampled estimate of log p(x), averaged over the rows of x, in nats.

    Args:
        x: (N, D). k: importance samples per example.
        max_rows: memory bound: at most this many (example, sample) pairs are decoded at once,
            so memory is about max_rows * (D + sum of hidden widths) floats (the default
            8192 rows of a 784-400 decoder in float32: about 38 MB), whatever N and k.
        per_example: return the (N,) host array of estimates instead of their mean.
    Returns:
        the mean over x of log p(x) (a negative number for images), or the (N,) estimates.

    The k log-weights of each example are combined with a running log-sum-exp, chunk by
    chunk: m = max so far, s = sum exp(log w - m), log p = m + log s - log k.
    """
    check_int("k", k)
    check_int("max_rows", max_rows)
    x = _check_rows(model.check_x(x))
    be, xp = get_backend(), model.xp
    rng = Generator(spawn_seeds(seed, 2)[1])
    n, d, zdim = int(x.shape[0]), model.input_dim, model.latent_dim
    ex_per_chunk = max(1, min(n, max_rows // k))  # examples decoded together
    k_per_chunk = max(1, min(k, max_rows // ex_per_chunk))  # samples per example at once
    estimates = be.zeros((n,), "float64")  # (N,)
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=n, desc=f"log p(x), k={k}", unit="ex", disable=not sys.stderr.isatty())
    zeros = be.zeros((1, 1, zdim), model.dtype)
    for a in range(0, n, ex_per_chunk):
        xb = x[a : min(a + ex_per_chunk, n), ...]  # (b, D)
        b = int(xb.shape[0])
        mu, logvar, _ = model._encode(xb)
        mu, logvar = xp.reshape(mu, (b, 1, zdim)), xp.reshape(logvar, (b, 1, zdim))
        x3 = xp.reshape(xb, (b, 1, d))
        m = s = None  # running max and scaled sum, (b,)
        for j in range(0, k, k_per_chunk):
            kc = min(k_per_chunk, k - j)
            eps = rng.standard_normal((b, kc, zdim), dtype=model.dtype)
            z = mu + xp.exp(0.5 * logvar) * eps  # (b, kc, Z) ~ Q(z|x)
            out, _ = model.decoder.forward(xp.reshape(z, (b * kc, zdim)))
            out = xp.reshape(out, (b, kc, d))
            log_w = (model.log_likelihood(x3, out)  # log P(x|z)        (b, kc)
                     + dist.gaussian_log_density(z, zeros, zeros)  # + log P(z)
                     - _log_q_from_eps(eps, logvar))  # - log Q(z|x)
            chunk_max = xp.max(log_w, axis=1)
            if m is None:
                m, s = chunk_max, xp.sum(xp.exp(log_w - xp.reshape(chunk_max, (b, 1))), axis=1)
            else:
                new_m = xp.maximum(m, chunk_max)
                s = s * xp.exp(m - new_m) + xp.sum(xp.exp(log_w - xp.reshape(new_m, (b, 1))), axis=1)
                m = new_m
        est = m + xp.log(s) - math.log(k)  # (b,)
        estimates[a : a + b] = be.astype(est, "float64")
        if bar is not None:
            bar.update(b)
    if bar is not None:
        bar.close()
    return to_numpy(estimates) if per_example else float(xp.mean(estimates))


def _log_q_from_eps(eps, logvar):
    """log Q(z|x) = log N(z; mu, diag(exp(logvar))) at z = mu + exp(logvar/2) * eps, from eps.

    Since (z_j - mu_j)^2 / exp(logvar_j) = eps_j^2 exactly,

        log Q(z|x) = -1/2 * sum_j [ eps_j^2 + logvar_j + log(2 pi) ]

    The textbook form ``(z - mu)**2 * exp(-logvar)`` fails for a very negative logvar (an
    encoder that has trained a unit to a near point mass reaches logvar ~ -108): exp(-logvar)
    overflows float32 (0 * inf = NaN), and, in any dtype, once sigma is below the rounding
    unit of mu, z - mu is only mu's rounding error, so the quotient is noise. This form has
    neither problem.

    Args: eps (..., k, Z), logvar broadcastable to it, e.g. (b, 1, Z). Returns: (..., k).
    """
    xp = array_namespace(eps)
    return -0.5 * xp.sum(eps * eps + logvar + dist.LOG_2PI, axis=-1)


def _check_rows(x):
    """x (N, D) unchanged, or a ValueError when it has no rows (a mean over none is undefined)."""
    if int(x.shape[0]) == 0:
        raise ValueError("x: expected at least one row, got 0")
    return x


def active_units(model, x, threshold=1e-2, batch_size=1000) -> int:
    """How many latent units u have Cov_x(E_Q[z_u | x]) = Var_x(mu_u(x)) > ``threshold``."""
    return int((unit_activity(model, x, batch_size) > threshold).sum())


def unit_activity(model, x, batch_size=1000):
    """Var_x(mu_u(x)) for each latent unit u, as a host NumPy array (Z,)."""
    check_int("batch_size", batch_size)
    x = _check_rows(model.check_x(x))
    be, n = get_backend(), int(x.shape[0])
    mu = be.zeros((n, model.latent_dim), "float64")  # (N, Z)
    for a in range(0, n, batch_size):
        b = min(a + batch_size, n)
        mu[a:b, ...] = be.astype(model._encode(x[a:b, ...])[0], "float64")
    return to_numpy(model.xp.var(mu, axis=0))
