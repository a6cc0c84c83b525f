"""Training: ``fit`` runs minibatch stochastic gradient descent on -ELBO.

One step, for a minibatch x_b (B, D) and fresh noise eps (B, Z) (``train_epoch`` takes one
per minibatch of an epoch; ``fit`` adds resume, rollback, the test -ELBO and callbacks):

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
- ``k``: train on the importance-weighted bound L_k (Burda et al. 2016) with eps (B, k, Z),
  k draws an example (``VAE.forward_samples``); 1, the default, is the ELBO.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

from .backend import copy, get_backend
from .checks import check_int, check_real, is_integer, shown
from .random import TRAINING_STREAMS, Generator, streams
from .io import atomic_open
from .optim import OPTIMIZERS, Optimizer, make_optimizer

BINARIZE = ("none", "static", "dynamic")
HISTORY_COLUMNS = ("epoch", "loss", "reconstruction", "kl", "beta", "test_loss", "seconds", "neg_elbo", "lr")


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
    - With ``k`` > 1 draws an example, ``loss`` is -L_k, the importance-weighted bound, and
      ``reconstruction`` and ``kl`` are means over the draws (kl: of log Q(z|x) - log P(z)).
    - ``lr``: the optimizer's step size in this epoch.
    - ``test_loss``: the -ELBO on x_test after the epoch (None without x_test).
    - ``seconds``: the epoch's wall-clock time.

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
    def checked(cls, rows, epochs, name="history"):
        """Saved ``rows`` of a run of ``epochs`` epochs as a History, or a ValueError naming
        ``name``, the row and the column: one row per epoch, numbered from 1, each with
        exactly ``HISTORY_COLUMNS``, every other value a finite number or None."""
        if not isinstance(rows, list):
            raise ValueError(f"{name}: expected a list of {epochs} rows, got {shown(rows)}")
        if len(rows) != epochs:
            raise ValueError(f"{name}: expected {epochs} rows (one per epoch), got {len(rows)}")
        for i, row in enumerate(rows):
            where = f"{name}[{i}]"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {shown(row)}")
            missing, extra = [k for k in HISTORY_COLUMNS if k not in row], [k for k in row if k not in HISTORY_COLUMNS]
            if missing or extra:
                raise ValueError(f"{where}: missing key {missing[0]!r}" if missing else
                                 f"{where}: unexpected key {shown(extra[0])}")
            if not (is_integer(row["epoch"]) and row["epoch"] == i + 1):
                raise ValueError(f"{where}.epoch: expected {i + 1}, got {shown(row['epoch'])}")
            for key in HISTORY_COLUMNS[1:]:
                if row[key] is not None:
                    check_real(f"{where}.{key}", row[key])
        return cls(rows)

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
            "binarize": "none", "seed": 0, "dataset": None, "k": 1}


def train_epoch(model, optimizer, x, data_rng, noise_rng, batch_size, beta=1.0, binarize="none", bar=None,
                k=1) -> dict:
    """One epoch: every row of ``x`` (N, D; ``model.check_x(x)``) once, in an order drawn from
    ``data_rng``, one optimizer step per minibatch of ``batch_size`` rows (the module
    docstring's step), eps from ``noise_rng``. ``beta``: the KL weight, or a function t -> the
    weight of the epoch's t-th step (t = 0, 1, ...; KL warm-up). ``binarize="dynamic"`` draws
    each minibatch's binary images afresh from ``data_rng``; ``bar``: a tqdm bar to advance;
    ``k`` > 1: eps (B, k, Z), and the loss is -L_k.
    Returns the epoch's means per example of reconstruction, kl, beta, loss and neg_elbo (see
    ``History``). Raises ``TrainingError``, before that step's update, when a loss term or the
    gradient is not finite."""
    be, n = get_backend(), int(x.shape[0])
    order, steps = data_rng.permutation(n), math.ceil(n / batch_size)
    sums = {"reconstruction": [], "kl": [], "beta": [], "loss": [], "neg_elbo": []}  # B * each, per step
    for t in range(steps):
        xb = be.take_rows(x, order[t * batch_size : min((t + 1) * batch_size, n)])  # (B, D)
        if binarize == "dynamic":
            xb = _bernoulli_draw(xb, data_rng)
        beta_t = beta(t) if callable(beta) else beta
        eps = noise_rng.standard_normal((int(xb.shape[0]), *([k] if k > 1 else []), model.latent_dim),
                                        dtype=model.dtype)
        fwd = model.forward(xb, eps)  # mu, logvar, z, log P(x|z), KL
        grads = model.backward(fwd, beta_t)  # d(-ELBO)/d params
        rec, kl = _finite_terms(model.xp, fwd, grads, t, steps)
        loss = rec + beta_t * kl if k == 1 else float(model.xp.mean(fwd.objective(beta_t)))  # -L_k
        optimizer.step(grads)  # params <- params - lr * (...)
        for key, value in zip(sums, (rec, kl, beta_t, loss, rec + kl)):
            sums[key].append(int(xb.shape[0]) * value)
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"-ELBO": f"{math.fsum(sums['neg_elbo']) / min((t + 1) * batch_size, n):.2f}"},
                            refresh=False)
    return {key: math.fsum(values) / n for key, values in sums.items()}  # summed exactly, then averaged


def fit(model, x_train, x_test=None, epochs=10, batch_size=None, optimizer=None, lr=None,
        beta=None, kl_warmup_epochs=None, binarize=None, seed=None, progress=True, callbacks=(),
        resume=False, dataset=None, k=None) -> History:
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
        resume: go on from ``model.train_state`` (set by an earlier ``fit`` or by ``npvae.load``):
            its optimizer state, random streams, epoch count, history and settings. Settings
            left out (None) are the saved ones; a new ``lr`` applies from the next step and is
            recorded; any other setting that differs from the saved one is refused.
        dataset: the data's name, recorded in the checkpoint (``npvae evaluate`` reads it).
        k: draws an example: minimize -L_k, the importance-weighted bound (Burda et al. 2016),
            with eps (B, k, Z) (default 1: the -ELBO).
    Returns:
        the ``History`` (also in ``model.train_state.history``).
    Raises:
        ValueError: a bad argument; it is raised before anything changes.
        TrainingError: a loss term, the gradient, the parameters after an epoch or the test
            -ELBO became NaN or inf; the message names the epoch (and step) and the term. The
            model is put back as a checkpoint of the last epoch that ended finite holds it
            (parameters, optimizer, random streams, history); ``error.epoch`` is that epoch.
    """
    given = {"batch_size": batch_size, "optimizer": optimizer, "lr": lr, "beta": beta,
             "kl_warmup_epochs": kl_warmup_epochs, "binarize": binarize, "seed": seed, "dataset": dataset, "k": k}
    epochs, settings, x_train, x_test = _check_arguments(model, x_train, x_test, epochs, callbacks, given, resume)
    # Everything is checked: from here on the model changes.
    state, x_train, x_test = _start(model, settings, optimizer, resume, x_train, x_test)
    batch_size = settings["batch_size"]
    steps = math.ceil(int(x_train.shape[0]) / batch_size)
    kl_weight = _kl_weight(settings, steps, epochs)  # the KL weight of the run's step t = 0, 1, ...
    last_good = _Snapshot(model, state)  # the end of the last epoch that ended finite
    for epoch in range(state.epoch + 1, epochs + 1):
        start = time.perf_counter()
        try:
            with _progress_bar(progress, steps, f"epoch {epoch}/{epochs}") as bar:
                row = train_epoch(model, state.optimizer, x_train, state.data_rng, state.noise_rng, batch_size,
                                  lambda t: kl_weight(state.step + t), settings["binarize"], bar, settings["k"])
        except TrainingError as exc:
            raise last_good.restore(f"epoch {epoch}, {exc}") from None
        state.step += steps
        row = {"epoch": epoch, **row, "lr": float(state.optimizer.lr),
               "test_loss": _test_loss(model, x_test, settings["seed"], epoch, last_good),
               "seconds": time.perf_counter() - start}
        state.history.append(row)
        state.epoch = epoch
        last_good = _Snapshot(model, state)
        for callback in callbacks:
            callback(model, row)
    return state.history


def _finite_terms(xp, fwd, grads, t, steps) -> tuple[float, float]:
    """Step t's mean reconstruction and KL terms, or a TrainingError naming those (and the
    gradient) that are not finite."""
    rec, kl, grad_sq = -float(xp.mean(fwd.log_p)), float(xp.mean(fwd.kl)), float(grads @ grads)
    bad = [name for name, v in (("reconstruction", rec), ("KL", kl), ("gradient", grad_sq)) if not math.isfinite(v)]
    if bad:
        raise TrainingError(f"step {t + 1} of {steps}: the {' and the '.join(bad)} went non-finite (reconstruction {rec}, KL {kl}, "
                            f"squared gradient norm {grad_sq})")
    return rec, kl


def _test_loss(model, x_test, seed, epoch, last_good):
    """The test -ELBO after an epoch (None without ``x_test``), in the model's dtype. The
    parameters after the epoch's last update, or this -ELBO, not finite: the run is rolled
    back to ``last_good`` and its TrainingError raised."""
    from .metrics import evaluate

    if not bool(model.xp.all(model.xp.isfinite(model.params))):  # no step has looked at the last update
        raise last_good.restore(f"epoch {epoch}: the parameters went non-finite in the epoch's last step")
    try:  # in the model's dtype: an overflow there is a diverged run
        return None if x_test is None else evaluate(model, x_test, seed=seed, float64_retry=False)["loss"]
    except FloatingPointError as exc:
        raise last_good.restore(f"epoch {epoch}: the test -ELBO went non-finite after the epoch's last step "
                                f"({exc})") from None


def _kl_weight(settings, steps_per_epoch, epochs):
    """The function t -> the KL weight of the run's step t (t = 0, 1, ...): beta, rising
    linearly from beta / warm-up steps during ``kl_warmup_epochs``; a warning when training
    stops before the warm-up ends."""
    beta, warmup_steps = settings["beta"], settings["kl_warmup_epochs"] * steps_per_epoch
    if warmup_steps and epochs * steps_per_epoch < warmup_steps:
        warnings.warn(f"kl_warmup_epochs: the KL weight rises to beta={beta:g} over {settings['kl_warmup_epochs']} "
                      f"epochs, but training stops after epoch {epochs}, where it is "
                      f"{beta * epochs * steps_per_epoch / warmup_steps:.3g}", stacklevel=3)
    return lambda t: beta * min(1.0, (t + 1) / warmup_steps) if warmup_steps else beta


def _check_arguments(model, x_train, x_test, epochs, callbacks, given, resume):
    """fit's arguments checked, nothing changed: (epochs, settings, x_train, x_test)."""
    epochs = check_int("epochs", epochs)
    if not isinstance(callbacks, (list, tuple)) or not all(callable(cb) for cb in callbacks):
        raise ValueError(f"callbacks: expected a list of functions cb(model, row), got {callbacks!r}")
    settings = resolve_settings(_given_optimizer(model, given, resume), model.train_state if resume else None)
    x_train = _check_rows("x_train", model, x_train)
    x_test = None if x_test is None else _check_rows("x_test", model, x_test)
    if settings["binarize"] != "none" and model.likelihood != "bernoulli":
        raise ValueError(f"binarize: expected 'none' for likelihood='gaussian', got {settings['binarize']!r}")
    return epochs, settings, x_train, x_test


def _start(model, settings, optimizer, resume, x_train, x_test):
    """Set ``model.train_state`` for this run (resumed, or new from the seed and the optimizer)
    and binarize the data as the settings say: (state, x_train, x_test)."""
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
    if settings["binarize"] == "static":
        x_train = _bernoulli_draw(x_train, Generator(streams(settings["seed"], TRAINING_STREAMS).static))
    return state, x_train, None if x_test is None else binarize_test_set(x_test, settings["binarize"], settings["seed"])


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


def resolve_settings(given, state=None) -> dict:
    """fit's settings (``DEFAULTS``' keys): those given (not None), else those of ``state``,
    the ``TrainState`` of a run being resumed, else ``DEFAULTS``; checked (``check_settings``).
    Resuming, a given setting other than ``lr`` must be the saved one (or the saved one None):
    the run goes on as it was saved. ``npvae train`` checks its flags with this too."""
    base = DEFAULTS
    if state is not None:
        base = {**DEFAULTS, **state.settings, "optimizer": state.optimizer.name, "lr": state.optimizer.lr}
        for key, value in given.items():
            if value is not None and key != "lr" and base[key] is not None and value != base[key]:
                raise ValueError(f"{key}: the run being resumed was trained with {base[key]!r} and goes on with it "
                                 f"(start a new run to change it), got {value!r}")
    return check_settings({key: base[key] if given.get(key) is None else given[key] for key in DEFAULTS})


def check_settings(settings) -> dict:
    """``settings`` (``DEFAULTS``' keys) with plain Python numbers, or a ValueError naming the
    setting, what was expected and what came."""
    if not (isinstance(settings["binarize"], str) and settings["binarize"] in BINARIZE):
        raise ValueError(f"binarize: expected one of {BINARIZE}, got {settings['binarize']!r}")
    if not (isinstance(settings["optimizer"], str) and settings["optimizer"] in OPTIMIZERS):
        raise ValueError(f"optimizer: expected one of {tuple(OPTIMIZERS)}, got {settings['optimizer']!r}")
    if settings["dataset"] is not None and not isinstance(settings["dataset"], str):
        raise ValueError(f"dataset: expected a name (a string) or None, got {settings['dataset']!r}")
    return {**settings, "batch_size": check_int("batch_size", settings["batch_size"]),
            "lr": check_real("lr", settings["lr"], strictly_above=0),
            "beta": check_real("beta", settings["beta"], minimum=0),
            "kl_warmup_epochs": check_int("kl_warmup_epochs", settings["kl_warmup_epochs"], minimum=0),
            "seed": check_int("seed", settings["seed"], minimum=0), "k": check_int("k", settings["k"])}


def _given_optimizer(model, given, resume) -> dict:
    """``given`` with an optimizer object replaced by its name and lr (it must be over
    ``model.params``, and resuming, the saved one); refuses to resume a model with no run."""
    optimizer, state = given["optimizer"], getattr(model, "train_state", None)
    if resume and (state is None or state.optimizer is None):
        raise ValueError("resume: expected a model trained by fit() or loaded from a checkpoint, got a fresh model")
    missing = [name for name in ("data_rng", "noise_rng") if resume and getattr(state, name) is None]
    if missing:
        raise ValueError(f"resume: model.train_state.{missing[0]} is None; a run resumes from its random "
                         "streams (fit() and npvae.load set them)")
    if not isinstance(optimizer, Optimizer):
        return given if optimizer is None else {**given, "optimizer": str(optimizer).lower()}
    if optimizer.params is not model.params:
        raise ValueError("optimizer: expected an optimizer over this model's parameters (model.params), "
                         "got one over another array (built for another model?)")
    if given["lr"] is not None and float(given["lr"]) != optimizer.lr:
        raise ValueError(f"lr: the optimizer object has lr {optimizer.lr:g}; set it there, got lr={given['lr']!r}")
    if resume and optimizer is not state.optimizer:
        raise ValueError("optimizer: resuming goes on with the saved optimizer state; pass its name "
                         f"({state.optimizer.name!r}) or nothing, got a new {type(optimizer).__name__} object")
    return {**given, "optimizer": optimizer.name, "lr": optimizer.lr}


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
    """A tqdm bar (a context manager that closes it) when ``progress`` and stderr is a
    terminal, else one that gives None."""
    if not progress or not sys.stderr.isatty():
        return contextlib.nullcontext()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)
