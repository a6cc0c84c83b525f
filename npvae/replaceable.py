"""Where speed plugs in: a textbook function marked ``@replaceable`` may be replaced, for the
arrays of one library, by a faster function that computes the same thing.

The teaching modules (``layers``, ``distributions``, ``vae``, ``optim``) hold the math, once,
in plain ``xp`` code. A few of those functions are hot in training; ``npvae.fast`` (which the
teaching modules never import) registers faster versions of them, one per array library::

    @replaceable                          # in npvae/distributions.py: the textbook
    def gaussian_kl(mu, logvar): ...

    register(gaussian_kl, "cupy", fused_kl)   # in npvae/fast/: the same KL, one GPU kernel

A call looks at the library of its array arguments ("numpy", "cupy", ...; arrays of two
libraries are refused with a TypeError) and runs the replacement registered for it, if any and
if replacements are on; otherwise the textbook function runs. A replaced function says so: its
docstring (what ``help()`` and ``?`` show) and its repr begin with the replacement's name.

Replacements are on by default, for training (``npvae.fit``, ``npvae train``) and the
benchmarks. Where a student works they are off: every notebook's setup cell calls
``npvae.textbook()``, the exercise graders compare with ``fn.textbook`` (the function as
written) inside ``textbook()``, and the math tests run inside it. They are off:

- for the whole process when ``NPVAE_FAST=0`` (``npvae`` then never imports ``npvae.fast``,
  so nothing is registered and every step runs exactly the textbook code). ``NPVAE_FAST`` is
  read once, at import, by ``fast_setting``: ``1`` (the default, also when unset or empty) or
  ``0``; ``true``/``on``/``yes`` mean 1 and ``false``/``off``/``no`` mean 0 (any case, spaces
  around ignored). Any other value is refused: ``import npvae`` raises ValueError;
- in the current context after ``npvae.textbook()`` (a notebook cell: the rest of the
  session), or for a block: ``with npvae.textbook(): ...``. The switch is a ``ContextVar``:
  other threads keep their own; ``npvae.textbook(False)`` turns the replacements back on.

``active()`` lists what is registered and on. The tests check that every replacement equals
its textbook function on the shapes and dtypes training uses.

A student's own functions run in place of npvae's inside ``with npvae.replaced({name: f})``
(``replaced``): every function of ``layers``, ``distributions`` and ``optim`` that training
calls is ``@replaceable``, and a function given there runs first, for arrays of any library,
ahead of the fast paths and of ``textbook()``; another ``ContextVar`` holds them, so the block
ends them (also on an exception) and other threads never see them.
"""

from __future__ import annotations

import contextvars
import difflib
import functools
import inspect
import os
import sys
import types

from .backend import library_of

FAST_ON = ("1", "true", "on", "yes")
FAST_OFF = ("0", "false", "off", "no")


def fast_setting(value) -> bool:
    """``NPVAE_FAST``'s value (a string, or None when unset) as True (fast paths on) or False.

    Unset, empty or blank means on; the words of ``FAST_ON`` and ``FAST_OFF`` count in any case
    with spaces around; anything else raises ValueError, in one line."""
    word = (value or "").strip().lower() or "1"
    if word in FAST_ON or word in FAST_OFF:
        return word in FAST_ON
    raise ValueError(f"NPVAE_FAST: expected 1 (the fast paths, the default) or 0 (exactly the textbook code); "
                     f"{'/'.join(FAST_ON[1:])} also mean 1 and {'/'.join(FAST_OFF[1:])} mean 0; got {value!r}")


FAST = fast_setting(os.environ.get("NPVAE_FAST"))  # NPVAE_FAST, read once; a bad value stops the import
_ON = contextvars.ContextVar("npvae_replacements_on", default=FAST)
_GIVEN = contextvars.ContextVar("npvae_replaced", default=None)  # "module.function" -> a function given to replaced
_FUNCTIONS: dict = {}  # "module.function" -> its Replaceable
_LIBRARY_NAMES = {"numpy": "NumPy", "cupy": "CuPy"}  # as the docstrings spell them; in this order


class Replaceable:
    """A textbook function (or method) marked ``@replaceable``: calling it runs the replacement
    registered for the library of its arrays, if any and if the replacements are on here;
    otherwise ``textbook``, the function as written."""

    def __init__(self, fn):
        functools.update_wrapper(self, fn)  # name, docstring, signature (through __wrapped__)
        self.textbook = fn
        self.replaceable_name = f"{fn.__module__.removeprefix('npvae.')}.{fn.__qualname__}"
        self.replacements = {}  # library -> the function that runs instead
        self.note = ""  # one line naming the replacements, at the top of the docstring and in the repr
        _FUNCTIONS[self.replaceable_name] = self

    def __call__(self, *args, **kwargs):
        given = _GIVEN.get()
        if given is not None and self.replaceable_name in given:  # inside npvae.replaced: the function given runs
            return _run_given(self.replaceable_name, given, args, kwargs)
        library = self.library(args, kwargs)
        if self.replacements and _ON.get():
            faster = self.replacements.get(library)
            if faster is not None:
                return faster(*args, **kwargs)
        return self.textbook(*args, **kwargs)

    def __get__(self, obj, owner=None):  # a method: layer.backward(...) passes the layer first
        return self if obj is None else types.MethodType(self, obj)

    def __repr__(self):
        return f"<textbook function {self.replaceable_name}{': ' + self.note if self.note else ''}>"

    def library(self, args, kwargs=None):
        """The one library of the arrays among the arguments (None when there are none); a
        TypeError, in one line, when they come from two libraries."""
        found = None
        for a in (*args, *kwargs.values()) if kwargs else args:
            library = library_of(a)
            if library is not None and library != found:
                if found is not None:
                    raise TypeError(f"{self.replaceable_name}: arrays of two libraries, "
                                    f"{' and '.join(sorted((found, library)))}; put them on one backend (npvae.asarray)")
                found = library
        return found

    def _describe(self):
        """The note: which function runs instead, for which arrays, and how to run this code."""
        rank = list(_LIBRARY_NAMES)
        by_function = {}  # replacement -> the names of its libraries, NumPy first, then CuPy
        for library in sorted(self.replacements, key=lambda lib: (rank.index(lib) if lib in rank else len(rank), lib)):
            by_function.setdefault(self.replacements[library], []).append(_LIBRARY_NAMES.get(library, library))
        if not by_function:
            return ""
        parts = [f"for {' and '.join(libraries)} arrays, {f.__module__}.{f.__qualname__}"
                 for f, libraries in by_function.items()]
        return (f"{parts[0][0].upper()}{parts[0][1:]} runs instead{''.join(', ' + p for p in parts[1:])} "
                f"(the same results, faster); npvae.textbook() or NPVAE_FAST=0 runs this code.")


def replaceable(fn):
    """Mark ``fn`` as replaceable (see the module docstring)."""
    return Replaceable(fn)


def register(function, library, replacement):
    """Run ``replacement`` instead of the ``@replaceable`` ``function`` for arrays of
    ``library`` ("numpy" or "cupy"); None removes the one registered. The function's
    docstring and repr name what is registered."""
    if replacement is None:
        function.replacements.pop(library, None)
    else:
        function.replacements[library] = replacement
    function.note = function._describe()
    function.__doc__ = "\n\n".join(filter(None, (function.note, inspect.cleandoc(function.textbook.__doc__ or ""))))


def replacement(function, library):
    """The function registered to replace ``function`` for ``library``, or None."""
    return function.replacements.get(library)


def active() -> dict:
    """{"module.function": [libraries with a replacement]} for what is registered and on here."""
    if not _ON.get():
        return {}
    return {name: sorted(f.replacements) for name, f in _FUNCTIONS.items() if f.replacements}


class textbook:
    """Turn npvae.fast's replacements off in the current context, so that every ``@replaceable``
    function runs as written: ``npvae.textbook()`` for the rest of it (in a notebook: the
    cells that follow), ``with npvae.textbook(): ...`` for a block. ``textbook(False)`` turns
    them back on (unless NPVAE_FAST=0). Other threads are not affected."""

    def __init__(self, on=True):
        self._token = _ON.set(FAST and not on)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        _ON.reset(self._token)


def _run_given(name, given, args, kwargs):
    """Call the function given for ``name`` in ``replaced``; while it runs, a call of npvae's
    ``name`` (which would run it again, without end) is refused."""
    token = _GIVEN.set({**given, name: functools.partial(_calls_itself, name)})
    try:
        return given[name](*args, **kwargs)
    finally:
        _GIVEN.reset(token)


def _calls_itself(name, *args, **kwargs):
    raise RuntimeError(f"npvae.replaced: the function given for {name} calls npvae's {name}, which it replaces "
                       f"inside the block; compute it without calling it")


class replaced:
    """Run the given functions in place of npvae's of those names inside the block::

        with npvae.replaced({"distributions.gaussian_kl": my_kl, "layers.Dense.backward": my_backward}):
            npvae.fit(model, x_train, x_test, epochs=2)   # runs my_kl and my_backward

    A name is ``"module.function"`` or ``"module.Class.method"`` of ``layers``,
    ``distributions`` or ``optim``, one that training calls (or ``"vae.log_mean_exp_backward"``,
    the importance-weighted bound's backward, notebook 10's exercise); a method's function gets the
    object first (``my_backward(layer, dout, cache, need_dx=True)``). They run for arrays of
    every library, ahead of npvae.fast's replacements and of ``textbook()``. A block inside
    another adds to it; the end of the block (also by an exception) gives npvae's functions
    back; other threads are not affected. ``fn.textbook`` stays npvae's own function."""

    def __init__(self, functions):
        if not isinstance(functions, dict):
            raise TypeError(f"npvae.replaced: expected a dict {{name: function}}, got {type(functions).__name__}")
        self.functions = {_known(name): f for name, f in functions.items()}
        for name, f in self.functions.items():
            if not callable(f):
                raise TypeError(f"npvae.replaced: {name}: expected a function, got {type(f).__name__}")
        self._tokens = []

    def __enter__(self):
        self._tokens.append(_GIVEN.set({**(_GIVEN.get() or {}), **self.functions}))
        return self

    def __exit__(self, *exc):
        _GIVEN.reset(self._tokens.pop())


def _known(name):
    """``name`` as a key of ``_FUNCTIONS``, or a ValueError, in one line, that says why not."""
    if name in _FUNCTIONS:
        return name
    module, _, path = str(name).partition(".")
    teaching = module in ("layers", "distributions", "optim")
    found = sys.modules.get(f"npvae.{module}") if teaching else None
    for part in path.split(".") if found is not None and path else ():
        found = getattr(found, part, None)
    if isinstance(found, Replaceable):  # e.g. layers.sigmoid, imported from distributions
        return found.replaceable_name
    if callable(found):
        steps = ", ".join(n.partition(".")[2] for n in _FUNCTIONS if n.startswith(module + "."))
        raise ValueError(f"npvae.replaced: {name}: training never calls it; those of {module} it calls: {steps}")
    close = difflib.get_close_matches(str(name), _FUNCTIONS, n=3)
    hint = f"did you mean {' or '.join(map(repr, close))}?" if close else ""
    if not (close and teaching):  # say what a name is
        hint = "; ".join(filter(None, ("expected 'module.function' or 'module.Class.method' of layers, distributions "
                                       "or optim that training calls, e.g. 'distributions.gaussian_kl'", hint)))
    raise ValueError(f"npvae.replaced: unknown name {name!r}; {hint}")
