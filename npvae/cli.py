"""The ``npvae`` command (also ``python -m npvae``).

    npvae train       train a VAE; writes a checkpoint, the history and PNGs into a folder
    npvae sample      decode draws from the prior of a trained model into a PNG grid
    npvae evaluate    -ELBO, importance-sampled log p(x) and active units on the test set
    npvae gradcheck   build a float64 model and check its gradient, block by block
    npvae exercises   write student copies of the notebooks (solutions replaced by stubs)
    npvae info        which backend, device, dtype and versions are in use

User errors (a bad argument, a missing file, an unusable backend) print one line and exit
with status 2; a failed gradient check, a diverged training run or a file that training could
not write (a full disk, say) exits with status 1. Ctrl-C exits with status 130 and SIGTERM with
143, each after one line (during training: what is saved and the command that goes on).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import time
import warnings

import numpy as np

from . import datasets, layers, optim, train, vae
from .io import Terminated, atomic_open, interrupts_deferred, remove_stale_parts, terminate_as_interrupt

# npvae train's defaults for the model and the run; fit's settings are flags of the same names,
# with fit's defaults (train.DEFAULTS), and the choices of every flag are the modules' own.
MODEL_DEFAULTS = {"latent_dim": 20, "hidden": [400], "likelihood": "bernoulli", "activation": "relu",
                  "posterior": "diagonal"}
EPOCHS = 30
FIT = train.DEFAULTS


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


def _entries(text):
    """--entries: a positive integer, or "all"."""
    return "all" if text == "all" else _number(int, "a positive integer or 'all'", lambda v: v >= 1)(text)


GRADCHECK_ENTRIES = 100  # entries checked per block by default: the default model's blocks whole (96 at most)


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
    t.add_argument("--dataset", choices=datasets.NAMES, default=None,
                   help=f"default {datasets.DEFAULT_NAME} (embedded, offline)")
    t.add_argument("--data-dir", default=None, help="folder with the IDX files of mnist / fashion-mnist")
    t.add_argument("--epochs", type=_positive_int, default=None,
                   help=f"default {EPOCHS} (total, counting resumed epochs)")
    m = MODEL_DEFAULTS
    t.add_argument("--latent-dim", type=_positive_int, default=None,
                   help=f"Z (default {m['latent_dim']}; 2 adds the manifold plot)")
    t.add_argument("--hidden", type=_positive_int, nargs="*", default=None, metavar="H",
                   help=f"hidden widths (default {' '.join(map(str, m['hidden']))})")
    t.add_argument("--likelihood", choices=vae.LIKELIHOODS, default=None, help=f"default {m['likelihood']}")
    t.add_argument("--activation", choices=layers.ACTIVATIONS, default=None, help=f"default {m['activation']}")
    t.add_argument("--posterior", choices=vae.POSTERIORS, default=None,
                   help="Q(z|x) with a diagonal covariance, or a full one, Sigma = L L^T, with L scale-relative (full) "
                        f"or plain (full-absolute) (default {m['posterior']})")
    t.add_argument("--optimizer", choices=optim.OPTIMIZERS, default=None, help=f"default {FIT['optimizer']}")
    t.add_argument("--lr", type=_positive_float, default=None, help=f"default {FIT['lr']:g}")
    t.add_argument("--batch-size", type=_positive_int, default=None, help=f"default {FIT['batch_size']}")
    t.add_argument("--beta", type=_nonnegative_float, default=None, help=f"KL weight (default {FIT['beta']:g})")
    t.add_argument("--kl-warmup-epochs", "--kl-warmup", type=_nonnegative_int, default=None, metavar="EPOCHS",
                   help=f"epochs over which the KL weight rises from 0 to beta (default {FIT['kl_warmup_epochs']})")
    t.add_argument("--iwae", dest="k", type=_positive_int, default=None, metavar="K",
                   help="train on the importance-weighted bound L_K with K draws an example (Burda et al. "
                        f"2016; default {FIT['k']}: the ELBO)")
    t.add_argument("--binarize", choices=train.BINARIZE, default=None, help=f"default {FIT['binarize']}")
    t.add_argument("--seed", type=_nonnegative_int, default=None, help=f"default {FIT['seed']}")
    t.add_argument("--out", default=None, help="output folder (default runs/<timestamp>)")
    t.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="go on from a checkpoint (its settings, unless given here) up to --epochs")
    t.add_argument("--overwrite", action="store_true",
                   help="replace the run (or the figures) already in --out: its files go only once this run's "
                        "first checkpoint is written")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s_ = sub.add_parser("sample", help="decode draws from the prior into a PNG grid")
    s_.add_argument("--checkpoint", required=True)
    s_.add_argument("--n", type=_positive_int, default=64, help="how many samples (default 64)")
    s_.add_argument("--out", default="samples.png", help="image file: .png, .pdf or .svg (default samples.png)")
    s_.add_argument("--seed", type=_nonnegative_int, default=0)

    e = sub.add_parser("evaluate", help="-ELBO, log p(x) and active units on a test set")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--dataset", choices=datasets.NAMES, default=None,
                   help="default: the one the checkpoint says the model was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--k", type=_positive_int, default=5000, help="importance samples per example (default 5000)")
    e.add_argument("--limit", type=_positive_int, default=None, help="use the first N test examples only")
    e.add_argument("--seed", type=_nonnegative_int, default=0)

    sub.add_parser("info", help="show the backend, device, dtype and versions")

    x_ = sub.add_parser(
        "exercises",
        help="write student copies of the notebooks: every exercise's solution replaced by a stub",
        description="Writes into DIR a copy of each notebook in which every solution between nbgrader's "
        "markers (### BEGIN SOLUTION / ### END SOLUTION) is replaced by raise NotImplementedError(\"Exercise "
        "NN.k: ...\"); nothing else changes. The graders in the notebooks then check the student's code.",
    )
    x_.add_argument("dir", metavar="DIR", help="the folder to write the student copies into")
    x_.add_argument("--notebooks", default=None, metavar="FOLDER",
                    help="where the notebooks are (default: notebooks/ of this checkout)")
    x_.add_argument("--overwrite", action="store_true", help="replace notebooks already in DIR")

    b = sub.add_parser(
        "book", help="build the notebooks, executed, as a static website (needs the [book] extra)",
        description="Executes every notebook and builds a website of them into DIR/html (open "
        "DIR/html/index.html); fails on any cell error or Sphinx warning. Nothing on its pages loads "
        "from another host.",
    )
    b.add_argument("dir", metavar="DIR", help="the build folder (the site goes into DIR/html)")
    b.add_argument("--notebooks", default=None, metavar="FOLDER",
                   help="where the notebooks are (default: notebooks/ of this checkout)")

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
    g.add_argument("--likelihood", choices=vae.LIKELIHOODS, default="bernoulli")
    g.add_argument("--posterior", choices=vae.POSTERIORS, default="diagonal")
    g.add_argument("--activation", choices=layers.ACTIVATIONS, default="tanh")
    g.add_argument("--batch-size", type=_positive_int, default=5, help="N (default 5)")
    g.add_argument("--entries", type=_entries, default=GRADCHECK_ENTRIES,
                   help=f"check at most this many entries per block, chosen at random with --seed (default "
                   f"{GRADCHECK_ENTRIES}: every entry of the default model, a sample of a large one); 'all' checks "
                   "every entry (hours for a 784-400-20 model)")
    g.add_argument("--tol", type=_positive_float, default=1e-6, help="largest relative error allowed (default 1e-6)")
    g.add_argument("--seed", type=_nonnegative_int, default=0)
    return parser


def info() -> dict:
    """What ``npvae info`` prints: backend, device, dtype, versions, and the fast paths in use."""
    import importlib
    import platform

    from .backend import DEFAULT_DTYPE, get_backend
    from .replaceable import FAST, active

    be = get_backend()
    out = {
        "backend": be.name,
        "device": str(be.device),
        "description": be.description,
        "default dtype": DEFAULT_DTYPE,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for pkg in ("array_api_strict", "cupy", "matplotlib", "tqdm"):
        try:
            out[pkg] = importlib.import_module(pkg).__version__
        except Exception:
            out[pkg] = "not installed"
    fast = [name for name, libraries in active().items() if be.name in libraries]
    why = (f"NPVAE_FAST={os.environ.get('NPVAE_FAST', '').strip()}" if not FAST  # 0, off, false, no, any case
           else f"no fast paths for {be.name} arrays")
    out["fast paths"] = (f"{', '.join(fast)} (training; the notebooks, graders and math tests run the textbook code)"
                         if fast else f"none: the textbook code runs ({why})")
    return out


def cmd_info(args) -> int:
    for key, value in info().items():
        print(f"{key:>16}: {value}")
    return 0


def cmd_gradcheck(args) -> int:
    from .gradcheck import check_model

    _check_gradcheck_sizes(args)
    model = vae.VAE(args.input_dim, tuple(args.hidden), args.latent_dim, likelihood=args.likelihood,
                activation=args.activation, dtype="float64", seed=args.seed, posterior=args.posterior)
    rng = np.random.default_rng(args.seed)
    x = rng.uniform(0.0, 1.0, size=(args.batch_size, args.input_dim))
    if args.likelihood == "gaussian":
        x = rng.standard_normal(size=(args.batch_size, args.input_dim))
    eps = rng.standard_normal(size=(args.batch_size, args.latent_dim))
    print(model)
    print(f"backend {model.backend.name}, float64, N={args.batch_size}, h=1e-5, tolerance {args.tol:g}", flush=True)
    entries = None if args.entries == "all" else args.entries
    report = check_model(model, x, eps, max_entries_per_block=entries, seed=args.seed, progress=True)
    print(report)
    checked, total = sum(report.checked.values()), sum(report.sizes.values())
    how = ("every entry" if checked == total else
           f"at most {entries} per block, chosen at random with --seed {args.seed}; --entries all checks every one")
    print(f"checked {checked} of {total} entries ({how}), and all {total} along one random direction")
    if report.passed(args.tol):
        print(f"PASS: largest relative error {report.max_error:.2e} <= {args.tol:g}")
        return 0
    print(f"FAIL: largest relative error {report.max_error:.2e} > {args.tol:g} or not finite "
          f"(blocks: {', '.join(report.failed(args.tol))})")
    return 1


def _check_gradcheck_sizes(args):
    """Refuse, before allocating, sizes that cannot fit in memory (the model and a step on
    its batch, in float64), naming the argument that drives the size."""
    names = {"input_dim": ("--input-dim", args.input_dim), "hidden_dims": ("--hidden", args.hidden),
             "latent_dim": ("--latent-dim", args.latent_dim), "rows": ("--batch-size", args.batch_size)}
    vae.memory_estimate(args.input_dim, args.hidden, args.latent_dim, args.posterior, "float64",
                    rows=args.batch_size).check(names, posterior_name="--posterior")


# The files a run writes into its folder (``--out``).
RUN_FILES = ("checkpoint.npz", "history.csv", "run.json", "loss.png", "reconstructions.png", "samples.png",
             "latent.png", "manifold.png")
LOCK_FILE = ".npvae-train.lock"


def _flag(key):
    return "--iwae" if key == "k" else "--" + key.replace("_", "-")


@contextlib.contextmanager
def _flags_named(names):
    """A ValueError whose message begins with one of ``names``, a function's argument (as in
    "batch_size: ..."), is raised again naming the flag instead ("--batch-size: ...")."""
    try:
        yield
    except ValueError as exc:
        name, colon, rest = str(exc).partition(":")
        if name not in names:
            raise
        raise type(exc)(_flag(name) + colon + rest) from None


def _resolve_train_settings(args, model=None) -> dict:
    """npvae train's settings: fit's, as ``train.resolve_settings`` gives them from the flags
    (resuming: a flag other than --lr must repeat the saved setting); the model's, from the
    flags or the checkpoint being resumed; --epochs."""
    if model is None:
        shape = {key: default if getattr(args, key) is None else getattr(args, key)
                 for key, default in MODEL_DEFAULTS.items()}
    else:
        given = [key for key in MODEL_DEFAULTS if getattr(args, key) is not None]
        if given:
            raise ValueError(f"{_flag(given[0])}: the model's shape comes from the checkpoint when resuming; got "
                             f"{_flag(given[0])} {getattr(args, given[0])}")
        shape = {"latent_dim": model.latent_dim, "hidden": list(model.hidden_dims), "likelihood": model.likelihood,
                 "activation": model.activation, "posterior": model.posterior_kind}
    given = {key: getattr(args, key) for key in FIT}
    if model is None and args.dataset is None:
        given["dataset"] = datasets.DEFAULT_NAME
    with _flags_named(FIT):
        settings = train.resolve_settings(given, None if model is None else model.train_state)
    if settings["dataset"] is None:
        raise ValueError(f"--dataset: {args.resume} does not say which data it was trained on; give --dataset")
    return {"epochs": EPOCHS if args.epochs is None else args.epochs, **shape, **settings}


def _same_folder(a, b) -> bool:
    """True when the folders ``a`` and ``b`` are one, however each is spelled (symlinks, ``..``)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return os.path.abspath(a) == os.path.abspath(b)


def _resuming_in_place(out, args) -> bool:
    """True when --resume's checkpoint lies in the folder --out: the run goes on where it is."""
    return bool(args.resume) and _same_folder(out, os.path.dirname(args.resume) or ".")


def _check_out(out, args):
    """Refuse an --out that holds another run, or any file a run writes, unless --overwrite
    (resuming into the run's own folder is going on with that run)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out: {out} exists and is not a folder")
    if _resuming_in_place(out, args):
        return
    found = [name for name in RUN_FILES if os.path.lexists(os.path.join(out, name))]
    if found and not args.overwrite:
        is_run = any(name in found for name in RUN_FILES[:3])
        go_on = (f"go on with it (--resume {shlex.quote(os.path.join(out, 'checkpoint.npz'))}), "
                 if "checkpoint.npz" in found else "")
        raise ValueError(f"--out: {out} already holds {'a run' if is_run else 'files npvae train writes'} "
                         f"({', '.join(found)}); choose another folder, {go_on}or replace "
                         f"{'it' if is_run else 'them'} (--overwrite)")


class _RunFolder:
    """The output folder, held with a lock while training (a second ``npvae train`` into it is
    refused), and cleared of a killed run's temporary files. A folder this run created is
    removed again if nothing was written into it."""

    def __init__(self, out):
        self.out = out
        self.created = not os.path.exists(out)
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, LOCK_FILE)
        self.file = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        except OSError:
            self.file.seek(0)
            pid = self.file.read().strip() or "?"
            self.file.close()
            raise ValueError(f"--out: another npvae train (pid {pid}) is writing into {out}; wait for it to "
                             "finish or choose another folder") from None
        self.file.seek(0)
        self.file.truncate()
        self.file.write(str(os.getpid()))
        self.file.flush()
        remove_stale_parts(out)

    def release(self):
        with contextlib.suppress(OSError):
            os.remove(self.path)
        self.file.close()  # closing releases the lock
        if self.created and not os.listdir(self.out):
            os.rmdir(self.out)


def cmd_train(args) -> int:
    from .checkpoint import load, save
    from .train import TrainingError, fit

    # Everything is checked before anything is written.
    model = None
    if args.resume:
        model = load(args.resume)
        if model.train_state is None:
            raise ValueError(f"--resume: {args.resume} holds a model without a training state; nothing to resume")
    settings = _resolve_train_settings(args, model)
    if model is not None and model.train_state.epoch >= settings["epochs"]:
        done = model.train_state.epoch
        raise ValueError(f"--epochs: nothing to train: {args.resume} already has {done} "
                         f"epoch{'' if done == 1 else 's'}; give --epochs > {done}")
    out = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume else _timestamped_folder("runs"))
    _check_out(out, args)
    (x_train, y_train), (x_test, y_test), source = _load_data(settings["dataset"], args.data_dir)
    if model is None:
        _check_train_memory(settings, x_train, x_test)
        model = vae.VAE(x_train.shape[1], tuple(settings["hidden"]), settings["latent_dim"],
                    likelihood=settings["likelihood"], activation=settings["activation"], seed=settings["seed"],
                    posterior=settings["posterior"])
    ckpt, csv = os.path.join(out, "checkpoint.npz"), os.path.join(out, "history.csv")
    # where the last complete epoch is saved, which epoch is being saved (None: none), and
    # whether --overwrite's old run is still in --out
    saved = {"path": args.resume, "epoch": model.train_state.epoch if args.resume else 0, "saving": None,
             "old_run": False, "out": out}
    written = []  # the files this run wrote, for the listing at the end

    def remove_old_run():
        """--overwrite: the old run's files go once the new checkpoint is written (it then
        takes checkpoint.npz's name); the checkpoint being resumed is never removed."""
        for name in RUN_FILES[1:]:
            path = os.path.join(out, name)
            if args.resume and os.path.exists(path) and os.path.samefile(path, args.resume):
                continue
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        saved["old_run"] = False

    def after_epoch(model, row):
        saved["saving"] = row["epoch"]
        with interrupts_deferred():  # the checkpoint, its history and run.json: all or none
            save(model, ckpt, before_replace=remove_old_run if saved["old_run"] else None)
            saved.update(path=ckpt, epoch=row["epoch"], old_run=False)
            model.train_state.history.to_csv(csv)
            with atomic_open(os.path.join(out, "run.json"), "w") as f:
                json.dump({"settings": settings, "backend": model.backend.name, "model": model.config}, f, indent=2)
            written[:] = ["checkpoint.npz", "history.csv", "run.json"]
        saved["saving"] = None
        # the objective minimized differs from -ELBO when the KL weight is not 1 (beta, warm-up)
        # or with --iwae K (-L_K)
        objective = f"  {_objective_name(settings)} {row['loss']:8.2f}" if row["beta"] != 1 or settings["k"] > 1 else ""
        print(f"epoch {row['epoch']:>3}/{settings['epochs']}  -ELBO {row['neg_elbo']:8.2f} "
              f"(reconstruction {row['reconstruction']:8.2f} + KL {row['kl']:6.2f}){objective}  "
              f"test {row['test_loss']:8.2f}  {row['seconds']:5.1f} s", flush=True)

    folder = _RunFolder(out)
    try:
        _check_out(out, args)  # again, now that the folder is ours
        saved["old_run"] = args.overwrite and not _resuming_in_place(out, args) and any(
            os.path.lexists(os.path.join(out, name)) for name in RUN_FILES)
        print(f"{model}\ntraining on {settings['dataset']} ({x_train.shape[0]} train, {x_test.shape[0]} test), "
              f"backend {model.backend.name}, writing to {out}\ndata: {source}")
        started = time.perf_counter()
        history = fit(model, x_train, x_test, epochs=settings["epochs"], progress=not args.no_progress,
                      callbacks=[after_epoch], resume=bool(args.resume), **{key: settings[key] for key in FIT})
    except TrainingError as exc:
        print(f"npvae train: training stopped: {exc}", file=sys.stderr)
        print(f"npvae train: {_what_is_saved(saved)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:
        state = model.train_state
        if saved["saving"] is not None:
            during = f"while saving epoch {saved['saving']}"
        elif state is not None and state.epoch > saved["epoch"]:
            during = f"after epoch {state.epoch}, before it was saved"
        else:
            during = f"during epoch {saved['epoch'] + 1}"
        print(f"{_interrupted('npvae train', exc)} {during}; {_what_is_saved(saved)}.{_go_on(saved, settings, args)}",
              file=sys.stderr)
        return _interrupted_status(exc)
    except OSError as exc:  # a full disk, a file-size limit, a folder made read-only
        print(f"npvae train: could not write {exc.filename or out}: {exc.strerror or exc}; {_what_is_saved(saved)}."
              f"{_go_on(saved, settings, args)}", file=sys.stderr)
        return 1
    finally:
        folder.release()

    try:
        figures = _train_figures(model, history, settings, x_test, y_test)
        for name, draw in figures.items():
            draw(os.path.join(out, name))
            written.append(name)
    except (KeyboardInterrupt, OSError) as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        what = (f"{_interrupted('npvae train', exc)} while drawing the figures" if interrupted else
                f"npvae train: could not write {exc.filename}: {exc.strerror or exc}")
        print(f"{what}; training is complete and saved in {ckpt} (npvae sample and npvae evaluate work on it)",
              file=sys.stderr)
        return _interrupted_status(exc) if interrupted else 1
    last = history[-1]
    print(f"done in {time.perf_counter() - started:.0f} s: test -ELBO {last['test_loss']:.2f} nats after "
          f"{last['epoch']} epoch{'' if last['epoch'] == 1 else 's'}")
    for name in written:
        print(f"  {os.path.join(out, name)}")
    return 0


def _check_train_memory(settings, x_train, x_test):
    """Refuse, naming the flag that drives the size, a model whose parameters and activations
    do not fit in this machine's memory: a training step on a batch, or the test set's
    evaluation after each epoch (metrics.evaluate's forward pass, EVALUATE_ROWS rows at once)."""
    from .metrics import EVALUATE_ROWS

    sizes = (x_train.shape[1], settings["hidden"], settings["latent_dim"], settings["posterior"])
    step = vae.memory_estimate(*sizes, rows=min(settings["batch_size"], x_train.shape[0]), k=settings["k"])
    test = vae.memory_estimate(*sizes, rows=min(EVALUATE_ROWS, x_test.shape[0]), work="evaluate")
    names = {"hidden_dims": ("--hidden", settings["hidden"]), "latent_dim": ("--latent-dim", settings["latent_dim"])}
    if step.total >= test.total:
        names["rows"] = ("--batch-size", settings["batch_size"])
        if settings["k"] > 1:  # a step on -L_K works on batch x K rows
            names["k"] = ("--iwae", settings["k"])
    max(step, test, key=lambda estimate: estimate.total).check(names, posterior_name="--posterior")


def _interrupted(prog, exc) -> str:
    """"<prog>: interrupted" for Ctrl-C (on a line of its own, after the terminal's ^C), or
    "<prog>: terminated (SIGTERM)"."""
    return f"{prog}: terminated (SIGTERM)" if isinstance(exc, Terminated) else f"\n{prog}: interrupted"


def _interrupted_status(exc) -> int:
    """The exit status after an interruption: 143 for SIGTERM (128 + 15), 130 for Ctrl-C (128 + 2)."""
    return 143 if isinstance(exc, Terminated) else 130


def _load_data(name, data_dir):
    """``datasets.load``'s train and test sets and where they came from; its errors about the
    folder name the flag, ``--data-dir``."""
    with _flags_named(("data_dir",)):
        train_set, test_set = datasets.load(name, data_dir=data_dir)
    return train_set, test_set, datasets.last_source()


def _what_is_saved(saved) -> str:
    kept = f"; the run that was in {saved['out']} is kept" if saved["old_run"] else ""
    if not saved["path"]:
        return f"no epoch was complete, nothing is saved{kept}"
    epochs = "epoch 1 is" if saved["epoch"] == 1 else f"epochs 1-{saved['epoch']} are"
    return f"{epochs} saved in {saved['path']}{kept}"


def _go_on(saved, settings, args) -> str:
    """" Go on with: <the command>", ready to paste, or "" when nothing is saved or left to do."""
    if not saved["path"] or saved["epoch"] >= settings["epochs"]:
        return ""
    words = ["npvae", "train", "--resume", saved["path"], "--epochs", str(settings["epochs"])]
    if not _same_folder(saved["out"], os.path.dirname(saved["path"]) or "."):
        words += ["--out", saved["out"]] + (["--overwrite"] if saved["old_run"] else [])
    if saved["path"] == args.resume and args.lr is not None:
        words += ["--lr", repr(args.lr)]
    if args.data_dir is not None:
        words += ["--data-dir", args.data_dir]
    return " Go on with: " + " ".join(shlex.quote(word) for word in words)


def _objective_name(settings) -> str:
    """The name of what a run minimizes where it is not the -ELBO: -L_K with --iwae K, else the
    beta-weighted -ELBO (--beta, --kl-warmup-epochs). One name for the epoch lines and loss.png."""
    return f"objective -L_{settings['k']}" if settings["k"] > 1 else "objective (beta-weighted)"


def _train_figures(model, history, settings, x_test, y_test) -> dict:
    """name -> function(path) drawing it, for the figures of a finished run."""
    from . import plots
    from .backend import to_numpy
    from .random import Generator
    from .train import binarize_test_set

    objective = "train " + _objective_name(settings)
    figures = {"loss.png": lambda p: plots.plot_history(history, p, objective=objective)}
    x_show = binarize_test_set(model.check_x(x_test[:10]), settings["binarize"], settings["seed"])
    figures["reconstructions.png"] = lambda p: plots.plot_reconstructions(x_show, model.reconstruct(x_show), p)
    figures["samples.png"] = lambda p: plots.plot_samples(model.sample(64, rng=Generator(settings["seed"])), p)
    mu = to_numpy(model.encode(x_test)[0])
    names, kind = datasets.class_names(settings["dataset"]), datasets.LABEL_KIND[settings["dataset"]]
    posteriors = None
    if model.latent_dim == 2:  # a few posteriors as covariance ellipses over the means
        q = model.posterior(x_test[:12])
        posteriors = (to_numpy(q.mean), to_numpy(q.covariance))
    figures["latent.png"] = lambda p: plots.plot_latent(mu, y_test, p, label_name=kind, class_names=names,
                                                        posteriors=posteriors)
    if model.latent_dim == 2:
        figures["manifold.png"] = lambda p: plots.plot_manifold(model, p)
    return figures


def _timestamped_folder(parent):
    base = os.path.join(parent, time.strftime("%Y-%m-%d_%H-%M-%S"))
    path, k = base, 1
    while os.path.exists(path):
        k += 1
        path = f"{base}_{k}"
    return path


def cmd_sample(args) -> int:
    from . import plots
    from .backend import to_numpy
    from .checkpoint import load
    from .random import Generator

    plots.figure_format(args.out, name="--out")  # before any work
    most = plots.MAX_SAMPLE_GRID ** 2
    if args.n > most:
        raise ValueError(f"--n: at most {most} samples fit one readable grid ({plots.MAX_SAMPLE_GRID} x "
                         f"{plots.MAX_SAMPLE_GRID}), got {args.n}; for more, run npvae sample again with another "
                         f"--seed and --out")
    model = load(args.checkpoint)
    image_shape = _image_shape(model)
    # z as model.sample draws it, decoded 256 rows at a time: the decoder's activations stay small
    z = Generator(args.seed).standard_normal((args.n, model.latent_dim), dtype=model.dtype)
    samples = np.concatenate([to_numpy(model.mean(model.decode(z[a : min(a + 256, args.n), ...])))
                              for a in range(0, args.n, 256)])
    plots.plot_samples(samples, args.out, grid=int(math.ceil(math.sqrt(args.n))), image_shape=image_shape)
    print(f"wrote {args.n} samples from the prior to {args.out}")
    return 0


def _image_shape(model):
    side = int(round(math.sqrt(model.input_dim)))
    if side * side != model.input_dim:
        raise ValueError(f"model: expected square images (input_dim a square), got input_dim {model.input_dim}")
    return (side, side)


def cmd_evaluate(args) -> int:
    from .checkpoint import load
    from .metrics import MAX_ROWS, active_units, evaluate, log_marginal_likelihood
    from .train import binarize_test_set

    model = load(args.checkpoint)
    settings = model.train_state.settings if model.train_state is not None else {}
    name = args.dataset or settings.get("dataset")
    if name is None:
        raise ValueError(f"--dataset: {args.checkpoint} does not say which data it was trained on; give --dataset")
    _, (x_test, _), source = _load_data(name, args.data_dir)
    if args.limit:
        x_test = x_test[: args.limit]
    binarize = settings.get("binarize", "none")
    x = binarize_test_set(model.check_x(x_test), binarize, settings.get("seed", 0))
    print(f"{model}\nevaluating on the {name} test set: {x_test.shape[0]} examples"
          + (f" (binarized: {binarize})" if binarize != "none" else "") + f"\ndata: {source}")
    try:
        elbo = evaluate(model, x, seed=args.seed)
        print(f"-ELBO          {_nats(elbo['loss'])} nats  (reconstruction {_nats(elbo['reconstruction'], 0)} + "
              f"KL {_nats(elbo['kl'], 0)})")
        ll = log_marginal_likelihood(model, x, k=args.k, seed=args.seed, progress=True)
        print(f"log p(x)       {_nats(ll)} nats  (importance sampling, k={args.k}, at most {MAX_ROWS} rows at once)")
        print(f"active units   {active_units(model, x):9d} of {model.latent_dim}  (Cov_x E[z_u] > 0.01)")
    except FloatingPointError as exc:  # not the arguments: the model's numbers overflow even in float64
        print(f"npvae evaluate: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _nats(value, width=9) -> str:
    """A number of nats: two decimals, or 4 significant digits when it is huge (a broken model)."""
    return f"{value:{width}.2f}" if abs(value) < 1e7 else f"{value:{width}.4g}"


def cmd_exercises(args) -> int:
    from .exercises import write_student_copies

    folder = args.notebooks or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "notebooks")
    notebooks = sorted(p for p in (os.listdir(folder) if os.path.isdir(folder) else []) if p.endswith(".ipynb"))
    if not notebooks:
        raise ValueError(f"--notebooks: no notebooks (*.ipynb) in {folder}")
    written = write_student_copies([os.path.join(folder, p) for p in notebooks], args.dir, overwrite=args.overwrite)
    print(f"wrote {len(written)} student notebooks to {args.dir} (solutions replaced by stubs)")
    return 0


def cmd_book(args) -> int:
    from .book import build

    build(args.dir, args.notebooks)
    return 0


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "info": cmd_info,
            "exercises": cmd_exercises, "book": cmd_book,
            "gradcheck": cmd_gradcheck}


def main(argv=None) -> int:
    """Run one command; returns its exit status. Ctrl-C anywhere gives one line and 130, SIGTERM
    one line and 143 (``npvae train`` says first what is saved)."""
    prog = "npvae"
    try:
        with terminate_as_interrupt():
            args = build_parser().parse_args(argv)
            prog = f"npvae {args.command}"
            return _run(args)
    except KeyboardInterrupt as exc:
        print(_interrupted(prog, exc), file=sys.stderr)
        return _interrupted_status(exc)


def _run(args) -> int:
    from .backend import BackendError

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"npvae {args.command}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.showwarning = one_line
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow notes: a TrainingError says more
        try:
            return COMMANDS[args.command](args)
        except (BackendError, ValueError, OSError) as exc:
            print(f"npvae {args.command}: error: {exc}", file=sys.stderr)
            return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
