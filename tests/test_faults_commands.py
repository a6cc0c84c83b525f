"""npvae evaluate / sample / gradcheck under faults (issue 16, items 6, 11, 13, 16): a model whose
variances overflow, a sample grid too large to see or to fit, a training-sized gradient check,
sizes that cannot fit. Each test failed on the code before its fix."""

import math

import numpy as np
import pytest

import npvae
from npvae import cli

X_TEST = npvae.datasets.load()[1][0][:20]  # 20 embedded test digits, (20, 784)


def overflowing_model(posterior="diagonal", bias=200.0, dtype="float32"):
    """A 784-16-2 model whose posterior log-variance (diagonal) or log-diagonal of L (full) is
    about ``bias`` for every x: its variances exp(bias) (exp(2 bias)) overflow float32."""
    model = npvae.VAE(784, (16,), 2, posterior=posterior, dtype=dtype)
    name = "theta.logvar.b" if posterior == "diagonal" else "theta.log_diag.b"
    _name, a, b, _shape = next(block for block in model.blocks if block.name == name)
    model.params[a:b] = bias
    return model


def evaluate_lines(capsys, argv):
    """Run npvae evaluate; its status, stdout lines by first word, and stderr."""
    code = cli.main(["evaluate", *argv, "--dataset", "mnist-subset", "--k", "5", "--limit", "20"])
    out, err = capsys.readouterr()
    return code, {line.split()[0]: line for line in out.splitlines() if line}, out, err


# --- 6. evaluate never prints nan with exit 0 ---------------------------------------------------
@pytest.mark.parametrize("posterior, bias", [("diagonal", 200.0), ("full", 80.0)])
def test_evaluate_on_overflowing_variances_is_finite_and_right(tmp_path, capsys, posterior, bias):
    # Before: "-ELBO nan (reconstruction nan + KL inf)", "log p(x) nan", exit 0.
    model = overflowing_model(posterior, bias)
    path = tmp_path / "big.npz"
    npvae.save(model, path)
    code, lines, out, err = evaluate_lines(capsys, ["--checkpoint", str(path)])
    assert code == 0 and "nan" not in out and "inf" not in out
    elbo, log_px = float(lines["-ELBO"].split()[1]), float(lines["log"].split()[2])
    assert math.isfinite(elbo) and math.isfinite(log_px) and log_px < 0
    assert "float64" in err  # it says how it got a number
    # From Python too: finite, and the KL is the closed form in float64, Z * (e^lv - 1 - lv) / 2.
    result = npvae.evaluate(npvae.load(path), X_TEST)
    assert all(math.isfinite(v) for v in result.values())
    q = model.posterior(X_TEST)
    mu = np.asarray(npvae.to_numpy(q.mean), dtype=np.float64)
    lv = 2.0 * np.asarray(npvae.to_numpy(q.log_diag), dtype=np.float64)
    kl = 0.5 * np.mean(np.sum(mu**2 + np.expm1(lv) - lv, axis=1))
    assert result["kl"] == pytest.approx(kl, rel=1e-4)
    assert math.isfinite(npvae.log_marginal_likelihood(model, X_TEST, k=5))
    assert np.all(np.isfinite(npvae.log_marginal_likelihood(model, X_TEST, k=5, per_example=True)))


def test_evaluate_refuses_what_float64_cannot_hold(tmp_path, capsys):
    # A log-variance of 2000: exp(2000) overflows even float64. One line, exit 1, no nan.
    model = overflowing_model("diagonal", 2000.0, dtype="float64")
    path = tmp_path / "huge.npz"
    npvae.save(model, path)
    code, lines, out, err = evaluate_lines(capsys, ["--checkpoint", str(path)])
    assert code == 1 and "nan" not in out and "-ELBO" not in lines
    assert err.count("\n") == 1 and err.startswith("npvae evaluate: error: -ELBO: not finite")
    assert "log-variance reaches 2000" in err
    with pytest.raises(FloatingPointError, match=r"^-ELBO: not finite .*log-variance reaches 2000"):
        npvae.evaluate(model, X_TEST)
    with pytest.raises(FloatingPointError, match=r"^log p\(x\): not finite .*log-variance reaches 2000"):
        npvae.log_marginal_likelihood(model, X_TEST, k=5)
