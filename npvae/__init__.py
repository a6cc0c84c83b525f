"""npvae: Variational Autoencoders from scratch in NumPy, for CS7015 Lecture 21.

    import npvae
    model = npvae.VAE(input_dim=784, hidden_dims=(400,), latent_dim=20)
    res = model.loss_and_grads(x)        # -ELBO, its two terms, and d(-ELBO)/d params

The teaching modules hold the math, each equation once, forward above backward:
``layers``, ``distributions``, ``vae``, ``optim`` (on top of ``backend``, ``random``,
``checks`` and ``replaceable``). Around them: ``train``, ``metrics``, ``datasets``,
``checkpoint``, ``plots``, ``gradcheck``, ``cli``. Above them all, ``npvae.fast`` replaces a
few hot textbook functions by faster ones with the same results, for NumPy and CuPy arrays,
in training; the notebooks, the graders and the math tests run the textbook code, and so
does everything after ``npvae.textbook()`` (or in ``with npvae.textbook(): ...``, or with
``NPVAE_FAST=0``). ``with npvae.replaced({"distributions.gaussian_kl": f, ...}): ...`` runs
a student's functions in their place. ``NPVAE_FAST`` is checked first, and a value npvae
does not know stops the import.
"""

import os
import sys


def _started_as_the_command() -> bool:
    """True when this process is the ``npvae`` command (its console script, ``python -m npvae``)."""
    script = os.path.splitext(os.path.basename(sys.argv[0] if sys.argv else ""))[0]
    argv = getattr(sys, "orig_argv", [])
    return script == "npvae" or any(a == "-m" and b == "npvae" for a, b in zip(argv, argv[1:]))


# A package that refuses to load never reaches ``cli.main``: under the ``npvae`` command, a bad
# NPVAE_FAST is said in the command's one line (status 2), and Ctrl-C while starting in one
# line (status 130). ``import npvae`` elsewhere raises them as they are.
try:
    from . import replaceable  # reads NPVAE_FAST before anything else loads
    from . import backend, datasets, distributions, gradcheck, layers, optim
    from .backend import asarray, get_backend, set_backend, to_numpy
    from .checkpoint import CheckpointError, load, save
    from .metrics import active_units, evaluate, log_marginal_likelihood
    from .random import Generator
    from .replaceable import replaced, textbook
    from .train import History, TrainingError, fit
    from .vae import VAE, LossAndGrads

    if replaceable.FAST:
        from . import fast  # noqa: F401  (registers the fast paths; see npvae.replaceable)
except (ValueError, KeyboardInterrupt) as exc:
    if not _started_as_the_command():
        raise
    if isinstance(exc, KeyboardInterrupt):
        print("npvae: interrupted while starting", file=sys.stderr)
        raise SystemExit(130) from None
    command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ""
    print(f"npvae{' ' + command if command else ''}: error: {exc}", file=sys.stderr)
    raise SystemExit(2) from None

__version__ = "0.1.0"

__all__ = [
    "VAE", "LossAndGrads", "Generator", "asarray", "to_numpy", "get_backend", "set_backend",
    "fit", "load", "save", "CheckpointError", "History", "TrainingError", "evaluate", "log_marginal_likelihood",
    "active_units", "replaced", "textbook", "backend", "layers", "distributions", "gradcheck", "optim", "datasets",
    "__version__",
]
