"""npvae: Variational Autoencoders from scratch in NumPy, for CS7015 Lecture 21.

    import npvae
    model = npvae.VAE(input_dim=784, hidden_dims=(400,), latent_dim=20)
    res = model.loss_and_grads(x)        # -ELBO, its two terms, and d(-ELBO)/d params

Modules, one idea each: ``backend`` (NumPy / CuPy / strict), ``layers``, ``distributions``,
``vae``, ``optim``, ``train``, ``metrics``, ``datasets``, ``checkpoint``, ``plots``,
``gradcheck``, ``cli``.
"""

from . import backend, datasets, distributions, gradcheck, layers, optim
from .backend import Generator, asarray, get_backend, set_backend, to_numpy
from .checkpoint import CheckpointError, load
from .metrics import active_units, evaluate, log_likelihood
from .train import History, TrainingError, fit
from .vae import VAE, LossAndGrads

__version__ = "0.1.0"

__all__ = [
    "VAE", "LossAndGrads", "Generator", "asarray", "to_numpy", "get_backend", "set_backend",
    "fit", "load", "CheckpointError", "History", "TrainingError", "evaluate", "log_likelihood", "active_units",
    "backend", "layers", "distributions", "gradcheck", "optim", "datasets", "__version__",
]
