"""Writing files so that an interruption never destroys what was there before.

``atomic_open(path)`` writes into a temporary file in the same folder and renames it over
``path`` only when the writing finished (``os.replace`` is atomic on POSIX and Windows). On
any error the temporary file is removed and ``path`` is untouched. The new file gets the
permissions an ordinary ``open`` would give it (0666 less the umask), or those of the file it
replaces.

A process killed outright (SIGKILL, power loss) cannot remove its temporary file:
``remove_stale_parts(folder)`` deletes such leftovers (``.<name>.*.part``) once nothing is
writing there any more (``npvae train`` calls it after taking its folder's lock).

``open_regular(path, what)`` opens a file for reading only if it is a regular file: a FIFO,
a socket or a device is refused without being opened for reading (opening a FIFO waits for a
writer, for ever).

``interrupts_deferred()`` holds Ctrl-C (and SIGTERM) back for the few lines that write a set
of files that belong together (a checkpoint and its history), then delivers it;
``terminate_as_interrupt()`` makes SIGTERM raise ``Terminated``, a ``KeyboardInterrupt``.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import stat
import tempfile
import threading


@contextlib.contextmanager
def atomic_open(path, mode="wb", before_replace=None):
    """``with atomic_open("run/checkpoint.npz") as f: ...``: all of the file or none of it.

    ``before_replace()``, if given, is called once the new file is complete and synced, just
    before it is renamed over ``path`` (``npvae train --overwrite`` removes the old run's other
    files there). An ``OSError`` names ``path``, never the temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part")
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600 files
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        if isinstance(exc, OSError) and (exc.filename is None or exc.filename == tmp or exc.filename2 == tmp
                                         or (tmp is None and exc.filename != folder)):
            if exc.errno is None:
                raise OSError(f"{path}: {exc}") from None
            raise type(exc)(exc.errno, exc.strerror, path) from None
        raise


def _mode_for(path) -> int:
    """The permission bits of the file being replaced, else 0666 less the umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def remove_stale_parts(folder) -> list[str]:
    """Delete the temporary files that ``atomic_open`` left in ``folder`` when its process was
    killed; returns their paths. Call it only while no one else writes into ``folder``."""
    removed = []
    for part in glob.glob(os.path.join(glob.escape(os.fspath(folder)), ".*.part")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(part)
            removed.append(part)
    return removed


_SPECIAL = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
            (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def open_regular(path, what="file"):
    """``open(path, "rb")`` for a regular file (or a link to one); for anything else a
    ValueError "<path>: is a FIFO (named pipe), not a <what>", raised before the file is opened
    for reading. ``FileNotFoundError`` (or another OSError) when it cannot be opened."""
    path = os.fspath(path)

    def check(mode):
        kind = next((name for test, name in _SPECIAL if test(mode)), None if stat.S_ISREG(mode) else "special file")
        if kind:
            raise ValueError(f"{path}: is a {kind}, not a {what}")

    check(os.stat(path).st_mode)
    nonblocking = getattr(os, "O_NONBLOCK", 0)  # a FIFO put there since the stat: no wait either
    fd = os.open(path, os.O_RDONLY | nonblocking | getattr(os, "O_BINARY", 0))
    try:
        check(os.fstat(fd).st_mode)
        if nonblocking:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an interrupt by ``terminate_as_interrupt`` so that it is handled
    as Ctrl-C is (``npvae`` then exits with 143 instead of 130)."""


def _raise_terminated(signum, frame):
    raise Terminated("SIGTERM")


@contextlib.contextmanager
def terminate_as_interrupt():
    """Inside the block, SIGTERM raises ``Terminated`` (a ``KeyboardInterrupt``). Outside the
    main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_deferred():
    """Inside the block, Ctrl-C (SIGINT) and SIGTERM are noted, not acted on; on leaving it,
    each noted signal goes to the handler it had before (for Ctrl-C: ``KeyboardInterrupt``).
    Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {kind: signal.signal(kind, lambda signum, frame: noted.append(signum)) for kind in kinds}
    try:
        yield
    finally:
        for kind in kinds:
            signal.signal(kind, previous[kind])
    for kind in dict.fromkeys(noted):  # each signal once, in the order they came
        handler = previous[kind]
        if callable(handler):
            handler(kind, None)
        elif handler == signal.SIG_DFL:
            signal.raise_signal(kind)
