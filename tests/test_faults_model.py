"""The model's Python API under faults (issue 16, items 7, 11, 14 and 22): x that is not real
numbers, a bad beta, wrong constructor arguments, and the full posterior's N Z^2 memory (encode
in chunks; one memory estimate that counts activations and names the argument that drives it).
Each test failed on the code before its fix, unless it says it keeps a behaviour."""

import tracemalloc

import numpy as np
import pytest

import npvae
import npvae.checks
import npvae.train
from npvae import cli
from npvae import vae as vae_module
from conftest import host, one_line


def half(n=3, d=6):
    return np.full((n, d), 0.5, dtype=np.float32)


# -- item 7: x that is not real numbers, and beta --------------------------------------------
NOT_REAL = {
    "complex": (np.full((3, 6), 0.5 + 0.1j), "dtype complex128"),
    "object": (np.full((3, 6), 0.5, dtype=object), "dtype object"),
    "datetime": (np.zeros((3, 6), dtype="datetime64[s]"), "dtype datetime64[s]"),
    "timedelta": (np.zeros((3, 6), dtype="timedelta64[s]"), "dtype timedelta64[s]"),
    "strings": (np.full((3, 6), "0.5"), "dtype <U3"),
    "a list of strings": ([["0.5"] * 6] * 3, "dtype <U3 (from a list)"),
    "None": (None, "dtype object (from a NoneType)"),
}


@pytest.mark.parametrize("kind", NOT_REAL)
def test_x_that_is_not_real_numbers_is_refused_naming_the_argument(kind):
    # Before: complex lost its imaginary part with a warning; object, datetimes and strings
    # ("0.5") were turned into numbers without a word.
    x, got = NOT_REAL[kind]
    model = npvae.VAE(6, (4,), 2, seed=0)
    params = host(model.params).copy()
    calls = {"x": [lambda: model.loss_and_grads(x), lambda: model.encode(x), lambda: model.reconstruct(x),
                   lambda: model.posterior(x)],
             "x_train": [lambda: npvae.fit(model, x, epochs=1, progress=False)],
             "x_test": [lambda: npvae.fit(model, half(), x, epochs=1, progress=False)] if x is not None else [],
             "z": [lambda: model.decode(x)]}  # the dtype is looked at before the shape
    for name, uses in calls.items():
        for use in uses:
            with pytest.raises(ValueError) as info:
                use()
            assert one_line(info) == f"{name}: expected real numbers (a float, integer or bool array), got {got}"
    assert model.train_state is None and np.array_equal(host(model.params), params)


def test_an_array_of_the_backend_that_is_not_real_is_refused(be):
    # an array already on the backend (on strict: the array API's complex dtype) is looked at too
    x = be.asarray(np.full((3, 6), 0.5 + 0.5j))
    with pytest.raises(ValueError) as info:
        npvae.VAE(6, (4,), 2).loss_and_grads(x)
    assert one_line(info).startswith("x: expected real numbers (a float, integer or bool array), got dtype ")
    assert "complex128" in one_line(info) and "(from a" not in one_line(info)


def test_a_masked_x_is_refused():
    # Before: a NumPy broadcasting error about shapes, or the masked entries' hidden values used.
    x = np.ma.masked_array(half(), mask=np.eye(3, 6, dtype=bool))
    model = npvae.VAE(6, (4,), 2, seed=0)
    expected = ("expected a plain array, got a numpy.ma.MaskedArray (its masked entries have no values: fill "
                "them, .filled(value), or leave those rows out)")
    for name, use in [("x", lambda: model.loss_and_grads(x)), ("x", lambda: model.encode(x)),
                      ("x_train", lambda: npvae.fit(model, x, epochs=1, progress=False))]:
        with pytest.raises(ValueError) as info:
            use()
        assert one_line(info) == f"{name}: {expected}"


def test_a_ragged_x_is_refused_in_one_line():
    with pytest.raises(ValueError) as info:
        npvae.VAE(6, (4,), 2).encode([[0.5] * 6, [0.5] * 5])
    assert one_line(info).startswith("x: expected an (N, 6) array of numbers, got a list that is not one (")


def test_bool_and_integer_x_are_numbers():
    # Kept: a bool array is 0/1 (a binarized image), as an integer array is its numbers.
    model = npvae.VAE(6, (4,), 2, dtype="float64", seed=0)
    x = np.random.default_rng(0).uniform(size=(5, 6)) > 0.5
    eps = np.random.default_rng(1).standard_normal((5, 2))
    want = model.loss(x.astype(np.float64), eps)
    assert model.loss(x, eps) == want and model.loss(x.astype(np.int64), eps) == want


@pytest.mark.parametrize("beta", [-1.0, float("nan"), float("inf"), "1", True, None])
def test_a_bad_beta_is_refused_as_fit_refuses_it(beta):
    # Before: a negative, NaN or string beta was used (float("1")), inf gave NaN gradients.
    model = npvae.VAE(6, (4,), 2, dtype="float64", seed=0)
    eps = np.zeros((3, 2))
    rng_state = model.rng.host.bit_generator.state
    grads = host(model.grads).copy()
    uses = [lambda: model.loss_and_grads(half(), beta=beta), lambda: model.loss(half(), eps, beta=beta),
            lambda: model.backward(model.forward(half(), eps), beta=beta)]
    if beta is not None:  # fit's None means its default
        uses.append(lambda: npvae.fit(model, half(), epochs=1, beta=beta, progress=False))
    for use in uses:
        with pytest.raises(ValueError) as info:
            use()
        assert one_line(info) == f"beta: expected a non-negative number, got {beta!r}"
    assert model.rng.host.bit_generator.state == rng_state  # no eps was drawn
    assert np.array_equal(host(model.grads), grads)


# -- item 11: the constructor's arguments ------------------------------------------------------
SEED = "seed: expected a non-negative integer (or None for a random one), got "
HIDDEN = "hidden_dims: expected a sequence of positive integers, e.g. (400,) (or () for a linear model), got "


@pytest.mark.parametrize("given, message", [
    ({"seed": 1.5}, SEED + "1.5"), ({"seed": "a"}, SEED + "'a'"), ({"seed": -1}, SEED + "-1"),
    ({"seed": True}, SEED + "True"),
    ({"hidden_dims": None}, HIDDEN + "None"), ({"hidden_dims": 400.0}, HIDDEN + "400.0"),
    ({"hidden_dims": "400"}, HIDDEN + "'400'"), ({"hidden_dims": [[4]]}, HIDDEN + "[[4]]"),
    ({"hidden_dims": {4: 1}}, HIDDEN + "{4: 1}"), ({"hidden_dims": [4, 0]}, "hidden_dims[1]: expected a positive integer, got 0"),
    ({"input_dim": "6"}, "input_dim: expected a positive integer, got '6'"),
    ({"input_dim": 6.0}, "input_dim: expected a positive integer, got 6.0"),
    ({"latent_dim": None}, "latent_dim: expected a positive integer, got None"),
    ({"latent_dim": True}, "latent_dim: expected a positive integer, got True"),
])
def test_wrong_constructor_arguments_are_refused_in_one_line(given, message):
    # Before: seed 1.5 and "a" raised NumPy's TypeError, -1 its "expected non-negative integer"
    # (no name), True was taken as seed 1; hidden_dims None or 400.0 raised "not iterable".
    with pytest.raises(ValueError) as info:
        npvae.VAE(**{"input_dim": 6, "hidden_dims": (4,), "latent_dim": 2, **given})
    assert one_line(info) == message


def test_the_seeds_and_sizes_that_are_fine():
    model = npvae.VAE(np.int64(6), np.int64(4), np.int64(2), seed=np.int64(3))
    assert model.config["seed"] == 3 and model.hidden_dims == (4,) and isinstance(model.input_dim, int)
    assert npvae.VAE(6, range(4, 6), 2, seed=None).config["seed"] is None
    assert npvae.VAE(6, np.array([5, 4]), 2).hidden_dims == (5, 4) and npvae.VAE(6, [], 2).hidden_dims == ()


# -- item 14: the full posterior's memory ------------------------------------------------------
def peak_bytes(use):
    """The most bytes NumPy held at once while ``use()`` ran, beyond what it held before."""
    tracemalloc.start()
    try:
        use()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", ["encode", "reconstruct", "posterior"])
def test_encoding_many_rows_needs_memory_bounded_by_the_chunk(monkeypatch, method):
    # Before: encode built L (N, Z, Z) for all N rows at once, about 2.5 N Z^2 numbers (8.3 GB for
    # Z = 600 on the 2000 test images). Now beyond its result, memory is bounded by one chunk.
    # (posterior's result holds L's N Z(Z-1)/2 entries below the diagonal: it grew no faster before.)
    monkeypatch.setattr(vae_module, "CHUNK_FLOATS", 2**14)
    d, z = 8, 40
    model = npvae.VAE(d, (8,), z, posterior="full", seed=0)
    assert model.chunk_rows == 2**14 // (z * (z - 1) // 2)  # 21 rows at once
    result_floats = {"encode": 2 * z, "reconstruct": d, "posterior": 2 * z + z * (z - 1) // 2}[method]
    g = np.random.default_rng(0)
    small, big = (g.uniform(size=(n, d)).astype(np.float32) for n in (256, 2048))
    run = getattr(model, method)
    per_row = (peak_bytes(lambda: run(big)) - peak_bytes(lambda: run(small))) / (2048 - 256)
    assert per_row < 1.5 * 4 * result_floats  # float32: the result's bytes a row, and a little more


def test_chunked_encoding_gives_the_same_numbers(monkeypatch):
    model = npvae.VAE(8, (8,), 6, posterior="full", dtype="float64", seed=0)
    x = np.random.default_rng(0).uniform(size=(50, 8))
    whole = [host(a) for a in (*model.encode(x), model.reconstruct(x), model.posterior(x).scale_tril)]
    monkeypatch.setattr(vae_module, "CHUNK_FLOATS", 15 * 7)  # 7 rows at once
    assert model.chunk_rows == 7
    chunked = [host(a) for a in (*model.encode(x), model.reconstruct(x), model.posterior(x).scale_tril)]
    for a, b in zip(whole, chunked):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("sizes", [(64, (32,), 4, "diagonal"), (300, (200, 100), 8, "diagonal"),
                                   (16, (16,), 48, "full")])
def test_the_memory_estimate_covers_a_training_step(sizes):
    rows = 128
    model = npvae.VAE(*sizes[:3], posterior=sizes[3], seed=0)
    g = np.random.default_rng(0)
    x = g.uniform(size=(rows, sizes[0])).astype(np.float32)
    eps = g.standard_normal((rows, sizes[2])).astype(np.float32)
    measured = peak_bytes(lambda: model.backward(model.forward(x, eps)))
    estimate = vae_module.memory_estimate(*sizes, rows=rows)
    already = 2 * 4 * model.n_params  # params and grads exist before the step
    assert measured <= estimate.total - already
    assert estimate.activations < 3 * measured  # an estimate, not a wild guess


def test_the_estimate_grows_with_the_argument_it_names():
    full = vae_module.memory_estimate(784, [400], 600, "full", rows=128)
    assert max(full.weights, key=full.weights.get) == "latent_dim"  # Z^2 in the head and in L
    wide = vae_module.memory_estimate(784, [10**6], 20, rows=128)
    assert max(wide.weights, key=wide.weights.get) == "hidden_dims"
    batch = vae_module.memory_estimate(784, [400], 20, rows=60000)
    assert max(batch.weights, key=batch.weights.get) == "rows"
    assert vae_module.memory_estimate(784, [400], 20).activations == 0  # rows=0: the parameters alone


def test_a_huge_full_latent_dim_is_blamed_in_the_api(monkeypatch):
    # Before: "hidden_dims: [16] needs ..." for a model that is big because of its Z^2 head.
    monkeypatch.setattr(npvae.checks, "memory_bytes", lambda: 2**30)
    with pytest.raises(ValueError) as info:
        npvae.VAE(784, (16,), 100_000, posterior="full")
    assert one_line(info).startswith("latent_dim: 100000 needs ") and \
        one_line(info).endswith(" GiB with posterior full, more than this machine's 1.0 GiB of memory")


@pytest.fixture
def no_training(monkeypatch):
    """npvae train must refuse before training starts."""

    def fit(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(npvae.train, "fit", fit)


def test_npvae_train_counts_the_activations(monkeypatch, capsys, tmp_path, no_training):
    # Before: only the parameters were counted (16 bytes each, about 6 MB here); the test set's
    # evaluation, 1000 rows of L (200 x 200) at once, was not.
    monkeypatch.setattr(npvae.checks, "memory_bytes", lambda: 100 * 2**20)
    out = tmp_path / "run"
    argv = ["train", "--posterior", "full", "--latent-dim", "200", "--hidden", "16", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == ("npvae train: error: --latent-dim: 200 needs 0.5 GiB with --posterior full (parameters 0.0 GiB, "
                   "activations of 1000 rows at once 0.5 GiB), more than this machine's 0.1 GiB of memory\n")
    assert not out.exists()


def test_npvae_train_blames_latent_dim_not_hidden(monkeypatch, capsys, tmp_path, no_training):
    # Before: "--hidden: [16] needs 0.0 GiB": the full posterior's Z(Z-1)/2 head and its L are
    # what --latent-dim 600 makes big.
    monkeypatch.setattr(npvae.checks, "memory_bytes", lambda: 40 * 2**20)
    argv = ["train", "--posterior", "full", "--latent-dim", "600", "--hidden", "16", "--out", str(tmp_path / "r")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("npvae train: error: --latent-dim: 600 needs ") and "--hidden" not in err
    # and --hidden when it is the hidden layer
    assert cli.main(["train", "--hidden", "3000000", "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.startswith("npvae train: error: --hidden: [3000000] needs ")
