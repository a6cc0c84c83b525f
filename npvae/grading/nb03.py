"""Graders for notebook 03 (the decoder and the reconstruction term).

- ``check_bernoulli_log_likelihood(bernoulli_log_likelihood)``, exercise 03.1: log P(x|z) =
  sum_d [x_d l_d - softplus(l_d)] per row, compared with ``npvae.distributions.
  bernoulli_log_likelihood`` at moderate logits (|l| <= 4) and at |l| = 100 and 1000, where
  the naive form x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)) gives -inf or NaN, and
  log(1 + exp(l)) overflows.
- ``check_bernoulli_log_likelihood_backward(bernoulli_log_likelihood_backward)``, exercise
  03.2: dlog_p * (x - sigmoid(logits)), gradient-checked (float64 central differences) against
  npvae's forward and compared with ``npvae.distributions.bernoulli_log_likelihood_backward``;
  a flipped sign (sigmoid(l) - x, the gradient of the loss -log P) is named. The upstream gradient
  may also be one number for every row (a Python float or a 0-d array), as npvae's model passes it:
  ``check_one_number`` (04.2's grader uses it too) names a function that fails on that form, and
  one that turns a float into a float64 array (the result of float32 inputs would be float64).
- ``check_gaussian_log_likelihood(gaussian_log_likelihood)``, exercise 03.3: log N(x; mean, I) =
  -1/2 ||x - mean||^2 - D/2 log(2 pi) per row, in nats, compared with ``npvae.distributions.
  gaussian_log_likelihood`` for two widths D; a missing or wrong constant is named.

Each recognises the common mistakes and says what is wrong in words.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import array_namespace, asarray
from .. import distributions as dist
from . import ExerciseFailed, call, compare, fail, gradient_check, host, inputs, passed

BERNOULLI_EX = "03.1"
BACKWARD_EX = "03.2"
GAUSSIAN_EX = "03.3"
GRAD_TOL = 1e-6  # a right backward gives about 1e-10 here
LOG_2PI = math.log(2.0 * math.pi)
SOFTPLUS_HINT = ("use the logits form sum_d [x_d l_d - softplus(l_d)] with softplus(l) = log(1 + e^l) written as "
                 "max(l, 0) + log1p(exp(-|l|)), which takes no log of 0 and never overflows")


def _close(a, b):
    return a.shape == b.shape and bool(np.all(np.isfinite(a))) and np.allclose(a, b, rtol=1e-8, atol=1e-10)


def _per_row_shape(ex, got, want, d):
    """Fail, in words, when the answer is not one number per row."""
    if got.shape == want.shape:
        return
    if got.shape == want.shape + (d,):
        fail(ex, f"expected one number per row, shape {want.shape}; got {got.shape}: sum over the D pixels "
                 f"(axis=-1)")
    if got.shape == () or got.shape == (d,):
        fail(ex, f"expected one number per row, shape {want.shape}; got {got.shape}: sum over the pixels only "
                 f"(axis=-1), not over the batch")
    fail(ex, f"expected one number per row, shape {want.shape}; got {got.shape}")


# ---------------------------------------------------------------------------------------
# 03.1: the Bernoulli log-likelihood from logits
# ---------------------------------------------------------------------------------------
def _naive(x, l):
    """x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), summed per row, computed the naive way."""
    with np.errstate(all="ignore"):
        p = 1.0 / (1.0 + np.exp(-l))
        return np.sum(x * np.log(p) + (1.0 - x) * np.log(1.0 - p), axis=-1)


def _big_logits(size):
    """Rows of logits +-size against pixels 1, 0 and a grey 0.3: (x, logits), both (2, 3)."""
    x = np.array([[1.0, 0.0, 0.3], [1.0, 0.0, 0.3]])
    logits = np.array([[size, size, size], [-size, -size, -size]], dtype=np.float64)
    return x, logits


def check_bernoulli_log_likelihood(bernoulli_log_likelihood):
    """Grade exercise 03.1: ``bernoulli_log_likelihood(x, logits)`` is sum_d [x_d l_d - softplus(l_d)]."""
    ex = BERNOULLI_EX
    rng = np.random.default_rng(301)
    n, d = 5, 7
    xh = rng.uniform(0.0, 1.0, size=(n, d))
    xh[:, :2] = rng.integers(0, 2, size=(n, 2))  # some black and white pixels, the rest grey levels
    lh = rng.uniform(-4.0, 4.0, size=(n, d))
    x, logits = asarray(xh, dtype="float64"), asarray(lh, dtype="float64")
    want = host(dist.bernoulli_log_likelihood.textbook(x, logits))
    got = host(call(ex, bernoulli_log_likelihood, x, logits), ex, "log P(x|z)")
    _per_row_shape(ex, got, want, d)
    if not _close(got, want):
        if _close(got, -want):
            fail(ex, "you returned the cross-entropy -log P(x|z) (the loss); return log P(x|z) itself, which is <= 0")
        if _close(got, want / d):
            fail(ex, "you averaged over the pixels: log P(x|z) is the sum over the D pixels (they are independent)")
        compare(ex, got, want, "log P(x|z) at moderate logits (|l| <= 4)")

    # Large logits: a confident decoder. The right value is finite (a wrong guess costs |l| nats).
    for size in (100.0, 1000.0):
        bxh, blh = _big_logits(size)
        bx, bl = asarray(bxh, dtype="float64"), asarray(blh, dtype="float64")
        want_big = host(dist.bernoulli_log_likelihood.textbook(bx, bl))
        with np.errstate(all="ignore"):  # a naive form warns about log(0); the grader says it in words
            got_big = host(call(ex, bernoulli_log_likelihood, bx, bl), ex, f"log P(x|z) at |logits| = {size:g}")
        _per_row_shape(ex, got_big, want_big, 3)
        if not np.all(np.isfinite(got_big)):
            bad = ", ".join(f"{v}" for v in got_big)
            if np.array_equal(got_big, _naive(bxh, blh), equal_nan=True) or size == 100.0:
                fail(ex, f"at logits of +-{size:g} your log P(x|z) is [{bad}] where the right values are finite "
                         f"({', '.join(f'{v:.1f}' for v in want_big)}): log(sigmoid(l)) and log(1 - sigmoid(l)) break "
                         f"for large |l|: sigmoid({size:g}) rounds to exactly 1 in float64, so log(1 - sigmoid(l)) = "
                         f"log 0 = -inf, and a white pixel's 0 * (-inf) is NaN. Instead, {SOFTPLUS_HINT}")
            fail(ex, f"at logits of +-{size:g} your log P(x|z) is [{bad}] where the right values are finite: "
                     f"exp(l) overflows for l > 709 in float64, so log(1 + exp(l)) is inf. Instead, {SOFTPLUS_HINT}")
        if not _close(got_big, want_big):
            worst = float(np.max(np.abs(got_big - want_big)))
            fail(ex, f"at logits of +-{size:g} your log P(x|z) is off by up to {worst:.3g} nats (yours "
                     f"{np.round(got_big, 2).tolist()}, right {np.round(want_big, 2).tolist()}). Clipping sigmoid(l) "
                     f"away from 0 and 1 hides the -inf but changes the value; {SOFTPLUS_HINT}")
    passed(ex, "log P(x|z) = sum_d [x_d l_d - softplus(l_d)] per row, equal to npvae's at moderate logits and finite "
               "and exact at |logits| = 100 and 1000")


# ---------------------------------------------------------------------------------------
# 03.2: its gradient with respect to the logits
# ---------------------------------------------------------------------------------------
def check_bernoulli_log_likelihood_backward(bernoulli_log_likelihood_backward):
    """Grade exercise 03.2: ``bernoulli_log_likelihood_backward(dlog_p, x, logits)`` is
    dlog_p[:, None] * (x - sigmoid(logits))."""
    ex = BACKWARD_EX
    n, d = 4, 6
    dlog_p, x, logits = inputs(302, (n,), (n, d), (n, d))
    x = asarray(np.clip(host(x) / 4.0 + 0.5, 0.0, 1.0), dtype="float64")  # pixels in [0, 1]
    dh, xh, lh = host(dlog_p), host(x), host(logits)
    p = 1.0 / (1.0 + np.exp(-lh))
    want = host(dist.bernoulli_log_likelihood_backward.textbook(dlog_p, x, logits))
    try:
        res = call(ex, bernoulli_log_likelihood_backward, dlog_p, x, logits)
    except ExerciseFailed as exc:
        if "broadcast" in str(exc):
            raise ExerciseFailed(f"{str(exc).rstrip()}. dlog_p has one entry per row, shape (N,): make it a column, "
                                 f"shape (N, 1), to multiply each row of (N, D)") from None
        raise
    got = host(res, ex, "d log P / d logits")
    if got.shape != want.shape:
        fail(ex, f"d log P / d logits: expected the logits' shape {want.shape}, got {got.shape}")
    if not _close(got, want):
        mistakes = [
            (-want, "the sign is flipped: d log P / d logits = x - sigmoid(logits); sigmoid(logits) - x is the "
                    "gradient of the loss -log P (the model's backward passes dlog_p = -1/N, which brings in the minus)"),
            (xh - p, "you returned d log P / d logits alone: multiply each row by its upstream gradient dlog_p "
                     "(chain rule), as dlog_p[:, None] * (x - sigmoid(logits))"),
            (p - xh, "the sign is flipped, and dlog_p is missing: return dlog_p[:, None] * (x - sigmoid(logits))"),
            (dh[:, None] * (xh - p) * p * (1.0 - p),
             "you multiplied by sigmoid'(l) = p (1 - p) once too often: the derivative of x l - softplus(l) with "
             "respect to l is x - sigmoid(l) already"),
            (dh[:, None] * (xh / p - (1.0 - xh) / (1.0 - p)),
             "that is the derivative with respect to p; the decoder outputs logits l: by the chain rule, times "
             "dp/dl = p (1 - p), it becomes x - sigmoid(l)"),
            (dh[:, None] * (xh - lh), "x - logits: the prediction is sigmoid(logits), so the gradient is "
                                      "x - sigmoid(logits)"),
        ]
        for candidate, message in mistakes:
            if _close(got, candidate):
                fail(ex, message)

    # The gradient check: central differences of sum_n dlog_p_n log P_n through npvae's forward.
    xp = array_namespace(logits)

    def f():
        return float(xp.sum(dlog_p * dist.bernoulli_log_likelihood.textbook(x, logits)))

    err = gradient_check(ex, f, logits, got, "d log P / d logits", rtol=GRAD_TOL,
                         of="sum_n dlog_p_n log P(x_n|z_n)")
    compare(ex, got, want, "d log P / d logits")
    check_one_number(ex, bernoulli_log_likelihood_backward, dist.bernoulli_log_likelihood_backward.textbook,
                     "dlog_p", (x, logits), ("d log P / d logits",))
    passed(ex, f"dlog_p * (x - sigmoid(logits)), the same as npvae's; gradient check in float64: relative error "
               f"{err:.1e} (bound {GRAD_TOL:g}); dlog_p may also be one number, as npvae passes it")


def check_one_number(ex, fn, library, name, args, what):
    """Grade a backward's other form of its upstream gradient ``name``: one number for every row
    (npvae's model passes a Python float: -1/N, beta/N), as a Python float and as a 0-d array.
    ``fn(d, *args)`` must equal ``library(d, *args)`` (npvae's textbook function), and, for float32
    ``args`` and a Python float, stay float32. ``what`` names fn's results, in order."""
    hint = (f"npvae passes `{name}` either as one number per row, shape (N,), or as one number for every row "
            f"(a Python float, as the model passes it, or a 0-d array); dist.per_row({name}) turns either into what "
            f"multiplies each row (a column (N, 1), or the number itself)")
    for d, form in ((-0.375, "a Python float, -0.375"), (asarray(0.625, dtype="float64"), "a 0-d array, 0.625")):
        try:
            got = call(ex, fn, d, *args)
        except ExerciseFailed as exc:
            if "your function raised" not in str(exc):
                raise
            fail(ex, f"your function fails when the upstream gradient `{name}` is one number ({form}): it raised "
                     f"{str(exc).split('your function raised ', 1)[1].rstrip('.')}. {hint}")
        want = library(d, *args)
        for g, w, label in zip(_results(got), _results(want), what):
            g, w = host(g, ex, label), host(w)
            if not _close(g, w):
                fail(ex, f"{label}: your result is wrong when the upstream gradient `{name}` is one number ({form}, "
                         f"the same for every row): it is not {name} times the gradient (expected shape {w.shape}, got "
                         f"{g.shape}). {hint}")
    args32 = [asarray(host(a), dtype="float32") for a in args]
    for g, label in zip(_results(call(ex, fn, -0.375, *args32)), what):
        if str(getattr(g, "dtype", None)) != str(args32[0].dtype):
            fail(ex, f"{label}: your result changes dtype when the upstream gradient `{name}` is one number (a "
                     f"Python float) and the inputs are float32, as in training: it is "
                     f"{getattr(g, 'dtype', type(g).__name__)}, not float32. Your function "
                     f"made the number into a float64 array (xp.reshape or xp.asarray of a Python float does), which "
                     f"turns everything it multiplies into float64. A Python number multiplies an array without "
                     f"changing its dtype: keep it as it is. {hint}")


def _results(out):
    """A backward's results as a list: its tuple (or list), or the one array it returns."""
    return list(out) if isinstance(out, (tuple, list)) else [out]


# ---------------------------------------------------------------------------------------
# 03.3: the lecture's Gaussian log-likelihood, with its constant
# ---------------------------------------------------------------------------------------
def check_gaussian_log_likelihood(gaussian_log_likelihood):
    """Grade exercise 03.3: ``gaussian_log_likelihood(x, mean)`` is -1/2 ||x - mean||^2 - D/2 log(2 pi)."""
    ex = GAUSSIAN_EX
    for n, d, seed in ((4, 6, 303), (3, 2, 304)):
        x, mean = inputs(seed, (n, d), (n, d))
        xh, mh = host(x), host(mean)
        want = host(dist.gaussian_log_likelihood(x, mean))
        got = host(call(ex, gaussian_log_likelihood, x, mean), ex, "log P(x|z)")
        _per_row_shape(ex, got, want, d)
        if _close(got, want):
            continue
        sq = np.sum((xh - mh) ** 2, axis=-1)
        const = 0.5 * d * LOG_2PI
        mistakes = [
            (-0.5 * sq, f"you dropped the constant -D/2 log(2 pi) (here D = {d}: {const:.3f} nats; for D = 784 it is "
                        f"720.4 nats). Without it the number is the squared error, not log P(x|z) in nats: training "
                        f"does not notice (the constant has no gradient), but the loss can no longer be compared with "
                        f"another model's (the Bernoulli's) or used as a log-likelihood"),
            (-0.5 * sq - 0.5 * LOG_2PI, "the constant is D/2 log(2 pi), one 1/2 log(2 pi) for each of the D "
                                        "pixels: multiply it by D = x.shape[-1]"),
            (-0.5 * sq - 0.5 * 784 * LOG_2PI, "you wrote D = 784: take D from the data, D = x.shape[-1]"),
            (-sq - const, "the squared error needs the factor 1/2: log P = -1/2 ||x - mean||^2 - D/2 log(2 pi)"),
            (-0.5 * sq - 2 * const, "the constant is D/2 log(2 pi), not D log(2 pi) (the density's normaliser is "
                                    "(2 pi)^(-D/2))"),
            (-0.5 * sq + const, "the constant has the wrong sign: log P = -1/2 ||x - mean||^2 - D/2 log(2 pi)"),
            (0.5 * sq + const, "you returned -log P(x|z) (the loss); return log P(x|z) itself"),
            (-0.5 * sq / d - 0.5 * LOG_2PI, "you averaged over the pixels: log P(x|z) is the sum over the D pixels"),
            (-0.5 * np.sqrt(sq) - const, "use the squared norm ||x - mean||^2, not the norm"),
        ]
        for candidate, message in mistakes:
            if _close(got, candidate):
                fail(ex, message)
        compare(ex, got, want, f"log P(x|z) (D = {d})")
    passed(ex, "log P(x|z) = -1/2 ||x - mean||^2 - D/2 log(2 pi) per row, in nats, equal to npvae's for D = 6 and 2")
