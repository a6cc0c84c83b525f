"""Step 11 items 2 and 3 and "Done when" for exercises 07.1, 07.2, 07.4, 08.1 and 08.2.

07.1 is npvae's ``layers.Dense.backward`` and 07.2 its ``optim.Adam.step``, methods written as
functions (``self`` is the layer, the optimizer), so 07.4 hands them to ``npvae.replaced``
as they are; 08.2 is named ``full_gaussian_kl`` as npvae's is. For each exercise: the
notebook's solution has npvae's signature, three or more wrong answers are each refused with a
message of their own, a right answer written another way passes, the docstring does not give
the formula, and a collapsed hint cell comes before the exercise.
"""

import inspect
import re

import numpy as np
import pytest

import npvae
from conftest import NOTEBOOK_DIR, read_notebook
from npvae import exercises
from test_graders import EXERCISES, grade, refused, solution

MINE = ("07.1", "07.2", "07.4", "08.1", "08.2")


def from_source(source, name):
    namespace = {"np": np, "npvae": npvae, "backend": npvae.backend, "dist": npvae.distributions}
    exec(source, namespace)
    return namespace[name]


# --- item 3: npvae's own signatures ------------------------------------------------------------------
@pytest.mark.parametrize("exercise, library", [("07.1", npvae.layers.Dense.backward),
                                               ("07.2", npvae.optim.Adam.step),
                                               ("08.2", npvae.distributions.full_gaussian_kl)])
def test_the_solution_has_npvaes_signature(exercise, library):
    fn = solution(exercise)
    assert inspect.signature(fn) == inspect.signature(library.textbook)


def test_08_2_is_named_as_npvaes_function():
    assert solution("08.2").__name__ == "full_gaussian_kl"


def test_07_4_maps_the_names_straight_to_07_1_and_07_2():
    mine = {e: (lambda *a: None) for e in ("02.1", "02.2", "03.1", "03.2", "04.1", "04.2", "07.1", "07.2")}
    functions = solution("07.4")(mine)
    assert functions["layers.Dense.backward"] is mine["07.1"]
    assert functions["optim.Adam.step"] is mine["07.2"]
    assert functions["distributions.gaussian_kl"] is mine["04.1"]


def test_the_solutions_train_inside_npvae_replaced():
    # the student's 07.1 and 07.2 run as npvae's, unwrapped: the same step as npvae's own
    x = np.random.default_rng(0).uniform(size=(64, 12))
    losses = []
    for functions in ({}, {"layers.Dense.backward": solution("07.1"), "optim.Adam.step": solution("07.2")}):
        model = npvae.VAE(12, (8,), 2, seed=0, dtype="float64")
        with npvae.textbook(), npvae.replaced(functions):
            losses.append(npvae.fit(model, x, epochs=2, batch_size=32, progress=False).column("loss"))
    assert np.allclose(losses[0], losses[1], rtol=1e-12, atol=0)


# --- 07.1: Dense.backward ----------------------------------------------------------------------------
DENSE = """\
def dense_backward(self, dout, cache, need_dx=True):
    xp = npvae.backend.array_namespace(dout)
    x = cache
    {dW}
    {db}
    {ret}
"""
RIGHT_DENSE = {"dW": "self.dW[...] = x.T @ dout", "db": "self.db[...] = xp.sum(dout, axis=0)",
               "ret": "return dout @ self.W.T if need_dx else None"}


def dense(**lines):
    return from_source(DENSE.format(**{**RIGHT_DENSE, **lines}), "dense_backward")


@pytest.mark.parametrize("lines, named", [
    ({"dW": "self.dW = x.T @ dout"}, "you bound a new array to self.dW"),
    ({"db": "self.db = xp.sum(dout, axis=0)"}, "you bound a new array to self.db"),
    ({"dW": "self.dW += x.T @ dout"}, "adds to what self.dW held"),
    ({"ret": "return dout @ self.W if need_dx else None"}, "dx is dout @ W"),
    ({"dW": "self.dW[...] = dout.T @ x"}, "dW is transposed"),
    ({"db": "self.db[...] = dout"}, "db should be summed over the batch"),
    ({"db": "self.db[...] = xp.sum(dout, axis=1)"}, "summed over the wrong axis"),
    ({"db": "self.db[...] = xp.mean(dout, axis=0)"}, "db is the mean of dout"),
    ({"ret": "return dout @ self.W.T"}, "need_dx=False"),
    ({"ret": "return (dout @ self.W.T, self.dW, self.db)"}, "return dx alone"),
    ({"ret": "self.W[...] = 0.0 * self.W\n    return dout @ self.W.T if need_dx else None"}, "changed the layer's W"),
])
def test_07_1_names_each_slip(lines, named):
    assert named in refused("07.1", dense(**lines))


def test_07_1_with_need_dx_false_it_still_writes_dw_and_db():
    ret = "if not need_dx:\n        return None\n    self.dW[...] = x.T @ dout\n    return dout @ self.W.T"
    message = refused("07.1", dense(dW="pass", ret=ret))
    assert "need_dx=False" in message and "dW" in message


def test_07_1_a_correct_answer_written_another_way_passes():
    from test_replaced import student_dense_backward  # matmul and permute_dims, the standard's spelling

    assert grade("07.1", student_dense_backward) is None
    assert grade("07.1", dense(dW="self.dW[:, :] = (dout.T @ x).T", db="self.db[:] = xp.sum(dout, axis=0)")) is None


def test_07_1_calling_npvaes_dense_backward_is_refused():
    fn = from_source("def dense_backward(self, dout, cache, need_dx=True):\n"
                     "    return npvae.layers.Dense.backward(self, dout, cache, need_dx)\n", "dense_backward")
    assert refused("07.1", fn).endswith("your function called npvae.layers.Dense.backward")


# --- 07.2: Adam.step ---------------------------------------------------------------------------------
ADAM = """\
def adam_step(self, grads):
    xp = npvae.backend.array_namespace(grads)
    {count}
    t, lr, beta1, beta2, eps = {hyper}
    {m}
    {v}
    {step}
"""
RIGHT_ADAM = {"count": "self.t += 1", "hyper": "self.t, self.lr, self.beta1, self.beta2, self.eps",
              "m": "self.m[...] = beta1 * self.m + (1.0 - beta1) * grads",
              "v": "self.v[...] = beta2 * self.v + (1.0 - beta2) * grads * grads",
              "step": "self.params -= lr * (self.m / (1.0 - beta1**t)) / (xp.sqrt(self.v / (1.0 - beta2**t)) + eps)"}


def adam(**lines):
    return from_source(ADAM.format(**{**RIGHT_ADAM, **lines}), "adam_step")


@pytest.mark.filterwarnings("ignore:invalid value encountered in sqrt:RuntimeWarning")  # g, not g^2: v < 0
@pytest.mark.parametrize("lines, named", [
    ({"step": "self.params = self.params - lr * (self.m / (1.0 - beta1**t)) / (xp.sqrt(self.v / (1.0 - beta2**t)) "
               "+ eps)"}, "you bound a new array to self.params"),
    ({"count": "pass", "hyper": "self.t + 1, self.lr, self.beta1, self.beta2, self.eps"}, "count the step"),
    ({"hyper": "self.t + 1, self.lr, self.beta1, self.beta2, self.eps"}, "the step number t + 1"),
    ({"step": "self.params -= lr * self.m / (xp.sqrt(self.v) + eps)"}, "without the bias correction"),
    ({"hyper": "self.t, 1e-3, 0.9, 0.999, 1e-8"}, "ignores the hyperparameters"),
    ({"m": "self.m[...] = beta1 * self.m + (1.0 - beta1) * grads * grads"}, "m is a running mean of the gradient"),
    ({"v": "self.v[...] = beta2 * self.v + (1.0 - beta2) * grads"}, "you used g, not g^2"),
    ({"step": "self.params -= lr * (self.m / (1.0 - beta1**t)) / xp.sqrt(self.v / (1.0 - beta2**t) + eps)"},
     "eps goes outside the square root"),
    ({"m": "self.m[...] = (beta1 * self.m + (1.0 - beta1) * grads) / (1.0 - beta1**t)",
      "step": "self.params -= lr * self.m / (xp.sqrt(self.v / (1.0 - beta2**t)) + eps)"}, "not the bias-corrected"),
])
def test_07_2_names_each_slip(lines, named):
    assert named in refused("07.2", adam(**lines))


def test_07_2_a_correct_answer_written_another_way_passes():
    from test_replaced import student_adam_step  # Kingma & Ba's efficient form with its eps-hat

    assert grade("07.2", student_adam_step) is None
    other = "self.params[...] = self.params - lr * (self.m / (1.0 - beta1**t)) / (xp.sqrt(self.v) / (1.0 - beta2**t) ** 0.5 + eps)"
    assert grade("07.2", adam(m="self.m = beta1 * self.m + (1.0 - beta1) * grads", step=other)) is None


# --- 08.1: the ELU layer -----------------------------------------------------------------------------
ELU = """\
def make_elu(alpha=1.0):
    class ELU:
        param_shapes = {{}}

        def forward(self, x):
            xp = backend.array_namespace(x)
            out = xp.where(x > 0, x, {neg})
            {keep}
            return out, {cache}

        def backward(self, dout, cache):
            xp = backend.array_namespace(dout)
            {slope}
            return {dx}

    return ELU()
"""
RIGHT_ELU = {"neg": "alpha * xp.expm1(xp.minimum(x, 0.0))", "keep": "pass", "cache": "x",
             "slope": "slope = xp.where(cache > 0, xp.ones_like(cache), alpha * xp.exp(xp.minimum(cache, 0.0)))",
             "dx": "dout * slope"}


def elu(**parts):
    return from_source(ELU.format(**{**RIGHT_ELU, **parts}), "make_elu")


@pytest.mark.parametrize("parts, named", [
    ({"neg": "alpha * xp.exp(xp.minimum(x, 0.0))"}, "you left out the - 1"),
    ({"neg": "xp.expm1(xp.minimum(x, 0.0))"}, "the layer's alpha is missing"),
    ({"neg": "alpha * x"}, "LeakyReLU"),
    ({"dx": "slope"}, "forgot dout"),
    ({"cache": "out"}, "evaluates the slope at the output"),
    ({"slope": "slope = xp.where(cache > 0, xp.ones_like(cache), alpha * xp.expm1(xp.minimum(cache, 0.0)))"},
     "the - 1 is a constant"),
    ({"keep": "self.x = x", "slope": "x = self.x\n            slope = xp.where(x > 0, xp.ones_like(x), "
                                     "alpha * xp.exp(xp.minimum(x, 0.0)))"}, "does not use its cache"),
])
def test_08_1_names_each_slip(parts, named):
    assert named in refused("08.1", elu(**parts))


def test_08_1_a_correct_answer_written_another_way_passes():
    # the cache holds the output, and the slope for x <= 0 is out + alpha (alpha e^x = alpha (e^x - 1) + alpha)
    assert grade("08.1", elu(cache="out", slope="slope = xp.where(cache > 0, xp.ones_like(cache), cache + alpha)")) is None


# --- 08.2: the full-covariance KL --------------------------------------------------------------------
FULL_KL = """\
def full_gaussian_kl(mu, log_diag, lower):
    xp = npvae.backend.array_namespace(mu)
    z = mu.shape[-1]
    return {}
"""


@pytest.mark.parametrize("expression, named", [
    ("0.5 * (xp.sum(xp.exp(2.0 * log_diag), axis=-1) + xp.sum(mu * mu, axis=-1) - z) - xp.sum(log_diag, axis=-1)",
     "tr Sigma is missing the strictly-lower entries"),
    ("0.5 * (xp.sum(xp.exp(2.0 * log_diag), axis=-1) + xp.sum(lower * lower, axis=-1) + xp.sum(mu * mu, axis=-1) - z"
     " - xp.sum(log_diag, axis=-1))", "log det Sigma is 2 sum_j s_j"),
    ("0.5 * (xp.sum(xp.exp(log_diag), axis=-1) + xp.sum(lower * lower, axis=-1) + xp.sum(mu * mu, axis=-1) - z)"
     " - xp.sum(log_diag, axis=-1)", "you used exp(s_j)"),
    ("0.5 * (xp.sum(xp.exp(2.0 * log_diag), axis=-1) + xp.sum(lower * lower, axis=-1) + xp.sum(mu * mu, axis=-1))"
     " - xp.sum(log_diag, axis=-1)", "you left out the - Z"),
    ("0.5 * (xp.sum(xp.exp(2.0 * log_diag), axis=-1) + xp.sum(lower * lower, axis=-1) + xp.sum(mu * mu, axis=-1) - z)"
     " + xp.sum(log_diag, axis=-1)", "the log-determinant has the wrong sign"),
])
def test_08_2_names_each_slip(expression, named):
    assert named in refused("08.2", from_source(FULL_KL.format(expression), "full_gaussian_kl"))


def test_08_2_a_correct_answer_written_another_way_passes():
    # the sum of per-coordinate terms, each >= 0: 1/2 (e^{2s} - 1 - 2s) + 1/2 lower^2 + 1/2 mu^2
    expression = ("0.5 * (xp.sum(xp.expm1(2.0 * log_diag) - 2.0 * log_diag, axis=-1) + xp.sum(lower**2, axis=-1)"
                  " + xp.sum(mu**2, axis=-1))")
    assert grade("08.2", from_source(FULL_KL.format(expression), "full_gaussian_kl")) is None


# --- item 2: derive, don't copy ----------------------------------------------------------------------
NOTEBOOK = {"07": "07_training_and_generation.ipynb", "08": "08_backends_and_gradient_checks.ipynb"}
FORMULAS = {  # what the docstrings used to hand over
    "07.1": ["W^T", "x^T", "sum_j dout_nj W_ij", "sum_n dout_nj", "dout @"],
    "07.2": ["1 - beta1", "sqrt(", "m_hat", "(1 - beta"],
    "08.1": ["alpha * (e^x - 1)", "alpha * e^x", "expm1"],
    "08.2": ["tr Sigma", "log det", "exp(2"],
}


@pytest.mark.parametrize("exercise", MINE)
def test_a_hint_cell_comes_before_the_exercise_and_the_docstring_gives_no_formula(exercise):
    cells = read_notebook(NOTEBOOK_DIR / NOTEBOOK[exercise[:2]]).cells
    index = next(i for i, c in enumerate(cells) if exercises.exercise_id(c) == exercise)
    hint = cells[index - 1]
    assert hint.cell_type == "markdown" and hint.source.startswith("<details><summary>Hint (try it first)</summary>")
    docstring = re.search(r'"""(.*?)"""', cells[index].source, re.S).group(1)
    for formula in FORMULAS.get(exercise, []):
        assert formula not in docstring, f"{exercise}'s docstring gives {formula!r}"
