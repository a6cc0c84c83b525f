"""Checkpoints: round trip, atomic writes, and clear refusals of bad files."""

import json
import os

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
    model.save(path)
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
    model.save(tmp_path / "fresh.npz")
    back = npvae.load(tmp_path / "fresh.npz")
    assert back.train_state is None and back.dtype == "float64" and back.hidden_dims == ()
    np.testing.assert_array_equal(host(back.params), host(model.params))


def test_the_file_is_plain_arrays_and_json(trained):
    _, path, _ = trained
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"meta", "params", "opt.sum_sq"}
        meta = json.loads(str(archive["meta"]))
    assert meta["format"] == "npvae-checkpoint" and meta["version"] == 1
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
        model.save(path)
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
    with pytest.raises(checkpoint.CheckpointError, match=r"not an npvae checkpoint \(expected arrays 'meta' and 'params', found \['weights'\]\)"):
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
    with pytest.raises(checkpoint.CheckpointError, match="format version 99; this npvae reads version 1"):
        npvae.load(tmp_path / "v99.npz")
    np.savez(tmp_path / "short.npz", **{**arrays, "params": arrays["params"][:-1]})
    with pytest.raises(checkpoint.CheckpointError, match=r"params: expected shape \(\d+,\) for the saved config"):
        npvae.load(tmp_path / "short.npz")
