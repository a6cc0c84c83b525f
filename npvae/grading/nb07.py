"""Graders for notebook 07 (training and generation).

- ``check_dense_backward(dense_backward)``, exercise 07.1: npvae's ``Dense.backward(self, dout,
  cache, need_dx=True)`` written as a function, on real ``Dense`` layers whose dW and db are
  views into ``FlatParameters``' gradient vector (holding a stale gradient): dx and the dW and
  db written into those views are compared with npvae's own backward (a square W, where
  dout @ W and a transposed dW show only in the values, and a non-square W), need_dx=False must
  give None and still write dW and db, and the three are gradient-checked in float64 against
  central differences of f = sum(dout * (x @ W + b)). An array bound to self.dW instead of
  written into it, or added to it, is named.
- ``check_adam_step(adam_step)``, exercise 07.2: npvae's ``Adam.step(self, grads)`` written as a
  function, run for several steps on an ``optim.Adam`` from m = v = 0 and compared at every
  step with npvae's own (self.t, self.params updated in place, self.m, self.v), once with the
  default hyperparameters and once with others.
- ``check_neg_elbo(neg_elbo)``, exercise 07.3: the batch -ELBO from its two terms (slide 17),
  compared with ``model.loss(x, eps, beta)`` on real digits (beta 1, 0.25 and 3).
- ``check_capstone(my_replacements)``, exercise 07.4: npvae.replaced's functions, the
  student's 02.1-07.2, train ``npvae.fit`` (2 epochs, float32, same seed) to npvae's test -ELBO;
  when they do not, each is run alone to name the one that differs.

Each recognises the common mistakes (a transposed dW, db not summed over the batch, Adam
without its bias correction, ...) and says what is wrong in words.
"""

from __future__ import annotations

import types

import numpy as np

from ..backend import asarray, get_backend
from ..layers import Dense, FlatParameters
from ..optim import Adam
from . import ExerciseFailed, call, compare, fail, gradient_check, host, passed

DENSE_EX = "07.1"
ADAM_EX = "07.2"
GRAD_TOL = 1e-6  # a right backward gives about 1e-10 here


# ---------------------------------------------------------------------------------------
# 07.1: the backward of the Dense layer, npvae's Dense.backward(self, dout, cache, need_dx=True)
# ---------------------------------------------------------------------------------------
def _dense_layer(W, stale):
    """A real npvae Dense layer with weights W, its W, b, dW and db views into the two flat
    vectors of ``FlatParameters`` (float64), the gradient vector holding ``stale`` (a last
    batch's gradient, so that a function that adds to it, or leaves it, shows)."""
    d_in, d_out = (int(s) for s in W.shape)
    layer = Dense(d_in, d_out)
    flat = FlatParameters([("layer", layer)], seed=0, dtype="float64")
    layer.W[...] = W
    flat.grads[...] = stale
    return layer, flat


def _close(a, b):
    return a.shape == b.shape and np.all(np.isfinite(a)) and np.allclose(a, b, rtol=1e-8, atol=1e-12)


class _Slot:
    """Stands in for a layer's dW or db: keeps what is written into it (slot[...] = value), whatever its shape."""

    value = None

    def __setitem__(self, key, value):
        self.value = value


def _name_a_wrong_shape(dense_backward, dout, x, W, b, n, d_in, d_out):
    """The student's function raised on a real layer: run it once more on a stand-in whose dW and
    db take any shape, and fail naming a dW or db of the wrong shape (else return: the error stands)."""
    probe = types.SimpleNamespace(W=W, b=b, dW=_Slot(), db=_Slot(), in_dim=d_in, out_dim=d_out)
    try:
        call(DENSE_EX, dense_backward, probe, dout, x)
    except ExerciseFailed:
        return
    dW, db = (slot.value if isinstance(slot, _Slot) else slot for slot in (probe.dW, probe.db))
    dW_shape, db_shape = (None if a is None else tuple(host(a).shape) for a in (dW, db))
    if dW_shape == (d_out, d_in) and d_in != d_out:
        fail(DENSE_EX, f"dW has the shape of W^T, ({d_out}, {d_in}): it is dout^T @ x, transposed; dW must have W's "
                       f"shape ({d_in}, {d_out}) (x is ({n}, {d_in}), dout ({n}, {d_out}))")
    if db_shape == (n, d_out):
        fail(DENSE_EX, f"db should be summed over the batch: b is added to every row, so db has b's shape ({d_out},); "
                       f"you wrote an array of shape {db_shape}")
    if db_shape == (n,):
        fail(DENSE_EX, f"db is summed over the wrong axis: sum over the N rows (axis=0), which gives b's shape "
                       f"({d_out},), not over the outputs (axis=1)")


def _check_dense_case(dense_backward, n, d_in, d_out, seed):
    """Fail, naming the mistake, unless the student's function writes the right dW and db into a
    real layer and returns the right dx (and None with need_dx=False) for one random case;
    returns the largest gradient-check error."""
    dout, x, W, b, stale = _inputs_dense(seed, n, d_in, d_out)
    reference, _ = _dense_layer(W, stale)
    want_dx = host(Dense.backward.textbook(reference, dout, x))
    want_dW, want_db = host(reference.dW), host(reference.db)
    layer, flat = _dense_layer(W, stale)
    dW_view, db_view, params = layer.dW, layer.db, np.array(host(flat.params))
    stale_dW, stale_db = np.array(host(dW_view)), np.array(host(db_view))
    try:
        dx = call(DENSE_EX, dense_backward, layer, dout, x)
    except ExerciseFailed:
        _name_a_wrong_shape(dense_backward, dout, x, W, b, n, d_in, d_out)
        raise
    shapes = f"x ({n}, {d_in}), W ({d_in}, {d_out}), dout ({n}, {d_out})"
    if not np.array_equal(host(flat.params), params):
        fail(DENSE_EX, "your function changed the layer's W (or b): backward only reads them; the optimizer changes them")
    for name, view in (("dW", dW_view), ("db", db_view)):
        if getattr(layer, name) is not view:
            fail(DENSE_EX, f"you bound a new array to self.{name} (self.{name} = ...): write into the layer's own, "
                           f"self.{name}[...] = ... (self.{name} is a view of the model's gradient vector, which the "
                           f"optimizer reads; it still holds the last batch's gradient)")
    if isinstance(dx, (tuple, list)):
        fail(DENSE_EX, "return dx alone, as npvae's Dense.backward does: dW and db go into self.dW and self.db")
    dxh, dWh, dbh = host(dx, DENSE_EX, "dx"), host(dW_view), host(db_view)

    # dx = dout @ W^T; dout @ W has the right shape only when W is square.
    if not _close(dxh, want_dx):
        if d_in == d_out and _close(dxh, host(dout) @ host(W)):
            fail(DENSE_EX, "dx is dout @ W: it should be dout @ W^T (out_nj = sum_i x_ni W_ij, so "
                           "dL/dx_ni = sum_j dout_nj W_ij)")
        compare(DENSE_EX, dxh, want_dx, f"dx (with {shapes}; dx = dout @ W^T)")

    for name, got, want, old in (("dW", dWh, want_dW, stale_dW), ("db", dbh, want_db, stale_db)):
        if not _close(got, want) and _close(got, old + want):
            fail(DENSE_EX, f"your function adds to what self.{name} held (self.{name} += ...): it holds the last "
                           f"batch's gradient; assign, self.{name}[...] = ...")
    if not _close(dbh, want_db):
        if _close(dbh, want_db / n):
            fail(DENSE_EX, "db is the mean of dout over the batch; it is the sum, db = sum_n dout_n (b is added to "
                           "every row, and the loss's 1/N is already inside dout)")
        compare(DENSE_EX, dbh, want_db, f"db (with {shapes}; db = sum_n dout_n)")
    if not _close(dWh, want_dW):
        if _close(dWh, want_dW.T):
            fail(DENSE_EX, "dW is transposed: you computed dout^T @ x; dW = x^T @ dout, of W's shape (D_in, D_out) "
                           "(here W is square, so the shapes did not tell)")
        if _close(dWh, want_dW / n):
            fail(DENSE_EX, "dW is divided by the batch size: the layer's gradient is the sum over the rows, "
                           "dW = x^T @ dout (the loss's 1/N is already inside dout)")
        compare(DENSE_EX, dWh, want_dW, f"dW (with {shapes}; dW = x^T @ dout)")

    # need_dx=False (a first layer: the data x needs no gradient): None, and dW and db all the same.
    layer, _ = _dense_layer(W, stale)
    if call(DENSE_EX, dense_backward, layer, dout, x, need_dx=False) is not None:
        fail(DENSE_EX, "with need_dx=False return None: the first layer's input is the data, which needs no gradient, "
                       "and skipping dx = dout @ W^T saves a third of the layer's work")
    if not (_close(host(layer.dW), want_dW) and _close(host(layer.db), want_db)):
        fail(DENSE_EX, "with need_dx=False dW and db are still needed (the layer's parameters learn): write them, "
                       "skip only dx")

    # The same three against central differences of f = sum(dout * (x @ W + b)), in float64.
    xp = get_backend().xp

    def f():
        return float(xp.sum(dout * (x @ W + b)))

    return max(gradient_check(DENSE_EX, f, a, g, f"{name} (gradient check)", rtol=GRAD_TOL)
               for a, g, name in ((x, dxh, "dx"), (W, dWh, "dW"), (b, dbh, "db")))


def _inputs_dense(seed, n, d_in, d_out):
    """dout, x, W, b and a stale gradient vector (the layer's last dW and db), float64 on the backend."""
    rng = np.random.default_rng(seed)
    return [asarray(rng.uniform(-2.0, 2.0, size=shape), dtype="float64")
            for shape in ((n, d_out), (n, d_in), (d_in, d_out), (d_out,), (d_in * d_out + d_out,))]


def check_dense_backward(dense_backward):
    """Grade exercise 07.1: ``dense_backward(self, dout, cache, need_dx=True)``, npvae's
    Dense.backward: writes dW and db into the layer ``self``, returns dx (None without need_dx)."""
    err = max(_check_dense_case(dense_backward, 4, 3, 3, seed=702),    # W square: dout @ W, dW^T show only in values
              _check_dense_case(dense_backward, 5, 4, 3, seed=701))    # W not square
    passed(DENSE_EX, f"dx, and the dW and db written into the layer's own arrays, equal npvae's Dense.backward "
                     f"(W 3 x 3 and 4 x 3; None with need_dx=False); gradient check in float64: relative error "
                     f"{err:.1e} (bound {GRAD_TOL:g})")


# ---------------------------------------------------------------------------------------
# 07.2: one step of Adam
# ---------------------------------------------------------------------------------------
def _adam_candidates(p, g, m, v, t, lr, b1, b2, eps):
    """One step of the right update and of the common mistakes, on the host:
    [(message or None for the right one, params, m, v)]."""
    m1 = b1 * m + (1 - b1) * g
    v1 = b2 * v + (1 - b2) * g * g
    mh, vh = m1 / (1 - b1**t), v1 / (1 - b2**t)
    factor = (1 - b1**t) / np.sqrt(1 - b2**t)
    m_g2 = b1 * m + (1 - b1) * g * g  # g^2 where g belongs
    v_g4 = b2 * v + (1 - b2) * g**4  # g squared twice
    with np.errstate(all="ignore"):
        off = [(f"the bias correction uses the step number {name}: at step t it is m / (1 - beta1^t) and "
                f"v / (1 - beta2^t), with t = 1 at the first step",
                p - lr * (m1 / (1 - b1**s)) / (np.sqrt(v1 / (1 - b2**s)) + eps), m1, v1)
               for s, name in ((t + 1, "t + 1"), (t - 1, "t - 1"))]
    return [
        (None, p - lr * mh / (np.sqrt(vh) + eps), m1, v1),
        (f"m and v are used without the bias correction: divide them by (1 - beta1^t) and (1 - beta2^t) "
         f"(m and v start at 0, so early on they are biased toward 0; without the correction this step is "
         f"{factor:.2g} times too large)",
         p - lr * m1 / (np.sqrt(v1) + eps), m1, v1),
        ("only m is bias-corrected: v needs its own correction, v_hat = v / (1 - beta2^t)",
         p - lr * mh / (np.sqrt(v1) + eps), m1, v1),
        ("only v is bias-corrected: m needs its own correction, m_hat = m / (1 - beta1^t)",
         p - lr * m1 / (np.sqrt(vh) + eps), m1, v1),
        *off,
        ("eps goes outside the square root: the step is lr * m_hat / (sqrt(v_hat) + eps)",
         p - lr * mh / np.sqrt(vh + eps), m1, v1),
        (f"this is Kingma & Ba's efficient version (Section 2: lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t), "
         f"params - lr_t * m / (sqrt(v) + eps-hat)) with the plain eps as eps-hat: it equals Algorithm 1 only with "
         f"eps-hat = eps * sqrt(1 - beta2^t) (here {eps * np.sqrt(1 - b2**t):.2g}, not {eps:g}); the exercise, npvae "
         f"and PyTorch follow Algorithm 1, params - lr * m_hat / (sqrt(v_hat) + eps)",
         p - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m1 / (np.sqrt(v1) + eps), m1, v1),
        ("m is a running mean of the gradient g itself: m <- beta1 m + (1 - beta1) g (you used g^2, which belongs "
         "in v)", p - lr * (m_g2 / (1 - b1**t)) / (np.sqrt(vh) + eps), m_g2, v1),
        ("v is a running mean of g^2: v <- beta2 v + (1 - beta2) g^2; you squared the gradient twice (g^4)",
         p - lr * mh / (np.sqrt(v_g4 / (1 - b2**t)) + eps), m1, v_g4),
        ("the update goes uphill: Adam descends, params <- params - lr * m_hat / (sqrt(v_hat) + eps)",
         p + lr * mh / (np.sqrt(vh) + eps), m1, v1),
        ("beta1 and beta2 are swapped: beta1 (0.9 by default) goes with m, beta2 (0.999) with v",
         *_swapped(p, g, m, v, t, lr, b1, b2, eps)),
    ]


def _swapped(p, g, m, v, t, lr, b1, b2, eps):
    m1 = b2 * m + (1 - b2) * g
    v1 = b1 * v + (1 - b1) * g * g
    return p - lr * (m1 / (1 - b2**t)) / (np.sqrt(v1 / (1 - b1**t)) + eps), m1, v1


def _adam_run(adam_step, what, hyper, seed):
    """Several steps of the student's adam_step on an optim.Adam object against npvae's own
    Adam.step on another; returns the largest relative difference in params."""
    be = get_backend()
    rng = np.random.default_rng(seed)
    size, steps = 12, 6
    p0 = rng.uniform(-1.0, 1.0, size=size)
    # gradients of mixed sizes, some tiny (there eps matters: sqrt(v_hat) is about 1e-6)
    scales = np.array([1.0, 1e-3, 1e-6, 10.0] * (size // 4))
    grads = [rng.standard_normal(size) * scales for _ in range(steps)]

    lr, b1, b2, eps = hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"]
    # each Adam updates its params in place: each gets its own copy (asarray may return p0 itself)
    ref, opt = (Adam(be.asarray(p0.copy(), dtype="float64"), lr=lr, betas=(b1, b2), eps=eps) for _ in range(2))
    params = opt.params
    worst = 0.0
    for t in range(1, steps + 1):
        g = be.asarray(grads[t - 1], dtype="float64")
        ph, mh, vh = (np.array(host(a)) for a in (opt.params, opt.m, opt.v))  # the state the step starts from
        call(ADAM_EX, adam_step, opt, g)
        if opt.params is not params:
            fail(ADAM_EX, "you bound a new array to self.params (self.params = ...): update it in place, self.params "
                          "-= ... or self.params[...] = ...; it is the model's parameter vector, whose views are the "
                          "layers' W and b, so a new array is never seen by the model")
        if opt.t != t:
            fail(ADAM_EX, "count the step: self.t is the number of steps taken, so add 1 (self.t += 1) before using "
                          "it, t = 1 at the first step" if opt.t == t - 1 else
                          f"self.t should be {t} after step {t}, got {opt.t}: add 1 once per step")
        got = [np.array(host(a, ADAM_EX, f"self.{name}")) for a, name in ((opt.params, "params"), (opt.m, "m"),
                                                                           (opt.v, "v"))]
        Adam.step.textbook(ref, g)
        want = [np.array(host(a)) for a in (ref.params, ref.m, ref.v)]
        for a, b_, name in zip(got, want, ("params", "m", "v")):
            if a.shape != b_.shape:
                fail(ADAM_EX, f"self.{name} ({what}, step t = {t}): expected shape {b_.shape}, got {a.shape}")
        if not all(_close(a, b_) for a, b_ in zip(got, want)):
            if _close(got[2], b2 * vh + (1 - b2) * grads[t - 1]):
                fail(ADAM_EX, f"v is a running mean of the squared gradient: v <- beta2 v + (1 - beta2) g^2 "
                              f"(you used g, not g^2) ({what}, step t = {t})")
            if t == 1 and not np.all(np.isfinite(got[0])) and _close(got[1], want[1]) and _close(got[2], want[2]):
                fail(ADAM_EX, f"params has NaN or inf entries after the first step ({what}): t counts from 1, so at "
                              f"t = 1 the corrections divide by 1 - beta1 and 1 - beta2; a NaN here usually means "
                              f"1 - beta^0 = 0 (self.t used before self.t += 1)")
            for message, *candidate in _adam_candidates(ph, grads[t - 1], mh, vh, t, lr, b1, b2, eps):
                if message and all(_close(a, c) for a, c in zip(got, candidate)) and \
                        not all(_close(c, w) for c, w in zip(candidate, want)):
                    fail(ADAM_EX, f"{message} ({what}, step t = {t})")
            right = _adam_candidates(ph, grads[t - 1], mh, vh, t, lr, b1, b2, eps)[0][1:]
            if _close(got[0], right[0]):
                mt, vt = right[1] / (1 - b1**t), right[2] / (1 - b2**t)
                if _close(got[1], mt) or _close(got[2], vt):
                    fail(ADAM_EX, f"keep m and v themselves in self.m and self.v, not the bias-corrected m_hat and "
                                  f"v_hat: the next step builds on m and v ({what}, step t = {t})")
            if _close(got[0], _adam_candidates(ph, grads[t - 1], mh, vh, t, 1e-3, 0.9, 0.999, 1e-8)[0][1]):
                fail(ADAM_EX, f"adam_step ignores the hyperparameters of the optimizer: with self.lr={lr}, "
                              f"self.beta1={b1}, self.beta2={b2}, self.eps={eps} it made the step of the defaults; "
                              f"use self.lr, self.beta1, self.beta2 and self.eps, not constants")
            for a, b_, name in zip(got, want, ("params", "m", "v")):
                compare(ADAM_EX, a, b_, f"self.{name} after step t = {t} ({what}), against npvae.optim.Adam")
        worst = max(worst, float(np.max(np.abs(got[0] - want[0]) / (np.abs(want[0]) + 1e-12))))
    return worst


def check_adam_step(adam_step):
    """Grade exercise 07.2: ``adam_step(self, grads)``, npvae's Adam.step: one step of Adam on the
    optim.Adam object ``self`` (self.t counts it; self.params, self.m, self.v updated in place)."""
    defaults = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    others = {"lr": 0.05, "beta1": 0.8, "beta2": 0.99, "eps": 1e-4}
    worst = max(_adam_run(adam_step, "the default hyperparameters", defaults, seed=721),
                _adam_run(adam_step, f"lr={others['lr']}, beta1={others['beta1']}, beta2={others['beta2']}, "
                                     f"eps={others['eps']}", others, seed=722))
    passed(ADAM_EX, f"6 steps from m = v = 0 equal npvae.optim.Adam's (self.params, self.m and self.v; the "
                    f"defaults and other hyperparameters); largest relative difference in params {worst:.1e}")


# ---------------------------------------------------------------------------------------
# 07.3: the batch -ELBO from its two terms (slide 17)
# ---------------------------------------------------------------------------------------
LOSS_EX = "07.3"


def _loss_case(beta):
    """A real batch: 64 test digits through a small float64 VAE, with one eps per digit; returns
    (x, logits, mu, logvar), the per-digit log P(x|z) and KL, and npvae's loss with ``beta``."""
    from ..datasets import load
    from ..random import Generator
    from ..vae import VAE

    model = VAE(784, (32,), 4, dtype="float64", seed=7)
    x = asarray(load()[1][0][:64], dtype="float64")
    eps = Generator(7).standard_normal((64, 4), dtype="float64")
    fwd = model.forward(x, eps)
    return (x, fwd.out, fwd.q.mu, fwd.q.logvar), host(fwd.log_p), host(fwd.kl), model.loss(x, eps, beta=beta)


def check_neg_elbo(neg_elbo):
    """Grade exercise 07.3: ``neg_elbo(x, logits, mu, logvar, beta=1.0)`` is npvae's training loss,
    ``model.loss(x, eps, beta)``, for the batch that ``model.forward(x, eps)`` gives."""
    for beta in (1.0, 0.25, 3.0):
        args, log_p, kl, want = _loss_case(beta)
        got = call(LOSS_EX, neg_elbo, *args) if beta == 1.0 else call(LOSS_EX, neg_elbo, *args, beta=beta)
        got = host(got, LOSS_EX, "the loss")
        n = log_p.shape[0]
        if got.shape != ():
            fail(LOSS_EX, f"return one number for the batch (the loss gradient descent lowers), not an array of shape "
                          f"{got.shape}: average the per-digit -ELBO over the {n} digits")
        slips = [
            (np.sum(-log_p + beta * kl), f"the loss is summed over the batch: slide 17 sums l_i over the data for the "
                                         f"total loss, but a batch's loss is the mean over its digits (npvae's, so that "
                                         f"the step size does not grow with the batch); a sum is {n} times larger"),
            (np.mean(log_p - beta * kl), "you returned the ELBO itself: the loss is its negative (gradient descent "
                                         "lowers the loss, and the ELBO is to be raised)"),
            (np.mean(log_p + beta * kl), "the reconstruction term has the wrong sign: a digit the decoder explains "
                                         "well (log P(x|z) near 0) must cost less than one it explains badly"),
            (np.mean(-log_p - beta * kl), "the KL term has the wrong sign: it is a penalty (slide 17's regularizer), "
                                          "so a Q further from the prior must cost more"),
            (np.mean(-beta * log_p + kl), "beta multiplies the reconstruction term: it weighs the KL term (a "
                                          "beta-VAE's beta > 1 pulls Q harder towards the prior)"),
            (np.mean(-log_p + kl), f"beta is ignored: with beta = {beta:g} the KL term is weighed by beta"),
        ]
        if not np.isclose(got, want, rtol=1e-10, atol=1e-10):
            for value, message in slips:
                if np.isclose(got, value, rtol=1e-10, atol=1e-10):
                    fail(LOSS_EX, message)
            compare(LOSS_EX, got, want, f"the loss with beta = {beta:g} (npvae's model.loss gives {want:.6f})")
    passed(LOSS_EX, "your -ELBO equals npvae's model.loss on 64 test digits through a small VAE, with beta = 1, "
                    "0.25 and 3 (to 1e-10 relative)")


# ---------------------------------------------------------------------------------------
# 07.4: the capstone: npvae.fit on the student's own functions
# ---------------------------------------------------------------------------------------
CAPSTONE_EX = "07.4"
YOURS = {  # the name npvae.replaced knows -> the exercise whose function it runs
    "distributions.reparameterize": "02.1", "distributions.reparameterize_backward": "02.2",
    "distributions.bernoulli_log_likelihood": "03.1", "distributions.bernoulli_log_likelihood_backward": "03.2",
    "distributions.gaussian_kl": "04.1", "distributions.gaussian_kl_backward": "04.2",
    "layers.Dense.backward": "07.1", "optim.Adam.step": "07.2",
}
# Float32 training: the same sums done in another order (xp.sqrt(xp.exp(logvar)) for exp(logvar / 2), Adam's
# efficient form) round differently, by about 1e-7 relative per operation, and 32 Adam steps carry that
# into the test -ELBO: measured 1e-7 relative for right answers written another way (tests/test_graders.py).
# The slips tried move it far more (a Dense backward that binds new arrays: 550 against 310 nats). The bound
# sits between, with room for other BLAS libraries and GPUs: 1e-3 relative.
CAPSTONE_RTOL = 1e-3
HINTS = {
    "layers.Dense.backward": "write dW and db into the layer's own arrays, self.dW[...] = ... and self.db[...] = ... "
                             "(they are views of the model's gradient vector, which the optimizer reads; an array "
                             "bound to self.dW instead is never seen), and return dx only when need_dx; exercise "
                             "07.1's grader says more",
    "optim.Adam.step": "count the step (self.t += 1 first, t = 1 at the first step), use self.lr, self.beta1, "
                       "self.beta2 and self.eps, and update self.params in place (self.params -= ...: it is the "
                       "model's parameter vector); exercise 07.2's grader says more",
}


def _capstone_run(functions=None):
    """Test -ELBO after each of 2 epochs of npvae.fit (float32, seed 0, 2,048 training digits,
    784-64-8), on npvae's textbook functions or inside npvae.replaced(functions)."""
    from ..datasets import load
    from ..replaceable import replaced, textbook
    from ..train import fit
    from ..vae import VAE

    (x_train, _), (x_test, _) = load()
    model = VAE(784, (64,), 8, seed=0)
    with textbook(), replaced(functions or {}):
        history = fit(model, x_train[:2048], x_test[:500], epochs=2, batch_size=128, seed=0, progress=False)
    return np.array(history.column("test_loss"), dtype=np.float64)


def _counted(mine):
    """The student's functions, each counting its calls in ``calls[exercise]``."""
    calls = dict.fromkeys(mine, 0)

    def wrap(exercise, f):
        def run(*args, **kwargs):
            calls[exercise] += 1
            return f(*args, **kwargs)
        run.__name__ = getattr(f, "__name__", "function")
        return run

    return {e: wrap(e, f) for e, f in mine.items()}, calls


def _differs(got, want):
    return not (np.all(np.isfinite(got)) and np.allclose(got, want, rtol=CAPSTONE_RTOL, atol=0))


def _train_on(functions, what):
    """_capstone_run(functions); a stub's NotImplementedError passes through, any other error is reported."""
    try:
        return _capstone_run(functions)
    except NotImplementedError:
        raise
    except Exception as exc:
        fail(CAPSTONE_EX, f"npvae.fit on {what} raised {type(exc).__name__}: {exc}")


def check_capstone(my_replacements, mine=None):
    """Grade exercise 07.4: ``my_replacements(mine)`` returns npvae.replaced's {name: function} made
    from ``mine``, the student's functions of exercises 02.1-07.2 keyed by exercise (read from
    the notebooks in the working folder when not given, ``npvae.exercises.load``). Two epochs of
    npvae.fit on them give npvae's test -ELBO (to CAPSTONE_RTOL); otherwise each is run alone to
    say which one differs."""
    if mine is None:
        from ..exercises import load
        mine = load(sorted(set(YOURS.values())))
    counted, calls = _counted(mine)
    functions = call(CAPSTONE_EX, my_replacements, counted)
    if not isinstance(functions, dict):
        fail(CAPSTONE_EX, f"return a dict {{name: function}} for npvae.replaced, got {type(functions).__name__}")
    missing = [name for name in YOURS if name not in functions]
    if missing:
        fail(CAPSTONE_EX, f"your dict lacks {missing[0]!r} (from exercise {YOURS[missing[0]]}): training must run "
                          f"all of {', '.join(YOURS)}")
    reference = _train_on(None, "npvae's functions")
    got = _train_on(functions, "your functions")
    unused = [name for name in YOURS if calls[YOURS[name]] == 0]
    if unused:
        fail(CAPSTONE_EX, f"your {unused[0]} never called your function of exercise {YOURS[unused[0]]}: npvae.fit "
                          f"must run your own code")
    if _differs(got, reference):
        alone = [name for name in YOURS if _differs(_train_on({name: functions[name]}, f"your {name} alone"), reference)]
        shown = f"{got[-1]:.4f}" if np.isfinite(got[-1]) else "not finite"
        where = (f"run alone, your {' and your '.join(alone)} "
                 f"{'gives' if len(alone) == 1 else 'give'} the difference" if alone else
                 "no one of your functions differs alone: they differ together")
        hint = "; ".join(HINTS[name] for name in alone if name in HINTS)
        fail(CAPSTONE_EX, f"the test -ELBO after 2 epochs on your functions is {shown}, npvae's is {reference[-1]:.4f} "
                          f"(bound {CAPSTONE_RTOL:g} relative): {where}" + (f" ({hint})" if hint else
                          f" (its exercise's grader checks the function itself; see how you wired it)"))
    err = float(np.max(np.abs(got - reference) / np.abs(reference)))
    passed(CAPSTONE_EX, f"npvae.fit on your 8 functions: test -ELBO {got[-1]:.4f} after 2 epochs, npvae's "
                        f"{reference[-1]:.4f} (relative difference {err:.1e}, bound {CAPSTONE_RTOL:g})")
