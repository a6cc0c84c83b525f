"""Step 11 item 4: ``npvae.replaced({...})`` runs the given functions in place of npvae's
teaching functions of those names, for every array library and ahead of the fast paths, inside
the block and nowhere else (not after it, not in another thread). A student's own KL, its
backward, Dense's backward and Adam's step, written here without npvae's code, train
``npvae.fit`` to the same losses as npvae's functions: what the capstone exercise relies on."""

import math
import threading

import numpy as np
import pytest
from conftest import one_line, toy_images

import npvae
from npvae import distributions as dist
from npvae.backend import array_namespace


def kl_inputs():
    rng = np.random.default_rng(0)
    return [npvae.asarray(rng.standard_normal((3, 2)), dtype="float64") for _ in range(2)]


def marked(value):
    """A replacement that returns ``value`` whatever it is given."""
    return lambda *args, **kwargs: value


# --- a student's functions, written from the math, not from npvae's code ------------------------
def column(d, xp):
    """An upstream gradient: one number for every row, or one per row as a column (N, 1)."""
    return d if isinstance(d, (int, float)) else xp.reshape(d, (-1, 1))


def student_reparameterize(mu, logvar, eps):
    xp = array_namespace(mu)
    return mu + xp.sqrt(xp.exp(logvar)) * eps  # sigma = sqrt(variance)


def student_reparameterize_backward(dz, logvar, eps):
    xp = array_namespace(dz)
    return dz, dz * eps * xp.sqrt(xp.exp(logvar)) / 2.0


def student_kl(mu, logvar):  # -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)
    xp = array_namespace(mu)
    return -0.5 * xp.sum(1.0 + logvar - mu**2 - xp.exp(logvar), axis=1)


def student_kl_backward(dkl, mu, logvar):
    xp = array_namespace(mu)
    dkl = column(dkl, xp)
    return dkl * mu, dkl * (xp.exp(logvar) - 1.0) / 2.0


def student_log_likelihood(x, logits):  # sum_d x_d l_d - log(1 + e^{l_d})
    xp = array_namespace(logits)
    return xp.sum(x * logits - xp.log(1.0 + xp.exp(logits)), axis=1)


def student_log_likelihood_backward(dlog_p, x, logits):
    xp = array_namespace(logits)
    return column(dlog_p, xp) * (x - 1.0 / (1.0 + xp.exp(-logits)))


def student_dense_backward(layer, dout, cache, need_dx=True):
    xp = array_namespace(dout)
    x = cache
    layer.dW[...] = xp.matmul(xp.permute_dims(x, (1, 0)), dout)
    layer.db[...] = xp.sum(dout, axis=0)
    return xp.matmul(dout, xp.permute_dims(layer.W, (1, 0))) if need_dx else None


def student_adam_step(opt, grads):  # Kingma & Ba's "efficient" form: the bias corrections folded into the step
    xp = array_namespace(grads)
    opt.t += 1
    opt.m[...] = opt.beta1 * opt.m + (1.0 - opt.beta1) * grads
    opt.v[...] = opt.beta2 * opt.v + (1.0 - opt.beta2) * grads**2
    root = math.sqrt(1.0 - opt.beta2**opt.t)
    opt.params -= (opt.lr * root / (1.0 - opt.beta1**opt.t)) * opt.m / (xp.sqrt(opt.v) + opt.eps * root)


STUDENT = {
    "distributions.reparameterize": student_reparameterize,
    "distributions.reparameterize_backward": student_reparameterize_backward,
    "distributions.gaussian_kl": student_kl,
    "distributions.gaussian_kl_backward": student_kl_backward,
    "distributions.bernoulli_log_likelihood": student_log_likelihood,
    "distributions.bernoulli_log_likelihood_backward": student_log_likelihood_backward,
    "layers.Dense.backward": student_dense_backward,
    "optim.Adam.step": student_adam_step,
}


def counted(functions):
    """The functions, each wrapped to count its calls in ``calls[name]``."""
    calls = dict.fromkeys(functions, 0)

    def wrap(name, f):
        def run(*args, **kwargs):
            calls[name] += 1
            return f(*args, **kwargs)
        return run

    return {name: wrap(name, f) for name, f in functions.items()}, calls


def train(functions=None):
    """Two epochs of npvae.fit on toy images, float64, seed 0 (inside ``npvae.replaced(functions)``
    when given): the history's training and test losses."""
    x, _ = toy_images(n=240, d=36)
    model = npvae.VAE(36, (16,), 2, dtype="float64", seed=0)
    if functions is None:
        history = npvae.fit(model, x[:180], x[180:], epochs=2, batch_size=20, seed=0, progress=False)
    else:
        with npvae.replaced(functions):
            history = npvae.fit(model, x[:180], x[180:], epochs=2, batch_size=20, seed=0, progress=False)
    return np.array([history.column("loss"), history.column("test_loss")])


# --- the student's functions train the model ------------------------------------------------------
def test_a_students_functions_train_fit_to_npvaes_losses():
    reference = train()
    functions, calls = counted(STUDENT)
    student = train(functions)
    assert all(n > 0 for n in calls.values()), calls  # each ran, ahead of npvae's fast paths too
    np.testing.assert_allclose(student, reference, rtol=1e-10, atol=0)


def test_a_wrong_replacement_changes_the_loss():
    def kl_sign_error(mu, logvar):
        xp = array_namespace(mu)
        return 0.5 * xp.sum(mu**2 + xp.exp(logvar) - 1.0 + logvar, axis=1)  # + logvar: should be - logvar

    reference = train()
    wrong = train({**STUDENT, "distributions.gaussian_kl": kl_sign_error})
    assert np.max(np.abs(wrong - reference)) > 1e-3


# --- inside the block, and nowhere else -----------------------------------------------------------
def test_a_replacement_runs_inside_the_block_and_not_after():
    mu, logvar = kl_inputs()
    textbook = np.asarray(npvae.to_numpy(dist.gaussian_kl.textbook(mu, logvar)))
    with npvae.replaced({"distributions.gaussian_kl": marked("yours")}):
        assert dist.gaussian_kl(mu, logvar) == "yours"
        assert np.array_equal(npvae.to_numpy(dist.gaussian_kl.textbook(mu, logvar)), textbook)  # fn.textbook stays
        with npvae.textbook():  # ahead of the textbook switch too
            assert dist.gaussian_kl(mu, logvar) == "yours"
    np.testing.assert_allclose(npvae.to_numpy(dist.gaussian_kl(mu, logvar)), textbook, rtol=1e-14)


def test_a_replaced_method_gets_the_object_first():
    opt = npvae.optim.Adam(npvae.asarray(np.zeros(3), dtype="float64"))
    with npvae.replaced({"optim.Adam.step": lambda self, grads: (self, grads)}):
        assert opt.step("g") == (opt, "g")


def test_nested_blocks_add_to_the_outer_one_and_give_it_back():
    mu, logvar = kl_inputs()
    outer = {"distributions.gaussian_kl": marked("outer kl"), "distributions.reparameterize": marked("outer z")}
    with npvae.replaced(outer):
        with npvae.replaced({"distributions.gaussian_kl": marked("inner kl")}):
            assert dist.gaussian_kl(mu, logvar) == "inner kl"
            assert dist.reparameterize(mu, logvar, mu) == "outer z"
        assert dist.gaussian_kl(mu, logvar) == "outer kl"
    assert not isinstance(dist.gaussian_kl(mu, logvar), str)


def test_an_exception_in_the_block_restores_npvaes_functions():
    mu, logvar = kl_inputs()
    with pytest.raises(ZeroDivisionError):
        with npvae.replaced({"distributions.gaussian_kl": lambda mu, logvar: 1 / 0}):
            dist.gaussian_kl(mu, logvar)
    assert dist.gaussian_kl(mu, logvar).shape == (3,)


def test_another_thread_runs_npvaes_functions():
    mu, logvar = kl_inputs()
    seen = []
    with npvae.replaced({"distributions.gaussian_kl": marked("yours")}):
        thread = threading.Thread(target=lambda: seen.append(dist.gaussian_kl(mu, logvar)))
        thread.start()
        thread.join()
        assert dist.gaussian_kl(mu, logvar) == "yours"
    assert len(seen) == 1 and not isinstance(seen[0], str)


def test_a_replacement_that_calls_the_function_it_replaces_is_refused():
    mu, logvar = kl_inputs()
    with npvae.replaced({"distributions.gaussian_kl": lambda mu, logvar: dist.gaussian_kl(mu, logvar) + 0}):
        with pytest.raises(RuntimeError) as info:
            dist.gaussian_kl(mu, logvar)
    assert "calls npvae's distributions.gaussian_kl" in one_line(info)


# --- what is refused, in one line -----------------------------------------------------------------
def test_an_unknown_name_is_refused_with_the_close_ones():
    with pytest.raises(ValueError) as info:
        npvae.replaced({"distributions.gausian_kl": student_kl})
    assert "'distributions.gausian_kl'" in one_line(info) and "'distributions.gaussian_kl'" in one_line(info)
    with pytest.raises(ValueError) as info:
        npvae.replaced({"vae.VAE.forward": student_kl})
    assert "layers, distributions or optim" in one_line(info)


def test_a_function_training_never_calls_is_refused():
    with pytest.raises(ValueError) as info:
        npvae.replaced({"distributions.gaussian_log_density": student_kl})
    assert "training never calls" in one_line(info) and "gaussian_kl" in one_line(info)


def test_something_not_callable_is_refused():
    with pytest.raises(TypeError) as info:
        npvae.replaced({"distributions.gaussian_kl": np.zeros((3, 3))})  # a multi-line repr stays out
    assert one_line(info).startswith("npvae.replaced: distributions.gaussian_kl: expected a function")
    with pytest.raises(TypeError):
        npvae.replaced([("distributions.gaussian_kl", student_kl)])


# --- every function of the teaching modules that training runs can be replaced -------------------
TEACHING_FILES = {f"npvae/{m}.py": m for m in ("layers", "distributions", "optim")}
NOT_STEPS = {"distributions.per_row", "optim.make_optimizer", "optim.Optimizer.__init__", "optim.SGD.__init__",
             "optim.Adagrad.__init__", "optim.Adam.__init__"}  # a reshape, and building the optimizer


@pytest.mark.parametrize("likelihood, activation, posterior, optimizer", [
    ("bernoulli", "relu", "diagonal", "adam"), ("gaussian", "tanh", "full", "sgd"),
    ("bernoulli", "sigmoid", "diagonal", "adagrad")])
def test_every_function_a_training_run_calls_is_replaceable(likelihood, activation, posterior, optimizer):
    import sys

    from npvae import replaceable

    x, _ = toy_images(n=40, d=8)
    model = npvae.VAE(8, (4,), 2, likelihood=likelihood, activation=activation, posterior=posterior, seed=0)
    called = set()

    def profile(frame, event, arg):
        module = TEACHING_FILES.get("/".join(frame.f_code.co_filename.split("/")[-2:]))
        if event == "call" and module and "<" not in frame.f_code.co_qualname:  # not a comprehension's frame
            called.add(f"{module}.{frame.f_code.co_qualname}")

    sys.setprofile(profile)
    try:
        npvae.fit(model, x[:30], x[30:], epochs=1, batch_size=10, optimizer=optimizer, progress=False)
    finally:
        sys.setprofile(None)
    assert called - NOT_STEPS <= set(replaceable._FUNCTIONS), sorted(called - NOT_STEPS - set(replaceable._FUNCTIONS))
