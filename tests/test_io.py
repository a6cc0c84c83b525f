"""io: atomic writes with ordinary permissions, leftovers of killed writers, Ctrl-C held back."""

import os
import signal
import stat

import pytest

from npvae import io


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_permissions_open_would_give(tmp_path):
    # Before: mkstemp's 0600, whatever the umask.
    old = os.umask(0o022)
    try:
        with io.atomic_open(tmp_path / "a.txt", "w") as f:
            f.write("x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "a.txt") == mode(tmp_path / "b.txt") == 0o644


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    os.chmod(path, 0o640)
    with io.atomic_open(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new" and mode(path) == 0o640


def test_remove_stale_parts_deletes_only_leftovers(tmp_path):
    (tmp_path / ".checkpoint.npz.abc123.part").write_bytes(b"x" * 100)
    (tmp_path / "checkpoint.npz").write_bytes(b"keep")
    (tmp_path / "notes.part").write_bytes(b"keep")  # not hidden: not ours
    removed = io.remove_stale_parts(tmp_path)
    assert [os.path.basename(p) for p in removed] == [".checkpoint.npz.abc123.part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "notes.part"]


def test_ctrl_c_is_held_back_until_the_block_ends():
    finished = []
    with pytest.raises(KeyboardInterrupt):
        with io.interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append("the block went on")
    assert finished == ["the block went on"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with io.interrupts_deferred():  # no Ctrl-C: nothing raised
        pass
