"""Optimizers over the model's one flat parameter vector.

Each optimizer holds a reference to ``model.params`` and updates it in place from
``model.grads``; its state (momentum, squared-gradient sums, Adam's moments) is a few plain
arrays of the same length, which is what a checkpoint saves (``state_dict``).

- ``SGD``: gradient descent with (heavy-ball) momentum, as PyTorch writes it:
      v <- momentum * v + g;   params <- params - lr * v
- ``Adagrad`` (Duchi et al. 2011; Kingma & Welling's choice for the VAE):
      s <- s + g^2;            params <- params - lr * g / (sqrt(s) + eps)
- ``Adam`` (Kingma & Ba 2015), bias-corrected, with PyTorch's defaults:
      m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
      params <- params - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

Every update writes into the flat vectors in place (``-=``, ``[...] =``), so the layers, which
hold views into ``params``, see the change. Each ``step`` is ``@replaceable``
(``npvae.replaced`` can run a student's in its place); for ``Adam.step``, ``npvae.fast`` runs the
same update with fewer temporary arrays on NumPy (and as one kernel on CuPy).
"""

from __future__ import annotations

from .backend import array_namespace, get_backend, to_numpy
from .checks import check_int, check_real
from .replaceable import replaceable


class Optimizer:
    """Base class: ``step(grads)`` updates ``params`` in place; state in ``state_dict()``."""

    name = "optimizer"
    hyper: tuple = ("lr",)  # names of the hyperparameters, attributes of the same names
    buffers: tuple = ()  # names of the per-entry state arrays

    def __init__(self, params, lr):
        self.params = params
        self.lr = check_real("lr", lr, strictly_above=0)
        self.t = 0  # steps taken
        be = get_backend()
        for name in self.buffers:
            setattr(self, name, be.xp.zeros_like(params))

    def hyperparameters(self) -> dict:
        return {name: getattr(self, name) for name in self.hyper}

    def step(self, grads):  # pragma: no cover - every optimizer overrides it
        raise NotImplementedError

    def state_dict(self) -> dict:
        """{"name", "t", hyperparameters..., "buffers": {name: host NumPy array}}."""
        return {"name": self.name, "t": self.t, **self.hyperparameters(),
                "buffers": {name: to_numpy(getattr(self, name)) for name in self.buffers}}

    def load_state_dict(self, state: dict):
        """Take ``t`` and the buffers from ``state``; a ValueError names what does not fit."""
        if state.get("name") != self.name:
            raise ValueError(f"optimizer: expected state of {self.name!r}, got {state.get('name')!r}")
        t = check_int("t", state["t"], minimum=0)
        if sorted(state["buffers"]) != sorted(self.buffers):
            raise ValueError(f"buffers: expected {self.buffers}, got {tuple(sorted(state['buffers']))}")
        for name in self.buffers:
            buf = state["buffers"][name]
            if tuple(buf.shape) != tuple(self.params.shape):
                raise ValueError(f"{name}: expected shape {tuple(self.params.shape)}, got {tuple(buf.shape)}")
        be = get_backend()
        for name in self.buffers:
            getattr(self, name)[...] = be.asarray(state["buffers"][name], dtype=be.dtype_name(self.params.dtype))
        self.t = t

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """SGD with momentum: v <- momentum v + g; params <- params - lr v."""

    name = "sgd"
    hyper = ("lr", "momentum")
    buffers = ("velocity",)

    def __init__(self, params, lr=1e-2, momentum=0.9):
        super().__init__(params, lr)
        self.momentum = check_real("momentum", momentum, minimum=0)

    @replaceable
    def step(self, grads):
        self.t += 1
        self.velocity *= self.momentum
        self.velocity += grads
        self.params -= self.lr * self.velocity


class Adagrad(Optimizer):
    """Adagrad: s <- s + g^2; params <- params - lr g / (sqrt(s) + eps)."""

    name = "adagrad"
    hyper = ("lr", "eps")
    buffers = ("sum_sq",)

    def __init__(self, params, lr=1e-2, eps=1e-10):
        super().__init__(params, lr)
        self.eps = check_real("eps", eps, minimum=0)

    @replaceable
    def step(self, grads):
        xp = array_namespace(grads)
        self.t += 1
        self.sum_sq += grads * grads
        self.params -= self.lr * grads / (xp.sqrt(self.sum_sq) + self.eps)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015, Algorithm 1) with PyTorch's defaults (lr 1e-3, betas 0.9,
    0.999, eps 1e-8). At step t, with g the gradient:

        m     <- b1 m + (1 - b1) g                 first moment (a running mean of g)
        v     <- b2 v + (1 - b2) g^2               second moment (a running mean of g^2)
        m_hat =  m / (1 - b1^t)                    bias corrections: m and v start at 0
        v_hat =  v / (1 - b2^t)
        params <- params - lr * m_hat / (sqrt(v_hat) + eps)
    """

    name = "adam"
    hyper = ("lr", "beta1", "beta2", "eps")
    buffers = ("m", "v")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, lr)
        for name, beta in zip(("beta1", "beta2"), betas, strict=True):
            if not 0 <= check_real(name, beta) < 1:
                raise ValueError(f"{name}: expected a number in [0, 1), got {beta!r}")
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = check_real("eps", eps, minimum=0)

    @replaceable
    def step(self, grads):
        xp = array_namespace(grads)
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        self.m[...] = b1 * self.m + (1.0 - b1) * grads
        self.v[...] = b2 * self.v + (1.0 - b2) * grads * grads
        m_hat = self.m / (1.0 - b1**self.t)
        v_hat = self.v / (1.0 - b2**self.t)
        self.params -= self.lr * m_hat / (xp.sqrt(v_hat) + self.eps)


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam}


def make_optimizer(name: str, params, lr=None, **kwargs) -> Optimizer:
    """An optimizer by name (``"sgd"``, ``"adagrad"``, ``"adam"``) over ``params``."""
    key = str(name).lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {tuple(OPTIMIZERS)}, got {name!r}")
    if lr is not None:
        kwargs["lr"] = lr
    return OPTIMIZERS[key](params, **kwargs)


def from_state_dict(state: dict, params) -> Optimizer:
    """Rebuild an optimizer over ``params`` from ``state_dict()`` output (a checkpoint's): its
    name, ``t``, exactly that optimizer's hyperparameters (checked by its constructor) and
    buffers (each the shape of ``params``). A ValueError names the key that is wrong."""
    name = state.get("name")
    cls = OPTIMIZERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"name: expected one of {tuple(OPTIMIZERS)}, got {name!r}")
    keys = ("name", "t", *cls.hyper, "buffers")
    for key in keys:
        if key not in state:
            raise ValueError(f"missing key {key!r}")
    for key in state:
        if key not in keys:
            raise ValueError(f"unexpected key {key!r}")
    hyper = {key: state[key] for key in cls.hyper}
    if cls is Adam:
        hyper["betas"] = (hyper.pop("beta1"), hyper.pop("beta2"))
    opt = cls(params, **hyper)
    opt.load_state_dict(state)
    return opt
