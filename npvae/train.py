"""Training: ``fit`` runs minibatch stochastic gradient descent on -ELBO.

One step, for a minibatch x_b (B, D) and fresh noise eps (B, Z):

    res = model.loss_and_grads(x_b, eps, beta)     # -ELBO and d(-ELBO)/d params
    optimizer.step(res.grads)                      # params <- params - lr * (...)

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
from dataclasses import dataclass, field

from .backend import Generator, check_int, get_backend, spawn_seeds
from .io import atomic_open
from .optim import Optimizer, make_optimizer

BINARIZE = ("none", "static", "dynamic")
HISTORY_COLUMNS = ("epoch", "loss", "reconstruction", "kl", "beta", "test_loss", "seconds")


class TrainingError(FloatingPointError):
    """Training stopped: a loss term or the gradient is not finite. ``history`` holds the
    epochs completed before it."""

    def __init__(self, message, history=None):
        super().__init__(message)
        self.history = history


class History(list):
    """One dict per epoch, keys ``HISTORY_COLUMNS`` (``test_loss`` is None without x_test).

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
    settings: dict = field(default_factory=dict)  # fit's arguments


def fit(model, x_train, x_test=None, epochs=10, batch_size=128, optimizer="adam", lr=1e-3,
        beta=1.0, kl_warmup_epochs=0, binarize="none", seed=0, progress=True, callbacks=(),
        resume=False) -> History:
    """Train ``model`` on ``x_train`` (N, D) by minibatch gradient descent on -ELBO.

    Args:
        model: an ``npvae.VAE``.
        x_train, x_test: (N, D) arrays (NumPy or the backend's); x_test is evaluated
            (-ELBO, one eps per example, fixed seed) after every epoch.
        epochs: train until this many epochs are complete (counting resumed ones).
        batch_size: B.
        optimizer: ``"adam"``, ``"adagrad"`` or ``"sgd"`` (momentum 0.9); lr: its step size.
        beta: KL weight. kl_warmup_epochs: epochs over which it rises linearly from 0.
        binarize: ``"none"``, ``"static"`` or ``"dynamic"`` (see the module docstring).
        seed: seeds the data order, the binarization and eps.
        progress: a tqdm bar per epoch when stderr is a terminal.
        callbacks: functions ``cb(model, row)`` called after each epoch with its history row.
        resume: go on from ``model.train_state`` (set by an earlier ``fit`` or by
            ``npvae.load``): its optimizer state, random streams, epoch count and history.
    Returns:
        the ``History`` (also in ``model.train_state.history``).
    Raises:
        TrainingError: a loss term or the gradient became NaN or inf. The message names the
            epoch, the step and the term; no update with it is applied, so the model keeps
            the parameters it had before that step, and ``model.train_state`` its history.
    """
    _check_fit_args(epochs=epochs, batch_size=batch_size, beta=beta, kl_warmup_epochs=kl_warmup_epochs,
                    binarize=binarize)
    be = get_backend()
    settings = {"batch_size": int(batch_size), "optimizer": str(optimizer), "lr": float(lr), "beta": float(beta),
                "kl_warmup_epochs": int(kl_warmup_epochs), "binarize": binarize, "seed": int(seed)}
    state = _resume_state(model, optimizer) if resume else _fresh_state(model, optimizer, lr, seed)
    state.settings = settings
    model.train_state = state

    x_train = model.check_x(x_train)
    if binarize != "none" and model.likelihood != "bernoulli":
        raise ValueError(f"binarize: expected 'none' for likelihood='gaussian', got {binarize!r}")
    x_test = None if x_test is None else model.check_x(x_test)
    if binarize == "static":
        x_train = _bernoulli_draw(x_train, Generator(spawn_seeds(seed, 4)[2]))
    if x_test is not None:
        x_test = binarize_test_set(x_test, binarize, seed)

    n = int(x_train.shape[0])
    steps_per_epoch = math.ceil(n / batch_size)
    warmup_steps = kl_warmup_epochs * steps_per_epoch

    for epoch in range(state.epoch + 1, int(epochs) + 1):
        start = time.perf_counter()
        order = state.data_rng.permutation(n)
        sums = {"loss": 0.0, "reconstruction": 0.0, "kl": 0.0, "beta": 0.0}
        bar = _progress_bar(progress, steps_per_epoch, f"epoch {epoch}/{epochs}")
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : min((step + 1) * batch_size, n)]
            xb = be.take_rows(x_train, idx)  # (B, D)
            if binarize == "dynamic":
                xb = _bernoulli_draw(xb, state.data_rng)
            beta_t = beta * min(1.0, (state.step + 1) / warmup_steps) if warmup_steps else beta
            eps = state.noise_rng.standard_normal((int(xb.shape[0]), model.latent_dim), dtype=model.dtype)
            res = model._loss_and_grads(xb, eps, beta_t)
            rec, kl = res.reconstruction, res.kl
            grad_sq = float(res.grads @ res.grads)
            bad = [name for name, v in (("reconstruction", rec), ("KL", kl), ("gradient", grad_sq)) if not math.isfinite(v)]
            if bad:
                if bar is not None:
                    bar.close()
                raise TrainingError(
                    f"epoch {epoch}, step {step + 1} of {steps_per_epoch}: the {' and the '.join(bad)} "
                    f"went non-finite (reconstruction {rec}, KL {kl}, squared gradient norm {grad_sq}). "
                    f"The model keeps its parameters from before this step; try a smaller lr "
                    f"(now {lr:g}) or check the data.",
                    history=state.history,
                )
            state.optimizer.step(res.grads)
            state.step += 1
            weight = xb.shape[0] / n
            sums["loss"] += weight * (rec + beta_t * kl)
            sums["reconstruction"] += weight * rec
            sums["kl"] += weight * kl
            sums["beta"] += weight * beta_t
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{sums['loss'] * n / ((step * batch_size) + xb.shape[0]):.2f}", refresh=False)
        if bar is not None:
            bar.close()
        row = {"epoch": epoch, **sums, "test_loss": None}
        if x_test is not None:
            from .metrics import evaluate

            row["test_loss"] = evaluate(model, x_test, seed=seed)["loss"]
        row["seconds"] = time.perf_counter() - start
        state.history.append(row)
        state.epoch = epoch
        for callback in callbacks:
            callback(model, row)
    return state.history


def _fresh_state(model, optimizer, lr, seed) -> TrainState:
    data_seed, noise_seed = spawn_seeds(seed, 4)[:2]
    opt = optimizer if isinstance(optimizer, Optimizer) else make_optimizer(optimizer, model.params, lr=lr)
    return TrainState(optimizer=opt, data_rng=Generator(data_seed), noise_rng=Generator(noise_seed))


def _resume_state(model, optimizer) -> TrainState:
    state = getattr(model, "train_state", None)
    if state is None or state.optimizer is None:
        raise ValueError("resume: expected a model trained by fit() or loaded from a checkpoint, got a fresh model")
    name = optimizer.name if isinstance(optimizer, Optimizer) else str(optimizer).lower()
    if name != state.optimizer.name:
        raise ValueError(f"optimizer: expected {state.optimizer.name!r} to resume the saved state, got {name!r}")
    return state


def binarize_test_set(x, binarize, seed):
    """The test set as ``fit`` evaluates it: unchanged for ``binarize="none"``, else one
    fixed Bernoulli draw made from ``seed`` (the same one at every epoch and in
    ``npvae evaluate``)."""
    if binarize == "none":
        return x
    return _bernoulli_draw(x, Generator(spawn_seeds(seed, 4)[3]))


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


def _check_fit_args(epochs, batch_size, beta, kl_warmup_epochs, binarize):
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_int("kl_warmup_epochs", kl_warmup_epochs, minimum=0)
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta: expected a non-negative number, got {beta!r}")
    if binarize not in BINARIZE:
        raise ValueError(f"binarize: expected one of {BINARIZE}, got {binarize!r}")
