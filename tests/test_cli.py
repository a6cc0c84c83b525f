"""The command line: npvae info, gradcheck, train, sample and evaluate."""

import json
import os
import subprocess
import sys

import pytest

from npvae import cli, layers
from conftest import EXPECTED_BACKEND, SMALL, history_rows, scale_dense_gradient


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"backend: {EXPECTED_BACKEND}" in out
    assert "default dtype: float32" in out and "numpy:" in out


def test_gradcheck_passes_and_prints_every_block(capsys):
    assert cli.main(["gradcheck", "--hidden", "5", "4", "--input-dim", "6", "--likelihood", "gaussian"]) == 0
    out = capsys.readouterr().out
    for block in ("theta.encoder.0.W", "theta.encoder.1.b", "theta.mu.W", "theta.logvar.b", "phi.decoder.2.W"):
        assert block in out
    assert "PASS: largest relative error" in out


def test_gradcheck_fails_with_status_1_on_a_wrong_gradient(monkeypatch, capsys):
    scale_dense_gradient(monkeypatch, "dW", 2.0)
    assert cli.main(["gradcheck", "--entries", "3"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: largest relative error" in out and "theta.encoder.0.W" in out.split("FAIL")[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["gradcheck", "--latent-dim", "0"], "argument --latent-dim: expected a positive integer, got '0'"),
        (["gradcheck", "--tol", "-1"], "argument --tol: expected a positive number, got '-1'"),
        (["gradcheck", "--likelihood", "poisson"], "argument --likelihood: invalid choice: 'poisson'"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.slow
def test_python_dash_m_and_a_bad_backend_without_traceback():
    env = {**os.environ, "NPVAE_BACKEND": "tpu"}
    proc = subprocess.run([sys.executable, "-m", "npvae", "info"], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "npvae info: error: NPVAE_BACKEND: expected one of numpy, cupy, strict, got 'tpu'. "
        "Set it to numpy (CPU), cupy (NVIDIA GPU) or strict (portability checks)."
    ]
    ok = subprocess.run([sys.executable, "-m", "npvae", "gradcheck", "--entries", "2"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "PASS" in ok.stdout


# --- train, sample, evaluate (run2: a 2-epoch run, see conftest.py) --------------------------
@pytest.mark.slow
def test_train_writes_everything(run2):
    names = {p.name for p in run2.iterdir()}
    assert names == {"checkpoint.npz", "history.csv", "run.json", "loss.png", "reconstructions.png",
                     "samples.png", "latent.png", "manifold.png"}
    for png in run2.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(history_rows(run2 / "history.csv")) == 2
    run = json.loads((run2 / "run.json").read_text())
    assert run["settings"]["dataset"] == "mnist-subset" and run["settings"]["hidden"] == [16]
    assert run["backend"] == EXPECTED_BACKEND


@pytest.mark.slow
def test_train_prints_epochs_and_where_files_are(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "r"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "training on mnist-subset (8000 train, 2000 test)" in out
    assert "epoch   1/1  -ELBO" in out and "test" in out
    assert str(tmp_path / "r" / "manifold.png") in out


@pytest.mark.slow
def test_resume_continues_the_same_run(run2, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("checkpoint.npz", "run.json"):
        (resumed / name).write_bytes((run2 / name).read_bytes())
    assert cli.main(["train", "--resume", str(resumed / "checkpoint.npz"), "--epochs", "3", "--no-progress"]) == 0
    straight = tmp_path / "straight"
    assert cli.main(["train", "--epochs", "3", "--out", str(straight), *SMALL]) == 0
    assert history_rows(resumed / "history.csv") == history_rows(straight / "history.csv")


@pytest.mark.slow
def test_sample_and_evaluate(run2, tmp_path, capsys):
    png = tmp_path / "grid.png"
    assert cli.main(["sample", "--checkpoint", str(run2 / "checkpoint.npz"), "--n", "16", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(run2 / "checkpoint.npz"), "--k", "20", "--limit", "100"]) == 0
    out = capsys.readouterr().out
    assert "evaluating on the mnist-subset test set: 100 examples" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line}
    elbo = float(lines["-ELBO"].split()[1])
    log_px = float(lines["log"].split()[2])
    assert -elbo < log_px < 0
    assert "active units" in out and "of 2" in out


@pytest.mark.slow
def test_ctrl_c_keeps_the_last_epoch_and_says_how_to_resume(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    original = layers.Dense.backward

    def interrupt_in_epoch_2(self, dout, cache, need_dx=True):
        calls["n"] += 1
        if calls["n"] > 5 * 32 + 4:  # 32 steps an epoch, 5 Dense layers a step
            raise KeyboardInterrupt
        return original(self, dout, cache, need_dx)

    monkeypatch.setattr(layers.Dense, "backward", interrupt_in_epoch_2)
    out = tmp_path / "r"
    assert cli.main(["train", "--epochs", "5", "--out", str(out), *SMALL]) == 130
    err = capsys.readouterr().err
    assert "interrupted during epoch 2; epoch 1 is saved in" in err
    assert f"npvae train --resume {out / 'checkpoint.npz'} --epochs 5" in err
    import npvae

    assert npvae.load(out / "checkpoint.npz").train_state.epoch == 1


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_diverging_training_exits_1(tmp_path, capsys):
    args = ["train", "--epochs", "2", "--likelihood", "gaussian", "--optimizer", "sgd", "--lr", "1000",
            "--out", str(tmp_path / "r"), *SMALL]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert "npvae train: training stopped: epoch 1, step" in err and "went non-finite" in err


def test_missing_checkpoint_is_one_line(capsys):
    assert cli.main(["sample", "--checkpoint", "no/such/file.npz"]) == 2
    assert capsys.readouterr().err.strip() == "npvae sample: error: no/such/file.npz: no such checkpoint file"
