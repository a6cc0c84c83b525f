"""npvae: Variational Autoencoders from scratch in NumPy, for CS7015 Lecture 21.

    import npvae
    model = npvae.VAE(input_dim=784, hidden_dims=(400,), latent_dim=20)
    res = model.loss_and_grads(x)        # -ELBO, its two terms, and d(-ELBO)/d params

The teaching modules hold the math, each equation once, forward above backward:
``layers``, ``distributions``, ``vae``, ``optim`` (on top of ``backend``, ``random``,
``checks`` and ``replaceable``). Around them: ``train``, ``metrics``, ``datasets``,
``checkpoint``, ``plots``, ``gradcheck``, ``cli``. Above them all, ``npvae.fast`` replaces a
few hot textbook functions by faster ones with the same results, for NumPy and CuPy arrays;
``NPVAE_FAST=0`` (or ``with npvae.textbook(): ...``) runs exactly the textbook code;
``NPVAE_FAST`` is checked first, and a value npvae does not know stops the import.
"""

import os
import sys


def _is_the_command() -> bool:
    """True when this process is the ``npvae`` command: its console script, or ``python -m npvae``."""
    after_m = sys.orig_argv[sys.orig_argv.index("-m") + 1:][:1] if "-m" in sys.orig_argv else []
    return os.path.basename(sys.argv[0]) in ("npvae", "npvae.exe") or after_m == ["npvae"]


def _refuse_as_the_command(error):
    """Under the ``npvae`` command, say ``error`` in the command's one line and exit with status 2,
    as ``cli.main`` does for a bad NPVAE_BACKEND (a package that refuses to load never reaches
    ``cli.main``). Elsewhere (``import npvae``) the error is raised as it is."""
    if _is_the_command():
        command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ""
        print(f"npvae{' ' + command if command else ''}: error: {error}", file=sys.stderr)
        raise SystemExit(2)


try:
    from . import replaceable  # reads NPVAE_FAST before anything else loads
except ValueError as exc:
    _refuse_as_the_command(exc)
    raise

from . import backend, datasets, distributions, gradcheck, layers, optim
from .backend import asarray, get_backend, set_backend, to_numpy
from .checkpoint import CheckpointError, load, save
from .metrics import active_units, evaluate, log_marginal_likelihood
from .random import Generator
from .replaceable import textbook
from .train import History, TrainingError, fit
from .vae import VAE, LossAndGrads

if replaceable.FAST:
    from . import fast  # noqa: F401  (registers the fast paths; see npvae.replaceable)

__version__ = "0.1.0"

__all__ = [
    "VAE", "LossAndGrads", "Generator", "asarray", "to_numpy", "get_backend", "set_backend",
    "fit", "load", "save", "CheckpointError", "History", "TrainingError", "evaluate", "log_marginal_likelihood",
    "active_units", "textbook", "backend", "layers", "distributions", "gradcheck", "optim", "datasets",
    "__version__",
]
