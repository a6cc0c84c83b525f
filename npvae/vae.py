"""The Variational Autoencoder of Lecture 21, with its gradient written out by hand.

Notation follows the lecture (Kingma & Welling use the opposite letters: their encoder
q_phi, their decoder p_theta):

- encoder Q_theta(z|X) = N(mu(X), diag(exp(logvar(X)))): an MLP trunk with two linear heads,
  one for mu and one for logvar (``DiagonalGaussian``), or with ``posterior="full"`` the
  lecture's full Sigma = L L^T, with three heads: mu, log diag(L) and L's entries below the
  diagonal relative to their column's width, L = U diag(exp(s)) (``RelativeGaussianPosterior``;
  ``posterior="full-absolute"``: the absolute entries, ``GaussianPosterior``); its parameters
  are ``theta``;
- decoder P_phi(X|z): an MLP from z to the parameters of P(X|z), logits for
  ``likelihood="bernoulli"`` or the mean of N(mean, I) for ``likelihood="gaussian"``
  (the lecture's unit-variance Gaussian); its parameters are ``phi``.

For a batch x (N, D) and noise eps (N, Z) the loss is the mean over the batch of -ELBO:

    mu, logvar = encoder(x)                                  # (N, Z), (N, Z)
    z = mu + exp(logvar / 2) * eps                           # (N, Z)  reparameterization
    out = decoder(z)                                         # (N, D)
    loss = mean_n[ -log P(x_n|z_n) ] + beta * mean_n[ KL(Q(z|x_n) || N(0, I)) ]

``forward`` runs that, and ``backward``, right below it, the same steps in reverse with the
same eps; ``loss_and_grads`` is the two together.

With K noise draws a row, eps (N, K, Z), the loss is instead the importance-weighted bound of
Burda et al. (2016), tighter than the ELBO and rising to log p(x) as K grows:

    loss = -mean_n[ L_K(x_n) ],   L_K = log (1/K) sum_i w_i,   w_i = P(x, z_i) / Q(z_i|x)

with its gradient by hand too (``forward_samples``, ``backward_samples``).

All parameters live in one flat vector ``model.params`` (theta first, then phi) and the
gradient in ``model.grads``; ``model.theta`` and ``model.phi`` are views of its two halves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import distributions as dist
from . import layers
from .backend import DTYPES, array_namespace, get_backend, library_of, to_numpy
from .checks import check_fits_in_memory, check_int, check_real, check_seed, is_integer
from .layers import MLP, Dense, FlatParameters
from .random import MODEL_STREAMS, Generator, streams
from .replaceable import replaceable

LIKELIHOODS = ("bernoulli", "gaussian")
POSTERIORS = ("diagonal", "full", "full-absolute")
ACTIVATIONS = tuple(layers.ACTIVATIONS)  # "relu", "tanh", "sigmoid": one registry, in layers

# encode, posterior and reconstruct take the rows of x a chunk at a time, so that a chunk's
# widest activation (for the full posterior, L's Z(Z-1)/2 entries below the diagonal, per row)
# holds about this many numbers: their memory is bounded whatever N (16 MB a copy in float32).
CHUNK_FLOATS = 2**22


@dataclass
class LossAndGrads:
    """What ``VAE.loss_and_grads`` returns.

    ``loss``, ``reconstruction`` and ``kl`` are Python floats in nats per example (means over
    the batch); ``loss = reconstruction + beta * kl``. ``grads`` is d loss / d params, 1-D
    with the layout of ``model.params``: it *is* ``model.grads``, overwritten by the next
    call (copy it to keep it). ``z`` and ``eps`` are the latent sample and the noise used,
    both (N, Z).
    """

    loss_array: object
    reconstruction_array: object
    kl_array: object
    grads: object
    z: object
    eps: object

    # Kept as 0-d arrays until asked for, so a GPU need not wait for them at every step.
    @property
    def loss(self) -> float:
        return float(self.loss_array)

    @property
    def reconstruction(self) -> float:
        return float(self.reconstruction_array)

    @property
    def kl(self) -> float:
        return float(self.kl_array)


@dataclass
class Forward:
    """What ``VAE.forward`` computes for a batch, and what ``VAE.backward`` needs.

    ``x`` (N, D); ``eps``, ``z`` (N, Z); ``q``, Q_theta(z|x) of each row (``DiagonalGaussian``
    or ``GaussianPosterior``: mu (N, Z) and the parameters of Sigma); ``out`` (N, D), the
    decoder's output (logits or mean); ``log_p`` (N,), log P_phi(x|z) per row; ``kl`` (N,),
    KL(Q_theta(z|x) || N(0, I)) per row; and the caches of the encoder's trunk, of its head and
    of the decoder.
    """

    x: object
    eps: object
    q: object
    z: object
    out: object
    log_p: object
    kl: object
    encoder_cache: list
    head_cache: list
    decoder_cache: list

    def objective(self, beta=1.0):
        """The loss of each row, (N,), before the mean over the batch: -log P(x|z) + beta KL (the
        -ELBO) for eps (N, Z); -L_K = -log (1/K) sum_i w_i, log w_i = log_p_i - beta kl_i, for
        eps (N, K, Z) (``forward_samples``)."""
        if self.eps.ndim == 2:
            return -self.log_p + beta * self.kl
        return -log_mean_exp(self.log_p - beta * self.kl)


def log_mean_exp(a):
    """log (1/K) sum_i exp(a_i) over the last axis, (N, K) -> (N,), with the largest a_i factored
    out so that no exp overflows: m + log mean_i exp(a_i - m)."""
    xp = array_namespace(a)
    m = xp.max(a, axis=-1, keepdims=True)
    return m[..., 0] + xp.log(xp.mean(xp.exp(a - m), axis=-1))


@replaceable
def log_mean_exp_backward(dL, log_w):
    """The backward of ``log_mean_exp`` over the K draws: d loss / d log_w, given dL = d loss /
    d L of each row, L = log (1/K) sum_j w_j. d L / d log w_i = w_i / sum_j w_j, the normalized
    weights (the softmax of log w over K: they sum to 1, and 1/K cancels), with the largest
    log w_j factored out as in the forward, so that no exp overflows.

    Args: dL: (N,) or one number (the model passes -1/N); log_w: (N, K). Returns: (N, K).
    """
    xp = array_namespace(log_w)
    w = xp.exp(log_w - xp.max(log_w, axis=-1, keepdims=True))  # w_i / max_j w_j, in (0, 1]
    return dist.per_row(dL) * (w / xp.sum(w, axis=-1, keepdims=True))


def repeat_rows(a, k):
    """Each row of a (N, ...) k times in a row: (N * k, ...), rows n*k .. n*k + k-1 are a[n]."""
    xp = array_namespace(a)
    n, rest = a.shape[0], tuple(a.shape[1:])
    return xp.reshape(xp.broadcast_to(xp.expand_dims(a, axis=1), (n, k, *rest)), (n * k, *rest))


class DiagonalGaussian(NamedTuple):
    """Q_theta(z|x) = N(mu, diag(exp(logvar))) for each of N rows (``posterior="diagonal"``).

    The fields are its parameters, mu and logvar (N, Z), each the output of one Dense head.
    The rest has the names of ``torch.distributions.MultivariateNormal``: ``mean`` (mu),
    ``scale_tril`` L = diag(exp(logvar / 2)) (N, Z, Z), ``covariance`` L L^T (N, Z, Z),
    ``variance`` (N, Z), ``kl()`` = KL(Q || N(0, I)) (N,) in nats, ``log_prob(z)``,
    ``rsample(eps)`` = mu + L eps; and for training the backward of the two the loss uses,
    ``rsample_backward(dz, eps)`` and ``kl_backward(dkl)``, each (dmu, dlogvar). Each method
    is a function of ``distributions``.
    """

    mu: object
    logvar: object

    @staticmethod
    def widths(z):
        """The widths of the fields for a latent dimension Z: the outputs of the heads."""
        return z, z

    @property
    def mean(self):
        return self.mu

    @property
    def log_diag(self):
        """log diag(L) = logvar / 2 = log sigma, (N, Z)."""
        return 0.5 * self.logvar

    @property
    def variance(self):
        return array_namespace(self.logvar).exp(self.logvar)

    @property
    def scale_tril(self):
        xp = array_namespace(self.logvar)
        sigma = xp.exp(self.log_diag)  # (N, Z)
        return xp.tril(xp.triu(sigma[..., :, None] * xp.ones_like(sigma)[..., None, :]))  # diag(sigma), (N, Z, Z)

    @property
    def covariance(self):
        L = self.scale_tril
        return L @ L.mT  # Sigma = L L^T, (N, Z, Z)

    def rsample(self, eps):
        """z = mu + exp(logvar / 2) * eps for eps (N, Z), or (N, k, Z) for k draws of each row."""
        return dist.reparameterize(*_against(eps, self.mu, self.logvar), eps)

    def rsample_backward(self, dz, eps):
        """dz (N, Z) -> (dmu, dlogvar): dmu = dz, dlogvar = dz * exp(logvar / 2) * eps / 2."""
        return dist.reparameterize_backward(dz, self.logvar, eps)

    def kl(self):
        """KL = 1/2 sum_j (mu_j^2 + exp(logvar_j) - 1 - logvar_j), (N,)."""
        return dist.gaussian_kl(self.mu, self.logvar)

    def kl_backward(self, dkl):
        """dkl (N,) or a number -> (dmu, dlogvar) = (dkl mu, dkl (exp(logvar) - 1) / 2)."""
        return dist.gaussian_kl_backward(dkl, self.mu, self.logvar)

    def log_prob(self, z):
        """log N(z; mu, Sigma) for z (N, Z), or (N, k, Z) for k points of each row: (N,) or (N, k)."""
        return dist.gaussian_log_density(z, *_against(z, self.mu, self.logvar))

    def log_prob_at_sample(self, eps):
        """``log_prob(rsample(eps))``, computed from eps: stable where Sigma is nearly singular."""
        return dist.gaussian_log_density_at_sample(eps, *_against(eps, self.logvar))

    def log_det_backward(self, dlog_det):
        """log det L = sum_j logvar_j / 2, so dlog_det (N,) -> (dmu, dlogvar) = (0, dlog_det / 2)."""
        return 0.0, 0.5 * dist.per_row(dlog_det)


class GaussianPosterior(NamedTuple):
    """Q_theta(z|x) = N(mu, Sigma), Sigma = L L^T, for each of N rows (``posterior="full-absolute"``).

    The fields are its parameters, each the output of one Dense head: mu (N, Z), log_diag
    s = log diag(L) (N, Z) and lower (N, K), the K = Z(Z-1)/2 entries of L below its diagonal,
    row by row (``distributions.scale_tril``). The rest is as in ``DiagonalGaussian``, with
    ``rsample_backward`` and ``kl_backward`` giving (dmu, dlog_diag, dlower); ``logvar`` is
    log diag(Sigma), each z_j's marginal log-variance.
    """

    mu: object
    log_diag: object
    lower: object

    @staticmethod
    def widths(z):
        return z, z, dist.lower_size(z)

    @property
    def mean(self):
        return self.mu

    @property
    def logvar(self):
        return array_namespace(self.mu).log(self.variance)

    @property
    def variance(self):
        """The diagonal of Sigma, (N, Z), without building L:
        Sigma_jj = sum_k L_jk^2 = exp(2 s_j) + the squares of row j's entries in ``lower``."""
        xp = array_namespace(self.lower)
        below = [xp.sum(self.lower[..., j * (j - 1) // 2 : j * (j + 1) // 2] ** 2, axis=-1)
                 for j in range(self.log_diag.shape[-1])]
        return xp.exp(2.0 * self.log_diag) + xp.stack(below, axis=-1)

    @property
    def scale_tril(self):
        return dist.scale_tril(self.log_diag, self.lower)

    @property
    def covariance(self):
        L = self.scale_tril
        return L @ L.mT  # Sigma = L L^T, (N, Z, Z)

    def rsample(self, eps):
        """z = mu + L eps for eps (N, Z), or (N, k, Z) for k draws of each row."""
        return dist.reparameterize_full(*_against(eps, self.mu, self.scale_tril), eps)

    def rsample_backward(self, dz, eps):
        """Through z = mu + L eps, then L = diag(exp(s)) + lower: (dmu, dlog_diag, dlower)."""
        dmu, dL = dist.reparameterize_full_backward(dz, eps)  # dL (N, Z, Z)
        return (dmu, *dist.scale_tril_backward(dL, self.log_diag))

    def kl(self):
        """KL = 1/2 (tr Sigma + ||mu||^2 - Z - log det Sigma), (N,)."""
        return dist.full_gaussian_kl(self.mu, self.log_diag, self.lower)

    def kl_backward(self, dkl):
        """dkl (N,) or a number -> (dmu, dlog_diag, dlower) = dkl (mu, exp(2 s) - 1, lower)."""
        return dist.full_gaussian_kl_backward(dkl, self.mu, self.log_diag, self.lower)

    def log_prob(self, z):
        return dist.full_gaussian_log_density(z, *_against(z, self.mu, self.scale_tril))

    def log_prob_at_sample(self, eps):
        """At z = mu + L eps, L^{-1} (z - mu) = eps and log det L = sum_j s_j, so log N(z; mu, L L^T)
        = -1/2 ||eps||^2 - sum_j s_j - Z/2 log(2 pi): the diagonal formula with logvar = 2 s, no solve."""
        return dist.gaussian_log_density_at_sample(eps, *_against(eps, 2.0 * self.log_diag))

    def log_det_backward(self, dlog_det):
        """log det L = sum_j s_j, so dlog_det (N,) -> (dmu, dlog_diag, dlower) = (0, dlog_det, 0)."""
        return 0.0, dist.per_row(dlog_det), 0.0


class RelativeGaussianPosterior(NamedTuple):
    """Q_theta(z|x) = N(mu, L L^T) with L = U diag(exp(s)), U unit lower-triangular
    (``posterior="full"``): the family of ``GaussianPosterior``, scale-relative.

    The fields are the heads' outputs: mu (N, Z), log_diag s (N, Z) and unit_lower u (N, K), the
    entries of U below its diagonal, row by row, so L_ii = exp(s_i) and L_ij = u_ij exp(s_j)
    (``distributions.relative_lower``). The u head starts at zero (``zero_init``): the model
    starts as a diagonal one; its output is scaled by 0.1 (``head_scale``). Everything is computed by ``absolute``, the same Gaussian as a
    ``GaussianPosterior``; the backward passes go through it, then through the map (s, u) -> lower.
    """

    mu: object
    log_diag: object
    unit_lower: object
    zero_init = ("unit_lower",)  # the heads whose W and b start at 0
    # u = 0.1 (h @ W + b). Adam moves every weight by about lr a step whatever its gradient's size, so
    # this is the u head's learning rate / 10: at full speed the correlations move faster than the
    # decoder can follow (Z = 20, 10 epochs: log p(x) 2.9 nats behind the diagonal model, 1.2 with
    # the 0.1; benchmarks/RESULTS.md, Step 12).
    head_scale = {"unit_lower": 0.1}

    widths = staticmethod(GaussianPosterior.widths)

    @property
    def absolute(self) -> GaussianPosterior:
        """The same Gaussian with L's absolute entries below the diagonal."""
        return GaussianPosterior(self.mu, self.log_diag, dist.relative_lower(self.log_diag, self.unit_lower))

    def _to_relative(self, dmu, dlog_diag, dlower):
        """Gradients w.r.t. (mu, s, lower) -> w.r.t. (mu, s, u), through lower = relative_lower(s, u)."""
        ds, du = dist.relative_lower_backward(dlower, self.log_diag, self.unit_lower)
        return dmu, dlog_diag + ds, du

    mean = property(lambda self: self.mu)
    logvar = property(lambda self: self.absolute.logvar)
    variance = property(lambda self: self.absolute.variance)
    scale_tril = property(lambda self: self.absolute.scale_tril)
    covariance = property(lambda self: self.absolute.covariance)

    def rsample(self, eps):
        return self.absolute.rsample(eps)

    def rsample_backward(self, dz, eps):
        return self._to_relative(*self.absolute.rsample_backward(dz, eps))

    def kl(self):
        """KL = 1/2 sum_j (exp(2 s_j) (1 + sum_{i>j} u_ij^2) - 1 - 2 s_j) + 1/2 ||mu||^2, (N,)."""
        return self.absolute.kl()

    def kl_backward(self, dkl):
        return self._to_relative(*self.absolute.kl_backward(dkl))

    def log_prob(self, z):
        return self.absolute.log_prob(z)

    def log_prob_at_sample(self, eps):
        return self.absolute.log_prob_at_sample(eps)

    def log_det_backward(self, dlog_det):
        """log det L = sum_j s_j here too (U's diagonal is 1): (dmu, dlog_diag, dunit_lower) = (0, dlog_det, 0)."""
        return self.absolute.log_det_backward(dlog_det)


# posterior= -> the class of Q. "full" was "full-absolute" before npvae's Step 12 (checkpoint reads old files so).
FAMILIES = {"diagonal": DiagonalGaussian, "full": RelativeGaussianPosterior, "full-absolute": GaussianPosterior}


def _against(points, *params):
    """A posterior's ``params`` (N, ...) as they broadcast against ``points``: unchanged for
    points (N, Z), (N, 1, ...) for points (N, k, Z), one row against its k points."""
    if points.ndim != 3:
        return params
    return [array_namespace(a).reshape(a, (a.shape[0], 1, *a.shape[1:])) for a in params]


class ZeroDense(Dense):
    """A Dense layer that starts at W = 0, b = 0. It draws what a Dense draws (and drops it),
    so every other layer starts as it would beside a Dense."""

    def init(self, rng, dtype) -> dict:
        return {name: array_namespace(value).zeros_like(value) for name, value in super().init(rng, dtype).items()}


class GaussianHead:
    """The encoder's head: one Dense layer from the trunk's output h (N, H) to each parameter
    of Q_theta(z|x), side by side. ``family`` is the posterior's class (its fields name the
    parameters and the blocks ``theta.<field>``); ``layers`` maps each field to its Dense.

        forward:   q = family(h @ W_mu + b_mu, h @ W_logvar + b_logvar, ...)
        backward:  dh = sum over the heads of dparam @ W^T   (every head reads h, so theirs add)
    """

    def __init__(self, family, h_dim, z_dim):
        self.family = family
        zero = getattr(family, "zero_init", ())
        self.layers = {name: (ZeroDense if name in zero else Dense)(h_dim, width)
                       for name, width in zip(family._fields, family.widths(z_dim))}
        scale = getattr(family, "head_scale", {})  # a field's output times a constant: c (h @ W + b)
        self.scales = [scale.get(name, 1.0) for name in family._fields]

    def forward(self, h):
        """h (N, H) -> q, the posterior of each row, and the heads' caches."""
        outs = [layer.forward(h) for layer in self.layers.values()]
        return self.family(*(out if c == 1.0 else c * out for (out, _), c in zip(outs, self.scales))), \
            [cache for _, cache in outs]

    def backward(self, dq, caches):
        """dq: the loss's gradients w.r.t. q's fields, in their order -> dh (N, H); fills the
        heads' dW and db."""
        dh = [layer.backward(d if c == 1.0 else c * d, cache)
              for layer, d, cache, c in zip(self.layers.values(), dq, caches, self.scales)]
        return sum(dh[1:], dh[0])  # every head reads h, so their gradients add


def _check_real_dtype(name, a, given):
    """A ValueError naming ``name`` unless the array ``a`` (made from ``given``) holds real
    numbers: floats, integers or bools, not complex, object, strings, datetimes."""
    if library_of(a) in ("numpy", "cupy"):  # NumPy dtypes
        real = np.dtype(a.dtype).kind in "biuf"
    else:  # the array API's dtypes
        real = array_namespace(a).isdtype(a.dtype, ("bool", "integral", "real floating"))
    if not real:
        source = "" if given is a else f" (from a {type(given).__name__})"
        raise ValueError(f"{name}: expected real numbers (a float, integer or bool array), got dtype {a.dtype}{source}")


def _dense_layers(input_dim, hidden_dims, latent_dim, posterior) -> list[tuple[int, int]]:
    """Every Dense layer of ``VAE(input_dim, hidden_dims, latent_dim, posterior=...)`` as
    (n_in, n_out): encoder D -> H1 -> ... -> Hk, a head Hk -> each parameter of the posterior
    (Z for mu and logvar or log_diag, Z(Z-1)/2 for lower), decoder Z -> Hk -> ... -> H1 -> D.
    A ValueError naming the argument when a size is not a positive integer."""
    if posterior not in POSTERIORS:
        raise ValueError(f"posterior: expected one of {POSTERIORS}, got {posterior!r}")
    z = check_int("latent_dim", latent_dim)
    encoder = [check_int("input_dim", input_dim), *_check_hidden_dims(hidden_dims)]
    heads = [(encoder[-1], width) for width in FAMILIES[posterior].widths(z)]
    decoder = [z, *reversed(encoder)]
    return list(zip(encoder[:-1], encoder[1:])) + heads + list(zip(decoder[:-1], decoder[1:]))


def parameter_count(input_dim, hidden_dims, latent_dim, posterior="diagonal") -> int:
    """How many parameters ``VAE(input_dim, hidden_dims, latent_dim, posterior=...)`` has,
    computed from the sizes alone (nothing is allocated): every Dense layer n_in -> n_out has
    n_in * n_out + n_out."""
    return sum(a * b + b for a, b in _dense_layers(input_dim, hidden_dims, latent_dim, posterior))


# Numbers held per row at the peak, per unit of each size: measured with tracemalloc
# (float32 and float64, fast paths on and off) and rounded up. "train": forward and backward
# (a step of fit); "evaluate": the forward pass alone (metrics.evaluate); "sample": prior
# draws decoded to E[x|z]. Per row: D, each hidden width (encoder and decoder), Z, and Z^2
# for the full posterior (L, dL, the outer product dz eps^T, scale_tril's stacking).
ACTIVATION_FLOATS = {"train": {"input_dim": 6, "hidden_dims": 5, "latent_dim": 10, "latent_dim^2": 5},
                     "evaluate": {"input_dim": 6, "hidden_dims": 4, "latent_dim": 6, "latent_dim^2": 3},
                     "sample": {"input_dim": 6, "hidden_dims": 3, "latent_dim": 3, "latent_dim^2": 0}}


@dataclass
class MemoryEstimate:
    """What ``memory_estimate`` returns. ``parameters``: bytes of the parameters, their
    gradient and two optimizer buffers (and, training, one layer's gradient temporary);
    ``activations``: bytes of ``rows`` rows' activations at once; ``weights``: for each
    argument ("input_dim", "hidden_dims", "latent_dim", "rows"), the bytes the total would
    lose were it 1: the heaviest drives the size (``latent_dim`` for the full posterior's Z^2
    terms, ``hidden_dims`` for a huge layer, ``input_dim`` for huge images)."""

    parameters: int
    activations: int
    rows: int
    posterior: str
    weights: dict
    k: int = 1

    @property
    def total(self) -> int:
        return self.parameters + self.activations

    def check(self, names, posterior_name="posterior"):
        """A ValueError when ``total`` is more than this machine's memory, naming the argument
        the estimate grows fastest with among ``names``: {argument: (name shown, value shown)},
        e.g. {"latent_dim": ("--latent-dim", 600), "hidden_dims": ("--hidden", [400])}."""
        driver = max(names, key=lambda arg: self.weights.get(arg, 0))
        name, value = names[driver]
        detail = (f" with {posterior_name} {self.posterior}" if driver == "latent_dim" and self.posterior != "diagonal"
                  else "")
        if self.activations:
            rows = f"{self.rows} rows" + (f" x {self.k} draws" if self.k > 1 else "")
            detail += (f" (parameters {self.parameters / 2**30:.1f} GiB, activations of {rows} at once "
                       f"{self.activations / 2**30:.1f} GiB)")
        check_fits_in_memory(name, value, self.total, detail)


def memory_estimate(input_dim, hidden_dims, latent_dim, posterior="diagonal", dtype="float32", rows=0,
                    work="train", k=1) -> MemoryEstimate:
    """The bytes a ``VAE(input_dim, hidden_dims, latent_dim, posterior=..., dtype=...)``
    needs, from the sizes alone (nothing is allocated): its parameters, their gradient and two
    optimizer buffers, plus the activations of ``rows`` rows at once for ``work``: "train"
    (a step of fit on a batch of ``rows``), "evaluate" (the forward pass of ``rows`` rows) or
    "sample" (``rows`` draws decoded). rows=0 counts the parameters alone. The one estimate
    for every memory check: ``VAE()``, ``npvae train``, ``npvae gradcheck``.

    ``k``: draws a row, for a step on the bound L_K (``fit(..., k=K)``): the head and the decoder
    work on rows * K rows (``forward_samples``), and so, here, does everything: the trunk's
    share, counted K times too, makes it an upper bound (by less as K grows).

    ``weights[arg]`` is what the total would lose if that argument were 1 (every hidden width
    1, for ``hidden_dims``): the argument with the largest weight is the one that drives the
    size, and the one a refusal names."""
    sizes = {"input_dim": check_int("input_dim", input_dim), "hidden_dims": list(_check_hidden_dims(hidden_dims)),
             "latent_dim": check_int("latent_dim", latent_dim), "rows": check_int("rows", rows, minimum=0),
             "k": check_int("k", k)}
    item = 4 if dtype == "float32" else 8
    parameters, activations = _memory_bytes(**sizes, posterior=posterior, item=item, work=work)
    weights = {}
    for arg, value in sizes.items():
        smallest = [1] * len(value) if arg == "hidden_dims" else min(value, 1)
        weights[arg] = parameters + activations - sum(
            _memory_bytes(**{**sizes, arg: smallest}, posterior=posterior, item=item, work=work))
    return MemoryEstimate(parameters, activations, sizes["rows"], posterior, weights, sizes["k"])


def _memory_bytes(input_dim, hidden_dims, latent_dim, rows, k, posterior, item, work) -> tuple[int, int]:
    """(parameters, activations) in bytes, as ``memory_estimate`` describes them."""
    layers_ = _dense_layers(input_dim, hidden_dims, latent_dim, posterior)
    parameters = sum(4 * item * (a * b + b) for a, b in layers_)  # weights and bias: 4 copies
    if work == "train" and rows:  # the largest layer's weight gradient, before it is added in
        parameters += item * max(a * b for a, b in layers_)
    per = ACTIVATION_FLOATS[work]
    width = per["input_dim"] * input_dim + per["latent_dim"] * latent_dim + per["hidden_dims"] * sum(hidden_dims)
    if posterior != "diagonal":
        width += per["latent_dim^2"] * latent_dim * latent_dim
    return parameters, item * rows * k * width


def _check_hidden_dims(hidden_dims) -> tuple:
    """``hidden_dims`` as a tuple of ints: one positive integer, or a list, tuple, range or 1-D
    array of them (() for a linear model); else a ValueError naming it."""
    if is_integer(hidden_dims):
        return (check_int("hidden_dims", hidden_dims),)
    if not isinstance(hidden_dims, (list, tuple, range, np.ndarray)) or np.ndim(hidden_dims) != 1:
        raise ValueError("hidden_dims: expected a sequence of positive integers, e.g. (400,) (or () for a "
                         f"linear model), got {hidden_dims!r}")
    return tuple(check_int(f"hidden_dims[{i}]", h) for i, h in enumerate(hidden_dims))


class VAE:
    """A VAE with MLP encoder Q_theta(z|x) and MLP decoder P_phi(x|z).

    Args:
        input_dim: D, the width of x (784 for 28x28 images).
        hidden_dims: widths of the encoder's hidden layers; the decoder mirrors them.
            ``()`` makes both linear (a linear Gaussian decoder is probabilistic PCA).
        latent_dim: Z.
        likelihood: ``"bernoulli"`` (x in [0, 1]; the decoder gives logits) or
            ``"gaussian"`` (unit variance; the decoder gives the mean).
        activation: ``"relu"``, ``"tanh"`` or ``"sigmoid"``.
        dtype: ``"float32"`` (training) or ``"float64"`` (gradient checks).
        seed: initializes the parameters and the model's own noise generator ``model.rng``.
        posterior: ``"diagonal"``, Q_theta(z|x) = N(mu, diag(exp(logvar))), or ``"full"``,
            N(mu, L L^T) with L = U diag(exp(s)), starting diagonal, or ``"full-absolute"``, the
            same family with L's absolute entries (``DiagonalGaussian``,
            ``RelativeGaussianPosterior``, ``GaussianPosterior``): chosen here, once.

    Shapes: x (N, D) -> mu, logvar (N, Z); z (N, Z) -> decode(z) (N, D).
    """

    def __init__(self, input_dim, hidden_dims=(400,), latent_dim=20, likelihood="bernoulli",
                 activation="relu", dtype="float32", seed=0, posterior="diagonal"):
        check_int("input_dim", input_dim)
        check_int("latent_dim", latent_dim)
        hidden_dims = _check_hidden_dims(hidden_dims)
        seed = check_seed("seed", seed)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: expected one of {LIKELIHOODS}, got {likelihood!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        if posterior not in POSTERIORS:
            raise ValueError(f"posterior: expected one of {POSTERIORS}, got {posterior!r}")
        if posterior != "diagonal" and latent_dim < 2:
            raise ValueError(f"posterior: {posterior!r} needs latent_dim >= 2 (with Z = 1 it is the diagonal one), "
                             f"got latent_dim {latent_dim}")
        # params, grads and up to two optimizer buffers: refuse a size that cannot fit before
        # allocating anything (the activations depend on the batch: fit's caller checks them)
        sizes = {"input_dim": int(input_dim), "hidden_dims": list(hidden_dims), "latent_dim": int(latent_dim)}
        memory_estimate(*sizes.values(), posterior, dtype).check({k: (k, v) for k, v in sizes.items()})

        self.input_dim, self.latent_dim = int(input_dim), int(latent_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.likelihood, self.activation, self.dtype = likelihood, activation, dtype
        self.seed, self.posterior_kind = seed, posterior
        self.backend = get_backend()
        self.xp = self.backend.xp

        D, H, Z = self.input_dim, self.hidden_dims, self.latent_dim
        # theta: the encoder, a trunk and a head that gives the posterior's parameters.
        self.encoder = MLP((D, *H), activation, activate_last=True)  # (N, D) -> (N, H[-1])
        self.head = GaussianHead(FAMILIES[posterior], H[-1] if H else D, Z)  # (N, H[-1]) -> Q_theta(z|x)
        # phi: the decoder mirrors the trunk.
        self.decoder = MLP((Z, *reversed(H), D), activation)  # (N, Z) -> (N, D)

        theta_layers = [(f"theta.encoder.{i}", layer) for i, layer in self.encoder.named_layers()]
        theta_layers += [(f"theta.{name}", layer) for name, layer in self.head.layers.items()]
        phi_layers = [(f"phi.decoder.{i}", layer) for i, layer in self.decoder.named_layers()]

        seeds = streams(seed, MODEL_STREAMS)
        flat = FlatParameters(theta_layers + phi_layers, seed=seeds.init, dtype=dtype, backend=self.backend)
        self.params, self.grads, self.blocks = flat.params, flat.grads, flat.blocks
        self.n_theta = sum(b - a for name, a, b, _ in self.blocks if name.startswith("theta."))
        self.theta, self.phi = self.params[: self.n_theta], self.params[self.n_theta :]
        self.rng = Generator(seeds.noise, backend=self.backend)
        self.train_state = None  # set by npvae.fit or npvae.load: optimizer, epochs, history

    # -- description -----------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """The arguments that rebuild this model (saved in checkpoints)."""
        return {
            "input_dim": self.input_dim,
            "hidden_dims": list(self.hidden_dims),
            "latent_dim": self.latent_dim,
            "likelihood": self.likelihood,
            "activation": self.activation,
            "dtype": self.dtype,
            "seed": self.seed if isinstance(self.seed, int) else None,
            "posterior": self.posterior_kind,
        }

    @property
    def n_params(self) -> int:
        return int(self.params.shape[0])

    def __repr__(self):
        args = json.dumps(self.config)[1:-1].replace('"', "")
        return f"VAE({args}; {self.n_params} parameters: theta {self.n_theta}, phi {self.n_params - self.n_theta})"

    # -- the pieces of the model, one at a time ----------------------------------------------
    def encode(self, x):
        """Q_theta(z|x): x (N, D) -> mu (N, Z), logvar (N, Z).

        For ``posterior="full"``, logvar is the log of the diagonal of Sigma (each z_j's
        marginal variance); ``posterior(x)`` gives the whole Gaussian. The rows go a chunk
        at a time (``chunk_rows``), so memory beyond the result stays bounded.
        """

        def mu_and_logvar(xb):
            q = self._encode(xb)[0]
            return q.mu, q.logvar

        return self._by_rows(mu_and_logvar, self.check_x(x))

    def posterior(self, x):
        """Q_theta(z|x) for each row of x (N, D), a ``DiagonalGaussian`` or a ``GaussianPosterior``
        (mean, scale_tril, covariance, kl(), log_prob(z), rsample(eps)). Its parameters are
        computed a chunk of rows at a time; ``scale_tril`` and ``covariance`` are (N, Z, Z) when
        asked for."""
        return self.head.family(*self._by_rows(lambda xb: self._encode(xb)[0], self.check_x(x)))

    def _encode(self, x):
        """The encoder, as ``forward`` runs it: x (N, D) -> q, Q_theta(z|x) of each row, and the
        caches of the trunk and of the head."""
        h, encoder_cache = self.encoder.forward(x)  # (N, H[-1])
        q, head_cache = self.head.forward(h)  # mu (N, Z) and the parameters of Sigma
        return q, encoder_cache, head_cache

    @property
    def chunk_rows(self) -> int:
        """How many rows ``encode``, ``posterior`` and ``reconstruct`` take at once: about
        ``CHUNK_FLOATS`` numbers in the widest activation of a chunk (for the full posterior,
        L's Z(Z-1)/2 entries below the diagonal, a row)."""
        widest = max(self.input_dim, *self.hidden_dims, *(head.out_dim for head in self.head.layers.values()))
        return max(1, CHUNK_FLOATS // widest)

    def _by_rows(self, fn, x):
        """``fn(x)`` for x (N, D), a tuple of (N, ...) arrays, computed ``chunk_rows`` rows at a
        time and put together in arrays allocated once."""
        n, step = int(x.shape[0]), self.chunk_rows
        if n <= step:
            return fn(x)
        out = None
        for a in range(0, n, step):
            b = min(a + step, n)
            parts = fn(x[a:b, ...])
            if out is None:
                out = [self.backend.zeros((n, *p.shape[1:]), self.dtype) for p in parts]
            for whole, part in zip(out, parts):
                whole[a:b, ...] = part
        return tuple(out)

    def decode(self, z):
        """The decoder's output for z (N, Z): logits (bernoulli) or mean (gaussian), (N, D)."""
        z = self._check_array("z", z, self.latent_dim)
        out, _ = self.decoder.forward(z)
        return out

    def mean(self, out):
        """E[x|z] from the decoder's output: sigma(logits) (bernoulli) or the mean itself."""
        return dist.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_p_x_given_z(self, x, out):
        """log P_phi(x|z) for each row, from the decoder's output ``out = decode(z)``: (N,).
        (Not log p(x), the marginal likelihood: ``npvae.log_marginal_likelihood`` estimates that.)"""
        if self.likelihood == "bernoulli":
            return dist.bernoulli_log_likelihood(x, out)
        return dist.gaussian_log_likelihood(x, out)

    def sample(self, n, rng=None):
        """n draws z ~ N(0, I) from the prior, decoded to E[x|z]: (n, D).

        ``rng`` is an ``npvae.Generator``; None uses the model's own ``model.rng``.
        """
        check_int("n", n)
        self._check_backend()
        z = (rng or self.rng).standard_normal((int(n), self.latent_dim), dtype=self.dtype)
        return self.mean(self.decode(z))

    def reconstruct(self, x):
        """E[x|z] at z = mu(x), the posterior mean: x (N, D) -> (N, D), ``chunk_rows`` rows at a time."""
        return self._by_rows(lambda xb: (self.mean(self.decode(self._encode(xb)[0].mu)),), self.check_x(x))[0]

    # -- the forward pass, and right below it the backward pass ------------------------------
    def forward(self, x, eps, k=None) -> Forward:
        """One pass of the model for a batch x (N, D) and noise eps (N, Z):

            q = encoder(x)                           Q_theta(z|x): mu, and Sigma's parameters
            z = q.rsample(eps)                       reparameterization   (N, Z)
            out = decoder(z)                         P_phi(x|z)           (N, D)
            log_p = log P_phi(x|z), kl = q.kl()      KL(Q_theta(z|x) || N(0, I))   (N,), (N,)

        For the diagonal posterior q is (mu, logvar) and z = mu + exp(logvar / 2) * eps; for
        the full one q is (mu, s = log diag(L), L's strictly-lower entries), Sigma = L L^T and
        z = mu + L eps (``distributions``' full covariance section). Returns a ``Forward`` with
        all of these and the layers' caches, which ``backward`` needs. Only shapes are checked
        (``loss_and_grads`` also checks the values of x).

        eps (N, K, Z), K draws a row, runs ``forward_samples`` instead (the importance-weighted
        bound); ``k``, if given, must be that K; eps (N, 1, Z) is eps (N, Z).
        """
        x = self._check_array("x", x, self.input_dim)
        eps = self._check_eps(eps, x.shape[0], k)
        if eps.ndim == 3:
            return self.forward_samples(x, eps)
        q, encoder_cache, head_cache = self._encode(x)
        z = q.rsample(eps)  # (N, Z)
        kl = q.kl()  # (N,)
        out, decoder_cache = self.decoder.forward(z)  # (N, D)
        log_p = self.log_p_x_given_z(x, out)  # (N,)
        return Forward(x, eps, q, z, out, log_p, kl, encoder_cache, head_cache, decoder_cache)

    def backward(self, fwd: Forward, beta=1.0):
        """The gradient of loss = mean_n[ -log P(x_n|z_n) ] + beta * mean_n[ KL_n ] with respect
        to every parameter, for the batch of ``fwd = forward(x, eps)``: the same steps in
        reverse, with the same eps. Writes it into ``model.grads`` (P,) and returns that."""
        beta = check_real("beta", beta, minimum=0)
        if fwd.eps.ndim == 3:
            return self.backward_samples(fwd, beta)
        n = fwd.x.shape[0]
        # Each row enters the mean with weight 1/N, and the loss is -log P: d loss / d log P_n = -1/N.
        if self.likelihood == "bernoulli":
            dout = dist.bernoulli_log_likelihood_backward(-1.0 / n, fwd.x, fwd.out)  # (N, D)
        else:
            dout = dist.gaussian_log_likelihood_backward(-1.0 / n, fwd.x, fwd.out)  # (N, D)
        dz = self.decoder.backward(dout, fwd.decoder_cache)  # (N, Z), fills d phi
        dq_z = fwd.q.rsample_backward(dz, fwd.eps)  # through z, with the same eps: d loss / d each field of q
        dq_kl = fwd.q.kl_backward(beta / n)  # through the KL: d loss / d KL_n = beta/N
        dh = self.head.backward([a + b for a, b in zip(dq_z, dq_kl)], fwd.head_cache)  # (N, H[-1])
        self.encoder.backward(dh, fwd.encoder_cache, need_dx=False)  # fills d theta; x needs no gradient
        return self.grads

    # -- the importance-weighted bound: K draws a row ------------------------------------------
    def forward_samples(self, x, eps) -> Forward:
        """The forward pass of the bound L_K for x (N, D) and K draws a row, eps (N, K, Z):

            h = trunk(x)                               (N, H)     once a row
            q = head(h, each row K times)              Q_theta(z|x_n) for each of the N*K draws
            z = q.rsample(eps)                         (N*K, Z)   z_ni from eps[n, i]
            out = decoder(z)                           (N*K, D)   the decoder works on N*K rows
            log_p = log P_phi(x_n|z_ni)                (N, K)
            kl = log Q_theta(z_ni|x_n) - log P(z_ni)   (N, K)     the KL's one-draw estimate

        so log w_ni = log P(x_n, z_ni) - log Q(z_ni|x_n) = log_p - kl, and L_K = log (1/K) sum_i
        w_ni with log-sum-exp (``Forward.objective``). log Q comes from eps: at z = mu + L eps,
        log Q(z|x) = log N(eps; 0, I) - log det L (``log_prob_at_sample``). ``z``: (N, K, Z).
        """
        xp, (n, k, zdim) = self.xp, tuple(eps.shape)
        h, encoder_cache = self.encoder.forward(x)  # (N, H)
        q, head_cache = self.head.forward(repeat_rows(h, k))  # row n*K + i: Q(z|x_n)
        eps_rows = xp.reshape(eps, (n * k, zdim))
        z = q.rsample(eps_rows)  # (N*K, Z)
        out, decoder_cache = self.decoder.forward(z)  # (N*K, D)
        log_p = xp.reshape(self.log_p_x_given_z(repeat_rows(x, k), out), (n, k))
        log_prior = dist.gaussian_log_density_at_sample(z, 0.0)  # log N(z; 0, I): mu = 0, logvar = 0
        kl = xp.reshape(q.log_prob_at_sample(eps_rows) - log_prior, (n, k))
        return Forward(x, eps, q, xp.reshape(z, (n, k, zdim)), out, log_p, kl, encoder_cache, head_cache,
                       decoder_cache)

    def backward_samples(self, fwd: Forward, beta=1.0):
        """The gradient of loss = -mean_n L_K(x_n) for ``fwd = forward_samples(x, eps)``.

        d L_K / d log w_i = w_i / sum_j w_j = a_i, the normalized weights (the softmax of log w
        over the K draws): the gradient is each draw's gradient of log w_i, weighted by a_i,

            d loss / d log w_ni = -a_ni / N      (N, K): log_mean_exp_backward(-1/N, log w)
            log w = log P(x|z) + beta (log P(z) - log Q(z|x)), through z = z(eps) as ``backward``:
              log P(x|z):  the decoder's backward, on N*K rows
              log P(z) = -||z||^2 / 2 + const:                     d / dz = -z
              log Q(z(eps)|x) = log N(eps; 0, I) - log det L:      reaches theta only through
                log det L = sum_j log L_jj   (d / dlogvar_j = 1/2, diagonal; d / dlog_diag_j = 1, full)

        and each row's K draws add up in dh. beta = 1 is the bound (another beta weighs
        log Q - log P(z), as ``backward`` weighs the KL). Writes ``model.grads`` and returns it.
        """
        xp, (n, k, zdim) = self.xp, tuple(fwd.eps.shape)
        log_w = fwd.log_p - beta * fwd.kl  # (N, K)
        dlog_w = xp.reshape(log_mean_exp_backward(-1.0 / n, log_w), (n * k,))  # d loss / d log w, a draw a row
        if self.likelihood == "bernoulli":
            dout = dist.bernoulli_log_likelihood_backward(dlog_w, repeat_rows(fwd.x, k), fwd.out)  # (N*K, D)
        else:
            dout = dist.gaussian_log_likelihood_backward(dlog_w, repeat_rows(fwd.x, k), fwd.out)
        z = xp.reshape(fwd.z, (n * k, zdim))
        dz = self.decoder.backward(dout, fwd.decoder_cache) - beta * dist.per_row(dlog_w) * z  # + via log P(z)
        dq = fwd.q.rsample_backward(dz, xp.reshape(fwd.eps, (n * k, zdim)))
        dlog_det = beta * dist.per_row(dlog_w)  # via -beta log Q = beta log det L + const
        dq = [d + g for d, g in zip(dq, fwd.q.log_det_backward(dlog_det), strict=True)]
        dh = self.head.backward(dq, fwd.head_cache)  # (N*K, H)
        dh = xp.sum(xp.reshape(dh, (n, k, dh.shape[-1])), axis=1)  # (N, H): each row's K draws add up
        self.encoder.backward(dh, fwd.encoder_cache, need_dx=False)
        return self.grads

    # -- the loss and its gradient, for a user ---------------------------------------------------
    def loss_and_grads(self, x, eps=None, beta=1.0, k=None):
        """Mean over the batch of -ELBO (or of -L_K) and its gradient with respect to all
        parameters: ``forward`` then ``backward``.

        Args:
            x: (N, D) data (for bernoulli, in [0, 1]), N >= 1.
            eps: (N, Z) noise for the reparameterization; None draws it from ``model.rng``.
                Either way, the backward pass uses the very eps the forward pass used, and
                it is returned as ``res.eps``.
            beta: weight of the KL term, a finite number >= 0 (1 is the ELBO; beta-VAEs and KL
                warm-up change it).
            k: draws a row, K: eps (N, K, Z) and the loss is -L_K, the importance-weighted
                bound (``forward_samples``); None: eps's K (1 for eps (N, Z), and when eps is None).
                k = 1 is exactly the -ELBO above, with the closed-form KL: the same eps gives
                the same numbers. (L_1 = log w_1 = log P(x|z) - (log Q(z|x) - log P(z)) has the
                ELBO as its expectation, since E_Q[log Q(z|x) - log P(z)] is the KL; the
                closed form is that expectation taken exactly.)
        Returns:
            ``LossAndGrads``: loss = reconstruction + beta * kl, grads (P,) = ``model.grads``.
            For K > 1, loss = -mean L_K, and reconstruction and kl are means over the N*K
            draws of -log P(x|z) and of log Q(z|x) - log P(z); z and eps are (N, K, Z).
        """
        beta = check_real("beta", beta, minimum=0)  # before eps is drawn: a refusal changes nothing
        k = None if k is None else check_int("k", k)
        x = self._check_batch(x)
        if eps is None:
            eps = self.rng.standard_normal((int(x.shape[0]), *([k] if k else []), self.latent_dim), dtype=self.dtype)
        fwd = self.forward(x, eps, k)
        grads = self.backward(fwd, beta)
        reconstruction, kl = -self.xp.mean(fwd.log_p), self.xp.mean(fwd.kl)
        loss = reconstruction + beta * kl if fwd.eps.ndim == 2 else self.xp.mean(fwd.objective(beta))
        return LossAndGrads(loss, reconstruction, kl, grads, fwd.z, fwd.eps)

    def loss(self, x, eps, beta=1.0, k=None) -> float:
        """The loss alone (mean over the batch of -ELBO, beta-weighted, or of -L_K for eps
        (N, K, Z)): ``forward`` without ``backward``. eps is required: a finite difference
        needs the same noise on both sides (``npvae.gradcheck`` differentiates this)."""
        beta = check_real("beta", beta, minimum=0)
        fwd = self.forward(self._check_batch(x), eps, k)
        return float(self.xp.mean(fwd.objective(beta)))

    # -- input checks ------------------------------------------------------------------------
    def _check_backend(self):
        """The model's backend, or a ValueError if ``set_backend`` has switched to another since
        the model was built (its arrays live on the old one)."""
        active = get_backend()
        if active.name != self.backend.name:
            raise ValueError(f"model: built on the {self.backend.name!r} backend, but the active backend is now "
                             f"{active.name!r} (set_backend was called after); save it with npvae.save(model, path) "
                             f"and npvae.load(path) it on the new backend, or switch back")
        return self.backend

    def check_x(self, x):
        """x as an array of the model's backend and dtype, or a ValueError that says why not:
        not real numbers (complex, object, strings, datetimes; a masked array), wrong ndim or
        width, NaN or inf, or (bernoulli) values outside [0, 1]. Integers and bools are numbers:
        a bool array is 0/1 (a binarized image)."""
        x = self._check_array("x", x, self.input_dim)
        xp = self.xp
        if not bool(xp.all(xp.isfinite(x))):
            raise ValueError("x: expected finite values, got NaN or inf")
        if self.likelihood == "bernoulli" and x.shape[0] > 0:
            lo, hi = float(xp.min(x)), float(xp.max(x))
            if lo < 0.0 or hi > 1.0:
                raise ValueError(
                    f"x: expected values in [0, 1] for likelihood='bernoulli', got min {lo:g}, max {hi:g}"
                )
        return x

    def _check_batch(self, x):
        """``check_x``, and at least one row: a loss is a mean over the batch."""
        x = self.check_x(x)
        if int(x.shape[0]) == 0:
            raise ValueError("x: expected at least one row (the loss is a mean over the batch), got 0")
        return x

    def _check_eps(self, eps, n, k):
        """eps for n rows: (N, Z), one draw a row, or (N, K, Z), K draws (k, if given, is K;
        else eps's own); (N, 1, Z) comes back as (N, Z). A ValueError that says the shape."""
        three = getattr(eps, "ndim", 2) == 3
        k = check_int("k", int(eps.shape[1]) if k is None and three else 1 if k is None else k)
        eps = self._check_array("eps", eps, self.latent_dim, samples=k if three or k > 1 else None)
        if eps.shape[0] != n:
            raise ValueError(f"eps: expected shape {(n, *eps.shape[1:])}, got {tuple(eps.shape)}")
        return self.xp.reshape(eps, (n, self.latent_dim)) if k == 1 else eps

    def _check_array(self, name, a, width, samples=None):
        be = self._check_backend()
        if isinstance(a, np.ma.MaskedArray):
            raise ValueError(f"{name}: expected a plain array, got a numpy.ma.MaskedArray (its masked entries "
                             "have no values: fill them, .filled(value), or leave those rows out)")
        if not be.owns(a):
            try:
                host = to_numpy(a) if hasattr(a, "__array_namespace__") else np.asarray(a)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{name}: expected an (N, {width}) array of numbers, got a {type(a).__name__} "
                                 f"that is not one ({exc})") from None
            _check_real_dtype(name, host, a)
            a = be.asarray(host)
        else:
            _check_real_dtype(name, a, a)
        trailing = (width,) if samples is None else (samples, width)  # (N, width) or (N, samples, width)
        if tuple(a.shape[1:]) != trailing or a.ndim == 1:
            raise ValueError(f"{name}: expected shape (N, {', '.join(map(str, trailing))}), got {tuple(a.shape)}")
        return be.astype(a, self.dtype)

