"""Writing files so that an interruption never destroys what was there before.

``atomic_open(path)`` writes into a temporary file in the same folder and renames it over
``path`` only when the writing finished (``os.replace`` is atomic on POSIX and Windows). On
any error the temporary file is removed and ``path`` is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """``with atomic_open("run/checkpoint.npz") as f: ...``: all of the file or none of it."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
