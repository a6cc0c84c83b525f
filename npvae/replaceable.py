"""Where speed plugs in: a textbook function marked ``@replaceable`` may be replaced, for the
arrays of one library, by a faster function that computes the same thing.

The teaching modules (``layers``, ``distributions``, ``vae``, ``optim``) hold the math, once,
in plain ``xp`` code. A few of those functions are hot in training; ``npvae.fast`` (which the
teaching modules never import) registers faster versions of them, one per array library::

    @replaceable                          # in npvae/distributions.py: the textbook
    def gaussian_kl(mu, logvar): ...

    register(gaussian_kl, "cupy", fused_kl)   # in npvae/fast/: the same KL, one GPU kernel

A call looks at the library of its first array argument ("numpy", "cupy", ...) and runs the
replacement registered for it, if any and if replacements are on; otherwise the textbook
function runs. Replacements are off:

- for the whole process when ``NPVAE_FAST=0`` (``npvae`` then never imports ``npvae.fast``,
  so nothing is registered and every step runs exactly the textbook code). ``NPVAE_FAST`` is
  read once, at import, by ``fast_setting``: ``1`` (the default, also when unset or empty) or
  ``0``; ``true``/``on``/``yes`` mean 1 and ``false``/``off``/``no`` mean 0 (any case, spaces
  around ignored). Any other value is refused: ``import npvae`` raises ValueError;
- inside ``with textbook(): ...`` (``npvae.textbook()``), for the code in the block.

``active()`` lists what is registered. The tests check that every replacement equals its
textbook function on the shapes and dtypes training uses.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import os

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
_TABLE: dict = {}  # "module.function" -> {library name: replacement}
_ON = [FAST]


def replaceable(fn):
    """Mark ``fn`` as replaceable: the call runs ``fn`` unless a replacement is registered for
    the library of its first array argument (see the module docstring)."""
    name = f"{fn.__module__.removeprefix('npvae.')}.{fn.__qualname__}"
    table = _TABLE.setdefault(name, {})

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if table and _ON[0]:
            faster = table.get(_library(args))
            if faster is not None:
                return faster(*args, **kwargs)
        return fn(*args, **kwargs)

    call.textbook = fn  # the function as written, always
    call.replaceable_name = name
    return call


def register(function, library, replacement):
    """Run ``replacement`` instead of the ``@replaceable`` ``function`` for arrays of
    ``library`` ("numpy" or "cupy")."""
    _TABLE[function.replaceable_name][library] = replacement


def replacement(function, library):
    """The function registered to replace ``function`` for ``library``, or None."""
    return _TABLE[function.replaceable_name].get(library)


def active() -> dict:
    """{"module.function": [libraries with a replacement]} for what is registered and on."""
    if not _ON[0]:
        return {}
    return {name: sorted(libs) for name, libs in _TABLE.items() if libs}


@contextlib.contextmanager
def textbook():
    """``with npvae.textbook(): ...`` runs the block with every replacement off."""
    before = _ON[0]
    _ON[0] = False
    try:
        yield
    finally:
        _ON[0] = before


_LIBRARIES: dict = {}  # type -> library name ("" for none), learned on first sight


def _library(args) -> str | None:
    """The library of the first array among ``args`` ("numpy", "cupy", "array_api_strict"),
    or the name of the first ``npvae.backend.Backend`` among them."""
    for a in args:
        library = _LIBRARIES.get(type(a))
        if library is None:
            library = _LIBRARIES[type(a)] = _learn(type(a))
        if library == "Backend":
            return a.name  # npvae.backend.Backend: "numpy", "cupy" or "strict"
        if library:
            return library
    return None


def _learn(kind) -> str:
    if issubclass(kind, numbers.Number):  # Python and NumPy scalars: not arrays, whatever they carry
        return ""
    if hasattr(kind, "__array_namespace__"):
        return kind.__module__.split(".")[0]
    return "Backend" if kind.__name__ == "Backend" else ""
