"""Fast paths for the few hot spots of a training step, behind the backend.

Each function here has versions that compute the same thing:

- the *generic* one, in plain array-API code (``xp``), which runs on every backend and is
  the one to read next to the math;
- a *NumPy* one, used when the active backend is ``numpy``, which uses what only NumPy
  offers (``out=`` arguments, ``copyto``, chunks that fit the cache) to avoid temporary arrays
  and to keep the data in the CPU's cache;
- for the optimizer, the activation gradients, the latent layer (reparameterization, KL
  and their gradients) and the Bernoulli decoder, a *CuPy* one: the whole formula as one
  fused GPU kernel (``cupy.ElementwiseKernel``, or ``cupy.ReductionKernel`` for a row sum),
  one read and one write of each array instead of a kernel launch and a temporary array per
  operation. On a GPU a training step of the lecture's model is bound by the host, not the
  GPU: each kernel launch costs ~30 us of Python and CuPy work (measured on an H100 machine),
  so the number of launches sets the step time. ``npvae.distributions`` asks for these with
  ``fused(name, ...)`` and computes the formula with ``xp`` where that gives None.

The tests run the versions on the same inputs and compare them (``tests/test_kernels.py``
for NumPy, ``tests/test_gpu.py`` for CuPy, which needs a GPU). Model code calls these
functions and never branches on the backend itself.
"""

from __future__ import annotations

from .backend import array_namespace, astype, get_backend

# The optimizer works through its vectors in chunks of this many entries: 4 float32 arrays
# x 64k entries + the work vector = 1.3 MB, which stays in a core's L2 cache while the ten
# elementwise passes of an Adam step run over it (one pass at a time over the whole
# 650k-entry vectors would stream every array through memory ten times).
CHUNK = 65_536


def work_vector(params):
    """The scratch space ``adam_update`` needs: one chunk's worth of entries, reused for
    every chunk, so that it stays in the cache (a scratch as long as ``params`` would be one
    more 2.6 MB array streamed through memory at every step: measured 17% of Adam's time).
    Other backends compute with temporaries and need none: None."""
    if _backend_name() != "numpy":
        return None
    xp = array_namespace(params)
    return xp.zeros(min(CHUNK, params.shape[0]), dtype=params.dtype)


def _backend_name():
    """The active backend's name: each kernel picks its version by it."""
    return get_backend().name


def _map_chunks(fn, size, arrays, work):
    """Run ``fn(*chunks, work)`` over consecutive chunks of the 1-D ``arrays``, with the
    same ``work`` vector (its first b - a entries) for every chunk.

    (One thread: splitting the chunks over two threads was measured slower here, because
    the BLAS threads of the matrix product just before still hold the other core.)
    """
    for a in range(0, size, CHUNK):
        b = min(a + CHUNK, size)
        fn(*(arr[a:b] for arr in arrays), work[: b - a])


# ---------------------------------------------------------------------------------------
# The fused CuPy kernels (one GPU kernel for a whole formula)
# ---------------------------------------------------------------------------------------
def fused(name, *args):
    """The formula ``name`` computed by one fused CuPy kernel, or None where there is none
    for these arguments: the active backend is not CuPy, or the arrays among ``args`` differ
    in dtype (each kernel computes in one type T). On None the caller computes the same
    formula with ``xp``, as the code right after each call does. Python numbers among
    ``args`` are cast to the arrays' dtype; a kernel with two outputs returns a tuple; the
    row sums (``_CUPY_ROW_SUMS``) sum over the last axis.
    """
    if _backend_name() != "cupy":
        return None
    arrays = [a for a in args if not isinstance(a, (int, float))]
    if len({a.dtype for a in arrays}) != 1:
        return None
    number = arrays[0].dtype.type
    args = [number(a) if isinstance(a, (int, float)) else a for a in args]
    kernel = _cupy_kernel(array_namespace(arrays[0]), name)
    return kernel(*args, axis=-1) if name in _CUPY_ROW_SUMS else kernel(*args)


def _cupy_kernel(cupy, name):
    """The fused CuPy kernel ``name`` (compiled on first use, then reused)."""
    if name not in _CUPY_KERNELS:
        if name in _CUPY_ROW_SUMS:
            in_params, out_params, term, output = _CUPY_ROW_SUMS[name]
            _CUPY_KERNELS[name] = cupy.ReductionKernel(in_params, out_params, term, "a + b", output, "0", f"npvae_{name}")
        else:
            in_params, out_params, operation = _CUPY_SOURCES[name]
            _CUPY_KERNELS[name] = cupy.ElementwiseKernel(in_params, out_params, operation, f"npvae_{name}")
    return _CUPY_KERNELS[name]


_CUPY_KERNELS: dict = {}
_CUPY_SOURCES = {  # name: (inputs, outputs, the CUDA C++ body run once per entry)
    "adam": ("T g, T step_size, T beta1, T beta2, T eps_hat", "T p, T m_sum, T v_sum",
             "m_sum = beta1 * m_sum + g; v_sum = beta2 * v_sum + g * g;"
             " p = p - step_size * m_sum / (sqrt(v_sum) + eps_hat)"),
    # y is the activation's output (the layer's cache)
    "relu_backward": ("T dout, T y", "T dx", "dx = y > (T)0 ? dout : (T)0"),
    "tanh_backward": ("T dout, T y", "T dx", "dx = dout * ((T)1 - y * y)"),
    # npvae.distributions: the reparameterization, the gradients of the latent layer, and
    # the Bernoulli decoder's gradient (the tanh form of the sigmoid, as in the xp code)
    "reparameterize": ("T mu, T logvar, T eps", "T z", "z = mu + exp(logvar / 2) * eps"),
    "reparameterize_backward": ("T dz, T logvar, T eps", "T dlogvar", "dlogvar = dz * exp(logvar / 2) * eps / 2"),
    "gaussian_kl_backward": ("T dkl, T mu, T logvar", "T dmu, T dlogvar",
                             "dmu = dkl * mu; dlogvar = dkl * expm1(logvar) / 2"),
    "bernoulli_grad": ("T x, T l", "T grad", "grad = x - ((T)1 + tanh(l / 2)) / 2"),
}
_CUPY_ROW_SUMS = {  # name: (inputs, output, the term summed over a row (a), the output from a)
    "gaussian_kl": ("T mu, T logvar", "T kl", "mu * mu + (expm1(logvar) - logvar)", "kl = a / 2"),
    "bernoulli_log_likelihood": ("T x, T l", "T log_p", "x * l - fmax(l, (T)0) - log1p(exp(-fabs(l)))", "log_p = a"),
}


# ---------------------------------------------------------------------------------------
# Activation gradients
# ---------------------------------------------------------------------------------------
def relu_backward(dout, out):
    """dx = dout * [out > 0] for out = max(x, 0): the gradient passes where the unit was on."""
    dx = fused("relu_backward", dout, out)  # on CuPy: one GPU kernel
    if dx is not None:
        return dx
    xp = array_namespace(dout)
    if _backend_name() == "numpy":
        # the boolean mask goes into the multiply as it is (converted on the fly, no float copy)
        return xp.multiply(dout, out > 0)
    # the mask as 0.0 / 1.0 times dout (a multiply is 10x faster than xp.where on the CPU)
    return dout * astype(out > 0, dout.dtype)


def tanh_backward(dout, out):
    """dx = dout * (1 - out^2) for out = tanh(x)."""
    dx = fused("tanh_backward", dout, out)  # on CuPy: one GPU kernel
    if dx is None:
        dx = dout * (1.0 - out * out)
    return dx


# ---------------------------------------------------------------------------------------
# Adam's update
# ---------------------------------------------------------------------------------------
def adam_update(params, grads, m_sum, v_sum, work, step_size, beta1, beta2, eps_hat):
    """One Adam update, in place, of the flat vectors ``params``, ``m_sum`` and ``v_sum``:

        m_sum  <- beta1 m_sum + g
        v_sum  <- beta2 v_sum + g^2
        params <- params - step_size * m_sum / (sqrt(v_sum) + eps_hat)

    (the moments as running sums, and the bias corrections folded into ``step_size`` and
    ``eps_hat``: see ``npvae.optim.Adam``). ``work`` is ``work_vector(params)`` (overwritten).
    """
    if _backend_name() == "numpy":
        _map_chunks(lambda p, g, m, v, t: _adam_numpy(p, g, m, v, t, step_size, beta1, beta2, eps_hat),
                    params.shape[0], (params, grads, m_sum, v_sum), work)
        return
    # On CuPy the whole update is one GPU kernel, writing params, m_sum and v_sum in place.
    if fused("adam", grads, step_size, beta1, beta2, eps_hat, params, m_sum, v_sum) is None:
        _adam_generic(params, grads, m_sum, v_sum, step_size, beta1, beta2, eps_hat)


def _adam_generic(params, grads, m_sum, v_sum, step_size, beta1, beta2, eps_hat):
    xp = array_namespace(params)
    m_sum *= beta1
    m_sum += grads
    v_sum *= beta2
    v_sum += grads * grads
    params -= step_size * (m_sum / (xp.sqrt(v_sum) + eps_hat))


def _adam_numpy(p, g, m, v, t, step_size, beta1, beta2, eps_hat):
    # Ten passes, every result written into an existing array (out=): no allocation.
    np = array_namespace(p)
    m *= beta1
    m += g  # m_sum <- b1 m_sum + g
    v *= beta2
    np.multiply(g, g, out=t)
    v += t  # v_sum <- b2 v_sum + g^2
    np.sqrt(v, out=t)
    t += eps_hat
    np.divide(m, t, out=t)
    t *= step_size
    p -= t  # p <- p - step_size * m_sum / (sqrt(v_sum) + eps_hat)


def flush_tiny(a, threshold):
    """Set entries with |a| < threshold to exactly 0, in place.

    Why: Adam's m decays by beta1 = 0.9 every step in which its gradient is 0 (a weight that
    sees an always-black pixel, a dead unit). After ~800 steps it is below 1.2e-38, where
    float32 becomes *subnormal*, and CPUs compute with subnormal numbers up to 100 times
    slower: a NumPy VAE's epochs grow from 2 s to 4 s that way. Such entries change the
    update by less than 1e-20 of a step, so setting them to 0 changes nothing that matters.
    """
    xp = array_namespace(a)
    if _backend_name() == "numpy":
        xp.copyto(a, 0.0, where=xp.abs(a) < threshold)
        return
    a[...] = xp.where(xp.abs(a) < threshold, 0.0, a)


# ---------------------------------------------------------------------------------------
# The Bernoulli log-likelihood and its gradient (npvae.distributions has the math)
# ---------------------------------------------------------------------------------------
# Row blocks of the Bernoulli loss: 4 float32 arrays x 128k entries = 2 MB, one core's L2.
# 167 rows of 784 pixels, so a batch of 128 images is one block.
ROW_BLOCK = 131_072


def bernoulli_log_likelihood_and_grad(x, logits):
    """log P (N,) = sum_d [x l - max(l, 0) - log1p(exp(-|l|))] and d log P / dl (N, D) =
    x - sigma(l), with sigma(l) = (1 + tanh(l / 2)) / 2, for x and logits l of shape (N, D)."""
    xp = array_namespace(logits)
    if _backend_name() == "numpy" and x.ndim == 2 and x.shape == logits.shape:
        return _bernoulli_numpy(xp, x, logits)
    log_p = fused("bernoulli_log_likelihood", x, logits)  # on CuPy: two GPU kernels
    if log_p is not None:
        return log_p, fused("bernoulli_grad", x, logits)
    log_p = xp.sum(x * logits - xp.maximum(logits, 0.0) - xp.log1p(xp.exp(-xp.abs(logits))), axis=-1)
    p = 0.5 * xp.tanh(0.5 * logits)
    p += 0.5  # sigma(logits), in place
    return log_p, x - p


def _bernoulli_numpy(np, x, l):
    # Two (N, D) arrays instead of eight, and the row sums as matrix-vector products:
    #   sum_d x_d l_d       = vecdot(x, l)               (one pass, no x * l array)
    #   sum_d max(l_d, 0)   = (sum_d l_d + sum_d |l_d|) / 2
    #   sum_d log1p(e_d)    = log1p(e) @ 1,   e = exp(-|l|), computed in place in one array
    # Measured 270 -> 190 us for a batch of 128 x 784. Larger batches go through in blocks of
    # rows of at most ROW_BLOCK entries, so that each block's four arrays stay in the cache
    # over the thirteen passes (batch 1024 x 784: 2.56 -> 1.73 ms).
    n, d = l.shape
    log_p, grad = np.empty(n, dtype=l.dtype), np.empty_like(l)
    a = np.empty((max(1, min(n, ROW_BLOCK // d)), d), dtype=l.dtype)  # one block's work array
    ones = np.ones(d, dtype=l.dtype)
    for i in range(0, n, a.shape[0]):
        j = min(i + a.shape[0], n)
        _bernoulli_rows(np, x[i:j], l[i:j], log_p[i:j], grad[i:j], a[: j - i], ones)
    return log_p, grad


def _bernoulli_rows(np, x, l, log_p, grad, a, ones):
    """Rows of _bernoulli_numpy, written into log_p (rows,) and grad (rows, D); a: work."""
    np.abs(l, out=a)  # |l|
    relu_sum = l @ ones
    relu_sum += a @ ones
    relu_sum *= 0.5  # sum_d max(l_d, 0)
    np.negative(a, out=a)
    np.exp(a, out=a)
    np.log1p(a, out=a)  # log(1 + exp(-|l|)), in place
    np.vecdot(x, l, out=log_p)
    log_p -= relu_sum
    log_p -= a @ ones
    np.multiply(l, 0.5, out=grad)  # x - sigma(l) = x - 1/2 - tanh(l/2)/2, in place
    np.tanh(grad, out=grad)
    grad *= -0.5
    grad -= 0.5
    grad += x


# ---------------------------------------------------------------------------------------
# Matrix products into existing arrays
# ---------------------------------------------------------------------------------------
def matmul_into(a, b, out):
    """out[...] = a @ b. NumPy and CuPy write the product straight into ``out`` (no temporary,
    and on the GPU no second kernel to copy it)."""
    if _backend_name() in ("numpy", "cupy"):
        array_namespace(a).matmul(a, b, out=out)
    else:
        out[...] = a @ b
    return out


def sum_rows_into(a, out):
    """out[...] = sum of the rows of a (axis 0), straight into ``out`` on NumPy and CuPy."""
    xp = array_namespace(a)
    if _backend_name() in ("numpy", "cupy"):
        xp.sum(a, axis=0, out=out)
    else:
        out[...] = xp.sum(a, axis=0)
    return out
