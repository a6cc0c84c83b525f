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
    The four IDX files of each (``FILES``) are looked for, in this order, in

    1. ``data_dir`` (the argument; the CLI's ``--data-dir``), directly or in ``data_dir/<name>/``;
    2. ``$NPVAE_DATA``, directly or in ``$NPVAE_DATA/<name>/``;
    3. the cache ``cache_dir()/<name>/``: ``$NPVAE_CACHE``, else ``$XDG_CACHE_HOME/npvae``,
       else ``~/.cache/npvae``;
    4. system folders (``SYSTEM_DIRS``): ``/usr/share/datasets/fashion-mnist`` is where
       Debian's ``apt-get install dataset-fashion-mnist`` puts Fashion-MNIST;

    and if none has all four, they are downloaded from ``MIRRORS`` into the cache (with
    ``pooch``: each file's SHA-256 is checked against ``SHA256`` before it is moved into
    place, so a failed or corrupt download leaves nothing behind). A file may be gzipped
    (``.gz``) or raw. Files found locally are checked for structure by ``read_idx`` (magic
    number, dimensions, length), not by hash: Debian's files, for one, are the same data
    recompressed, so their bytes differ from the originals.

The IDX format (LeCun et al.) is a 4-byte magic number ``00 00 TT DD`` (``TT``: the element
type, ``DD``: the number of dimensions), then ``DD`` dimension sizes as big-endian uint32,
then the elements, big-endian, row-major. ``read_idx`` reads it.

``binarize_static(x, seed)`` draws one fixed Bernoulli sample of grey-level images (the
"statically binarized MNIST" convention); dynamic binarization (a new draw every epoch) is the
training code's business.

References:
    Y. LeCun, L. Bottou, Y. Bengio and P. Haffner (1998). Gradient-based learning applied to
    document recognition. Proceedings of the IEEE 86(11), 2278-2324. The MNIST database, by
    Y. LeCun, C. Cortes and C. J. C. Burges: http://yann.lecun.com/exdb/mnist/ (CC BY-SA 3.0).
    H. Xiao, K. Rasul and R. Vollgraf (2017). Fashion-MNIST: a novel image dataset for
    benchmarking machine learning algorithms. arXiv:1708.07747 (MIT licence).
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

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

# Where the files are downloaded from, tried in order (each URL is mirror + file name).
MIRRORS = {
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # Zalando's own
    ],
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",  # PyTorch's (torchvision's) mirror
        "https://storage.googleapis.com/cvdf-datasets/mnist/",  # TensorFlow's mirror
    ],
}

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
    """A dataset file is missing, truncated or corrupt; the message names the file and what
    is wrong, and for a missing dataset, where to put the files."""


# ---------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------
def load(name: str = DEFAULT_NAME, data_dir=None):
    """Load a dataset as ``(x_train, y_train), (x_test, y_test)``, host NumPy arrays.

    ``x``: float32 (N, 784) in [0, 1] (pixel / 255); ``y``: int64 (N,) in 0..9.
    ``name`` is one of ``NAMES``: ``"mnist-subset"`` (8,000 / 2,000, shipped in the package),
    ``"fashion-mnist"`` or ``"mnist"`` (60,000 / 10,000; found locally or downloaded, see the
    module docstring). ``data_dir`` (a folder, or None) is searched first for the full-size
    datasets; the subset ignores it.
    """
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"name: expected one of {NAMES}, got {name!r}")
    if name == "mnist-subset":
        images, labels = load_subset_arrays()
        train_idx, test_idx = subset_split(labels)
        return (
            (_to_float(images[train_idx]), labels[train_idx].astype(np.int64)),
            (_to_float(images[test_idx]), labels[test_idx].astype(np.int64)),
        )
    folder = find_files(name, data_dir)
    if folder is None:
        folder = download(name, data_dir=data_dir)
    return _load_idx_folder(folder)


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
    ``shape`` is given (a tuple, ``None`` entries match anything), the dimensions. The array
    comes back in native byte order: uint8, int8, int16, int32, float32 or float64.
    Anything wrong raises ``DatasetError`` naming ``path``.
    """
    path = Path(path)
    raw = _read_bytes(path)
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
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        raise DatasetError(
            f"{path}: expected {expected} bytes of data for shape {tuple(dims)} "
            f"({dtype.itemsize}-byte {dtype.name}), got {got}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it starts with the gzip magic ``1f 8b``."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the file ({exc.strerror or exc})") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError as exc:
        raise DatasetError(
            f"{path}: truncated gzip stream: the file ends before the end of the compressed "
            f"data ({len(raw)} bytes on disk); download it again"
        ) from exc
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: corrupt gzip data ({exc}); download it again") from exc


def _load_idx_folder(folder: Path):
    """Read the four IDX files in ``folder`` and turn them into the ``load`` arrays."""
    paths = {role: _local_file(folder, fname) for role, fname in FILES}
    missing = [fname for role, fname in FILES if paths[role] is None]
    if missing:
        raise DatasetError(f"{folder}: expected the files {', '.join(missing)} (or without .gz)")
    out = []
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"], shape=(None,) + IMAGE_SHAPE)
        labels = read_idx(paths[f"{split}_labels"], shape=(None,))
        for p, a in ((paths[f"{split}_images"], images), (paths[f"{split}_labels"], labels)):
            if a.dtype != np.uint8:
                raise DatasetError(f"{p}: expected unsigned bytes (IDX type 0x08), got {a.dtype}")
        if labels.shape[0] != images.shape[0]:
            raise DatasetError(
                f"{paths[f'{split}_labels']}: expected {images.shape[0]} labels, one per image "
                f"in {paths[f'{split}_images'].name}, got {labels.shape[0]}"
            )
        if labels.size and labels.max() >= N_CLASSES:
            raise DatasetError(
                f"{paths[f'{split}_labels']}: expected labels 0..{N_CLASSES - 1}, "
                f"got a {int(labels.max())}"
            )
        out.append((_to_float(images), labels.astype(np.int64)))
    return tuple(out)


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
    """The folders searched for dataset ``name``, in order (see the module docstring)."""
    dirs = []
    for root in (data_dir, os.environ.get("NPVAE_DATA") or None):
        if root is not None:
            root = Path(root).expanduser()
            dirs += [root, root / name]
    dirs.append(cache_dir() / name)
    dirs += [Path(p) for p in SYSTEM_DIRS.get(name, [])]
    out = []
    for d in dirs:  # keep the first of duplicates
        if d not in out:
            out.append(d)
    return out


def _local_file(folder: Path, fname: str) -> Path | None:
    """``folder/fname`` (gzipped) or the same name without ``.gz`` (raw), or None."""
    for candidate in (folder / fname, folder / fname[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def find_files(name: str, data_dir=None) -> Path | None:
    """The first folder of ``search_dirs`` that holds all four files, or None."""
    for folder in search_dirs(name, data_dir):
        if all(_local_file(folder, fname) is not None for _, fname in FILES):
            return folder
    return None


def _where_to_put(name: str, data_dir=None) -> str:
    """The part of the "not found" message that says where the files may go."""
    lines = [f"Put the four files of {name!r} ({', '.join(f for _, f in FILES)}; "
             "gzipped, or the same names without .gz) in one of these folders, searched in order:"]
    for folder in search_dirs(name, data_dir):
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
def download(name: str, data_dir=None) -> Path:
    """Download the four files of ``name`` into ``cache_dir()/<name>/`` and return that folder.

    Each file is fetched with ``pooch.retrieve`` from the mirrors in ``MIRRORS[name]``, in
    order, until one gives bytes whose SHA-256 equals ``SHA256[name][file]``; pooch writes to a
    temporary file next to the target and moves it into place only after the hash check, so
    no partial or corrupt file is ever left in the cache. A file already in the cache with the
    right hash is not downloaded again. Raises ``DatasetError``: a checksum mismatch says so;
    no connection says where to put the files by hand (``data_dir`` only adds to that list).
    """
    if name not in MIRRORS:
        raise ValueError(f"name: expected one of {tuple(MIRRORS)}, got {name!r}")
    import pooch  # only needed here; the subset and local files work without a network

    folder = cache_dir() / name
    made = []  # the folders pooch will create, deepest first: removed again if left empty
    for d in (folder, *folder.parents):
        if d.exists():
            break
        made.append(d)
    progress = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    try:
        for _, fname in FILES:
            known = SHA256[name][fname]
            errors = []
            for mirror in MIRRORS[name]:
                url = mirror + fname
                try:
                    pooch.retrieve(
                        url,
                        known_hash=f"sha256:{known}",
                        fname=fname,
                        path=folder,
                        downloader=pooch.HTTPDownloader(progressbar=progress, timeout=60),
                    )
                    break
                except Exception as exc:  # network error, HTTP error or hash mismatch
                    errors.append((url, exc))
            else:
                raise _download_error(name, fname, known, folder, errors, data_dir)
    except BaseException:
        for d in made:  # leave no empty trace of a failed download
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        raise
    return folder


def _is_hash_mismatch(exc: Exception) -> bool:
    """pooch reports a wrong hash as a ValueError saying '... does not match the known hash'."""
    return isinstance(exc, ValueError) and "hash" in str(exc).lower()


def _download_error(name, fname, known, folder, errors, data_dir=None) -> DatasetError:
    """A ``DatasetError`` for a file no mirror gave: a checksum error or "put the files here"."""
    bad = [(url, exc) for url, exc in errors if _is_hash_mismatch(exc)]
    if bad:
        tried = "; ".join(f"{url}: {exc}" for url, exc in bad)
        return DatasetError(
            f"{folder / fname}: checksum mismatch: expected sha256 {known}, the download did "
            f"not match ({tried}). Nothing was written to the cache; the mirror may be serving "
            "a damaged file: try again later, or put the files there by hand.\n"
            + _where_to_put(name, data_dir)
        )
    tried = "\n".join(f"  {url}: {type(exc).__name__}: {exc}" for url, exc in errors)
    return DatasetError(
        f"{name}: the data files are not on this machine and {fname} could not be downloaded "
        f"(no network?). Tried:\n{tried}\n" + _where_to_put(name, data_dir)
    )


# ---------------------------------------------------------------------------------------
# Static binarization
# ---------------------------------------------------------------------------------------
def binarize_static(x, seed: int) -> np.ndarray:
    """One fixed Bernoulli draw of grey-level images: ``b = (u < x)``, ``u ~ U[0, 1)`` iid.

    ``x``: a host float array with values in [0, 1] (any shape); each pixel becomes 1 with
    probability ``x`` (so ``E[b] = x``). ``seed`` (an int) fixes the draw: the same ``x`` and
    ``seed`` give the same float32 array of 0s and 1s, ``x``'s shape, every time.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int (a fixed draw needs a fixed seed), got {seed!r}")
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise TypeError(f"x: expected a real-valued array, got dtype {x.dtype}")
    if not np.all((x >= 0) & (x <= 1)):  # also catches NaN
        raise ValueError(
            f"x: expected values in [0, 1] (pixel / 255), got min {np.nanmin(x)}, "
            f"max {np.nanmax(x)}{' and NaN' if np.isnan(x).any() else ''}"
        )
    rng = np.random.default_rng(seed)
    return (rng.uniform(size=x.shape) < x).astype(np.float32)
