"""Checkpoints: round trip, atomic writes, and clear refusals of bad files."""

import copy
import json
import os
import pickle
import re
import tracemalloc
import zipfile

import numpy as np
import pytest

import npvae
from npvae import checkpoint
from conftest import host, toy_images


@pytest.fixture
def trained(tmp_path):
    x, _ = toy_images(n=100, d=16, seed=3)
    model = npvae.VAE(16, (8,), 2, seed=4)
    npvae.fit(model, x, epochs=2, batch_size=25, optimizer="adagrad", lr=0.05, progress=False)
    path = tmp_path / "model.npz"
    npvae.save(model, path)
    return model, path, x


def test_round_trip(trained):
    model, path, x = trained
    back = npvae.load(path)
    assert back.config == model.config
    np.testing.assert_array_equal(host(back.params), host(model.params))
    np.testing.assert_array_equal(host(back.sample(5)), host(model.sample(5)))  # the generator's state too
    state, saved = back.train_state, model.train_state
    assert (state.epoch, state.step) == (2, 8)
    assert list(state.history) == list(saved.history)
    assert state.settings == saved.settings and state.settings["optimizer"] == "adagrad"
    assert repr(state.optimizer) == repr(saved.optimizer)
    np.testing.assert_array_equal(host(state.optimizer.sum_sq), host(saved.optimizer.sum_sq))


def test_model_without_training_state(tmp_path):
    model = npvae.VAE(6, (), 2, likelihood="gaussian", dtype="float64", seed=1)
    npvae.save(model, tmp_path / "fresh.npz")
    back = npvae.load(tmp_path / "fresh.npz")
    assert back.train_state is None and back.dtype == "float64" and back.hidden_dims == ()
    np.testing.assert_array_equal(host(back.params), host(model.params))


def test_the_file_is_plain_arrays_and_json(trained):
    _, path, _ = trained
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"meta", "params", "opt.sum_sq"}
        meta = json.loads(str(archive["meta"]))
    assert meta["format"] == "npvae-checkpoint" and meta["version"] == 3
    assert meta["config"]["hidden_dims"] == [8] and meta["epoch"] == 2


def test_an_interrupted_save_keeps_the_previous_checkpoint(trained, monkeypatch):
    model, path, _ = trained
    before = path.read_bytes()
    model.params[...] = 0.0

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip file")
        raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of the write

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        npvae.save(model, path)
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # no temporary file left behind


def test_a_file_with_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array(json.dumps({"format": "npvae-checkpoint", "version": 1})),
             params=np.array([{"__reduce__": "os.system"}], dtype=object))
    with pytest.raises(checkpoint.CheckpointError, match="holds pickled Python objects; refused"):
        npvae.load(path)


def test_truncated_file(trained, tmp_path):
    _, path, _ = trained
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match=r"cut.npz: truncated or corrupt"):
        npvae.load(cut)


def test_garbage_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(checkpoint.CheckpointError, match="junk.npz: "):
        npvae.load(junk)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"not an npvae checkpoint \(expected arrays 'meta' and 'params', found \['weights'\]\)"):
        npvae.load(foreign)
    other_format = tmp_path / "other.npz"
    np.savez(other_format, meta=np.array(json.dumps({"format": "keras"})), params=np.zeros(3))
    with pytest.raises(checkpoint.CheckpointError, match=r"not an npvae checkpoint \(format 'keras'\)"):
        npvae.load(other_format)
    with pytest.raises(FileNotFoundError, match="nowhere.npz: no such checkpoint file"):
        npvae.load(tmp_path / "nowhere.npz")


def test_future_version_and_wrong_sizes(trained, tmp_path):
    _, path, _ = trained
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays["meta"]))
    meta["version"] = 99
    np.savez(tmp_path / "v99.npz", **{**arrays, "meta": np.array(json.dumps(meta))})
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"format version 99; this npvae reads versions 2 and 3 \(written by a newer npvae\?\)"):
        npvae.load(tmp_path / "v99.npz")
    np.savez(tmp_path / "short.npz", **{**arrays, "params": arrays["params"][:-1]})
    with pytest.raises(checkpoint.CheckpointError, match=r"params: expected shape \(\d+,\) for the saved config"):
        npvae.load(tmp_path / "short.npz")


# --- Refusing malformed and hostile checkpoints (every file crafted here with np.savez) -------
# The base: a tiny model (6 -> 4 -> 2, 90 parameters) trained two epochs with Adam, its
# settings carrying the data set's name as a version-2 file does.
N_PARAMS = 90


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    x, _ = toy_images(n=20, d=6, seed=5)
    model = npvae.VAE(6, (4,), 2, seed=1)
    npvae.fit(model, x, epochs=2, batch_size=10, optimizer="adam", lr=0.01, progress=False)
    model.train_state.settings["dataset"] = "toy"
    path = tmp_path_factory.mktemp("base") / "base.npz"
    npvae.save(model, path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert model.n_params == N_PARAMS and sorted(arrays) == ["opt.m", "opt.v", "params"]
    return meta, arrays


def write(path, meta, arrays):
    """A checkpoint-like file: ``meta`` dumped to JSON unless ``arrays`` brings its own."""
    arrays = dict(arrays)
    if "meta" not in arrays:
        arrays["meta"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)
    return path


def craft(base, tmp_path, change, name="crafted.npz"):
    meta, arrays = copy.deepcopy(base[0]), {k: v.copy() for k, v in base[1].items()}
    meta = change(meta, arrays) or meta
    return write(tmp_path / name, meta, arrays)


def refused(path, pattern):
    """load(path) raises one line of CheckpointError naming the file and matching pattern."""
    with pytest.raises(checkpoint.CheckpointError) as info:
        npvae.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 400, message
    assert "Traceback" not in message
    assert re.search(pattern, message), message
    return message


def _walk(meta, dotted):
    *parents, last = dotted.split(".")
    node = meta
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, (int(last) if isinstance(node, list) else last)


def put(dotted, value):
    def change(meta, arrays):
        node, key = _walk(meta, dotted)
        node[key] = value
    return change


def drop(dotted):
    def change(meta, arrays):
        node, key = _walk(meta, dotted)
        del node[key]
    return change


def whole(value):
    return lambda meta, arrays: arrays.__setitem__("meta", np.array(json.dumps(value)))


def raw(text):
    return lambda meta, arrays: arrays.__setitem__("meta", np.array(text))


def array(name, make):
    """Replace (make(old) -> new) or remove (make None) the array ``name``."""
    def change(meta, arrays):
        if make is None:
            del arrays[name]
        else:
            arrays[name] = make(arrays.get(name))
    return change


def entry(name, index, value):
    def change(meta, arrays):
        arrays[name][index] = value
    return change


def swap_history_rows(meta, arrays):
    meta["history"].reverse()


def shorten_history(meta, arrays):
    meta["history"].pop()


def extra_block(meta, arrays):
    meta["blocks"].append(["phi.decoder.2.b", 90, 91, [1]])


PCG = "the state of a NumPy PCG64 generator"
META_CASES = [
    # what meta is
    ("meta-list", whole([1, 2]), r"meta: expected a JSON object, got \[1, 2\]$"),
    ("meta-number", whole(3.5), r"meta: expected a JSON object, got 3\.5$"),
    ("meta-nested-100000-deep", raw("[" * 100_000 + "]" * 100_000), r"meta: not valid JSON \(nested too deeply\)$"),
    ("meta-not-json", raw("{'format': 1"), r"meta: not valid JSON \("),
    ("meta-not-a-string", array("meta", lambda _: np.zeros(3)),
     r"meta: expected a JSON string, got an array of shape \(3,\)"),
    ("no-format", drop("format"), r"not an npvae checkpoint \(format None\)$"),
    ("version-string", put("version", "2"), r"checkpoint format version '2'; this npvae reads versions 2 and 3$"),
    ("version-bool", put("version", True), r"checkpoint format version True; this npvae reads versions 2 and 3$"),
    ("version-1", put("version", 1), r"checkpoint format version 1; this npvae reads versions 2 and 3$"),
    ("version-4", put("version", 4),
     r"checkpoint format version 4; this npvae reads versions 2 and 3 \(written by a newer"),
    ("no-config", drop("config"), r"meta: missing key 'config'$"),
    ("no-model-rng", drop("model_rng"), r"meta: missing key 'model_rng'$"),
    ("no-step", drop("step"), r"meta: missing key 'step'$"),
    ("unknown-key", put("comment", "hi"), r"meta: unexpected key 'comment'$"),
    # config
    ("config-null", put("config", None), r"config: expected a JSON object, got None$"),
    ("config-list", put("config", [6, [4], 2]), r"config: expected a JSON object, got \[6, \[4\], 2\]$"),
    ("config-unknown-key", put("config.depth", 3), r"config: unexpected key 'depth'$"),
    ("config-missing-key", drop("config.dtype"), r"config: missing key 'dtype'$"),
    ("config-without-posterior", drop("config.posterior"), r"config: missing key 'posterior'$"),
    # (the sizes are checked where they are used: parameter_count, then VAE(**config))
    ("hidden-dims-null", put("config.hidden_dims", None),
     r"config: hidden_dims: expected a sequence of positive integers, e\.g\. \(400,\) \(or \(\) for a linear "
     r"model\), got None$"),
    ("hidden-dims-zero", put("config.hidden_dims", [0]), r"config: hidden_dims\[0\]: expected a positive integer, got 0$"),
    ("hidden-dims-float", put("config.hidden_dims", [4.0]),
     r"config: hidden_dims\[0\]: expected a positive integer, got 4\.0$"),
    ("hidden-dims-object", put("config.hidden_dims", {"a": 4}),
     r"config: hidden_dims: expected a sequence of positive integers, .*got \{'a': 4\}$"),
    ("input-dim-zero", put("config.input_dim", 0), r"config: input_dim: expected a positive integer, got 0$"),
    ("input-dim-bool", put("config.input_dim", True), r"config: input_dim: expected a positive integer, got True$"),
    ("latent-dim-string", put("config.latent_dim", "2"), r"config: latent_dim: expected a positive integer, got '2'$"),
    # (from here on VAE(**config) refuses, before it allocates anything)
    ("likelihood", put("config.likelihood", "poisson"),
     r"config: likelihood: expected one of \('bernoulli', 'gaussian'\), got 'poisson'$"),
    ("activation", put("config.activation", None),
     r"config: activation: expected one of \('relu', 'tanh', 'sigmoid'\), got None$"),
    ("posterior", put("config.posterior", "tied"), r"config: posterior: expected one of \('diagonal', 'full', 'full-absolute'\), got 'tied'$"),
    ("dtype", put("config.dtype", "float16"), r"config\.dtype: expected one of float32, float64, got 'float16'$"),
    ("seed-float", put("config.seed", 1.5), r"config: seed: expected a non-negative integer \(or None .*\), got 1\.5$"),
    ("seed-string", put("config.seed", "abc"), r"config: seed: expected a non-negative integer \(or None .*\), got 'abc'$"),
    ("seed-negative", put("config.seed", -1), r"config: seed: expected a non-negative integer \(or None .*\), got -1$"),
    # sizes that disagree with params (before anything is allocated: see the test below)
    ("hidden-dims-300000", put("config.hidden_dims", [300000]),
     r"params: expected shape \(6000010,\) for the saved config, got \(90,\)$"),
    ("input-dim-1e15", put("config.input_dim", 10**15),
     r"params: expected shape \(\d+,\) for the saved config, got \(90,\)$"),
    # blocks
    ("blocks-null", put("blocks", None), r"blocks: expected a list of \[name, start, stop, shape\], got None$"),
    ("blocks-gap", put("blocks.1.1", 25),
     r"blocks: do not match the layout of the config: block 1 is \['theta\.encoder\.0\.b', 25, 28, \[4\]\]"),
    ("blocks-wrong-size", put("blocks.0.3", [6, 5]),
     r"blocks: do not match the layout of the config: block 0 is \['theta\.encoder\.0\.W', 0, 24, \[6, 5\]\]"),
    ("blocks-transposed", put("blocks.0.3", [4, 6]),
     r"blocks: do not match the layout of the config: block 0 is \['theta\.encoder\.0\.W', 0, 24, \[4, 6\]\], "
     r"expected \['theta\.encoder\.0\.W', 0, 24, \[6, 4\]\]$"),
    ("blocks-renamed", put("blocks.3.0", "theta.sigma.b"),
     r"blocks: do not match the layout of the config: block 3 is \['theta\.sigma\.b'"),
    ("blocks-one-more", extra_block, r"blocks: do not match the layout of the config: block 10 is \['phi\.decoder\.2\.b', 90, 91, \[1\]\], "
     r"expected None$"),
    # random generators
    ("model-rng-empty", put("model_rng", {}), rf"model_rng: expected {PCG}, got {{}}$"),
    ("model-rng-mt19937", put("model_rng.bit_generator", "MT19937"), rf"model_rng: expected {PCG}"),
    ("model-rng-state-too-big", put("model_rng.state.state", 2**200), rf"model_rng: expected {PCG}"),
    ("model-rng-uinteger-float", put("model_rng.uinteger", 1.5), rf"model_rng: expected {PCG}"),
    ("model-rng-missing-inc", drop("model_rng.state.inc"), rf"model_rng: expected {PCG}"),
    ("data-rng-list", put("data_rng", [1, 2]), rf"data_rng: expected {PCG}, got \[1, 2\]$"),
    ("noise-rng-negative", put("noise_rng.state.inc", -1), rf"noise_rng: expected {PCG}"),
    # progress
    ("epoch-null", put("epoch", None), r"epoch: expected a non-negative integer, got None$"),
    ("epoch-negative", put("epoch", -5), r"epoch: expected a non-negative integer, got -5$"),
    ("epoch-float", put("epoch", 2.0), r"epoch: expected a non-negative integer, got 2\.0$"),
    ("step-negative", put("step", -1), r"step: expected a non-negative integer, got -1$"),
    ("history-string", put("history", "lots"), r"history: expected a list of 2 rows, got 'lots'$"),
    ("history-too-short", shorten_history, r"history: expected 2 rows \(one per epoch\), got 1$"),
    ("history-row-list", put("history.0", [1, 2.5]), r"history\[0\]: expected a JSON object, got \[1, 2\.5\]$"),
    ("history-missing-column", drop("history.0.kl"), r"history\[0\]: missing key 'kl'$"),
    ("history-without-lr", drop("history.1.lr"), r"history\[1\]: missing key 'lr'$"),
    ("history-without-neg-elbo", drop("history.0.neg_elbo"), r"history\[0\]: missing key 'neg_elbo'$"),
    ("history-unknown-column", put("history.1.momentum", 0.1), r"history\[1\]: unexpected key 'momentum'$"),
    ("history-out-of-order", swap_history_rows, r"history\[0\]\.epoch: expected 1, got 2$"),
    ("history-string-value", put("history.0.loss", "12.5"),
     r"history\[0\]\.loss: expected a finite number, got '12\.5'$"),
    ("history-huge-int", put("history.0.kl", 10**400), r"history\[0\]\.kl: expected a finite number, got 1000000000"),
    ("history-bool-value", put("history.1.test_loss", True),
     r"history\[1\]\.test_loss: expected a finite number, got True$"),
    ("history-nan", put("history.1.loss", float("nan")), r"history\[1\]\.loss: expected a finite number, got nan$"),
    # fit's settings (fit's own check)
    ("settings-null", put("settings", None), r"settings: expected a JSON object, got None$"),
    ("settings-without-dataset", drop("settings.dataset"), r"settings: missing key 'dataset'$"),
    ("settings-unknown-key", put("settings.epochs", 10), r"settings: unexpected key 'epochs'$"),
    ("settings-batch-size", put("settings.batch_size", 0),
     r"settings: batch_size: expected a positive integer, got 0$"),
    ("settings-optimizer", put("settings.optimizer", 3),
     r"settings: optimizer: expected one of \('sgd', 'adagrad', 'adam'\), got 3$"),
    ("settings-lr-negative", put("settings.lr", -0.1), r"settings: lr: expected a positive number, got -0\.1$"),
    ("settings-lr-nan", put("settings.lr", float("nan")), r"settings: lr: expected a positive number, got nan$"),
    ("settings-lr-huge", put("settings.lr", 10**400), r"settings: lr: expected a positive number, got 10000"),
    ("settings-beta", put("settings.beta", -1.0), r"settings: beta: expected a non-negative number, got -1\.0$"),
    ("settings-warmup", put("settings.kl_warmup_epochs", 1.5),
     r"settings: kl_warmup_epochs: expected a non-negative integer, got 1\.5$"),
    ("settings-binarize", put("settings.binarize", "maybe"),
     r"settings: binarize: expected one of \('none', 'static', 'dynamic'\), got 'maybe'$"),
    ("settings-seed", put("settings.seed", None), r"settings: seed: expected a non-negative integer, got None$"),
    ("settings-dataset", put("settings.dataset", 7), r"settings: dataset: expected a name \(a string\) or None, got 7$"),
    # the optimizer (optim.from_state_dict and the optimizer's constructor)
    ("optimizer-list", put("optimizer", ["adam"]), r"optimizer: expected a JSON object or null, got \['adam'\]$"),
    ("optimizer-name", put("optimizer.name", "rmsprop"),
     r"optimizer: name: expected one of \('sgd', 'adagrad', 'adam'\), got 'rmsprop'$"),
    ("optimizer-t-negative", put("optimizer.t", -1), r"optimizer: t: expected a non-negative integer, got -1$"),
    ("optimizer-extra-hyperparameter", put("optimizer.weight_decay", 0.0),
     r"optimizer: unexpected key 'weight_decay'$"),
    ("optimizer-missing-hyperparameter", drop("optimizer.beta2"), r"optimizer: missing key 'beta2'$"),
    ("optimizer-lr-zero", put("optimizer.lr", 0), r"optimizer: lr: expected a positive number, got 0$"),
    ("optimizer-lr-inf", put("optimizer.lr", float("inf")), r"optimizer: lr: expected a positive number, got inf$"),
    ("optimizer-lr-string", put("optimizer.lr", "0.01"), r"optimizer: lr: expected a positive number, got '0\.01'$"),
    ("optimizer-beta2-one", put("optimizer.beta2", 1.0), r"optimizer: beta2: expected a number in \[0, 1\), got 1\.0$"),
    ("optimizer-eps-negative", put("optimizer.eps", -1e-8),
     r"optimizer: eps: expected a non-negative number, got -1e-08$"),
    ("optimizer-null-but-buffers", put("optimizer", None), r"unexpected array 'opt\.m' \(expected meta, params\)$"),
]

nan, inf = float("nan"), float("inf")
ARRAY_CASES = [
    ("params-nan", entry("params", 3, nan), r"params: expected finite values, got 1 NaN or inf entry$"),
    ("params-inf", array("params", lambda p: np.full_like(p, inf)),
     r"params: expected finite values, got 90 NaN or inf entries$"),
    ("params-overflow-as-float32", array("params", lambda p: np.full(N_PARAMS, 1e300)),
     r"params: expected finite values, got 90 NaN or inf entries \(as float32\)$"),
    ("params-complex", array("params", lambda p: p.astype(np.complex64)),
     r"params: expected a real floating-point array, got dtype complex64$"),
    ("params-bool", array("params", lambda p: p > 0), r"params: expected a real floating-point array, got dtype bool$"),
    ("params-int", array("params", lambda p: p.astype(np.int32)),
     r"params: expected a real floating-point array, got dtype int32$"),
    ("params-structured", array("params", lambda p: np.zeros(N_PARAMS, dtype=[("w", "f4")])),
     r"params: expected a real floating-point array, got dtype \[\('w', '<f4'\)\]$"),
    ("params-object", array("params", lambda p: np.array([{"__reduce__": "os.system"}] * N_PARAMS, dtype=object)),
     r"holds pickled Python objects; refused \(array 'params' has dtype object"),
    ("params-2d", array("params", lambda p: p.reshape(9, 10)),
     r"params: expected shape \(90,\) for the saved config, got \(9, 10\)$"),
    ("params-0d", array("params", lambda p: np.array(1.0)),
     r"params: expected shape \(90,\) for the saved config, got \(\)$"),
    ("adam-v-sum-negative", entry("opt.v", 5, -1e-3),
     r"opt\.v: expected values >= 0 \(a second moment\), got 1 negative entry$"),
    ("adam-m-sum-nan", entry("opt.m", 0, nan), r"opt\.m: expected finite values, got 1 NaN or inf entry$"),
    ("adam-v-sum-inf", entry("opt.v", 0, inf), r"opt\.v: expected finite values, got 1 NaN or inf entry$"),
    ("buffer-short", array("opt.m", lambda b: b[:-1]),
     r"opt\.m: expected shape \(90,\) for the saved config, got \(89,\)$"),
    ("buffer-int", array("opt.v", lambda b: b.astype(np.int64)),
     r"opt\.v: expected a real floating-point array, got dtype int64$"),
    ("buffer-missing", array("opt.v", None), r"optimizer: buffers: expected \('m', 'v'\), got \('m',\)$"),
    ("buffer-of-another-optimizer", array("opt.sum_sq", lambda _: np.zeros(N_PARAMS, np.float32)),
     r"optimizer: buffers: expected \('m', 'v'\), got \('m', 'sum_sq', 'v'\)$"),
    ("unknown-array", array("notes", lambda _: np.zeros(2)),
     r"unexpected array 'notes' \(expected meta, params and opt\.<buffer>\)$"),
]


@pytest.mark.parametrize("change, pattern", [c[1:] for c in META_CASES + ARRAY_CASES],
                         ids=[c[0] for c in META_CASES + ARRAY_CASES])
def test_a_malformed_checkpoint_is_refused_in_one_line(base, tmp_path, change, pattern):
    refused(craft(base, tmp_path, change), pattern)


def test_the_base_file_of_those_cases_loads(base, tmp_path):
    model = npvae.load(craft(base, tmp_path, lambda meta, arrays: None))
    assert model.train_state.settings["dataset"] == "toy" and model.train_state.optimizer.name == "adam"


def test_negative_adagrad_sums_are_refused(trained, tmp_path):
    _, path, _ = trained
    with np.load(path) as archive:
        arrays = {k: archive[k] for k in archive.files}
    arrays["opt.sum_sq"][7] = -2.0
    refused(write(tmp_path / "adagrad.npz", None, arrays),
            r"opt\.sum_sq: expected values >= 0 \(a second moment\), got 1 negative entry$")


@pytest.mark.parametrize("config", [{"hidden_dims": [300000]}, {"hidden_dims": [10**12]}, {"input_dim": 10**15},
                                    {"latent_dim": 10**9, "hidden_dims": []}])
def test_a_small_file_claiming_a_huge_model_allocates_nothing(base, tmp_path, config):
    # Before, load built the model before comparing sizes: [300000] hidden units allocated
    # 3.7 GB with 784 inputs (100 MB here); [10**12] and input_dim 10**15 ended in MemoryError.
    path = craft(base, tmp_path, lambda meta, arrays: meta["config"].update(config))
    assert path.stat().st_size < 16_000
    tracemalloc.start()
    try:
        refused(path, r"params: expected shape \(\d+,\) for the saved config, got \(90,\)$")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_a_model_too_big_for_this_machine_is_refused_before_reading_it(base, tmp_path, monkeypatch):
    path = craft(base, tmp_path, lambda meta, arrays: None)
    monkeypatch.setattr(checkpoint, "memory_bytes", lambda: 1000)
    refused(path, r"config: a model of 90 parameters needs 0\.0 GiB to load, "
                  r"more than this machine's 0\.0 GiB of memory$")
    # VAE() refuses such a model with a ValueError of its own: it becomes a CheckpointError too
    monkeypatch.setattr(checkpoint, "memory_bytes", lambda: 0)  # 0: unknown, no check here
    monkeypatch.setattr(npvae.checks, "memory_bytes", lambda: 1000)
    refused(path, r"config: hidden_dims: \[4\] needs 0\.0 GiB, more than this machine's 0\.0 GiB of memory$")


def test_files_that_are_not_npz_archives(tmp_path):
    def made(name, content):
        path = tmp_path / name
        path.write_bytes(content)
        return path

    np.save(tmp_path / "plain.npy", np.zeros(3))
    refused(tmp_path / "plain.npy", r"not an npvae checkpoint \(expected an \.npz archive, found a \.npy array\)$")
    refused(made("notes.npz", "epoch 3: loss 120.5\nnothing else, ünïcödé\n".encode()),
            r"not an npvae checkpoint \(expected an \.npz archive, found text\)$")
    noise = np.random.default_rng(0).bytes(4096)
    message = refused(made("noise.npz", noise), r"not an npz archive \(truncated or corrupt\?\)$")
    assert "pickle" not in message  # before: "holds pickled Python objects"
    refused(made("empty.npz", b""), r"not an npz archive \(truncated or corrupt\?\): the file is empty$")
    refused(made("zipish.npz", b"PK\x03\x04" + noise), r"truncated or corrupt \(BadZipFile: ")
    for protocol in (0, 2, 5):
        refused(made(f"p{protocol}.npz", pickle.dumps({"format": "npvae-checkpoint", "params": [1.0]}, protocol)),
                r"holds pickled Python objects; refused \(a checkpoint holds plain arrays only")
    (tmp_path / "run").mkdir()
    refused(tmp_path / "run", r"is a directory, not a checkpoint file$")


def test_a_corrupted_byte_inside_an_array_is_caught(base, tmp_path):
    path = craft(base, tmp_path, lambda meta, arrays: None)
    data = bytearray(path.read_bytes())
    at = bytes(data).find(base[1]["params"].tobytes()) + 100
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))
    refused(path, r"truncated or corrupt \(BadZipFile: Bad CRC-32 for file 'params\.npy'\)$")


def test_an_array_whose_header_claims_more_data_than_the_file_holds(base, tmp_path):
    # A well-formed zip (right CRCs) whose params.npy header says (99,) over 90 entries of data.
    path = craft(base, tmp_path, lambda meta, arrays: None)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["params.npy"] = members["params.npy"].replace(b"'shape': (90,)", b"'shape': (99,)")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    refused(path, r"params: truncated or corrupt \(its header says \(99,\) float32, 396 bytes; "
                  r"the archive holds 360\)$")


# --- The settings a checkpoint carries, and what save refuses ----------------------------------
def test_a_checkpoint_carries_its_run(tmp_path):
    # Resuming or evaluating needs no run.json: fit's settings, with the data set's name, are in the file.
    x, _ = toy_images(n=40, d=6, seed=2)
    model = npvae.VAE(6, (4,), 2, seed=3)
    npvae.fit(model, x, epochs=1, batch_size=20, optimizer="sgd", lr=0.05, binarize="dynamic", seed=7, progress=False)
    model.train_state.settings["dataset"] = "mnist-subset"
    npvae.save(model, tmp_path / "run.npz")
    settings = npvae.load(tmp_path / "run.npz").train_state.settings
    assert settings == {"batch_size": 20, "optimizer": "sgd", "lr": 0.05, "beta": 1.0, "kl_warmup_epochs": 0,
                        "binarize": "dynamic", "seed": 7, "dataset": "mnist-subset", "k": 1}
    assert settings == model.train_state.settings


def test_save_refuses_settings_without_the_dataset(tmp_path):
    # fit always records "dataset" (None for arrays from Python): settings without it were only
    # ever made by an npvae that was never released, and save no longer fills it in.
    x, _ = toy_images(n=20, d=6, seed=2)
    model = npvae.VAE(6, (4,), 2, seed=3)
    npvae.fit(model, x, epochs=1, batch_size=10, progress=False)
    assert model.train_state.settings["dataset"] is None
    del model.train_state.settings["dataset"]
    with pytest.raises(checkpoint.CheckpointError, match=r"run\.npz: not written: settings: missing key 'dataset'$"):
        npvae.save(model, tmp_path / "run.npz")
    assert not (tmp_path / "run.npz").exists()


@pytest.mark.parametrize("where", ["params", "optimizer"])
def test_save_never_writes_a_non_finite_model(trained, where):
    model, path, _ = trained
    before = path.read_bytes()
    if where == "params":
        model.params[3] = float("nan")
        pattern = r"not written: params: expected finite values, got 1 NaN or inf entry$"
    else:
        model.train_state.optimizer.sum_sq[0] = float("inf")
        pattern = r"not written: opt\.sum_sq: expected finite values, got 1 NaN or inf entry$"
    for target in (path, path.parent / "new.npz"):
        with pytest.raises(checkpoint.CheckpointError) as info:
            npvae.save(model, target)
        assert str(info.value).startswith(f"{target}: ") and re.search(pattern, str(info.value))
    assert path.read_bytes() == before  # the good checkpoint is untouched
    assert os.listdir(path.parent) == [path.name]  # nothing new written, no temporary file left


def test_save_refuses_settings_that_load_would_refuse(trained, tmp_path):
    model, _, _ = trained
    model.train_state.settings["lr"] = -1.0
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"bad\.npz: not written: settings: lr: expected a positive number, got -1\.0$"):
        npvae.save(model, tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()
