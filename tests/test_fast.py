"""npvae.fast against the textbook: every NumPy replacement computes what the function it
replaces computes, on the shapes and dtypes training uses; training gives the same losses with
the fast paths on and off; and the teaching modules never import the fast code.

(The CuPy replacements are checked the same way in test_gpu.py, on a GPU.)
"""

import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import npvae
from npvae import distributions as dist
from npvae import replaceable
from npvae.fast import numpy_paths
from npvae.layers import Dense, FlatParameters, ReLU
from npvae.optim import Adam
from conftest import EXPECTED_BACKEND, host

PACKAGE = pathlib.Path(npvae.__file__).parent
TOLERANCE = {"float32": {"rtol": 2e-5, "atol": 1e-6}, "float64": {"rtol": 1e-12, "atol": 1e-14}}
FAST_OFF = not replaceable.FAST  # NPVAE_FAST=0 (or off, false, no)
numpy_only = pytest.mark.skipif(EXPECTED_BACKEND != "numpy" or FAST_OFF,
                                reason="the NumPy fast paths run on numpy arrays only, and not with NPVAE_FAST=0")


def both_ways(fn, *args, **kwargs):
    """``fn(*args)`` with the replacements on, then (on copies of the arguments) the textbook."""
    fresh = [np.copy(a) if isinstance(a, np.ndarray) else a for a in args]
    fast = fn(*args, **kwargs)
    with npvae.textbook():
        slow = fn(*fresh, **kwargs)
    return fast, slow, args, fresh


def close(a, b, dtype):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), **TOLERANCE[dtype])


# --- one case per NumPy replacement ------------------------------------------------------------
def case_dense_backward(rng, dtype):
    for n_in, n_out, need_dx in ((784, 400, False), (400, 20, True)):
        layers = []
        for _ in range(2):  # one layer for each way, same numbers
            layer = Dense(n_in, n_out)
            FlatParameters([("d", layer)], seed=0, dtype=dtype)
            layers.append(layer)
        x = rng.standard_normal((128, n_in)).astype(dtype)
        dout = rng.standard_normal((128, n_out)).astype(dtype)
        dx_fast = layers[0].backward(dout, x, need_dx=need_dx)
        with npvae.textbook():
            dx_slow = layers[1].backward(dout, x, need_dx=need_dx)
        close(layers[0].dW, layers[1].dW, dtype)
        close(layers[0].db, layers[1].db, dtype)
        assert (dx_fast is None) == (dx_slow is None) == (not need_dx)
        if need_dx:
            close(dx_fast, dx_slow, dtype)


def case_relu_backward(rng, dtype):
    dout = rng.standard_normal((128, 400)).astype(dtype)
    out = np.maximum(rng.standard_normal((128, 400)), 0).astype(dtype)  # zeros included
    fast, slow, *_ = both_ways(ReLU().backward, dout, out)
    np.testing.assert_array_equal(fast, slow)
    assert fast.dtype == dout.dtype  # the boolean mask does not change the precision


def bernoulli_inputs(rng, dtype, rows):
    x = rng.uniform(size=(rows, 784)).astype(dtype)
    x[: rows // 2] = x[: rows // 2] > 0.5  # binary rows and grey-level rows
    logits = rng.uniform(-30, 30, size=(rows, 784)).astype(dtype)  # saturated sigmoids included
    logits[0, :3] = (-1e4, 1e4, 0.0)
    return x, logits


def case_bernoulli_log_likelihood(rng, dtype):
    for rows in (128, 400):  # 400 rows: three row blocks
        x, logits = bernoulli_inputs(rng, dtype, rows)
        fast, slow, *_ = both_ways(dist.bernoulli_log_likelihood, x, logits)
        # a sum of 784 terms of size ~10: float32 rounding allows ~1e-5 relative
        np.testing.assert_allclose(fast, slow, rtol=2e-5 if dtype == "float32" else 1e-12)
        assert fast.shape == (rows,) and fast.dtype == x.dtype


def case_bernoulli_log_likelihood_backward(rng, dtype):
    x, logits = bernoulli_inputs(rng, dtype, 128)
    for dlog_p in (-1.0 / 128, rng.standard_normal(128).astype(dtype)):  # the model's, and one per row
        fast, slow, *_ = both_ways(dist.bernoulli_log_likelihood_backward, dlog_p, x, logits)
        # sigma through tanh: one rounding unit of absolute error
        np.testing.assert_allclose(fast, slow, rtol=0, atol=4e-7 if dtype == "float32" else 1e-15)
        assert fast.shape == (128, 784) and fast.dtype == x.dtype


def case_adam_step(rng, dtype):
    size = numpy_paths.CHUNK * 3 + 17  # several chunks, the last one short
    p0 = rng.standard_normal(size).astype(dtype)
    opts = [Adam(p0.copy(), lr=1e-3) for _ in range(2)]
    for _ in range(3):
        g = rng.standard_normal(size).astype(dtype)
        opts[0].step(g)
        with npvae.textbook():
            opts[1].step(g)
    for name in ("params", "m", "v"):  # params of size ~1: a float32 rounding unit is ~1e-7
        close(getattr(opts[0], name), getattr(opts[1], name), dtype)
    assert opts[0].t == opts[1].t == 3


CASES = {
    "layers.Dense.backward": case_dense_backward,
    "layers.ReLU.backward": case_relu_backward,
    "distributions.bernoulli_log_likelihood": case_bernoulli_log_likelihood,
    "distributions.bernoulli_log_likelihood_backward": case_bernoulli_log_likelihood_backward,
    "optim.Adam.step": case_adam_step,
}


@numpy_only
def test_every_numpy_replacement_has_a_case():
    assert sorted(n for n, libs in replaceable.active().items() if "numpy" in libs) == sorted(CASES)


@numpy_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_each_numpy_replacement_equals_its_textbook_function(name, dtype, rng):
    CASES[name](rng, dtype)


@numpy_only
def test_the_replacement_runs_and_the_switch_turns_it_off():
    calls = []
    original = replaceable.replacement(Adam.step, "numpy")
    replaceable.register(Adam.step, "numpy", lambda *a: calls.append(1) or original(*a))
    try:
        opt = Adam(np.zeros(4), lr=0.1)
        opt.step(np.ones(4))
        assert calls == [1]
        with npvae.textbook():
            assert replaceable.active() == {}
            opt.step(np.ones(4))
        assert calls == [1] and opt.t == 2
        assert replaceable.active()  # on again after the block
    finally:
        replaceable.register(Adam.step, "numpy", original)


@numpy_only
def test_adam_flushes_moments_bound_for_subnormal():
    # A gradient that is nonzero once and then 0: m decays by 0.9 a step, and without the
    # flush it would sink below float32's smallest normal number after ~800 steps.
    opt = Adam(np.zeros(4, np.float32), lr=1e-3)
    opt.step(np.array([1e-3, 0.0, 0.0, 0.0], np.float32))
    zero, tiny = np.zeros(4, np.float32), np.finfo(np.float32).smallest_normal
    for _ in range(1500):
        opt.step(zero)
        assert not ((opt.m != 0) & (np.abs(opt.m) < tiny)).any(), f"subnormal m at step {opt.t}"
    assert opt.m[0] == 0.0  # flushed: 1e-4 * 0.9^1500 is far below the threshold


# --- whole training runs, fast and textbook ------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(EXPECTED_BACKEND == "strict" or FAST_OFF, reason="no fast paths here: both runs would be the textbook")
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-8), ("float32", 1e-4)])
def test_two_epochs_give_the_same_losses_with_and_without_the_fast_paths(dtype, rtol):
    (x, _), (x_test, _) = npvae.datasets.load()
    runs = []
    for fast in (True, False):
        model = npvae.VAE(784, (96,), 8, dtype=dtype, seed=3)  # > 2 of Adam's chunks of parameters
        with (npvae.textbook() if not fast else _nothing()):
            history = npvae.fit(model, x[:1024], x_test[:256], epochs=2, batch_size=128, progress=False)
        runs.append([(row["loss"], row["reconstruction"], row["kl"], row["test_loss"]) for row in history])
    np.testing.assert_allclose(np.array(runs[0]), np.array(runs[1]), rtol=rtol)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# --- the import graph ---------------------------------------------------------------------------
TEACHING = ("backend", "checks", "replaceable", "random", "distributions", "layers", "vae", "optim")


def _is_module(dotted):
    """True when ``npvae.<dotted>`` is a module or package of the source tree."""
    path = PACKAGE.joinpath(*dotted.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def npvae_imports(module):
    """The npvae modules that ``npvae.<module>`` imports anywhere in its file (function level too)."""
    path = PACKAGE.joinpath(*module.split("."))
    is_package = (path / "__init__.py").exists()
    path = path / "__init__.py" if is_package else path.with_suffix(".py")
    package = f"npvae.{module}" if is_package else f"npvae.{module}".rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found |= {c.removeprefix("npvae.") for c in candidates if c.startswith("npvae.") and _is_module(c[6:])}
    return found - {module}


def reachable(module):
    seen, todo = set(), [module]
    while todo:
        for dep in npvae_imports(todo.pop()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


@pytest.mark.parametrize("module", TEACHING)
def test_no_teaching_module_reaches_the_fast_code_or_anything_above_it(module):
    above = {"fast", "fast.numpy_paths", "fast.cupy_kernels", "train", "metrics", "checkpoint", "cli", "plots",
             "datasets", "gradcheck"}
    assert not reachable(module) & above, f"{module} imports {sorted(reachable(module) & above)}"


def test_the_fast_code_sits_above_what_it_replaces():
    assert {"layers", "distributions", "optim", "replaceable"} <= reachable("fast.numpy_paths") | \
        reachable("fast.cupy_kernels")


def test_no_module_imports_itself_through_another():
    modules = [str(p.relative_to(PACKAGE).with_suffix("")).replace("/", ".") for p in PACKAGE.rglob("*.py")]
    modules = [m.removesuffix(".__init__") for m in modules if m not in ("__init__", "__main__")]
    cycles = [m for m in modules if m in reachable(m)]
    assert cycles == []


@pytest.mark.slow
def test_npvae_fast_0_runs_the_textbook_code():
    env = {**os.environ, "NPVAE_FAST": "0"}
    code = "import sys, npvae; print('npvae.fast' in sys.modules, npvae.replaceable.active())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.split() == ["False", "{}"], out.stderr
    info = subprocess.run([sys.executable, "-m", "npvae", "info"], capture_output=True, text=True, env=env, timeout=120)
    assert "fast paths: none: the textbook code runs (NPVAE_FAST=0)" in info.stdout


def test_a_replacement_is_chosen_by_the_arrays_not_by_a_number():
    library = dist.gaussian_kl.library
    assert library((np.float32(-0.5), np.zeros(2))) == "numpy"  # the scalar is skipped, the array decides
    assert library((1.0, np.float64(2.0))) is None  # numbers alone choose nothing: the textbook runs
    assert library((object(), np.zeros(2)), {"x": np.ones(1)}) == "numpy"  # an object is no array
