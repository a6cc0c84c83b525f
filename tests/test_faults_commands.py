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
    with pytest.warns(UserWarning, match=r"^-ELBO: not finite in float32 .*; computed in float64$"):
        result = npvae.evaluate(npvae.load(path), X_TEST)
    assert all(math.isfinite(v) for v in result.values())
    q = model.posterior(X_TEST)
    mu = np.asarray(npvae.to_numpy(q.mean), dtype=np.float64)
    lv = 2.0 * np.asarray(npvae.to_numpy(q.log_diag), dtype=np.float64)
    kl = 0.5 * np.mean(np.sum(mu**2 + np.expm1(lv) - lv, axis=1))
    assert result["kl"] == pytest.approx(kl, rel=1e-4)
    with pytest.warns(UserWarning, match=r"^log p\(x\): not finite in float32"):
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
    with pytest.raises(FloatingPointError, match=r"^-ELBO: not finite .* in float64: .*log-variance reaches 2000"):
        npvae.evaluate(model, X_TEST)
    with pytest.raises(FloatingPointError, match=r"^log p\(x\): not finite .*log-variance reaches 2000"):
        npvae.log_marginal_likelihood(model, X_TEST, k=5)


# --- 16. gradcheck on a training-sized model: a bounded sample, progress, and a count -----------
@pytest.mark.slow
def test_gradcheck_samples_a_training_sized_model_and_says_how_many(capsys):
    # Before: every one of the 652,824 entries, two forward passes each (minutes to hours), and
    # no word of how many were checked.
    argv = ["gradcheck", "--input-dim", "784", "--hidden", "400", "--latent-dim", "20"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    # 10 blocks: 7 with more than 100 entries (100 each), 20 + 20 + ... below that checked whole
    assert "checked 840 of 652824 entries" in out and "--entries all" in out


def test_gradcheck_keeps_every_entry_of_the_small_default_model(capsys):
    assert cli.main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    total = npvae.VAE(12, (8, 6), 3).n_params
    assert f"checked {total} of {total} entries" in out
    assert cli.main(["gradcheck", "--input-dim", "30", "--hidden", "20", "--entries", "all"]) == 0
    total = npvae.VAE(30, (20,), 3).n_params
    assert f"checked {total} of {total} entries" in capsys.readouterr().out


def test_gradcheck_shows_progress_on_a_terminal(capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["gradcheck", "--input-dim", "30", "--hidden", "20"]) == 0
    err = capsys.readouterr().err
    assert "gradcheck" in err and "entries" in err and "/" in err  # the tqdm bar: done/total


# --- 11 (part). gradcheck sizes that cannot fit: one line naming the argument -----------------
@pytest.mark.parametrize("argv, name", [
    (["--batch-size", "1000000000"], "--batch-size: 1000000000 needs"),
    (["--input-dim", "1000000000"], "--input-dim: 1000000000 needs"),
    (["--hidden", "1000000000"], "--hidden: [1000000000] needs"),
    (["--latent-dim", "1000000000"], "--latent-dim: 1000000000 needs"),
])
def test_gradcheck_refuses_sizes_that_cannot_fit(capsys, argv, name):
    # Before: --batch-size 1000000000 raised MemoryError (a traceback); --input-dim blamed hidden_dims.
    assert cli.main(["gradcheck", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith(f"npvae gradcheck: error: {name}")


def test_gradcheck_batch_size_text_that_is_not_an_integer(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["gradcheck", "--batch-size", "1e9"])
    assert info.value.code == 2
    assert "argument --batch-size: expected a positive integer, got '1e9'" in capsys.readouterr().err


# --- 13. npvae sample: a grid one can see, in bounded memory ------------------------------------
@pytest.fixture(scope="module")
def checkpoint_784(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.npz"
    npvae.save(npvae.VAE(784, (400,), 20), path)
    return path


@pytest.mark.parametrize("n", [4097, 200000])
def test_sample_refuses_more_than_one_readable_grid(checkpoint_784, tmp_path, capsys, n):
    # Before: n=4097 drew 4097 specks of 10 x 10 pixels; n=200000 needed 13.9 GB (estimated 2.5).
    out = tmp_path / "s.png"
    assert cli.main(["sample", "--checkpoint", str(checkpoint_784), "--n", str(n), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and not out.exists()
    assert err.startswith(f"npvae sample: error: --n: at most 4096 samples fit one readable grid (64 x 64), got {n}")


def test_sample_grid_draws_every_image_at_full_size(checkpoint_784):
    # Before: the figure was 640 pixels wide whatever the grid: 64 x 64 tiles of 29 pixels in 640.
    fig = npvae.plots.plot_samples(np.zeros((4096, 784)), grid=64)
    width, height = fig.get_size_inches() * fig.dpi
    assert width >= 64 * 29 and height >= 64 * 29
    with pytest.raises(ValueError, match=r"^grid: expected at most 64 tiles per side"):
        npvae.plots.plot_samples(np.zeros((4, 784)), grid=65)


@pytest.mark.slow
def test_sample_4096_stays_in_bounded_memory(checkpoint_784, tmp_path):
    # The largest grid allowed, measured: its peak resident memory (about 0.4 GB) in a child.
    import subprocess
    import sys

    out = tmp_path / "s.png"
    code = ("import resource, sys; from npvae import cli; code = cli.main(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    run = subprocess.run([sys.executable, "-c", code, "sample", "--checkpoint", str(checkpoint_784), "--n", "4096",
                          "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    peak_mib = int(run.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux
    assert peak_mib < 1024 and out.stat().st_size > 0


def test_gradcheck_blames_input_dim_for_huge_images(monkeypatch, capsys):
    # The size is the images' (input_dim appears in the first and last layers, every hidden
    # width in more layers): the refusal names --input-dim, not --hidden.
    monkeypatch.setattr(npvae.checks, "memory_bytes", lambda: 2**30)
    assert cli.main(["gradcheck", "--input-dim", "100000000"]) == 2
    assert capsys.readouterr().err.startswith("npvae gradcheck: error: --input-dim: 100000000 needs")


def test_sample_refuses_a_folder_as_out_naming_the_flag(tmp_path, capsys):
    # Before: "npvae sample: error: [Errno 21] Is a directory: 'd.png'", after drawing the samples.
    (tmp_path / "d.png").mkdir()
    assert cli.main(["sample", "--checkpoint", "no-such.npz", "--out", str(tmp_path / "d.png")]) == 2
    assert capsys.readouterr().err.startswith("npvae sample: error: --out: expected an image file's name, got ")
