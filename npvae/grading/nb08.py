"""Graders for notebook 08 (backends and gradient checks).

- ``check_elu(make_elu)``, exercise 08.1: ``make_elu(alpha)`` returns a new layer in npvae's
  calling shape, ``out, cache = layer.forward(x)`` and ``dx = layer.backward(dout, cache)``, for

      ELU(x) = x (x > 0),  alpha (e^x - 1) (x <= 0);   d ELU / dx = 1 (x > 0),  alpha e^x (x <= 0).

  The forward is compared with that formula, the backward is gradient-checked in float64
  against central differences (``npvae.gradcheck``) of f(x) = sum(ELU(x) * dout), and a
  backward that ignores its cache is caught.
- ``check_full_kl(full_kl)``, exercise 08.2: KL(N(mu, L L^T) || N(0, I)) per row, compared with
  ``npvae.distributions.full_gaussian_kl`` and with 1/2 (tr Sigma + ||mu||^2 - Z - log det Sigma)
  computed from Sigma = L L^T itself with NumPy's ``slogdet``.

Each recognises the common mistakes and says what is wrong in words.
"""

from __future__ import annotations

import numpy as np

from ..backend import asarray, to_numpy
from ..distributions import full_gaussian_kl
from ..gradcheck import numerical_gradient, rel_error
from . import call, compare, fail, host, passed

ELU_EX = "08.1"
FULL_KL_EX = "08.2"
GRAD_TOL = 1e-6  # a right backward gives about 1e-10 here


# ---------------------------------------------------------------------------------------
# 08.1: the ELU layer
# ---------------------------------------------------------------------------------------
def _elu(x, alpha):
    return np.where(x > 0, x, alpha * np.expm1(x))


def _elu_slope(x, alpha):
    """d ELU / dx (x away from 0)."""
    return np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0.0)))


def _away_from_zero(rng, shape, low=0.05, high=2.0):
    """Uniform magnitudes in [low, high) with random signs: no entry within a step h of ELU's kink."""
    return rng.uniform(low, high, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def _construct(make_layer, **kwargs):
    """``make_layer(**kwargs)``, the layer; a call that raises (other than the stub's
    NotImplementedError) or returns no layer is reported in words."""
    what = f"{getattr(make_layer, '__name__', 'make_elu')}({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
    try:
        layer = make_layer(**kwargs)
    except NotImplementedError:
        raise
    except Exception as exc:
        fail(ELU_EX, f"{what} raised {type(exc).__name__}: {exc}. It should take alpha (default 1.0) and "
                     f"return a layer")
    if not (callable(getattr(layer, "forward", None)) and callable(getattr(layer, "backward", None))):
        fail(ELU_EX, f"{what} should return a layer, an object with methods forward(x) and backward(dout, cache); "
                     f"got {type(layer).__name__}")
    return layer


def _forward(layer, x, what):
    """``layer.forward(x)`` as (out, cache), with the shape of the answer checked."""
    res = call(ELU_EX, layer.forward, x)
    if not (isinstance(res, tuple) and len(res) == 2):
        fail(ELU_EX, f"{what}: forward(x) should return the pair (out, cache), as every npvae layer does; "
                     f"got {type(res).__name__}")
    return res


def _check_elu_forward(out, xh, alpha):
    """Fail, naming the mistake, unless ``out`` is ELU(x) with this alpha."""
    got = host(out, ELU_EX, "forward's out")
    want = _elu(xh, alpha)
    if got.shape == want.shape and np.all(np.isfinite(got)) and np.allclose(got, want, rtol=1e-10, atol=1e-12):
        return
    mistakes = [
        (np.where(xh > 0, xh, alpha * np.exp(xh)),
         "for x <= 0 the output should be alpha * (e^x - 1); you left out the - 1, so your ELU jumps at 0 "
         "(use expm1(x) for e^x - 1)"),
        (np.where(xh > 0, xh, np.expm1(xh)),
         f"the layer's alpha is missing: for x <= 0 the output is alpha * (e^x - 1) with the alpha given to "
         f"make_elu (here {alpha})"),
        (np.where(xh > 0, xh, alpha * xh), "for x <= 0 you computed alpha * x, which is LeakyReLU; ELU is alpha * (e^x - 1)"),
        (np.maximum(xh, 0.0), "your forward is ReLU, max(x, 0); ELU is alpha * (e^x - 1) for x <= 0"),
        (np.where(xh > 0, alpha * np.expm1(xh), xh), "the two branches are swapped: ELU is x for x > 0 and alpha * (e^x - 1) for x <= 0"),
    ]
    if got.shape == want.shape:
        for candidate, message in mistakes:
            if np.allclose(got, candidate, rtol=1e-8, atol=1e-12):
                fail(ELU_EX, f"forward: {message}")
    compare(ELU_EX, got, want, "forward's out (x for x > 0, alpha * (e^x - 1) for x <= 0)")


def check_elu(make_layer):
    """Grade exercise 08.1: ``make_layer(alpha=...)`` returns an ELU layer with forward and backward."""
    alpha = 0.5  # not ELU's usual 1.0, so that a forgotten alpha shows
    rng = np.random.default_rng(808)
    shape = (5, 6)
    xh, x2h = _away_from_zero(rng, shape), _away_from_zero(rng, shape)
    douth = rng.standard_normal(shape)
    x, x2, dout = (asarray(a, dtype="float64") for a in (xh, x2h, douth))

    layer = _construct(make_layer, alpha=alpha)
    out, cache = _forward(layer, x, "make_elu(alpha=0.5)")
    _check_elu_forward(out, xh, alpha)

    # The backward, checked against central differences of f(x) = sum(ELU(x) * dout): its
    # gradient with respect to x is exactly what backward(dout, cache) should return.
    dx = host(call(ELU_EX, layer.backward, dout, cache), ELU_EX, "backward's dx")
    if dx.shape != shape:
        fail(ELU_EX, f"backward's dx should have x's shape {shape}, got {dx.shape}")

    def f():
        return float(np.sum(host(_forward(layer, x, "forward")[0], ELU_EX, "forward's out") * douth))

    numeric = numerical_gradient(f, x, h=1e-5)  # float64 central differences, entry by entry
    err = rel_error(dx, numeric)
    if not err <= GRAD_TOL:
        outh = _elu(xh, alpha)
        slope_at_out = np.where(outh > 0, 1.0, alpha * np.exp(np.minimum(outh, 0.0)))
        mistakes = [
            (_elu_slope(xh, alpha),
             "backward returned d out/dx alone and forgot dout: by the chain rule dx = dout * d out/dx"),
            (douth * slope_at_out,
             "backward evaluates the slope at the output: alpha * exp(out) where it should be alpha * exp(x). "
             "Either cache the input x, or, if you cache out, use that the slope for x <= 0 is out + alpha"),
            (slope_at_out,
             "backward forgot dout (dx = dout * d out/dx) and evaluates the slope at the output "
             "(alpha * exp(out) instead of alpha * exp(x))"),
            (douth * np.where(xh > 0, 1.0, alpha * np.expm1(xh)),
             "for x <= 0 backward used the forward's alpha * (e^x - 1) as the slope; its derivative is alpha * e^x "
             "(the - 1 is a constant)"),
            (douth * np.where(xh > 0, 1.0, np.exp(xh)),
             f"for x <= 0 the slope is alpha * e^x; your backward leaves out alpha (here {alpha})"),
            (douth * np.where(xh > 0, 1.0, alpha),
             "for x <= 0 your backward uses the slope alpha (LeakyReLU's); ELU's slope there is alpha * e^x"),
            (douth * np.where(xh > 0, 1.0, outh + 1.0),
             "for x <= 0 the slope is out + alpha, not out + 1 (that holds only for alpha = 1)"),
            (douth * np.where(xh > 0, 0.0, alpha * np.exp(np.minimum(xh, 0.0))),
             "for x > 0 the slope is 1 (ELU is x there): your backward gives 0"),
        ]
        for candidate, message in mistakes:
            if np.allclose(dx, candidate, rtol=1e-8, atol=1e-12):
                fail(ELU_EX, f"backward: {message} (gradient check: relative error {err:.2e} against central "
                             f"differences; a right backward gives about 1e-10)")
        fail(ELU_EX, f"backward: the gradient check fails: relative error {err:.2e} against central differences "
                     f"of sum(forward(x) * dout) (a right backward gives about 1e-10; the bound is {GRAD_TOL:g})")

    # backward must take what it needs from its cache, not from the layer: a network may run
    # forward on other data (another batch, another place in the model) before backward.
    _forward(layer, x2, "a second forward")
    dx_again = host(call(ELU_EX, layer.backward, dout, cache), ELU_EX, "backward's dx")
    if not np.allclose(dx_again, dx, rtol=1e-10, atol=1e-12):
        if np.allclose(dx_again, douth * _elu_slope(x2h, alpha), rtol=1e-8, atol=1e-12):
            fail(ELU_EX, "backward does not use its cache: after a second forward(x2), backward(dout, cache) "
                         "of the first call gave the gradient at x2. Keep what backward needs in the cache that "
                         "forward returns, not on the layer (self)")
        fail(ELU_EX, "backward(dout, cache) gave a different dx after another forward call: it should depend "
                     "only on dout and cache")

    # The default is ELU's usual alpha = 1.
    default = _construct(make_layer)
    out1, _ = _forward(default, x, "make_elu()")
    if not np.allclose(host(out1, ELU_EX, "make_elu()'s out"), _elu(xh, 1.0), rtol=1e-10, atol=1e-12):
        fail(ELU_EX, "make_elu() (no argument) should give ELU with alpha = 1.0: give alpha the default 1.0")

    passed(ELU_EX, f"forward is x / alpha (e^x - 1); backward's gradient check in float64: relative error "
                   f"{err:.1e} (bound {GRAD_TOL:g}); backward reads only its cache")


# ---------------------------------------------------------------------------------------
# 08.2: the KL of the full-covariance posterior N(mu, L L^T) from N(0, I)
# ---------------------------------------------------------------------------------------
def _tril_host(s, lower):
    """L = diag(exp(s)) + the strictly-lower entries ``lower`` row by row, on the host: (N, Z, Z).
    Written here again with loops (not npvae's ``scale_tril``) so the reference is independent."""
    n, z = s.shape
    L = np.zeros((n, z, z))
    k = 0
    for i in range(z):
        L[:, i, i] = np.exp(s[:, i])
        for j in range(i):
            L[:, i, j] = lower[:, k]
            k += 1
    return L


def _kl_from_sigma(mu, s, lower):
    """1/2 (tr Sigma + ||mu||^2 - Z - log det Sigma) from Sigma = L L^T itself (NumPy's slogdet)."""
    L = _tril_host(s, lower)
    sigma = L @ np.swapaxes(L, -1, -2)
    sign, logdet = np.linalg.slogdet(sigma)
    assert np.all(sign > 0), "Sigma = L L^T should be positive definite"
    z = mu.shape[-1]
    return 0.5 * (np.trace(sigma, axis1=-2, axis2=-1) + np.sum(mu * mu, axis=-1) - z - logdet)


def _full_kl_mistakes(mu, s, lower):
    """(wrong value, what is wrong) for the common mistakes, on the host."""
    z = mu.shape[-1]
    diag = np.sum(np.exp(2.0 * s), axis=-1)  # sum_j L_jj^2
    low = np.sum(lower * lower, axis=-1)  # sum_k lower_k^2
    mm = np.sum(mu * mu, axis=-1)
    ssum = np.sum(s, axis=-1)
    no_lower = ("tr Sigma is missing the strictly-lower entries: Sigma = L L^T is not diagonal, and "
                "tr(L L^T) = ||L||_F^2 = sum_j exp(2 s_j) + sum_k lower_k^2")
    half_logdet = ("log det Sigma is 2 sum_j s_j, not sum_j s_j: det Sigma = (det L)^2 = prod_j exp(2 s_j), so inside "
                   "the 1/2 the log-determinant is 2 sum_j s_j (outside it, - sum_j s_j)")
    return [
        (0.5 * (diag + mm - z) - ssum, no_lower + " (you treated Sigma as diagonal)"),
        (0.5 * (diag + low + mm - z - ssum), half_logdet),
        (0.5 * (diag + mm - z - ssum), f"two mistakes: {no_lower}; and {half_logdet}"),
        (0.5 * (np.sum(np.exp(s), axis=-1) + low + mm - z) - ssum,
         "the diagonal part of tr Sigma is sum_j L_jj^2 = sum_j exp(2 s_j); you used exp(s_j) (s is log L_jj, "
         "the log of a standard deviation, not of a variance)"),
        (0.5 * (diag + low + mm) - ssum, "you left out the - Z (the KL must be 0 at mu = 0, Sigma = I)"),
        (0.5 * (diag + low + mm - z) + ssum, "the log-determinant has the wrong sign: KL = 1/2 (... - log det Sigma), "
                                              "so the last term is - sum_j s_j"),
        (diag + low + mm - z - 2.0 * ssum, "the whole bracket needs the factor 1/2: KL = 1/2 (tr Sigma + ||mu||^2 - Z "
                                           "- log det Sigma)"),
    ]


def check_full_kl(full_kl):
    """Grade exercise 08.2: ``full_kl(mu, log_diag, lower)`` is KL(N(mu, L L^T) || N(0, I)) per row."""
    rng = np.random.default_rng(809)
    worst = 0.0
    cases = [  # (N, Z, what): a correlated Sigma first, so the mistakes can be told apart
        (6, 4, "Z = 4"),
        (3, 1, "Z = 1 (lower has no entries: shape (N, 0))"),
        (2, 3, "mu = 0, Sigma = I (the KL is 0)"),
    ]
    for n, z, what in cases:
        k = z * (z - 1) // 2
        if what.startswith("mu = 0"):
            mu, s, lower = np.zeros((n, z)), np.zeros((n, z)), np.zeros((n, k))
        else:
            mu = rng.uniform(-2.0, 2.0, size=(n, z))
            s = rng.uniform(-1.0, 1.0, size=(n, z))
            lower = rng.uniform(-1.5, 1.5, size=(n, k))
        args = [asarray(a, dtype="float64") for a in (mu, s, lower)]
        want = np.asarray(to_numpy(full_gaussian_kl(*args)), dtype=np.float64)
        from_sigma = _kl_from_sigma(mu, s, lower)
        # The two references must agree; if not, npvae itself is wrong, not the student.
        assert np.allclose(want, from_sigma, rtol=1e-10, atol=1e-12), \
            f"npvae's full_gaussian_kl and slogdet disagree ({what}): a bug in npvae, not in your code"
        got = host(call(FULL_KL_EX, full_kl, *args), FULL_KL_EX, f"full_kl ({what})")
        if got.shape != want.shape:
            fail(FULL_KL_EX, f"full_kl ({what}): expected one KL per row, shape {want.shape}, got {got.shape}")
        if not (np.all(np.isfinite(got)) and np.allclose(got, want, rtol=1e-10, atol=1e-12)):
            for candidate, message in _full_kl_mistakes(mu, s, lower):
                if not np.allclose(candidate, want, rtol=1e-8, atol=1e-10) and \
                        np.allclose(got, candidate, rtol=1e-8, atol=1e-10):
                    fail(FULL_KL_EX, f"{message} ({what})")
        compare(FULL_KL_EX, got, want, f"full_kl ({what}) against npvae's full_gaussian_kl")
        compare(FULL_KL_EX, got, from_sigma, f"full_kl ({what}) against 1/2 (tr Sigma + ||mu||^2 - Z - log det Sigma) "
                                              f"from numpy's slogdet of Sigma = L L^T")
        worst = max(worst, float(np.max(np.abs(got - from_sigma), initial=0.0)))
    passed(FULL_KL_EX, f"full_kl equals npvae's full_gaussian_kl and 1/2 (tr Sigma + ||mu||^2 - Z - log det Sigma) "
                       f"from numpy's slogdet of Sigma = L L^T (largest difference {worst:.1e} nats; Z = 4, 1, "
                       f"and Sigma = I)")
