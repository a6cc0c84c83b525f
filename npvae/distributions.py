"""The distributions of a VAE, each with its closed-form gradient beside it.

Lecture 21's loss for one example x is

    loss(x) = -E_{z ~ Q_theta(z|x)}[ log P_phi(x|z) ] + KL( Q_theta(z|x) || N(0, I) )
              `------------- reconstruction -------'   `------- regularizer -------'

and its pieces are here:

- the posterior Q_theta(z|x) = N(mu, diag(exp(logvar))) and its sampler, the
  reparameterization z = mu + exp(logvar/2) * eps with eps ~ N(0, I) (``reparameterize``);
- the closed-form KL of that Gaussian from the prior N(0, I) (``gaussian_kl``);
- two decoders P_phi(x|z): Bernoulli from logits, for pixels in [0, 1]
  (``bernoulli_log_likelihood``), and the lecture's Gaussian with unit variance for
  real-valued pixels (``gaussian_log_likelihood``);
- the log-density of a diagonal Gaussian (``gaussian_log_density``, and
  ``gaussian_log_density_at_sample`` for a z made from a known eps), for the importance
  sampled log-likelihood;
- ``sigmoid`` and ``softplus``, the two functions of a logit that the Bernoulli needs.

We parameterize the Gaussian by its log-variance ``logvar = log sigma^2``, never by sigma:
logvar ranges over all reals, so the encoder's output needs no constraint. Then sigma is
``exp(logvar / 2)`` and the variance is ``exp(logvar)``: mixing these up (sampling with
``exp(logvar)`` as the standard deviation) is the commonest bug in published NumPy VAEs.

Each ``f_backward(df, ...)`` sits right below its ``f``: it takes the gradient of the loss with
respect to ``f``'s output (per example, shape (N,), or one Python number for every example)
and returns the gradients with respect to ``f``'s inputs.

``@replaceable`` marks a function that ``npvae.fast`` may replace, for NumPy or CuPy arrays,
by a faster one with the same results (``NPVAE_FAST=0`` runs exactly the code below).

Shape letters: N batch, D data dimension, Z latent dimension.
"""

from __future__ import annotations

import math

from .backend import array_namespace
from .replaceable import replaceable

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------
# The posterior Q_theta(z|x) = N(mu, diag(exp(logvar))) and the reparameterization trick
# ---------------------------------------------------------------------------------------
@replaceable
def reparameterize(mu, logvar, eps):
    """z = mu + sigma * eps, with sigma = exp(logvar / 2) and eps ~ N(0, I).

    The randomness is moved out of the path from (mu, logvar) to z: eps is an *input*, so z
    is a plain differentiable function of mu and logvar and gradients flow through it.

    Args: mu, logvar, eps: (N, Z), eps standard normal noise (mu and logvar may also
        broadcast against eps: (b, 1, Z) with eps (b, k, Z) gives k draws for each row).
    Returns: z: eps's shape.
    """
    xp = array_namespace(mu)
    sigma = xp.exp(0.5 * logvar)
    return mu + sigma * eps


@replaceable
def reparameterize_backward(dz, logvar, eps):
    """Gradients of z = mu + exp(logvar/2) * eps, for the *same* eps the forward used.

        dz/dmu     = 1                            ->  dmu     = dz
        dz/dlogvar = exp(logvar/2) * eps / 2      ->  dlogvar = dz * exp(logvar/2) * eps / 2

    Args: dz, logvar, eps: (N, Z). Returns: dmu, dlogvar: (N, Z).
    """
    xp = array_namespace(dz)
    sigma = xp.exp(0.5 * logvar)
    return dz, dz * (0.5 * sigma * eps)


def gaussian_log_density(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))) summed over the Z dimensions.

        = -1/2 * sum_j [ log(2 pi) + logvar_j + (z_j - mu_j)^2 / exp(logvar_j) ]

    Args: z, mu, logvar broadcastable to (..., Z). Returns: (...).
    """
    xp = array_namespace(z)
    return -0.5 * xp.sum(LOG_2PI + logvar + (z - mu) ** 2 * xp.exp(-logvar), axis=-1)


def gaussian_log_density_at_sample(eps, logvar):
    """``gaussian_log_density(z, mu, logvar)`` at z = mu + exp(logvar/2) * eps, from eps:

        (z_j - mu_j)^2 / exp(logvar_j) = eps_j^2
        ->  log N(z; mu, diag(exp(logvar))) = -1/2 * sum_j [ log(2 pi) + logvar_j + eps_j^2 ]

    The same number, but stable: with a very negative logvar, z - mu is lost to rounding
    and exp(-logvar) overflows in float32, while eps is known exactly.

    Args: eps, logvar broadcastable to (..., Z). Returns: (...).
    """
    xp = array_namespace(eps)
    return -0.5 * xp.sum(LOG_2PI + logvar + eps * eps, axis=-1)


# ---------------------------------------------------------------------------------------
# KL( N(mu, diag(exp(logvar))) || N(0, I) ) in closed form
# ---------------------------------------------------------------------------------------
@replaceable
def gaussian_kl(mu, logvar):
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) for each row, in nats.

        KL = 1/2 * sum_j ( mu_j^2 + exp(logvar_j) - 1 - logvar_j )

    It is >= 0 (since e^t >= 1 + t), and exactly 0 at mu = 0, logvar = 0.
    ``exp(logvar) - 1`` is computed as ``expm1(logvar)``: for a tiny logvar, exp(logvar)
    rounds to 1 and ``1 - 1 - logvar`` would leave a negative KL behind.

    Args: mu, logvar: (N, Z). Returns: (N,).
    """
    xp = array_namespace(mu)
    return 0.5 * xp.sum(mu * mu + (xp.expm1(logvar) - logvar), axis=-1)


@replaceable
def gaussian_kl_backward(dkl, mu, logvar):
    """Gradients of ``gaussian_kl``: dKL/dmu = mu, dKL/dlogvar = (exp(logvar) - 1) / 2.

    Args: dkl: (N,) gradient of the loss w.r.t. each row's KL, or one number for all rows;
        mu, logvar: (N, Z).
    Returns: dmu, dlogvar: (N, Z).
    """
    xp = array_namespace(mu)
    dkl = _per_row(dkl)  # (N, 1), broadcast over Z
    return dkl * mu, dkl * (0.5 * xp.expm1(logvar))


# ---------------------------------------------------------------------------------------
# Decoders P_phi(x|z)
# ---------------------------------------------------------------------------------------
def sigmoid(a):
    """sigma(a) = 1 / (1 + exp(-a)), computed without overflow for any finite a.

    With e = exp(-|a|) (always in (0, 1]): sigma(a) = 1/(1+e) for a >= 0, e/(1+e) for a < 0.
    """
    xp = array_namespace(a)
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def softplus(a):
    """log(1 + exp(a)) without overflow: max(a, 0) + log1p(exp(-|a|)). Its derivative is sigma(a)."""
    xp = array_namespace(a)
    return xp.maximum(a, 0.0) + xp.log1p(xp.exp(-xp.abs(a)))


@replaceable
def bernoulli_log_likelihood(x, logits):
    """log P(x|z) for independent Bernoulli pixels with p = sigma(logits), summed over D.

        log P = sum_d [ x_d log p_d + (1 - x_d) log(1 - p_d) ]
              = sum_d [ x_d * l_d - softplus(l_d) ]         (l = logits)

    The second form never takes the log of 0 and never overflows: at |l| = 1e4 it is exact.
    x may hold grey levels in [0, 1] (the "continuous Bernoulli" reading used by most VAE
    code on MNIST), not only 0/1.

    Args: x, logits: (N, D). Returns: (N,).
    """
    xp = array_namespace(logits)
    return xp.sum(x * logits - softplus(logits), axis=-1)


@replaceable
def bernoulli_log_likelihood_backward(dlog_p, x, logits):
    """d log P / d logits = x - sigma(logits), times the upstream gradient of each row.

    Args: dlog_p: (N,) or one number; x, logits: (N, D). Returns: (N, D).
    """
    return _per_row(dlog_p) * (x - sigmoid(logits))


def gaussian_log_likelihood(x, mean):
    """log P(x|z) for the lecture's Gaussian with unit variance, P = N(mean, I):

        log P = -1/2 * ||x - mean||^2 - D/2 * log(2 pi)

    Constants included, so the result is in nats and comparable across models.

    Args: x, mean: (N, D). Returns: (N,).
    """
    xp = array_namespace(mean)
    d = x.shape[-1]
    return -0.5 * xp.sum((x - mean) ** 2, axis=-1) - 0.5 * d * LOG_2PI


def gaussian_log_likelihood_backward(dlog_p, x, mean):
    """d log P / d mean = x - mean, times the upstream gradient of each row.

    Args: dlog_p: (N,) or one number; x, mean: (N, D). Returns: (N, D).
    """
    return _per_row(dlog_p) * (x - mean)


def _per_row(d):
    """An upstream gradient per row, (N,), as a column (N, 1) that broadcasts over the row.

    A Python number stands for the same gradient on every row (the model passes -1/N)."""
    if isinstance(d, (int, float)):
        return d
    return array_namespace(d).reshape(d, (-1, 1))
