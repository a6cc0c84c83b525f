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

and ``loss_and_grads`` runs that forward, then the same steps backwards, with the same eps.

All parameters live in one flat vector ``model.params`` (theta first, then phi) and the
gradient in ``model.grads``; ``model.theta`` and ``model.phi`` are views of its two halves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import distributions as dist
from .backend import DTYPES, Generator, check_fits_in_memory, check_int, get_backend, spawn_seeds
from .layers import MLP, Dense, FlatParameters, sigmoid

LIKELIHOODS = ("bernoulli", "gaussian")
ACTIVATIONS = ("relu", "tanh")


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


def parameter_count(input_dim, hidden_dims, latent_dim) -> int:
    """How many parameters ``VAE(input_dim, hidden_dims, latent_dim)`` has, computed from the
    sizes alone (nothing is allocated): every Dense layer n_in -> n_out has n_in * n_out + n_out.

    encoder D -> H1 -> ... -> Hk, two heads Hk -> Z, decoder Z -> Hk -> ... -> H1 -> D.
    """
    dims = [int(input_dim), *(int(h) for h in hidden_dims)]
    z = int(latent_dim)
    dense = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
    encoder = sum(dense(a, b) for a, b in zip(dims[:-1], dims[1:])) + 2 * dense(dims[-1], z)
    back = [z, *reversed(dims)]
    decoder = sum(dense(a, b) for a, b in zip(back[:-1], back[1:]))
    return encoder + decoder


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
                 activation="relu", dtype="float32", seed=0):
        check_int("input_dim", input_dim)
        check_int("latent_dim", latent_dim)
        if isinstance(hidden_dims, int):
            hidden_dims = (hidden_dims,)
        hidden_dims = tuple(hidden_dims)
        for i, h in enumerate(hidden_dims):
            check_int(f"hidden_dims[{i}]", h)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: expected one of {LIKELIHOODS}, got {likelihood!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
        # params, grads and up to two optimizer buffers: refuse a size that cannot fit
        # before allocating anything.
        count = parameter_count(input_dim, hidden_dims, latent_dim)
        itemsize = 4 if dtype == "float32" else 8
        check_fits_in_memory("hidden_dims" if hidden_dims else "input_dim",
                             list(hidden_dims) if hidden_dims else input_dim, 4 * itemsize * count)

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
        self.logvar_head = Dense(h_last, Z)  # (N, H[-1]) -> (N, Z)
        # phi: the decoder mirrors the encoder.
        self.decoder = MLP((Z, *reversed(H), D), activation)  # (N, Z) -> (N, D)

        theta_layers = [(f"theta.encoder.{i}", layer) for i, layer in self.encoder.named_layers()]
        theta_layers += [("theta.mu", self.mu_head), ("theta.logvar", self.logvar_head)]
        phi_layers = [(f"phi.decoder.{i}", layer) for i, layer in self.decoder.named_layers()]

        init_seed, noise_seed = spawn_seeds(seed, 2)
        flat = FlatParameters(theta_layers + phi_layers, seed=init_seed, dtype=dtype, backend=self.backend)
        self.params, self.grads, self.blocks = flat.params, flat.grads, flat.blocks
        self.n_theta = sum(b - a for name, a, b, _ in self.blocks if name.startswith("theta."))
        self.theta, self.phi = self.params[: self.n_theta], self.params[self.n_theta :]
        self.rng = Generator(noise_seed, backend=self.backend)
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
        }

    @property
    def n_params(self) -> int:
        return int(self.params.shape[0])

    def __repr__(self):
        args = json.dumps(self.config)[1:-1].replace('"', "")
        return f"VAE({args}; {self.n_params} parameters: theta {self.n_theta}, phi {self.n_params - self.n_theta})"

    def save(self, path):
        """Write this model (and its training state, if any) to a checkpoint ``.npz``."""
        from .checkpoint import save

        save(self, path)

    # -- the forward pieces ----------------------------------------------------------------
    def encode(self, x):
        """Q_theta(z|x): x (N, D) -> mu (N, Z), logvar (N, Z)."""
        x = self.check_x(x)
        mu, logvar, _ = self._encode(x)
        return mu, logvar

    def decode(self, z):
        """The decoder's output for z (N, Z): logits (bernoulli) or mean (gaussian), (N, D)."""
        z = self._check_array("z", z, self.latent_dim)
        out, _ = self.decoder.forward(z)
        return out

    def mean(self, out):
        """E[x|z] from the decoder's output: sigma(logits) (bernoulli) or the mean itself."""
        return sigmoid(out) if self.likelihood == "bernoulli" else out

    def sample(self, n, rng=None):
        """n draws z ~ N(0, I) from the prior, decoded to E[x|z]: (n, D).

        ``rng`` is an ``npvae.backend.Generator``; None uses the model's own ``model.rng``.
        """
        check_int("n", n)
        self._check_backend()
        z = (rng or self.rng).standard_normal((int(n), self.latent_dim), dtype=self.dtype)
        return self.mean(self.decode(z))

    def reconstruct(self, x):
        """E[x|z] at z = mu(x), the posterior mean: x (N, D) -> (N, D)."""
        mu, _ = self.encode(x)
        return self.mean(self.decode(mu))

    def log_likelihood(self, x, out):
        """log P_phi(x|z) for each row, from the decoder's output: (N,)."""
        if self.likelihood == "bernoulli":
            return dist.bernoulli_log_likelihood(x, out)
        return dist.gaussian_log_likelihood(x, out)

    # -- the loss and its gradient -----------------------------------------------------------
    def loss(self, x, eps, beta=1.0) -> float:
        """The loss alone (mean over the batch of -ELBO, beta-weighted), no gradient.

        The forward pass written once more on its own, from ``encode`` and ``decode``, so a
        gradient check compares ``loss_and_grads`` against an independent computation.
        eps (N, Z) is required: a finite difference needs the same noise on both sides.
        """
        x = self._check_batch(x)
        eps = self._check_array("eps", eps, self.latent_dim)
        mu, logvar, _ = self._encode(x)
        z, _ = dist.reparameterize(mu, logvar, eps)
        out, _ = self.decoder.forward(z)
        xp = self.xp
        return float(xp.mean(-self.log_likelihood(x, out) + beta * dist.gaussian_kl(mu, logvar)))

    def loss_and_grads(self, x, eps=None, beta=1.0):
        """Mean over the batch of -ELBO and its gradient with respect to all parameters.

        Args:
            x: (N, D) data (for bernoulli, in [0, 1]).
            eps: (N, Z) noise for the reparameterization; None draws it from ``model.rng``.
                Either way, the backward pass uses the very eps the forward pass used, and
                it is returned as ``res.eps``.
            beta: weight of the KL term (1 is the ELBO; beta-VAEs and KL warm-up change it).
        Returns:
            ``LossAndGrads``: loss = reconstruction + beta * kl, grads (P,) = ``model.grads``.
        """
        x = self._check_batch(x)
        if eps is not None:
            eps = self._check_array("eps", eps, self.latent_dim)
            if eps.shape[0] != x.shape[0]:
                raise ValueError(f"eps: expected shape {(x.shape[0], self.latent_dim)}, got {tuple(eps.shape)}")
        return self._loss_and_grads(x, eps, float(beta))

    def _loss_and_grads(self, x, eps, beta):
        """``loss_and_grads`` for input that is already checked (the training loop's path)."""
        xp = self.xp
        n = x.shape[0]

        # Forward: encoder, reparameterization, decoder, then the two terms of the loss.
        mu, logvar, enc_caches = self._encode(x)  # (N, Z), (N, Z)
        z, eps = dist.reparameterize(mu, logvar, eps, rng=self.rng)  # (N, Z)
        out, dec_caches = self.decoder.forward(z)  # (N, D)
        # log P(x|z) per row (N,), and its gradient with respect to out (N, D)
        if self.likelihood == "bernoulli":
            log_px, dlog_px = dist.bernoulli_log_likelihood_and_grad(x, out)  # in one go
        else:
            log_px = dist.gaussian_log_likelihood(x, out)
            dlog_px = dist.gaussian_log_likelihood_backward(1.0, x, out)  # x - out
        reconstruction = -xp.mean(log_px)  # scalar
        kl = xp.mean(dist.gaussian_kl(mu, logvar))  # scalar
        loss = reconstruction + beta * kl

        # Backward. Each of the N rows enters the mean with weight 1/N, and the loss is
        # -log P: d loss / d out = -(1/N) d log P / d out.
        dout = dlog_px
        dout *= -1.0 / n  # (N, D), in place
        dz = self.decoder.backward(dout, dec_caches)  # (N, Z), fills d phi
        dmu, dlogvar = dist.reparameterize_backward(dz, logvar, eps)  # same eps as forward
        dmu_kl, dlogvar_kl = dist.gaussian_kl_backward(beta / n, mu, logvar)
        dmu, dlogvar = dmu + dmu_kl, dlogvar + dlogvar_kl  # (N, Z) each
        h, h_cache, mu_cache, logvar_cache = enc_caches
        dh = self.mu_head.backward(dmu, mu_cache) + self.logvar_head.backward(dlogvar, logvar_cache)
        self.encoder.backward(dh, h_cache, need_dx=False)  # fills d theta; x needs no gradient

        return LossAndGrads(loss, reconstruction, kl, self.grads, z, eps)

    def _encode(self, x):
        h, h_cache = self.encoder.forward(x)  # (N, H[-1])
        mu, mu_cache = self.mu_head.forward(h)  # (N, Z)
        logvar, logvar_cache = self.logvar_head.forward(h)  # (N, Z)
        return mu, logvar, (h, h_cache, mu_cache, logvar_cache)

    # -- input checks ------------------------------------------------------------------------
    def _check_backend(self):
        """The model's backend, or a ValueError if ``set_backend`` has switched to another since
        the model was built (its arrays live on the old one)."""
        active = get_backend()
        if active.name != self.backend.name:
            raise ValueError(f"model: built on the {self.backend.name!r} backend, but the active backend is now "
                             f"{active.name!r} (set_backend was called after); save it with model.save(path) and "
                             f"npvae.load(path) it on the new backend, or switch back")
        return self.backend

    def check_x(self, x):
        """x as an array of the model's backend and dtype, or a ValueError that says why not:
        wrong ndim or width, NaN or inf, or (bernoulli) values outside [0, 1]."""
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
        if not be.owns(a):
            a = be.asarray(a)
        if a.ndim != 2 or a.shape[1] != width:
            raise ValueError(f"{name}: expected shape (N, {width}), got {tuple(a.shape)}")
        return be.astype(a, self.dtype)

