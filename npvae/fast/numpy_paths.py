"""NumPy fast paths: the same results as the textbook functions, with fewer temporary arrays.

Registered for NumPy arrays (``npvae.replaceable.register``):

=====================================  ==============================================
textbook function                      what this version does differently
=====================================  ==============================================
``layers.ReLU.backward``               multiplies by the boolean mask as it is
                                       (no float copy of the mask)
``distributions.bernoulli_log_likelihood``   the row sums as matrix-vector products, in
                                       blocks of rows that fit the cache
``distributions.bernoulli_log_likelihood_backward``   x - sigma(l) as x - 1/2 - tanh(l/2)/2,
                                       in place (no ``where``, which is slow)
``optim.Adam.step``                    in place, over cache-sized chunks of the flat
                                       vectors, and a periodic flush of subnormal
                                       moments
=====================================  ==============================================

(``layers.Dense.backward``: ``npvae.fast``'s one for NumPy and CuPy.)
"""

from __future__ import annotations

import numpy as np

from .. import distributions as dist
from ..layers import ReLU
from ..optim import Adam
from ..replaceable import register

# Adam works through its vectors in chunks of this many entries: 4 float32 arrays x 64k
# entries + the work vector stay in a core's L2 cache while the passes of a step run over it
# (one pass at a time over the whole vectors would stream every array through memory each time).
CHUNK = 65_536
# Rows of the Bernoulli loss go in blocks of at most this many entries: 4 float32 arrays x 128k
# entries = 2 MB, one core's L2 (a batch of 128 images of 784 pixels is one block).
ROW_BLOCK = 131_072
FLUSH_EVERY = 100  # Adam steps between flushes of subnormal-bound moments


# ---------------------------------------------------------------------------------------
# Layers
# ---------------------------------------------------------------------------------------
def relu_backward(self, dout, cache):
    return np.multiply(dout, cache > 0)  # the boolean mask goes into the multiply as it is


# ---------------------------------------------------------------------------------------
# The Bernoulli decoder
# ---------------------------------------------------------------------------------------
def bernoulli_log_likelihood(x, logits):
    # sum_d [x l - softplus(l)] with softplus(l) = max(l, 0) + log1p(exp(-|l|)), and
    #   sum_d x_d l_d     = vecdot(x, l)                (no x * l array)
    #   sum_d max(l_d, 0) = (sum_d l_d + sum_d |l_d|) / 2
    #   sum_d log1p(e_d)  = log1p(e) @ 1,  e = exp(-|l|), computed in place in one array
    if x.ndim != 2 or x.shape != logits.shape or x.dtype != logits.dtype:
        return dist.bernoulli_log_likelihood.textbook(x, logits)
    n, d = logits.shape
    log_p = np.empty(n, dtype=logits.dtype)
    a = np.empty((max(1, min(n, ROW_BLOCK // d)), d), dtype=logits.dtype)  # one block's work array
    ones = np.ones(d, dtype=logits.dtype)
    for i in range(0, n, a.shape[0]):
        j = min(i + a.shape[0], n)
        xb, lb, w = x[i:j], logits[i:j], a[: j - i]
        np.abs(lb, out=w)  # |l|
        relu_sum = lb @ ones
        relu_sum += w @ ones
        relu_sum *= 0.5  # sum_d max(l_d, 0)
        np.negative(w, out=w)
        np.exp(w, out=w)
        np.log1p(w, out=w)  # log(1 + exp(-|l|)), in place
        np.vecdot(xb, lb, out=log_p[i:j])
        log_p[i:j] -= relu_sum
        log_p[i:j] -= w @ ones
    return log_p


def bernoulli_log_likelihood_backward(dlog_p, x, logits):
    # d * (x - sigma(l)) with sigma(l) = (1 + tanh(l / 2)) / 2: no overflow, no where
    if x.shape != logits.shape or x.dtype != logits.dtype:
        return dist.bernoulli_log_likelihood_backward.textbook(dlog_p, x, logits)
    grad = np.multiply(logits, 0.5)
    np.tanh(grad, out=grad)
    grad *= -0.5
    grad -= 0.5
    grad += x  # x - sigma(l)
    grad *= dist.per_row(dlog_p)
    return grad


# ---------------------------------------------------------------------------------------
# Adam
# ---------------------------------------------------------------------------------------
def adam_step(self, grads):
    # The paper's update with the bias corrections folded into two numbers (Kingma & Ba,
    # end of section 2): lr m_hat / (sqrt(v_hat) + eps) = step * m / (sqrt(v) + eps_hat).
    self.t += 1
    b1, b2, t = self.beta1, self.beta2, self.t
    root = (1.0 - b2**t) ** 0.5
    step, eps_hat = self.lr * root / (1.0 - b1**t), self.eps * root
    work = _work_vector(self)
    for a in range(0, grads.shape[0], CHUNK):  # one cache-sized chunk at a time
        b = min(a + CHUNK, grads.shape[0])
        p, g, m, v, w = self.params[a:b], grads[a:b], self.m[a:b], self.v[a:b], work[: b - a]
        np.multiply(g, 1.0 - b1, out=w)
        m *= b1
        m += w  # m = b1 m + (1 - b1) g
        np.multiply(g, g, out=w)
        w *= 1.0 - b2
        v *= b2
        v += w  # v = b2 v + (1 - b2) g^2
        np.sqrt(v, out=w)
        w += eps_hat
        np.divide(m, w, out=w)
        w *= step
        p -= w
    if t % FLUSH_EVERY == 0:
        _flush_subnormal_bound(self.m, self.flush_below)
        _flush_subnormal_bound(self.v, self.flush_below)


def _work_vector(opt):
    """One chunk's worth of scratch, kept on the optimizer and reused every step."""
    work = getattr(opt, "_fast_work", None)
    if work is None or work.dtype != opt.params.dtype:
        work = opt._fast_work = np.zeros(min(CHUNK, opt.params.shape[0]), dtype=opt.params.dtype)
        # 1e6 x the smallest normal number: 100 steps of decay by 0.9 (a factor 3e-5) cannot
        # take an entry from above it to subnormal.
        opt.flush_below = float(np.finfo(opt.params.dtype).smallest_normal) * 1e6
    return work


def _flush_subnormal_bound(a, threshold):
    """Entries with |a| < threshold become exactly 0. Adam's m decays by beta1 in every step
    in which its gradient is 0 (a weight that sees an always-black pixel, a dead unit) and
    after ~800 steps turns *subnormal*, where CPUs compute up to 100 times slower. Such entries
    change an update by less than 1e-20 of a step."""
    np.copyto(a, 0.0, where=np.abs(a) < threshold)


register(ReLU.backward, "numpy", relu_backward)
register(dist.bernoulli_log_likelihood, "numpy", bernoulli_log_likelihood)
register(dist.bernoulli_log_likelihood_backward, "numpy", bernoulli_log_likelihood_backward)
register(Adam.step, "numpy", adam_step)
