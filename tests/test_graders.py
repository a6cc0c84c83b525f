"""Step 11, item 6 and item 7's delegation bullet: the graders protect their inputs, and a
student's function that hands the work to npvae's own is refused.

Every grader runs the student's function through ``npvae.grading.call``: on copies of the
arrays, refusing, by the function's own parameter name, a function that changed one in place,
and refusing a function that called the library function the exercise asks for, whatever
name it reached it by (``npvae.distributions.reparameterize``, a name imported before the
grader ran, ``.textbook``, or a fast replacement). 02.1's moment test has its own (mu, logvar)
in each row, and 07.2 names Kingma & Ba's efficient form with a plain epsilon and a squared
gradient. The solutions are the notebooks' own (``conftest.notebook_exercises``), in process.
"""

import functools
import inspect
import sys

import nbformat
import numpy as np
import pytest

import npvae
from npvae import exercises
from npvae.grading import ExerciseFailed
from conftest import EXPECTED_BACKEND, NOTEBOOK_DIR, notebook_exercises, read_notebook
from test_exercises import run_until_error

EXERCISES = notebook_exercises()
IDS = sorted(EXERCISES)


def solution(exercise):
    return EXERCISES[exercise][0]


def grade(exercise, fn):
    """Run exercise ``exercise``'s grader on ``fn``; returns the ExerciseFailed message, or None when it passes."""
    try:
        EXERCISES[exercise][1](fn)
    except ExerciseFailed as exc:
        return str(exc)
    return None


def refused(exercise, fn):
    message = grade(exercise, fn)
    assert message is not None, f"the grader of {exercise} passed a wrong answer"
    assert message.startswith(f"Exercise {exercise}: ") and "\n" not in message, message
    return message


def test_the_notebooks_have_the_exercises_these_tests_know():
    assert set(IDS) >= {"02.1", "02.2", "03.1", "03.2", "03.3", "04.1", "04.2", "07.1", "07.2", "08.1", "08.2", "10.1"}


@pytest.mark.parametrize("exercise", IDS)
def test_every_grader_passes_its_notebook_solution(exercise, capsys):
    assert grade(exercise, solution(exercise)) is None
    assert f"Exercise {exercise} passed" in capsys.readouterr().out


# --- item 6: the graders pass copies, and name an input changed in place --------------------------
MODIFIED = {"02.1": "mu", "02.2": "dz", "03.1": "logits", "03.2": "dlog_p", "03.3": "x", "04.1": "logvar",
            "04.2": "dkl", "07.1": "dout", "07.2": "grads", "08.2": "lower",
            "10.1": "log_w"}


def modifying(fn, name):
    """``fn`` that, after computing its (right) answer, overwrites its argument ``name`` in place."""
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        result = fn(*args, **kwargs)
        a = signature.bind(*args, **kwargs).arguments[name]
        a[...] = 2.0 * a + 1.0
        return result

    return wrapper


@pytest.mark.parametrize("exercise", sorted(MODIFIED))
def test_a_function_that_modifies_an_input_in_place_is_refused_by_name(exercise):
    message = refused(exercise, modifying(solution(exercise), MODIFIED[exercise]))
    assert f"your function modified `{MODIFIED[exercise]}` in place" in message


def test_an_elu_backward_that_modifies_dout_in_place_is_refused():
    make_elu = solution("08.1")

    def make_modifying_elu(alpha=1.0):
        layer = make_elu(alpha)
        layer.backward = modifying(layer.backward, "dout")  # cs231n's ReLU slip: dout[x <= 0] = 0
        return layer

    assert "your function modified `dout` in place" in refused("08.1", make_modifying_elu)


def test_adam_that_binds_a_new_params_is_refused():
    # 07.2 is npvae's Adam.step: self.params, the model's parameter vector, is updated in place, not rebound
    xp_of = npvae.backend.array_namespace

    def adam_step(self, grads):
        self.t += 1
        self.m[...] = self.beta1 * self.m + (1.0 - self.beta1) * grads
        self.v[...] = self.beta2 * self.v + (1.0 - self.beta2) * grads * grads
        self.params = self.params - self.lr * (self.m / (1.0 - self.beta1**self.t)) / (
            xp_of(grads).sqrt(self.v / (1.0 - self.beta2**self.t)) + self.eps)

    assert "you bound a new array to self.params" in refused("07.2", adam_step)


# --- item 7: a function that calls npvae's own is refused ------------------------------------------
SPELLINGS = {  # how a notebook's student might reach npvae's function; run in a namespace of its own
    "module attribute": "import npvae\ndef student(*args):\n    return npvae.distributions.{name}(*args)\n",
    "from-import": "from npvae.distributions import {name}\ndef student(*args):\n    return {name}(*args)\n",
    "textbook": "import npvae\ndef student(*args):\n    return npvae.distributions.{name}.textbook(*args)\n",
}
LIBRARY = {"02.1": "reparameterize", "02.2": "reparameterize_backward", "03.1": "bernoulli_log_likelihood",
           "03.2": "bernoulli_log_likelihood_backward", "03.3": "gaussian_log_likelihood", "04.1": "gaussian_kl",
           "04.2": "gaussian_kl_backward", "08.2": "full_gaussian_kl"}


def delegating(spelling, name):
    namespace = {}
    exec(SPELLINGS[spelling].format(name=name), namespace)  # the import runs before the grader
    return namespace["student"]


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
@pytest.mark.parametrize("exercise", ["02.1", "03.1", "04.1"])
def test_calling_npvaes_own_function_is_refused_in_every_spelling(exercise, spelling):
    before = sys.getprofile()
    message = refused(exercise, delegating(spelling, LIBRARY[exercise]))
    name = f"npvae.distributions.{LIBRARY[exercise]}"
    assert message == f"Exercise {exercise}: write it yourself; your function called {name}"
    assert sys.getprofile() is before  # the watch is gone once the grader has answered


@pytest.mark.parametrize("exercise", sorted(set(LIBRARY) - {"02.1", "03.1", "04.1"}))
def test_every_other_grader_refuses_npvaes_own_function_too(exercise):
    message = refused(exercise, delegating("module attribute", LIBRARY[exercise]))
    assert message.endswith(f"your function called npvae.distributions.{LIBRARY[exercise]}")


def test_a_fast_replacement_counts_as_npvaes_function():
    with npvae.textbook(False):  # NumPy's fast bernoulli_log_likelihood runs, where one is registered
        message = refused("03.1", delegating("module attribute", "bernoulli_log_likelihood"))
    assert message.endswith("your function called npvae.distributions.bernoulli_log_likelihood")


def test_a_dense_layer_or_an_adam_object_is_refused():
    def dense_backward(self, dout, cache, need_dx=True):
        return self.backward(dout, cache, need_dx)  # 07.1 is npvae's method: self is a real Dense layer

    def adam_step(self, grads):
        npvae.optim.Adam.step(self, grads)

    assert refused("07.1", dense_backward).endswith("your function called npvae.layers.Dense.backward")
    assert refused("07.2", adam_step).endswith("your function called npvae.optim.Adam.step")


def test_a_helper_of_npvae_is_allowed():
    # 03.2's solution calls npvae.distributions.sigmoid: not the function the exercise asks for
    assert "sigmoid" in solution("03.2").__code__.co_names
    assert grade("03.2", solution("03.2")) is None


# --- item 6: 02.1's moment test, a different (mu, logvar) per row -----------------------------------
def reparameterize_with(body):
    """A 02.1 answer: ``body`` computes z from mu, logvar, eps and xp."""
    namespace = {"npvae": npvae}
    exec("def reparameterize(mu, logvar, eps):\n    xp = npvae.backend.array_namespace(mu)\n"
         f"    return {body}\n", namespace)
    return namespace["reparameterize"]


@pytest.mark.parametrize("body", [
    "mu + xp.mean(xp.exp(0.5 * logvar), axis=0) * eps",
    "mu + xp.exp(0.5 * xp.mean(logvar, axis=0)) * eps",
    "mu + xp.mean(xp.exp(0.5 * logvar)) * eps",
])
def test_02_1_names_a_sigma_averaged_over_the_batch(body):
    assert "averaged sigma over the batch" in refused("02.1", reparameterize_with(body))


def test_02_1_names_mu_minus_sigma_eps():
    message = refused("02.1", reparameterize_with("mu - xp.exp(0.5 * logvar) * eps"))
    assert "z = mu - sigma * eps" in message and "the right distribution" in message


def test_02_1_a_sigma_shared_by_the_rows_has_the_wrong_moments():
    # the first row's sigma for every row: no known slip, and right only when all rows are alike
    message = refused("02.1", reparameterize_with("mu + xp.exp(0.5 * logvar[:1, :]) * eps"))
    assert "wrong moments" in message


def test_02_1_a_correct_answer_written_another_way_passes():
    assert grade("02.1", reparameterize_with("mu + xp.sqrt(xp.exp(logvar)) * eps")) is None


# --- item 6: 07.2, Kingma & Ba's efficient form and a squared gradient ------------------------------
def adam_with(m_line="self.m[...] = beta1 * self.m + (1.0 - beta1) * grads",
              v_line="self.v[...] = beta2 * self.v + (1.0 - beta2) * grads * grads",
              step="self.params -= lr * (self.m / (1.0 - beta1**t)) / (xp.sqrt(self.v / (1.0 - beta2**t)) + eps)"):
    """A 07.2 answer, npvae's Adam.step(self, grads), with the given lines (the hyperparameters read into locals)."""
    namespace = {"npvae": npvae}
    exec("def adam_step(self, grads):\n    xp = npvae.backend.array_namespace(grads)\n    self.t += 1\n"
         "    t, lr, beta1, beta2, eps = self.t, self.lr, self.beta1, self.beta2, self.eps\n"
         f"    {m_line}\n    {v_line}\n    {step}\n", namespace)
    return namespace["adam_step"]


EFFICIENT = ("lr_t = lr * (1.0 - beta2**t) ** 0.5 / (1.0 - beta1**t); self.params -= lr_t * self.m / (xp.sqrt(self.v) "
             "+ {})")


def test_07_2_names_the_efficient_form_with_a_plain_epsilon():
    message = refused("07.2", adam_with(step=EFFICIENT.format("eps")))
    assert "efficient version" in message and "eps-hat" in message


def test_07_2_the_efficient_form_with_its_eps_hat_passes():
    assert grade("07.2", adam_with(step=EFFICIENT.format("eps * (1.0 - beta2**t) ** 0.5"))) is None


def test_07_2_names_g_squared_in_m():
    message = refused("07.2", adam_with(m_line="self.m[...] = beta1 * self.m + (1.0 - beta1) * grads**2"))
    assert "m is a running mean of the gradient g itself" in message


def test_07_2_names_g_to_the_fourth_in_v():
    message = refused("07.2", adam_with(v_line="self.v[...] = beta2 * self.v + (1.0 - beta2) * (grads * grads) ** 2"))
    assert "g^4" in message


@pytest.mark.slow
@pytest.mark.skipif(EXPECTED_BACKEND != "numpy", reason="run once, on NumPy: the graders are backend-free")
def test_in_a_notebook_a_name_imported_from_npvae_before_the_grader_is_refused():
    # notebook 02 as a student might change it: a cell imports npvae's function, the exercise calls it
    nb = read_notebook(NOTEBOOK_DIR / "02_encoder_and_reparameterization.ipynb")
    index = next(i for i, c in enumerate(nb.cells) if exercises.exercise_id(c) == "02.1")
    cell = nb.cells[index]
    cell.source = exercises.replace_solutions(cell.source, lambda indent: "return library_z(mu, logvar, eps)")
    nb.cells.insert(index, nbformat.v4.new_code_cell("from npvae.distributions import reparameterize as library_z"))
    failed_at, err = run_until_error(nb, index + 2)
    assert failed_at == index + 2 and err.ename == "ExerciseFailed", err
    assert "Exercise 02.1: write it yourself; your function called npvae.distributions.reparameterize" in err.evalue


# --- items 4 and 5: the new exercises' graders (06.1, 07.3, 07.4) ----------------------------------
@pytest.fixture(autouse=True)
def in_the_notebooks_folder(monkeypatch):
    """Graders run where the notebooks do: 07.4's reads the student's saved exercises from there."""
    monkeypatch.chdir(NOTEBOOK_DIR)


def from_source(source, name, **names):
    namespace = {"np": np, "npvae": npvae, "dist": npvae.distributions, **names}
    exec(source, namespace)
    return namespace[name]


KL_GRID = "def kl_to_posterior(log_q, log_px_z, log_pz, area):\n    {}\n"
Q_CELLS = "q = np.exp(log_q) * area; q = q / q.sum(); lj = log_px_z + log_pz; "
LOGSUMEXP = "np.max(lj) + np.log(np.sum(np.exp(lj - np.max(lj))))"


@pytest.mark.parametrize("body, named", [
    (Q_CELLS + f"p = np.exp(lj - ({LOGSUMEXP})); return float(p @ (np.log(p) - np.log(q)))", "direction swapped"),
    (Q_CELLS + "return float(q @ (np.log(q) - lj))", "the posterior is not normalized"),
    (Q_CELLS + "return float(q @ (np.log(q) - log_pz - np.log(area)))", "KL(Q || P(z)), to the prior"),
    (Q_CELLS + "lp = log_px_z - np.max(log_px_z); return float(q @ (np.log(q) - lp + np.log(np.sum(np.exp(lp)))))",
     "the posterior lacks the prior"),
    (f"lj = log_px_z + log_pz; return float(np.exp(log_q) @ (log_q - lj + {LOGSUMEXP}))", "not cell probabilities"),
])
def test_06_1_names_each_slip(body, named):
    assert named in refused("06.1", from_source(KL_GRID.format(body), "kl_to_posterior"))


def test_06_1_the_kl_as_an_integral_of_densities_passes():
    # the density form: sum_i Q(z_i) dA (log Q(z_i) - log P(z_i|x)), log P(z_i|x) = log P(x, z_i) - log P(x)
    body = (f"lj = log_px_z + log_pz; log_px = {LOGSUMEXP} + np.log(area); "
            "return (np.exp(log_q) * area) @ (log_q - (lj - log_px))")
    assert grade("06.1", from_source(KL_GRID.format(body), "kl_to_posterior")) is None


NEG_ELBO = ("def neg_elbo(x, logits, mu, logvar, beta=1.0):\n    xp = npvae.backend.array_namespace(x)\n"
            "    log_p, kl = dist.bernoulli_log_likelihood(x, logits), dist.gaussian_kl(mu, logvar)\n    return {}\n")


@pytest.mark.parametrize("expression, named", [
    ("xp.sum(-log_p + beta * kl)", "summed over the batch"),
    ("xp.mean(log_p + beta * kl)", "reconstruction term has the wrong sign"),
    ("xp.mean(log_p - beta * kl)", "the ELBO itself"),
    ("xp.mean(-log_p - beta * kl)", "the KL term has the wrong sign"),
    ("xp.mean(-beta * log_p + kl)", "beta multiplies the reconstruction term"),
    ("xp.mean(-log_p + kl)", "beta is ignored"),
    ("-log_p + beta * kl", "return one number"),
])
def test_07_3_names_each_slip(expression, named):
    assert named in refused("07.3", from_source(NEG_ELBO.format(expression), "neg_elbo"))


def test_07_3_a_correct_answer_written_another_way_passes():
    expression = "float((beta * xp.sum(kl) - xp.sum(log_p)) / x.shape[0])"
    assert grade("07.3", from_source(NEG_ELBO.format(expression), "neg_elbo")) is None


def capstone(drop=(), npvae_kl=False):
    """A 07.4 answer: npvae.replaced's dict, each name mapped straight to its exercise in ``mine`` (every one has
    npvae's signature)."""
    def my_replacements(mine):
        functions = {
            "distributions.reparameterize": mine["02.1"], "distributions.reparameterize_backward": mine["02.2"],
            "distributions.bernoulli_log_likelihood": mine["03.1"], "distributions.gaussian_kl": mine["04.1"],
            "distributions.bernoulli_log_likelihood_backward": mine["03.2"],
            "distributions.gaussian_kl_backward": mine["04.2"],
            "layers.Dense.backward": mine["07.1"], "optim.Adam.step": mine["07.2"]}
        if npvae_kl:
            functions["distributions.gaussian_kl"] = npvae.distributions.gaussian_kl.textbook
        return {k: f for k, f in functions.items() if k not in drop}

    return my_replacements


def notebook_mine(**yours):
    """The notebooks' solutions of 02.1-07.2, keyed by exercise, with ``yours`` in place of some."""
    exercises_ = ("02.1", "02.2", "03.1", "03.2", "04.1", "04.2", "07.1", "07.2")
    return {**{e: solution(e) for e in exercises_}, **{e.replace("_", "."): f for e, f in yours.items()}}


def test_07_4_names_a_dense_backward_that_binds_new_arrays():
    # 07.1 goes in unwrapped since it has npvae's signature: a slip there shows in training and is named
    def dense_backward(self, dout, cache, need_dx=True):
        self.dW, self.db = cache.T @ dout, npvae.backend.array_namespace(dout).sum(dout, axis=0)
        return dout @ self.W.T if need_dx else None

    message = refused_capstone(notebook_mine(**{"07_1": dense_backward}))
    assert "run alone, your layers.Dense.backward gives the difference" in message and "self.dW[...] = ..." in message


def test_07_4_names_an_adam_step_that_binds_new_arrays():
    def adam_step(self, grads):
        solution("07.2")(self, grads)
        self.params = 1.0 * self.params  # a new array: the model never sees the step

    message = refused_capstone(notebook_mine(**{"07_2": adam_step}))
    assert "run alone, your optim.Adam.step gives the difference" in message and "self.params -= ..." in message


def refused_capstone(mine, my_replacements=None):
    try:
        EXERCISES["07.4"][1](my_replacements or capstone(), mine=mine)
    except ExerciseFailed as exc:
        assert str(exc).startswith("Exercise 07.4: ") and "\n" not in str(exc), str(exc)
        return str(exc)
    raise AssertionError("the grader of 07.4 passed a wrong answer")


def test_07_4_names_a_missing_function():
    message = refused("07.4", capstone(drop=("distributions.gaussian_kl_backward",)))
    assert "lacks 'distributions.gaussian_kl_backward' (from exercise 04.2)" in message


def test_07_4_names_npvaes_function_in_place_of_yours():
    message = refused("07.4", capstone(npvae_kl=True))
    assert "your distributions.gaussian_kl never called your function of exercise 04.1" in message


def test_07_4_a_wrapper_with_the_wrong_signature_is_named():
    def my_replacements(mine):
        functions = capstone()(mine)
        functions["layers.Dense.backward"] = lambda layer, dout: None  # no cache: it has the input x
        return functions

    assert "raised TypeError" in refused("07.4", my_replacements)


def test_07_4_correct_functions_written_another_way_train_to_the_same_loss(capsys):
    # other right answers to 02.1-07.2 (sqrt(exp(logvar)), Adam's efficient form, permute_dims, ...), in
    # float32: within the grader's stated 1e-3 (measured 1e-7)
    from test_replaced import (student_adam_step, student_dense_backward, student_kl, student_kl_backward,
                               student_log_likelihood, student_log_likelihood_backward, student_reparameterize,
                               student_reparameterize_backward)

    mine = {"02.1": student_reparameterize, "02.2": student_reparameterize_backward,
            "03.1": student_log_likelihood, "03.2": student_log_likelihood_backward, "04.1": student_kl,
            "04.2": student_kl_backward, "07.1": student_dense_backward, "07.2": student_adam_step}
    EXERCISES["07.4"][1](capstone(), mine=mine)
    out = capsys.readouterr().out
    assert "Exercise 07.4 passed" in out and "relative difference 0.0e+00" not in out, out  # ran, and not bit-equal
