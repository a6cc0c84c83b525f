"""Fast paths: faster versions of a few textbook functions, for the arrays they know.

Nothing here is new math. Each function replaces one ``@replaceable`` function of a teaching
module (``layers``, ``distributions``, ``optim``, ``random``) for one array library, and
computes the same thing (to rounding: the tests compare each with its textbook function on the
shapes and dtypes training uses):

- ``numpy_paths``: NumPy with ``out=`` arguments, in-place updates and cache-sized chunks, so
  that a step allocates little and its data stay in the CPU's cache; Adam's subnormal flush.
- ``cupy_kernels``: CuPy, each formula as one fused GPU kernel (a training step of the
  lecture's model is bound by the host's kernel launches, not by the GPU);
- here, for both: ``Dense.backward`` writing its products in place.

``import npvae`` imports this package unless ``NPVAE_FAST=0`` (or ``false``, ``off``, ``no``:
see ``npvae.replaceable``); the teaching modules never import it. ``replaceable.active()``
(and ``npvae info``) lists what is registered. Measured gains are in ``benchmarks/RESULTS.md``.
"""

from ..backend import array_namespace
from ..layers import Dense
from ..replaceable import register
from . import cupy_kernels, numpy_paths  # noqa: F401  (each registers its replacements)


def dense_backward(self, dout, cache, need_dx=True):
    """``Dense.backward`` with dW and db written straight into the flat gradient (``out=``,
    which NumPy and CuPy take and the array API standard does not): no temporary arrays."""
    xp = array_namespace(dout)
    xp.matmul(cache.T, dout, out=self.dW)  # dW = x^T @ dout, cache = x
    xp.sum(dout, axis=0, out=self.db)  # db = sum_n dout_n
    return dout @ self.W.T if need_dx else None


register(Dense.backward, "numpy", dense_backward)
register(Dense.backward, "cupy", dense_backward)
