"""Graders for the notebooks' exercises: the same checks the library's own tests use.

Each notebook that has exercises has a module here (``nb02``, ``nb03``, ...) with one
``check_<function>(student_function)`` per exercise. A check runs the student's function on
random inputs and compares it with npvae's own function as written (``fn.textbook``, never
a replacement from ``npvae.fast``), runs a gradient check (central differences, float64)
where the function is a backward, and a statistical test where it is a sampler. It prints
one line when everything holds, and otherwise raises ``ExerciseFailed`` with what is wrong in
words (for example "you used exp(logvar) as the standard deviation").

Every check runs the student's function through ``call``, which protects the grader's inputs
and the exercise itself: the function gets copies of the arrays, and one that changes an
argument in place is refused by that argument's name ("your function modified `mu` in place");
while it runs, npvae's own answer to the exercise (``LIBRARY_ANSWERS``) is watched for, and a
function that calls it, by any name (``npvae.distributions.reparameterize``, a name imported
before the grader ran, ``.textbook``, a fast replacement), is told to write it itself.

The helpers below are what the checks share.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import sys

import numpy as np

from ..backend import asarray, copy, library_of, to_numpy
from ..gradcheck import numerical_gradient, rel_error

# npvae's own function that each exercise asks the student to write (npvae.<module>.<name>).
LIBRARY_ANSWERS = {
    "02.1": "distributions.reparameterize", "02.2": "distributions.reparameterize_backward",
    "03.1": "distributions.bernoulli_log_likelihood", "03.2": "distributions.bernoulli_log_likelihood_backward",
    "03.3": "distributions.gaussian_log_likelihood", "04.1": "distributions.gaussian_kl",
    "04.2": "distributions.gaussian_kl_backward", "07.1": "layers.Dense.backward", "07.2": "optim.Adam.step",
    "07.3": "vae.VAE.loss", "08.2": "distributions.full_gaussian_kl", "10.1": "vae.log_mean_exp_backward",
}


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


def call(exercise, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, the student's function, run as every grader runs it.

    It gets copies of the array arguments, and fails, naming the argument as ``fn`` names it,
    when it changed one in place; it fails when it called npvae's own answer to ``exercise``;
    the stub's NotImplementedError passes through, and any other error is reported in words."""
    given = [*zip(_parameter_names(fn, len(args)), args), *kwargs.items()]
    copies = [copy(a) if library_of(a) else a for _, a in given]
    error = None
    with _watching(exercise) as called:
        try:
            result = fn(*copies[: len(args)], **dict(zip(kwargs, copies[len(args):])))
        except NotImplementedError:
            raise
        except Exception as exc:
            error = exc
    if called:
        fail(exercise, f"write it yourself; your function called {called[0]}")
    if error is not None:
        fail(exercise, f"your function raised {type(error).__name__}: {error}")
    for (name, original), passed_in in zip(given, copies):
        if passed_in is not original and not _unchanged(original, passed_in):
            fail(exercise, f"your function modified `{name}` in place: leave the arguments as they came (the caller "
                           f"still needs them) and return new arrays, e.g. x = x - y rather than x -= y or x[...] = y")
    return result


def _parameter_names(fn, count):
    """The names ``fn`` gives its first ``count`` positional parameters ("argument 3" where it has none)."""
    try:
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        names = [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]
    except (TypeError, ValueError):  # no signature to read
        names = []
    return [names[i] if i < len(names) else f"argument {i + 1}" for i in range(count)]


def _unchanged(before, after):
    a, b = to_numpy(before), to_numpy(after)
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


@contextlib.contextmanager
def _watching(exercise):
    """A block in which npvae's answer to ``exercise`` is watched for: yields a list that gets its
    name ("npvae.distributions.reparameterize") when its code runs (the textbook code, whichever
    name reached it, or a fast replacement). sys.setprofile sees every Python call of this
    thread; a profiler set before is paused during the block and restored after it."""
    codes, called = _answer_codes(exercise), []

    def watch(frame, event, arg):
        if event == "call" and id(frame.f_code) in codes:
            called.append(codes[id(frame.f_code)])

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        yield called
    finally:
        sys.setprofile(previous)


def _answer_codes(exercise):
    """{id(code object): "npvae.module.name"} for npvae's answer to ``exercise``, its textbook
    function and its fast replacements; {} for an exercise without one."""
    path = LIBRARY_ANSWERS.get(exercise)
    if path is None:
        return {}
    module, _, name = path.partition(".")
    fn = importlib.import_module(f"npvae.{module}")
    for part in name.split("."):
        fn = getattr(fn, part)
    functions = [getattr(fn, "textbook", fn), *getattr(fn, "replacements", {}).values()]
    return {id(f.__code__): f"npvae.{path}" for f in functions if hasattr(f, "__code__")}


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
