"""Graders for notebooks/10_importance_weighted_bound.ipynb.

- 10.1 ``log_mean_exp_backward(dL, log_w)`` -> d loss / d log_w, (N, K): the backward of
  L = log (1/K) sum_i w_i over each row's K draws, times the upstream gradient dL of each row.
  A gradient check of sum_n dL_n L_n against central differences, a comparison with
  ``npvae.vae.log_mean_exp_backward``, and log w of hundreds of nats (an image's
  log-likelihoods), where an exp without the largest log w factored out overflows or underflows;
  the weights w_i left un-normalized (or divided by K, or by their mean), normalized over the
  batch axis instead of the K draws, the upstream dL left out, the sign, and the mean's gradient
  dL / K are named. dL may also be one number for every row, as npvae's model passes it (-1/N):
  ``nb03.check_one_number`` names a function that fails on that form.
"""

from __future__ import annotations

import numpy as np

from .. import vae
from ..backend import array_namespace, asarray
from . import ExerciseFailed, call, compare, fail, gradient_check, host, inputs, passed
from .nb03 import check_one_number

LOG_MEAN_EXP_BACKWARD = "10.1"

N, K = 5, 4  # N != K, so normalizing over the wrong axis, or a (N,) dL against (N, K), shows


def _close(a, b):
    return a.shape == b.shape and np.allclose(a, b, rtol=1e-9, atol=1e-12)


def _softmax(a, axis):
    e = np.exp(a - np.max(a, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _slips(dL, log_w):
    """(value, message) for the common wrong answers, host float64 (N, K)."""
    col, k = dL[:, None], log_w.shape[-1]
    w = np.exp(log_w)
    right = col * _softmax(log_w, -1)
    return [
        (col * w, "you used the weights w_i = exp(log w_i) themselves: the derivative of a log divides by what is "
                  "inside it, so each w_i is divided by (1/K) sum_j w_j, and the 1/K's cancel"),
        (col * w / k, "you used w_i / K: the derivative of log(mean) is d(mean) / mean, so w_i / K is still to be "
                      "divided by the mean (1/K) sum_j w_j"),
        (k * right, "your gradient is K times the right one: you divided w_i by the mean of the weights where the "
                    "1/K of the mean cancels, so it is w_i over their sum (the normalized weights add up to 1)"),
        (col * _softmax(log_w, 0), "you normalized the weights over the batch (axis 0, the N rows): each row's bound "
                                   "is a mean over its own K draws, so normalize over the K draws (axis=-1)"),
        (_softmax(log_w, -1), "you did not multiply by the upstream gradient dL of each row"),
        (-right, "your gradient has the wrong sign: a larger log w_i raises the mean of the weights, so "
                 "d L / d log w_i > 0 and the gradient has dL's sign"),
        (np.broadcast_to(col / k, log_w.shape), "you returned dL / K for every draw: that is the gradient of the mean "
                                                "of log w_i (K one-draw ELBOs averaged), not of the log of the mean of "
                                                "w_i; each draw counts by its share of the weight"),
        (col * (log_w - np.log(np.sum(w, axis=-1, keepdims=True))),
         "you returned the log of the normalized weights: exponentiate them"),
    ]


def check_log_mean_exp_backward(log_mean_exp_backward):
    """Exercise 10.1: ``log_mean_exp_backward(dL, log_w)`` -> (N, K), d loss / d log_w."""
    ex = LOG_MEAN_EXP_BACKWARD
    (log_w,) = inputs(101, (N, K), low=-3.0, high=3.0)
    (dL,) = inputs(102, (N,), low=0.5, high=2.0)
    try:
        got = host(call(ex, log_mean_exp_backward, dL, log_w), ex, "log_mean_exp_backward(dL, log_w)")
    except ExerciseFailed as exc:
        if "broadcast" in str(exc):  # dL (N,) times (N, K)
            fail(ex, "dL has shape (N,), one number per row, and log_w (N, K): make dL a column (N, 1), e.g. "
                     f"dist.per_row(dL), so that it multiplies each row ({str(exc).split(': ', 1)[1]})")
        raise
    want = host(vae.log_mean_exp_backward.textbook(dL, log_w))
    if got.shape != want.shape:
        if got.shape in ((N,), (N, 1)):
            fail(ex, f"you returned shape {got.shape}, one number per row: return one gradient per draw, "
                     f"d loss / d log w_ni, shape (N, K) = {want.shape}")
        fail(ex, f"expected one gradient per entry of log_w, shape {want.shape}, got shape {got.shape}")
    if not _close(got, want):
        for value, message in _slips(host(dL), host(log_w)):
            if _close(got, value):
                fail(ex, message)

    # central differences of the scalar sum_n dL_n log_mean_exp(log_w)_n
    xp = array_namespace(log_w)
    total = lambda: float(xp.sum(dL * vae.log_mean_exp(log_w)))  # noqa: E731
    err = gradient_check(ex, total, log_w, got, "the gradient", of="sum_n dL_n log (1/K) sum_i exp(log w_ni)")
    compare(ex, got, want, "log_mean_exp_backward(dL, log_w)")

    # log w of an image: hundreds of nats, far beyond what exp can hold (exp(710) overflows float64)
    big = asarray(np.array([[-1000.0, -1001.5, -999.0, -1003.0], [800.0, 801.0, 797.5, 790.0],
                            [-420.0, -420.0, -425.0, -500.0], [0.0, -2.0, 1.0, -0.5], [5.0, 3.0, 4.0, 4.5]]),
                  dtype="float64")
    with np.errstate(all="ignore"):  # an overflow is reported below, in words
        got_big = host(call(ex, log_mean_exp_backward, dL, big), ex, "log_mean_exp_backward(dL, log_w)")
    want_big = host(vae.log_mean_exp_backward.textbook(dL, big))
    if got_big.shape == want_big.shape and not np.all(np.isfinite(got_big)):
        rows = [n for n in range(N) if not np.all(np.isfinite(got_big[n]))]
        fail(ex, f"with log w in the hundreds of nats, as an image's are (row {rows[0]}: log w = "
                 f"{host(big)[rows[0]].tolist()}), your gradient has NaN or inf: exp(800) overflows and exp(-1000) is "
                 "0, so 0 / 0. Only differences of log w matter here: subtract each row's largest log w_j before "
                 "the exp, as log_mean_exp does")
    compare(ex, got_big, want_big, "log_mean_exp_backward(dL, log_w) with log w in the hundreds of nats")
    check_one_number(ex, log_mean_exp_backward, vae.log_mean_exp_backward.textbook, "dL", (log_w,),
                     ("the gradient",))
    passed(ex, f"matches central differences (relative error {err:.0e}) and npvae's log_mean_exp_backward, also "
               "with log w of hundreds of nats; dL may also be one number, as npvae passes it")
