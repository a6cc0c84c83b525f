"""Random numbers: a seeded ``Generator`` that gives the same numbers on every backend, and
named seed streams.

Nothing in npvae reads NumPy's hidden global random state: every function that needs noise
takes ``eps`` or a ``Generator``, and every ``Generator`` is built from a seed.

One seed feeds several independent streams (NumPy's ``SeedSequence.spawn``), each with a name,
so that, say, changing the batch size does not change the initialization:

=====================  ================================================================
``MODEL_STREAMS``      ``init`` (the parameters), ``noise`` (``model.rng``)
``TRAINING_STREAMS``   ``data`` (the order, dynamic binarization), ``eps``, ``static`` and
                       ``test`` (the fixed binarizations of the training and test sets)
``EVALUATION_STREAMS`` ``elbo`` (``evaluate``'s eps), ``importance`` (``log_likelihood``'s)
=====================  ================================================================

    s = streams(seed, TRAINING_STREAMS)
    eps_rng = Generator(s.eps)
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .backend import DEFAULT_DTYPE, Backend, get_backend
from .checks import shown

MODEL_STREAMS = ("init", "noise")
TRAINING_STREAMS = ("data", "eps", "static", "test")
EVALUATION_STREAMS = ("elbo", "importance")


def streams(seed, names) -> SimpleNamespace:
    """One independent seed per name, all fixed by ``seed`` (an int or a SeedSequence):
    ``streams(0, ("init", "noise")).init``. The i-th name gets the i-th child of
    ``SeedSequence(seed).spawn``, so adding a name at the end changes no other stream."""
    root = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    return SimpleNamespace(**dict(zip(names, root.spawn(len(names)))))


class Generator:
    """A seeded random generator that gives the same numbers on every backend.

    It draws on the host with ``numpy.random.default_rng(seed)`` (PCG64) and puts the result
    on the backend's device, so results are reproducible across numpy, strict and cupy.

    >>> rng = Generator(0)
    >>> eps = rng.standard_normal((128, 20))   # on the active backend, float32
    """

    def __init__(self, seed=None, backend: Backend | None = None):
        self.backend = backend or get_backend()
        self.host = np.random.default_rng(seed)
        self._to_device = self.backend.uploader()  # CuPy's copies through pinned memory

    @classmethod
    def from_state(cls, state, name="state"):
        """A Generator that goes on from ``state``, a saved ``host.bit_generator.state``; a
        ValueError naming ``name`` unless NumPy's PCG64 takes it exactly as it is (its setter
        quietly changes some wrong ones)."""
        rng = cls(0)
        try:
            rng.host.bit_generator.state = state
            ok = rng.host.bit_generator.state == state and isinstance(state["has_uint32"], int)
        except (TypeError, ValueError, KeyError, OverflowError):
            ok = False
        if not ok:
            raise ValueError(f"{name}: expected the state of a NumPy PCG64 generator, got {shown(state)}")
        return rng

    def standard_normal(self, shape, dtype=None):
        """Draws of N(0, 1) of the given shape, as ``dtype`` (default float32)."""
        name = DEFAULT_DTYPE if dtype is None else dtype
        values = self.host.standard_normal(shape, dtype=np.dtype(name))
        return self._to_device(values)

    def uniform(self, shape, low=0.0, high=1.0, dtype=None):
        """Draws of U[low, high) of the given shape, as ``dtype`` (default float32)."""
        name = DEFAULT_DTYPE if dtype is None else dtype
        values = self.host.uniform(low, high, size=shape).astype(name)
        return self._to_device(values)

    def permutation(self, n: int):
        """A random permutation of ``0..n-1`` as an integer array on the backend."""
        return self._to_device(self.host.permutation(int(n)))
