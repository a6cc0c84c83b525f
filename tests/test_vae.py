"""The whole model: its gradient, its loss against an independent recomputation, the noise
it uses, the flat parameter vector, and its checks of bad input."""

import numpy as np
import pytest

import npvae
from npvae import distributions as dist
from npvae.gradcheck import assert_gradients_match, check_model, numerical_gradient
from conftest import host

N, D, Z = 5, 7, 3


def batch(rng, likelihood, n=N, d=D):
    if likelihood == "bernoulli":
        return rng.uniform(0.0, 1.0, size=(n, d))
    return rng.standard_normal((n, d))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_model_gradient_every_entry_two_hidden_layers(likelihood, activation, rng):
    model = npvae.VAE(D, (6, 4), Z, likelihood=likelihood, activation=activation, dtype="float64", seed=3)
    report = check_model(model, batch(rng, likelihood), rng.standard_normal((N, Z)))
    assert report.sizes == {name: b - a for name, a, b, _ in model.blocks}
    assert report.checked == report.sizes  # every entry of every block
    assert report.max_error < 1e-6, str(report)


@pytest.mark.parametrize("beta", [0.0, 0.3, 4.0])
def test_model_gradient_with_beta(beta, rng):
    model = npvae.VAE(D, (5,), Z, dtype="float64", seed=4)
    report = check_model(model, batch(rng, "bernoulli"), rng.standard_normal((N, Z)), beta=beta)
    assert report.max_error < 1e-6, str(report)


def test_linear_model_gradient(rng):
    model = npvae.VAE(D, (), Z, likelihood="gaussian", dtype="float64", seed=5)
    assert [name for name, *_ in model.blocks] == [
        "theta.mu.W", "theta.mu.b", "theta.logvar.W", "theta.logvar.b", "phi.decoder.0.W", "phi.decoder.0.b"]
    report = check_model(model, batch(rng, "gaussian"), rng.standard_normal((N, Z)))
    assert report.max_error < 1e-6, str(report)


def test_large_model_sampled_check(rng):
    model = npvae.VAE(784, (400,), 20, dtype="float64", seed=0)
    report = check_model(model, rng.uniform(size=(8, 784)), rng.standard_normal((8, 20)), max_entries_per_block=5)
    assert set(report.checked.values()) == {5}
    assert report.max_error < 1e-6, str(report)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_loss_equals_an_independent_recomputation(likelihood, rng):
    model = npvae.VAE(D, (6, 4), Z, likelihood=likelihood, dtype="float64", seed=6)
    x, eps = batch(rng, likelihood), rng.standard_normal((N, Z))
    res = model.loss_and_grads(x, eps=eps)
    # Again, from encode/decode and the formulas written out in NumPy.
    mu, logvar = (host(a) for a in model.encode(x))
    z = mu + np.exp(logvar / 2) * eps
    out = host(model.decode(npvae.asarray(z)))
    if likelihood == "bernoulli":
        p = 1 / (1 + np.exp(-out))
        log_px = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p), axis=1)
    else:
        log_px = np.sum(-0.5 * (x - out) ** 2 - 0.5 * np.log(2 * np.pi), axis=1)
    kl = 0.5 * np.sum(mu**2 + np.exp(logvar) - 1 - logvar, axis=1)
    assert res.reconstruction == pytest.approx(np.mean(-log_px), rel=1e-10)
    assert res.kl == pytest.approx(np.mean(kl), rel=1e-10)
    assert res.loss == pytest.approx(res.reconstruction + res.kl, rel=1e-12)
    assert res.loss == pytest.approx(model.loss(x, eps), rel=1e-12)
    np.testing.assert_allclose(host(res.z), z, rtol=1e-10)
    assert isinstance(res.loss, float)


def test_beta_weights_the_kl(rng):
    model = npvae.VAE(D, (4,), Z, dtype="float64")
    x, eps = batch(rng, "bernoulli"), rng.standard_normal((N, Z))
    res = model.loss_and_grads(x, eps=eps, beta=0.25)
    assert res.loss == pytest.approx(res.reconstruction + 0.25 * res.kl, rel=1e-12)


def test_backward_uses_the_eps_that_forward_drew(rng):
    # eps=None: the model draws eps from its generator. The gradient must be the gradient of
    # the loss *at that eps*: compare with central differences at the returned res.eps.
    model = npvae.VAE(D, (5,), Z, dtype="float64", seed=8)
    x = batch(rng, "bernoulli")
    res = model.loss_and_grads(x)
    eps = host(res.eps)
    assert eps.shape == (N, Z)
    drawn = host(res.grads).copy()
    numeric = numerical_gradient(lambda: model.loss(x, eps), model.params)
    assert_gradients_match(drawn, numeric)
    # And passing that eps back in reproduces the loss and the gradient exactly.
    again = model.loss_and_grads(x, eps=eps)
    assert again.loss == res.loss
    np.testing.assert_array_equal(host(again.grads), drawn)


class RedrawsEps(npvae.VAE):
    """The second published bug: when the model draws the noise itself, the backward pass
    draws its own, different eps (given an eps, it uses that one in both)."""

    def loss_and_grads(self, x, eps=None, beta=1.0):
        if eps is not None:
            return super().loss_and_grads(x, eps, beta)
        res = super().loss_and_grads(x, None, beta)  # the loss and eps reported: eps_1 ...
        super().loss_and_grads(x, None, beta)  # ... the gradient left behind: eps_2
        return res


def test_the_same_eps_check_catches_a_backward_with_its_own_eps(rng):
    model = RedrawsEps(D, (5,), Z, dtype="float64", seed=8)
    x = batch(rng, "bernoulli")
    res = model.loss_and_grads(x)
    eps, analytic = host(res.eps), host(res.grads).copy()
    numeric = numerical_gradient(lambda: model.loss(x, eps), model.params)
    with pytest.raises(AssertionError, match="relative error"):
        assert_gradients_match(analytic, numeric)
    # A plain gradient check with a fixed eps cannot see this bug: with eps given, both draws
    # are the same and the check passes.
    assert check_model(model, x, eps).max_error < 1e-6


def test_noise_comes_from_the_model_generator():
    x = np.full((4, D), 0.5)
    a = npvae.VAE(D, (5,), Z, seed=1).loss_and_grads(x)
    b = npvae.VAE(D, (5,), Z, seed=1).loss_and_grads(x)
    np.testing.assert_array_equal(host(a.eps), host(b.eps))
    model = npvae.VAE(D, (5,), Z, seed=1)
    first, second = host(model.loss_and_grads(x).eps), host(model.loss_and_grads(x).eps)
    assert not np.array_equal(first, second)


def test_flat_vector_layout_and_views(be, rng):
    model = npvae.VAE(D, (6, 4), Z, dtype="float64", seed=2)
    blocks = model.blocks
    assert blocks[0][1] == 0 and blocks[-1][2] == model.n_params
    assert all(b1[2] == b2[1] for b1, b2 in zip(blocks, blocks[1:]))  # contiguous, no gaps
    names = [name for name, *_ in blocks]
    n_theta = sum(1 for n in names if n.startswith("theta."))
    assert all(n.startswith("theta.") for n in names[:n_theta])  # theta first ...
    assert all(n.startswith("phi.") for n in names[n_theta:])  # ... then phi
    assert model.params.ndim == 1 and tuple(model.grads.shape) == tuple(model.params.shape)
    assert model.theta.shape[0] + model.phi.shape[0] == model.n_params
    x = batch(rng, "bernoulli")
    mu_before = host(model.encode(x)[0])
    # Writing into the flat vector changes the model: the layers hold views.
    model.params[...] = 0.5 * model.params
    assert not np.allclose(host(model.encode(x)[0]), mu_before)
    model.theta[...] = 0.0
    np.testing.assert_array_equal(host(model.encode(x)[0]), 0.0)  # all encoder weights zero
    assert float(be.xp.max(be.xp.abs(model.phi))) > 0  # phi untouched
    model.phi[...] = 0.0
    np.testing.assert_array_equal(host(model.params), 0.0)
    # The gradient lands in the same layout.
    res = model.loss_and_grads(x, eps=rng.standard_normal((N, Z)))
    assert res.grads is model.grads
    name, a, b, shape = blocks[-1]  # the decoder's output bias: d loss / d b = -mean(x - sigma(0))
    np.testing.assert_allclose(host(model.grads)[a:b], -np.mean(x - 0.5, axis=0), rtol=1e-12)


def test_float32_stays_float32(be, rng):
    model = npvae.VAE(D, (5,), Z)
    res = model.loss_and_grads(batch(rng, "bernoulli"))  # a float64 NumPy input
    for a in (model.params, res.grads, res.z, res.eps, model.sample(3), model.reconstruct(batch(rng, "bernoulli"))):
        assert a.dtype == be.xp.float32


def test_sample_and_reconstruct(be, rng):
    model = npvae.VAE(D, (5,), Z, seed=0)
    samples = model.sample(6)
    assert tuple(samples.shape) == (6, D) and be.owns(samples)
    s = host(samples)
    assert (s >= 0).all() and (s <= 1).all()  # Bernoulli means
    np.testing.assert_array_equal(host(model.sample(6, rng=npvae.Generator(4))), host(model.sample(6, rng=npvae.Generator(4))))
    x = batch(rng, "bernoulli")
    mu, _ = model.encode(x)
    np.testing.assert_allclose(host(model.reconstruct(x)), host(dist.sigmoid(model.decode(mu))), rtol=1e-6)
    gauss = npvae.VAE(D, (5,), Z, likelihood="gaussian")
    xg = batch(rng, "gaussian")
    np.testing.assert_allclose(host(gauss.reconstruct(xg)), host(gauss.decode(gauss.encode(xg)[0])), rtol=1e-6)


def test_repr_and_config():
    model = npvae.VAE(784, (400,), 20)
    assert model.config == {"input_dim": 784, "hidden_dims": [400], "latent_dim": 20, "likelihood": "bernoulli",
                            "activation": "relu", "dtype": "float32", "seed": 0, "posterior": "diagonal"}
    # 784*400+400 + 2*(400*20+20) | 20*400+400 + 400*784+784
    assert model.n_theta == 330_040 and model.n_params == 330_040 + 322_784
    assert "652824 parameters" in repr(model)


# --- bad input: ValueError naming the argument, the expected and the actual value ----------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"likelihood": "poisson"}, r"likelihood: expected one of \('bernoulli', 'gaussian'\), got 'poisson'"),
        ({"activation": "gelu"}, r"activation: expected one of \('relu', 'tanh', 'sigmoid'\), got 'gelu'"),
        ({"dtype": "float16"}, r"dtype: expected one of \('float32', 'float64'\), got 'float16'"),
        ({"latent_dim": 0}, r"latent_dim: expected a positive integer, got 0"),
        ({"hidden_dims": (4, -1)}, r"hidden_dims\[1\]: expected a positive integer, got -1"),
        ({"input_dim": 2.5}, r"input_dim: expected a positive integer, got 2.5"),
    ],
)
def test_bad_configuration(kwargs, message):
    args = {"input_dim": D, "hidden_dims": (4,), "latent_dim": Z, **kwargs}
    with pytest.raises(ValueError, match=message):
        npvae.VAE(**args)


@pytest.mark.parametrize(
    "x, message",
    [
        (np.zeros(D), r"x: expected shape \(N, 7\), got \(7,\)"),
        (np.zeros((2, 3, D)), r"x: expected shape \(N, 7\), got \(2, 3, 7\)"),
        (np.zeros((2, D + 1)), r"x: expected shape \(N, 7\), got \(2, 8\)"),
        (np.array([[0.5] * (D - 1) + [np.nan]]), r"x: expected finite values, got NaN or inf"),
        (np.array([[0.5] * (D - 1) + [np.inf]]), r"x: expected finite values, got NaN or inf"),
        (np.array([[0.5] * (D - 1) + [1.5]]), r"x: expected values in \[0, 1\] for likelihood='bernoulli', got min 0.5, max 1.5"),
        (np.array([[0.5] * (D - 1) + [-0.25]]), r"x: expected values in \[0, 1\] .* got min -0.25, max 0.5"),
    ],
)
def test_bad_x(x, message):
    model = npvae.VAE(D, (4,), Z)
    for call in (model.encode, model.loss_and_grads, model.reconstruct):
        with pytest.raises(ValueError, match=message):
            call(x)


def test_gaussian_accepts_any_real_x_but_not_nan(rng):
    model = npvae.VAE(D, (4,), Z, likelihood="gaussian")
    model.loss_and_grads(10 * rng.standard_normal((2, D)))
    with pytest.raises(ValueError, match="x: expected finite values"):
        model.loss_and_grads(np.full((2, D), np.nan))


@pytest.mark.parametrize("eps_shape", [(N, Z + 1), (N + 1, Z), (N * Z,)])
def test_bad_eps(eps_shape, rng):
    model = npvae.VAE(D, (4,), Z)
    with pytest.raises(ValueError, match=r"eps: expected shape \(5, 3\)|eps: expected shape \(N, 3\)"):
        model.loss_and_grads(batch(rng, "bernoulli"), eps=np.zeros(eps_shape))


def test_bad_z_and_n():
    model = npvae.VAE(D, (4,), Z)
    with pytest.raises(ValueError, match=r"z: expected shape \(N, 3\), got \(2, 4\)"):
        model.decode(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"n: expected a positive integer, got 0"):
        model.sample(0)


def test_a_model_used_after_set_backend_switched_says_so(use_backend, be):
    model = npvae.VAE(6, (4,), 2)
    use_backend("numpy" if be.name != "numpy" else "strict")
    expected = rf"model: built on the '{be.name}' backend, but the active backend is now"
    for use in (lambda: model.loss_and_grads(np.zeros((3, 6))), lambda: model.sample(3),
                lambda: npvae.fit(model, np.zeros((3, 6)), epochs=1, progress=False)):
        with pytest.raises(ValueError, match=expected):
            use()


@pytest.mark.parametrize("config", [(784, (400,), 20), (12, (8, 6), 3), (5, (), 2)])
def test_parameter_count_from_the_sizes_alone(config):
    from npvae.vae import parameter_count

    assert parameter_count(*config) == npvae.VAE(*config).n_params


def test_a_model_too_large_for_memory_is_refused_before_allocating():
    with pytest.raises(ValueError, match=r"hidden_dims: \[10000000000\] needs .* GiB, more than this machine's"):
        npvae.VAE(784, (10**10,), 2)
    with pytest.raises(ValueError, match=r"input_dim: 1000000000000000 needs"):
        npvae.VAE(10**15, (), 2)


def test_a_loss_of_no_rows_is_refused():
    # Before: loss_and_grads raised ZeroDivisionError and loss returned nan.
    model = npvae.VAE(6, (4,), 2)
    for use in (lambda: model.loss_and_grads(np.zeros((0, 6))), lambda: model.loss(np.zeros((0, 6)), np.zeros((0, 2)))):
        with pytest.raises(ValueError, match=r"x: expected at least one row \(the loss is a mean over the batch\), got 0"):
            use()
