"""Files that are not what they seem (issue 16, items 5, 8, 12, 15, 21, 22): an empty or
mistyped data folder, a checkpoint without its random streams, a FIFO, socket or device where a
file should be, compressed (zip-bomb) checkpoints and gzip IDX files, a truncated file in the
download cache. Each item has tests that failed on the code before its fix (those that say
"still" check a behaviour kept).

The data-set tests run with test_datasets' isolation (cache in tmp_path, NPVAE_DATA unset, no
system folders, mirrors at a closed local port), imported here with its local HTTP server.
"""

import contextlib
import gzip
import json
import os
import signal
import socket
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

import npvae
from npvae import cli, datasets
from npvae.checkpoint import CheckpointError
from npvae.datasets import DatasetError
from conftest import SMALL, one_line, toy_images
from test_datasets import FILE_NAMES, idx_bytes, isolated, make_fake, server, synthetic, write  # noqa: F401


# --- 5. an empty --data-dir, a mistyped $NPVAE_DATA; where the data came from ------------------
@pytest.mark.parametrize("how", ["empty", "partial"])
def test_a_data_dir_without_the_files_is_refused_not_skipped(tmp_path, monkeypatch, isolated, how):
    # Before: an empty --data-dir fell through to $NPVAE_DATA, the cache or a download.
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if how == "partial":
        make_fake(data_dir, skip=("t10k-labels-idx1-ubyte.gz",))
    make_fake(isolated.cache / "mnist")  # complete fallbacks: neither may be used instead
    make_fake(tmp_path / "env")
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path / "env"))
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist", data_dir=data_dir)
    message = one_line(str(info.value))
    assert message.startswith(f"data_dir: {data_dir}: ")
    assert f"{data_dir / 'mnist'}" in message and "--data-dir" in message
    assert ("missing t10k-labels-idx1-ubyte.gz" if how == "partial" else "has none of them") in message


def test_the_cli_refuses_an_empty_data_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    argv = ["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "empty"), "--epochs", "1",
            "--out", str(tmp_path / "run"), *SMALL]
    assert cli.main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"npvae train: error: --data-dir: {tmp_path / 'empty'}: ")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("bad, message", [
    ("missing", "NPVAE_DATA: no such folder: {} (the environment variable: correct it or unset it)"),
    ("file", "NPVAE_DATA: expected a folder, got a file: {} (the environment variable: correct it or unset it)"),
])
def test_a_mistyped_npvae_data_is_refused(tmp_path, monkeypatch, isolated, bad, message):
    # Before: a $NPVAE_DATA that does not exist was skipped: the cache (or a download) was used.
    path = tmp_path / "no" / "such" if bad == "missing" else write(tmp_path / "f", b"x", gz=False)
    monkeypatch.setenv("NPVAE_DATA", str(path))
    make_fake(isolated.cache / "mnist")
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist")
    assert str(info.value) == message.format(path)
    assert datasets.load("mnist-subset")[0][0].shape == (8000, 784)  # the embedded subset needs no folder


@synthetic
def test_load_says_where_the_data_came_from(tmp_path, monkeypatch, isolated, server):
    datasets.load("mnist-subset")
    assert datasets.last_source().startswith("the MNIST subset shipped with npvae (")
    assert "mnist10k.npz" in datasets.last_source()
    make_fake(tmp_path / "d" / "mnist", gz=False)
    datasets.load("mnist", data_dir=tmp_path / "d")
    assert datasets.last_source() == (f"{tmp_path / 'd' / 'mnist'} (data_dir): train-images-idx3-ubyte, "
                                      "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte")
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path / "d"))
    datasets.load("mnist")
    assert datasets.last_source().startswith(f"{tmp_path / 'd' / 'mnist'} ($NPVAE_DATA): ")
    monkeypatch.delenv("NPVAE_DATA")
    datasets.load("mnist")  # nowhere: downloaded from the local server
    assert datasets.last_source() == (f"{isolated.cache / 'mnist'} (downloaded into the download cache): "
                                      + ", ".join(FILE_NAMES))
    datasets.load("mnist")
    assert datasets.last_source().startswith(f"{isolated.cache / 'mnist'} (the download cache): ")


# --- 8. a checkpoint without its random streams --------------------------------------------
@pytest.fixture(scope="module")
def subset_run(tmp_path_factory):
    """A 784-16-2 model trained one epoch on 512 digits of the subset, saved with dataset
    mnist-subset: what npvae train --resume can go on with."""
    (x, _), _ = datasets.load("mnist-subset")
    model = npvae.VAE(784, (16,), 2, seed=0)
    npvae.fit(model, x[:512], epochs=1, batch_size=256, progress=False, dataset="mnist-subset")
    path = tmp_path_factory.mktemp("run") / "checkpoint.npz"
    npvae.save(model, path)
    return path, x[:512]


def with_meta(path, dest, **changes):
    """A copy of checkpoint ``path`` at ``dest`` whose meta has ``changes``."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    meta.update(changes)
    np.savez(dest, **{**arrays, "meta": np.array(json.dumps(meta))})
    return dest


@pytest.mark.parametrize("key", ["data_rng", "noise_rng"])
def test_a_checkpoint_without_its_random_streams_is_refused(subset_run, tmp_path, capsys, key):
    # Before: npvae.load accepted it, and resuming crashed: AttributeError: 'NoneType' object
    # has no attribute 'permutation' (or 'standard_normal').
    path, x = subset_run
    crafted = with_meta(path, tmp_path / "checkpoint.npz", **{key: None})
    expected = (f"{crafted}: {key}: expected the state of a NumPy PCG64 generator (a checkpoint with an "
                "optimizer state resumes from it), got None")
    assert cli.main(["train", "--resume", str(crafted), "--epochs", "2", "--no-progress"]) == 2
    assert one_line(capsys.readouterr().err) == f"npvae train: error: {expected}"
    with pytest.raises(CheckpointError) as info:
        model = npvae.load(crafted)
        npvae.fit(model, x, epochs=2, resume=True, progress=False)
    assert str(info.value) == expected
    # and save never writes such a file
    model = npvae.load(path)
    setattr(model.train_state, key, None)
    with pytest.raises(CheckpointError, match=f"not written: {key}: expected the state of a NumPy PCG64"):
        npvae.save(model, tmp_path / "never.npz")
    assert not (tmp_path / "never.npz").exists()


def test_a_training_state_without_an_optimizer_may_still_lack_its_streams(subset_run, tmp_path):
    # still: nothing resumes from it (fit refuses a state without an optimizer), so null is fine
    path, _ = subset_run
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files if not k.startswith("opt.")}
    meta = json.loads(str(arrays["meta"]))
    meta.update(optimizer=None, data_rng=None, noise_rng=None)
    np.savez(tmp_path / "c.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    state = npvae.load(tmp_path / "c.npz").train_state
    assert state.epoch == 1 and state.optimizer is None and state.data_rng is None


# --- 12. a FIFO, a socket, a device where a file should be ---------------------------------
class Hung(Exception):
    """The guarded call was still blocked when its time ran out."""


@contextlib.contextmanager
def deadline(seconds=5.0):
    """Fail (raise Hung inside the call, which interrupts a blocking open) rather than hang."""
    def expire(signum, frame):
        raise Hung(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def specials(tmp_path):
    """A FIFO, a listening UNIX socket and /dev/zero, by kind."""
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s"))
    sock.listen()
    yield {"FIFO (named pipe)": fifo, "socket": tmp_path / "s", "character device": "/dev/zero"}
    sock.close()


@pytest.mark.parametrize("kind", ["FIFO (named pipe)", "socket", "character device"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_at_once(specials, capsys, kind):
    # Before: a FIFO hung in open() (for ever, without a writer); a socket gave "cannot be read
    # (No such device or address)"; /dev/zero was read as "not an npz archive".
    path = specials[kind]
    with deadline():
        with pytest.raises(CheckpointError) as info:
            npvae.load(path)
    assert str(info.value) == f"{path}: is a {kind}, not a checkpoint file"
    with deadline():
        assert cli.main(["train", "--resume", str(path), "--no-progress"]) == 2
    assert one_line(capsys.readouterr().err) == f"npvae train: error: {path}: is a {kind}, not a checkpoint file"


@pytest.mark.parametrize("kind", ["FIFO (named pipe)", "socket"])
def test_a_run_json_that_is_not_a_regular_file_is_refused_at_once(specials, tmp_path, capsys, kind):
    # A checkpoint without the data set's name (arrays passed from Python) sent npvae to the
    # run.json beside it. Before: a FIFO there hung npvae evaluate in open(). Step 10: no
    # run.json is read; npvae evaluate asks for --dataset at once.
    x, _ = toy_images(n=20, d=6, seed=5)
    model = npvae.VAE(6, (4,), 2, seed=1)
    npvae.fit(model, x, epochs=1, batch_size=10, progress=False)
    ckpt = tmp_path / "checkpoint.npz"
    npvae.save(model, ckpt)
    os.rename(specials[kind], tmp_path / "run.json")
    with deadline():
        assert cli.main(["evaluate", "--checkpoint", str(ckpt)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err == f"npvae evaluate: error: --dataset: {ckpt} does not say which data it was trained on; give --dataset"


# --- 15. zip bombs: compressed checkpoint members, oversized gzip IDX files -----------------
def test_a_compressed_checkpoint_is_refused_before_inflating_anything(subset_run, tmp_path, monkeypatch):
    # save writes stored (uncompressed) members only. Before: a savez_compressed copy loaded.
    path, _ = subset_run
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    np.savez_compressed(tmp_path / "z.npz", **arrays)

    def inflate(*args, **kwargs):
        raise AssertionError("a compressed member was inflated")

    monkeypatch.setattr(zipfile, "_get_decompressor", inflate)
    with pytest.raises(CheckpointError) as info:
        npvae.load(tmp_path / "z.npz")
    assert str(info.value) == (f"{tmp_path / 'z.npz'}: 'meta.npy': a compressed member (deflate); npvae writes "
                               "uncompressed checkpoints and does not inflate compressed members")


def test_a_gzip_idx_file_is_inflated_no_further_than_its_header_says(tmp_path):
    # Header: 2 x 28 x 28 (1568 bytes of data); the stream inflates to 16 MB of zeros. Before:
    # gzip.decompress inflated all 16 MB, then the length was compared.
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00\x08\x03" + struct.pack(">3I", 2, 28, 28))
        for _ in range(16):
            f.write(bytes(1 << 20))
    tracemalloc.start()
    try:
        with pytest.raises(DatasetError) as info:
            datasets.read_idx(path, shape=(None, 28, 28))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value) == (f"{path}: expected 1568 bytes of data for shape (2, 28, 28) (1-byte uint8), "
                               "got more (reading stopped at 1569)")
    assert peak < 4 << 20  # 16 MB before


def test_a_gzip_idx_header_claiming_more_than_this_machine_holds_is_refused_unread(tmp_path, monkeypatch):
    path = write(tmp_path / "train-images-idx3-ubyte.gz",
                 b"\x00\x00\x08\x03" + struct.pack(">3I", 2**32 - 1, 28, 28) + bytes(100), gz=True)
    monkeypatch.setattr(datasets, "memory_bytes", lambda: 1 << 30)
    with pytest.raises(DatasetError) as info:
        datasets.read_idx(path, shape=(None, 28, 28))
    assert str(info.value) == (f"{path}: the header says shape (4294967295, 28, 28), 3367254359280 bytes of data, "
                               "more than this machine's 1.0 GiB of memory")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_data_of_the_wrong_length_is_refused_either_way(tmp_path, gz):
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    path = write(tmp_path / "f.gz", good + bytes(5), gz)
    with pytest.raises(DatasetError) as info:
        datasets.read_idx(path)
    assert str(info.value).endswith("got more (reading stopped at 25)" if gz else "got 29")
    path = write(tmp_path / "f.gz", good[:-3], gz)
    with pytest.raises(DatasetError, match=r"\(1-byte uint8\), got 21$"):
        datasets.read_idx(path)
    write(tmp_path / "f.gz", good, gz)
    assert datasets.read_idx(path).shape == (2, 3, 4)


# --- 21. a truncated file in the download cache -------------------------------------------
@synthetic
def test_a_truncated_file_in_the_cache_says_which_file_to_delete(tmp_path, monkeypatch, isolated, server):
    # NPVAE_CACHE relative: the message still gives the full path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NPVAE_CACHE", "cache")
    datasets.load("mnist")  # downloaded from the local server
    cached = tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz"
    cached.write_bytes(cached.read_bytes()[:-20])  # the disk filled up, say
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist")
    message = one_line(str(info.value))
    assert message.startswith("cache/mnist/t10k-images-idx3-ubyte.gz: truncated gzip stream")
    assert message.endswith(f"; it is in npvae's download cache: delete {cached} and load again to download "
                            "it afresh")
    cached.unlink()  # as told
    assert datasets.load("mnist")[1][0].shape == (4, 784)
    assert server.hits.count("/t10k-images-idx3-ubyte.gz") == 2


# --- 22. messages that mention model.save -----------------------------------------------------
def test_the_backend_switch_message_gives_the_real_save_call(tmp_path, use_backend):
    # There is no model.save; the message said "save it with model.save(path)".
    model = npvae.VAE(6, (4,), 2, seed=1)
    other = "strict" if model.backend.name == "numpy" else "numpy"
    use_backend(other)
    with pytest.raises(ValueError) as info:
        model.sample(2)
    assert "save it with npvae.save(model, path) and npvae.load(path) it on the new backend" in str(info.value)
    assert not hasattr(model, "save")
    npvae.save(model, tmp_path / "m.npz")  # what it says works
    assert npvae.load(tmp_path / "m.npz").backend.name == other
    root = os.path.dirname(npvae.__file__)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    assert "model.save(" not in f.read(), os.path.join(folder, name)


@pytest.mark.slow
def test_npvae_train_and_evaluate_print_where_the_data_came_from(tmp_path, capsys):
    # Item 5: the run says which file or folder its data was read from (before: only its name).
    from npvae import cli

    out = tmp_path / "r"
    assert cli.main(["train", "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "512",
                     "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "data: the MNIST subset shipped with npvae (" in printed and "mnist10k.npz" in printed
    assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.npz"), "--k", "2", "--limit", "20"]) == 0
    assert "data: the MNIST subset shipped with npvae (" in capsys.readouterr().out


def test_fit_refuses_to_resume_a_hand_made_state_without_its_random_streams(tmp_path):
    # Item 8, from Python: a TrainState whose streams are None (before: AttributeError in fit).
    import npvae
    from conftest import toy_images

    x, _ = toy_images(n=40, d=6)
    model = npvae.VAE(6, (4,), 2, seed=0)
    npvae.fit(model, x, epochs=1, progress=False)
    model.train_state.noise_rng = None
    params = npvae.to_numpy(model.params).copy()
    with pytest.raises(ValueError, match=r"^resume: model.train_state.noise_rng is None"):
        npvae.fit(model, x, epochs=2, resume=True, progress=False)
    assert np.array_equal(npvae.to_numpy(model.params), params)
