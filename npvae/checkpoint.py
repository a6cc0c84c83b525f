"""Checkpoints: a model, its optimizer and its training progress in one ``.npz`` file.

    model.save("run/checkpoint.npz")        # or npvae.checkpoint.save(model, path)
    model = npvae.load("run/checkpoint.npz")
    npvae.fit(model, x, epochs=20, resume=True)   # goes on exactly where it stopped

The file is a NumPy ``.npz`` archive holding only plain arrays, read back with
``allow_pickle=False``: a file that holds pickled Python objects is refused, never executed.

=================  =====================================================================
``meta``           a JSON string: format name and version, the model's config, the block
                   layout, the epoch and step counts, the history, the optimizer's
                   hyperparameters, the random generators' states, fit's settings
``params``         the flat parameter vector (P,)
``opt.<buffer>``   the optimizer's state arrays (P,) each, e.g. ``opt.m_sum``, ``opt.v_sum``
=================  =====================================================================

Writes are atomic (a temporary file, then a rename), so an interrupted save never destroys
the previous checkpoint. A truncated, corrupt or foreign file gives a ``CheckpointError``
that says what is wrong with which file.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

from .backend import Generator, to_numpy
from .io import atomic_open

FORMAT = "npvae-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """The file is not a checkpoint this version of npvae can read; the message says why."""


def save(model, path):
    """Write ``model`` (and ``model.train_state`` if it has one) to ``path`` atomically."""
    state = getattr(model, "train_state", None)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config,
        "blocks": [[name, a, b, list(shape)] for name, a, b, shape in model.blocks],
        "model_rng": model.rng.host.bit_generator.state,
    }
    arrays = {"params": to_numpy(model.params)}
    if state is not None:
        opt = state.optimizer.state_dict() if state.optimizer is not None else None
        meta.update({
            "epoch": state.epoch,
            "step": state.step,
            "history": list(state.history),
            "settings": state.settings,
            "optimizer": None if opt is None else {k: v for k, v in opt.items() if k != "buffers"},
            "data_rng": state.data_rng.host.bit_generator.state if state.data_rng else None,
            "noise_rng": state.noise_rng.host.bit_generator.state if state.noise_rng else None,
        })
        if opt is not None:
            arrays.update({f"opt.{name}": buf for name, buf in opt["buffers"].items()})
    with atomic_open(path, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta, default=_json_default)), **arrays)


def load(path):
    """Read a checkpoint written by ``save``: the model, with ``model.train_state`` restored
    when the file has one. Raises ``CheckpointError`` for anything else."""
    from .optim import from_state_dict
    from .train import History, TrainState
    from .vae import VAE

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = set(archive.files)
            if "meta" not in names or "params" not in names:
                raise CheckpointError(f"{path}: not an npvae checkpoint (expected arrays 'meta' and 'params', "
                                      f"found {sorted(names)})")
            meta = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in names if name != "meta"}
    except CheckpointError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise CheckpointError(f"{path}: holds pickled Python objects; refused (a checkpoint holds "
                                  "plain arrays only, and loading pickles can run arbitrary code)") from None
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt ({type(exc).__name__}: {exc})") from None

    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an npvae checkpoint (format {meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {meta.get('version')!r}; "
                              f"this npvae reads version {VERSION}")
    model = VAE(**meta["config"])
    params = arrays["params"]
    if params.shape != (model.n_params,):
        raise CheckpointError(f"{path}: params: expected shape ({model.n_params},) for the saved config, "
                              f"got {params.shape}")
    model.params[...] = model.backend.asarray(params, dtype=model.dtype)
    model.rng.host.bit_generator.state = meta["model_rng"]

    if "epoch" in meta:
        state = TrainState(epoch=int(meta["epoch"]), step=int(meta["step"]), history=History(meta["history"]),
                           settings=meta.get("settings") or {})
        if meta.get("optimizer") is not None:
            opt_state = dict(meta["optimizer"])
            opt_state["buffers"] = {name[4:]: arr for name, arr in arrays.items() if name.startswith("opt.")}
            try:
                state.optimizer = from_state_dict(opt_state, model.params)
            except (ValueError, KeyError) as exc:
                raise CheckpointError(f"{path}: optimizer state: {exc}") from None
        for key in ("data_rng", "noise_rng"):
            if meta.get(key) is not None:
                rng = Generator(0)
                rng.host.bit_generator.state = meta[key]
                setattr(state, key, rng)
        model.train_state = state
    return model


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's metadata")
