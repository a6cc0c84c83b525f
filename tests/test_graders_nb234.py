"""Step 11 ("Done when") for exercises 02.1, 02.2, 03.1, 03.2, 03.3, 04.1 and 04.2: each exercise has
npvae's own signature (item 3), at least three wrong answers are each refused with their own message,
and a correct answer written another way passes. 03.2's and 04.2's upstream gradient may be one number
(a Python float or a 0-d array), as npvae's model passes it, and the graders say so when a function
fails on that form. (That every grader passes its notebook solution is tests/test_graders.py's.)
"""

import inspect

import pytest

import npvae
from test_graders import grade, refused, solution

LIBRARY = {"02.1": "reparameterize", "02.2": "reparameterize_backward", "03.1": "bernoulli_log_likelihood",
           "03.2": "bernoulli_log_likelihood_backward", "03.3": "gaussian_log_likelihood", "04.1": "gaussian_kl",
           "04.2": "gaussian_kl_backward"}
PARAMETERS = {"02.1": "mu, logvar, eps", "02.2": "dz, logvar, eps", "03.1": "x, logits",
              "03.2": "dlog_p, x, logits", "03.3": "x, mean", "04.1": "mu, logvar", "04.2": "dkl, mu, logvar"}


def answer(exercise, body):
    """An answer to ``exercise``: npvae's signature, ``body`` (lines, ``xp`` and ``dist`` at hand)."""
    name = LIBRARY[exercise]
    lines = "".join(f"    {line}\n" for line in body.strip().splitlines())
    namespace = {"npvae": npvae, "dist": npvae.distributions}
    last = PARAMETERS[exercise].split(", ")[-1]  # an array in every form of the arguments
    exec(f"def {name}({PARAMETERS[exercise]}):\n    xp = npvae.backend.array_namespace({last})\n{lines}", namespace)
    return namespace[name]


# --- item 3: the notebook's function is npvae's, signature and all ----------------------------------
@pytest.mark.parametrize("exercise", sorted(LIBRARY))
def test_the_exercise_has_npvaes_signature(exercise):
    library = getattr(npvae.distributions, LIBRARY[exercise]).textbook
    student = solution(exercise)
    assert student.__name__ == library.__name__
    assert inspect.signature(student) == inspect.signature(library)


@pytest.mark.parametrize("exercise", ["03.2", "04.2"])
def test_the_solution_takes_the_upstream_gradient_as_one_number(exercise):
    # what npvae.replaced runs in training: the model passes -1/N as a Python float
    x = npvae.asarray([[0.2, 0.9], [0.5, 0.1], [1.0, 0.0]], dtype="float32")
    y = npvae.asarray([[-1.0, 2.0], [0.3, -0.4], [3.0, -2.0]], dtype="float32")
    library = getattr(npvae.distributions, LIBRARY[exercise]).textbook
    for d in (-1.0 / 3.0, npvae.asarray(0.5, dtype="float32")):
        got, want = solution(exercise)(d, x, y), library(d, x, y)
        for g, w in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
            assert g.dtype == w.dtype and npvae.to_numpy(g).tolist() == npvae.to_numpy(w).tolist()


# --- 02.1 (the moment test's slips and another right answer are in test_graders.py) ---------------
@pytest.mark.parametrize("body, named", [
    ("return mu + xp.exp(logvar) * eps", "exp(logvar) is the variance"),
    ("return mu + xp.exp(logvar) / 2 * eps", "the 1/2 belongs inside the exponent"),
    ("return mu + logvar * eps", "you used logvar itself as sigma"),
    ("return mu + xp.exp(0.5 * logvar) * npvae.Generator(0).standard_normal(eps.shape, dtype='float64')",
     "use the argument eps"),
])
def test_02_1_names_each_slip(body, named):
    assert named in refused("02.1", answer("02.1", body))


def test_02_1_names_a_function_that_fails_when_mu_broadcasts_against_eps():
    body = "return mu + xp.exp(0.5 * logvar) * xp.reshape(eps, mu.shape)"
    assert "fails when mu and logvar broadcast against eps" in refused("02.1", answer("02.1", body))


# --- 02.2 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, named", [
    ("return dz, dz * xp.exp(0.5 * logvar) * eps", "missing the factor 1/2"),
    ("return dz, 0.5 * xp.exp(0.5 * logvar) * eps", "multiply it by the upstream gradient dz"),
    ("return dz, dz * 0.5 * xp.exp(logvar) * eps", "you used exp(logvar) (the variance)"),
    ("return dz * 0.5 * xp.exp(0.5 * logvar) * eps, dz", "dmu and dlogvar are swapped"),
    ("import numpy as np\ne = npvae.asarray(np.random.standard_normal(dz.shape), dtype='float64')\n"
     "return dz, dz * 0.5 * xp.exp(0.5 * logvar) * e", "draws new noise"),
])
def test_02_2_names_each_slip(body, named):
    assert named in refused("02.2", answer("02.2", body))


def test_02_2_a_correct_answer_written_another_way_passes():
    body = "sigma = xp.sqrt(xp.exp(logvar))\nreturn 1.0 * dz, dz * eps * sigma / 2"
    assert grade("02.2", answer("02.2", body)) is None


# --- 03.1 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, named", [
    ("p = 1 / (1 + xp.exp(-logits))\nreturn xp.sum(x * xp.log(p) + (1 - x) * xp.log(1 - p), axis=-1)",
     "log(sigmoid(l)) and log(1 - sigmoid(l)) break"),
    ("return xp.sum(x * logits - xp.log(1 + xp.exp(logits)), axis=-1)", "exp(l) overflows"),
    ("return xp.sum(softplus - x * logits, axis=-1)".replace(
        "softplus", "(xp.maximum(logits, 0.0) + xp.log1p(xp.exp(-xp.abs(logits))))"), "cross-entropy -log P(x|z)"),
    ("return xp.mean(x * logits - (xp.maximum(logits, 0.0) + xp.log1p(xp.exp(-xp.abs(logits)))), axis=-1)",
     "averaged over the pixels"),
    ("p = xp.clip(1 / (1 + xp.exp(-logits)), 1e-7, 1 - 1e-7)\n"
     "return xp.sum(x * xp.log(p) + (1 - x) * xp.log(1 - p), axis=-1)", "Clipping sigmoid(l)"),
])
def test_03_1_names_each_slip(body, named):
    assert named in refused("03.1", answer("03.1", body))


def test_03_1_a_correct_answer_written_another_way_passes():
    body = "return xp.sum(x * logits - xp.logaddexp(0.0 * logits, logits), axis=1)"
    assert grade("03.1", answer("03.1", body)) is None


# --- 03.2 --------------------------------------------------------------------------------------------
COLUMN = "d = dist.per_row(dlog_p)\n"


@pytest.mark.parametrize("body, named", [
    (COLUMN + "return d * (dist.sigmoid(logits) - x)", "the sign is flipped"),
    ("return x - dist.sigmoid(logits)", "multiply each row by its upstream gradient"),
    (COLUMN + "p = dist.sigmoid(logits)\nreturn d * (x / p - (1 - x) / (1 - p))", "derivative with respect to p"),
    (COLUMN + "p = dist.sigmoid(logits)\nreturn d * (x - p) * p * (1 - p)", "once too often"),
    ("return dlog_p * (x - dist.sigmoid(logits))", "make it a column"),
])
def test_03_2_names_each_slip(body, named):
    assert named in refused("03.2", answer("03.2", body))


@pytest.mark.parametrize("body", [
    "return dlog_p[:, None] * (x - dist.sigmoid(logits))",  # a float is not subscriptable
    "return xp.reshape(dlog_p, (-1, 1)) * (x - dist.sigmoid(logits))",  # strict: refused; NumPy: float64
])
def test_03_2_names_a_function_that_fails_on_one_number(body):
    message = refused("03.2", answer("03.2", body))
    assert "the upstream gradient `dlog_p` is one number" in message and "dist.per_row(dlog_p)" in message


def test_03_2_a_correct_answer_written_another_way_passes():
    body = ("d = dlog_p if isinstance(dlog_p, (int, float)) else dlog_p[..., None]  # a 0-d array: (1,)\n"
            "return d * x - d / (1.0 + xp.exp(-logits))")
    assert grade("03.2", answer("03.2", body)) is None


# --- 03.3 --------------------------------------------------------------------------------------------
SQ = "sq = xp.sum((x - mean) ** 2, axis=-1)\n"


@pytest.mark.parametrize("body, named", [
    (SQ + "return -0.5 * sq", "you dropped the constant"),
    (SQ + "return -0.5 * sq - 0.5 * 784 * 1.8378770664093453", "you wrote D = 784"),
    (SQ + "return -0.5 * sq - 0.5 * 1.8378770664093453", "multiply it by D"),
    (SQ + "return 0.5 * sq + 0.5 * x.shape[-1] * 1.8378770664093453", "you returned -log P(x|z)"),
])
def test_03_3_names_each_slip(body, named):
    assert named in refused("03.3", answer("03.3", body))


def test_03_3_a_correct_answer_written_another_way_passes():
    body = "import math\nreturn -0.5 * xp.sum((x - mean) ** 2 + math.log(2 * math.pi), axis=1)"
    assert grade("03.3", answer("03.3", body)) is None


# --- 04.1 --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body, named", [
    ("return xp.sum(mu**2 + xp.exp(logvar) - 1 - logvar, axis=-1)", "the factor 1/2 in front of the sum is missing"),
    ("return 0.5 * xp.sum(mu**2 + xp.exp(logvar) - 1 + logvar, axis=-1)", "the sign of logvar is wrong"),
    ("return 0.5 * xp.sum(mu**2 + xp.exp(logvar) - logvar, axis=-1)", "the -1 is missing"),
    ("return 0.5 * xp.sum(mu**2 + xp.exp(0.5 * logvar) - 1 - logvar, axis=-1)", "you used the standard deviation"),
    ("return 0.5 * (mu**2 + xp.exp(logvar) - 1 - logvar)", "one value per dimension"),
])
def test_04_1_names_each_slip(body, named):
    assert named in refused("04.1", answer("04.1", body))


def test_04_1_a_correct_answer_written_another_way_passes():
    body = "var = xp.exp(logvar)\nreturn 0.5 * xp.sum(mu * mu, axis=1) + 0.5 * xp.sum(var - 1.0 - logvar, axis=1)"
    assert grade("04.1", answer("04.1", body)) is None


# --- 04.2 --------------------------------------------------------------------------------------------
COLUMN_KL = "d = dist.per_row(dkl)\n"


@pytest.mark.parametrize("body, named", [
    (COLUMN_KL + "return d * mu, d * xp.expm1(logvar)", "the 1/2 is missing"),
    (COLUMN_KL + "return d * mu, d * 0.5 * xp.exp(logvar)", "the -1 is missing"),
    ("return mu, 0.5 * xp.expm1(logvar)", "you did not multiply by the upstream gradient dkl"),
    (COLUMN_KL + "return 0.5 * d * mu, d * 0.5 * xp.expm1(logvar)", "dmu is half the right one"),
    ("return dkl * mu, dkl * 0.5 * xp.expm1(logvar)", "reshape dkl to a column"),
])
def test_04_2_names_each_slip(body, named):
    assert named in refused("04.2", answer("04.2", body))


@pytest.mark.parametrize("body", [
    "d = dkl[:, None]\nreturn d * mu, d * 0.5 * xp.expm1(logvar)",
    "d = xp.reshape(dkl, (-1, 1))\nreturn d * mu, d * 0.5 * xp.expm1(logvar)",
])
def test_04_2_names_a_function_that_fails_on_one_number(body):
    message = refused("04.2", answer("04.2", body))
    assert "the upstream gradient `dkl` is one number" in message and "dist.per_row(dkl)" in message


def test_04_2_a_correct_answer_written_another_way_passes():
    body = ("d = dkl if isinstance(dkl, float) else xp.reshape(dkl, (-1, 1))\n"
            "return mu * d, (xp.exp(logvar) - 1.0) / 2.0 * d")
    assert grade("04.2", answer("04.2", body)) is None
