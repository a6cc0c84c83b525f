"""Graders for the notebooks' exercises: the same checks the library's own tests use.

Each notebook that has exercises has a module here (``nb02``, ``nb03``, ...) with one
``check_<function>(student_function)`` per exercise. A check runs the student's function on
random inputs and compares it with npvae's own function as written (``fn.textbook``, never
a replacement from ``npvae.fast``), runs a gradient check (central differences, float64)
where the function is a backward, and a statistical test where it is a sampler. It prints
one line when everything holds, and otherwise raises ``ExerciseFailed`` with what is wrong in
words (for example "you used exp(logvar) as the standard deviation").

The helpers below are what the checks share.
"""

from __future__ import annotations

import numpy as np

from ..backend import asarray, to_numpy
from ..gradcheck import numerical_gradient, rel_error


class ExerciseFailed(AssertionError):
    """A grader's verdict: the message says which exercise and what is wrong."""


def fail(exercise, message):
    raise ExerciseFailed(f"Exercise {exercise}: {message}")


def passed(exercise, what):
    print(f"Exercise {exercise} passed: {what}")


def inputs(seed, *shapes, low=-2.0, high=2.0):
    """Random float64 arrays on the active backend, uniform in [low, high), one per shape."""
    rng = np.random.default_rng(seed)
    return [asarray(rng.uniform(low, high, size=shape), dtype="float64") for shape in shapes]


def call(exercise, fn, *args):
    """``fn(*args)``; a NotImplementedError (the stub) or any other error is reported in words."""
    try:
        return fn(*args)
    except NotImplementedError:
        raise
    except Exception as exc:
        fail(exercise, f"your function raised {type(exc).__name__}: {exc}")


def host(a, exercise=None, what="the result"):
    """``a`` as a float64 host array; a non-array is reported."""
    try:
        return np.asarray(to_numpy(a), dtype=np.float64)
    except Exception:
        fail(exercise, f"{what}: expected an array, got {type(a).__name__}")


def compare(exercise, got, want, what, rtol=1e-10, atol=1e-12):
    """Fail unless ``got`` has ``want``'s shape and values (to rtol, atol)."""
    got, want = host(got, exercise, what), host(want, exercise, what)
    if got.shape != want.shape:
        fail(exercise, f"{what}: expected shape {want.shape}, got {got.shape}")
    if not np.all(np.isfinite(got)):
        fail(exercise, f"{what}: has NaN or inf entries where the right answer is finite")
    if not np.allclose(got, want, rtol=rtol, atol=atol):
        worst = float(np.max(np.abs(got - want)))
        fail(exercise, f"{what}: differs from the right answer by up to {worst:.3g} (relative error "
                       f"{rel_error(got, want):.2e})")


def gradient_check(exercise, f, x, analytic, what, rtol=1e-6, of=None):
    """Fail unless ``analytic`` matches central differences of the scalar ``f()`` w.r.t. ``x``;
    ``of`` says in words what f is, for the message."""
    analytic = host(analytic, exercise, what)
    numeric = numerical_gradient(f, x)
    if analytic.shape != numeric.shape:
        fail(exercise, f"{what}: expected shape {numeric.shape}, got {analytic.shape}")
    err = rel_error(analytic, numeric)
    if not err <= rtol:
        fail(exercise, f"{what}: the gradient check fails: relative error {err:.2e} against central "
                       f"differences{' of ' + of if of else ''} (a right backward gives about 1e-10; the bound "
                       f"is {rtol:g})")
    return err
