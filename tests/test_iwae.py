"""Step 12, part 2: the importance-weighted bound L_K (Burda et al. 2016), trained by hand.

    L_K = log (1/K) sum_i w_i,   w_i = P(x, z_i) / Q(z_i|x),   z_i = reparameterized from eps[:, i]

``model.loss_and_grads(x, eps, k=K)`` with eps (N, K, Z): the mean over the batch of -L_K and its
hand-written gradient; ``k=1`` is today's -ELBO. ``npvae.fit(..., k=K)``, ``npvae train --iwae K``.
"""

import json

import numpy as np
import pytest

import npvae
from npvae import cli
from npvae.gradcheck import check_model

from conftest import SMALL, host, one_line, toy_images

D, Z = 6, 3


def model_and_batch(posterior, k, n=4, seed=0, likelihood="bernoulli", dtype="float64"):
    model = npvae.VAE(D, (5,), Z, likelihood=likelihood, activation="tanh", dtype=dtype, seed=seed,
                      posterior=posterior)
    g = np.random.default_rng(seed + 10)
    x = g.uniform(size=(n, D)) if likelihood == "bernoulli" else g.standard_normal((n, D))
    return model, x, g.standard_normal((n, k, Z))


# --- the gradient, by hand, against central differences (float64, numpy and strict) --------------
@pytest.mark.textbook
@pytest.mark.parametrize("posterior", npvae.vae.POSTERIORS)
@pytest.mark.parametrize("k, beta, likelihood", [(1, 1.0, "bernoulli"), (3, 1.0, "bernoulli"), (3, 1.0, "gaussian"),
                                                 (3, 0.5, "bernoulli")])
def test_gradient_check_of_the_bound(posterior, k, beta, likelihood):
    model, x, eps = model_and_batch(posterior, k, likelihood=likelihood)
    report = check_model(model, x, eps, beta=beta)  # loss_and_grads(x, eps) and loss(x, eps): K from eps
    assert report.passed(1e-6), str(report)
    assert model.loss(x, eps, k=k, beta=beta) == pytest.approx(report.loss, rel=1e-12)


@pytest.mark.textbook
@pytest.mark.parametrize("posterior", npvae.vae.POSTERIORS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_k1_is_todays_elbo_exactly(posterior, dtype):
    model, x, eps = model_and_batch(posterior, 1, n=7, dtype=dtype)
    today = model.loss_and_grads(x, eps[:, 0, :])
    grads = host(today.grads).copy()
    for res in (model.loss_and_grads(x, eps, k=1), model.loss_and_grads(x, eps)):
        assert (res.loss, res.reconstruction, res.kl) == (today.loss, today.reconstruction, today.kl)
        np.testing.assert_array_equal(host(res.grads), grads)
    assert model.loss(x, eps, k=1) == model.loss(x, eps) == model.loss(x, eps[:, 0, :])


@pytest.mark.textbook
@pytest.mark.parametrize("posterior", npvae.vae.POSTERIORS)
def test_the_terms_of_the_bound(posterior):
    # The bound from its definition, with the posterior's and the decoder's public methods.
    model, x, eps = model_and_batch(posterior, 5, n=6)
    res = model.loss_and_grads(x, eps)
    z = host(res.z)
    assert z.shape == (6, 5, Z) and host(res.eps).shape == (6, 5, Z)
    out = host(model.decode(npvae.asarray(z.reshape(-1, Z), "float64"))).reshape(6, 5, D)
    log_p = np.sum(x[:, None, :] * out - np.logaddexp(0.0, out), axis=-1)  # log P(x|z_i), (N, K)
    log_q = host(model.posterior(x).log_prob(npvae.asarray(z, "float64")))  # log Q(z_i|x), (N, K)
    kl = log_q + 0.5 * np.sum(z * z, axis=-1) + 0.5 * Z * np.log(2 * np.pi)  # log Q - log P(z)
    log_w = log_p - kl
    bound = np.log(np.mean(np.exp(log_w), axis=1))  # L_5 per row
    assert res.loss == pytest.approx(-bound.mean(), rel=1e-12)
    assert res.reconstruction == pytest.approx(-log_p.mean(), rel=1e-12)
    assert res.kl == pytest.approx(kl.mean(), rel=1e-10)
    assert res.loss < res.reconstruction + res.kl  # Jensen, row by row: log mean w >= mean log w


def test_k_and_eps_must_agree():
    model, x, eps = model_and_batch("diagonal", 3)
    with pytest.raises(ValueError) as info:
        model.loss_and_grads(x, eps, k=2)
    assert one_line(info) == f"eps: expected shape (N, 2, {Z}), got (4, 3, {Z})"
    with pytest.raises(ValueError, match=r"^eps: expected shape \(N, 3, 3\), got \(4, 3\)$"):
        model.loss(x, eps[:, 0, :], k=3)
    with pytest.raises(ValueError, match=r"^k: expected a positive integer, got 0$"):
        model.loss_and_grads(x, k=0)
    with pytest.raises(ValueError, match=r"^k: expected a positive integer, got 2\.5$"):
        model.loss_and_grads(x, k=2.5)
    res = model.loss_and_grads(x, k=4)  # eps drawn from model.rng, (N, K, Z)
    assert host(res.eps).shape == (4, 4, Z)


# --- L_K grows with K toward log p(x) ---------------------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    """A small float64 VAE trained a few epochs on toy images (seeded), and held-out rows."""
    x, _ = toy_images(n=340, d=36, seed=3)
    model = npvae.VAE(36, (16,), 2, dtype="float64", seed=0)
    with npvae.textbook():
        npvae.fit(model, x[:300], epochs=8, batch_size=30, progress=False)
    return model, x[300:]


@pytest.mark.textbook
def test_the_bound_grows_with_k_toward_log_p_x(trained):
    model, x = trained
    g = np.random.default_rng(0)
    repeats, n = 100, x.shape[0]
    draws = [g.standard_normal((n, 50, 2)) for _ in range(repeats)]
    # L_1, L_5, L_50 of each repeat from the same draws (the first 1, 5, 50): their differences
    # are paired, with a much smaller standard error than the bounds themselves
    bounds = np.array([[-model.loss(x, eps[:, :k, :]) for k in (1, 5, 50)] for eps in draws])  # (repeats, 3)
    rises = np.diff(bounds, axis=1)  # L_5 - L_1, L_50 - L_5
    se = rises.std(axis=0, ddof=1) / np.sqrt(repeats)
    assert np.all(rises.mean(axis=0) > 4 * se), (rises.mean(axis=0), se)  # L_K rises with K
    log_p = npvae.log_marginal_likelihood(model, x, k=5000, seed=0)
    l1, l50 = bounds[:, 0].mean(), bounds[:, 2].mean()
    # toward log p(x), and not past it (L_5000's own error is far smaller than L_50's)
    assert l50 <= log_p + 4 * bounds[:, 2].std(ddof=1) / np.sqrt(repeats), (l50, log_p)
    assert log_p - l50 < 0.5 * (log_p - l1), (l1, l50, log_p)  # most of the ELBO's gap is closed at K = 50


# --- training on it -------------------------------------------------------------------------------
def test_fit_on_the_bound_trains_and_resumes_with_its_k(tmp_path):
    x, _ = toy_images(n=200, d=12, seed=1)
    kw = {"batch_size": 50, "seed": 2, "progress": False}
    straight = npvae.fit(npvae.VAE(12, (8,), 2, seed=0), x, epochs=3, k=3, **kw)
    losses = straight.column("loss")
    assert losses[-1] < losses[0]  # it trains
    assert all(row["loss"] < row["neg_elbo"] for row in straight)  # -L_3 <= the sampled -ELBO, each step
    model = npvae.VAE(12, (8,), 2, seed=0)
    npvae.fit(model, x, epochs=2, k=3, **kw)
    assert model.train_state.settings["k"] == 3
    npvae.save(model, tmp_path / "run.npz")
    model = npvae.load(tmp_path / "run.npz")
    assert model.train_state.settings["k"] == 3
    resumed = npvae.fit(model, x, epochs=3, resume=True, progress=False)  # k from the checkpoint
    assert resumed.column("loss") == losses
    with pytest.raises(ValueError, match=r"^k: the run being resumed was trained with 3 and goes on with it"):
        npvae.fit(model, x, epochs=4, resume=True, k=1, progress=False)
    # k = 1 is today's training, step for step
    plain = npvae.fit(npvae.VAE(12, (8,), 2, seed=0), x, epochs=1, **kw)
    assert npvae.fit(npvae.VAE(12, (8,), 2, seed=0), x, epochs=1, k=1, **kw).column("loss") == plain.column("loss")


@pytest.mark.parametrize("k, message", [(0, "k: expected a positive integer, got 0"),
                                        (2.5, "k: expected a positive integer, got 2.5"),
                                        ("3", "k: expected a positive integer, got '3'")])
def test_fit_refuses_a_bad_k(k, message):
    model = npvae.VAE(12, (8,), 2, seed=0)
    with pytest.raises(ValueError) as info:
        npvae.fit(model, toy_images(n=20, d=12)[0], epochs=1, k=k, progress=False)
    assert one_line(info) == message and model.train_state is None


def test_a_checkpoint_from_before_the_bound_trained_on_the_elbo(tmp_path):
    model = npvae.VAE(12, (8,), 2, seed=0)
    npvae.fit(model, toy_images(n=20, d=12)[0], epochs=1, batch_size=10, progress=False)
    npvae.save(model, tmp_path / "new.npz")
    with np.load(tmp_path / "new.npz") as f:
        arrays = {name: f[name] for name in f.files}
    meta = json.loads(arrays["meta"].item())
    del meta["settings"]["k"]
    with open(tmp_path / "old.npz", "wb") as f:
        np.savez(f, **{**arrays, "meta": np.array(json.dumps(meta))})
    assert npvae.load(tmp_path / "old.npz").train_state.settings["k"] == 1


# --- npvae train --iwae K -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["0", "2.5", "-1", "five"])
def test_cli_refuses_a_bad_iwae(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--iwae", value, "--epochs", "1", *SMALL])
    assert exit_info.value.code == 2
    assert f"argument --iwae: expected a positive integer, got '{value}'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_on_the_bound_and_resume_keeps_k(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--iwae", "2", "--epochs", "1", "--out", str(out), *SMALL]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch "))
    row = npvae.load(out / "checkpoint.npz").train_state.history[0]
    assert f"objective -L_2 {row['loss']:8.2f}" in line
    assert json.loads((out / "run.json").read_text())["settings"]["k"] == 2
    ckpt = str(out / "checkpoint.npz")
    assert cli.main(["train", "--resume", ckpt, "--epochs", "2", "--iwae", "3"]) == 2
    assert one_line(capsys.readouterr().err) == (
        "npvae train: error: --iwae: the run being resumed was trained with 2 and goes on with it (start a new "
        "run to change it), got 3")
    assert cli.main(["train", "--resume", ckpt, "--epochs", "2", "--no-progress"]) == 0
    assert npvae.load(ckpt).train_state.settings["k"] == 2


# --- the memory check counts the K draws of each row -----------------------------------------------
@pytest.mark.parametrize("posterior", ["diagonal", "full"])
def test_the_memory_estimate_covers_a_step_on_the_bound(posterior):
    # Before: memory_estimate counted the batch's rows, but the head and the decoder work on N*K.
    import tracemalloc

    rows, k, sizes = 32, 8, (64, (32,), 4, posterior)
    model = npvae.VAE(*sizes[:3], posterior=posterior, seed=0)
    g = np.random.default_rng(0)
    x = g.uniform(size=(rows, sizes[0])).astype(np.float32)
    eps = g.standard_normal((rows, k, sizes[2])).astype(np.float32)
    model.backward(model.forward(x, eps))  # once before: a first call's one-time allocations are not the step's
    tracemalloc.start()
    try:
        model.backward(model.forward(x, eps))
        measured = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = npvae.vae.memory_estimate(*sizes, rows=rows, k=k)
    assert measured <= estimate.total - 2 * 4 * model.n_params  # params and grads exist before the step
    assert estimate.activations == k * npvae.vae.memory_estimate(*sizes, rows=rows).activations
    assert estimate.activations < 3 * measured  # an estimate, not a wild guess


def test_cli_memory_check_names_iwae_when_k_drives_the_size(tmp_path, capsys, monkeypatch):
    # Before: a batch of 128 fit, so --iwae 100000 went on to allocate 128 * 100000 rows.
    step = npvae.vae.memory_estimate(784, (16,), 2, rows=128)
    test = npvae.vae.memory_estimate(784, (16,), 2, rows=1000, work="evaluate")  # the test set's evaluation
    monkeypatch.setattr(npvae.checks, "memory_bytes", lambda: 4 * max(step.total, test.total))
    status = cli.main(["train", "--dataset", "mnist-subset", "--hidden", "16", "--latent-dim", "2",
                       "--batch-size", "128", "--epochs", "1", "--iwae", "100000", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2 and "error: --iwae: 100000 needs " in one_line(err), err
    assert "128 rows x 100000 draws" in one_line(err), err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())
