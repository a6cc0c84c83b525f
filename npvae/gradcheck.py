"""Gradient checking: compare a hand-written gradient with central differences.

For a scalar function f of a vector x, the central difference

    df/dx_i  ~  ( f(x + h e_i) - f(x - h e_i) ) / (2 h)

has error O(h^2) from truncation plus O(machine-eps * |f| / h) from rounding; in float64
with h = 1e-5 both are far below 1e-6 relative, so a correct backward agrees to about 1e-8
and a wrong one is off by far more. (In float32 rounding alone is about 1e-3: check in
float64.)

- ``rel_error(a, b)``: the number to look at; ``assert_gradients_match`` for tests.
- ``numerical_gradient(f, x)``: central differences, every entry or a chosen few.
- ``directional_check(f, x, grad)``: one random direction v: compares
  (f(x + h v) - f(x - h v)) / 2h with grad . v, which tests every entry at once for the cost
  of two evaluations (as ``jax.test_util.check_grads`` does).
- ``check_model(model, x, eps)``: every parameter block of a VAE, with a per-block report.

A NaN or inf anywhere (in the analytic gradient, the central differences, the loss) fails
the check: every error here is NaN when its inputs are not finite, and NaN is never "small
enough" (beware: Python's ``max`` skips a NaN that is not its first argument, and
``nan > tol`` is False, so each comparison below asks for a finite error explicitly).

This module works at the host edge: it perturbs one entry at a time through the backend's
arrays, and collects the differences and compares gradients in host NumPy arrays (a
finite-difference check is a few hundred scalar evaluations, never a hot loop).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import numpy as np

from .backend import array_namespace, copy, get_backend, to_numpy


def rel_error(a, b) -> float:
    """max_i |a_i - b_i| / max(1e-8, max_i (|a_i| + |b_i|)).

    Scaled by the largest entry rather than entry by entry: an entry whose true value is zero
    up to rounding would otherwise make a correct gradient look wrong. Check each parameter
    block on its own (``check_model`` does) so a small block is not hidden by a large one.
    Around 1e-8 or less in float64 is right; above 1e-6 something is wrong. NaN if any entry
    of a or b is NaN or inf: no finite number describes how far off such a gradient is.
    """
    a = np.asarray(to_numpy(a), dtype=np.float64)
    b = np.asarray(to_numpy(b), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"b: expected shape {a.shape} (the shape of a), got {b.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(1e-8, float(np.max(np.abs(a) + np.abs(b)))))


def assert_gradients_match(analytic, numeric, rtol=1e-6, atol=1e-9, name="gradient"):
    """Raise AssertionError unless ``rel_error(analytic, numeric) <= rtol``.

    One exception: when the whole gradient is at rounding level (every |a - b| <= atol, as
    when the true gradient is 0 and the central difference returns 1e-12), the relative error
    measures only noise, and the gradients match. A NaN or inf in either always raises.
    """
    err = rel_error(analytic, numeric)
    if not math.isfinite(err):
        counts = f"analytic {_count_nonfinite(analytic)}, numeric {_count_nonfinite(numeric)}"
        raise AssertionError(f"{name}: relative error {err} (entries that are NaN or inf: {counts})")
    diff = float(np.max(np.abs(to_numpy(analytic) - to_numpy(numeric)), initial=0.0))
    if err > rtol and diff > atol:
        raise AssertionError(f"{name}: relative error {err:.2e} > {rtol:g} (largest difference {diff:.2e})")
    return err


def _count_nonfinite(g) -> int:
    """How many entries of g are NaN or +-inf."""
    return int(np.sum(~np.isfinite(np.asarray(to_numpy(g), dtype=np.float64))))


def numerical_gradient(f, x, h=1e-5, indices=None) -> np.ndarray:
    """Central differences of the scalar function ``f()`` with respect to the array ``x``.

    ``x`` is changed in place, one entry at a time, and restored; ``f`` takes no arguments
    and must read ``x`` (for a model: ``x`` is ``model.params``). ``x`` may have any shape
    and lives on any backend.

    Args:
        f: callable returning a number (or a 0-d array).
        x: the array to differentiate against (contiguous, so its flat view writes through).
        h: the step.
        indices: flat indices to check; None checks every entry.
    Returns:
        host float64 array: x's shape when ``indices`` is None, else (len(indices),).
    """
    xp = array_namespace(x)
    flat = xp.reshape(x, (-1,))  # a view: writing flat[i] changes x
    all_entries = indices is None
    indices = range(flat.shape[0]) if all_entries else [int(i) for i in indices]
    grad = np.zeros(len(indices))
    for k, i in enumerate(indices):
        old = float(flat[i])
        flat[i] = old + h
        f_plus = float(f())
        flat[i] = old - h
        f_minus = float(f())
        flat[i] = old
        grad[k] = (f_plus - f_minus) / (2.0 * h)
    return grad.reshape(tuple(x.shape)) if all_entries else grad


def directional_check(f, x, grad, h=1e-5, seed=0):
    """Compares the directional derivative along one random unit vector v.

        numeric  = ( f(x + h v) - f(x - h v) ) / (2 h)
        analytic = sum_i grad_i v_i

    Returns (numeric, analytic, relative error |numeric - analytic| / max(1e-8, |numeric| +
    |analytic|)); the error is NaN when either number is NaN or inf (a non-finite loss or a
    non-finite entry of ``grad``). ``x`` is changed in place and restored; ``grad`` has x's
    shape.
    """
    v_host = np.random.default_rng(seed).standard_normal(tuple(x.shape))
    v_host /= np.linalg.norm(v_host)
    x0 = copy(x)
    be = get_backend()
    v = be.asarray(v_host.astype(be.dtype_name(x.dtype)))
    x[...] = x0 + h * v
    f_plus = float(f())
    x[...] = x0 - h * v
    f_minus = float(f())
    x[...] = x0
    numeric = (f_plus - f_minus) / (2.0 * h)
    analytic = float(np.sum(to_numpy(grad).astype(np.float64) * v_host))
    if not (math.isfinite(numeric) and math.isfinite(analytic)):
        return numeric, analytic, float("nan")
    return numeric, analytic, abs(numeric - analytic) / max(1e-8, abs(numeric) + abs(analytic))


DIRECTIONAL = "directional (all entries)"  # the directional check's name in reports
LOSS = "loss"  # a non-finite loss from loss_and_grads, in reports


@dataclass
class GradcheckReport:
    """Per-block relative errors of a model's gradient; ``str()`` prints a table.

    An error that is NaN or inf (from a NaN or inf in either gradient or in the loss) counts
    as a failure at every tolerance, and makes ``max_error`` NaN (or inf).
    """

    errors: dict = field(default_factory=dict)  # block name -> relative error
    checked: dict = field(default_factory=dict)  # block name -> entries checked
    sizes: dict = field(default_factory=dict)  # block name -> entries in the block
    directional: float = float("nan")  # relative error of the directional check
    # The loss that came with the analytic gradient (set by check_model; None: not known).
    # Not a dataclass field, so the constructor is unchanged. Only its finiteness is checked.
    loss = None

    def _all_errors(self) -> dict:
        """name -> error for every check made: the blocks, the directional check, and the
        loss (as NaN) when it is not finite."""
        out = {**self.errors, DIRECTIONAL: self.directional}
        if self.loss is not None and not math.isfinite(self.loss):
            out[LOSS] = float("nan")
        return out

    @property
    def max_error(self) -> float:
        """The largest error; NaN if any error is NaN, else inf if any is inf.
        (``np.max`` propagates NaN; Python's ``max`` would skip one that is not first.)"""
        return float(np.max(np.asarray(list(self._all_errors().values()), dtype=np.float64)))

    def failed(self, tol=1e-6) -> list[str]:
        """The names of the checks that fail at ``tol``, in table order: each block whose
        error is NaN, inf or > tol, then ``"directional (all entries)"`` if the directional
        check fails, then ``"loss"`` if the loss was NaN or inf. Empty when all pass."""
        return [name for name, err in self._all_errors().items() if not (math.isfinite(err) and err <= tol)]

    def passed(self, tol=1e-6) -> bool:
        """True when every error is finite and <= tol."""
        return not self.failed(tol)

    def __str__(self):
        width = max([len(n) for n in self.errors] + [len(DIRECTIONAL)])
        lines = [f"{'block':<{width}}  {'checked':>15}  {'rel. error':>10}"]
        for name, err in self.errors.items():
            frac = f"{self.checked[name]}/{self.sizes[name]}"
            lines.append(f"{name:<{width}}  {frac:>15}  {err:10.2e}")
        lines.append(f"{DIRECTIONAL:<{width}}  {'1 direction':>15}  {self.directional:10.2e}")
        if self.loss is not None and not math.isfinite(self.loss):
            lines.append(f"{LOSS:<{width}}  {'value':>15}  {self.loss:>10}")
        return "\n".join(lines)


def check_model(model, x, eps, beta=1.0, h=1e-5, max_entries_per_block=None, seed=0,
                progress=False) -> GradcheckReport:
    """Gradient check of ``model.loss_and_grads(x, eps)`` against central differences of
    ``model.loss(x, eps)``, which runs the forward pass alone (no backward), block by block.

    Use a float64 model. ``eps`` must be given (the noise has to be the same in every
    evaluation). ``max_entries_per_block=None`` checks every entry; a number checks that many
    entries of each block, chosen at random with ``seed`` (for large models). A directional
    check over all entries is added. A block with a NaN or inf anywhere in its analytic
    gradient, checked entry or not, gets error NaN; so does one whose central differences
    are not finite. A NaN or inf loss is recorded in ``report.loss`` and fails the report.
    ``progress=True`` shows a tqdm bar of the entries checked when stderr is a terminal.
    """
    from tqdm import tqdm

    res = model.loss_and_grads(x, eps=eps, beta=beta)
    analytic = to_numpy(res.grads).astype(np.float64)  # a copy: model.grads is reused
    loss = res.loss

    def f():
        return model.loss(x, eps, beta=beta)

    rng = np.random.default_rng(seed)
    report = GradcheckReport()
    report.loss = loss
    chosen = {}  # block name -> the flat indices to check
    for name, a, b, _shape in model.blocks:
        size = b - a
        if max_entries_per_block is None or max_entries_per_block >= size:
            chosen[name] = np.arange(a, b)
        else:
            chosen[name] = a + np.sort(rng.choice(size, size=int(max_entries_per_block), replace=False))
    total = sum(len(idx) for idx in chosen.values())
    bar = tqdm(total=total, desc="gradcheck", unit="entries", disable=not (progress and sys.stderr.isatty()))
    for name, a, b, _shape in model.blocks:
        idx, numeric = chosen[name], []
        for i in range(0, len(idx), 256):  # a few hundred entries at a time, for the bar
            numeric.append(numerical_gradient(f, model.params, h=h, indices=idx[i : i + 256]))
            bar.update(len(numeric[-1]))
        numeric = np.concatenate([np.zeros(0), *numeric])
        finite = bool(np.all(np.isfinite(analytic[a:b])))  # the whole block, not only idx
        report.errors[name] = rel_error(analytic[idx], numeric) if finite else float("nan")
        report.checked[name], report.sizes[name] = len(idx), b - a
    bar.close()
    report.directional = directional_check(f, model.params, analytic, h=h, seed=seed)[2]
    return report
