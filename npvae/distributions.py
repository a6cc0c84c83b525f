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
- the lecture's full-covariance posterior N(mu, Sigma), Sigma = L L^T, by its Cholesky factor L
  (``scale_tril``, ``reparameterize_full``, ``full_gaussian_kl``, ``full_gaussian_log_density``),
  and the same family scale-relative, L = U diag(exp(s)) (``relative_lower``);
- ``sigmoid`` and ``softplus``, the two functions of a logit that the Bernoulli needs.

We parameterize the Gaussian by its log-variance ``logvar = log sigma^2``, never by sigma:
logvar ranges over all reals, so the encoder's output needs no constraint. Then sigma is
``exp(logvar / 2)`` and the variance is ``exp(logvar)``: mixing these up (sampling with
``exp(logvar)`` as the standard deviation) is the commonest bug in published NumPy VAEs.

Each ``f_backward(df, ...)`` sits right below its ``f``: it takes the gradient of the loss with
respect to ``f``'s output (per example, shape (N,), or one Python number for every example)
and returns the gradients with respect to ``f``'s inputs.

``@replaceable`` marks a function that training calls: ``npvae.replaced`` can run a student's
version in its place, and ``npvae.fast`` may replace some, for NumPy or CuPy arrays, by faster
ones with the same results (``NPVAE_FAST=0`` runs exactly the code below).

Shape letters: N batch, D data dimension, Z latent dimension, K = Z(Z-1)/2 (entries below
the diagonal of a Z x Z matrix).
"""

from __future__ import annotations

import math

from .backend import array_namespace
from .replaceable import replaceable

LOG_2PI = math.log(2.0 * math.pi)


def per_row(d):
    """An upstream gradient per row, (N,), as a column (N, 1) that broadcasts over the row.

    A Python number stands for the same gradient on every row (the model passes -1/N). Every
    ``_backward`` that takes one number per row uses it (and so does ``npvae.fast``)."""
    if isinstance(d, (int, float)):
        return d
    return array_namespace(d).reshape(d, (-1, 1))


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
    dkl = per_row(dkl)  # (N, 1), broadcast over Z
    return dkl * mu, dkl * (0.5 * xp.expm1(logvar))


# ---------------------------------------------------------------------------------------
# Decoders P_phi(x|z)
# ---------------------------------------------------------------------------------------
@replaceable
def sigmoid(a):
    """sigma(a) = 1 / (1 + exp(-a)), computed without overflow for any finite a.

    With e = exp(-|a|) (always in (0, 1]): sigma(a) = 1/(1+e) for a >= 0, e/(1+e) for a < 0.
    """
    xp = array_namespace(a)
    e = xp.exp(-xp.abs(a))
    return xp.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@replaceable
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
    return per_row(dlog_p) * (x - sigmoid(logits))


@replaceable
def gaussian_log_likelihood(x, mean):
    """log P(x|z) for the lecture's Gaussian with unit variance, P = N(mean, I):

        log P = -1/2 * ||x - mean||^2 - D/2 * log(2 pi)

    Constants included, so the result is in nats and comparable across models.

    Args: x, mean: (N, D). Returns: (N,).
    """
    xp = array_namespace(mean)
    d = x.shape[-1]
    return -0.5 * xp.sum((x - mean) ** 2, axis=-1) - 0.5 * d * LOG_2PI


@replaceable
def gaussian_log_likelihood_backward(dlog_p, x, mean):
    """d log P / d mean = x - mean, times the upstream gradient of each row.

    Args: dlog_p: (N,) or one number; x, mean: (N, D). Returns: (N, D).
    """
    return per_row(dlog_p) * (x - mean)


# ---------------------------------------------------------------------------------------
# The full-covariance posterior Q_theta(z|x) = N(mu, Sigma), Sigma = L L^T
# ---------------------------------------------------------------------------------------
# The lecture's encoder gives "mu, Sigma = g_theta(X)" with a full Sigma in R^{Z x Z}. The
# encoder cannot output Sigma itself: not every symmetric matrix is a covariance (it must be
# positive definite), and no simple constraint on Z^2 numbers says so. Its Cholesky factor
# L can be output instead:
#
# - any lower-triangular L with a positive diagonal gives a valid covariance L L^T, and
#   every covariance has exactly one such L: nothing is lost and nothing invalid is possible;
# - the diagonal is made positive by L_jj = exp(s_j), with s_j over all reals (as logvar is
#   for the diagonal Gaussian), and the entries below it are free reals;
# - L is triangular, so det L = prod_j L_jj and log det Sigma = 2 sum_j log L_jj = 2 sum_j s_j:
#   the log-determinant in the KL and the log-density is a sum, with no factorization;
# - sampling is z = mu + L eps (Cov = L I L^T = Sigma), and L^{-1} (z - mu) is a forward
#   substitution.
#
# So the encoder gives s = log diag(L) (N, Z) and ``lower`` (N, K), K = Z(Z-1)/2: the
# strictly-lower entries of L row by row, (1,0), (2,0), (2,1), (3,0), (3,1), (3,2), ...
# Row i of L holds lower[i(i-1)/2 : i(i-1)/2 + i], then exp(s_i), then zeros.
# With lower = 0 everything below is the diagonal Gaussian above, with logvar = 2 s.
def lower_size(z_dim) -> int:
    """K = Z(Z-1)/2, the number of entries strictly below the diagonal of a Z x Z matrix."""
    return z_dim * (z_dim - 1) // 2


@replaceable
def scale_tril(log_diag, lower):
    """The Cholesky factor L = diag(exp(s)) + (the strictly-lower entries ``lower``).

        L_ii = exp(s_i),   L_ij = lower[i(i-1)/2 + j]  (j < i),   L_ij = 0  (j > i)

    Args: log_diag: s, (N, Z); lower: (N, K), K = Z(Z-1)/2, row by row.
    Returns: L: (N, Z, Z), lower-triangular with a positive diagonal.
    """
    xp = array_namespace(log_diag)
    z = log_diag.shape[-1]
    diag, zero = xp.exp(log_diag), xp.zeros_like(log_diag[..., 0])
    rows = []
    for i in range(z):
        start = i * (i - 1) // 2  # row i's entries in ``lower``: start .. start + i - 1
        row = [lower[..., start + j] for j in range(i)] + [diag[..., i]] + [zero] * (z - 1 - i)
        rows.append(xp.stack(row, axis=-1))
    return xp.stack(rows, axis=-2)


@replaceable
def scale_tril_backward(dL, log_diag):
    """Gradients of ``scale_tril``: each entry of L comes from one input.

        dL_ii / ds_i = exp(s_i)              ->  dlog_diag_i = dL_ii * exp(s_i)
        dL_ij / dlower[i(i-1)/2 + j] = 1     ->  dlower = dL's strictly-lower entries, row by row

    The entries of dL above the diagonal are ignored (they are 0 in L whatever the inputs).

    Args: dL: (N, Z, Z); log_diag: s, (N, Z). Returns: dlog_diag: (N, Z), dlower: (N, K).
    """
    xp = array_namespace(dL)
    z = log_diag.shape[-1]
    diag = xp.stack([dL[..., i, i] for i in range(z)], axis=-1)
    below = [dL[..., i, j] for i in range(z) for j in range(i)]  # row by row, as in ``lower``
    dlower = xp.stack(below, axis=-1) if below else dL[..., 0, :0]  # Z = 1: K = 0 entries
    return diag * xp.exp(log_diag), dlower


@replaceable
def reparameterize_full(mu, L, eps):
    """z = mu + L eps, with eps ~ N(0, I): then E[z] = mu and Cov[z] = L I L^T = Sigma.

        z_i = mu_i + sum_{j <= i} L_ij eps_j

    As in ``reparameterize``, eps is an input, so z is a differentiable function of mu and L.

    Args: mu: (N, Z); L: (N, Z, Z); eps: (N, Z) standard normal noise. They may also
        broadcast: mu (b, 1, Z), L (b, 1, Z, Z), eps (b, k, Z) gives k draws for each row.
    Returns: z: (N, Z) (the broadcast shape, (b, k, Z)).
    """
    xp = array_namespace(mu)
    return mu + xp.matmul(L, xp.expand_dims(eps, axis=-1))[..., 0]


@replaceable
def reparameterize_full_backward(dz, eps):
    """Gradients of z = mu + L eps, for the *same* eps the forward used.

        dz_i/dmu_k  = [i = k]           ->  dmu  = dz
        dz_i/dL_kj  = [i = k] eps_j     ->  dL   = dz eps^T, kept on and below the diagonal

    (L's entries above the diagonal are not parameters: their gradient is 0.)

    Args: dz, eps: (N, Z). Returns: dmu: (N, Z), dL: (N, Z, Z), lower-triangular.
    (For the broadcast form, dz and eps (b, k, Z) give dmu (b, k, Z) and dL (b, k, Z, Z):
    sum them over the k draws for the gradients of mu (b, 1, Z) and L (b, 1, Z, Z).)
    """
    xp = array_namespace(dz)
    outer = xp.expand_dims(dz, axis=-1) * xp.expand_dims(eps, axis=-2)  # (N, Z, Z): dz_i eps_j
    return dz, xp.tril(outer)


def full_gaussian_log_density(z, mu, L):
    """log N(z; mu, L L^T) summed over the Z dimensions.

        log N = -1/2 (z - mu)^T Sigma^{-1} (z - mu) - 1/2 log det Sigma - Z/2 log(2 pi)
              = -1/2 ||u||^2 - sum_j log L_jj - Z/2 log(2 pi),     u = L^{-1} (z - mu)

    since Sigma^{-1} = L^{-T} L^{-1}. u solves L u = z - mu by forward substitution, one row
    at a time: u_i = ( (z - mu)_i - sum_{j < i} L_ij u_j ) / L_ii.

    Args: z: (..., Z); mu: (..., Z); L: (..., Z, Z), lower-triangular; all broadcastable.
    Returns: (...).
    """
    xp = array_namespace(z)
    r = z - mu
    zdim = r.shape[-1]
    u = []
    for i in range(zdim):
        acc = r[..., i]
        if i > 0:
            acc = acc - xp.sum(L[..., i, :i] * xp.stack(u, axis=-1), axis=-1)
        u.append(acc / L[..., i, i])
    u = xp.stack(u, axis=-1)
    log_det_l = xp.sum(xp.log(xp.stack([L[..., j, j] for j in range(zdim)], axis=-1)), axis=-1)
    return -0.5 * xp.sum(u * u, axis=-1) - log_det_l - 0.5 * zdim * LOG_2PI


@replaceable
def full_gaussian_kl(mu, log_diag, lower):
    """KL(N(mu, L L^T) || N(0, I)) for each row, in nats.

    The KL between Gaussians in Z dimensions, against the prior N(0, I), is

        KL = 1/2 ( tr Sigma + mu^T mu - Z - log det Sigma ).

    With Sigma = L L^T: tr(L L^T) = sum_ij L_ij^2 = ||L||_F^2 = sum_j exp(2 s_j) + sum_k lower_k^2,
    and log det Sigma = 2 sum_j log L_jj = 2 sum_j s_j. So

        KL = 1/2 ( ||L||_F^2 + ||mu||^2 - Z ) - sum_j s_j
           = 1/2 sum_j ( exp(2 s_j) - 1 - 2 s_j ) + 1/2 sum_k lower_k^2 + 1/2 sum_j mu_j^2,

    every term >= 0 (e^t >= 1 + t), and 0 exactly at mu = 0, s = 0, lower = 0 (Sigma = I).
    As in ``gaussian_kl``, exp(2 s) - 1 is ``expm1(2 s)``. With lower = 0 this is
    ``gaussian_kl(mu, 2 s)``.

    Args: mu, log_diag: (N, Z); lower: (N, K). Returns: (N,).
    """
    xp = array_namespace(mu)
    two_s = 2.0 * log_diag
    return 0.5 * (xp.sum(xp.expm1(two_s) - two_s, axis=-1) + xp.sum(lower * lower, axis=-1)
                  + xp.sum(mu * mu, axis=-1))


@replaceable
def full_gaussian_kl_backward(dkl, mu, log_diag, lower):
    """Gradients of ``full_gaussian_kl``, from its second form:

        dKL/dmu    = mu
        dKL/ds_j   = 1/2 (2 exp(2 s_j) - 2) = exp(2 s_j) - 1
        dKL/dlower = lower

    Args: dkl: (N,) gradient of the loss w.r.t. each row's KL, or one number for all rows;
        mu, log_diag: (N, Z); lower: (N, K).
    Returns: dmu: (N, Z), dlog_diag: (N, Z), dlower: (N, K).
    """
    xp = array_namespace(mu)
    dkl = per_row(dkl)  # (N, 1), broadcast over Z and K
    return dkl * mu, dkl * xp.expm1(2.0 * log_diag), dkl * lower


# ---------------------------------------------------------------------------------------
# The same family, scale-relative: L = U diag(exp(s)), U unit lower-triangular
# ---------------------------------------------------------------------------------------
# Above, the entries of L below the diagonal are absolute numbers: to tilt a posterior whose
# widths are sigma ~ 0.1, the encoder must output each L_ij to that precision. Scaled by the
# width of its column instead,
#
#     L = U diag(sigma),  sigma_j = exp(s_j),  U_ii = 1,  U_ij = u_ij (j < i),  U_ij = 0 (j > i)
#     ->  L_ii = sigma_i,   L_ij = u_ij sigma_j   (j < i),
#
# the encoder's outputs u are numbers of order one whatever the widths (u_ij is the slope of
# z_i's noise on z_j's standardized noise). It is the same family, N(mu, L L^T) over all lower-
# triangular L with a positive diagonal: any L has u_ij = L_ij / L_jj. Only the coordinates the
# encoder learns in differ, and with them how gradient descent moves (benchmarks/RESULTS.md,
# Step 12). Still det L = det U * prod_j sigma_j = prod_j sigma_j, so log det L = sum_j s_j.
#
# ``relative_lower`` maps (s, u) to the absolute entries ``lower`` of the section above, so
# scale_tril, the sampler, the KL and the log-density are reused unchanged. With it the KL is
#
#     KL = 1/2 ( ||L||_F^2 + ||mu||^2 - Z ) - sum_j s_j
#        = 1/2 sum_j ( exp(2 s_j) (1 + sum_{i>j} u_ij^2) - 1 - 2 s_j ) + 1/2 ||mu||^2,
#
# and its gradient the chain rule through the map: dKL/du_ij = u_ij exp(2 s_j), dKL/ds_j =
# exp(2 s_j) (1 + sum_{i>j} u_ij^2) - 1 (tests/test_full_relative.py checks both).
# u = 0 is the diagonal Gaussian with logvar = 2 s, whatever s: a head for u that starts at
# zero starts the full model exactly at a diagonal one.
@replaceable
def relative_lower(log_diag, unit_lower):
    """The absolute entries of L below its diagonal from the scale-relative ones:

        lower[i(i-1)/2 + j] = u_ij * exp(s_j)        (j < i, row by row as in ``scale_tril``)

    so that ``scale_tril(s, relative_lower(s, u))`` is L = U diag(exp(s)).

    Args: log_diag: s, (N, Z); unit_lower: u, (N, K), K = Z(Z-1)/2, row by row.
    Returns: lower: (N, K).
    """
    xp = array_namespace(log_diag)
    sigma = xp.exp(log_diag)
    cols = [j for i in range(log_diag.shape[-1]) for j in range(i)]  # entry k's column: 0, 0, 1, 0, 1, 2, ...
    if not cols:  # Z = 1: K = 0 entries
        return unit_lower
    return unit_lower * xp.stack([sigma[..., j] for j in cols], axis=-1)  # u_k * sigma_(column of k)


@replaceable
def relative_lower_backward(dlower, log_diag, unit_lower):
    """Gradients of ``relative_lower``: lower_k = u_k sigma_j, with j the column of entry k.

        dlower_k / du_k      = sigma_j         ->  du_k = dlower_k sigma_j
        dlower_k / dsigma_j  = u_k             ->  dsigma_j = the sum of dlower_k u_k over the
                                                              entries k in column j (rows i > j)
        dsigma_j / ds_j      = sigma_j         ->  ds_j = dsigma_j sigma_j

    Args: dlower: (N, K), the gradient w.r.t. ``relative_lower``'s output; log_diag: s, (N, Z);
        unit_lower: u, (N, K).
    Returns: dlog_diag: (N, Z) (this path's part only: s reaches the loss by others too, to add),
        dunit_lower: (N, K).
    """
    xp = array_namespace(dlower)
    sigma = xp.exp(log_diag)
    cols = [j for i in range(log_diag.shape[-1]) for j in range(i)]  # entry k's column, as above
    if not cols:  # Z = 1: K = 0 entries
        return xp.zeros_like(log_diag), dlower
    du = dlower * xp.stack([sigma[..., j] for j in cols], axis=-1)
    g, zero = dlower * unit_lower, xp.zeros_like(sigma[..., 0])
    dsigma = xp.stack([sum((g[..., k] for k, c in enumerate(cols) if c == j), zero)
                       for j in range(sigma.shape[-1])], axis=-1)
    return dsigma * sigma, du
