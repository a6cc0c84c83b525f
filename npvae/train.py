"""Training: ``fit`` runs minibatch stochastic gradient descent on -ELBO.

One step, for a minibatch x_b (B, D) and fresh noise eps (B, Z):

    fwd = model.forward(x_b, eps)                  # mu, logvar, z, log P(x|z), KL
    grads = model.backward(fwd, beta)              # d(-ELBO)/d params
    optimizer.step(grads)                          # params <- params - lr * (...)

An epoch visits every training example once in a random order (the last minibatch may be
smaller). All randomness comes from ``seed``: one stream orders the data (and draws the
binarization), one draws eps; so the same seed gives the same history, and a checkpoint that
saves both streams' states resumes exactly where it stopped.

Options the literature uses:
- ``beta``: the weight of the KL term (beta-VAE, Higgins et al. 2017); 1 is the ELBO.
- ``kl_warmup_epochs``: the KL weight rises linearly from 0 to beta over this many epochs,
  step by step (Bowman et al. 2016; Sønderby et al. 2016), so the decoder learns before the
  KL pulls the posterior onto the prior.
- ``binarize``: ``"none"`` trains on grey levels; ``"static"`` on one fixed Bernoulli draw of
  every image; ``"dynamic"`` on a fresh draw of every image each epoch (Burda et al. 2016).
  With ``static`` and ``dynamic``, the test set is one fixed draw.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass, field

from .backend import copy, get_backend
from .checks import check_int, check_real
from .random import TRAINING_STREAMS, Generator, streams
from .io import atomic_open
from .optim import OPTIMIZERS, Optimizer, make_optimizer

BINARIZE = ("none", "static", "dynamic")
HISTORY_COLUMNS = ("epoch", "loss", "reconstruction", "kl", "beta", "test_loss", "seconds", "neg_elbo", "lr")
HISTORY_ADDED = ("neg_elbo", "lr")  # columns that older versions did not write (last, so old readers go on)


class TrainingError(FloatingPointError):
    """Training stopped: a loss term or the gradient is not finite. ``history`` holds the
    epochs completed before it."""

    def __init__(self, message, history=None):
        super().__init__(message)
        self.history = history


class History(list):
    """One dict per epoch, keys ``HISTORY_COLUMNS``, means over the epoch's steps in nats per
    example:

    - ``loss``: the objective minimized, reconstruction + beta_t * KL (beta_t the KL weight
      of each step: beta, or less during warm-up); the -ELBO when that weight is 1.
    - ``neg_elbo``: the -ELBO itself, reconstruction + KL, whatever beta.
    - ``reconstruction``, ``kl``: its two terms; ``beta``: the mean KL weight.
    - ``lr``: the optimizer's step size in this epoch.
    - ``test_loss``: the -ELBO on x_test after the epoch (None without x_test).
    - ``seconds``: the epoch's wall-clock time.

    Histories saved by older versions lack ``neg_elbo`` and ``lr`` (missing or None).

    ``history.column("loss")`` gives one column as a list; ``history.to_csv(path)`` writes it.
    """

    def column(self, name):
        return [row.get(name) for row in self]

    def to_csv(self, path):
        lines = [",".join(HISTORY_COLUMNS)]
        for row in self:
            cells = []
            for key in HISTORY_COLUMNS:
                value = row.get(key)
                cells.append("" if value is None else (str(value) if key == "epoch" else repr(float(value))))
            lines.append(",".join(cells))
        with atomic_open(path, "w") as f:
            f.write("\n".join(lines) + "\n")

    @classmethod
    def from_csv(cls, path):
        with open(path) as f:
            header = f.readline().strip().split(",")
            rows = []
            for line in f:
                cells = line.rstrip("\n").split(",")
                row = {k: (None if v == "" else (int(v) if k == "epoch" else float(v))) for k, v in zip(header, cells)}
                rows.append(row)
        return cls(rows)


@dataclass
class TrainState:
    """Everything beyond the parameters that training needs to go on where it stopped."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    history: History = field(default_factory=History)
    optimizer: Optimizer | None = None
    data_rng: Generator | None = None  # orders the data, draws the binarization
    noise_rng: Generator | None = None  # draws eps
    settings: dict = field(default_factory=dict)  # fit's arguments (DEFAULTS' keys)


# fit's settings and their defaults; a checkpoint stores them, so a resumed run (and
# ``npvae evaluate``) needs nothing but the checkpoint. ``dataset`` is only a name.
DEFAULTS = {"batch_size": 128, "optimizer": "adam", "lr": 1e-3, "beta": 1.0, "kl_warmup_epochs": 0,
            "binarize": "none", "seed": 0, "dataset": None}


def fit(model, x_train, x_test=None, epochs=10, batch_size=None, optimizer=None, lr=None,
        beta=None, kl_warmup_epochs=None, binarize=None, seed=None, progress=True, callbacks=(),
        resume=False, dataset=None) -> History:
    """Train ``model`` on ``x_train`` (N, D) by minibatch gradient descent on -ELBO.

    Training runs npvae.fast's replacements (the same results, faster) unless NPVAE_FAST=0 or
    inside ``npvae.textbook()``, as in the notebooks, where the textbook code runs.

    Args:
        model: an ``npvae.VAE``.
        x_train, x_test: (N, D) arrays (NumPy or the backend's), N >= 1; x_test is evaluated
            (-ELBO, one eps per example, fixed seed) after every epoch.
        epochs: train until this many epochs are complete (counting resumed ones).
        batch_size: B (default 128).
        optimizer: ``"adam"`` (default), ``"adagrad"`` or ``"sgd"`` (momentum 0.9), or an
            ``npvae.optim`` optimizer built over ``model.params``; lr: its step size
            (default 1e-3).
        beta: KL weight (default 1). kl_warmup_epochs: epochs over which it rises linearly
            from 0 (default 0).
        binarize: ``"none"`` (default), ``"static"`` or ``"dynamic"`` (see the module docstring).
        seed: seeds the data order, the binarization and eps (default 0).
        progress: a tqdm bar per epoch when stderr is a terminal.
        callbacks: a list (or tuple) of functions ``cb(model, row)``, called after each epoch
            with its history row.
        resume: go on from ``model.train_state`` (set by an earlier ``fit`` or by
            ``npvae.load``): its optimizer state, random streams, epoch count, history and
            settings. Settings left out (None) are the saved ones; ``lr`` may be changed
            (the new step size applies from the next step and is recorded); any other
            setting that differs from the saved one is refused, since the run would no
            longer be the one that was saved.
        dataset: the name of the data, recorded in the checkpoint (``npvae train`` passes
            its ``--dataset``; ``npvae evaluate`` reads it back).
    Returns:
        the ``History`` (also in ``model.train_state.history``).
    Raises:
        ValueError: a bad argument; it is raised before anything changes.
        TrainingError: a loss term, the gradient, the parameters after an epoch or the test
            -ELBO became NaN or inf. The message names the epoch (and step) and the term. The
            model is put back as it was at the end of the last epoch that ended finite
            (parameters, optimizer, random streams, history), the state a checkpoint of that
            epoch holds; ``error.epoch`` is that epoch (0: as it was before ``fit``).
    """
    given = {"batch_size": batch_size, "optimizer": optimizer, "lr": lr, "beta": beta,
             "kl_warmup_epochs": kl_warmup_epochs, "binarize": binarize, "seed": seed, "dataset": dataset}
    check_int("epochs", epochs)
    if not isinstance(callbacks, (list, tuple)) or not all(callable(cb) for cb in callbacks):
        raise ValueError(f"callbacks: expected a list of functions cb(model, row), got {callbacks!r}")
    settings = _resolve_settings(model, given, resume)
    x_train = _check_rows("x_train", model, x_train)
    x_test = None if x_test is None else _check_rows("x_test", model, x_test)
    if settings["binarize"] != "none" and model.likelihood != "bernoulli":
        raise ValueError(f"binarize: expected 'none' for likelihood='gaussian', got {settings['binarize']!r}")
    # Everything is checked: from here on the model changes.
    if resume:
        state = model.train_state
        state.optimizer.lr = settings["lr"]
    else:
        seeds = streams(settings["seed"], TRAINING_STREAMS)
        opt = optimizer if isinstance(optimizer, Optimizer) else make_optimizer(
            settings["optimizer"], model.params, lr=settings["lr"])
        state = TrainState(optimizer=opt, data_rng=Generator(seeds.data), noise_rng=Generator(seeds.eps))
    state.settings = settings
    model.train_state = state

    batch_size, beta, binarize, seed = (settings[k] for k in ("batch_size", "beta", "binarize", "seed"))
    if binarize == "static":
        x_train = _bernoulli_draw(x_train, Generator(streams(seed, TRAINING_STREAMS).static))
    if x_test is not None:
        x_test = binarize_test_set(x_test, binarize, seed)

    be, xp = get_backend(), model.xp
    n = int(x_train.shape[0])
    steps_per_epoch = math.ceil(n / batch_size)
    warmup_steps = settings["kl_warmup_epochs"] * steps_per_epoch
    if warmup_steps and int(epochs) * steps_per_epoch < warmup_steps:
        reached = beta * int(epochs) * steps_per_epoch / warmup_steps
        warnings.warn(f"kl_warmup_epochs: the KL weight rises to beta={beta:g} over {settings['kl_warmup_epochs']} "
                      f"epochs, but training stops after epoch {int(epochs)}, where it is {reached:.3g}",
                      stacklevel=2)

    last_good = _Snapshot(model, state)  # the end of the last epoch that ended finite
    for epoch in range(state.epoch + 1, int(epochs) + 1):
        start = time.perf_counter()
        order = state.data_rng.permutation(n)
        # per step: B * reconstruction, B * KL, B * beta_t; summed exactly (math.fsum) at the end
        terms = {"reconstruction": [], "kl": [], "beta": [], "loss": [], "neg_elbo": []}
        bar = _progress_bar(progress, steps_per_epoch, f"epoch {epoch}/{epochs}")
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : min((step + 1) * batch_size, n)]
            xb = be.take_rows(x_train, idx)  # (B, D)
            if binarize == "dynamic":
                xb = _bernoulli_draw(xb, state.data_rng)
            beta_t = beta * min(1.0, (state.step + 1) / warmup_steps) if warmup_steps else beta
            eps = state.noise_rng.standard_normal((int(xb.shape[0]), model.latent_dim), dtype=model.dtype)
            fwd = model.forward(xb, eps)
            grads = model.backward(fwd, beta_t)
            rec, kl = -float(xp.mean(fwd.log_p)), float(xp.mean(fwd.kl))
            grad_sq = float(grads @ grads)
            bad = [name for name, v in (("reconstruction", rec), ("KL", kl), ("gradient", grad_sq)) if not math.isfinite(v)]
            if bad:
                _close(bar)
                raise last_good.restore(
                    f"epoch {epoch}, step {step + 1} of {steps_per_epoch}: the {' and the '.join(bad)} "
                    f"went non-finite (reconstruction {rec}, KL {kl}, squared gradient norm {grad_sq})")
            state.optimizer.step(grads)
            state.step += 1
            b = int(xb.shape[0])
            for key, value in (("reconstruction", rec), ("kl", kl), ("beta", beta_t), ("loss", rec + beta_t * kl),
                               ("neg_elbo", rec + kl)):
                terms[key].append(b * value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({"-ELBO": f"{math.fsum(terms['neg_elbo']) / (step * batch_size + b):.2f}"},
                                refresh=False)
        _close(bar)
        # The last step's update has not been looked at yet (with one step an epoch, none has).
        if not bool(model.xp.all(model.xp.isfinite(model.params))):
            raise last_good.restore(f"epoch {epoch}: the parameters went non-finite in the epoch's last step")
        row = {"epoch": epoch, **{key: math.fsum(values) / n for key, values in terms.items()},
               "lr": float(state.optimizer.lr), "test_loss": None}
        if x_test is not None:
            from .metrics import evaluate

            try:  # in the model's dtype: an overflow there is a diverged run
                row["test_loss"] = evaluate(model, x_test, seed=seed, float64_retry=False)["loss"]
            except FloatingPointError as exc:
                raise last_good.restore(f"epoch {epoch}: the test -ELBO went non-finite after the epoch's last step "
                                        f"({exc})") from None
        row["seconds"] = time.perf_counter() - start
        state.history.append(row)
        state.epoch = epoch
        last_good = _Snapshot(model, state)
        for callback in callbacks:
            callback(model, row)
    return state.history


class _Snapshot:
    """A copy of what an epoch of training changes: the parameters, the optimizer's state, the
    random streams, the step count and the history's length. ``restore(message)`` puts the
    model back and returns the ``TrainingError`` to raise."""

    def __init__(self, model, state: TrainState):
        self.model, self.state = model, state
        opt = state.optimizer
        self.params = copy(model.params)
        self.opt = ({name: copy(getattr(opt, name)) for name in opt.buffers}, opt.t, opt.lr)
        self.rngs = [rng.host.bit_generator.state for rng in (state.data_rng, state.noise_rng)]
        self.epoch, self.step, self.rows = state.epoch, state.step, len(state.history)

    def restore(self, message) -> TrainingError:
        state, opt = self.state, self.state.optimizer
        self.model.params[...] = self.params
        buffers, opt.t, opt.lr = self.opt
        for name, value in buffers.items():
            getattr(opt, name)[...] = value
        for rng, saved in zip((state.data_rng, state.noise_rng), self.rngs):
            rng.host.bit_generator.state = saved
        state.epoch, state.step = self.epoch, self.step
        del state.history[self.rows :]
        where = f"the end of epoch {self.epoch}" if self.epoch else "where it was before training"
        error = TrainingError(f"{message}. The model is back at {where}, its last finite state; try a smaller "
                              f"lr (now {opt.lr:g}) or check the data.", history=state.history)
        error.epoch = self.epoch
        return error


def _resolve_settings(model, given, resume) -> dict:
    """fit's settings: the ones given, else (resuming) the saved ones, else ``DEFAULTS``;
    every one checked, nothing changed."""
    optimizer = given["optimizer"]
    if isinstance(optimizer, Optimizer):
        if optimizer.params is not model.params:
            raise ValueError("optimizer: expected an optimizer over this model's parameters (model.params), "
                             "got one over another array (built for another model?)")
        if given["lr"] is not None and float(given["lr"]) != optimizer.lr:
            raise ValueError(f"lr: the optimizer object has lr {optimizer.lr:g}; set it there, got lr={given['lr']!r}")
        given = {**given, "optimizer": optimizer.name, "lr": optimizer.lr}
    elif optimizer is not None:
        given = {**given, "optimizer": str(optimizer).lower()}
    if resume:
        state = getattr(model, "train_state", None)
        if state is None or state.optimizer is None:
            raise ValueError("resume: expected a model trained by fit() or loaded from a checkpoint, got a fresh model")
        missing = [name for name in ("data_rng", "noise_rng") if getattr(state, name) is None]
        if missing:
            raise ValueError(f"resume: model.train_state.{missing[0]} is None; a run resumes from its random "
                             "streams (fit() and npvae.load set them)")
        if isinstance(optimizer, Optimizer) and optimizer is not state.optimizer:
            raise ValueError("optimizer: resuming goes on with the saved optimizer state; pass its name "
                             f"({state.optimizer.name!r}) or nothing, got a new {type(optimizer).__name__} object")
        saved = {**DEFAULTS, **state.settings, "optimizer": state.optimizer.name, "lr": state.optimizer.lr}
        for key, value in given.items():
            if value is None or key == "lr" or saved[key] is None:
                continue
            if value != saved[key]:
                if key == "optimizer":
                    raise ValueError(f"optimizer: expected {saved[key]!r} to resume the saved state, got {value!r}")
                raise ValueError(f"{key}: the run being resumed was trained with {saved[key]!r} and goes on with it "
                                 f"(start a new run to change it), got {value!r}")
        base = saved
    else:
        base = DEFAULTS
    settings = {key: base[key] if given[key] is None else given[key] for key in DEFAULTS}
    _check_settings(settings)
    return {**settings, "batch_size": int(settings["batch_size"]), "lr": float(settings["lr"]),
            "beta": float(settings["beta"]), "kl_warmup_epochs": int(settings["kl_warmup_epochs"]),
            "seed": int(settings["seed"])}


def _check_settings(s):
    check_int("batch_size", s["batch_size"])
    check_int("kl_warmup_epochs", s["kl_warmup_epochs"], minimum=0)
    check_int("seed", s["seed"], minimum=0)
    check_real("beta", s["beta"], minimum=0)
    check_real("lr", s["lr"], strictly_above=0)
    if s["binarize"] not in BINARIZE:
        raise ValueError(f"binarize: expected one of {BINARIZE}, got {s['binarize']!r}")
    if s["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {tuple(OPTIMIZERS)}, got {s['optimizer']!r}")
    if s["dataset"] is not None and not isinstance(s["dataset"], str):
        raise ValueError(f"dataset: expected a name (a string) or None, got {s['dataset']!r}")


def _check_rows(name, model, x):
    """``model.check_x(x)``, with the error naming ``name``, and at least one row."""
    try:
        x = model.check_x(x)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(f"{name}: {message[3:]}" if message.startswith("x: ") else message) from None
    if int(x.shape[0]) == 0:
        raise ValueError(f"{name}: expected at least one row, got 0")
    return x


def _close(bar):
    if bar is not None:
        bar.close()


def binarize_test_set(x, binarize, seed):
    """The test set as ``fit`` evaluates it: unchanged for ``binarize="none"``, else one
    fixed Bernoulli draw made from ``seed`` (the same one at every epoch and in
    ``npvae evaluate``)."""
    if binarize == "none":
        return x
    return _bernoulli_draw(x, Generator(streams(seed, TRAINING_STREAMS).test))


def _bernoulli_draw(x, rng: Generator):
    """A binary image for each grey-level image: pixel 1 with probability x, else 0."""
    be = get_backend()
    u = rng.uniform(tuple(x.shape), dtype=be.dtype_name(x.dtype))
    return be.astype(u < x, x.dtype)


def _progress_bar(progress, total, desc):
    if not progress or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
