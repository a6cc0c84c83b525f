"""The array module behind npvae: NumPy on the CPU, CuPy on a GPU, or a strict stand-in.

Every piece of model math in npvae is written once against an *array namespace* ``xp``
(the Python array API standard: ``xp.exp``, ``xp.sum``, ``x @ W``...). Which namespace that
is gets chosen here, by the environment variable ``NPVAE_BACKEND``:

=========  ==========================================================================
``numpy``  (default) NumPy arrays in host memory.
``cupy``   CuPy arrays on the current CUDA device. Needs ``pip install cupy-cuda12x``
           and a working NVIDIA GPU.
``strict`` ``array_api_strict`` arrays placed on its non-CPU device ``device1``. It is a
           stand-in for a GPU: it refuses what a GPU array would refuse (turning into a
           NumPy array behind your back, mixing with host arrays, functions outside the
           standard), so the test suite proves the code is portable without a GPU.
=========  ==========================================================================

The pieces other modules use:

- ``xp``: the active namespace (``npvae.backend.xp``, looked up at call time).
- ``asarray(a, dtype=None)``: anything array-like onto the active backend and device;
  ``to_numpy(a)``: back to a host NumPy array. These are the *edges*: data comes in through
  ``asarray``, plots and files go out through ``to_numpy``.
- ``array_namespace(*arrays)``: the namespace arrays belong to, so a function runs
  unchanged on any backend (random numbers live in ``npvae.random``); ``library_of(a)``: the
  name of an array's library ("numpy", "cupy", "array_api_strict"), None for a non-array.
- the dtype policy: ``DEFAULT_DTYPE = "float32"`` for training; ``"float64"`` for checks.

Switch in-process with ``set_backend("strict")`` (tests do), or read ``get_backend()``.
"""

from __future__ import annotations

import importlib
import numbers
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

BACKENDS = ("numpy", "cupy", "strict")
DTYPES = ("float32", "float64")
DEFAULT_DTYPE = "float32"  # training; gradient checks ask for "float64"


class BackendError(RuntimeError):
    """The requested backend cannot be used here; the message says what to do."""


@dataclass
class Backend:
    """One array backend: its namespace ``xp``, the device arrays live on, and the edges."""

    name: str
    xp: Any
    device: Any = None
    description: str = ""
    _device_kw: dict = field(default_factory=dict, repr=False)

    # -- dtypes ---------------------------------------------------------------------------
    def dtype(self, name: str | None = None):
        """The namespace's dtype object for ``"float32"`` or ``"float64"`` (None: default)."""
        name = DEFAULT_DTYPE if name is None else str(name)
        if name not in DTYPES:
            raise ValueError(f"dtype: expected one of {DTYPES}, got {name!r}")
        return getattr(self.xp, name)

    def dtype_name(self, dtype) -> str:
        """The inverse of ``dtype``: ``"float32"`` or ``"float64"``."""
        for name in DTYPES:
            if dtype == getattr(self.xp, name):
                return name
        raise ValueError(f"dtype: expected float32 or float64, got {dtype!r}")

    # -- creating arrays on the device ----------------------------------------------------
    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=self.dtype(dtype), **self._device_kw)

    def asarray(self, a, dtype=None):
        """Put ``a`` (a list, a NumPy array, an array of this backend) on this backend.

        ``dtype`` is ``"float32"``, ``"float64"`` or None (keep ``a``'s dtype). An array of
        another backend goes through the host first.
        """
        if not self.owns(a) and hasattr(a, "__array_namespace__") and not isinstance(a, np.ndarray):
            a = to_numpy(a)
        dt = None if dtype is None else self.dtype(dtype)
        if self.name == "cupy":
            return self.xp.asarray(a, dtype=dt)
        return self.xp.asarray(a, dtype=dt, **self._device_kw)

    def owns(self, a) -> bool:
        """True when ``a`` is an array of this backend (on its device)."""
        if self.name == "numpy":
            return isinstance(a, np.ndarray)
        if self.name == "cupy":
            return isinstance(a, self.xp.ndarray)
        return library_of(a) == "array_api_strict" and a.device == self.device

    def astype(self, a, dtype):
        """``a`` converted to ``dtype`` (a name or a dtype object); no copy when it matches."""
        return astype(a, self.dtype(dtype) if isinstance(dtype, str) else dtype)

    def take_rows(self, a, idx):
        """``a[idx]`` for a 1-D integer index array ``idx`` (the standard's ``take``)."""
        return self.xp.take(a, idx, axis=0)

    def uploader(self):
        """The function that puts a ``Generator``'s host draws (NumPy arrays) on the device."""
        return self.asarray


class CupyBackend(Backend):
    """The CuPy backend: a Generator's draws reach the GPU through pinned memory."""

    def uploader(self):
        return PinnedUploads(self)


class PinnedUploads:
    """Host-to-GPU copies of a Generator's draws that do not make the host wait.

    A copy from ordinary (pageable) host memory first waits until the GPU has finished all
    the work queued before it; a training loop queues step i+1 while the GPU still runs step
    i, so copying eps over stalled it at every step. A copy from page-locked ("pinned") host
    memory is queued on the stream like a kernel instead. The host must not overwrite a
    pinned buffer before its copy has run, so SLOTS buffers are used in turn, each with an
    event recorded after its last copy; draws above MAX_BYTES (a whole data set's worth of
    binarization noise) take the ordinary copy, to keep pinned memory small.
    """

    SLOTS = 4
    MAX_BYTES = 1 << 22  # 4 MiB

    def __init__(self, backend):
        self.backend, self.cupy = backend, backend.xp
        self.slots = [(None, None)] * self.SLOTS  # (pinned bytes, event after their last copy)
        self.next = 0

    def __call__(self, values: np.ndarray):
        if not 0 < values.nbytes <= self.MAX_BYTES:
            return self.backend.asarray(values)
        cupy, i = self.cupy, self.next
        self.next = (i + 1) % self.SLOTS
        pinned, copied = self.slots[i]
        if copied is not None:
            copied.synchronize()  # its copy, SLOTS draws ago, has run: free to overwrite
        if pinned is None or pinned.nbytes < values.nbytes:
            pinned = np.frombuffer(cupy.cuda.alloc_pinned_memory(values.nbytes), np.uint8, values.nbytes)
        staged = pinned[: values.nbytes].view(values.dtype).reshape(values.shape)
        staged[...] = values
        out = cupy.empty(values.shape, dtype=values.dtype)
        out.set(staged, stream=cupy.cuda.get_current_stream())  # queued, not waited for
        copied = cupy.cuda.Event(disable_timing=True)
        copied.record()
        self.slots[i] = (pinned, copied)
        return out


# ---------------------------------------------------------------------------------------
# Making each backend
# ---------------------------------------------------------------------------------------
def _make_numpy() -> Backend:
    return Backend("numpy", np, device="cpu", description=f"NumPy {np.__version__} on the CPU")


def _make_strict() -> Backend:
    try:
        import array_api_strict
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BackendError(
            "NPVAE_BACKEND=strict needs the package array-api-strict: "
            "run `pip install array-api-strict` (it is in the `test` extra)."
        ) from exc
    device = array_api_strict.Device("device1")
    return Backend(
        "strict",
        array_api_strict,
        device=device,
        description=f"array_api_strict {array_api_strict.__version__} on {device!r}",
        _device_kw={"device": device},
    )


def _make_cupy() -> Backend:
    try:
        cupy = importlib.import_module("cupy")
    except ImportError as exc:
        raise BackendError(
            "NPVAE_BACKEND=cupy but CuPy is not installed: install it with "
            "`pip install cupy-cuda12x` (or `pip install -e .[gpu]`), or unset NPVAE_BACKEND "
            "to use NumPy."
        ) from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
        if n < 1:
            raise RuntimeError("no CUDA device found")
        cupy.zeros(1).sum().item()  # touch the device: catches a broken driver early
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    except Exception as exc:
        raise BackendError(
            f"NPVAE_BACKEND=cupy but CuPy cannot use a GPU here ({type(exc).__name__}: {exc}). "
            "Check `nvidia-smi` and the CUDA driver, or unset NPVAE_BACKEND to use NumPy."
        ) from exc
    return CupyBackend(
        "cupy",
        cupy,
        device=cupy.cuda.Device(),
        description=f"CuPy {cupy.__version__} on GPU {cupy.cuda.Device().id} ({gpu})",
    )


_MAKERS = {"numpy": _make_numpy, "cupy": _make_cupy, "strict": _make_strict}
_active: Backend | None = None


def make_backend(name: str) -> Backend:
    """Build the backend called ``name`` (one of ``BACKENDS``), or raise ``BackendError``."""
    key = str(name).strip().lower()
    if key not in _MAKERS:
        raise BackendError(
            f"NPVAE_BACKEND: expected one of {', '.join(BACKENDS)}, got {name!r}. "
            "Set it to numpy (CPU), cupy (NVIDIA GPU) or strict (portability checks)."
        )
    return _MAKERS[key]()


def set_backend(name: str) -> Backend:
    """Make ``name`` the active backend for everything created from now on, and return it."""
    global _active
    _active = make_backend(name)
    return _active


def get_backend() -> Backend:
    """The active backend; on first use it is read from ``NPVAE_BACKEND`` (default numpy)."""
    global _active
    if _active is None:
        _active = make_backend(os.environ.get("NPVAE_BACKEND", "numpy") or "numpy")
    return _active


def __getattr__(name):
    # ``npvae.backend.xp`` always names the active namespace, even after set_backend().
    if name == "xp":
        return get_backend().xp
    raise AttributeError(f"module 'npvae.backend' has no attribute {name!r}")


def asarray(a, dtype=None):
    """``a`` as an array of the active backend (see ``Backend.asarray``)."""
    return get_backend().asarray(a, dtype)


_LIBRARIES: dict = {}  # type -> library_of's answer, learned on first sight


def library_of(a) -> str | None:
    """The name of the library of the array ``a``: "numpy", "cupy" or "array_api_strict" (the
    top module of its type); None for anything that is not an array (a number, a NumPy scalar,
    a list, a Backend)."""
    kind = type(a)
    library = _LIBRARIES.get(kind, "")
    if library == "":
        array = hasattr(kind, "__array_namespace__") and not issubclass(kind, numbers.Number)
        library = _LIBRARIES[kind] = kind.__module__.split(".")[0] if array else None
    return library


def to_numpy(a) -> np.ndarray:
    """Any npvae array (NumPy, CuPy or array_api_strict) as a host NumPy array."""
    library = library_of(a)
    if library == "cupy":
        return a.get()
    if library == "array_api_strict":
        import array_api_strict

        return np.asarray(a.to_device(array_api_strict.Device("CPU_DEVICE")))
    return np.asarray(a)


def astype(a, dtype):
    """``a`` converted to ``dtype`` (a dtype object of a's namespace), on any backend."""
    if a.dtype == dtype:
        return a
    xp = array_namespace(a)
    return xp.astype(a, dtype) if hasattr(xp, "astype") else a.astype(dtype)


def copy(a):
    """A copy of the array ``a`` on its own backend (the standard spells it asarray(copy=True))."""
    if library_of(a) == "array_api_strict":
        return array_namespace(a).asarray(a, copy=True)
    return a.copy()


def array_namespace(*arrays):
    """The namespace that the arrays belong to (like Chainer's ``get_array_module``).

    Functions that take arrays use it so they run unchanged on any backend:
    ``xp = array_namespace(x)``.
    """
    for a in arrays:
        if isinstance(a, np.ndarray):
            return np
        library = library_of(a)
        if library in ("cupy", "array_api_strict"):
            return importlib.import_module(library)
    return get_backend().xp
