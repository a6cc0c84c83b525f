"""Checkpoints: a model, its optimizer and its training progress in one ``.npz`` file.

    npvae.save(model, "run/checkpoint.npz")
    model = npvae.load("run/checkpoint.npz")
    npvae.fit(model, x, epochs=20, resume=True)   # goes on exactly where it stopped

The file is a NumPy ``.npz`` archive holding only plain arrays, uncompressed (``np.savez``),
read back with ``allow_pickle=False``: a file that holds pickled Python objects is refused,
never executed, and one with compressed members is refused before anything is inflated.
A checkpoint is self-sufficient: it carries the model, and for a model trained by ``fit``
everything needed to resume or evaluate the run (fit's settings, the data set's name).

=================  =====================================================================
``meta``           a JSON string, the object below
``params``         the flat parameter vector (P,), real floating point, finite
``opt.<buffer>``   the optimizer's state arrays (P,) each, e.g. Adam's ``opt.m``, ``opt.v``
                   (finite; second moments ``sum_sq``, ``v`` >= 0)
=================  =====================================================================

``meta`` (version 2; the training keys are there exactly when the model has a training state):

=================  =====================================================================
``format``         ``"npvae-checkpoint"``
``version``        2
``config``         the model's arguments: input_dim, hidden_dims, latent_dim, likelihood,
                   activation, dtype, seed (an integer >= 0 or null), posterior
``blocks``         the layout of ``params``: [name, start, stop, shape] per block
``model_rng``      the state of the model's PCG64 generator (``model.rng``)
``epoch, step``    epochs completed and optimizer steps taken
``history``        one row per epoch (``train.HISTORY_COLUMNS``), epochs 1 .. epoch
``settings``       fit's settings: batch_size, optimizer, lr, beta, kl_warmup_epochs,
                   binarize, seed, and ``dataset`` (the data's name, or null for arrays
                   passed from Python)
``optimizer``      name, t and exactly that optimizer's hyperparameters (or null)
``data_rng``       fit's PCG64 state for the data order and binarization (null only
                   when ``optimizer`` is null: a run with an optimizer state resumes from it)
``noise_rng``      fit's PCG64 state for eps (null only when ``optimizer`` is null)
=================  =====================================================================

Writes are atomic (a temporary file, then a rename), so an interrupted save never destroys
the previous checkpoint, and ``save`` refuses to write what ``load`` would refuse (a model
whose parameters are not all finite, say). ``load`` checks the whole file against the layout
above (array sizes from the arrays' headers) before it builds or allocates anything: a
truncated, corrupt, foreign or hostile file gives one line of ``CheckpointError`` naming the
file and what is wrong with it.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickletools
import reprlib
import zipfile
import zlib

import numpy as np

from .backend import DTYPES, get_backend, to_numpy
from .checks import memory_bytes
from .random import Generator
from .io import atomic_open, open_regular

FORMAT = "npvae-checkpoint"
VERSION = 2

SETTINGS = ("batch_size", "optimizer", "lr", "beta", "kl_warmup_epochs", "binarize", "seed", "dataset")
TRAINING_KEYS = ("epoch", "step", "history", "settings", "optimizer", "data_rng", "noise_rng")
MODEL_KEYS = ("format", "version", "config", "blocks", "model_rng")
CONFIG_KEYS = ("input_dim", "hidden_dims", "latent_dim", "likelihood", "activation", "dtype", "seed", "posterior")
SECOND_MOMENTS = ("sum_sq", "v")  # optimizer buffers that cannot be negative
MAX_META_BYTES = 256 << 20  # the JSON metadata, stored as UTF-32: about 700 bytes an epoch of history


class CheckpointError(ValueError):
    """The file is not a checkpoint this version of npvae can read; the message says why."""


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------
def save(model, path, before_replace=None):
    """Write ``model`` (and ``model.train_state`` if it has one) to ``path`` atomically.

    Raises ``CheckpointError`` (and writes nothing, so a previous file stays as it was) when
    the checkpoint would not load: parameters or optimizer state not all finite, say.
    ``before_replace()`` runs once the new file is written, just before it takes ``path``'s
    name (see ``io.atomic_open``).
    """
    path = os.fspath(path)
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
    try:
        text = json.dumps(meta, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not written: meta: {_one_line(exc)}") from None
    try:  # check what would be written exactly as load will read it
        if 4 * len(text) > MAX_META_BYTES:
            raise _Invalid(f"meta: {4 * len(text)} bytes, more than the {MAX_META_BYTES} a checkpoint's "
                           "metadata may have")
        checked = _validate_meta(json.loads(text))
        _validate_specs({name: (a.shape, a.dtype) for name, a in arrays.items()}, checked)
        _validate_values(arrays, checked)
    except _Invalid as bad:
        raise CheckpointError(f"{path}: not written: {bad}") from None
    with atomic_open(path, "wb", before_replace=before_replace) as f:
        np.savez(f, meta=np.array(text), **arrays)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------
def load(path):
    """Read a checkpoint written by ``save``: the model, with ``model.train_state`` restored
    when the file has one.

    The whole file is checked before anything is built from it; anything that is not a
    valid checkpoint raises ``CheckpointError``, one line naming the file and the problem
    (``FileNotFoundError`` when there is no file).
    """
    from .optim import from_state_dict
    from .train import History, TrainState
    from .vae import VAE, parameter_count

    path = os.fspath(path)
    try:  # a directory, FIFO, socket or device is refused before it is opened for reading
        file = open_regular(path, "checkpoint file")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such checkpoint file") from None
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.strerror or _one_line(exc)})") from None
    with file:  # one open file throughout: a save that replaces the file meanwhile changes nothing here
        head = _guard(path, file.read, 8)
        if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise CheckpointError(f"{path}: {_not_a_zip(file, head)}")
        file.seek(0)
        with _guard(path, zipfile.ZipFile, file) as archive:
            # 1. what the archive holds, from its directory and the arrays' headers
            members = _guard(path, _members, archive, path)
            specs = {name: _guard(path, _read_header, archive, info, name, path) for name, info in members.items()}
            for name, (_shape, dtype, _nbytes) in specs.items():
                if dtype.hasobject:
                    raise CheckpointError(f"{path}: holds pickled Python objects; refused (array {name!r} has "
                                          "dtype object; a checkpoint holds plain arrays only, and loading "
                                          "pickles can run arbitrary code)")
            # 2. the metadata against the schema, the arrays' names, dtypes and shapes against it
            meta = _guard(path, _read_meta, archive, members["meta"], specs["meta"], path)
            try:
                meta = _validate_meta(meta)
                _validate_specs({name: spec[:2] for name, spec in specs.items()}, meta)
            except _Invalid as bad:
                raise CheckpointError(f"{path}: {bad}") from None
            config = meta["config"]
            count = parameter_count(config["input_dim"], config["hidden_dims"], config["latent_dim"], config["posterior"])
            # the arrays as read, then the model's params, grads and up to two optimizer buffers
            need = sum(spec[2] for spec in specs.values()) + 4 * np.dtype(config["dtype"]).itemsize * count
            total = memory_bytes()
            if total and need > total:
                raise CheckpointError(f"{path}: config: a model of {count} parameters needs {need / 2**30:.1f} GiB "
                                      f"to load, more than this machine's {total / 2**30:.1f} GiB of memory")
            # 3. the arrays' values
            arrays = {name: _guard(path, _read_array, archive, info)
                      for name, info in members.items() if name != "meta"}
    try:
        arrays = _validate_values(arrays, meta)
    except _Invalid as bad:
        raise CheckpointError(f"{path}: {bad}") from None

    # Everything checked: build.
    try:
        model = VAE(**config)
    except ValueError as exc:  # e.g. a model that does not fit in this machine's memory
        raise CheckpointError(f"{path}: config: {_one_line(exc)}") from None
    expected = [[name, a, b, list(shape)] for name, a, b, shape in model.blocks]
    if meta["blocks"] != expected:
        if len(meta["blocks"]) != len(expected):
            raise CheckpointError(f"{path}: blocks: do not match the layout of the config ({len(meta['blocks'])} "
                                  f"blocks, expected {len(expected)})")
        i = next(i for i, (got, want) in enumerate(zip(meta["blocks"], expected)) if got != want)
        raise CheckpointError(f"{path}: blocks: do not match the layout of the config: block {i} is "
                              f"{_show(meta['blocks'][i])}, expected {_show(expected[i])}")
    model.params[...] = model.backend.asarray(arrays["params"], dtype=model.dtype)
    model.rng.host.bit_generator.state = meta["model_rng"]

    if "epoch" in meta:
        state = TrainState(epoch=meta["epoch"], step=meta["step"], history=History(meta["history"]),
                           settings=meta["settings"])
        if meta["optimizer"] is not None:
            opt_state = dict(meta["optimizer"])
            opt_state["buffers"] = {name[4:]: arr for name, arr in arrays.items() if name.startswith("opt.")}
            try:
                state.optimizer = from_state_dict(opt_state, model.params)
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{path}: optimizer: {_one_line(exc)}") from None
        for key in ("data_rng", "noise_rng"):
            if meta[key] is not None:
                rng = Generator(0)
                rng.host.bit_generator.state = meta[key]
                setattr(state, key, rng)
        model.train_state = state
    return model


# ---------------------------------------------------------------------------------------
# Reading the archive without trusting it
# ---------------------------------------------------------------------------------------
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
    sample = start[:4096]
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:  # text, unless only a character cut at the sample's end
        text = sample[: exc.start].decode("utf-8") if exc.start >= len(sample) - 3 and len(start) > 4096 else None
    if text is not None and all(c.isprintable() or c in "\t\n\r\f" for c in text):
        return "not an npvae checkpoint (expected an .npz archive, found text)"
    return "not an npz archive (truncated or corrupt?)"


def _is_pickle(data: bytes) -> bool:
    """True when ``data`` is a pickle: protocol 2 and later announce themselves; for 0 and 1,
    ``pickletools.dis`` (which parses and checks the opcode stream, and runs nothing) must
    get through it to the STOP."""
    if len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5:
        return True
    try:
        pickletools.dis(data, out=_Discard())
    except Exception:
        return False
    return True


class _Discard(io.TextIOBase):
    def write(self, s):
        return len(s)


def _guard(path, read, *args):
    """``read(*args)``, any error from reading the file (zipfile, zlib, NumPy's .npy parser)
    turned into one line of CheckpointError."""
    try:
        return read(*args)
    except CheckpointError:
        raise
    except Exception as exc:
        kind = "zlib.error" if isinstance(exc, zlib.error) else type(exc).__name__
        text = _one_line(exc)
        raise CheckpointError(f"{path}: truncated or corrupt ({kind}{': ' + text if text else ''})") from None


def _read_array(archive, info):
    with archive.open(info) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _members(archive, path) -> dict:
    """{array name: ZipInfo}, refusing duplicates and anything but ``meta``, ``params`` and
    ``opt.<buffer>`` arrays."""
    members, other = {}, []
    for info in archive.infolist():
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name in members:
            raise CheckpointError(f"{path}: corrupt: the archive holds {info.filename!r} twice")
        members[name] = info
        if not info.filename.endswith(".npy"):
            other.append(info.filename)
    if "meta" not in members or "params" not in members:
        found = sorted(members)
        shown = _show(found) if len(found) <= 10 else _show(found[:10])[:-1] + ", ...]"
        raise CheckpointError(f"{path}: not an npvae checkpoint (expected arrays 'meta' and 'params', found {shown})")
    if other:
        raise CheckpointError(f"{path}: unexpected member {_show(other[0])} (a checkpoint holds .npy arrays only)")
    for name in members:
        if name not in ("meta", "params") and not name.startswith("opt."):
            raise CheckpointError(f"{path}: unexpected array {_show(name)} (expected meta, params and opt.<buffer>)")
    for info in members.values():  # save stores; inflating could fill memory (a zip bomb)
        if info.compress_type != zipfile.ZIP_STORED:
            method = _COMPRESSION.get(info.compress_type, f"method {info.compress_type}")
            raise CheckpointError(f"{path}: {_show(info.filename)}: a compressed member ({method}); npvae writes "
                                  "uncompressed checkpoints and does not inflate compressed members")
    return members


_COMPRESSION = {zipfile.ZIP_DEFLATED: "deflate", zipfile.ZIP_BZIP2: "bzip2", zipfile.ZIP_LZMA: "lzma"}


def _read_header(archive, info, name, path):
    """(shape, dtype, nbytes) from an array's .npy header, reading no data."""
    try:
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            header_bytes = f.tell()
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError):
        raise  # the archive itself is damaged: "truncated or corrupt"
    except Exception as exc:  # NumPy's header parser: ValueError, SyntaxError, tokenize.TokenError...
        text = _one_line(exc)
        raise CheckpointError(f"{path}: {name}: not a readable .npy array ({type(exc).__name__}"
                              f"{': ' + text if text else ''})") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and info.file_size - header_bytes != nbytes:
        raise CheckpointError(f"{path}: {name}: truncated or corrupt (its header says {shape} {dtype}, "
                              f"{nbytes} bytes; the archive holds {info.file_size - header_bytes})")
    return shape, dtype, nbytes


def _read_meta(archive, info, spec, path):
    shape, dtype, nbytes = spec
    if shape != () or dtype.kind != "U":
        raise CheckpointError(f"{path}: meta: expected a JSON string, got an array of shape {shape} and dtype {dtype}")
    if nbytes > MAX_META_BYTES:
        raise CheckpointError(f"{path}: meta: {nbytes} bytes, more than the {MAX_META_BYTES} a checkpoint's "
                              "metadata may have")
    with archive.open(info) as f:
        text = np.lib.format.read_array(f, allow_pickle=False).item()
    try:
        return json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{path}: meta: not valid JSON (nested too deeply)") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: meta: not valid JSON ({_one_line(exc)})") from None


# ---------------------------------------------------------------------------------------
# The schema
# ---------------------------------------------------------------------------------------
class _Invalid(Exception):
    """One thing wrong with a checkpoint: str() is '<where>: <what>'."""


def _fail(where, expected, got):
    raise _Invalid(f"{where}: expected {expected}, got {_show(got)}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int(where, v, minimum):
    if not _is_int(v) or v < minimum:
        _fail(where, "a positive integer" if minimum == 1 else "a non-negative integer", v)
    return v


def _is_float(v) -> bool:
    """True for a JSON number (int or float, not bool) that converts to a float."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        float(v)
    except OverflowError:
        return False
    return True


def _real(where, v, kind, ok=lambda x: True):
    """A finite JSON number for which ``ok`` holds."""
    if not (_is_float(v) and math.isfinite(float(v)) and ok(float(v))):
        _fail(where, kind, v)
    return v


def _keys(where, obj, required, optional=()):
    if not isinstance(obj, dict):
        _fail(where, "a JSON object", obj)
    for key in required:
        if key not in obj:
            raise _Invalid(f"{where}: missing key {key!r}")
    for key in obj:
        if key not in required and key not in optional:
            raise _Invalid(f"{where}: unexpected key {_show(key)}")
    return obj


def _validate_meta(meta) -> dict:
    """``meta`` checked against the schema (see the module docstring). Raises ``_Invalid``."""
    from .optim import OPTIMIZERS
    from .train import BINARIZE, HISTORY_COLUMNS
    from .vae import ACTIVATIONS, LIKELIHOODS, POSTERIORS

    if not isinstance(meta, dict):
        _fail("meta", "a JSON object", meta)
    if meta.get("format") != FORMAT:
        raise _Invalid(f"not an npvae checkpoint (format {_show(meta.get('format'))})")
    version = meta.get("version")
    if not (_is_int(version) and version == VERSION):
        newer = " (written by a newer npvae?)" if _is_int(version) and version > VERSION else ""
        raise _Invalid(f"checkpoint format version {_show(version)}; this npvae reads version {VERSION}{newer}")
    trained = any(key in meta for key in TRAINING_KEYS)
    _keys("meta", meta, MODEL_KEYS + (TRAINING_KEYS if trained else ()))
    meta = dict(meta)

    config = _keys("config", meta["config"], CONFIG_KEYS)
    _int("config.input_dim", config["input_dim"], 1)
    hidden = config["hidden_dims"]
    if not (isinstance(hidden, list) and all(_is_int(h) and h >= 1 for h in hidden)):
        _fail("config.hidden_dims", "a list of positive integers", hidden)
    _int("config.latent_dim", config["latent_dim"], 1)
    for key, allowed in (("likelihood", LIKELIHOODS), ("activation", ACTIVATIONS), ("dtype", DTYPES),
                         ("posterior", POSTERIORS)):
        if not (isinstance(config[key], str) and config[key] in allowed):
            _fail(f"config.{key}", f"one of {', '.join(allowed)}", config[key])
    if config["seed"] is not None and not (_is_int(config["seed"]) and config["seed"] >= 0):
        _fail("config.seed", "a non-negative integer or null", config["seed"])

    _validate_blocks(meta["blocks"])
    _validate_rng("model_rng", meta["model_rng"])
    if not trained:
        return meta

    epoch = _int("epoch", meta["epoch"], 0)
    _int("step", meta["step"], 0)
    history = meta["history"]
    if not isinstance(history, list):
        _fail("history", f"a list of {epoch} rows", history)
    if len(history) != epoch:
        raise _Invalid(f"history: expected {epoch} rows (one per epoch), got {len(history)}")
    for i, row in enumerate(history):
        where = f"history[{i}]"
        _keys(where, row, HISTORY_COLUMNS)
        if not (_is_int(row["epoch"]) and row["epoch"] == i + 1):
            _fail(f"{where}.epoch", i + 1, row["epoch"])
        for key in HISTORY_COLUMNS:
            value = row.get(key)
            if key != "epoch" and value is not None and not _is_float(value):
                _fail(f"{where}.{key}", "a number or null", value)

    _validate_settings(meta["settings"], BINARIZE)

    opt = meta["optimizer"]
    if opt is not None:
        if not isinstance(opt, dict):
            _fail("optimizer", "a JSON object or null", opt)
        name = opt.get("name")
        if not (isinstance(name, str) and name in OPTIMIZERS):
            _fail("optimizer.name", f"one of {', '.join(OPTIMIZERS)}", name)
        hyper = OPTIMIZERS[name](get_backend().zeros((1,))).hyperparameters()
        _keys("optimizer", opt, ("name", "t", *hyper))
        _int("optimizer.t", opt["t"], 0)
        for key in hyper:
            kind, ok = _HYPER.get(key, ("a finite number", lambda x: True))
            _real(f"optimizer.{key}", opt[key], kind, ok)
    for key in ("data_rng", "noise_rng"):
        if meta[key] is not None:
            _validate_rng(key, meta[key])
        elif opt is not None:  # fit always has both streams: resuming needs them
            _fail(key, "the state of a NumPy PCG64 generator (a checkpoint with an optimizer state resumes from it)",
                  None)
    return meta


_HYPER = {  # what an optimizer's hyperparameter must be, by name (any other: a finite number)
    "lr": ("a positive number", lambda x: x > 0),
    "momentum": ("a non-negative number", lambda x: x >= 0),
    "eps": ("a non-negative number", lambda x: x >= 0),
    "beta1": ("a number in [0, 1)", lambda x: 0 <= x < 1),
    "beta2": ("a number in [0, 1)", lambda x: 0 <= x < 1),
}


def _validate_settings(settings, binarize_modes):
    """fit's settings."""
    _keys("settings", settings, SETTINGS)
    _int("settings.batch_size", settings["batch_size"], 1)
    if not isinstance(settings["optimizer"], str):
        _fail("settings.optimizer", "a string", settings["optimizer"])
    _real("settings.lr", settings["lr"], "a positive number", lambda x: x > 0)
    _real("settings.beta", settings["beta"], "a non-negative number", lambda x: x >= 0)
    _int("settings.kl_warmup_epochs", settings["kl_warmup_epochs"], 0)
    if not (isinstance(settings["binarize"], str) and settings["binarize"] in binarize_modes):
        _fail("settings.binarize", f"one of {', '.join(binarize_modes)}", settings["binarize"])
    _int("settings.seed", settings["seed"], 0)
    if settings["dataset"] is not None and not isinstance(settings["dataset"], str):
        _fail("settings.dataset", "a data set's name or null", settings["dataset"])


def _validate_blocks(blocks):
    """[name, start, stop, shape] rows that tile 0 .. P in order (compared with the model's
    own layout once it is built)."""
    if not isinstance(blocks, list):
        _fail("blocks", "a list of [name, start, stop, shape]", blocks)
    stop = 0
    for i, block in enumerate(blocks):
        ok = isinstance(block, list) and len(block) == 4 and isinstance(block[0], str)
        ok = ok and _is_int(block[1]) and _is_int(block[2]) and block[1] == stop and isinstance(block[3], list)
        ok = ok and all(_is_int(n) and n >= 1 for n in block[3]) and block[2] - block[1] == math.prod(block[3]) >= 1
        if not ok:
            _fail(f"blocks[{i}]", f"[name, {stop}, stop, shape] with stop - {stop} the size of shape", block)
        stop = block[2]


def _validate_rng(where, state):
    """A state that NumPy's PCG64 takes as it is (its setter quietly accepts some wrong ones)."""
    ok = isinstance(state, dict) and set(state) == {"bit_generator", "state", "has_uint32", "uinteger"}
    ok = ok and state["bit_generator"] == "PCG64" and isinstance(state["state"], dict)
    ok = ok and set(state["state"]) == {"state", "inc"}
    ok = ok and all(_is_int(v) and 0 <= v < 2**128 for v in state["state"].values()) and state["state"]["inc"] % 2 == 1
    ok = ok and state["has_uint32"] in (0, 1) and _is_int(state["has_uint32"])
    ok = ok and _is_int(state["uinteger"]) and 0 <= state["uinteger"] < 2**32
    if ok:
        try:
            generator = np.random.Generator(np.random.PCG64())
            generator.bit_generator.state = state
            ok = generator.bit_generator.state == state
        except (TypeError, ValueError, KeyError, OverflowError):
            ok = False
    if not ok:
        _fail(where, "the state of a NumPy PCG64 generator", state)


def _expected_arrays(meta) -> list:
    """The sets of array names a checkpoint with this (valid) meta may hold."""
    from .optim import OPTIMIZERS

    opt = meta.get("optimizer")
    return [{"meta", "params"} | ({f"opt.{b}" for b in OPTIMIZERS[opt["name"]].buffers} if opt else set())]


def _validate_specs(specs, meta):
    """The arrays' names, dtypes and shapes (from their headers) against the config."""
    from .vae import parameter_count

    allowed = _expected_arrays(meta)
    names = set(specs) | {"meta"}
    if names not in allowed:
        missing = sorted(allowed[0] - names)
        extra = sorted(names - set().union(*allowed))
        if missing and not extra:
            raise _Invalid(f"missing array {missing[0]!r}" + (f" (the {meta['optimizer']['name']} optimizer's state)"
                                                               if missing[0].startswith("opt.") else ""))
        unexpected = extra[0] if extra else sorted(names - allowed[0])[0]
        raise _Invalid(f"unexpected array {unexpected!r} (expected {', '.join(sorted(allowed[0]))})")
    config = meta["config"]
    count = parameter_count(config["input_dim"], config["hidden_dims"], config["latent_dim"], config["posterior"])
    for name in ["params", *sorted(names - {"meta", "params"})]:
        shape, dtype = specs[name]
        if dtype.kind != "f":
            _fail(name, "a real floating-point array", _Shown(f"dtype {dtype}"))
        if tuple(shape) != (count,):
            raise _Invalid(f"{name}: expected shape ({_show(count)},) for the saved config, got {tuple(shape)}")


def _validate_values(arrays, meta) -> dict:
    """Finite parameters and optimizer state (as the model's dtype), second moments >= 0;
    returns the arrays converted to the model's dtype."""
    dtype = np.dtype(meta["config"]["dtype"])
    out = {}
    for name in sorted(arrays):
        if name == "meta":
            continue
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.asarray(arrays[name], dtype=dtype)
        bad = a.size - int(np.count_nonzero(np.isfinite(a)))
        if bad:
            raise _Invalid(f"{name}: expected finite values, got {bad} NaN or inf {'entry' if bad == 1 else 'entries'}"
                           + ("" if arrays[name].dtype == dtype else f" (as {dtype})"))
        if name.startswith("opt.") and name[4:] in SECOND_MOMENTS:
            negative = int(np.count_nonzero(a < 0))
            if negative:
                raise _Invalid(f"{name}: expected values >= 0 (a second moment), got {negative} negative "
                               f"{'entry' if negative == 1 else 'entries'}")
        out[name] = a
    return out


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple = 3, 6, 4, 6
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 60, 60, 40


class _Shown(str):
    """Text that ``_show`` gives as it is."""


def _show(value) -> str:
    """A short one-line repr of a value from a (perhaps hostile) file."""
    if isinstance(value, _Shown):
        return str(value)
    return _one_line(_REPR.repr(value))


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's metadata")
