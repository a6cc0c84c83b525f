"""Layers with hand-written backprop: Dense, ReLU, Tanh, Sigmoid, and an MLP built of them.

Every layer follows one calling shape (the one of CS231n's ``layers.py``)::

    out, cache = layer.forward(x)      # cache: what backward needs, nothing more
    dx = layer.backward(dout, cache)   # dout = dL/dout, dx = dL/dx, same shapes as out and x

A layer with parameters (only ``Dense``) also writes dL/dW and dL/db into ``layer.dW`` and
``layer.db``. Those, like ``layer.W`` and ``layer.b``, are *views* into the model's two flat
vectors (``model.params`` and ``model.grads``), which is what lets one optimizer step, one
gradient check and one checkpoint handle the whole model as a single 1-D array. See
``FlatParameters``.

``@replaceable`` marks a method that training calls: ``npvae.replaced`` can run a student's
version in its place, and ``npvae.fast`` may replace some, for NumPy or CuPy arrays, by faster
ones with the same results (``NPVAE_FAST=0`` runs exactly the code below).

Shape letters: N batch, D_in / D_out the widths of a layer.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from .backend import DEFAULT_DTYPE, array_namespace, astype, get_backend
from .distributions import sigmoid
from .random import Generator
from .replaceable import replaceable


class Dense:
    """Affine layer: out = x @ W + b.

    Shapes: x (N, D_in), W (D_in, D_out), b (D_out,), out (N, D_out).

    Backward, from out_nj = sum_i x_ni W_ij + b_j:
        dW = x^T @ dout       (D_in, D_out)
        db = sum_n dout_n     (D_out,)
        dx = dout @ W^T       (N, D_in)
    """

    def __init__(self, in_dim: int, out_dim: int):
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.param_shapes = {"W": (self.in_dim, self.out_dim), "b": (self.out_dim,)}
        self.W = self.b = self.dW = self.db = None  # views, set by FlatParameters

    def init(self, rng: Generator, dtype) -> dict:
        """PyTorch's ``nn.Linear`` default, so runs compare with it: W and b uniform in
        [-1/sqrt(D_in), 1/sqrt(D_in)]."""
        bound = 1.0 / math.sqrt(self.in_dim)
        return {name: rng.uniform(shape, -bound, bound, dtype=dtype) for name, shape in self.param_shapes.items()}

    @replaceable
    def forward(self, x):
        out = x @ self.W  # (N, D_out)
        out += self.b  # in place: no second (N, D_out) array
        return out, x

    @replaceable
    def backward(self, dout, cache, need_dx=True):
        """Writes dW and db; returns dx, or None when ``need_dx`` is False (the data x of
        a first layer needs no gradient, and skipping it saves a third of the layer's work)."""
        xp = array_namespace(dout)
        x = cache
        self.dW[...] = x.T @ dout  # dW = x^T @ dout      (D_in, D_out)
        self.db[...] = xp.sum(dout, axis=0)  # db = sum_n dout_n   (D_out,)
        return dout @ self.W.T if need_dx else None  # dx = dout @ W^T    (N, D_in)

    def __repr__(self):
        return f"Dense({self.in_dim}, {self.out_dim})"


class ReLU:
    """out = max(x, 0); dx = dout where out > 0, else 0. Cache: out."""

    param_shapes: dict = {}

    @replaceable
    def forward(self, x):
        xp = array_namespace(x)
        out = xp.maximum(x, 0.0)
        return out, out

    @replaceable
    def backward(self, dout, cache):
        out = cache
        return dout * astype(out > 0, dout.dtype)  # dout * [out > 0]

    def __repr__(self):
        return "ReLU()"


class Tanh:
    """out = tanh(x); dx = dout * (1 - out^2). Cache: out (tanh's derivative is 1 - tanh^2)."""

    param_shapes: dict = {}

    @replaceable
    def forward(self, x):
        xp = array_namespace(x)
        out = xp.tanh(x)
        return out, out

    @replaceable
    def backward(self, dout, cache):
        out = cache
        return dout * (1.0 - out * out)  # dout * (1 - out^2)

    def __repr__(self):
        return "Tanh()"


class Sigmoid:
    """out = sigma(x) = 1/(1 + exp(-x)); dx = dout * out * (1 - out). Cache: out."""

    param_shapes: dict = {}

    @replaceable
    def forward(self, x):
        out = sigmoid(x)
        return out, out

    @replaceable
    def backward(self, dout, cache):
        out = cache
        return dout * out * (1.0 - out)

    def __repr__(self):
        return "Sigmoid()"


ACTIVATIONS = {"relu": ReLU, "tanh": Tanh, "sigmoid": Sigmoid}


def make_activation(name: str):
    """An activation layer by name: ``"relu"``, ``"tanh"`` or ``"sigmoid"``."""
    key = str(name).lower()
    if key not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[key]()


class MLP:
    """A stack Dense -> activation -> Dense -> ... through the widths ``dims``.

    ``MLP((784, 400, 20), "relu")`` is Dense(784, 400), ReLU, Dense(400, 20). With
    ``activate_last=True`` an activation follows the last Dense too. ``MLP((784,))`` has no
    layers: it passes x through unchanged.

    Shapes: x (N, dims[0]) -> out (N, dims[-1]). Backward unwinds the layers in reverse,
    each with its own cache.
    """

    def __init__(self, dims, activation: str = "relu", activate_last: bool = False):
        dims = [int(d) for d in dims]
        if len(dims) < 1 or min(dims) < 1:
            raise ValueError(f"dims: expected one or more positive widths, got {dims}")
        self.dims = dims
        self.layers = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            self.layers.append(Dense(d_in, d_out))
            if i < len(dims) - 2 or activate_last:
                self.layers.append(make_activation(activation))

    def named_layers(self):
        """(k, layer) for the k-th Dense layer (k = 0, 1, ...): the names of the blocks."""
        dense = [layer for layer in self.layers if layer.param_shapes]
        return [(str(k), layer) for k, layer in enumerate(dense)]

    @replaceable
    def forward(self, x):
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, caches

    @replaceable
    def backward(self, dout, caches, need_dx=True):
        """Unwinds the layers in reverse; ``need_dx=False`` skips the input's gradient."""
        for i in range(len(self.layers) - 1, 0, -1):
            dout = self.layers[i].backward(dout, caches[i])
        if self.layers:  # layers[0] is always a Dense
            dout = self.layers[0].backward(dout, caches[0], need_dx=need_dx)
        return dout

    def __repr__(self):
        return "MLP(" + ", ".join(map(repr, self.layers)) + ")"


class Block(NamedTuple):
    """One parameter block of the flat vector: ``params[start:stop]`` reshaped to ``shape``."""

    name: str
    start: int
    stop: int
    shape: tuple


class FlatParameters:
    """All parameters in one contiguous 1-D vector, and all gradients in a second one.

    ``FlatParameters([("theta.encoder.0", dense0), ...], seed)`` lays the layers' parameters out
    in the order given, allocates the two vectors on the active backend, initializes the
    parameters (each layer's ``init``, drawn from ``Generator(seed)``), and binds every
    layer's ``W``, ``b``, ``dW``, ``db`` to reshaped views::

        params = [ theta.encoder.0.W | theta.encoder.0.b | ... | phi.decoder.0.W | ... ]   (P,)
        grads  = same layout                                                                    (P,)

    ``blocks`` lists a ``Block(name, start, stop, shape)`` for each block, so a gradient check can
    report an error per block and a checkpoint can be read back by name.
    """

    def __init__(self, named_layers, seed=0, dtype=None, backend=None):
        self.backend = be = backend or get_backend()
        dtype = dtype or DEFAULT_DTYPE
        self.blocks, start = [], 0
        for prefix, layer in named_layers:
            for pname, shape in layer.param_shapes.items():
                size = math.prod(shape)
                self.blocks.append(Block(f"{prefix}.{pname}", start, start + size, tuple(shape)))
                start += size
        self.size = start
        self.params = be.zeros((self.size,), dtype)  # (P,)
        self.grads = be.zeros((self.size,), dtype)  # (P,)
        rng = Generator(seed, backend=be)
        blocks = iter(self.blocks)
        for _prefix, layer in named_layers:
            init = layer.init(rng, dtype)
            for pname in layer.param_shapes:
                _name, a, b, shape = next(blocks)
                setattr(layer, pname, be.xp.reshape(self.params[a:b], shape))  # a view
                setattr(layer, "d" + pname, be.xp.reshape(self.grads[a:b], shape))  # a view
                getattr(layer, pname)[...] = init[pname]
