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
- ``layers``: ``ReLU.backward``, ``Tanh.backward`` (``Dense.backward``: ``npvae.fast``'s one
  for NumPy and CuPy);
- ``optim.Adam.step``: the whole update in one kernel.

(The Generator's draws reach the GPU through pinned memory: ``npvae.backend.PinnedUploads``,
the CuPy backend's own, whatever NPVAE_FAST says.)

``scripts/compile_cupy_kernels.py`` compiles every kernel body with NVRTC on a machine
without a GPU; ``tests/test_gpu.py`` runs them on one.
"""

from __future__ import annotations

import importlib

from .. import distributions as dist
from ..layers import ReLU, Tanh
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


register(dist.reparameterize, "cupy", reparameterize)
register(dist.reparameterize_backward, "cupy", reparameterize_backward)
register(dist.gaussian_kl, "cupy", gaussian_kl)
register(dist.gaussian_kl_backward, "cupy", gaussian_kl_backward)
register(dist.bernoulli_log_likelihood, "cupy", bernoulli_log_likelihood)
register(dist.bernoulli_log_likelihood_backward, "cupy", bernoulli_log_likelihood_backward)
register(ReLU.backward, "cupy", relu_backward)
register(Tanh.backward, "cupy", tanh_backward)
register(Adam.step, "cupy", adam_step)
