"""Step 12, part 2: exercise 10.1, the importance-weighted bound's backward, in the way of Step 11's
exercises: the notebook's function is npvae's own (``npvae.vae.log_mean_exp_backward``, signature and
all), the grader refuses at least three wrong answers each with its own message and passes a correct
answer written another way, and the model's gradient uses it (``npvae.replaced`` runs a student's).
(That the grader passes the notebook's solution, refuses a function that changes ``log_w`` in place and
the planted answer is tests/test_graders.py's and tests/test_exercises.py's.)
"""

import inspect

import numpy as np
import pytest

import npvae
from npvae.gradcheck import check_model
from test_graders import grade, refused, solution


def answer(body):
    """A 10.1 answer: npvae's signature, ``body`` (lines, ``xp`` and ``dist`` at hand)."""
    lines = "".join(f"    {line}\n" for line in body.strip().splitlines())
    namespace = {"npvae": npvae, "dist": npvae.distributions}
    exec(f"def log_mean_exp_backward(dL, log_w):\n    xp = npvae.backend.array_namespace(log_w)\n{lines}", namespace)
    return namespace["log_mean_exp_backward"]


def test_the_exercise_has_npvaes_signature():
    library = npvae.vae.log_mean_exp_backward.textbook
    student = solution("10.1")
    assert student.__name__ == library.__name__
    assert inspect.signature(student) == inspect.signature(library)


NORMALIZED = "w = xp.exp(log_w - xp.max(log_w, axis={axis}, keepdims=True))\n" \
             "return dist.per_row(dL) * (w / xp.sum(w, axis={axis}, keepdims=True))"


@pytest.mark.parametrize("body, named", [
    ("return dist.per_row(dL) * xp.exp(log_w)", "you used the weights w_i = exp(log w_i) themselves"),
    ("return dist.per_row(dL) * xp.exp(log_w) / log_w.shape[-1]", "you used w_i / K"),
    (NORMALIZED.format(axis=0), "you normalized the weights over the batch (axis 0, the N rows)"),
    ("w = xp.exp(log_w - xp.max(log_w, axis=-1, keepdims=True))\nreturn w / xp.sum(w, axis=-1, keepdims=True)",
     "you did not multiply by the upstream gradient dL"),
    ("return dist.per_row(dL) * xp.ones_like(log_w) / log_w.shape[-1]", "you returned dL / K for every draw"),
    ("w = xp.exp(log_w)\nreturn dist.per_row(dL) * (w / xp.sum(w, axis=-1, keepdims=True))",
     "your gradient has NaN or inf: exp(800) overflows"),
    (NORMALIZED.format(axis=-1).replace("dist.per_row(dL)", "dL"), "make dL a column (N, 1)"),
    (NORMALIZED.format(axis=-1).replace("return ", "return -"), "your gradient has the wrong sign"),
    (NORMALIZED.format(axis=-1).replace("dist.per_row(dL)", "xp.reshape(xp.asarray(dL), (-1, 1))"),
     "when the upstream gradient `dL` is one number"),  # numpy: the dtype changes; strict: float64 x float32 refused
])
def test_wrong_answers_are_named(body, named):
    assert named in refused("10.1", answer(body))


def test_each_wrong_answer_has_its_own_message():
    bodies = ["return dist.per_row(dL) * xp.exp(log_w)", NORMALIZED.format(axis=0),
              "return dist.per_row(dL) * xp.ones_like(log_w) / log_w.shape[-1]"]
    assert len({refused("10.1", answer(b)) for b in bodies}) == len(bodies)


def test_calling_npvaes_own_function_is_refused():
    message = refused("10.1", answer("return npvae.vae.log_mean_exp_backward(dL, log_w)"))
    assert message.endswith("your function called npvae.vae.log_mean_exp_backward")


@pytest.mark.parametrize("body", [
    # through the forward: a_i = exp(log w_i - L) / K, with L = log_mean_exp (npvae's forward may be used)
    "L = npvae.vae.log_mean_exp(log_w)\nk = log_w.shape[-1]\n"
    "return dist.per_row(dL) * xp.exp(log_w - xp.reshape(L, (-1, 1))) / k",
    # the log of the normalized weights first (log-softmax), then exp, dL multiplied last
    "shifted = log_w - xp.max(log_w, axis=-1, keepdims=True)\n"
    "log_a = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))\n"
    "return xp.exp(log_a) * dist.per_row(dL)",
])
def test_a_correct_answer_written_another_way_passes(body, capsys):
    assert grade("10.1", answer(body)) is None
    assert "Exercise 10.1 passed" in capsys.readouterr().out


def test_the_models_bound_gradient_runs_the_students_backward():
    # what notebook 10 does: npvae.replaced puts a student's function into VAE.backward_samples
    model = npvae.VAE(6, (5,), 3, activation="tanh", dtype="float64", seed=0)
    g = np.random.default_rng(1)
    x, eps = npvae.asarray(g.uniform(size=(4, 6))), npvae.asarray(g.standard_normal((4, 3, 3)))
    calls = []

    def student(dL, log_w):
        calls.append((dL, tuple(log_w.shape)))
        return solution("10.1")(dL, log_w)

    with npvae.replaced({"vae.log_mean_exp_backward": student}):
        report = check_model(model, x, eps)
    assert report.passed(1e-6), str(report)
    assert calls and all(c == (-0.25, (4, 3)) for c in calls)  # dL = -1/N, one number, as the grader says

    def wrong(dL, log_w):
        return answer(NORMALIZED.format(axis=0))(dL, log_w)

    with npvae.replaced({"vae.log_mean_exp_backward": wrong}):
        assert not check_model(model, x, eps).passed(1e-6)
