"""Fast paths: faster versions of a few textbook functions, for the arrays they know.

Nothing here is new math. Each function replaces one ``@replaceable`` function of a teaching
module (``layers``, ``distributions``, ``optim``, ``random``) for one array library, and
computes the same thing (to rounding: the tests compare each with its textbook function on the
shapes and dtypes training uses):

- ``numpy_paths``: NumPy with ``out=`` arguments, in-place updates and cache-sized chunks, so
  that a step allocates little and its data stay in the CPU's cache; Adam's subnormal flush.
- ``cupy_kernels``: CuPy, each formula as one fused GPU kernel (a training step of the
  lecture's model is bound by the host's kernel launches, not by the GPU), products written
  in place, and the Generator's draws copied to the GPU through pinned memory.

``import npvae`` imports this package unless ``NPVAE_FAST=0`` (or ``false``, ``off``, ``no``:
see ``npvae.replaceable``); the teaching modules never import it. ``replaceable.active()``
(and ``npvae info``) lists what is registered. Measured gains are in ``benchmarks/RESULTS.md``.
"""

from . import cupy_kernels, numpy_paths  # noqa: F401  (each registers its replacements)
