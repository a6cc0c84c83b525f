"""Datasets for npvae: an embedded 10,000-digit MNIST subset, and full MNIST / Fashion-MNIST.

This module is an *edge* of npvae: it reads files and returns host NumPy arrays; the training
code moves them to the active backend itself (``npvae.asarray``).

    from npvae import datasets
    (x_train, y_train), (x_test, y_test) = datasets.load()              # "mnist-subset"
    (x_train, y_train), (x_test, y_test) = datasets.load("fashion-mnist", data_dir="~/data")

Every dataset comes back as

=========== ============ ========= ===================================================
array       shape        dtype     values
=========== ============ ========= ===================================================
``x_*``     ``(N, 784)`` float32   grey level / 255, in [0, 1]; 784 = 28 x 28, row-major
``y_*``     ``(N,)``     int64     class 0-9
=========== ============ ========= ===================================================

Datasets (``NAMES``):

``mnist-subset`` (the default; shipped inside the package, works offline)
    10,000 real MNIST digits, ``npvae/data/mnist10k.npz`` (uint8 ``images`` (10000, 28, 28)
    and ``labels`` (10000,), grouped by digit; see ``npvae/data/NOTICE`` for where it comes
    from and ``scripts/make_mnist_subset.py`` to rebuild it). ``load`` splits it into 8,000
    training and 2,000 test digits, the same split on every call and every machine
    (``subset_split``): stratified, so each digit has 20% of its examples in the test set,
    and shuffled, so neither set is grouped by digit.

``mnist`` and ``fashion-mnist`` (60,000 train + 10,000 test each)
    The four IDX files of each (``FILES``) are read from ``data_dir`` (the argument; the
    CLI's ``--data-dir``) when it is given, directly or from ``data_dir/<name>/``, and from
    nowhere else: a ``data_dir`` that does not exist, is a file, or holds none or only some of
    the four files is a ``DatasetError`` naming it, never a fall-through to another folder or
    a download. Without ``data_dir`` they are looked for, in this order, in

    1. ``$NPVAE_DATA``, directly or in ``$NPVAE_DATA/<name>/`` (when set, it must be an
       existing folder: a mistyped one is a ``DatasetError`` naming it);
    2. the cache ``cache_dir()/<name>/``: ``$NPVAE_CACHE``, else ``$XDG_CACHE_HOME/npvae``,
       else ``~/.cache/npvae``;
    3. system folders (``SYSTEM_DIRS``): ``/usr/share/datasets/fashion-mnist`` is where
       Debian's ``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST;

    and if none has all four, they are downloaded into the cache (``download``). A damaged
    file in the cache is reported with its full path, to delete: the next ``load`` downloads
    it afresh. ``last_source()`` says where the last ``load``'s data came from.

    Downloads: each file is fetched from the mirrors of ``MIRRORS[name]`` in order (https ones
    first) with ``urllib``, streamed into a temporary file next to its final place. A file may
    take at most ``DOWNLOAD_TIMEOUT`` seconds, all mirrors together (no single read waits
    longer than ``READ_TIMEOUT``); reading stops as soon as the server sends more than the
    file's known size (``SIZES``); a file that is too long, too short, late, or whose SHA-256
    differs from ``SHA256`` is deleted and the next mirror is tried. Only a complete file with
    the right hash is moved into place (``os.replace``), so nothing partial, corrupt or
    temporary is ever left, nor an empty folder that the download created. A cache folder that
    cannot be written is reported as such (with ``NPVAE_CACHE`` to choose another), not as a
    network failure.

    Files found locally may be gzipped (``.gz``) or raw. They are checked for structure by
    ``read_idx`` (magic number, dimensions, length, a gzip file inflated no further than its
    header says; at least one image or label) and for
    identity by a content fingerprint that costs nothing beyond reading them: the number of
    labels and the first ten labels of a labels file, the number of images and the mean grey
    level of an images file (``KNOWN_LABELS``, ``KNOWN_MEAN_PIXEL``). MNIST's and
    Fashion-MNIST's files have the same names, headers and sizes, so only the content tells
    them apart: a file that matches the *other* dataset's fingerprint is refused
    (``DatasetError``: "looks like fashion-mnist's ..."); a file that matches neither (a
    subset, a synthetic test file) is used with a ``DatasetWarning`` naming it. Hashes are not
    used for local files: Debian's ``.gz`` files, for one, differ from the originals (their
    gzip headers lack the file name) although the data in them are the same.

The IDX format (LeCun et al.) is a 4-byte magic number ``00 00 TT DD`` (``TT``: the element
type, ``DD``: the number of dimensions), then ``DD`` dimension sizes as big-endian uint32,
then the elements, big-endian, row-major. ``read_idx`` reads it.

``class_names(name)`` gives the ten class names for plots (the digits ``"0"``..``"9"``, or
Fashion-MNIST's article names); ``LABEL_KIND[name]`` says whether a label is a ``"digit"`` or a
``"class"``.

References:
    Y. LeCun, L. Bottou, Y. Bengio and P. Haffner (1998). Gradient-based learning applied to
    document recognition. Proceedings of the IEEE 86(11), 2278-2324. The MNIST database, by
    Y. LeCun, C. Cortes and C. J. C. Burges: http://yann.lecun.com/exdb/mnist/ (CC BY-SA 3.0).
    H. Xiao, K. Rasul and R. Vollgraf (2017). Fashion-MNIST: a novel image dataset for
    benchmarking machine learning algorithms. arXiv:1708.07747 (MIT licence).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.resources
import math
import os
import struct
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
import zlib
from pathlib import Path

import numpy as np

from .checks import memory_bytes
from .io import open_regular

NAMES = ("mnist-subset", "fashion-mnist", "mnist")
DEFAULT_NAME = "mnist-subset"

SUBSET_FILE = "mnist10k.npz"  # in the package folder npvae/data/
SUBSET_N_TEST = 2000  # of 10,000: 8,000 train / 2,000 test
SUBSET_SEED = 0

IMAGE_SHAPE = (28, 28)
N_CLASSES = 10

# The four files of MNIST and of Fashion-MNIST, in download order: (role, file name).
FILES = (
    ("train_images", "train-images-idx3-ubyte.gz"),
    ("train_labels", "train-labels-idx1-ubyte.gz"),
    ("test_images", "t10k-images-idx3-ubyte.gz"),
    ("test_labels", "t10k-labels-idx1-ubyte.gz"),
)

# Where the files are downloaded from, tried in order (each URL is mirror + file name); https
# first: the SHA-256 check makes a plain-http download safe, but not private.
MIRRORS = {
    "fashion-mnist": [
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",  # the repository
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's own
    ],
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's (torchvision's) mirror
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
    ],
}

# The size in bytes of each original gzipped file (the sizes next to SHA256's sources below):
# a download stops reading as soon as the server sends more.
SIZES = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": 26421880,
        "train-labels-idx1-ubyte.gz": 29515,
        "t10k-images-idx3-ubyte.gz": 4422102,
        "t10k-labels-idx1-ubyte.gz": 5148,
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": 9912422,
        "train-labels-idx1-ubyte.gz": 28881,
        "t10k-images-idx3-ubyte.gz": 1648877,
        "t10k-labels-idx1-ubyte.gz": 4542,
    },
}

DOWNLOAD_TIMEOUT = 300.0  # seconds one file may take, all mirrors together (26 MB: >= 90 kB/s)
READ_TIMEOUT = 60.0  # seconds to connect, and for any one read, at most (never past the above)

# SHA-256 of the original gzipped files, as served by the mirrors above.
SHA256 = {
    # From tensorflow/datasets, tensorflow_datasets/url_checksums/fashion_mnist.txt (sizes
    # 26421880, 29515, 4422102, 5148 bytes); the same values are listed next to the md5 sums
    # of the Fashion-MNIST README (8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...) in
    # several independent projects.
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    # From tensorflow/datasets, tensorflow_datasets/url_checksums/mnist.txt (the
    # storage.googleapis.com/cvdf-datasets mirror; sizes 9912422, 28881, 1648877, 4542 bytes,
    # the sizes on LeCun's page). The PyTorch mirror serves the same files (torchvision checks
    # them by md5: f68b3c2d..., d53e105e..., 9fb629c4..., ec29112d...).
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
}

# Content fingerprints of the real files, to tell MNIST from Fashion-MNIST (same names, headers
# and sizes). Labels: (number of labels, the first ten). Images: (number of images, mean of
# grey level / 255). Fashion-MNIST's values are computed from Debian's dataset-fashion-mnist
# files, whose gzip streams are the originals' (adding back the file name that Debian's headers
# lack gives exactly the SHA256 above); MNIST's are the well-known ones (train mean 0.1307,
# the usual normalization constant; first labels 5 0 4 1 9 2 1 3 1 4 and 7 2 1 0 4 1 4 9 5 9).
KNOWN_LABELS = {
    "mnist": {"train": (60000, (5, 0, 4, 1, 9, 2, 1, 3, 1, 4)),
              "test": (10000, (7, 2, 1, 0, 4, 1, 4, 9, 5, 9))},
    "fashion-mnist": {"train": (60000, (9, 0, 0, 3, 0, 2, 7, 2, 5, 5)),
                      "test": (10000, (9, 2, 1, 1, 6, 1, 4, 6, 5, 7))},
}
KNOWN_MEAN_PIXEL = {
    "mnist": {"train": (60000, 0.1307), "test": (10000, 0.1325)},
    "fashion-mnist": {"train": (60000, 0.2860), "test": (10000, 0.2868)},
}
MEAN_PIXEL_TOLERANCE = 0.01  # the two datasets' means are 0.15 apart

# Names of the ten classes, for plots: label i is CLASS_NAMES[name][i].
CLASS_NAMES = {
    "mnist-subset": tuple(str(d) for d in range(10)),
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}
LABEL_KIND = {"mnist-subset": "digit", "mnist": "digit", "fashion-mnist": "class"}

# Folders a system package installs the files into (searched after the cache).
SYSTEM_DIRS = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],  # Debian: dataset-fashion-mnist
    "mnist": [],
}

# IDX element type code -> big-endian dtype in the file.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),  # unsigned byte
    0x09: np.dtype(">i1"),  # signed byte
    0x0B: np.dtype(">i2"),  # short, 2 bytes
    0x0C: np.dtype(">i4"),  # int, 4 bytes
    0x0D: np.dtype(">f4"),  # float, 4 bytes
    0x0E: np.dtype(">f8"),  # double, 8 bytes
}

_GZIP_MAGIC = b"\x1f\x8b"


class DatasetError(ValueError):
    """A dataset file is missing, truncated, corrupt, or another dataset's; the message names
    the file and what is wrong, and for a missing dataset, where to put the files."""


class DatasetWarning(UserWarning):
    """A dataset file was used although its content is not recognized as the real dataset's
    (a subset, a modified copy, a synthetic test file); the message names the file."""


# ---------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------
def load(name: str = DEFAULT_NAME, data_dir=None):
    """Load a dataset as ``(x_train, y_train), (x_test, y_test)``, host NumPy arrays.

    ``x``: float32 (N, 784) in [0, 1] (pixel / 255); ``y``: int64 (N,) in 0..9.
    ``name`` is one of ``NAMES``: ``"mnist-subset"`` (8,000 / 2,000, shipped in the package),
    ``"fashion-mnist"`` or ``"mnist"`` (60,000 / 10,000; found locally or downloaded, see the
    module docstring). ``data_dir`` (a folder, or None): for the full-size datasets, the only
    place the files are read from, directly or in ``data_dir/<name>``: a ``DatasetError``
    (a ``ValueError``) naming it when it is not an existing folder or lacks any of the four
    files, never another folder or a download; the subset ignores it. A set ``$NPVAE_DATA``
    must likewise be an existing folder. Local files of the wrong dataset are refused,
    unrecognized ones used with a ``DatasetWarning`` (see the module docstring).
    ``last_source()`` then says where the data came from.
    """
    global _source
    _source = None
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"name: expected one of {NAMES}, got {name!r}")
    if name == "mnist-subset":
        images, labels = load_subset_arrays()
        train_idx, test_idx = subset_split(labels)
        _source = f"the MNIST subset shipped with npvae ({importlib.resources.files('npvae') / 'data' / SUBSET_FILE})"
        return (
            (_to_float(images[train_idx]), labels[train_idx].astype(np.int64)),
            (_to_float(images[test_idx]), labels[test_idx].astype(np.int64)),
        )
    found = _find(name, data_dir)
    folder, origin = found if found is not None else (download(name), "downloaded into the download cache")
    data = _load_idx_folder(folder, name, cached=folder == cache_dir() / name)
    _source = f"{folder} ({origin}): " + ", ".join(_local_file(folder, f).name for _, f in FILES)
    return data


_source = None  # what last_source() says


def last_source() -> str | None:
    """Where the data of the last ``load`` came from, in one line (None before the first
    ``load``, or after one that failed): ``"the MNIST subset shipped with npvae (<its path>)"``,
    or ``"<folder> (<how it was found>): <the four files read>"``, the how being ``data_dir``,
    ``$NPVAE_DATA``, ``the download cache``, ``a system folder`` or ``downloaded into the
    download cache``. ``npvae train`` prints it."""
    return _source


def class_names(name: str) -> tuple[str, ...]:
    """The ten class names of dataset ``name``, label ``i`` -> ``class_names(name)[i]``: the
    digits ``"0"``..``"9"`` for ``"mnist"`` and ``"mnist-subset"``, the article names of
    Fashion-MNIST (``"T-shirt/top"``, ``"Trouser"``, ... ``"Ankle boot"``) for
    ``"fashion-mnist"``. ``LABEL_KIND[name]`` says which: ``"digit"`` or ``"class"``."""
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"name: expected one of {NAMES}, got {name!r}")
    return CLASS_NAMES[name]


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 784) in [0, 1]."""
    return (images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0))


# ---------------------------------------------------------------------------------------
# The embedded subset
# ---------------------------------------------------------------------------------------
def load_subset_arrays():
    """The shipped 10,000 digits: ``images`` uint8 (10000, 28, 28), ``labels`` uint8 (10000,).

    Read with ``importlib.resources`` (so it works from an installed package) and
    ``np.load(..., allow_pickle=False)``; grouped by digit, as stored.
    """
    resource = importlib.resources.files("npvae") / "data" / SUBSET_FILE
    where = f"npvae/data/{SUBSET_FILE}"
    try:
        with importlib.resources.as_file(resource) as path:
            where = str(path)
            with np.load(path, allow_pickle=False) as npz:
                images, labels = npz["images"], npz["labels"]
    except FileNotFoundError as exc:
        raise DatasetError(
            f"{where}: the embedded MNIST subset is missing from the installed package "
            "(reinstall npvae; the file is package data)"
        ) from exc
    except (OSError, ValueError, KeyError, zlib.error) as exc:
        raise DatasetError(
            f"{where}: expected an .npz file with arrays 'images' and 'labels', "
            f"could not read it ({exc})"
        ) from exc
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DatasetError(
            f"{where}: expected 'images' uint8 of shape (N, 28, 28), "
            f"got {images.dtype} {images.shape}"
        )
    if labels.shape != (images.shape[0],) or labels.dtype.kind not in "iu":
        raise DatasetError(
            f"{where}: expected integer 'labels' of shape ({images.shape[0]},), "
            f"got {labels.dtype} {labels.shape}"
        )
    return images, labels


def subset_split(labels, n_test: int = SUBSET_N_TEST, seed: int = SUBSET_SEED):
    """The fixed stratified train/test split of the subset: ``(train_idx, test_idx)``.

    Class ``c`` with ``n_c`` of the ``N`` examples gets ``t_c`` test examples, the
    largest-remainder rounding of ``n_test * n_c / N`` (so the ``t_c`` add up to ``n_test``
    and each is within 1 of the exact proportion). With one ``np.random.default_rng(seed)``,
    classes are visited in order 0, 1, ...: each class's indices are permuted and the first
    ``t_c`` go to test, the rest to train; then the train and test index lists are each
    permuted, so neither is grouped by class. Same labels and seed -> the same split.
    Returns two int64 index arrays.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 < n_test < n:
        raise ValueError(f"n_test: expected 0 < n_test < {n} (the number of labels), got {n_test}")
    classes, counts = np.unique(labels, return_counts=True)
    exact = n_test * counts / n
    quota = np.floor(exact).astype(np.int64)
    short = n_test - int(quota.sum())
    # largest remainders first; ties go to the smaller class label (stable sort)
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[:short]] += 1

    rng = np.random.default_rng(seed)
    train, test = [], []
    for c, t in zip(classes, quota):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[:t])
        train.append(idx[t:])
    train_idx = rng.permutation(np.concatenate(train)).astype(np.int64)
    test_idx = rng.permutation(np.concatenate(test)).astype(np.int64)
    return train_idx, test_idx


# ---------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------
def read_idx(path, shape=None) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a NumPy array of its dtype and shape.

    Gzip is recognized by its magic bytes ``1f 8b``, not by the file name. Checked: the magic
    number (``00 00``, a known type code from ``IDX_DTYPES``, at least one dimension), the
    header length, that the data holds exactly ``prod(dims) * itemsize`` bytes, and, if
    ``shape`` is given (a tuple, ``None`` entries match anything), the dimensions. The header is
    checked before any data is read: data larger than this machine's memory is refused unread,
    and a gzip stream is inflated no further than the header's size plus one byte (a file
    that inflates to more is refused: no gzip bomb fills the memory). The array comes back in
    native byte order: uint8, int8, int16, int32, float32 or float64. A dimension may be 0 (an
    empty array comes back; ``load`` refuses files with no examples). Anything wrong raises
    ``DatasetError`` naming ``path``.
    """
    path = Path(path)
    try:
        f = open_regular(path, "file")
    except (OSError, ValueError) as exc:
        raise DatasetError(str(exc) if isinstance(exc, ValueError) else  # a FIFO, a device
                           f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    with f:
        on_disk = os.fstat(f.fileno()).st_size
        gz = f.read(2) == _GZIP_MAGIC
        f.seek(0)
        stream = gzip.GzipFile(fileobj=f, mode="rb") if gz else f
        return _read_idx_stream(path, stream, gz, on_disk, shape)


def _read_idx_stream(path: Path, stream, gz: bool, on_disk: int, shape) -> np.ndarray:
    """``read_idx`` on an open stream: the header, its checks, then at most the data it
    announces (plus one byte, to see that there is more)."""
    raw = _read_upto(path, stream, 4, gz, on_disk)
    if len(raw) < 4:
        raise DatasetError(f"{path}: expected an IDX header of at least 4 bytes, got {len(raw)}")
    zero0, zero1, code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0:
        raise DatasetError(
            f"{path}: not an IDX file: expected a magic number starting with bytes 00 00, "
            f"got {raw[:4].hex(' ')}"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{k:02X}" for k in IDX_DTYPES)
        raise DatasetError(f"{path}: expected an IDX type code in ({known}), got 0x{code:02X}")
    if ndim < 1:
        raise DatasetError(f"{path}: expected at least 1 dimension in the IDX header, got 0")
    header = 4 + 4 * ndim
    raw += _read_upto(path, stream, header - 4, gz, on_disk)
    if len(raw) < header:
        raise DatasetError(
            f"{path}: expected a {header}-byte header for {ndim} dimensions, "
            f"got {len(raw)} bytes in all"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = IDX_DTYPES[code]
    if shape is not None:
        shape = tuple(shape)
        if len(shape) != ndim or any(s is not None and s != d for s, d in zip(shape, dims)):
            want = ", ".join("N" if s is None else str(s) for s in shape)
            want = f"({want},)" if len(shape) == 1 else f"({want})"
            raise DatasetError(f"{path}: expected dimensions {want} (N: any), got {tuple(dims)}")
    expected = math.prod(dims) * dtype.itemsize
    total = memory_bytes()
    if total and expected > total:
        raise DatasetError(f"{path}: the header says shape {tuple(dims)}, {expected} bytes of data, more than "
                           f"this machine's {total / 2**30:.1f} GiB of memory")
    what = f"{path}: expected {expected} bytes of data for shape {tuple(dims)} ({dtype.itemsize}-byte {dtype.name})"
    if not gz and on_disk - header != expected:  # a raw file's length is known without reading it
        raise DatasetError(f"{what}, got {on_disk - header}")
    data = _read_upto(path, stream, expected + 1, gz, on_disk)
    if len(data) > expected:
        raise DatasetError(f"{what}, got more (reading stopped at {len(data)})")
    if len(data) < expected:
        raise DatasetError(f"{what}, got {len(data)}")
    if expected == 0:  # np.frombuffer refuses an empty buffer
        return np.zeros(dims, dtype=dtype.newbyteorder("="))
    return np.frombuffer(data, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))  # a writable copy


def _read_upto(path: Path, stream, n: int, gz: bool, on_disk: int) -> bytes:
    """Up to ``n`` bytes of ``stream`` (fewer only at its end), read 1 MiB at a time; a
    damaged gzip stream is a ``DatasetError`` naming ``path``."""
    chunks, got = [], 0
    try:
        while got < n:
            chunk = stream.read(min(n - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
    except EOFError as exc:
        raise DatasetError(
            f"{path}: truncated gzip stream: the file ends before the end of the compressed "
            f"data ({on_disk} bytes on disk); download it again"
        ) from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        if not gz:
            raise DatasetError(f"{path}: cannot read the file ({getattr(exc, 'strerror', None) or exc})") from exc
        raise DatasetError(f"{path}: corrupt gzip data ({exc}); download it again") from exc
    return b"".join(chunks)


def _load_idx_folder(folder: Path, name: str, cached: bool = False):
    """Read the four IDX files of dataset ``name`` in ``folder``, check their structure and
    identity (``_check_identity``), and turn them into the ``load`` arrays. ``cached``: the
    folder is the download cache, so a bad file's message says to delete it (full path) for
    ``load`` to download it afresh."""
    paths = {role: _local_file(folder, fname) for role, fname in FILES}
    missing = [fname for role, fname in FILES if paths[role] is None]
    if missing:
        raise DatasetError(f"{folder}: expected the files {', '.join(missing)} (or without .gz)")
    arrays = {}
    for role, path in paths.items():
        split, kind = role.split("_")
        try:
            a = read_idx(path, shape=(None,) + IMAGE_SHAPE if kind == "images" else (None,))
            if a.dtype != np.uint8:
                raise DatasetError(f"{path}: expected unsigned bytes (IDX type 0x08), got {a.dtype}")
            if a.shape[0] == 0:
                raise DatasetError(f"{path}: expected at least one {kind[:-1]}, got 0")
            _check_identity(path, a, name, split)
        except DatasetError as exc:
            if not cached:
                raise
            raise DatasetError(f"{str(exc).removesuffix('; download it again')}; it is in npvae's download cache: "
                               f"delete {path.absolute()} and load again to download it afresh") from None
        arrays[role] = a
    out = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        images_path, labels_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(
                f"{labels_path}: expected {images.shape[0]} labels, one per image "
                f"in {images_path.name}, got {labels.shape[0]}"
            )
        if labels.max() >= N_CLASSES:
            raise DatasetError(
                f"{labels_path}: expected labels 0..{N_CLASSES - 1}, got a {int(labels.max())}"
            )
        out.append((_to_float(images), labels.astype(np.int64)))
    return tuple(out)


_SPLIT_WORDS = {"train": "training", "test": "test"}


def _fingerprint(a: np.ndarray) -> tuple[str, object]:
    """``("labels", (n, first ten))`` for a 1-D array, ``("images", (n, mean / 255))`` else."""
    if a.ndim == 1:
        return "labels", (a.shape[0], tuple(int(v) for v in a[:10]))
    return "images", (a.shape[0], float(a.mean(dtype=np.float64)) / 255.0)


def _matches(kind: str, got, known) -> bool:
    if kind == "labels":
        return got == known
    return got[0] == known[0] and abs(got[1] - known[1]) <= MEAN_PIXEL_TOLERANCE


def _describe(kind: str, fingerprint) -> str:
    n, value = fingerprint
    if kind == "labels":
        return f"{n} labels starting {' '.join(map(str, value))}"
    return f"{n} images of mean grey level {value:.4f}"


def _check_identity(path: Path, a: np.ndarray, name: str, split: str) -> None:
    """Refuse ``path`` if its content is the other dataset's; warn if it is neither's.

    ``a`` is the file's array, ``split`` ``"train"`` or ``"test"``. The fingerprint
    (``KNOWN_LABELS``, ``KNOWN_MEAN_PIXEL``) is computed from the array already in memory: a
    mean over the images, nothing else read or hashed, so nothing needs remembering.
    """
    kind, got = _fingerprint(a)
    known = KNOWN_LABELS if kind == "labels" else KNOWN_MEAN_PIXEL
    if name not in known:
        return
    what = f"{_SPLIT_WORDS[split]} {kind}"
    tolerance = "" if kind == "labels" else f" +- {MEAN_PIXEL_TOLERANCE}"
    expected = f"{_describe(kind, known[name][split])}{tolerance}"
    if _matches(kind, got, known[name][split]):
        return
    for other in known:
        if other != name and _matches(kind, got, known[other][split]):
            raise DatasetError(
                f"{path}: expected {name}'s {what} ({expected}), got {_describe(kind, got)}: "
                f"this file looks like {other}'s {what}, not {name}'s "
                f"(to use it, load {other!r}; for {name}, put {name}'s files there)"
            )
    warnings.warn(
        f"{path}: not recognized as {name}'s {what} (expected {expected}, "
        f"got {_describe(kind, got)}); using it as it is",
        DatasetWarning,
        stacklevel=4,
    )


# ---------------------------------------------------------------------------------------
# Finding the files
# ---------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """The download cache: ``$NPVAE_CACHE``, else ``$XDG_CACHE_HOME/npvae``, else
    ``~/.cache/npvae``. Each dataset lives in its own ``<name>/`` subfolder."""
    env = os.environ.get("NPVAE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "npvae"


def search_dirs(name: str, data_dir=None) -> list[Path]:
    """The folders searched for dataset ``name``, in order (see the module docstring): only
    ``data_dir`` and ``data_dir/<name>`` when ``data_dir`` is given."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root, root / name]
    return [folder for folder, _ in _candidates(name)]


def _candidates(name: str, data_dir=None) -> list[tuple[Path, str]]:
    """(folder, where it comes from) for every place the files of ``name`` may be put, in
    search order: data_dir's two, $NPVAE_DATA's two, the cache, system folders."""
    pairs = []
    for root, origin in ((data_dir, "data_dir"), (os.environ.get("NPVAE_DATA") or None, "$NPVAE_DATA")):
        if root is not None:
            root = Path(root).expanduser()
            pairs += [(root, origin), (root / name, origin)]
    pairs.append((cache_dir() / name, "the download cache"))
    pairs += [(Path(p), "a system folder") for p in SYSTEM_DIRS.get(name, [])]
    out = []
    for folder, origin in pairs:  # keep the first of duplicates
        if folder not in [f for f, _ in out]:
            out.append((folder, origin))
    return out


def _local_file(folder: Path, fname: str) -> Path | None:
    """``folder/fname`` (gzipped) or the same name without ``.gz`` (raw), or None."""
    for candidate in (folder / fname, folder / fname[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path) -> bool:
    return all(_local_file(folder, fname) is not None for _, fname in FILES)


def _check_folder(what: str, value) -> Path:
    """``value`` as a Path, or a ``DatasetError`` unless it is an existing folder: a typo in
    a path must not fall through to another folder or a download."""
    path = Path(value).expanduser()
    note = " (the environment variable: correct it or unset it)" if what == "NPVAE_DATA" else ""
    if not path.exists():
        raise DatasetError(f"{what}: no such folder: {path}{note}")
    if not path.is_dir():
        raise DatasetError(f"{what}: expected a folder, got a file: {path}{note}")
    return path


def _find(name: str, data_dir=None) -> tuple[Path, str] | None:
    """(the folder to read the four files from, where it comes from), or None: download.

    A given ``data_dir`` is the only place looked at (it or ``data_dir/<name>``): a
    ``DatasetError`` if it is not an existing folder or has not all four files. Else
    ``$NPVAE_DATA``, if set, must be an existing folder; the first complete folder of
    ``search_dirs`` is used."""
    if data_dir is not None:
        root = _check_folder("data_dir", data_dir)
        for folder in (root, root / name):
            if _complete(folder):
                return folder, "data_dir"

        def has(folder):
            if not folder.is_dir():
                return "does not exist"
            missing = [f for _, f in FILES if _local_file(folder, f) is None]
            return "has none of them" if len(missing) == len(FILES) else \
                f"has {len(FILES) - len(missing)} of 4 (missing {', '.join(missing)})"

        raise DatasetError(
            f"data_dir: {root}: expected the four files of {name} ({', '.join(f for _, f in FILES)}; gzipped or "
            f"not) in it or in {root / name}; {root} {has(root)}, {root / name} {has(root / name)}. Nothing else "
            "is searched when data_dir (--data-dir) is given: put the files there, or leave it out to use "
            "$NPVAE_DATA, the download cache or a download")
    if os.environ.get("NPVAE_DATA"):
        _check_folder("NPVAE_DATA", os.environ["NPVAE_DATA"])
    return next(((folder, origin) for folder, origin in _candidates(name) if _complete(folder)), None)


def find_files(name: str, data_dir=None) -> Path | None:
    """The folder ``load`` reads the four files of ``name`` from, or None (``load`` then
    downloads them): ``data_dir`` or ``data_dir/<name>`` when ``data_dir`` is given (else a
    ``DatasetError``: see ``load``), otherwise the first folder of ``search_dirs`` that holds
    all four."""
    found = _find(name, data_dir)
    return None if found is None else found[0]


def _where_to_put(name: str, data_dir=None) -> str:
    """The part of the "not found" message that says where the files may go."""
    lines = [f"Put the four files of {name!r} ({', '.join(f for _, f in FILES)}; "
             "gzipped, or the same names without .gz) in one of these folders, searched in order:"]
    for folder, _ in _candidates(name, data_dir):
        have = [f for _, f in FILES if _local_file(folder, f) is not None]
        note = f" (has {len(have)} of 4: {', '.join(have)})" if have else ""
        lines.append(f"  {folder}{note}")
    lines.append("or pass the folder with --data-dir DIR (load(..., data_dir=DIR)) "
                 "or the environment variable NPVAE_DATA=DIR.")
    if name == "fashion-mnist":
        lines.append("On Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs them.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Downloading
# ---------------------------------------------------------------------------------------
def download(name: str, data_dir=None, timeout: float | None = None) -> Path:
    """Download the four files of ``name`` into ``cache_dir()/<name>/`` and return that folder.

    For each file, the mirrors of ``MIRRORS[name]`` are tried in order until one gives exactly
    ``SIZES[name][file]`` bytes whose SHA-256 is ``SHA256[name][file]`` (``_fetch``: streamed
    with ``urllib`` into a temporary file next to the target, moved into place only after both
    checks, deleted otherwise). ``timeout`` (seconds, default ``DOWNLOAD_TIMEOUT``, read at call
    time) bounds each file, all its mirrors together; mirrors not reached in time are skipped.
    A file already in the cache with the right size and hash is not downloaded again. Nothing
    partial, temporary or empty is left behind: no temporary file, and no folder that this call
    created and that is still empty. Raises ``DatasetError``: a cache folder that cannot be
    written says so (``NPVAE_CACHE`` chooses another); a checksum mismatch says so; otherwise
    (no connection, too slow, wrong size) it lists each URL's failure and where to put the files
    by hand (``data_dir`` only adds to that list).
    """
    if name not in MIRRORS:
        raise ValueError(f"name: expected one of {tuple(MIRRORS)}, got {name!r}")
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected a number of seconds > 0, got {timeout!r}")

    folder = cache_dir() / name
    made = []  # the folders this call creates, deepest first: removed again if left empty
    for d in (folder, *folder.parents):
        if d.exists():
            break
        made.append(d)
    progress = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _cache_error(folder, exc) from exc
        for _, fname in FILES:
            target, size, known = folder / fname, SIZES[name][fname], SHA256[name][fname]
            if _file_matches(target, size, known):
                continue
            deadline = time.monotonic() + timeout
            errors = []  # (url, what went wrong, whether it was a checksum mismatch)
            for mirror in MIRRORS[name]:
                url = mirror + fname
                if time.monotonic() >= deadline:
                    errors.append((url, f"not tried: the {timeout:g} s for this file were used up", False))
                    continue
                try:
                    _fetch(url, target, size, known, deadline, timeout, progress)
                    break
                except _FetchError as exc:
                    errors.append((url, str(exc), exc.checksum))
            else:
                raise _download_error(name, fname, known, folder, errors, data_dir)
    except BaseException:
        for d in made:  # leave no empty trace of a failed download
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    return folder


class _FetchError(Exception):
    """One URL did not give the file (network error, HTTP error, too slow, wrong size or hash);
    the next mirror may. ``checksum``: the bytes arrived but their SHA-256 was wrong."""

    def __init__(self, message: str, checksum: bool = False):
        super().__init__(message)
        self.checksum = checksum


def _cache_error(folder: Path, exc: OSError) -> DatasetError:
    """The cache folder cannot be written: a local problem, not a network one."""
    return DatasetError(
        f"{folder}: cannot write to the download cache ({exc.strerror or exc}); "
        "choose another folder with the environment variable NPVAE_CACHE=DIR, "
        "or put the files in a folder yourself and pass it with --data-dir DIR"
    )


def _file_matches(path: Path, size: int, sha256: str) -> bool:
    """Whether ``path`` is a file of ``size`` bytes with that SHA-256."""
    try:
        if not path.is_file() or path.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest() == sha256
    except OSError:
        return False


def _set_read_timeout(response, seconds: float) -> None:
    """Make the next read of ``response`` wait at most ``seconds`` (best effort: the socket sits
    at ``response.fp.raw._sock`` in CPython's http.client; without it, the timeout given to
    ``urlopen`` stays)."""
    sock = getattr(getattr(getattr(response, "fp", None), "raw", None), "_sock", None)
    if sock is not None and hasattr(sock, "settimeout"):
        sock.settimeout(max(seconds, 0.001))


def _timed_out(exc: BaseException, left: float, deadline: float) -> bool:
    """Whether ``exc`` means the deadline was reached: it is past, or ``exc`` is a timeout of
    a wait that the deadline had cut short (``left`` < ``READ_TIMEOUT``)."""
    if time.monotonic() >= deadline:
        return True
    timeout = isinstance(exc, TimeoutError) or isinstance(getattr(exc, "reason", None), TimeoutError)
    return timeout and left < READ_TIMEOUT


def _fetch(url: str, target: Path, size: int, sha256: str, deadline: float, timeout: float,
           progress: bool = False) -> None:
    """Download ``url`` to ``target``: exactly ``size`` bytes with that SHA-256, before
    ``deadline`` (``time.monotonic()``), or ``_FetchError`` and no file.

    The bytes go to a temporary file ``.<name>.*.part`` in ``target``'s folder, made before
    connecting (so an unwritable cache is found without the network), and are hashed as they
    come. Reads use ``read1`` (returns what has arrived, so a server trickling bytes cannot hold
    a read past the deadline) with a socket timeout of at most ``READ_TIMEOUT`` and never past
    the deadline. More than ``size`` bytes (or a ``Content-Length`` other than ``size``) stops
    the transfer at once. The temporary file is deleted on any failure (including
    ``KeyboardInterrupt``) and renamed onto ``target`` on success. Local write errors raise
    ``DatasetError`` (``_cache_error``); everything else is a ``_FetchError``.
    """
    try:
        tmp = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.",
                                          suffix=".part", delete=False)
    except OSError as exc:
        raise _cache_error(target.parent, exc) from exc

    def late(got: int) -> _FetchError:
        return _FetchError(f"gave up after {timeout:g} s (DOWNLOAD_TIMEOUT) with {got} of {size} bytes")

    bar = None
    try:
        with tmp:
            request = urllib.request.Request(url, headers={"User-Agent": "npvae (Python urllib)"})
            got, digest = 0, hashlib.sha256()
            left = deadline - time.monotonic()
            try:
                response = urllib.request.urlopen(request, timeout=max(min(READ_TIMEOUT, left), 0.001))
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()
                if _timed_out(exc, left, deadline):
                    raise late(0) from exc
                raise _FetchError(f"{type(exc).__name__}: {exc}") from exc
            with response:
                announced = response.headers.get("Content-Length")
                if announced is not None and announced.strip() != str(size):
                    raise _FetchError(f"expected {size} bytes, the server announced {announced.strip()}")
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=size, unit="B", unit_scale=True, desc=target.name, leave=False)
                read = getattr(response, "read1", response.read)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise late(got)
                    _set_read_timeout(response, min(READ_TIMEOUT, left))
                    try:
                        chunk = read(min(1 << 16, size + 1 - got))  # size + 1: to see one too many
                    except (OSError, http.client.HTTPException) as exc:
                        if _timed_out(exc, left, deadline):
                            raise late(got) from exc
                        raise _FetchError(
                            f"after {got} of {size} bytes: {type(exc).__name__}: {exc}") from exc
                    if not chunk:
                        break
                    got += len(chunk)
                    if got > size:
                        raise _FetchError(f"expected {size} bytes, the server sent more "
                                          f"(stopped reading at {got})")
                    digest.update(chunk)
                    try:
                        tmp.write(chunk)
                    except OSError as exc:
                        raise _cache_error(target.parent, exc) from exc
                    if bar is not None:
                        bar.update(len(chunk))
            if got < size:
                raise _FetchError(f"expected {size} bytes, the transfer ended after {got}")
            if digest.hexdigest() != sha256:
                raise _FetchError(f"got sha256 {digest.hexdigest()}", checksum=True)
            try:
                tmp.flush()  # a full disk shows here at the latest
            except OSError as exc:
                raise _cache_error(target.parent, exc) from exc
        try:
            os.replace(tmp.name, target)
        except OSError as exc:
            raise _cache_error(target.parent, exc) from exc
    except BaseException:
        try:
            os.unlink(tmp.name)
        except OSError:
            pass
        raise
    finally:
        if bar is not None:
            bar.close()


def _download_error(name, fname, known, folder, errors, data_dir=None) -> DatasetError:
    """A ``DatasetError`` for a file no mirror gave: a checksum error or "put the files here"."""
    bad = [(url, why) for url, why, checksum in errors if checksum]
    if bad:
        tried = "; ".join(f"{url}: {why}" for url, why in bad)
        return DatasetError(
            f"{folder / fname}: checksum mismatch: expected sha256 {known}, the download did "
            f"not match ({tried}). Nothing was written to the cache; the mirror may be serving "
            "a damaged file: try again later, or put the files there by hand.\n"
            + _where_to_put(name, data_dir)
        )
    tried = "\n".join(f"  {url}: {why}" for url, why, _ in errors)
    return DatasetError(
        f"{name}: the data files are not on this machine and {fname} could not be downloaded "
        f"(no network, or too slow?). Tried:\n{tried}\n" + _where_to_put(name, data_dir)
    )
