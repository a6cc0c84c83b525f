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
- the log-density of a diagonal Gaussian (``gaussian_log_density``), for the importance
  sampled log-likelihood.

We parameterize the Gaussian by its log-variance ``logvar = log sigma^2``, never by sigma:
logvar ranges over all reals, so the encoder's output needs no constraint. Then sigma is
``exp(logvar / 2)`` and the variance is ``exp(logvar)``: mixing these up (sampling with
``exp(logvar)`` as the standard deviation) is the commonest bug in published NumPy VAEs.

Each ``f_backward(df, ...)`` takes the gradient of the loss with respect to ``f``'s output
(per example, shape (N,), or one Python number for every example) and returns the
gradients with respect to ``f``'s inputs.

Shape letters: N batch, D data dimension, Z latent dimension.
"""

from __future__ import annotations

import math

from . import kernels
from .backend import array_namespace
from .layers import sigmoid

LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------------------------------
# The posterior Q_theta(z|x) = N(mu, diag(exp(logvar))) and the reparameterization trick
# ---------------------------------------------------------------------------------------
def reparameterize(mu, logvar, eps=None, rng=None):
    """z = mu + sigma * eps, with sigma = exp(logvar / 2) and eps ~ N(0, I).

    The randomness is moved out of the path from (mu, logvar) to z: eps is an *input*, so z
    is a plain differentiable function of mu and logvar and gradients flow through it.

    Args:
        mu, logvar: (N, Z).
        eps: (N, Z) standard normal noise. If None, it is drawn from ``rng``
            (an ``npvae.backend.Generator``) and returned, so that the backward pass can use
            the very same eps.
    Returns:
        z: (N, Z), and the eps that made it, (N, Z).
    """
    if eps is None:
        if rng is None:
            raise ValueError("rng: expected a Generator when eps is None, got None")
        eps = rng.standard_normal(tuple(mu.shape), dtype=_dtype_name(mu))
    elif tuple(eps.shape) != tuple(mu.shape):
        raise ValueError(f"eps: expected shape {tuple(mu.shape)}, got {tuple(eps.shape)}")
    z = kernels.fused("reparameterize", mu, logvar, eps)  # on CuPy: the next lines as one GPU kernel
    if z is None:
        xp = array_namespace(mu)
        sigma = xp.exp(0.5 * logvar)
        z = mu + sigma * eps
    return z, eps


def reparameterize_backward(dz, logvar, eps):
    """Gradients of z = mu + exp(logvar/2) * eps, for the *same* eps the forward used.

        dz/dmu     = 1                            ->  dmu     = dz
        dz/dlogvar = exp(logvar/2) * eps / 2      ->  dlogvar = dz * exp(logvar/2) * eps / 2

    Args: dz, logvar, eps: (N, Z). Returns: dmu, dlogvar: (N, Z).
    """
    dlogvar = kernels.fused("reparameterize_backward", dz, logvar, eps)  # on CuPy: one GPU kernel
    if dlogvar is None:
        xp = array_namespace(dz)
        sigma = xp.exp(0.5 * logvar)
        dlogvar = dz * (0.5 * sigma * eps)
    return dz, dlogvar


def gaussian_log_density(z, mu, logvar):
    """log N(z; mu, diag(exp(logvar))) summed over the Z dimensions.

        = -1/2 * sum_j [ log(2 pi) + logvar_j + (z_j - mu_j)^2 / exp(logvar_j) ]

    Args: z, mu, logvar broadcastable to (..., Z). Returns: (...).
    """
    xp = array_namespace(z)
    return -0.5 * xp.sum(LOG_2PI + logvar + (z - mu) ** 2 * xp.exp(-logvar), axis=-1)


# ---------------------------------------------------------------------------------------
# KL( N(mu, diag(exp(logvar))) || N(0, I) ) in closed form
# ---------------------------------------------------------------------------------------
def gaussian_kl(mu, logvar):
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) for each row, in nats.

        KL = 1/2 * sum_j ( mu_j^2 + exp(logvar_j) - 1 - logvar_j )

    It is >= 0 (since e^t >= 1 + t), and exactly 0 at mu = 0, logvar = 0.
    ``exp(logvar) - 1`` is computed as ``expm1(logvar)``: for a tiny logvar, exp(logvar)
    rounds to 1 and ``1 - 1 - logvar`` would leave a negative KL behind.

    Args: mu, logvar: (N, Z). Returns: (N,).
    """
    kl = kernels.fused("gaussian_kl", mu, logvar)  # on CuPy: one GPU kernel for the row sums
    if kl is None:
        xp = array_namespace(mu)
        kl = 0.5 * xp.sum(mu * mu + (xp.expm1(logvar) - logvar), axis=-1)
    return kl


def gaussian_kl_backward(dkl, mu, logvar):
    """Gradients of ``gaussian_kl``: dKL/dmu = mu, dKL/dlogvar = (exp(logvar) - 1) / 2.

    Args: dkl: (N,) gradient of the loss w.r.t. each row's KL, or one number for all rows;
        mu, logvar: (N, Z).
    Returns: dmu, dlogvar: (N, Z).
    """
    dkl = _per_row(dkl)  # (N, 1), broadcast over Z
    grads = kernels.fused("gaussian_kl_backward", dkl, mu, logvar)  # on CuPy: both in one GPU kernel
    if grads is None:
        xp = array_namespace(mu)
        grads = dkl * mu, dkl * (0.5 * xp.expm1(logvar))
    return grads


# ---------------------------------------------------------------------------------------
# Decoders P_phi(x|z)
# ---------------------------------------------------------------------------------------
def softplus(a):
    """log(1 + exp(a)) without overflow: max(a, 0) + log1p(exp(-|a|))."""
    xp = array_namespace(a)
    return xp.maximum(a, 0.0) + xp.log1p(xp.exp(-xp.abs(a)))


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


def bernoulli_log_likelihood_backward(dll, x, logits):
    """d log P / d logits = x - sigma(logits).  Args: dll (N,); x, logits (N, D). Returns (N, D)."""
    return _per_row(dll) * (x - sigmoid(logits))


def bernoulli_log_likelihood_and_grad(x, logits):
    """``bernoulli_log_likelihood`` and d log P / d logits together, as a training step needs
    them, in fewer passes over the (N, D) arrays:

        log P        = sum_d [ x_d l_d - max(l_d, 0) - log(1 + exp(-|l_d|)) ]     (N,)
        d log P / dl = x - sigma(l),   sigma(l) = (1 + tanh(l / 2)) / 2             (N, D)

    The tanh form of the sigmoid never overflows and needs no ``where`` (a slow operation
    on the CPU); its absolute error is one rounding unit, which is what a gradient needs
    (for l < -17 it rounds sigma(l) to 0 in float32, where the exact form would give a
    number below 4e-8). Both lines are computed in ``kernels.bernoulli_log_likelihood_and_grad``
    (plain ``xp`` code there, and a NumPy fast path beside it); tested against the two
    separate functions above.
    """
    return kernels.bernoulli_log_likelihood_and_grad(x, logits)


def gaussian_log_likelihood(x, mean):
    """log P(x|z) for the lecture's Gaussian with unit variance, P = N(mean, I):

        log P = -1/2 * ||x - mean||^2 - D/2 * log(2 pi)

    Constants included, so the result is in nats and comparable across models.

    Args: x, mean: (N, D). Returns: (N,).
    """
    xp = array_namespace(mean)
    d = x.shape[-1]
    return -0.5 * xp.sum((x - mean) ** 2, axis=-1) - 0.5 * d * LOG_2PI


def gaussian_log_likelihood_backward(dll, x, mean):
    """d log P / d mean = x - mean.  Args: dll (N,); x, mean (N, D). Returns (N, D)."""
    return _per_row(dll) * (x - mean)


def _per_row(d):
    """An upstream gradient per row, (N,), as a column (N, 1) that broadcasts over the row.

    A Python number stands for the same gradient on every row (the model passes -1/N)."""
    if isinstance(d, (int, float)):
        return d
    return array_namespace(d).reshape(d, (-1, 1))


def _dtype_name(a) -> str:
    xp = array_namespace(a)
    return "float64" if a.dtype == xp.float64 else "float32"
