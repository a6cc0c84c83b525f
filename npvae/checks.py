"""Argument checks shared by every module: one place that says "expected ..., got ...".

Each check returns the value in a plain Python type, or raises a ``ValueError`` whose
message names the argument, what was expected and what came.
"""

from __future__ import annotations

import math
import os

import numpy as np


def is_integer(value) -> bool:
    """True for Python and NumPy integers, not for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_int(name, value, minimum=1) -> int:
    """``value`` as an int, or a ValueError naming ``name``, what was expected and what came."""
    if not is_integer(value) or value < minimum:
        kind = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    return int(value)


def check_real(name, value, minimum=None, strictly_above=None) -> float:
    """``value`` as a float (Python or NumPy real, not bool), or a ValueError naming ``name``:
    finite, and ``>= minimum`` / ``> strictly_above`` when those are given."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    try:
        ok = ok and math.isfinite(float(value))
    except OverflowError:  # an int too large for a float (JSON allows any)
        ok = False
    ok = ok and (minimum is None or float(value) >= minimum)
    ok = ok and (strictly_above is None or float(value) > strictly_above)
    if not ok:
        kind = ("a positive number" if strictly_above == 0 else "a non-negative number" if minimum == 0
                else "a finite number")
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    return float(value)


def check_seed(name, value):
    """A seed as a non-negative int, or None / a ``numpy.random.SeedSequence`` unchanged (both
    are what ``numpy.random`` takes), or a ValueError naming ``name``."""
    if value is None or isinstance(value, np.random.SeedSequence):
        return value
    if not is_integer(value) or value < 0:
        raise ValueError(f"{name}: expected a non-negative integer (or None for a random one), got {value!r}")
    return int(value)


def memory_bytes() -> int:
    """This machine's physical memory in bytes (0 if it cannot be told)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 0


def check_fits_in_memory(name, value, nbytes, detail=""):
    """A ValueError naming ``name`` (and its ``value``) when ``nbytes`` exceeds this machine's
    memory: asked before allocating, so a typo like ``--hidden 10000000000`` gets one clear
    line instead of a MemoryError (or the kernel's OOM killer) later. ``detail`` follows the
    size in the message (``npvae.vae.memory_estimate`` says what the bytes are)."""
    total = memory_bytes()
    if total and nbytes > total:
        raise ValueError(f"{name}: {value!r} needs {nbytes / 2**30:.1f} GiB{detail}, more than this machine's "
                         f"{total / 2**30:.1f} GiB of memory")


def one_line(text, limit=300) -> str:
    """``text`` on one line, cut to about ``limit`` characters (for an error message)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value, limit=60) -> str:
    """A short one-line repr of a value, perhaps read from a hostile file, for an error message."""
    return one_line(repr(value), limit)
