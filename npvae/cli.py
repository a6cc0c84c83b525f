"""The ``npvae`` command (also ``python -m npvae``).

    npvae train       train a VAE; writes a checkpoint, the history and PNGs into a folder
    npvae sample      decode draws from the prior of a trained model into a PNG grid
    npvae evaluate    -ELBO, importance-sampled log p(x) and active units on the test set
    npvae gradcheck   build a float64 model and check its gradient, block by block
    npvae info        which backend, device, dtype and versions are in use

User errors (a bad argument, a missing file, an unusable backend) print one line and exit
with status 2; a failed gradient check or a diverged training run exits with status 1;
Ctrl-C during training exits with 130 after saying where the last checkpoint is.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

from .io import atomic_open

TRAIN_DEFAULTS = {
    "dataset": "mnist-subset", "epochs": 30, "latent_dim": 20, "hidden": [400], "likelihood": "bernoulli",
    "activation": "relu", "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "beta": 1.0, "kl_warmup": 0,
    "binarize": "none", "seed": 0,
}
MODEL_FLAGS = ("latent_dim", "hidden", "likelihood", "activation")


def _number(convert, expected, ok):
    """An argparse type: ``convert(text)``, refused with "expected ..., got ..." unless ``ok``."""

    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, "a positive integer", lambda v: v >= 1)
_nonnegative_int = _number(int, "a non-negative integer", lambda v: v >= 0)
_positive_float = _number(float, "a positive number", lambda v: v > 0)
_nonnegative_float = _number(float, "a non-negative number", lambda v: v >= 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npvae",
        description="Variational Autoencoders from scratch in NumPy (CS7015 Lecture 21).",
        epilog="The backend comes from the environment variable NPVAE_BACKEND: numpy (default), cupy or strict.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    t = sub.add_parser(
        "train",
        help="train a VAE and write a checkpoint, the history and figures",
        description="Trains a VAE and writes into --out: checkpoint.npz (after every epoch), history.csv, "
        "run.json, and PNGs: loss curves, reconstructions, samples from the prior, the latent space "
        "and (for a 2-D latent) the manifold. With no arguments: 30 epochs of a 784-400-20 VAE on the "
        "embedded digits, under a minute on two CPU cores.",
    )
    t.add_argument("--dataset", choices=("mnist-subset", "fashion-mnist", "mnist"), default=None,
                   help="default mnist-subset (embedded, offline)")
    t.add_argument("--data-dir", default=None, help="folder with the IDX files of mnist / fashion-mnist")
    t.add_argument("--epochs", type=_positive_int, default=None, help="default 30 (total, counting resumed epochs)")
    t.add_argument("--latent-dim", type=_positive_int, default=None, help="Z (default 20; 2 adds the manifold plot)")
    t.add_argument("--hidden", type=_positive_int, nargs="*", default=None, metavar="H", help="hidden widths (default 400)")
    t.add_argument("--likelihood", choices=("bernoulli", "gaussian"), default=None, help="default bernoulli")
    t.add_argument("--activation", choices=("relu", "tanh"), default=None, help="default relu")
    t.add_argument("--optimizer", choices=("adam", "adagrad", "sgd"), default=None, help="default adam")
    t.add_argument("--lr", type=_positive_float, default=None, help="default 1e-3")
    t.add_argument("--batch-size", type=_positive_int, default=None, help="default 128")
    t.add_argument("--beta", type=_nonnegative_float, default=None, help="KL weight (default 1)")
    t.add_argument("--kl-warmup", type=_nonnegative_int, default=None, metavar="EPOCHS",
                   help="epochs over which the KL weight rises from 0 to beta (default 0)")
    t.add_argument("--binarize", choices=("none", "static", "dynamic"), default=None, help="default none")
    t.add_argument("--seed", type=int, default=None, help="default 0")
    t.add_argument("--out", default=None, help="output folder (default runs/<timestamp>)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="go on from a checkpoint (its settings, unless given here) up to --epochs")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s_ = sub.add_parser("sample", help="decode draws from the prior into a PNG grid")
    s_.add_argument("--checkpoint", required=True)
    s_.add_argument("--n", type=_positive_int, default=64, help="how many samples (default 64)")
    s_.add_argument("--out", default="samples.png", help="PNG file (default samples.png)")
    s_.add_argument("--seed", type=int, default=0)

    e = sub.add_parser("evaluate", help="-ELBO, log p(x) and active units on a test set")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", choices=("mnist-subset", "fashion-mnist", "mnist"), default=None,
                   help="default: the one the model was trained on (run.json), else mnist-subset")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--k", type=_positive_int, default=5000, help="importance samples per example (default 5000)")
    e.add_argument("--limit", type=_positive_int, default=None, help="use the first N test examples only")
    e.add_argument("--seed", type=int, default=0)

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


def _resolve_train_settings(args):
    """Each setting from the command line, else the resumed run's, else the default."""
    saved = {}
    if args.resume:
        run_json = os.path.join(os.path.dirname(os.path.abspath(args.resume)), "run.json")
        if os.path.exists(run_json):
            with open(run_json) as f:
                saved = json.load(f).get("settings", {})
    settings = {}
    for key, default in TRAIN_DEFAULTS.items():
        given = getattr(args, key)
        if args.resume and key in MODEL_FLAGS and given is not None:
            raise ValueError(f"--{key.replace('_', '-')}: the model's shape comes from the checkpoint when "
                             f"resuming; got --{key.replace('_', '-')} {given}")
        settings[key] = given if given is not None else saved.get(key, default)
    return settings


def cmd_train(args) -> int:
    from . import datasets, plots
    from .backend import Generator, to_numpy
    from .checkpoint import load
    from .train import TrainingError, binarize_test_set, fit
    from .vae import VAE

    settings = _resolve_train_settings(args)
    if args.resume:
        model = load(args.resume)
        if model.train_state is None:
            raise ValueError(f"--resume: {args.resume} holds a model without a training state; nothing to resume")
        settings.update(latent_dim=model.latent_dim, hidden=list(model.hidden_dims), likelihood=model.likelihood,
                        activation=model.activation)
        out = args.out or os.path.dirname(os.path.abspath(args.resume))
    else:
        out = args.out or _timestamped_folder("runs")
    (x_train, y_train), (x_test, y_test) = datasets.load(settings["dataset"], data_dir=args.data_dir)
    if not args.resume:
        model = VAE(x_train.shape[1], tuple(settings["hidden"]), settings["latent_dim"],
                    likelihood=settings["likelihood"], activation=settings["activation"], seed=settings["seed"])
    os.makedirs(out, exist_ok=True)
    with atomic_open(os.path.join(out, "run.json"), "w") as f:  # a resumed run's run.json is never half-written
        json.dump({"settings": settings, "backend": model.backend.name, "model": model.config}, f, indent=2)
    ckpt, csv = os.path.join(out, "checkpoint.npz"), os.path.join(out, "history.csv")
    print(f"{model}\ntraining on {settings['dataset']} ({x_train.shape[0]} train, {x_test.shape[0]} test), "
          f"backend {model.backend.name}, writing to {out}")

    def after_epoch(model, row):
        model.save(ckpt)
        model.train_state.history.to_csv(csv)
        print(f"epoch {row['epoch']:>3}/{settings['epochs']}  -ELBO {row['loss']:8.2f} "
              f"(reconstruction {row['reconstruction']:8.2f} + KL {row['kl']:6.2f})  "
              f"test {row['test_loss']:8.2f}  {row['seconds']:5.1f} s", flush=True)

    started = time.perf_counter()
    try:
        history = fit(model, x_train, x_test, epochs=settings["epochs"], batch_size=settings["batch_size"],
                      optimizer=settings["optimizer"], lr=settings["lr"], beta=settings["beta"],
                      kl_warmup_epochs=settings["kl_warmup"], binarize=settings["binarize"], seed=settings["seed"],
                      progress=not args.no_progress, callbacks=[after_epoch], resume=bool(args.resume))
    except TrainingError as exc:
        print(f"npvae train: training stopped: {exc}", file=sys.stderr)
        if os.path.exists(ckpt):
            print(f"npvae train: the checkpoint of the last complete epoch is {ckpt}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        done = model.train_state.epoch if model.train_state else 0
        if done == 0:
            print("\nnpvae train: interrupted during epoch 1; no epoch was complete, nothing saved", file=sys.stderr)
        else:
            print(f"\nnpvae train: interrupted during epoch {done + 1}; epochs 1-{done} are saved in {ckpt}. "
                  f"Go on with: npvae train --resume {ckpt} --epochs {settings['epochs']}", file=sys.stderr)
        return 130

    figures = {"loss.png": lambda p: plots.plot_history(history, p)}
    x_show = binarize_test_set(model.check_x(x_test[:10]), settings["binarize"], settings["seed"])
    figures["reconstructions.png"] = lambda p: plots.plot_reconstructions(x_show, model.reconstruct(x_show), p)
    figures["samples.png"] = lambda p: plots.plot_samples(model.sample(64, rng=Generator(settings["seed"])), p)
    mu = to_numpy(model.encode(x_test)[0])
    figures["latent.png"] = lambda p: plots.plot_latent(mu, y_test, p)
    if model.latent_dim == 2:
        figures["manifold.png"] = lambda p: plots.plot_manifold(model, p)
    for name, draw in figures.items():
        draw(os.path.join(out, name))
    last = history[-1]
    print(f"done in {time.perf_counter() - started:.0f} s: test -ELBO {last['test_loss']:.2f} nats after "
          f"{last['epoch']} epochs")
    for name in ["checkpoint.npz", "history.csv", "run.json", *figures]:
        print(f"  {os.path.join(out, name)}")
    return 0


def _timestamped_folder(parent):
    base = os.path.join(parent, time.strftime("%Y-%m-%d_%H-%M-%S"))
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}_{k}"
    return path


def cmd_sample(args) -> int:
    from . import plots
    from .backend import Generator
    from .checkpoint import load

    model = load(args.checkpoint)
    samples = model.sample(args.n, rng=Generator(args.seed))
    side = int(math.ceil(math.sqrt(args.n)))
    plots.plot_samples(samples, args.out, grid=side, image_shape=_image_shape(model))
    print(f"wrote {args.n} samples from the prior to {args.out}")
    return 0


def _image_shape(model):
    side = int(round(math.sqrt(model.input_dim)))
    if side * side != model.input_dim:
        raise ValueError(f"model: expected square images (input_dim a square), got input_dim {model.input_dim}")
    return (side, side)


def cmd_evaluate(args) -> int:
    from . import datasets
    from .checkpoint import load
    from .metrics import MAX_ROWS, active_units, evaluate, log_likelihood
    from .train import binarize_test_set

    model = load(args.checkpoint)
    run_json = os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "run.json")
    settings = {}
    if os.path.exists(run_json):
        with open(run_json) as f:
            settings = json.load(f).get("settings", {})
    name = args.dataset or settings.get("dataset", "mnist-subset")
    _, (x_test, _) = datasets.load(name, data_dir=args.data_dir)
    if args.limit:
        x_test = x_test[: args.limit]
    binarize = settings.get("binarize", "none")
    x = binarize_test_set(model.check_x(x_test), binarize, settings.get("seed", 0))
    print(f"{model}\nevaluating on the {name} test set: {x_test.shape[0]} examples"
          + (f" (binarized: {binarize})" if binarize != "none" else ""))
    elbo = evaluate(model, x, seed=args.seed)
    print(f"-ELBO          {elbo['loss']:9.2f} nats  (reconstruction {elbo['reconstruction']:.2f} + KL {elbo['kl']:.2f})")
    ll = log_likelihood(model, x, k=args.k, seed=args.seed, progress=True)
    print(f"log p(x)       {ll:9.2f} nats  (importance sampling, k={args.k}, at most {MAX_ROWS} rows at once)")
    print(f"active units   {active_units(model, x):9d} of {model.latent_dim}  (Cov_x E[z_u] > 0.01)")
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "info": cmd_info,
            "gradcheck": cmd_gradcheck}


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
