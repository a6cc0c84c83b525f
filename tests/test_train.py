"""fit(): it learns, it is reproducible, it resumes exactly, and it fails loudly and safely."""

import numpy as np
import pytest

import npvae
from npvae import train
from npvae.random import TRAINING_STREAMS, Generator, streams
from conftest import host, toy_images

D = 36


@pytest.fixture(scope="module")
def data():
    x, _ = toy_images(n=400, d=D, seed=1)
    return x[:320], x[320:]


def small_model(**kw):
    args = {"input_dim": D, "hidden_dims": (24,), "latent_dim": 3, "seed": 0, **kw}
    return npvae.VAE(**args)


def test_fit_learns_and_records_history(data):
    x_train, x_test = data
    model = small_model()
    history = npvae.fit(model, x_train, x_test, epochs=6, batch_size=32, lr=3e-3, progress=False)
    assert isinstance(history, npvae.History) and len(history) == 6
    assert history.column("epoch") == [1, 2, 3, 4, 5, 6]
    for row in history:
        assert set(row) == set(train.HISTORY_COLUMNS)
        assert row["loss"] == pytest.approx(row["reconstruction"] + row["beta"] * row["kl"], rel=1e-9)
        assert row["seconds"] > 0 and row["beta"] == pytest.approx(1.0)
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    assert history[-1]["test_loss"] < history[0]["test_loss"]
    assert history[-1]["test_loss"] == pytest.approx(npvae.evaluate(model, x_test)["loss"], rel=1e-9)
    assert model.train_state.history is history and model.train_state.epoch == 6


def test_same_seed_same_history(data):
    x_train, _ = data
    runs = [npvae.fit(small_model(), x_train, epochs=2, batch_size=50, seed=7, progress=False) for _ in range(2)]
    assert runs[0].column("loss") == runs[1].column("loss")
    other = npvae.fit(small_model(), x_train, epochs=2, batch_size=50, seed=8, progress=False)
    assert other.column("loss") != runs[0].column("loss")


def test_no_test_set_gives_none(data):
    history = npvae.fit(small_model(), data[0], epochs=1, progress=False)
    assert history[0]["test_loss"] is None


def test_train_epoch_is_one_epoch_of_fit(data):
    # fit = resume, rollback, the test -ELBO, progress and callbacks around train_epoch.
    x_train, _ = data
    fitted = small_model()
    row = npvae.fit(fitted, x_train, epochs=1, batch_size=64, progress=False)[0]
    model = small_model()
    seeds = streams(0, TRAINING_STREAMS)
    sums = train.train_epoch(model, npvae.optim.Adam(model.params), model.check_x(x_train), Generator(seeds.data),
                             Generator(seeds.eps), batch_size=64, beta=1.0)
    assert sums == {key: row[key] for key in ("reconstruction", "kl", "beta", "loss", "neg_elbo")}
    np.testing.assert_array_equal(host(model.params), host(fitted.params))


def test_check_settings_is_the_one_check_of_fits_settings():
    # checkpoint.py and the CLI can call it: a ValueError naming the setting, else the settings
    # with plain Python numbers.
    settings = train.check_settings({**train.DEFAULTS, "batch_size": np.int64(64), "beta": np.float32(0.5)})
    assert settings == {**train.DEFAULTS, "batch_size": 64, "beta": 0.5} and type(settings["batch_size"]) is int
    with pytest.raises(ValueError, match=r"^kl_warmup_epochs: expected a non-negative integer, got 1.5$"):
        train.check_settings({**train.DEFAULTS, "kl_warmup_epochs": 1.5})
    with pytest.raises(ValueError, match=r"^optimizer: expected one of \('sgd', 'adagrad', 'adam'\), got \['adam'\]$"):
        train.check_settings({**train.DEFAULTS, "optimizer": ["adam"]})


def test_kl_warmup_ramps_beta_step_by_step(data):
    x_train, _ = data  # 320 rows, batch 64: 5 steps an epoch, warm-up over 10 steps
    history = npvae.fit(small_model(), x_train, epochs=3, batch_size=64, beta=2.0, kl_warmup_epochs=2, progress=False)
    betas = history.column("beta")
    assert betas[0] == pytest.approx(2.0 * np.mean([1, 2, 3, 4, 5]) / 10)  # mean of 0.2, 0.4, ..., 1.0
    assert betas[1] == pytest.approx(2.0 * np.mean([6, 7, 8, 9, 10]) / 10)
    assert betas[2] == pytest.approx(2.0)


class Spy(npvae.VAE):
    """Records the minibatches the training loop hands to the model."""

    def forward(self, x, eps):
        self.seen.append(host(x))
        return super().forward(x, eps)


@pytest.mark.parametrize("mode", ["none", "static", "dynamic"])
def test_binarization(mode, data):
    x_train, _ = data
    model = Spy(D, (8,), 2, seed=0)
    model.seen = []
    npvae.fit(model, x_train[:1], epochs=2, batch_size=1, binarize=mode, progress=False)
    first, second = model.seen  # the same image, once in each epoch
    if mode == "none":
        np.testing.assert_array_equal(first, x_train[:1])
        return
    assert np.isin(first, [0.0, 1.0]).all() and np.isin(second, [0.0, 1.0]).all()
    # Identical under static, redrawn under dynamic (36 pixels: all equal by chance ~never).
    assert np.array_equal(first, second) == (mode == "static")


def test_bernoulli_draw_is_fair(be):
    # Each pixel is 1 with probability x: the share of ones matches within 4 standard errors.
    x = be.asarray(np.linspace(0.0, 1.0, 50_000).reshape(100, 500), "float32")
    draw = host(train._bernoulli_draw(x, npvae.Generator(0)))
    assert set(np.unique(draw)) <= {0.0, 1.0}
    p = host(x)
    se = np.sqrt(np.sum(p * (1 - p))) / p.size
    assert abs(draw.mean() - p.mean()) < 4 * se


def test_progress_bar_only_on_a_terminal(data, capsys, monkeypatch):
    npvae.fit(small_model(), data[0], epochs=1, progress=True)
    assert capsys.readouterr().err == ""  # pytest's stderr is not a terminal
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    npvae.fit(small_model(), data[0], epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and "step" in err
    npvae.fit(small_model(), data[0], epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_callbacks_see_every_epoch(data):
    seen = []
    npvae.fit(small_model(), data[0], epochs=3, progress=False, callbacks=[lambda m, row: seen.append(row["epoch"])])
    assert seen == [1, 2, 3]


def test_resume_gives_the_same_history_as_straight_through(data, tmp_path):
    x_train, x_test = data
    kw = {"batch_size": 32, "binarize": "dynamic", "kl_warmup_epochs": 2, "seed": 3, "progress": False}
    straight_model = small_model()
    straight = npvae.fit(straight_model, x_train, x_test, epochs=4, **kw)
    model = small_model()
    npvae.fit(model, x_train, x_test, epochs=2, **kw)
    npvae.save(model, tmp_path / "ckpt.npz")
    resumed_model = npvae.load(tmp_path / "ckpt.npz")
    resumed = npvae.fit(resumed_model, x_train, x_test, epochs=4, resume=True, **kw)
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(resumed) == drop(straight)
    np.testing.assert_array_equal(host(resumed_model.params), host(straight_model.params))


def test_resume_needs_a_state_and_the_same_optimizer(data):
    with pytest.raises(ValueError, match="resume: expected a model trained by fit.. or loaded from a checkpoint"):
        npvae.fit(small_model(), data[0], epochs=1, resume=True)
    model = small_model()
    npvae.fit(model, data[0], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"optimizer: the run being resumed was trained with 'adam' and goes on "
                                         r"with it \(start a new run to change it\), got 'sgd'"):
        npvae.fit(model, data[0], epochs=2, optimizer="sgd", resume=True)


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_non_finite_loss_stops_with_epoch_step_and_term(data):
    # A Gaussian decoder and plain SGD with a huge step: the loss blows up within a few steps.
    x_train, _ = data
    model = small_model(likelihood="gaussian")
    with pytest.raises(npvae.TrainingError) as info:
        npvae.fit(model, x_train, epochs=5, batch_size=32, optimizer="sgd", lr=50.0, progress=False)
    message = str(info.value)
    assert message.startswith("epoch 1, step ")
    assert "went non-finite" in message and "lr" in message
    assert any(term in message for term in ("the reconstruction", "the KL", "the gradient"))
    # No update with a non-finite gradient was applied: the parameters are still finite.
    assert np.isfinite(host(model.params)).all()
    assert info.value.history is model.train_state.history
    assert "The model is back at where it was before training" in message and info.value.epoch == 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, r"epochs: expected a positive integer, got 0"),
        ({"batch_size": 2.5}, r"batch_size: expected a positive integer, got 2.5"),
        ({"beta": -1.0}, r"beta: expected a non-negative number, got -1.0"),
        ({"kl_warmup_epochs": -2}, r"kl_warmup_epochs: expected a non-negative integer, got -2"),
        ({"binarize": "otsu"}, r"binarize: expected one of \('none', 'static', 'dynamic'\), got 'otsu'"),
        ({"optimizer": "lbfgs"}, r"optimizer: expected one of \('sgd', 'adagrad', 'adam'\), got 'lbfgs'"),
        ({"lr": 0}, r"lr: expected a positive number, got 0"),
    ],
)
def test_bad_arguments(kwargs, message, data):
    with pytest.raises(ValueError, match=message):
        npvae.fit(small_model(), data[0], progress=False, **kwargs)


def test_bad_data(data):
    with pytest.raises(ValueError, match=r"x_train: expected shape \(N, 36\), got \(320, 35\)"):
        npvae.fit(small_model(), data[0][:, :35], progress=False)
    with pytest.raises(ValueError, match=r"binarize: expected 'none' for likelihood='gaussian', got 'static'"):
        npvae.fit(small_model(likelihood="gaussian"), data[0], binarize="static", progress=False)


def test_history_csv_round_trip(data, tmp_path):
    history = npvae.fit(small_model(), data[0], data[1], epochs=2, progress=False)
    history.to_csv(tmp_path / "history.csv")
    text = (tmp_path / "history.csv").read_text().splitlines()
    assert text[0] == "epoch,loss,reconstruction,kl,beta,test_loss,seconds,neg_elbo,lr"  # Step 9 added the last two
    back = npvae.History.from_csv(tmp_path / "history.csv")
    assert back == history
    assert list(tmp_path.iterdir()) == [tmp_path / "history.csv"]  # no temporary files left


# --- Faults: divergence, refused resumes, bad arguments (issue 10) ----------------------------
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_divergence_in_an_epochs_last_step_is_caught_and_the_model_rolled_back(data):
    # Full-batch SGD with a huge step: every step is an epoch's last step. Epochs 1-3 end
    # finite; epoch 4's update makes the test -ELBO NaN. Before the fix that epoch was
    # handed to the callbacks (and so saved over the good checkpoint) and training stopped
    # only at epoch 5's first step.
    x_train, x_test = data
    model = small_model()
    seen, params_after = [], {}

    def record(m, row):
        seen.append(row)
        params_after[row["epoch"]] = host(m.params).copy()

    with pytest.raises(npvae.TrainingError) as info:
        npvae.fit(model, x_train, x_test, epochs=12, batch_size=len(x_train), optimizer="sgd", lr=3.0,
                  progress=False, callbacks=[record])
    assert [row["epoch"] for row in seen] == [1, 2, 3]
    assert all(np.isfinite(row["test_loss"]) for row in seen)
    assert str(info.value).startswith("epoch 4: the test -ELBO went non-finite")
    assert "The model is back at the end of epoch 3" in str(info.value) and info.value.epoch == 3
    # The model is exactly as a checkpoint of epoch 3 holds it: going on from here is epoch 4 again.
    np.testing.assert_array_equal(host(model.params), params_after[3])
    assert model.train_state.epoch == 3 and model.train_state.step == 3 and len(model.train_state.history) == 3
    assert model.train_state.optimizer.t == 3


def test_resume_takes_the_saved_settings_and_applies_a_new_lr(data):
    x_train, _ = data
    kw = {"batch_size": 50, "seed": 4, "progress": False}
    straight = npvae.fit(small_model(), x_train, epochs=2, **kw)
    model = small_model()
    npvae.fit(model, x_train, epochs=1, **kw)
    # Nothing but epochs given: the saved batch size and seed, not the defaults.
    resumed = npvae.fit(model, x_train, epochs=2, resume=True, progress=False)
    assert resumed.column("loss") == straight.column("loss")
    assert model.train_state.settings["batch_size"] == 50
    npvae.fit(model, x_train, epochs=3, resume=True, lr=0.5, progress=False)
    assert model.train_state.optimizer.lr == 0.5 and model.train_state.settings["lr"] == 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 64}, r"batch_size: the run being resumed was trained with 50 and goes on with it"),
    ({"seed": 1}, r"seed: the run being resumed was trained with 4"),
    ({"optimizer": "sgd"}, r"optimizer: the run being resumed was trained with 'adam'"),
    ({"beta": 2.0}, r"beta: the run being resumed was trained with 1.0"),
])
def test_a_refused_resume_changes_nothing(kwargs, message, data):
    x_train, _ = data
    model = small_model()
    npvae.fit(model, x_train, epochs=1, batch_size=50, seed=4, progress=False)
    before = (host(model.params).copy(), dict(model.train_state.settings), model.train_state.step)
    with pytest.raises(ValueError, match=message):
        npvae.fit(model, x_train, epochs=2, resume=True, progress=False, **kwargs)
    np.testing.assert_array_equal(host(model.params), before[0])
    assert model.train_state.settings == before[1] and model.train_state.step == before[2]


def test_an_optimizer_object_must_belong_to_the_model(data):
    model, other = small_model(), small_model(seed=1)
    with pytest.raises(ValueError, match=r"optimizer: expected an optimizer over this model's parameters"):
        npvae.fit(model, data[0], epochs=1, optimizer=npvae.optim.Adam(other.params), progress=False)
    npvae.fit(model, data[0], epochs=1, optimizer=npvae.optim.Adam(model.params, lr=2e-3), progress=False)
    assert model.train_state.settings["lr"] == 2e-3
    with pytest.raises(ValueError, match=r"optimizer: resuming goes on with the saved optimizer state"):
        npvae.fit(model, data[0], epochs=2, resume=True, optimizer=npvae.optim.Adam(model.params), progress=False)


def test_empty_data_is_refused(data):
    with pytest.raises(ValueError, match=r"x_train: expected at least one row, got 0"):
        npvae.fit(small_model(), data[0][:0], epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"x_test: expected at least one row, got 0"):
        npvae.fit(small_model(), data[0], data[1][:0], epochs=1, progress=False)


def test_numpy_numbers_are_numbers(data):
    history = npvae.fit(small_model(), data[0], epochs=1, lr=np.float32(0.01), beta=np.float64(0.5),
                        batch_size=np.int64(64), seed=np.int32(2), progress=False)
    assert len(history) == 1 and history[0]["beta"] == 0.5


def test_negative_seed_is_named(data):
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer, got -1"):
        npvae.fit(small_model(), data[0], epochs=1, seed=-1, progress=False)


def test_beta_column_is_exact(data):
    # 320 rows in batches of 128, 128 and 64: the weighted mean of 1.0 is 1.0, not 1.0000000000000002.
    history = npvae.fit(small_model(), data[0], epochs=2, batch_size=128, progress=False)
    assert history.column("beta") == [1.0, 1.0]
    warm = npvae.fit(small_model(), data[0], epochs=3, batch_size=64, kl_warmup_epochs=1, progress=False)
    assert warm.column("beta")[1:] == [1.0, 1.0]


def test_a_warmup_longer_than_training_is_said(data):
    with pytest.warns(UserWarning, match=r"kl_warmup_epochs: the KL weight rises to beta=1 over 100 epochs, "
                                         r"but training stops after epoch 2, where it is 0.02"):
        npvae.fit(small_model(), data[0], epochs=2, kl_warmup_epochs=100, progress=False)
