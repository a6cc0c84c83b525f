"""The ``npvae`` command (also ``python -m npvae``).

    npvae info        which backend, device, dtype and versions are in use
    npvae gradcheck   builds a float64 model and checks its gradient, block by block

User errors (a bad argument, an unusable backend) print one line and exit with status 2;
a failed gradient check exits with status 1.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npvae",
        description="Variational Autoencoders from scratch in NumPy (CS7015 Lecture 21).",
        epilog="The backend comes from the environment variable NPVAE_BACKEND: numpy (default), cupy or strict.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    sub.add_parser("info", help="show the backend, device, dtype and versions")

    g = sub.add_parser(
        "gradcheck",
        help="check a model's hand-written gradient against central differences",
        description="Builds a float64 VAE of the given sizes, draws a batch and eps, and prints the "
        "relative error of each parameter block's gradient against central differences. "
        "Exits 1 if any error is above --tol.",
    )
    g.add_argument("--input-dim", type=_positive_int, default=12, help="D (default 12)")
    g.add_argument("--hidden", type=_positive_int, nargs="*", default=[8, 6], metavar="H",
                   help="hidden widths (default 8 6; none for a linear model)")
    g.add_argument("--latent-dim", type=_positive_int, default=3, help="Z (default 3)")
    g.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default="bernoulli")
    g.add_argument("--activation", choices=("relu", "tanh"), default="tanh")
    g.add_argument("--batch-size", type=_positive_int, default=5, help="N (default 5)")
    g.add_argument("--entries", type=_positive_int, default=None,
                   help="check this many entries per block, chosen at random (default: all)")
    g.add_argument("--tol", type=_positive_float, default=1e-6, help="largest relative error allowed (default 1e-6)")
    g.add_argument("--seed", type=int, default=0)
    return parser


def cmd_info(args) -> int:
    from . import backend

    for key, value in backend.info().items():
        print(f"{key:>16}: {value}")
    return 0


def cmd_gradcheck(args) -> int:
    from .gradcheck import check_model
    from .vae import VAE

    model = VAE(args.input_dim, tuple(args.hidden), args.latent_dim, likelihood=args.likelihood,
                activation=args.activation, dtype="float64", seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0.0, 1.0, size=(args.batch_size, args.input_dim))
    if args.likelihood == "gaussian":
        x = rng.standard_normal(size=(args.batch_size, args.input_dim))
    eps = rng.standard_normal(size=(args.batch_size, args.latent_dim))
    print(model)
    print(f"backend {model.backend.name}, float64, N={args.batch_size}, h=1e-5, tolerance {args.tol:g}")
    report = check_model(model, x, eps, max_entries_per_block=args.entries, seed=args.seed)
    print(report)
    if report.passed(args.tol):
        print(f"PASS: largest relative error {report.max_error:.2e} <= {args.tol:g}")
        return 0
    bad = [name for name, err in report.errors.items() if err > args.tol]
    print(f"FAIL: largest relative error {report.max_error:.2e} > {args.tol:g} (blocks: {', '.join(bad) or 'directional'})")
    return 1


COMMANDS = {"info": cmd_info, "gradcheck": cmd_gradcheck}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from .backend import BackendError

    try:
        return COMMANDS[args.command](args)
    except (BackendError, ValueError, OSError) as exc:
        print(f"npvae {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
