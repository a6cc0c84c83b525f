"""Checkpoints: a model, its optimizer and its training progress in one ``.npz`` file.

    npvae.save(model, "run/checkpoint.npz")
    model = npvae.load("run/checkpoint.npz")
    npvae.fit(model, x, epochs=20, resume=True)   # goes on exactly where it stopped

The file is a NumPy ``.npz`` archive of plain arrays, uncompressed (``np.savez``), read back
with ``allow_pickle=False``: a file that holds pickled Python objects is refused, never
executed, and one with compressed members is refused before anything is inflated. Its arrays
are ``params`` (P,) and the optimizer's buffers ``opt.<name>`` (P,) each (Adam's ``opt.m``
and ``opt.v``), all finite, second moments >= 0, and ``meta``, a JSON string: ``format``
("npvae-checkpoint"), ``version`` (3; 2 is read too, see ``RENAMED_IN_3``), ``config``
(``model.config``, so that ``VAE(**config)`` rebuilds the model), ``blocks`` (the layout of ``params``), ``model_rng``
(a PCG64 state) and, for a model trained by ``fit``, all a run needs to resume or be
evaluated: ``epoch``, ``step``, ``history`` (a row of ``train.HISTORY_COLUMNS`` per epoch),
``settings`` (fit's, ``train.DEFAULTS``' keys, with the data set's name or null),
``optimizer`` (its ``state_dict()`` less the buffers, or null) and fit's PCG64 states
``data_rng`` and ``noise_rng`` (null only without an optimizer).

Writes are atomic (a temporary file, then a rename), so an interrupted save never destroys the
previous checkpoint, and ``save`` refuses to write what ``load`` would refuse (parameters that
are not all finite, say). ``load`` checks the file (the archive, the keys above, the arrays'
names, dtypes and shapes against the config, their size against this machine's memory, their
values) before it builds or allocates anything, and leaves the settings to the code that
takes them: fit's settings check, ``VAE(**config)``, ``optim.from_state_dict``. A truncated,
corrupt, foreign or hostile file gives one line of ``CheckpointError`` naming the file and
what is wrong with it.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import pickletools
import zipfile
import zlib

import numpy as np

from .backend import DTYPES, to_numpy
from .checks import check_int, is_integer, memory_bytes, one_line, shown
from .io import atomic_open, open_regular
from .optim import from_state_dict
from .random import Generator
from .train import DEFAULTS, HISTORY_COLUMNS, History, TrainState, check_settings
from .vae import VAE, memory_estimate, parameter_count

FORMAT = "npvae-checkpoint"
VERSION = 3  # written; read: 2 and 3
# Version 2 is npvae before Step 12, when posterior "full" had L's absolute entries below the
# diagonal: it reads as "full-absolute", the same model (version 3's "full" is scale-relative).
RENAMED_IN_3 = {"full": "full-absolute"}

MODEL_KEYS = ("format", "version", "config", "blocks", "model_rng")
TRAINING_KEYS = ("epoch", "step", "history", "settings", "optimizer", "data_rng", "noise_rng")
CONFIG_KEYS = ("input_dim", "hidden_dims", "latent_dim", "likelihood", "activation", "dtype", "seed", "posterior")
SECOND_MOMENTS = ("sum_sq", "v")  # optimizer buffers that cannot be negative
MAX_META_BYTES = 256 << 20  # the JSON metadata, stored as UTF-32: about 700 bytes an epoch of history


class CheckpointError(ValueError):
    """The file is not a checkpoint this version of npvae can read; the message says why."""


class _Invalid(ValueError):
    """One thing wrong with a checkpoint, found by this module: str() is '<where>: <what>'."""


def save(model, path, before_replace=None):
    """Write ``model`` (and ``model.train_state`` if it has one) to ``path`` atomically;
    ``before_replace()`` runs just before the new file takes ``path``'s name (see
    ``io.atomic_open``). A ``CheckpointError`` (and nothing written) when ``load`` would refuse
    the file: parameters or optimizer state not all finite, say."""
    path = os.fspath(path)
    meta = {"format": FORMAT, "version": VERSION, "config": model.config,
            "blocks": [[name, a, b, list(shape)] for name, a, b, shape in model.blocks],
            "model_rng": model.rng.host.bit_generator.state}
    arrays = {"params": to_numpy(model.params)}
    state = getattr(model, "train_state", None)
    if state is not None:
        opt = state.optimizer.state_dict() if state.optimizer is not None else None
        buffers = opt.pop("buffers") if opt is not None else {}
        rngs = {key: getattr(state, key).host.bit_generator.state if getattr(state, key) else None
                for key in ("data_rng", "noise_rng")}
        meta.update(epoch=state.epoch, step=state.step, history=list(state.history), settings=state.settings,
                    optimizer=opt, **rngs)
        arrays.update({f"opt.{name}": buf for name, buf in buffers.items()})
    try:  # check what would be written exactly as load will read it
        text = json.dumps(meta, default=_json_default)
        _check_meta_size(4 * len(text))
        checked = _check_meta(json.loads(text))
        _check_specs({name: (a.shape, a.dtype, a.nbytes) for name, a in arrays.items()}, checked)
        _check_values(arrays, checked)
    except (TypeError, ValueError) as bad:
        raise CheckpointError(f"{path}: not written: {one_line(bad)}") from None
    with atomic_open(path, "wb", before_replace=before_replace) as f:
        np.savez(f, meta=np.array(text), **arrays)


def load(path):
    """The model in a checkpoint written by ``save``, with ``model.train_state`` when the file
    has one. Anything else: one line of ``CheckpointError`` naming the file and the problem
    (``FileNotFoundError`` when there is no file)."""
    path = os.fspath(path)
    try:  # a directory, FIFO, socket or device is refused before it is opened for reading
        file = open_regular(path, "checkpoint file")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file") from None
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or one_line(exc)})") from None
    try:
        with file:  # one open file throughout: a save that replaces the file meanwhile changes nothing here
            meta, arrays = _read(file)
        return _build(meta, arrays)
    except ValueError as bad:  # what is wrong with the file, or what a constructor refused in it
        raise CheckpointError(f"{path}: {one_line(bad)}") from None


def _read(file):
    """(meta, arrays) from an open checkpoint file, every array's name, dtype, shape and size
    checked from its header before its data is read."""
    head = _guard(file.read, 8)
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        raise _Invalid(_not_a_zip(file, head))
    file.seek(0)
    with _guard(zipfile.ZipFile, file) as archive:
        members = _guard(_members, archive)
        specs = {name: _guard(_read_header, archive, info, name) for name, info in members.items()}
        for name, (_shape, dtype, _nbytes) in specs.items():
            if dtype.hasobject:
                raise _Invalid(f"holds pickled Python objects; refused (array {name!r} has dtype object; a "
                               "checkpoint holds plain arrays only, and loading pickles can run arbitrary code)")
        meta = _check_meta(_guard(_read_meta, archive, members["meta"], specs["meta"]))
        count, need = _check_specs(specs, meta)
        total = memory_bytes()
        if total and need > total:
            raise _Invalid(f"config: a model of {count} parameters needs {need / 2**30:.1f} GiB to load, more than "
                           f"this machine's {total / 2**30:.1f} GiB of memory")
        arrays = {name: _guard(_read_array, archive, info) for name, info in members.items() if name != "meta"}
    return meta, _check_values(arrays, meta)


def _build(meta, arrays):
    """The model (and its training state) from a checked file; the settings are checked by
    the constructors, whose ValueErrors name the key."""
    model = _within("config", VAE, **meta["config"])
    expected = [[name, a, b, list(shape)] for name, a, b, shape in model.blocks]
    for i, (got, want) in enumerate(itertools.zip_longest(meta["blocks"], expected)):
        if got != want:
            raise _Invalid(f"blocks: do not match the layout of the config: block {i} is {shown(got)}, "
                           f"expected {shown(want)}")
    model.params[...] = model.backend.asarray(arrays["params"], dtype=model.dtype)
    model.rng.host.bit_generator.state = meta["model_rng"]  # checked by Generator.from_state
    if "epoch" in meta:
        state = TrainState(epoch=meta["epoch"], step=meta["step"], history=History(meta["history"]),
                           settings=meta["settings"])
        if meta["optimizer"] is not None:
            buffers = {name[4:]: a for name, a in arrays.items() if name.startswith("opt.")}
            state.optimizer = _within("optimizer", from_state_dict, {**meta["optimizer"], "buffers": buffers},
                                      model.params)
        for key in ("data_rng", "noise_rng"):
            if meta[key] is not None:
                setattr(state, key, Generator.from_state(meta[key]))
        model.train_state = state
    return model


def _not_a_zip(file, head) -> str:
    """What a file that does not start like a zip archive is, for the error message."""
    if head.startswith(np.lib.format.MAGIC_PREFIX):
        return "not an npvae checkpoint (expected an .npz archive, found a .npy array)"
    if not head:
        return "not an npz archive (truncated or corrupt?): the file is empty"
    file.seek(0)
    start = file.read(1 << 20)
    if _is_pickle(start):
        return ("holds pickled Python objects; refused (a checkpoint holds plain arrays only, and loading "
                "pickles can run arbitrary code)")
    text = start[:4096].decode("utf-8", errors="ignore")  # (a character cut at the end)
    if text and all(c.isprintable() or c in "\t\n\r\f" for c in text):
        return "not an npvae checkpoint (expected an .npz archive, found text)"
    return "not an npz archive (truncated or corrupt?)"


def _is_pickle(data: bytes) -> bool:
    """Pickles of protocol 2 and later announce themselves; for 0 and 1, ``pickletools.dis``
    (which parses and checks the opcode stream, and runs nothing) must get through to STOP."""
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return True
    try:
        pickletools.dis(data, out=io.StringIO())
    except Exception:
        return False
    return True


def _guard(read, *args):
    """``read(*args)``, any error from reading the file (zipfile, zlib, NumPy's .npy parser)
    turned into one line: "truncated or corrupt (...)"."""
    try:
        return read(*args)
    except _Invalid:
        raise
    except Exception as exc:
        kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        text = one_line(exc)
        raise _Invalid(f"truncated or corrupt ({kind}{': ' + text if text else ''})") from None


def _read_array(archive, info):
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _members(archive) -> dict:
    """{array name: ZipInfo}, refusing compressed members and anything but the arrays
    ``meta``, ``params`` and ``opt.<buffer>``."""
    members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
    if "meta" not in members or "params" not in members:
        raise _Invalid(f"not an npvae checkpoint (expected arrays 'meta' and 'params', found {shown(sorted(members))})")
    for name, info in members.items():
        if name not in ("meta", "params") and not name.startswith("opt."):
            raise _Invalid(f"unexpected array {shown(name)} (expected meta, params and opt.<buffer>)")
        if info.compress_type != zipfile.ZIP_STORED:  # save stores; inflating could fill memory (a zip bomb)
            method = zipfile.compressor_names.get(info.compress_type, f"method {info.compress_type}")
            raise _Invalid(f"{shown(info.filename)}: a compressed member ({method}); npvae writes "
                           "uncompressed checkpoints and does not inflate compressed members")
    return members


def _read_header(archive, info, name):
    """(shape, dtype, nbytes) from an array's .npy header, reading no data."""
    with archive.open(info) as f:  # NumPy's parser's errors: "truncated or corrupt" (see _guard)
        read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        shape, _fortran, dtype = read[np.lib.format.read_magic(f)](f)
        header_bytes = f.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and info.file_size - header_bytes != nbytes:
        raise _Invalid(f"{name}: truncated or corrupt (its header says {shape} {dtype}, {nbytes} bytes; "
                       f"the archive holds {info.file_size - header_bytes})")
    return shape, dtype, nbytes


def _read_meta(archive, info, spec):
    shape, dtype, nbytes = spec
    if shape != () or dtype.kind != "U":
        raise _Invalid(f"meta: expected a JSON string, got an array of shape {shape} and dtype {dtype}")
    _check_meta_size(nbytes)
    with archive.open(info) as f:
        text = np.lib.format.read_array(f, allow_pickle=False).item()
    try:
        return json.loads(text)
    except RecursionError:
        raise _Invalid("meta: not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise _Invalid(f"meta: not valid JSON ({one_line(exc)})") from None


def _check_meta_size(nbytes):
    if nbytes > MAX_META_BYTES:
        raise _Invalid(f"meta: {nbytes} bytes, more than the {MAX_META_BYTES} a checkpoint's metadata may have")


def _check_meta(meta) -> dict:
    """``meta``'s keys (see the module docstring) and the values the arrays are checked
    against (the sizes, the dtype, the generators' states, the history); fit's settings by
    fit's own check. ``VAE(**config)`` and ``optim.from_state_dict`` check the rest."""
    if not isinstance(meta, dict):
        _fail("meta", "a JSON object", meta)
    if meta.get("format") != FORMAT:
        raise _Invalid(f"not an npvae checkpoint (format {shown(meta.get('format'))})")
    version = meta.get("version")
    if not (is_integer(version) and version in (2, VERSION)):
        newer = " (written by a newer npvae?)" if is_integer(version) and version > VERSION else ""
        raise _Invalid(f"checkpoint format version {shown(version)}; this npvae reads versions 2 and {VERSION}{newer}")
    trained = any(key in meta for key in TRAINING_KEYS)
    _keys("meta", meta, MODEL_KEYS + (TRAINING_KEYS if trained else ()))

    _keys("config", meta["config"], CONFIG_KEYS)  # the sizes are checked where they are used (parameter_count)
    if version == 2 and isinstance(meta["config"]["posterior"], str):
        meta["config"]["posterior"] = RENAMED_IN_3.get(meta["config"]["posterior"], meta["config"]["posterior"])
    if not (isinstance(meta["config"]["dtype"], str) and meta["config"]["dtype"] in DTYPES):
        _fail("config.dtype", f"one of {', '.join(DTYPES)}", meta["config"]["dtype"])
    if not isinstance(meta["blocks"], list):
        _fail("blocks", "a list of [name, start, stop, shape]", meta["blocks"])
    Generator.from_state(meta["model_rng"], "model_rng")
    if not trained:
        return meta

    History.checked(meta["history"], check_int("epoch", meta["epoch"], minimum=0))
    check_int("step", meta["step"], minimum=0)
    if isinstance(meta["settings"], dict) and "k" not in meta["settings"]:  # saved before k: the ELBO
        meta["settings"]["k"] = 1
    _within("settings", check_settings, _keys("settings", meta["settings"], tuple(DEFAULTS)))
    if meta["optimizer"] is not None and not isinstance(meta["optimizer"], dict):
        _fail("optimizer", "a JSON object or null", meta["optimizer"])
    for key in ("data_rng", "noise_rng"):
        if meta[key] is not None:
            Generator.from_state(meta[key], key)
        elif meta["optimizer"] is not None:  # fit always has both streams: resuming needs them
            _fail(key, "the state of a NumPy PCG64 generator (a checkpoint with an optimizer state resumes from it)",
                  None)
    return meta


def _check_specs(specs, meta) -> int:
    """The arrays' names, dtypes and shapes (from their headers) against ``meta``; returns the
    model's parameter count and the bytes loading needs: the arrays as read, and the model
    (``vae.memory_estimate``)."""
    config = meta["config"]
    sizes = (config["input_dim"], config["hidden_dims"], config["latent_dim"], config["posterior"])
    count = _within("config", parameter_count, *sizes)  # refuses an unknown posterior
    for name in ["params", *sorted(set(specs) - {"meta", "params"})]:
        shape, dtype = specs[name][:2]
        if name.startswith("opt.") and meta.get("optimizer") is None:
            raise _Invalid(f"unexpected array {name!r} (expected meta, params)")
        if dtype.kind != "f":
            raise _Invalid(f"{name}: expected a real floating-point array, got dtype {dtype}")
        if tuple(shape) != (count,):
            raise _Invalid(f"{name}: expected shape ({count},) for the saved config, got {tuple(shape)}")
    return count, sum(spec[2] for spec in specs.values()) + memory_estimate(*sizes, config["dtype"]).total


def _check_values(arrays, meta) -> dict:
    """Finite parameters and optimizer state (as the model's dtype), second moments >= 0;
    returns the arrays converted to the model's dtype."""
    dtype = np.dtype(meta["config"]["dtype"])
    out = {}
    for name in sorted(arrays):
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.asarray(arrays[name], dtype=dtype)
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise _Invalid(f"{name}: expected finite values, got {bad} NaN or inf {'entry' if bad == 1 else 'entries'}"
                           + ("" if arrays[name].dtype == dtype else f" (as {dtype})"))
        negative = int(np.count_nonzero(a < 0)) if name[4:] in SECOND_MOMENTS else 0
        if negative:
            raise _Invalid(f"{name}: expected values >= 0 (a second moment), got {negative} negative "
                           f"{'entry' if negative == 1 else 'entries'}")
        out[name] = a
    return out


def _within(where, make, *args, **kwargs):
    """``make(*args, **kwargs)``; its ValueError ("lr: expected ...") as one naming ``where``."""
    try:
        return make(*args, **kwargs)
    except ValueError as exc:
        raise _Invalid(f"{where}: {exc}") from None


def _keys(where, obj, required) -> dict:
    """``obj``, a JSON object with exactly the keys ``required``."""
    if not isinstance(obj, dict):
        _fail(where, "a JSON object", obj)
    missing, extra = [k for k in required if k not in obj], [k for k in obj if k not in required]
    if missing or extra:
        raise _Invalid(f"{where}: missing key {missing[0]!r}" if missing else f"{where}: unexpected key {shown(extra[0])}")
    return obj


def _fail(where, expected, got):
    raise _Invalid(f"{where}: expected {expected}, got {shown(got)}")


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    raise TypeError(f"meta: cannot store {type(value).__name__} in a checkpoint's metadata")
