"""The scale-relative full posterior (Step 12): L = U diag(exp(s)), U unit lower-triangular, the
default of posterior="full". Its map (s, u) -> L's absolute entries and its backward against
central differences (float64, on the active backend: numpy and strict), its KL against the
closed form, the whole model's gradient, its zero-initialized start at a diagonal model, and
checkpoints of npvae before Step 12, whose "full" is the absolute "full-absolute"."""

import json
import os

import numpy as np
import pytest

import npvae
from npvae import cli
from npvae import distributions as dist
from npvae.gradcheck import assert_gradients_match, check_model, numerical_gradient
from npvae.vae import DiagonalGaussian, GaussianPosterior, RelativeGaussianPosterior
from conftest import host, joined, on_backend, weighted_sum

D, Z = 7, 3


def relative(n, z, rng):
    """mu, s, u (host): s in [-2, 1], u of order one."""
    return (rng.normal(size=(n, z)), rng.uniform(-2.0, 1.0, (n, z)), rng.normal(size=(n, dist.lower_size(z))))


def test_relative_lower_is_u_times_the_width_of_its_column():
    s, u = on_backend([[np.log(2.0), np.log(3.0), np.log(5.0)]], [[1.0, 2.0, 3.0]])
    np.testing.assert_allclose(host(dist.relative_lower(s, u)), [[2.0, 4.0, 9.0]], rtol=1e-15)  # u_10 s0, u_20 s0, u_21 s1
    L = host(dist.scale_tril(s, dist.relative_lower(s, u)))[0]
    U = np.array([[1, 0, 0], [1, 1, 0], [2, 3, 1]])
    np.testing.assert_allclose(L, U @ np.diag([2.0, 3.0, 5.0]), rtol=1e-15)  # L = U diag(sigma)


@pytest.mark.parametrize("z", [1, 2, 4])
def test_relative_lower_backward_matches_central_differences(rng, z):
    _, s_h, u_h = relative(3, z, rng)
    s, u = on_backend(s_h, u_h)
    w = on_backend(rng.normal(size=u_h.shape))[0]  # the upstream gradient dlower

    def f():
        return weighted_sum(dist.relative_lower(s, u), w)

    ds, du = dist.relative_lower_backward(w, s, u)
    assert_gradients_match(joined(ds, du), joined(numerical_gradient(f, s), numerical_gradient(f, u)), rtol=1e-7)


def test_the_relative_posteriors_backward_passes_match_central_differences(rng):
    mu_h, s_h, u_h = relative(4, 4, rng)
    mu, s, u = on_backend(mu_h, s_h, u_h)
    eps, wz, wkl = on_backend(rng.normal(size=(4, 4)), rng.normal(size=(4, 4)), rng.normal(size=4))

    def q():
        return RelativeGaussianPosterior(mu, s, u)

    for name, f, analytic in [
        ("rsample", lambda: weighted_sum(q().rsample(eps), wz), q().rsample_backward(wz, eps)),
        ("kl", lambda: weighted_sum(q().kl(), wkl), q().kl_backward(wkl)),
    ]:
        numeric = [numerical_gradient(f, a) for a in (mu, s, u)]
        assert_gradients_match(joined(*analytic), joined(*numeric), rtol=1e-7, name=name)


def test_the_kl_is_the_closed_form_in_s_and_u(rng):
    mu_h, s_h, u_h = relative(5, 4, rng)
    kl = host(RelativeGaussianPosterior(*on_backend(mu_h, s_h, u_h)).kl())
    # 1/2 sum_j (e^{2 s_j} (1 + sum_{i>j} u_ij^2) - 1 - 2 s_j) + 1/2 |mu|^2
    cols = [j for i in range(4) for j in range(i)]
    col_sq = np.stack([np.sum(u_h[:, [k for k, c in enumerate(cols) if c == j]] ** 2, axis=1) for j in range(4)], 1)
    closed = 0.5 * np.sum(np.exp(2 * s_h) * (1 + col_sq) - 1 - 2 * s_h, axis=1) + 0.5 * np.sum(mu_h**2, axis=1)
    np.testing.assert_allclose(kl, closed, rtol=1e-12)
    # and against the trace / log-det form on L L^T
    L = host(RelativeGaussianPosterior(*on_backend(mu_h, s_h, u_h)).scale_tril)
    sigma = L @ np.swapaxes(L, -1, -2)
    general = 0.5 * (np.trace(sigma, axis1=1, axis2=2) + np.sum(mu_h**2, 1) - 4 - np.linalg.slogdet(sigma)[1])
    np.testing.assert_allclose(kl, general, rtol=1e-10)


@pytest.mark.parametrize("likelihood, activation", [("bernoulli", "tanh"), ("gaussian", "relu")])
def test_gradient_check_of_the_whole_relative_vae(rng, likelihood, activation):
    model = npvae.VAE(D, (6,), Z, likelihood=likelihood, activation=activation, dtype="float64", seed=4,
                      posterior="full")
    names = [b.name for b in model.blocks]
    assert "theta.unit_lower.W" in names and "theta.lower.W" not in names
    model.params[...] = npvae.asarray(rng.normal(0, 0.3, model.n_params), "float64")  # u head away from 0
    x = rng.uniform(size=(5, D)) if likelihood == "bernoulli" else rng.standard_normal((5, D))
    report = check_model(model, x, rng.standard_normal((5, Z)))
    assert report.passed(1e-6), str(report)


def test_full_starts_exactly_at_a_diagonal_model(rng):
    full = npvae.VAE(D, (6,), Z, dtype="float64", seed=2, posterior="full")
    absolute = npvae.VAE(D, (6,), Z, dtype="float64", seed=2, posterior="full-absolute")
    for b, a in zip(full.blocks, absolute.blocks):  # the same layout and draws, but the off-diagonal head
        got, other = host(full.params[b.start:b.stop]), host(absolute.params[a.start:a.stop])
        if b.name.startswith("theta.unit_lower"):
            assert not np.any(got) and np.any(other), b.name
        else:
            np.testing.assert_array_equal(got, other, err_msg=b.name)
    x, eps = rng.uniform(size=(5, D)), rng.standard_normal((5, Z))
    q = full.posterior(x)
    diag = DiagonalGaussian(q.mu, 2.0 * q.log_diag)
    np.testing.assert_array_equal(host(q.kl()), host(diag.kl()))
    eps_b = on_backend(eps)[0]
    np.testing.assert_allclose(host(q.rsample(eps_b)), host(diag.rsample(eps_b)), rtol=1e-15, atol=1e-15)


def test_the_cli_offers_every_posterior(capsys):
    assert npvae.vae.POSTERIORS == ("diagonal", "full", "full-absolute")
    with pytest.raises(SystemExit):
        cli.main(["train", "--posterior", "nope"])
    assert "full-absolute" in capsys.readouterr().err


# --- checkpoints written before Step 12 ---------------------------------------------------
def as_version_2(path, out):
    """The checkpoint at ``path`` as npvae before Step 12 wrote it: version 2, and its absolute
    full posterior called "full"."""
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    assert meta["version"] == 3 and meta["config"]["posterior"] == "full-absolute"
    meta["version"], meta["config"]["posterior"] = 2, "full"
    np.savez(out, **{**arrays, "meta": np.array(json.dumps(meta))})


def test_an_old_full_checkpoint_loads_as_the_same_absolute_model(rng, tmp_path):
    model = npvae.VAE(D, (6,), Z, dtype="float64", seed=5, posterior="full-absolute")
    npvae.fit(model, rng.uniform(size=(40, D)), epochs=2, batch_size=20, seed=1, progress=False)
    npvae.save(model, tmp_path / "new.npz")
    as_version_2(tmp_path / "new.npz", tmp_path / "old.npz")
    loaded = npvae.load(tmp_path / "old.npz")
    assert loaded.posterior_kind == "full-absolute" and loaded.train_state.epoch == 2
    x, eps = rng.uniform(size=(6, D)), rng.standard_normal((6, Z))
    assert loaded.loss(x, eps) == model.loss(x, eps)
    npvae.save(loaded, tmp_path / "again.npz")  # written again: version 3, "full-absolute"
    assert npvae.load(tmp_path / "again.npz").loss(x, eps) == model.loss(x, eps)


def test_a_checkpoint_written_by_npvae_before_step_12_keeps_its_loss():
    # tests/data/full_v2.npz: VAE(6, (4,), 3, dtype="float64", seed=7, posterior="full") fit for 2 epochs
    # and saved by npvae at 4645880 (before Step 12); its loss on this x and eps was 4.764762234928505.
    path = os.path.join(os.path.dirname(__file__), "data", "full_v2.npz")
    model = npvae.load(path)
    assert model.posterior_kind == "full-absolute"
    rng = np.random.default_rng(19)
    x, eps = rng.uniform(0, 1, (5, 6)), rng.standard_normal((5, 3))
    assert model.loss(x, eps) == pytest.approx(4.764762234928505, rel=1e-12)


def test_a_new_full_checkpoint_loads_as_the_relative_model(rng, tmp_path):
    model = npvae.VAE(D, (6,), Z, dtype="float64", seed=5, posterior="full")
    model.params[...] = npvae.asarray(rng.normal(0, 0.3, model.n_params), "float64")
    npvae.save(model, tmp_path / "m.npz")
    loaded = npvae.load(tmp_path / "m.npz")
    x, eps = rng.uniform(size=(6, D)), rng.standard_normal((6, Z))
    assert loaded.posterior_kind == "full" and loaded.loss(x, eps) == model.loss(x, eps)


def test_the_u_head_is_a_tenth_of_its_dense_layer(rng):
    # u = 0.1 (h @ W + b): the u head's learning rate under Adam / 10 (RESULTS.md, Step 12)
    model = npvae.VAE(input_dim=6, hidden_dims=(5,), latent_dim=3, posterior="full", dtype="float64")
    head = model.head.layers["unit_lower"]
    head.W[...] = npvae.asarray(rng.standard_normal((5, 3)), "float64")
    head.b[...] = npvae.asarray(rng.standard_normal(3), "float64")
    h = npvae.asarray(rng.standard_normal((4, 5)), "float64")
    q, _ = model.head.forward(h)
    expected = 0.1 * (host(h) @ host(head.W) + host(head.b))
    np.testing.assert_allclose(host(q.unit_lower), expected, rtol=1e-12)
