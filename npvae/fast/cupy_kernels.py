"""CuPy fast paths: each textbook formula as one fused GPU kernel.

On a GPU, a training step of the lecture's model is bound by the host, not by the GPU: every
kernel launch costs tens of microseconds of Python and CuPy work, so the number of launches
sets the step time. A ``cupy.ElementwiseKernel`` (or ``cupy.ReductionKernel`` for a row sum)
runs a whole formula in one launch, reading and writing each array once, where the ``xp``
code launches one kernel (and makes one temporary array) per operation.

Registered for CuPy arrays, each computing what its textbook function computes (in one type
T; arrays of mixed dtypes go to the textbook function):

- ``distributions``: ``reparameterize`` and its backward, ``gaussian_kl`` and its backward,
  ``bernoulli_log_likelihood`` and its backward;
- ``layers``: ``ReLU.backward``, ``Tanh.backward``, ``Dense.backward`` (dW, db written into
  the flat gradient with ``out=``);
- ``optim.Adam.step``: the whole update in one kernel;
- ``random.device_uploader``: the Generator's draws go to the GPU through pinned memory
  (``PinnedUploads``), so a copy does not wait for the GPU work queued before it.

``scripts/compile_cupy_kernels.py`` compiles every kernel body with NVRTC on a machine
without a GPU; ``tests/test_gpu.py`` runs them on one.
"""

from __future__ import annotations

import importlib

import numpy as np

from .. import distributions as dist
from .. import random as npvae_random
from ..layers import Dense, ReLU, Tanh
from ..optim import Adam
from ..replaceable import register

SOURCES = {  # name: (inputs, outputs, the CUDA C++ body run once per entry)
    "reparameterize": ("T mu, T logvar, T eps", "T z", "z = mu + exp(logvar / 2) * eps"),
    "reparameterize_backward": ("T dz, T logvar, T eps", "T dlogvar", "dlogvar = dz * exp(logvar / 2) * eps / 2"),
    "gaussian_kl_backward": ("T dkl, T mu, T logvar", "T dmu, T dlogvar",
                             "dmu = dkl * mu; dlogvar = dkl * expm1(logvar) / 2"),
    # x - sigma(l) with sigma(l) = (1 + tanh(l / 2)) / 2, times the row's upstream gradient
    "bernoulli_backward": ("T dlog_p, T x, T l", "T grad", "grad = dlog_p * (x - ((T)1 + tanh(l / 2)) / 2)"),
    # y is the activation's output (the layer's cache)
    "relu_backward": ("T dout, T y", "T dx", "dx = y > (T)0 ? dout : (T)0"),
    "tanh_backward": ("T dout, T y", "T dx", "dx = dout * ((T)1 - y * y)"),
    "adam": ("T g, T beta1, T beta2, T step, T eps_hat", "T p, T m, T v",
             "m = beta1 * m + ((T)1 - beta1) * g; v = beta2 * v + ((T)1 - beta2) * g * g;"
             " p = p - step * m / (sqrt(v) + eps_hat)"),
}
ROW_SUMS = {  # name: (inputs, output, the term summed over a row (a), the output from a)
    "gaussian_kl": ("T mu, T logvar", "T kl", "mu * mu + (expm1(logvar) - logvar)", "kl = a / 2"),
    "bernoulli_log_likelihood": ("T x, T l", "T log_p", "x * l - fmax(l, (T)0) - log1p(exp(-fabs(l)))", "log_p = a"),
}
_KERNELS: dict = {}


def kernel(name):
    """The fused CuPy kernel ``name`` (compiled on first use, then reused)."""
    if name not in _KERNELS:
        cupy = importlib.import_module("cupy")
        if name in ROW_SUMS:
            in_params, out_params, term, output = ROW_SUMS[name]
            _KERNELS[name] = cupy.ReductionKernel(in_params, out_params, term, "a + b", output, "0", f"npvae_{name}")
        else:
            in_params, out_params, operation = SOURCES[name]
            _KERNELS[name] = cupy.ElementwiseKernel(in_params, out_params, operation, f"npvae_{name}")
    return _KERNELS[name]


def _fused(textbook, name, *args):
    """``kernel(name)(*args)``, Python numbers cast to the arrays' type T; the textbook
    function where the arrays differ in dtype (each kernel computes in one type)."""
    arrays = [a for a in args if not isinstance(a, (int, float))]
    if len({a.dtype for a in arrays}) != 1:
        return textbook(*args)
    number = arrays[0].dtype.type
    cast = [number(a) if isinstance(a, (int, float)) else a for a in args]
    return kernel(name)(*cast, axis=-1) if name in ROW_SUMS else kernel(name)(*cast)


# ---------------------------------------------------------------------------------------
# distributions
# ---------------------------------------------------------------------------------------
def reparameterize(mu, logvar, eps):
    return _fused(dist.reparameterize.textbook, "reparameterize", mu, logvar, eps)


def reparameterize_backward(dz, logvar, eps):
    return dz, _fused(lambda *a: dist.reparameterize_backward.textbook(*a)[1], "reparameterize_backward",
                      dz, logvar, eps)


def gaussian_kl(mu, logvar):
    return _fused(dist.gaussian_kl.textbook, "gaussian_kl", mu, logvar)


def gaussian_kl_backward(dkl, mu, logvar):
    return _fused(lambda d, m, lv: dist.gaussian_kl_backward.textbook(dkl, m, lv), "gaussian_kl_backward",
                  dist.per_row(dkl), mu, logvar)


def bernoulli_log_likelihood(x, logits):
    return _fused(dist.bernoulli_log_likelihood.textbook, "bernoulli_log_likelihood", x, logits)


def bernoulli_log_likelihood_backward(dlog_p, x, logits):
    return _fused(lambda d, x_, l_: dist.bernoulli_log_likelihood_backward.textbook(dlog_p, x_, l_),
                  "bernoulli_backward", dist.per_row(dlog_p), x, logits)


# ---------------------------------------------------------------------------------------
# layers
# ---------------------------------------------------------------------------------------
def dense_backward(self, dout, cache, need_dx=True):
    cupy = importlib.import_module("cupy")
    x = cache
    cupy.matmul(x.T, dout, out=self.dW)  # dW = x^T @ dout, into the flat gradient
    cupy.sum(dout, axis=0, out=self.db)  # db = sum_n dout_n
    return dout @ self.W.T if need_dx else None


def relu_backward(self, dout, cache):
    return _fused(lambda d, y: ReLU.backward.textbook(self, d, y), "relu_backward", dout, cache)


def tanh_backward(self, dout, cache):
    return _fused(lambda d, y: Tanh.backward.textbook(self, d, y), "tanh_backward", dout, cache)


# ---------------------------------------------------------------------------------------
# optim
# ---------------------------------------------------------------------------------------
def adam_step(self, grads):
    # The bias corrections folded into two numbers (Kingma & Ba, end of section 2):
    #   lr m_hat / (sqrt(v_hat) + eps) = step * m / (sqrt(v) + eps_hat)
    if grads.dtype != self.params.dtype:
        return Adam.step.textbook(self, grads)
    self.t += 1
    b1, b2, t = self.beta1, self.beta2, self.t
    root = (1.0 - b2**t) ** 0.5
    number = grads.dtype.type
    kernel("adam")(grads, number(b1), number(b2), number(self.lr * root / (1.0 - b1**t)), number(self.eps * root),
                   self.params, self.m, self.v)


# ---------------------------------------------------------------------------------------
# random: the Generator's host-to-GPU copies
# ---------------------------------------------------------------------------------------
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


register(dist.reparameterize, "cupy", reparameterize)
register(dist.reparameterize_backward, "cupy", reparameterize_backward)
register(dist.gaussian_kl, "cupy", gaussian_kl)
register(dist.gaussian_kl_backward, "cupy", gaussian_kl_backward)
register(dist.bernoulli_log_likelihood, "cupy", bernoulli_log_likelihood)
register(dist.bernoulli_log_likelihood_backward, "cupy", bernoulli_log_likelihood_backward)
register(Dense.backward, "cupy", dense_backward)
register(ReLU.backward, "cupy", relu_backward)
register(Tanh.backward, "cupy", tanh_backward)
register(Adam.step, "cupy", adam_step)
register(npvae_random.device_uploader, "cupy", PinnedUploads)
