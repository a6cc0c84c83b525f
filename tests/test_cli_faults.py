"""npvae train / sample / evaluate / gradcheck under faults (issue 10): a diverging run, a reused
--out, a refused resume, Ctrl-C at awkward moments, a checkpoint without its run.json, sizes
typed wrong. Each test failed on the code before its fix."""

import json
import os
import shutil
import signal

import numpy as np
import pytest

import npvae
from npvae import cli, plots
from conftest import EXPECTED_BACKEND, SMALL, history_rows


def copy_run(run, dest, names=("checkpoint.npz", "run.json", "history.csv")):
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(run / name, dest / name)
    return dest


# --- 1. divergence --------------------------------------------------------------------------
@pytest.mark.slow
def test_a_diverging_run_never_saves_over_the_last_good_epoch(tmp_path, capsys):
    # The issue's command: full-batch SGD, so every step is an epoch's last step. Epoch 2's
    # test -ELBO is inf. Before: it was saved anyway, and epoch 3 named that file as "the
    # checkpoint of the last complete epoch" (it evaluated to 8.6e31 nats).
    out = tmp_path / "r"
    argv = ["train", "--hidden", "16", "--latent-dim", "2", "--batch-size", "8000", "--optimizer", "sgd",
            "--lr", "0.5", "--epochs", "12", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "training stopped: epoch 2: the test -ELBO went non-finite" in err
    assert f"epoch 1 is saved in {out / 'checkpoint.npz'}" in err
    model = npvae.load(out / "checkpoint.npz")
    assert model.train_state.epoch == 1 and np.isfinite(model.train_state.history[-1]["test_loss"])
    assert len(history_rows(out / "history.csv")) == 1


# --- 2. a reused --out, and two runs into one folder -------------------------------------------
@pytest.mark.slow
def test_a_folder_holding_a_run_is_refused_unless_overwrite(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "r", names=("checkpoint.npz", "run.json", "history.csv", "manifold.png"))
    before = (out / "checkpoint.npz").read_bytes()
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"npvae train: error: --out: {out} already holds a run (checkpoint.npz, history.csv, run.json, "
                          "manifold.png)")  # every file a run writes is named (Step 9)
    assert "\n" not in err and (out / "checkpoint.npz").read_bytes() == before
    # --overwrite replaces the whole run: no stale manifold.png from the Z = 2 run survives a Z = 3 one.
    small3 = [a if a != "2" else "3" for a in SMALL]
    assert cli.main(["train", "--epochs", "1", "--out", str(out), "--overwrite", *small3]) == 0
    assert not (out / "manifold.png").exists()
    assert npvae.load(out / "checkpoint.npz").latent_dim == 3
    assert json.loads((out / "run.json").read_text())["settings"]["latent_dim"] == 3


def test_a_second_training_into_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    holder = cli._RunFolder(str(out))  # as a running npvae train holds it
    try:
        assert cli.main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 2
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert f"--out: another npvae train (pid {os.getpid()}) is writing into {out}" in err
    assert not out.exists()  # the holder made it; released empty, it is gone again


@pytest.mark.slow
def test_a_killed_runs_temporary_files_are_cleaned_on_the_next_run(run2, tmp_path):
    out = copy_run(run2, tmp_path / "r")
    leftover = out / ".checkpoint.npz.k1ll3d.part"
    leftover.write_bytes(b"\0" * 1000)
    assert cli.main(["train", "--resume", str(out / "checkpoint.npz"), "--epochs", "3", "--no-progress"]) == 0
    assert not leftover.exists()
    assert not list(out.glob(".*"))  # no lock file left either


# --- 3. a refused resume writes nothing -------------------------------------------------------
@pytest.mark.slow
def test_a_refused_resume_changes_no_file(run2, tmp_path, capsys):
    out = copy_run(run2, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["train", "--resume", str(out / "checkpoint.npz"), "--optimizer", "sgd", "--epochs", "3"]) == 2
    assert "--optimizer: the run being resumed was trained with 'adam'" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # ... so the plain resume that Ctrl-C recommends still works.
    assert cli.main(["train", "--resume", str(out / "checkpoint.npz"), "--epochs", "3", "--no-progress"]) == 0


@pytest.mark.parametrize("flag, value, saved, got", [
    ("--kl-warmup-epochs", "3", "0", "3"), ("--binarize", "static", "'none'", "'static'"),
    ("--batch-size", "128", "256", "128"), ("--dataset", "fashion-mnist", "'mnist-subset'", "'fashion-mnist'")])
def test_a_refused_resume_names_the_flag_and_writes_nothing(run2, tmp_path, capsys, flag, value, saved, got):
    # Step 10: one check of the resumed settings, fit's, its message naming the flag typed.
    # Before: --kl-warmup-epochs was not a flag (argparse refused it).
    out = copy_run(run2, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["train", "--resume", str(out / "checkpoint.npz"), flag, value, "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert err == (f"npvae train: error: {flag}: the run being resumed was trained with {saved} and goes on with it "
                   f"(start a new run to change it), got {got}\n")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_command_lines_choices_and_defaults_are_the_modules():
    # Step 10: one source for each setting; --kl-warmup-epochs is fit's kl_warmup_epochs
    # (--kl-warmup, its old name, still works).
    train = next(a for a in cli.build_parser()._subparsers._actions if a.choices)._name_parser_map["train"]
    choices = {action.dest: action.choices for action in train._actions if action.choices}
    assert choices["likelihood"] is npvae.vae.LIKELIHOODS and choices["posterior"] is npvae.vae.POSTERIORS
    assert choices["optimizer"] is npvae.optim.OPTIMIZERS and choices["binarize"] is npvae.train.BINARIZE
    assert choices["dataset"] is npvae.datasets.NAMES and choices["activation"] is npvae.layers.ACTIVATIONS
    for flag in ("--kl-warmup-epochs", "--kl-warmup"):
        assert cli.build_parser().parse_args(["train", flag, "3"]).kl_warmup_epochs == 3


# --- 5. --resume --lr is applied, and recorded truly ------------------------------------------
@pytest.mark.slow
def test_resume_with_a_new_lr_applies_it(run2, tmp_path):
    out = copy_run(run2, tmp_path / "r")
    assert cli.main(["train", "--resume", str(out / "checkpoint.npz"), "--epochs", "3", "--lr", "0.0005",
                     "--no-progress"]) == 0
    model = npvae.load(out / "checkpoint.npz")
    assert model.train_state.optimizer.lr == 0.0005 and model.train_state.settings["lr"] == 0.0005
    assert json.loads((out / "run.json").read_text())["settings"]["lr"] == 0.0005


# --- 6. a checkpoint alone carries its run ------------------------------------------------------
@pytest.mark.slow
def test_resume_without_run_json_goes_on_with_the_saved_settings(run2, tmp_path):
    alone = copy_run(run2, tmp_path / "alone", names=("checkpoint.npz",))
    assert cli.main(["train", "--resume", str(alone / "checkpoint.npz"), "--epochs", "3", "--no-progress"]) == 0
    straight = tmp_path / "straight"
    assert cli.main(["train", "--epochs", "3", "--out", str(straight), *SMALL]) == 0
    assert history_rows(alone / "history.csv") == history_rows(straight / "history.csv")  # batch 256, not 128
    assert npvae.load(alone / "checkpoint.npz").train_state.settings["dataset"] == "mnist-subset"


@pytest.mark.slow
def test_evaluate_without_run_json_scores_what_the_model_was_trained_on(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", "--epochs", "1", "--binarize", "dynamic", "--out", str(out), *SMALL]) == 0
    os.remove(out / "run.json")
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.npz"), "--k", "5", "--limit", "20"]) == 0
    assert "evaluating on the mnist-subset test set: 20 examples (binarized: dynamic)" in capsys.readouterr().out


def test_a_checkpoint_that_does_not_name_its_data_asks_for_it(tmp_path, capsys):
    x = npvae.datasets.load()[0][0][:64]
    model = npvae.VAE(784, (8,), 2)
    npvae.fit(model, x, epochs=1, progress=False)  # from Python: no dataset name
    npvae.save(model, tmp_path / "checkpoint.npz")
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "checkpoint.npz"), "--k", "2"]) == 2
    assert "--dataset: " in capsys.readouterr().err
    # Step 10: the checkpoint alone says which data it was trained on; a run.json beside it is
    # not read (it was, for checkpoints of an unreleased format 1 that did not store the name).
    (tmp_path / "run.json").write_text('{"settings": {"dataset": "mnist-subset"}}')
    assert cli.main(["evaluate", "--checkpoint", str(tmp_path / "checkpoint.npz"), "--k", "2"]) == 2
    assert capsys.readouterr().err == (f"npvae evaluate: error: --dataset: {tmp_path / 'checkpoint.npz'} does not say "
                                       "which data it was trained on; give --dataset\n")


# --- 12. honest messages --------------------------------------------------------------------------
def interrupt_during(monkeypatch, target, name, when):
    """Deliver a real SIGINT inside ``target.name`` the ``when``-th time it is called."""
    original, calls = getattr(target, name), {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == when:
            os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, wrapped)


@pytest.mark.slow
@pytest.mark.parametrize("when", [1, 2])
def test_ctrl_c_during_a_save_finishes_it_and_says_so(monkeypatch, tmp_path, capsys, when):
    # Before: "epochs 1-k are saved" when k-1 were, and during the first save a resume that
    # could not work.
    interrupt_during(monkeypatch, npvae.checkpoint, "save", when)
    out = tmp_path / "r"
    assert cli.main(["train", "--epochs", "4", "--out", str(out), *SMALL]) == 130
    err = capsys.readouterr().err
    saved = "epoch 1 is" if when == 1 else "epochs 1-2 are"
    assert f"interrupted while saving epoch {when}; {saved} saved in {out / 'checkpoint.npz'}" in err
    assert f"npvae train --resume {out / 'checkpoint.npz'} --epochs 4" in err
    assert npvae.load(out / "checkpoint.npz").train_state.epoch == when
    assert len(history_rows(out / "history.csv")) == when  # the history does not lag the checkpoint


@pytest.mark.slow
def test_ctrl_c_during_the_last_save_does_not_speak_of_epoch_13_of_12(monkeypatch, tmp_path, capsys):
    interrupt_during(monkeypatch, npvae.History, "to_csv", 2)
    out = tmp_path / "r"
    assert cli.main(["train", "--epochs", "2", "--out", str(out), *SMALL]) == 130
    err = capsys.readouterr().err
    assert "interrupted while saving epoch 2; epochs 1-2 are saved" in err
    assert "epoch 3" not in err and "--resume" not in err
    assert len(history_rows(out / "history.csv")) == 2


@pytest.mark.slow
def test_ctrl_c_while_drawing_the_figures_is_one_message(monkeypatch, tmp_path, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "plot_history", interrupted)
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "r"), *SMALL]) == 130
    err = capsys.readouterr().err
    assert "interrupted while drawing the figures; training is complete and saved in" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_warmup_longer_than_training_is_one_line(tmp_path, capsys):
    assert cli.main(["train", "--epochs", "1", "--kl-warmup", "100", "--out", str(tmp_path / "r"), *SMALL]) == 0
    err = capsys.readouterr().err
    assert "npvae train: warning: kl_warmup_epochs: the KL weight rises to beta=1 over 100 epochs, but training " \
           "stops after epoch 1" in err


@pytest.mark.slow
def test_latent_plot_names_the_datasets_classes(run2, monkeypatch):
    seen = {}
    monkeypatch.setattr(plots, "plot_latent", lambda *a, **kw: seen.update(kw))
    model = npvae.load(run2 / "checkpoint.npz")
    (_, _), (x_test, y_test) = npvae.datasets.load()
    settings = {"binarize": "none", "seed": 0, "dataset": "fashion-mnist", "k": 1}
    cli._train_figures(model, model.train_state.history, settings, x_test[:50], y_test[:50])["latent.png"](None)
    assert seen["label_name"] == "class" and seen["class_names"][0] == "T-shirt/top"
    settings["dataset"] = "mnist-subset"
    cli._train_figures(model, model.train_state.history, settings, x_test[:50], y_test[:50])["latent.png"](None)
    assert seen["label_name"] == "digit" and list(seen["class_names"]) == [str(d) for d in range(10)]


@pytest.mark.parametrize("argv, message", [
    (["train", "--seed", "-1"], "argument --seed: expected a non-negative integer, got '-1'"),
    (["sample", "--checkpoint", "c.npz", "--seed", "-1"], "argument --seed: expected a non-negative integer"),
])
def test_bad_seeds_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_sizes_that_cannot_fit_are_one_line(run2, tmp_path, capsys):
    assert cli.main(["train", "--hidden", "10000000000", "--out", str(tmp_path / "r"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("npvae train: error: --hidden: [10000000000] needs") and "\n" not in err
    assert not (tmp_path / "r").exists()
    assert cli.main(["sample", "--checkpoint", str(run2 / "checkpoint.npz"), "--n", "1000000000",
                     "--out", str(tmp_path / "s.png")]) == 2
    # (issue 16: refused as more than one readable grid, before its memory is asked)
    assert capsys.readouterr().err.startswith("npvae sample: error: --n: at most 4096 samples fit one readable grid")


@pytest.mark.slow
def test_sample_writes_the_format_its_name_says(run2, tmp_path, capsys):
    pdf = tmp_path / "x.pdf"
    assert cli.main(["sample", "--checkpoint", str(run2 / "checkpoint.npz"), "--n", "4", "--out", str(pdf)]) == 0
    assert pdf.read_bytes()[:4] == b"%PDF"  # before: PNG bytes in a .pdf
    assert cli.main(["sample", "--checkpoint", str(run2 / "checkpoint.npz"), "--out", str(tmp_path / "x.jpeg")]) == 2
    assert "--out: expected a file name ending in .png, .pdf, .svg" in capsys.readouterr().err
    assert not (tmp_path / "x.jpeg").exists()


def test_gradcheck_fails_on_a_nan_gradient(monkeypatch, capsys):
    # Before: a NaN in one block showed "nan" in the table, then "PASS", exit 0.
    original = npvae.VAE.loss_and_grads

    def one_nan(self, *args, **kwargs):
        res = original(self, *args, **kwargs)
        a, _b = next((a, b) for name, a, b, _ in self.blocks if name == "phi.decoder.0.W")
        res.grads[a + 1] = float("nan")
        return res

    monkeypatch.setattr(npvae.VAE, "loss_and_grads", one_nan)
    assert cli.main(["gradcheck"]) == 1
    out = capsys.readouterr().out
    assert "PASS" not in out and "FAIL" in out and "phi.decoder.0.W" in out.split("FAIL")[1]


@pytest.mark.slow
def test_run_json_records_the_backend(run2):
    assert json.loads((run2 / "run.json").read_text())["backend"] == EXPECTED_BACKEND


# --- Step 7: the full-covariance posterior on the command line -----------------------------------
@pytest.mark.slow
def test_train_evaluate_and_gradcheck_with_a_full_posterior(tmp_path, capsys):
    out = tmp_path / "full"
    assert cli.main(["train", "--epochs", "1", "--posterior", "full", "--out", str(out), *SMALL]) == 0
    model = npvae.load(out / "checkpoint.npz")
    assert model.posterior_kind == "full" and json.loads((out / "run.json").read_text())["settings"]["posterior"] == "full"
    capsys.readouterr()
    assert cli.main(["evaluate", "--checkpoint", str(out / "checkpoint.npz"), "--k", "5", "--limit", "20"]) == 0
    assert "posterior: full" in capsys.readouterr().out  # the model's line names it
    assert cli.main(["train", "--resume", str(out / "checkpoint.npz"), "--epochs", "2", "--posterior", "diagonal"]) == 2
    assert "--posterior: the model's shape comes from the checkpoint" in capsys.readouterr().err
    assert cli.main(["gradcheck", "--posterior", "full"]) == 0
    report = capsys.readouterr().out
    assert "theta.unit_lower.W" in report and "PASS" in report
