"""The Variational Autoencoder of Lecture 21, with its gradient written out by hand.

Notation follows the lecture (Kingma & Welling use the opposite letters: their encoder
q_phi, their decoder p_theta):

- encoder Q_theta(z|X) = N(mu(X), diag(exp(logvar(X)))): an MLP trunk with two linear heads,
  one for mu and one for logvar; its parameters are ``theta``;
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

All parameters live in one flat vector ``model.params`` (theta first, then phi) and the
gradient in ``model.grads``; ``model.theta`` and ``model.phi`` are views of its two halves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from . import distributions as dist
from . import layers
from .backend import DTYPES, array_namespace, get_backend, to_numpy
from .checks import check_fits_in_memory, check_int, check_real, check_seed, is_integer
from .layers import MLP, Dense, FlatParameters
from .random import MODEL_STREAMS, Generator, streams

LIKELIHOODS = ("bernoulli", "gaussian")
POSTERIORS = ("diagonal", "full")
ACTIVATIONS = tuple(layers.ACTIVATIONS)  # "relu", "tanh", "sigmoid": one registry, in layers
# encode, posterior and reconstruct take the rows of x a chunk at a time, so that a chunk's
# widest activation (Z x Z per row for the full posterior's L) holds about this many numbers:
# their memory is bounded whatever N (16 MB a copy in float32).
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

    ``x`` (N, D); ``mu``, ``eps``, ``z`` (N, Z); ``out`` (N, D), the decoder's output (logits or
    mean); ``log_p`` (N,), log P_phi(x|z) per row; ``kl`` (N,), KL(Q_theta(z|x) || N(0, I)) per
    row; ``caches``, the layers' caches. The posterior's scale: ``logvar`` (N, Z) for the
    diagonal one; ``log_diag`` (N, Z), ``lower`` (N, Z(Z-1)/2) and ``L`` (N, Z, Z) for the
    full one (the others None).
    """

    x: object
    mu: object
    eps: object
    z: object
    out: object
    log_p: object
    kl: object
    caches: tuple
    logvar: object = None
    log_diag: object = None
    lower: object = None
    L: object = None


class GaussianPosterior:
    """Q_theta(z|x) = N(mean, Sigma), Sigma = L L^T, for each of N rows, with the names of
    ``torch.distributions.MultivariateNormal``: ``mean`` (N, Z), ``scale_tril`` L (N, Z, Z),
    ``covariance`` (N, Z, Z), ``kl()`` = KL(Q || N(0, I)) (N,) in nats, ``log_prob(z)`` (N,),
    ``rsample(eps)`` = mean + L eps, ``variance`` = the diagonal of Sigma (N, Z).

    Diagonal (``logvar`` given): L = diag(exp(logvar / 2)), and every method runs the
    diagonal functions of ``distributions``. Full (``log_diag`` and ``lower`` given):
    L = diag(exp(log_diag)) + the strictly-lower matrix of ``lower`` (N, Z(Z-1)/2), row by row.
    """

    def __init__(self, mean, logvar=None, log_diag=None, lower=None):
        self.mean, self.logvar, self.lower = mean, logvar, lower
        self.log_diag = 0.5 * logvar if logvar is not None else log_diag
        self.xp = array_namespace(mean)

    @property
    def scale_tril(self):
        if self.lower is not None:
            return dist.scale_tril(self.log_diag, self.lower)
        sigma = self.xp.exp(self.log_diag)  # (N, Z)
        return sigma[..., None] * self.xp.eye(sigma.shape[-1], dtype=sigma.dtype, **_device_of(sigma))  # diag(sigma)

    @property
    def covariance(self):
        L = self.scale_tril
        return L @ L.mT  # Sigma = L L^T, (N, Z, Z)

    @property
    def variance(self):
        """The diagonal of Sigma, each z_j's marginal variance, (N, Z), without building L:
        Sigma_jj = sum_k L_jk^2 = exp(2 s_j) + the squares of row j's entries in ``lower``."""
        if self.lower is None:
            return self.xp.exp(self.logvar)
        z = self.log_diag.shape[-1]
        below = [self.xp.sum(self.lower[..., j * (j - 1) // 2 : j * (j + 1) // 2] ** 2, axis=-1) for j in range(z)]
        return self.xp.exp(2.0 * self.log_diag) + self.xp.stack(below, axis=-1)

    def kl(self):
        if self.lower is None:
            return dist.gaussian_kl(self.mean, self.logvar)
        return dist.full_gaussian_kl(self.mean, self.log_diag, self.lower)

    def log_prob(self, z):
        """log N(z; mean, Sigma) for z (N, Z), or (N, k, Z) for k points of each row: (N,) or (N, k)."""
        if self.lower is None:
            return dist.gaussian_log_density(z, *self._against(z, self.mean, self.logvar))
        return dist.full_gaussian_log_density(z, *self._against(z, self.mean, self.scale_tril))

    def rsample(self, eps):
        """z = mean + L eps for eps (N, Z), or (N, k, Z) for k draws of each row."""
        if self.lower is None:
            return dist.reparameterize(*self._against(eps, self.mean, self.logvar), eps)
        return dist.reparameterize_full(*self._against(eps, self.mean, self.scale_tril), eps)

    def log_prob_at_sample(self, eps):
        """``log_prob(rsample(eps))``, computed from eps: stable where Sigma is nearly singular."""
        if self.lower is None:
            return dist.gaussian_log_density_at_sample(eps, *self._against(eps, self.logvar))
        return dist.full_gaussian_log_density_at_sample(eps, *self._against(eps, self.log_diag))

    def _against(self, points, *params):
        """``params`` (N, ...) as they broadcast against ``points``: unchanged for points (N, Z),
        (N, 1, ...) for points (N, k, Z), one row against its k points."""
        if points.ndim != 3:
            return params
        return [self.xp.reshape(a, (a.shape[0], 1, *a.shape[1:])) for a in params]


def _check_real_dtype(name, a, given):
    """A ValueError naming ``name`` unless the array ``a`` (made from ``given``) holds real
    numbers: floats, integers or bools, not complex, object, strings, datetimes."""
    xp = array_namespace(a)
    if xp is np or type(a).__module__.startswith("cupy"):  # NumPy dtypes
        real = np.dtype(a.dtype).kind in "biuf"
    else:  # the array API's dtypes
        real = xp.isdtype(a.dtype, ("bool", "integral", "real floating"))
    if not real:
        source = "" if given is a else f" (from a {type(given).__name__})"
        raise ValueError(f"{name}: expected real numbers (a float, integer or bool array), got dtype {a.dtype}{source}")


def _device_of(a) -> dict:
    """``{"device": a.device}`` where the namespace takes that argument, else {} (CuPy)."""
    return {} if type(a).__module__.startswith("cupy") else {"device": a.device}


def _dense_layers(input_dim, hidden_dims, latent_dim, posterior) -> list[tuple[int, int]]:
    """Every Dense layer of ``VAE(input_dim, hidden_dims, latent_dim, posterior=...)`` as
    (n_in, n_out): encoder D -> H1 -> ... -> Hk, heads Hk -> Z (mu) and Hk -> Z (logvar; for
    "full": log of L's diagonal) and, for "full", Hk -> Z(Z-1)/2 (L's strictly-lower entries);
    decoder Z -> Hk -> ... -> H1 -> D."""
    z = int(latent_dim)
    encoder = [int(input_dim), *(int(h) for h in hidden_dims)]
    found = list(zip(encoder[:-1], encoder[1:])) + [(encoder[-1], z), (encoder[-1], z)]
    if posterior == "full":
        found.append((encoder[-1], z * (z - 1) // 2))
    decoder = [z, *reversed(encoder)]
    return found + list(zip(decoder[:-1], decoder[1:]))


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

    @property
    def total(self) -> int:
        return self.parameters + self.activations

    def check(self, names, posterior_name="posterior"):
        """A ValueError when ``total`` is more than this machine's memory, naming the argument
        the estimate grows fastest with among ``names``: {argument: (name shown, value shown)},
        e.g. {"latent_dim": ("--latent-dim", 600), "hidden_dims": ("--hidden", [400])}."""
        driver = max(names, key=lambda arg: self.weights.get(arg, 0))
        name, value = names[driver]
        detail = f" with {posterior_name} full" if driver == "latent_dim" and self.posterior == "full" else ""
        if self.activations:
            detail += (f" (parameters {self.parameters / 2**30:.1f} GiB, activations of {self.rows} rows at once "
                       f"{self.activations / 2**30:.1f} GiB)")
        check_fits_in_memory(name, value, self.total, detail)


def memory_estimate(input_dim, hidden_dims, latent_dim, posterior="diagonal", dtype="float32", rows=0,
                    work="train") -> MemoryEstimate:
    """The bytes a ``VAE(input_dim, hidden_dims, latent_dim, posterior=..., dtype=...)``
    needs, from the sizes alone (nothing is allocated): its parameters, their gradient and two
    optimizer buffers, plus the activations of ``rows`` rows at once for ``work``: "train"
    (a step of fit on a batch of ``rows``), "evaluate" (the forward pass of ``rows`` rows) or
    "sample" (``rows`` draws decoded). rows=0 counts the parameters alone. The one estimate
    for every memory check: ``VAE()``, ``npvae train``, ``npvae gradcheck``.

    ``weights[arg]`` is what the total would lose if that argument were 1 (every hidden width
    1, for ``hidden_dims``): the argument with the largest weight is the one that drives the
    size, and the one a refusal names."""
    sizes = {"input_dim": int(input_dim), "hidden_dims": [int(h) for h in hidden_dims],
             "latent_dim": int(latent_dim), "rows": int(rows)}
    item = 4 if dtype == "float32" else 8
    parameters, activations = _memory_bytes(**sizes, posterior=posterior, item=item, work=work)
    weights = {}
    for arg, value in sizes.items():
        smallest = [1] * len(value) if arg == "hidden_dims" else min(value, 1)
        weights[arg] = parameters + activations - sum(
            _memory_bytes(**{**sizes, arg: smallest}, posterior=posterior, item=item, work=work))
    return MemoryEstimate(parameters, activations, sizes["rows"], posterior, weights)


def _memory_bytes(input_dim, hidden_dims, latent_dim, rows, posterior, item, work) -> tuple[int, int]:
    """(parameters, activations) in bytes, as ``memory_estimate`` describes them."""
    layers_ = _dense_layers(input_dim, hidden_dims, latent_dim, posterior)
    parameters = sum(4 * item * (a * b + b) for a, b in layers_)  # weights and bias: 4 copies
    if work == "train" and rows:  # the largest layer's weight gradient, before it is added in
        parameters += item * max(a * b for a, b in layers_)
    per = ACTIVATION_FLOATS[work]
    width = per["input_dim"] * input_dim + per["latent_dim"] * latent_dim + per["hidden_dims"] * sum(hidden_dims)
    if posterior == "full":
        width += per["latent_dim^2"] * latent_dim * latent_dim
    return parameters, item * rows * width


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
        activation: ``"relu"`` or ``"tanh"``.
        dtype: ``"float32"`` (training) or ``"float64"`` (gradient checks).
        seed: initializes the parameters and the model's own noise generator ``model.rng``.

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
        if posterior == "full" and latent_dim < 2:
            raise ValueError("posterior: 'full' needs latent_dim >= 2 (with Z = 1 it is the diagonal one), "
                             f"got latent_dim {latent_dim}")
        # params, grads and up to two optimizer buffers: refuse a size that cannot fit before
        # allocating anything (the activations depend on the batch: fit's caller checks them)
        sizes = {"input_dim": int(input_dim), "hidden_dims": list(hidden_dims), "latent_dim": int(latent_dim)}
        memory_estimate(*sizes.values(), posterior, dtype).check({k: (k, v) for k, v in sizes.items()})

        self.input_dim, self.latent_dim = int(input_dim), int(latent_dim)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        self.likelihood, self.activation, self.dtype = likelihood, activation, dtype
        self.seed = seed
        self.backend = get_backend()
        self.xp = self.backend.xp

        D, H, Z = self.input_dim, self.hidden_dims, self.latent_dim
        # theta: the encoder trunk and its two heads.
        self.encoder = MLP((D, *H), activation, activate_last=True)  # (N, D) -> (N, H[-1])
        h_last = H[-1] if H else D
        self.mu_head = Dense(h_last, Z)  # (N, H[-1]) -> (N, Z)
        self.posterior_kind = posterior
        self.logvar_head = Dense(h_last, Z)  # (N, H[-1]) -> (N, Z): logvar, or for "full" s = log diag(L)
        self.lower_head = Dense(h_last, Z * (Z - 1) // 2) if posterior == "full" else None  # L's lower entries
        # phi: the decoder mirrors the encoder.
        self.decoder = MLP((Z, *reversed(H), D), activation)  # (N, Z) -> (N, D)

        theta_layers = [(f"theta.encoder.{i}", layer) for i, layer in self.encoder.named_layers()]
        if posterior == "full":
            theta_layers += [("theta.mu", self.mu_head), ("theta.log_diag", self.logvar_head),
                             ("theta.lower", self.lower_head)]
        else:
            theta_layers += [("theta.mu", self.mu_head), ("theta.logvar", self.logvar_head)]
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

        def mean_and_logvar(xb):
            q = GaussianPosterior(*self._encoder_heads(xb))
            return q.mean, q.logvar if q.lower is None else self.xp.log(q.variance)

        return self._by_rows(mean_and_logvar, self.check_x(x))

    def posterior(self, x) -> GaussianPosterior:
        """Q_theta(z|x) for each row of x (N, D), as a ``GaussianPosterior`` (mean,
        scale_tril, covariance, kl(), log_prob(z), rsample(eps)). Its parameters are computed
        a chunk of rows at a time; ``scale_tril`` and ``covariance`` are (N, Z, Z) when asked for."""
        return GaussianPosterior(*self._by_rows(self._encoder_heads, self.check_x(x)))

    def _encoder_heads(self, x):
        """The encoder's heads for x (N, D): (mu, logvar) or, full, (mu, None, log_diag, lower)."""
        h, _ = self.encoder.forward(x)  # (N, H[-1])
        mu, _ = self.mu_head.forward(h)  # (N, Z)
        scale, _ = self.logvar_head.forward(h)  # (N, Z): logvar, or s = log diag(L)
        if self.posterior_kind == "diagonal":
            return mu, scale
        lower, _ = self.lower_head.forward(h)  # (N, Z(Z-1)/2)
        return mu, None, scale, lower

    @property
    def chunk_rows(self) -> int:
        """How many rows ``encode``, ``posterior`` and ``reconstruct`` take at once: about
        ``CHUNK_FLOATS`` numbers in the widest activation of a chunk (for the full posterior,
        L's Z(Z-1)/2 entries below the diagonal, a row)."""
        lower = self.lower_head.out_dim if self.lower_head else 0
        widest = max(self.input_dim, *self.hidden_dims, self.latent_dim, lower)
        return max(1, CHUNK_FLOATS // widest)

    def _by_rows(self, fn, x):
        """``fn(x)`` for x (N, D), a tuple of (N, ...) arrays (or Nones), computed ``chunk_rows``
        rows at a time and put together in arrays allocated once."""
        n, step = int(x.shape[0]), self.chunk_rows
        if n <= step:
            return fn(x)
        out = None
        for a in range(0, n, step):
            b = min(a + step, n)
            parts = fn(x[a:b, ...])
            if out is None:
                out = [None if p is None else self.backend.zeros((n, *p.shape[1:]), self.dtype) for p in parts]
            for whole, part in zip(out, parts):
                if part is not None:
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
        return self._by_rows(lambda xb: (self.mean(self.decode(self._encoder_heads(xb)[0])),), self.check_x(x))[0]

    # -- the forward pass, and right below it the backward pass ------------------------------
    def forward(self, x, eps) -> Forward:
        """One pass of the model for a batch x (N, D) and noise eps (N, Z):

            mu, logvar = encoder(x)                  Q_theta(z|x)         (N, Z), (N, Z)
            z = mu + exp(logvar / 2) * eps           reparameterization   (N, Z)
            out = decoder(z)                         P_phi(x|z)           (N, D)
            log_p = log P_phi(x|z), kl = KL(Q_theta(z|x) || N(0, I))     (N,), (N,)

        With ``posterior="full"`` the encoder's heads give mu, s = log diag(L) and L's
        strictly-lower entries, Sigma = L L^T, and z = mu + L eps (``distributions``' full
        covariance section). Returns a ``Forward`` with all of these and the layers' caches,
        which ``backward`` needs. Only shapes are checked (``loss_and_grads`` also checks the
        values of x).
        """
        x = self._check_array("x", x, self.input_dim)
        eps = self._check_array("eps", eps, self.latent_dim)
        if eps.shape[0] != x.shape[0]:
            raise ValueError(f"eps: expected shape {(x.shape[0], self.latent_dim)}, got {tuple(eps.shape)}")
        h, h_cache = self.encoder.forward(x)  # (N, H[-1])
        mu, mu_cache = self.mu_head.forward(h)  # (N, Z)
        if self.posterior_kind == "diagonal":
            logvar, logvar_cache = self.logvar_head.forward(h)  # (N, Z)
            z = dist.reparameterize(mu, logvar, eps)  # (N, Z)
            kl = dist.gaussian_kl(mu, logvar)  # (N,)
            scale, head_caches = {"logvar": logvar}, (logvar_cache,)
        else:  # full covariance: Sigma = L L^T
            log_diag, log_diag_cache = self.logvar_head.forward(h)  # (N, Z): s = log diag(L)
            lower, lower_cache = self.lower_head.forward(h)  # (N, Z(Z-1)/2)
            L = dist.scale_tril(log_diag, lower)  # (N, Z, Z)
            z = dist.reparameterize_full(mu, L, eps)  # (N, Z)
            kl = dist.full_gaussian_kl(mu, log_diag, lower)  # (N,)
            scale, head_caches = {"log_diag": log_diag, "lower": lower, "L": L}, (log_diag_cache, lower_cache)
        out, decoder_caches = self.decoder.forward(z)  # (N, D)
        log_p = self.log_p_x_given_z(x, out)  # (N,)
        return Forward(x, mu, eps=eps, z=z, out=out, log_p=log_p, kl=kl,
                       caches=(h_cache, mu_cache, head_caches, decoder_caches), **scale)

    def backward(self, fwd: Forward, beta=1.0):
        """The gradient of loss = mean_n[ -log P(x_n|z_n) ] + beta * mean_n[ KL_n ] with respect
        to every parameter, for the batch of ``fwd = forward(x, eps)``: the same steps in
        reverse, with the same eps. Writes it into ``model.grads`` (P,) and returns that."""
        beta = check_real("beta", beta, minimum=0)
        h_cache, mu_cache, head_caches, decoder_caches = fwd.caches
        n = fwd.x.shape[0]
        # Each row enters the mean with weight 1/N, and the loss is -log P: d loss / d log P_n = -1/N.
        if self.likelihood == "bernoulli":
            dout = dist.bernoulli_log_likelihood_backward(-1.0 / n, fwd.x, fwd.out)  # (N, D)
        else:
            dout = dist.gaussian_log_likelihood_backward(-1.0 / n, fwd.x, fwd.out)  # (N, D)
        dz = self.decoder.backward(dout, decoder_caches)  # (N, Z), fills d phi
        if self.posterior_kind == "diagonal":
            dmu, dlogvar = dist.reparameterize_backward(dz, fwd.logvar, fwd.eps)  # the same eps
            dmu_kl, dlogvar_kl = dist.gaussian_kl_backward(beta / n, fwd.mu, fwd.logvar)  # d loss / d KL_n = beta/N
            dmu, dlogvar = dmu + dmu_kl, dlogvar + dlogvar_kl  # (N, Z) each
            dh = self.mu_head.backward(dmu, mu_cache) + self.logvar_head.backward(dlogvar, head_caches[0])
        else:
            dmu, dL = dist.reparameterize_full_backward(dz, fwd.eps)  # the same eps; dL (N, Z, Z)
            dlog_diag, dlower = dist.scale_tril_backward(dL, fwd.log_diag)  # through L = diag(e^s) + lower
            dmu_kl, dlog_diag_kl, dlower_kl = dist.full_gaussian_kl_backward(beta / n, fwd.mu, fwd.log_diag, fwd.lower)
            dmu, dlog_diag, dlower = dmu + dmu_kl, dlog_diag + dlog_diag_kl, dlower + dlower_kl
            dh = (self.mu_head.backward(dmu, mu_cache) + self.logvar_head.backward(dlog_diag, head_caches[0])
                  + self.lower_head.backward(dlower, head_caches[1]))
        self.encoder.backward(dh, h_cache, need_dx=False)  # fills d theta; x needs no gradient
        return self.grads

    # -- the loss and its gradient, for a user ---------------------------------------------------
    def loss_and_grads(self, x, eps=None, beta=1.0):
        """Mean over the batch of -ELBO and its gradient with respect to all parameters:
        ``forward`` then ``backward``.

        Args:
            x: (N, D) data (for bernoulli, in [0, 1]), N >= 1.
            eps: (N, Z) noise for the reparameterization; None draws it from ``model.rng``.
                Either way, the backward pass uses the very eps the forward pass used, and
                it is returned as ``res.eps``.
            beta: weight of the KL term, a finite number >= 0 (1 is the ELBO; beta-VAEs and KL
                warm-up change it).
        Returns:
            ``LossAndGrads``: loss = reconstruction + beta * kl, grads (P,) = ``model.grads``.
        """
        beta = check_real("beta", beta, minimum=0)  # before eps is drawn: a refusal changes nothing
        x = self._check_batch(x)
        if eps is None:
            eps = self.rng.standard_normal((int(x.shape[0]), self.latent_dim), dtype=self.dtype)
        fwd = self.forward(x, eps)
        grads = self.backward(fwd, beta)
        reconstruction, kl = -self.xp.mean(fwd.log_p), self.xp.mean(fwd.kl)
        return LossAndGrads(reconstruction + beta * kl, reconstruction, kl, grads, fwd.z, fwd.eps)

    def loss(self, x, eps, beta=1.0) -> float:
        """The loss alone (mean over the batch of -ELBO, beta-weighted): ``forward`` without
        ``backward``. eps (N, Z) is required: a finite difference needs the same noise on
        both sides (``npvae.gradcheck`` differentiates this)."""
        beta = check_real("beta", beta, minimum=0)
        fwd = self.forward(self._check_batch(x), eps)
        return float(self.xp.mean(-fwd.log_p + beta * fwd.kl))

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

    def _check_array(self, name, a, width):
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
        if a.ndim != 2 or a.shape[1] != width:
            raise ValueError(f"{name}: expected shape (N, {width}), got {tuple(a.shape)}")
        return be.astype(a, self.dtype)

