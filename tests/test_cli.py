"""The command line: npvae info and npvae gradcheck."""

import os
import subprocess
import sys

import pytest

from npvae import cli, layers
from conftest import EXPECTED_BACKEND


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
    original = layers.Dense.backward

    def wrong(self, dout, cache, need_dx=True):
        dx = original(self, dout, cache, need_dx)
        self.dW[...] = 2.0 * self.dW
        return dx

    monkeypatch.setattr(layers.Dense, "backward", wrong)
    assert cli.main(["gradcheck", "--entries", "3"]) == 1
    out = capsys.readouterr().out
    assert "FAIL: largest relative error" in out and "theta.encoder.0.W" in out.split("FAIL")[1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["gradcheck", "--latent-dim", "0"], "argument --latent-dim: expected a positive integer, got '0'"),
        (["gradcheck", "--tol", "-1"], "argument --tol: expected a positive number, got '-1'"),
        (["gradcheck", "--likelihood", "poisson"], "argument --likelihood: invalid choice: 'poisson'"),
        (["train"], "invalid choice: 'train'"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


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
