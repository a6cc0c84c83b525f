"""Tests for npvae.datasets: IDX files, the embedded MNIST subset, where files are looked for,
which dataset a file is, downloads (against local HTTP servers, never the internet), class
names, and static binarization.

IDX test files are written here with struct/gzip, independently of the module's reader. Every
test runs with the cache in a temporary folder, NPVAE_DATA unset, no system folders, and
mirrors at a closed local port, so nothing reads ~/.cache or goes on the network by accident.
Small synthetic datasets are not recognized as MNIST, so loading them gives a DatasetWarning:
the tests that load them are marked ``synthetic`` (the warning ignored).
"""

import contextlib
import copy
import gzip
import hashlib
import http.server
import importlib.resources
import socket
import struct
import threading
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import datasets
from npvae.datasets import DatasetError

FILE_NAMES = [f for _, f in datasets.FILES]
DEBIAN_FASHION = datasets.SYSTEM_DIRS["fashion-mnist"][0]
REAL_MIRRORS = copy.deepcopy(datasets.MIRRORS)  # before the autouse fixture replaces them

# Loads small synthetic files: not recognized as the real dataset, which is only a warning.
synthetic = pytest.mark.filterwarnings("ignore::npvae.datasets.DatasetWarning")


# ---------------------------------------------------------------------------------------
# Helpers: IDX bytes, fake datasets, a closed port, a local HTTP server
# ---------------------------------------------------------------------------------------
IDX_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D,
             "float64": 0x0E}


def idx_bytes(a) -> bytes:
    """The IDX encoding of array ``a``: 00 00 type ndim, big-endian uint32 dims, big-endian data."""
    a = np.asarray(a)
    header = bytes([0, 0, IDX_CODES[a.dtype.name], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, gz: bool):
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def make_fake(folder, n_train=6, n_test=4, seed=0, gz=True, skip=()):
    """Write a small fake MNIST-like dataset (four IDX files) into ``folder``; return the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for fname, a in arrays.items():
        if fname not in skip:
            write(folder / (fname if gz else fname[: -len(".gz")]), idx_bytes(a), gz)
    return arrays


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Cache in tmp, no NPVAE_DATA, no system folders, mirrors at a closed port."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NPVAE_CACHE", str(cache))
    monkeypatch.delenv("NPVAE_DATA", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion-mnist": [], "mnist": []})
    dead = closed_port_url()
    monkeypatch.setattr(datasets, "MIRRORS", {"fashion-mnist": [dead], "mnist": [dead]})
    return SimpleNamespace(cache=cache, dead=dead)


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A ThreadingHTTPServer on 127.0.0.1 serving tmp_path/www, with the fake dataset's four
    gzipped files; MIRRORS["mnist"] and SHA256["mnist"] point at it. ``hits``: paths asked for."""
    root = tmp_path / "www"
    arrays = make_fake(root)
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):  # keep the test output clean
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    monkeypatch.setitem(datasets.SHA256, "mnist", {f: sha256(root / f) for f in FILE_NAMES})
    monkeypatch.setitem(datasets.SIZES, "mnist", {f: (root / f).stat().st_size for f in FILE_NAMES})
    yield SimpleNamespace(root=root, url=url, hits=hits, arrays=arrays)
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


# ---------------------------------------------------------------------------------------
# read_idx: good files
# ---------------------------------------------------------------------------------------
def test_idx_bytes_helper_matches_the_format_by_hand():
    # the test's own writer, checked against bytes spelled out from the IDX spec
    assert idx_bytes(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.uint8)) == (
        b"\x00\x00\x08\x02" b"\x00\x00\x00\x02" b"\x00\x00\x00\x03" b"\x01\x02\x03\x04\x05\x06")
    assert idx_bytes(np.array([-2, 258], dtype=np.int16)) == (
        b"\x00\x00\x0b\x01" b"\x00\x00\x00\x02" b"\xff\xfe\x01\x02")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_read_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(7)
    if dtype.startswith("float"):
        a = rng.normal(size=(3, 4, 5)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=(3, 4, 5), endpoint=True, dtype=dtype)
    path = write(tmp_path / f"a-{dtype}.idx", idx_bytes(a), gz)
    out = datasets.read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, a)
    out[0, 0, 0] = 0  # a writable array, not a view of the file's bytes


def test_read_idx_detects_gzip_by_magic_bytes_not_suffix(tmp_path):
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_no_suffix = write(tmp_path / "labels-idx2-ubyte", idx_bytes(a), gz=True)
    raw_with_gz_suffix = write(tmp_path / "labels-idx2-ubyte.gz", idx_bytes(a), gz=False)
    np.testing.assert_array_equal(datasets.read_idx(gz_no_suffix), a)
    np.testing.assert_array_equal(datasets.read_idx(raw_with_gz_suffix), a)


def test_read_idx_checks_expected_shape(tmp_path):
    path = write(tmp_path / "x.gz", idx_bytes(np.zeros((2, 28, 27), np.uint8)), gz=True)
    assert datasets.read_idx(path, shape=(None, 28, 27)).shape == (2, 28, 27)
    with pytest.raises(DatasetError) as info:
        datasets.read_idx(path, shape=(None, 28, 28))
    assert str(info.value) == f"{path}: expected dimensions (N, 28, 28) (N: any), got (2, 28, 27)"
    with pytest.raises(DatasetError, match=r"expected dimensions \(N,\) \(N: any\), got \(2, 28, 27\)"):
        datasets.read_idx(path, shape=(None,))


# ---------------------------------------------------------------------------------------
# read_idx: truncated and corrupt files
# ---------------------------------------------------------------------------------------
GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "expected an IDX header of at least 4 bytes, got 2"),
    (b"\x01\x00\x08\x03" + GOOD[4:], "not an IDX file: expected a magic number starting with bytes 00 00, got 01 00 08 03"),
    (b"PK\x03\x04" + GOOD[4:], "not an IDX file"),
    (b"\x00\x00\x0a\x03" + GOOD[4:], "expected an IDX type code in (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E), got 0x0A"),
    (b"\x00\x00\x08\x00", "expected at least 1 dimension in the IDX header, got 0"),
    (GOOD[:10], "expected a 16-byte header for 3 dimensions, got 10 bytes in all"),
    (GOOD[:-1], "expected 24 bytes of data for shape (2, 3, 4) (1-byte uint8), got 23"),
    # raw: "got 25"; gzip: "got more (reading stopped at 25)", never inflated further (test_faults_files)
    (GOOD + b"\x00", "expected 24 bytes of data for shape (2, 3, 4) (1-byte uint8), got "),
    (b"\x00\x00\x08\x03" + struct.pack(">3I", 60000, 28, 28) + bytes(1000),
     "expected 47040000 bytes of data for shape (60000, 28, 28) (1-byte uint8), got 1000"),
    (b"\x00\x00\x0d\x01" + struct.pack(">I", 3) + bytes(8),
     "expected 12 bytes of data for shape (3,) (4-byte float32), got 8"),
], ids=["short-header", "bad-magic", "zip-file", "bad-type", "zero-dims", "cut-header",
        "short-data", "long-data", "mnist-short", "float-short"])
def test_read_idx_rejects_bad_files_naming_the_file(tmp_path, data, message, gz):
    path = write(tmp_path / "train-images-idx3-ubyte.gz", data, gz)
    with pytest.raises(DatasetError) as info:
        datasets.read_idx(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_read_idx_truncated_gzip_stream(tmp_path):
    whole = gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (50, 28, 28), dtype=np.uint8)))
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DatasetError, match="truncated gzip stream") as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_corrupt_gzip_stream(tmp_path):
    whole = bytearray(gzip.compress(idx_bytes(np.arange(4000, dtype=np.int32))))
    whole[-8] ^= 0xFF  # the CRC-32 in the gzip trailer no longer matches the data
    path = tmp_path / "labels.gz"
    path.write_bytes(bytes(whole))
    with pytest.raises(DatasetError, match="corrupt gzip data") as info:
        datasets.read_idx(path)
    assert str(path) in str(info.value)
    path.write_bytes(b"\x1f\x8b" + bytes(30))  # gzip magic, garbage after
    with pytest.raises(DatasetError, match=r"labels\.gz: (corrupt|truncated) gzip"):
        datasets.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    path = tmp_path / "nope.gz"
    with pytest.raises(DatasetError, match=f"^{path}: cannot read the file"):
        datasets.read_idx(path)


# ---------------------------------------------------------------------------------------
# load: arguments
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["cifar", "MNIST", "", None, 3])
def test_load_unknown_name(bad):
    with pytest.raises(ValueError) as info:
        datasets.load(bad)
    assert str(info.value) == (
        f"name: expected one of ('mnist-subset', 'fashion-mnist', 'mnist'), got {bad!r}")


# ---------------------------------------------------------------------------------------
# The embedded subset
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def subset():
    return datasets.load()


def test_subset_file_is_the_documented_one():
    res = importlib.resources.files("npvae") / "data" / "mnist10k.npz"
    assert hashlib.sha256(res.read_bytes()).hexdigest() == (
        "0217e13bd0668deb198aa7d305edbf0331eb89f8a6e7dd226e03d1aa3a9bd4ef")
    notice = (importlib.resources.files("npvae") / "data" / "NOTICE").read_text()
    for words in ("Yann LeCun", "Corinna Cortes", "Burges", "CC BY-SA 3.0", "mnist", "1.1.0", "MIT"):
        assert words in notice
    images, labels = datasets.load_subset_arrays()
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def test_subset_shapes_dtypes_range(subset):
    (x_train, y_train), (x_test, y_test) = subset
    assert x_train.shape == (8000, 784) and x_test.shape == (2000, 784)
    assert y_train.shape == (8000,) and y_test.shape == (2000,)
    assert isinstance(x_train, np.ndarray) and isinstance(y_test, np.ndarray)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    for x in (x_train, x_test):
        assert 0.0 == x.min() and x.max() == 1.0
        np.testing.assert_allclose(x * 255, np.round(x * 255), atol=1e-4)  # pixel / 255
    for y in (y_train, y_test):
        assert sorted(set(y.tolist())) == list(range(10))


def test_subset_split_is_stratified(subset):
    (_, y_train), (_, y_test) = subset
    total = np.bincount(y_train, minlength=10) + np.bincount(y_test, minlength=10)
    assert total.tolist() == [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    test_counts = np.bincount(y_test, minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * total) <= 1), test_counts


def test_subset_split_is_shuffled(subset):
    # grouped by digit, the labels would change ~9 times; shuffled, ~90% of neighbours differ
    for (_, y) in subset:
        changes = np.count_nonzero(np.diff(y))
        assert changes > 0.8 * (len(y) - 1)


def test_subset_train_and_test_are_disjoint(subset):
    (x_train, _), (x_test, _) = subset
    rows = lambda x: {r.tobytes() for r in np.round(x * 255).astype(np.uint8)}  # noqa: E731
    train, test = rows(x_train), rows(x_test)
    assert len(train) == 8000 and len(test) == 2000  # no image twice (there are no duplicates)
    assert not train & test


def test_subset_is_deterministic_and_fresh(subset):
    (x_train, y_train), (x_test, y_test) = subset
    (a, b), (c, d) = datasets.load("mnist-subset", data_dir="/nonexistent")  # data_dir: ignored
    for u, v in ((x_train, a), (y_train, b), (x_test, c), (y_test, d)):
        np.testing.assert_array_equal(u, v)
    a[:] = 0  # the caller owns its arrays: a later load is not affected
    np.testing.assert_array_equal(datasets.load()[0][0], x_train)


def test_subset_split_is_pinned():
    # The split must be the same on every machine and NumPy version. If this fails, NumPy's
    # default_rng(0).permutation changed: pin the split another way (e.g. store the indices).
    _, labels = datasets.load_subset_arrays()
    train_idx, test_idx = datasets.subset_split(labels)
    assert test_idx[:8].tolist() == [9935, 7347, 9632, 6309, 9413, 4330, 1353, 3706]
    assert hashlib.sha256(test_idx.tobytes()).hexdigest() == (
        "677908f81d02a9b9c789cc481fc300791ec609f1eb62b34ff380214a3dc994bc")
    assert hashlib.sha256(train_idx.tobytes()).hexdigest() == (
        "855ed1f947226e9971d5a70e3d901cc1ece6d8382edb4ac4d9aa17cb0432d143")


@given(
    counts=st.lists(st.integers(1, 40), min_size=1, max_size=10),
    frac=st.floats(0.05, 0.95),
    seed=st.integers(0, 2**32 - 1),
)
def test_subset_split_properties(counts, frac, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    n = len(labels)
    n_test = min(max(1, round(frac * n)), n - 1)
    if n < 2:
        return
    train_idx, test_idx = datasets.subset_split(labels, n_test=n_test, seed=seed)
    assert len(test_idx) == n_test
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(n))
    got = np.bincount(labels[test_idx], minlength=len(counts))
    assert np.all(np.abs(got - n_test * np.asarray(counts) / n) < 1)
    again = datasets.subset_split(labels, n_test=n_test, seed=seed)
    np.testing.assert_array_equal(again[1], test_idx)


def test_subset_split_bad_n_test():
    with pytest.raises(ValueError, match=r"n_test: expected 0 < n_test < 4 .*got 4"):
        datasets.subset_split(np.array([0, 0, 1, 1]), n_test=4)


# ---------------------------------------------------------------------------------------
# Where the full-size files are looked for
# ---------------------------------------------------------------------------------------
def n_train_of(data):
    return data[0][0].shape[0]


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NPVAE_CACHE", str(tmp_path / "c"))
    assert datasets.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("NPVAE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.cache_dir() == tmp_path / "xdg" / "npvae"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.cache_dir() == tmp_path / "home" / ".cache" / "npvae"


def test_search_order(tmp_path, monkeypatch, isolated):
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion-mnist", ["/sys/fm"])
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path / "env"))
    assert datasets.search_dirs("fashion-mnist") == [
        tmp_path / "env", tmp_path / "env" / "fashion-mnist",
        isolated.cache / "fashion-mnist", datasets.Path("/sys/fm"),
    ]
    # a given data_dir is the only place searched (issue 16: an empty one fell through)
    assert datasets.search_dirs("fashion-mnist", tmp_path / "arg") == [
        tmp_path / "arg", tmp_path / "arg" / "fashion-mnist"]


@synthetic
def test_lookup_order_data_dir_env_cache_system(tmp_path, monkeypatch, isolated):
    arg, env, system = tmp_path / "arg", tmp_path / "env", tmp_path / "sys"
    fakes = {
        1: make_fake(arg, n_train=1),
        2: make_fake(arg / "mnist", n_train=2),
        3: make_fake(env, n_train=3, gz=False),  # raw IDX files, no .gz
        4: make_fake(env / "mnist", n_train=4),
        5: make_fake(isolated.cache / "mnist", n_train=5),
        6: make_fake(system, n_train=6),
    }
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "mnist", [str(system)])
    monkeypatch.setenv("NPVAE_DATA", str(env))

    data = datasets.load("mnist", data_dir=arg)
    assert n_train_of(data) == 1
    np.testing.assert_array_equal(data[0][0], fakes[1]["train-images-idx3-ubyte.gz"].reshape(1, 784) / np.float32(255))
    np.testing.assert_array_equal(data[1][1], fakes[1]["t10k-labels-idx1-ubyte.gz"])
    (arg / "train-images-idx3-ubyte.gz").unlink()  # 3 of 4 files: not this folder
    assert n_train_of(datasets.load("mnist", data_dir=arg)) == 2  # data_dir/<name>/
    assert n_train_of(datasets.load("mnist")) == 3  # NPVAE_DATA beats the cache
    (env / "t10k-labels-idx1-ubyte").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="^data_dir: "):  # never falls through (issue 16)
        datasets.load("mnist", data_dir=tmp_path / "empty")
    assert n_train_of(datasets.load("mnist")) == 4  # NPVAE_DATA/<name>/
    monkeypatch.delenv("NPVAE_DATA")
    assert n_train_of(datasets.load("mnist")) == 5  # the cache
    (isolated.cache / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    assert n_train_of(datasets.load("mnist")) == 6  # the system folder


@synthetic
def test_local_files_are_checked_structurally(tmp_path):
    make_fake(tmp_path / "d")
    bad = tmp_path / "d" / "train-labels-idx1-ubyte.gz"
    write(bad, idx_bytes(np.arange(5, dtype=np.uint8)), gz=True)  # 5 labels for 6 images
    with pytest.raises(DatasetError, match=f"^{bad}: expected 6 labels, one per image"):
        datasets.load("mnist", data_dir=tmp_path / "d")
    write(bad, idx_bytes(np.full(6, 10, dtype=np.uint8)), gz=True)
    with pytest.raises(DatasetError, match=f"^{bad}: expected labels 0..9, got a 10"):
        datasets.load("mnist", data_dir=tmp_path / "d")
    bad.write_bytes(bad.read_bytes()[:-5])
    with pytest.raises(DatasetError, match=f"^{bad}: truncated gzip"):
        datasets.load("mnist", data_dir=tmp_path / "d")


@pytest.mark.skipif(not datasets.Path(DEBIAN_FASHION).is_dir(),
                    reason=f"{DEBIAN_FASHION} not here (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package(monkeypatch):
    monkeypatch.setitem(datasets.SYSTEM_DIRS, "fashion-mnist", [DEBIAN_FASHION])
    with warnings.catch_warnings():
        warnings.simplefilter("error", datasets.DatasetWarning)  # recognized: no warning
        (x_train, y_train), (x_test, y_test) = datasets.load("fashion-mnist")
    assert x_train.shape == (60000, 784) and x_test.shape == (10000, 784)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10


@pytest.mark.skipif(not datasets.Path(DEBIAN_FASHION).is_dir(),
                    reason=f"{DEBIAN_FASHION} not here (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_files_are_refused_as_mnist():
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist", data_dir=DEBIAN_FASHION)
    path = datasets.Path(DEBIAN_FASHION) / "train-images-idx3-ubyte.gz"  # the first file read
    assert str(info.value).startswith(f"{path}: expected mnist's training images")
    assert "looks like fashion-mnist's training images, not mnist's" in str(info.value)


@pytest.mark.parametrize("bad, message", [
    ("missing", "data_dir: no such folder: {}"),
    ("file", "data_dir: expected a folder, got a file: {}"),
])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_data_dir_must_be_a_folder(tmp_path, server, bad, message, name):
    path = tmp_path / "no" / "such" if bad == "missing" else write(tmp_path / "f.gz", b"x", gz=False)
    make_fake(datasets.cache_dir() / name)  # a complete fallback: it must not be used instead
    with pytest.raises(ValueError) as info:
        datasets.load(name, data_dir=path)
    assert str(info.value) == message.format(path)
    assert server.hits == []  # no download either


# The real files' first ten labels and mean grey level (pixel / 255), by (dataset, split).
# Fashion-MNIST's: computed from Debian's files; MNIST's: the well-known values.
FIRST_LABELS = {
    ("mnist", "train"): (5, 0, 4, 1, 9, 2, 1, 3, 1, 4), ("mnist", "test"): (7, 2, 1, 0, 4, 1, 4, 9, 5, 9),
    ("fashion-mnist", "train"): (9, 0, 0, 3, 0, 2, 7, 2, 5, 5),
    ("fashion-mnist", "test"): (9, 2, 1, 1, 6, 1, 4, 6, 5, 7),
}
MEAN_PIXEL = {("mnist", "train"): 0.1307, ("mnist", "test"): 0.1325,
              ("fashion-mnist", "train"): 0.2860, ("fashion-mnist", "test"): 0.2868}


def n_examples(n, kind, dataset=None, split=None, seed=0):
    """``n`` labels or 28 x 28 images; with ``dataset``, the fingerprint of its ``split``: the
    first ten labels, or pixels 0 or v (half each) whose mean is the known mean grey level."""
    rng = np.random.default_rng(seed)
    if kind == "labels":
        labels = (np.arange(n) % 10).astype(np.uint8)
        if dataset is not None:
            labels[:10] = FIRST_LABELS[dataset, split]
        return labels
    if dataset is None:
        return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    v = round(2 * 255 * MEAN_PIXEL[dataset, split])
    return np.where(rng.random((n, 28, 28)) < 0.5, v, 0).astype(np.uint8)


def test_known_fingerprints():
    for (name, split), first in FIRST_LABELS.items():
        assert datasets.KNOWN_LABELS[name][split] == (60000 if split == "train" else 10000, first)
    for (name, split), mean in MEAN_PIXEL.items():
        assert datasets.KNOWN_MEAN_PIXEL[name][split] == (60000 if split == "train" else 10000, mean)
    # the embedded subset is 10,000 real MNIST digits: its mean is MNIST's, not Fashion-MNIST's
    images, _ = datasets.load_subset_arrays()
    assert abs(images.mean() / 255 - MEAN_PIXEL["mnist", "train"]) < datasets.MEAN_PIXEL_TOLERANCE / 2


TEST_FILES = {"images": "t10k-images-idx3-ubyte.gz", "labels": "t10k-labels-idx1-ubyte.gz"}


@synthetic
@pytest.mark.parametrize("kind", ["labels", "images"])
@pytest.mark.parametrize("name, other", [("mnist", "fashion-mnist"), ("fashion-mnist", "mnist")])
def test_a_file_of_the_other_dataset_is_refused_by_name(tmp_path, name, other, kind):
    # The test split (10,000 examples) with the other dataset's fingerprint in one file, the
    # rest small synthetic files: the same names and headers, only the content differs.
    folder = tmp_path / "d"
    make_fake(folder, n_test=10000, skip=tuple(TEST_FILES.values()))
    fake = {"images": n_examples(10000, "images"), "labels": n_examples(10000, "labels")}
    fake[kind] = n_examples(10000, kind, other, "test")
    for k, fname in TEST_FILES.items():
        write(folder / fname[: -len(".gz")], idx_bytes(fake[k]), gz=False)  # raw: fast
    path = folder / TEST_FILES[kind][: -len(".gz")]
    with pytest.raises(DatasetError) as info:
        datasets.load(name, data_dir=folder)
    msg = str(info.value)
    assert msg.startswith(f"{path}: expected {name}'s test {kind} ")
    assert f"this file looks like {other}'s test {kind}, not {name}'s" in msg
    assert "\n" not in msg
    if kind == "labels":
        first = " ".join(map(str, FIRST_LABELS[other, "test"]))
        assert f"got 10000 labels starting {first}" in msg


def test_files_of_the_right_dataset_pass_and_unknown_ones_warn(tmp_path):
    # mnist's test split fingerprint: recognized, no warning; the small synthetic training
    # files: used, with one DatasetWarning each naming the file
    folder = tmp_path / "d"
    arrays = make_fake(folder, n_test=10000, skip=tuple(TEST_FILES.values()))
    for kind, fname in TEST_FILES.items():
        write(folder / fname, idx_bytes(n_examples(10000, kind, "mnist", "test")), gz=False)
    with pytest.warns(datasets.DatasetWarning) as record:
        (x_train, y_train), (x_test, y_test) = datasets.load("mnist", data_dir=folder)
    messages = sorted(str(w.message) for w in record if w.category is datasets.DatasetWarning)
    assert len(messages) == 2
    assert messages[0].startswith(
        f"{folder / 'train-images-idx3-ubyte.gz'}: not recognized as mnist's training images "
        "(expected 60000 images of mean grey level 0.1307 +- 0.01, got 6 images of mean grey level ")
    assert messages[1] == (
        f"{folder / 'train-labels-idx1-ubyte.gz'}: not recognized as mnist's training labels "
        "(expected 60000 labels starting 5 0 4 1 9 2 1 3 1 4, got 6 labels starting 0 1 2 3 4 5); "
        "using it as it is")
    assert all(w.filename == __file__ for w in record)  # points at the caller of load
    np.testing.assert_array_equal(y_train, arrays["train-labels-idx1-ubyte.gz"])
    assert x_test.shape == (10000, 784) and y_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


@synthetic
@pytest.mark.parametrize("kind", ["images", "labels"])
def test_a_file_without_examples_is_refused(tmp_path, kind):
    folder = tmp_path / "d"
    make_fake(folder)
    shape = (0, 28, 28) if kind == "images" else (0,)
    path = write(folder / f"train-{kind}-idx{len(shape)}-ubyte.gz", idx_bytes(np.zeros(shape, np.uint8)),
                 gz=True)
    assert datasets.read_idx(path).shape == shape  # a valid, empty IDX file
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist", data_dir=folder)
    assert str(info.value) == f"{path}: expected at least one {kind[:-1]}, got 0"


# ---------------------------------------------------------------------------------------
# Downloads, against a local HTTP server
# ---------------------------------------------------------------------------------------
@synthetic
def test_download_lands_in_cache_and_loads(server, isolated):
    (x_train, y_train), (x_test, y_test) = datasets.load("mnist")
    assert sorted(server.hits) == sorted("/" + f for f in FILE_NAMES)
    assert files_under(isolated.cache) == sorted(f"mnist/{f}" for f in FILE_NAMES)  # no temp files
    for f in FILE_NAMES:
        assert (isolated.cache / "mnist" / f).read_bytes() == (server.root / f).read_bytes()
    a = server.arrays
    np.testing.assert_array_equal(x_train, a["train-images-idx3-ubyte.gz"].reshape(6, 784) / np.float32(255))
    np.testing.assert_array_equal(x_test, a["t10k-images-idx3-ubyte.gz"].reshape(4, 784) / np.float32(255))
    np.testing.assert_array_equal(y_train, a["train-labels-idx1-ubyte.gz"])
    np.testing.assert_array_equal(y_test, a["t10k-labels-idx1-ubyte.gz"])
    assert y_train.dtype == np.int64 and x_train.dtype == np.float32


@synthetic
def test_second_load_does_not_download_again(server):
    first = datasets.load("mnist")
    n = len(server.hits)
    second = datasets.load("mnist")
    assert len(server.hits) == n == 4
    np.testing.assert_array_equal(first[0][0], second[0][0])


@synthetic
def test_mirrors_are_tried_in_order(server, monkeypatch):
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [server.url + "gone/", server.url])
    assert n_train_of(datasets.load("mnist")) == 6
    assert server.hits.count("/gone/train-images-idx3-ubyte.gz") == 1  # a 404, then the next


@synthetic
def test_corrupt_download_is_a_checksum_error_and_leaves_nothing(server, isolated):
    good = (server.root / "train-images-idx3-ubyte.gz").read_bytes()
    (server.root / "train-images-idx3-ubyte.gz").write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist")
    msg = str(info.value)
    assert msg.startswith(f"{isolated.cache / 'mnist' / 'train-images-idx3-ubyte.gz'}: checksum mismatch")
    assert datasets.SHA256["mnist"]["train-images-idx3-ubyte.gz"] in msg
    assert files_under(isolated.cache) == []  # no partial, corrupt or temporary file
    (server.root / "train-images-idx3-ubyte.gz").write_bytes(good)  # the mirror is fixed
    assert n_train_of(datasets.load("mnist")) == 6


def test_offline_says_where_to_put_the_files(tmp_path, isolated, monkeypatch):
    make_fake(tmp_path / "partial", skip=("t10k-labels-idx1-ubyte.gz",))
    monkeypatch.setenv("NPVAE_DATA", str(tmp_path / "partial"))  # (a given data_dir is never passed over)
    with pytest.raises(DatasetError) as info:
        datasets.load("fashion-mnist")
    msg = str(info.value)
    assert isolated.dead + "train-images-idx3-ubyte.gz" in msg
    for folder in (tmp_path / "partial", tmp_path / "partial" / "fashion-mnist",
                   isolated.cache / "fashion-mnist"):
        assert f"\n  {folder}" in msg
    assert f"{tmp_path / 'partial'} (has 3 of 4" in msg
    for f in FILE_NAMES:
        assert f in msg
    assert "--data-dir" in msg and "NPVAE_DATA" in msg
    assert "dataset-fashion-mnist" in msg
    assert files_under(isolated.cache) == []  # the failed download left no empty folder either
    assert not isolated.cache.exists()


def test_mirrors_sizes_and_hashes_are_consistent():
    for name, urls in REAL_MIRRORS.items():
        schemes = [u.split("://")[0] for u in urls]
        assert schemes == sorted(schemes, key=lambda x: x != "https"), urls  # https first
        assert schemes[0] == "https" and all(u.endswith("/") for u in urls)
        assert set(datasets.SIZES[name]) == set(datasets.SHA256[name]) == set(FILE_NAMES)
    assert REAL_MIRRORS["fashion-mnist"][0] == (
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/")
    assert [datasets.SIZES["fashion-mnist"][f] for f in FILE_NAMES] == [26421880, 29515, 4422102, 5148]
    assert [datasets.SIZES["mnist"][f] for f in FILE_NAMES] == [9912422, 28881, 1648877, 4542]


@contextlib.contextmanager
def http_server(respond):
    """A ThreadingHTTPServer on 127.0.0.1 whose GET handler is ``respond(handler, stop)``;
    ``stop`` (a threading.Event) is set on exit so that handlers still running end."""
    stop = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            with contextlib.suppress(OSError):  # the client hung up: fine
                respond(self, stop)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def point_mnist_at(monkeypatch, url, size, data=b""):
    """MIRRORS, SIZES and SHA256 of "mnist": every file at ``url``, ``size`` bytes, sha of data."""
    monkeypatch.setitem(datasets.MIRRORS, "mnist", [url])
    monkeypatch.setitem(datasets.SIZES, "mnist", dict.fromkeys(FILE_NAMES, size))
    monkeypatch.setitem(datasets.SHA256, "mnist", dict.fromkeys(FILE_NAMES, hashlib.sha256(data).hexdigest()))


@pytest.mark.slow
@pytest.mark.parametrize("how", ["trickle", "stall"])
def test_a_slow_download_is_abandoned_at_the_deadline(monkeypatch, isolated, how):
    # before: no overall limit (1 byte every 2 s kept a download going for minutes)
    deadline = 2.0 if how == "trickle" else 1.0
    sent = []

    def respond(handler, stop):
        handler.send_response(200)
        handler.send_header("Content-Length", "5000")
        handler.end_headers()
        t0 = time.monotonic()
        while not stop.is_set() and time.monotonic() - t0 < 10:  # bounded in time
            if how == "trickle":
                handler.wfile.write(b"x")
                handler.wfile.flush()
                sent.append(1)
            stop.wait(0.2)

    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT", deadline)
    with http_server(respond) as url:
        point_mnist_at(monkeypatch, url, 5000)
        t0 = time.monotonic()
        with pytest.raises(DatasetError) as info:
            datasets.load("mnist")
        elapsed = time.monotonic() - t0
    assert deadline - 0.1 < elapsed < deadline + 1.5
    msg = str(info.value)
    assert f"{url}train-images-idx3-ubyte.gz: gave up after {deadline:g} s (DOWNLOAD_TIMEOUT) with " in msg
    if how == "trickle":
        assert len(sent) >= 5
    assert not isolated.cache.exists()  # no temporary file, no folder left


@pytest.mark.parametrize("how", ["endless", "announced", "short"])
def test_a_download_of_the_wrong_size_stops_and_leaves_nothing(monkeypatch, isolated, how):
    # before: an endless stream was read to the end (274 MB) before the hash check
    sent = []

    def respond(handler, stop):
        handler.protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when we close
        handler.send_response(200)
        if how == "announced":
            handler.send_header("Content-Length", str(10**9))
        handler.end_headers()
        if how == "short":
            handler.wfile.write(b"x" * 3000)
            return
        t0 = time.monotonic()
        while not stop.is_set() and time.monotonic() - t0 < 10 and sum(sent) < 10**9:  # bounded
            handler.wfile.write(b"x" * 65536)
            sent.append(65536)

    with http_server(respond) as url:
        point_mnist_at(monkeypatch, url, 5000)
        t0 = time.monotonic()
        with pytest.raises(DatasetError) as info:
            datasets.load("mnist")
        assert time.monotonic() - t0 < 2
    expected = {
        "endless": "expected 5000 bytes, the server sent more (stopped reading at 5001)",
        "announced": f"expected 5000 bytes, the server announced {10**9}",
        "short": "expected 5000 bytes, the transfer ended after 3000",
    }[how]
    assert f"{url}train-images-idx3-ubyte.gz: {expected}" in str(info.value)
    assert not isolated.cache.exists()


def test_a_download_of_the_right_size_and_hash_lands(monkeypatch, isolated):
    data = bytes(range(256)) * 20

    def respond(handler, stop):
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    monkeypatch.setattr(datasets, "DOWNLOAD_TIMEOUT", 5.0)
    with http_server(respond) as url:
        point_mnist_at(monkeypatch, url, len(data), data)
        assert datasets.download("mnist") == isolated.cache / "mnist"
    assert files_under(isolated.cache) == sorted(f"mnist/{f}" for f in FILE_NAMES)
    assert all((isolated.cache / "mnist" / f).read_bytes() == data for f in FILE_NAMES)
    with pytest.raises(ValueError, match="timeout: expected a number of seconds > 0, got 0"):
        datasets.download("mnist", timeout=0)


def test_an_unwritable_cache_is_reported_as_such(tmp_path, monkeypatch, server):
    # before: "... could not be downloaded (no network?)"
    blocker = write(tmp_path / "not-a-folder", b"", gz=False)
    monkeypatch.setenv("NPVAE_CACHE", str(blocker))
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist")
    msg = str(info.value)
    assert msg.startswith(f"{blocker / 'mnist'}: cannot write to the download cache (")
    assert "NPVAE_CACHE=DIR" in msg and "no network" not in msg and "\n" not in msg
    assert server.hits == []  # found out before going on the network
    assert blocker.read_bytes() == b""


@synthetic
def test_a_cache_file_that_cannot_be_replaced_is_reported_and_leaves_no_temp(isolated, server):
    target = isolated.cache / "mnist" / "train-images-idx3-ubyte.gz"
    target.mkdir(parents=True)  # a folder where the file should go: os.replace fails, as root too
    with pytest.raises(DatasetError) as info:
        datasets.load("mnist")
    assert str(info.value).startswith(f"{isolated.cache / 'mnist'}: cannot write to the download cache (")
    assert server.hits == ["/train-images-idx3-ubyte.gz"]
    assert files_under(isolated.cache) == []  # the downloaded bytes were not left in a temp file
    target.rmdir()
    assert n_train_of(datasets.load("mnist")) == 6


# ---------------------------------------------------------------------------------------
# Class names
# ---------------------------------------------------------------------------------------
def test_class_names():
    digits = ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9")
    assert datasets.class_names("mnist") == digits
    assert datasets.class_names("mnist-subset") == digits
    assert datasets.class_names("fashion-mnist") == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    assert datasets.LABEL_KIND == {"mnist-subset": "digit", "mnist": "digit", "fashion-mnist": "class"}
    for name in datasets.NAMES:
        assert len(set(datasets.class_names(name))) == datasets.N_CLASSES
    with pytest.raises(ValueError, match=r"^name: expected one of .*, got 'cifar'$"):
        datasets.class_names("cifar")
