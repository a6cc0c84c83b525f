"""Step 9 (issue 16), the run's side: --overwrite and --resume never lose the old run, a folder
of figures is refused, Ctrl-C and SIGTERM anywhere are one line, write errors say what is saved
and how to go on, and the history's names are honest. Each test failed on the code before."""

import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import npvae
from npvae import checkpoint, cli, datasets, train
from conftest import SMALL, one_line

CKPT = "checkpoint.npz"


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    """A finished 1-epoch run, to copy from."""
    out = tmp_path_factory.mktemp("run1") / "run"
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 0
    return out


def copy_run(run, dest):
    shutil.copytree(run, dest)
    return dest


def python(code, *args, env=None, **kwargs):
    """Run ``code`` in a fresh Python with this checkout's npvae."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


# --- 1. --overwrite writes the new checkpoint before the old run goes ----------------------------
@pytest.mark.slow
def test_overwrite_keeps_the_old_run_when_the_first_save_fails(run1, tmp_path):
    out = copy_run(run1, tmp_path / "r")
    before = (out / CKPT).read_bytes()
    # A file-size limit well below the new (hidden 64) checkpoint: its first save fails.
    proc = python("""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() raises EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))
        from npvae.cli import main
        sys.exit(main(sys.argv[1:]))
    """, "train", "--epochs", "2", "--overwrite", "--out", str(out), "--hidden", "64", "--latent-dim", "2",
                  "--batch-size", "512", "--no-progress")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    err = one_line(err)
    assert f"could not write {out / CKPT}" in err and "File too large" in err and ".part" not in err
    assert "saved" in err and f"the run that was in {out} is kept" in err
    assert (out / CKPT).read_bytes() == before  # before: the folder was empty
    assert npvae.load(out / CKPT).hidden_dims == (16,)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in run1.iterdir())


@pytest.mark.slow
def test_overwrite_replaces_the_whole_run_once_it_saved(run1, tmp_path, capsys):
    out = copy_run(run1, tmp_path / "r")  # it has a manifold.png; a Z = 3 run draws none: none may be left
    assert cli.main(["train", "--epochs", "1", "--overwrite", "--out", str(out), "--hidden", "16",
                     "--latent-dim", "3", "--batch-size", "256", "--no-progress"]) == 0
    assert npvae.load(out / CKPT).latent_dim == 3 and not (out / "manifold.png").exists()
    # 20: "done" lists exactly the files written
    listed = [line.strip() for line in capsys.readouterr().out.split("done in")[1].splitlines()[1:]]
    assert sorted(listed) == sorted(str(p) for p in out.iterdir())


# --- 2. --resume X --overwrite with the same folder given another way ---------------------------
@pytest.mark.slow
def test_resume_overwrite_through_a_symlink_never_deletes_the_resumed_checkpoint(run1, tmp_path, monkeypatch,
                                                                                    capsys):
    out = copy_run(run1, tmp_path / "r")
    (tmp_path / "link").symlink_to(out)
    real_save = checkpoint.save

    def disk_full(model, path, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "save", disk_full)
    argv = ["train", "--resume", str(tmp_path / "link" / CKPT), "--epochs", "2", "--overwrite", "--out", str(out),
            "--no-progress"]
    assert cli.main(argv) == 1
    one_line(capsys.readouterr().err)
    assert npvae.load(out / CKPT).train_state.epoch == 1  # before: deleted, then the save failed
    assert (out / "history.csv").exists() and (out / "run.json").exists()
    monkeypatch.setattr(checkpoint, "save", real_save)
    argv[2] = str(out / ".." / "r" / CKPT)
    assert cli.main(argv) == 0  # the same run goes on: nothing of it is deleted
    assert npvae.load(out / CKPT).train_state.epoch == 2


# --- 3. a folder of figures is not free ---------------------------------------------------------
@pytest.mark.parametrize("names", [["samples.png"], ["loss.png", "latent.png", "manifold.png"],
                                   ["reconstructions.png"]])
def test_a_folder_holding_only_figures_is_refused(tmp_path, capsys, names):
    out = tmp_path / "pf"
    out.mkdir()
    for name in names:
        (out / name).write_bytes(b"a user's picture")
    assert cli.main(["train", "--epochs", "1", "--out", str(out), *SMALL]) == 2
    err = one_line(capsys.readouterr().err)
    listed = [name for name in cli.RUN_FILES if name in names]
    assert f"--out: {out} already holds files npvae train writes ({', '.join(listed)})" in err
    assert "--overwrite" in err
    assert all((out / name).read_bytes() == b"a user's picture" for name in names)


# --- 9. Ctrl-C and SIGTERM anywhere ---------------------------------------------------------------
def signal_once(proc, text, signum):
    """Send ``signum`` to ``proc`` once a line of its stdout holds ``text``; its stderr, when it
    has ended."""
    try:
        if not any(text in line for line in proc.stdout):
            raise AssertionError(f"no line with {text!r}; stderr: {proc.stderr.read()}")
        proc.send_signal(signum)
        return proc.communicate(timeout=60)[1]
    finally:
        proc.kill()


CLI = "import sys; from npvae.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.slow
def test_sigterm_during_training_saves_and_says_so(tmp_path):
    out = tmp_path / "r"
    proc = python(CLI, "train", "--epochs", "200", "--out", str(out), *SMALL)
    err = signal_once(proc, "epoch   1/200", signal.SIGTERM)
    assert proc.returncode == 143, err
    err = one_line(err)
    assert err.startswith("npvae train: terminated (SIGTERM)") and f"saved in {out / CKPT}" in err
    epoch = npvae.load(out / CKPT).train_state.epoch
    assert epoch >= 1 and f"--resume {out / CKPT} --epochs 200" in err
    assert not (out / cli.LOCK_FILE).exists()


@pytest.mark.slow
def test_ctrl_c_during_gradcheck_is_one_line_and_130():
    proc = python(CLI, "gradcheck", "--input-dim", "784", "--hidden", "400", "--latent-dim", "20", "--batch-size", "64")
    err = signal_once(proc, "tolerance", signal.SIGINT)
    assert proc.returncode == 130, err
    assert one_line(err) == "npvae gradcheck: interrupted"


@pytest.mark.slow
def test_ctrl_c_while_npvae_is_imported_is_one_line_and_130():
    # As the console script does it (sys.argv[0] is "npvae"), with Ctrl-C arriving mid-import.
    proc = python("""
        import importlib.abc, os, signal, sys
        class CtrlC(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "npvae.vae":
                    os.kill(os.getpid(), signal.SIGINT)
                return None
        sys.meta_path.insert(0, CtrlC())
        sys.argv = ["/usr/bin/npvae", "info"]
        from npvae.cli import main
        sys.exit(main())
    """)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and one_line(err) == "npvae: interrupted while starting", err


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_ctrl_c_while_loading_data_is_one_line_and_130(run1, monkeypatch, capsys, tmp_path, command):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "load", interrupted)
    argv = {"train": ["train", "--out", str(tmp_path / "r"), *SMALL],
            "evaluate": ["evaluate", "--checkpoint", str(run1 / CKPT), "--k", "2"]}[command]
    assert cli.main(argv) == 130
    assert one_line(capsys.readouterr().err) == f"npvae {command}: interrupted"
    assert not (tmp_path / "r").exists()


# --- 10. fit's callbacks -------------------------------------------------------------------------
@pytest.mark.parametrize("callbacks", [print, None, [print, "not a function"], "abc"])
def test_fit_refuses_callbacks_that_are_not_a_list_of_functions(callbacks):
    x = np.random.default_rng(0).uniform(size=(20, 16)).astype("float32")
    model = npvae.VAE(16, (4,), 2, seed=0)
    params = npvae.to_numpy(model.params).copy()
    with pytest.raises(ValueError, match=r"^callbacks: expected a list of functions cb\(model, row\), got "):
        npvae.fit(model, x, epochs=1, callbacks=callbacks, progress=False)
    assert model.train_state is None and np.array_equal(npvae.to_numpy(model.params), params)


# --- 17, 24. the epoch line and the history say what they hold -----------------------------------
@pytest.mark.slow
def test_the_epoch_line_shows_the_true_elbo_and_names_the_objective(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", "--epochs", "2", "--beta", "4", "--out", str(out), *SMALL]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    history = npvae.load(out / CKPT).train_state.history
    for line, row in zip(lines, history, strict=True):
        assert f"-ELBO {row['reconstruction'] + row['kl']:8.2f} " in line  # before: rec + 4 KL
        assert f"objective (beta-weighted) {row['loss']:8.2f}" in line
        assert row["neg_elbo"] == pytest.approx(row["reconstruction"] + row["kl"], rel=1e-12)
    with open(out / "history.csv") as f:
        header = f.readline().strip().split(",")
    assert {"loss", "neg_elbo", "lr"} <= set(header)
    capsys.readouterr()
    assert cli.main(["train", "--epochs", "1", "--out", str(tmp_path / "b1"), *SMALL]) == 0
    assert "objective" not in capsys.readouterr().out  # beta 1, no warm-up: the objective is -ELBO


@pytest.mark.slow
def test_the_history_records_every_epochs_lr(run1, tmp_path):
    out = copy_run(run1, tmp_path / "r")
    assert cli.main(["train", "--resume", str(out / CKPT), "--epochs", "3", "--lr", "0.0005", "--no-progress"]) == 0
    history = npvae.load(out / CKPT).train_state.history
    assert history.column("lr") == [1e-3, 5e-4, 5e-4]
    assert npvae.History.from_csv(out / "history.csv").column("lr") == [1e-3, 5e-4, 5e-4]


@pytest.mark.slow
def test_history_rows_without_the_new_columns_are_refused(run1, tmp_path):
    # npvae was never released without neg_elbo and lr: a row that lacks them is not a checkpoint
    # this npvae wrote (Step 9 still loaded such rows, for files that never existed).
    model = npvae.load(run1 / CKPT)
    for column in ("lr", "neg_elbo"):
        row = model.train_state.history[0]
        value = row.pop(column)
        with pytest.raises(npvae.CheckpointError, match=rf"not written: history\[0\]: missing key '{column}'$"):
            npvae.save(model, tmp_path / CKPT)
        row[column] = value
    assert not (tmp_path / CKPT).exists()


@pytest.mark.slow
def test_a_history_row_with_a_bad_lr_is_refused(run1, tmp_path):
    model = npvae.load(run1 / CKPT)
    model.train_state.history[0]["lr"] = "fast"
    with pytest.raises(npvae.CheckpointError, match=r"history\[0\]\.lr: expected a finite number, got 'fast'$"):
        npvae.save(model, tmp_path / CKPT)


# --- 18, 19, 22. write errors and the go-on command ----------------------------------------------
@pytest.mark.slow
def test_a_write_error_names_the_file_says_what_is_saved_and_how_to_go_on(run1, tmp_path, monkeypatch, capsys):
    spaced = copy_run(run1, tmp_path / "my run")
    out = tmp_path / "other out"
    real = train.History.to_csv

    def full_on_epoch_3(self, path):
        if len(self) == 3:
            with npvae.io.atomic_open(path, "w"):  # write() raises it without a file name
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, path)

    monkeypatch.setattr(train.History, "to_csv", full_on_epoch_3)
    argv = ["train", "--resume", str(spaced / CKPT), "--out", str(out), "--epochs", "4", "--no-progress"]
    assert cli.main(argv) == 1
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"npvae train: could not write {out / 'history.csv'}: No space left on device")
    assert "epochs 1-3 are saved in" in err and ".part" not in err
    go_on = err.split("Go on with: ")[1]
    assert shlex.split(go_on) == ["npvae", "train", "--resume", str(out / CKPT), "--epochs", "4"]


@pytest.mark.slow
def test_the_go_on_command_names_out_and_quotes_paths(run1, tmp_path, monkeypatch, capsys):
    spaced = copy_run(run1, tmp_path / "my run")
    out = tmp_path / "new out"

    def interrupted(model, path, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save", interrupted)  # Ctrl-C before epoch 2 is saved
    assert cli.main(["train", "--resume", str(spaced / CKPT), "--out", str(out), "--epochs", "4",
                     "--no-progress"]) == 130
    err = one_line(capsys.readouterr().err)
    assert f"epoch 1 is saved in {spaced / CKPT}" in err
    go_on = shlex.split(err.split("Go on with: ")[1])
    assert go_on == ["npvae", "train", "--resume", str(spaced / CKPT), "--epochs", "4", "--out", str(out)]


def test_atomic_open_names_the_target_not_its_temporary_file(tmp_path):
    target = tmp_path / "a.txt"
    with pytest.raises(OSError) as info:
        with npvae.io.atomic_open(target, "w"):
            raise OSError(errno.EFBIG, "File too large")
    assert info.value.filename == str(target) and ".part" not in str(info.value)
    assert not list(tmp_path.iterdir())


# --- 20. nothing to train -------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_with_no_epochs_left_says_so(run1, tmp_path, capsys):
    out = copy_run(run1, tmp_path / "r")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["train", "--resume", str(out / CKPT), "--epochs", "1", "--no-progress"]) == 2
    err = one_line(capsys.readouterr().err)
    assert err == (f"npvae train: error: --epochs: nothing to train: {out / CKPT} already has 1 epoch; "
                   "give --epochs > 1")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_sigterm_is_held_back_while_a_run_saves_then_raised_as_terminated():
    finished = []
    with pytest.raises(npvae.io.Terminated):
        with npvae.io.terminate_as_interrupt():
            with npvae.io.interrupts_deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                finished.append("the save went on")
    assert finished == ["the save went on"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
