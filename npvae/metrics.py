"""Measuring a trained VAE: the ELBO, the importance-sampled log p(x), active units.

- ``evaluate(model, x)``: -ELBO and its two terms, nats per example, one eps per example.
- ``log_marginal_likelihood(model, x, k)``: log p(x) estimated by importance sampling with
  the encoder as proposal (Burda et al. 2016):

      log p(x) ~ log (1/k) sum_{i=1..k} w_i,   w_i = P(x|z_i) P(z_i) / Q(z_i|x),  z_i ~ Q(z|x)

  computed with log-sum-exp. For k = 1 its expectation is the ELBO; it grows with k and
  tends to log p(x). (The gap at k = 1 is KL(Q(z|x) || P(z|x)).) log Q(z_i|x) is computed
  from the noise eps_i that made z_i, never from z_i - mu: see
  ``distributions.gaussian_log_density_at_sample``.
- ``active_units(model, x)``: latent units u whose posterior mean moves with x,
  Cov_x(E_Q[z_u]) > 0.01 (Burda et al. 2016); the rest have collapsed onto the prior.

None of them returns NaN or inf. A float32 model whose numbers overflow (a posterior variance
exp(logvar) above 3.4e38, as in a model that diverged) is evaluated again in float64, with a
warning that says so; what float64 cannot hold either raises ``FloatingPointError`` naming
the quantity and the posterior log-variance that overflowed.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from . import distributions as dist
from .backend import get_backend, to_numpy
from .checks import check_int
from .random import EVALUATION_STREAMS, Generator, streams

EVALUATE_ROWS = 1000  # rows of x evaluated at once by evaluate (fit's test -ELBO): memory ~ their activations
MAX_ROWS = 8192  # rows decoded at once by log_marginal_likelihood: memory ~ MAX_ROWS * (D + H) floats


def evaluate(model, x, batch_size=EVALUATE_ROWS, seed=0, float64_retry=True) -> dict:
    """-ELBO of ``model`` on ``x`` (N, D) with one eps per example drawn from ``seed``.

    Returns {"loss", "reconstruction", "kl"}: means over x, in nats per example;
    loss = reconstruction + kl. Always finite: see the module's docstring.
    ``float64_retry=False`` raises FloatingPointError at once where float32 overflows (``fit``
    does: there an overflow means training diverged).
    """
    check_int("batch_size", batch_size)
    x = _check_rows(model.check_x(x))
    return _finite_or_float64("-ELBO", _elbo, model, x, batch_size, seed, retry=float64_retry)


def _elbo(model, x, batch_size, seed) -> dict:
    """``evaluate``'s numbers in the model's own dtype (NaN or inf where it overflows)."""
    xp = model.xp
    rng = Generator(streams(seed, EVALUATION_STREAMS).elbo)
    n = int(x.shape[0])
    totals = {"reconstruction": 0.0, "kl": 0.0}
    for a in range(0, n, batch_size):
        xb = x[a : min(a + batch_size, n), ...]
        eps = rng.standard_normal((int(xb.shape[0]), model.latent_dim), dtype=model.dtype)
        fwd = model.forward(xb, eps)
        totals["reconstruction"] += float(xp.sum(-fwd.log_p))
        totals["kl"] += float(xp.sum(fwd.kl))
    rec, kl = totals["reconstruction"] / n, totals["kl"] / n
    return {"loss": rec + kl, "reconstruction": rec, "kl": kl}


def log_marginal_likelihood(model, x, k=5000, seed=0, max_rows=MAX_ROWS, progress=False, per_example=False):
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
    est = _finite_or_float64("log p(x)", _log_p_x, model, x, k, seed, max_rows, progress)
    return est if per_example else float(np.mean(est))


def _log_p_x(model, x, k, seed, max_rows, progress):
    """``log_marginal_likelihood``'s (N,) host estimates in the model's own dtype."""
    be, xp = get_backend(), model.xp
    rng = Generator(streams(seed, EVALUATION_STREAMS).importance)
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
        q = model.posterior(xb)  # Q_theta(z|x) for each of the b rows: the proposal
        x3 = xp.reshape(xb, (b, 1, d))
        m = s = None  # running max and scaled sum, (b,)
        for j in range(0, k, k_per_chunk):
            kc = min(k_per_chunk, k - j)
            eps = rng.standard_normal((b, kc, zdim), dtype=model.dtype)
            z = q.rsample(eps)  # (b, kc, Z) ~ Q(z|x)
            out = xp.reshape(model.decode(xp.reshape(z, (b * kc, zdim))), (b, kc, d))
            log_w = (model.log_p_x_given_z(x3, out)  # log P(x|z)        (b, kc)
                     + dist.gaussian_log_density(z, zeros, zeros)  # + log P(z)
                     - q.log_prob_at_sample(eps))  # - log Q(z|x), from eps
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
    return to_numpy(estimates)


def _finite_or_float64(quantity, compute, model, x, *args, retry=True):
    """``compute(model, x, *args)`` (a dict of numbers or a host array), computed again on a
    float64 copy of ``model`` if it is not finite in float32 (and ``retry``); a
    FloatingPointError naming ``quantity`` and saying why if it is still not finite."""
    with np.errstate(over="ignore", invalid="ignore"):  # NumPy's overflow notes: the warning below says more
        result = compute(model, x, *args)
    if _all_finite(result):
        return result
    if retry and model.dtype != "float64":
        warnings.warn(f"{quantity}: not finite in {model.dtype} (the posterior's largest log-variance on x is "
                      f"{_largest_logvar(model, x):.4g}); computed in float64", stacklevel=3)
        model = _float64_copy(model)
        x = model.check_x(x)
        result = compute(model, x, *args)
        if _all_finite(result):
            return result
    if isinstance(result, dict):
        found = ", ".join(f"{key} {value:g}" for key, value in result.items())
    else:
        found = f"{int(np.sum(~np.isfinite(result)))} of {result.size} examples NaN or inf"
    largest, log_max = _largest_logvar(model, x), math.log(float(np.finfo(model.dtype).max))
    why = (f"the posterior's log-variance reaches {largest:.4g} on x, and exp of more than {log_max:.1f} "
           f"overflows {model.dtype}" if largest > log_max else
           f"the posterior's largest log-variance on x is {largest:.4g}: another of the model's numbers overflows")
    raise FloatingPointError(f"{quantity}: not finite ({found}) in {model.dtype}: {why}")


def _all_finite(result) -> bool:
    values = list(result.values()) if isinstance(result, dict) else result
    return bool(np.all(np.isfinite(np.asarray(values, dtype=np.float64))))


def _largest_logvar(model, x, batch_size=1000) -> float:
    """The largest log-variance of Q(z|x) over the rows of x and the latent units (for the
    full posterior: 2 log L_jj, the log-variance of each unit's own noise); NaN if any is."""
    n = int(x.shape[0])
    found = [2.0 * float(model.xp.max(model.posterior(x[a : min(a + batch_size, n), ...]).log_diag))
             for a in range(0, n, batch_size)]
    return float(np.max(found))


def _float64_copy(model):
    """A float64 model with ``model``'s architecture and parameters."""
    from .vae import VAE

    copy = VAE(**{**model.config, "dtype": "float64", "seed": 0})
    copy.params[...] = model.backend.astype(model.params, "float64")
    return copy


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
        mu[a:b, ...] = be.astype(model.posterior(x[a:b, ...]).mean, "float64")
    activity = to_numpy(model.xp.var(mu, axis=0))
    if not np.all(np.isfinite(activity)):
        raise FloatingPointError("active units: the posterior means are not finite on x (the encoder's numbers "
                                 "overflow)")
    return activity
