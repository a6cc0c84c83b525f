"""The gradient checker itself: right on known functions, and it catches wrong gradients."""

import numpy as np
import pytest

import npvae
from npvae import gradcheck
from npvae.backend import get_backend
from conftest import host, scale_dense_gradient


def test_rel_error_formula():
    a, b = np.array([1.0, -2.0, 0.0]), np.array([1.0, -2.1, 0.0])
    # max|a-b| / max(1e-8, max(|a|+|b|)) = 0.1 / 4.1
    assert gradcheck.rel_error(a, b) == pytest.approx(0.1 / 4.1)
    assert gradcheck.rel_error(a, a) == 0.0
    assert gradcheck.rel_error(np.zeros(3), np.full(3, 1e-12)) == pytest.approx(1e-4)  # the 1e-8 floor
    with pytest.raises(ValueError, match=r"b: expected shape \(3,\) \(the shape of a\), got \(2,\)"):
        gradcheck.rel_error(a, b[:2])


def test_numerical_gradient_of_a_known_function(be):
    x = be.asarray(np.array([[0.5, -1.0], [2.0, 3.0]]), "float64")
    f = lambda: float(be.xp.sum(x**3))  # noqa: E731  d/dx sum(x^3) = 3 x^2
    numeric = gradcheck.numerical_gradient(f, x)
    np.testing.assert_allclose(numeric, 3 * host(x) ** 2, rtol=1e-9)
    np.testing.assert_array_equal(host(x), [[0.5, -1.0], [2.0, 3.0]])  # restored
    some = gradcheck.numerical_gradient(f, x, indices=[3, 0])
    np.testing.assert_allclose(some, [27.0, 0.75], rtol=1e-9)


def test_directional_check(be, rng):
    x = be.asarray(rng.standard_normal(6), "float64")
    f = lambda: float(be.xp.sum(be.xp.sin(x)))  # noqa: E731
    right = be.xp.cos(x)
    numeric, analytic, err = gradcheck.directional_check(f, x, right)
    assert err < 1e-8 and numeric == pytest.approx(analytic, rel=1e-8)
    wrong = host(right).copy()
    wrong[2] += 0.05
    assert gradcheck.directional_check(f, x, wrong)[2] > 1e-4


def test_assert_gradients_match_raises_on_a_real_difference():
    gradcheck.assert_gradients_match(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 1e-9]))
    gradcheck.assert_gradients_match(np.zeros(2), np.full(2, 1e-12))  # noise around a zero gradient
    with pytest.raises(AssertionError, match=r"dW: relative error 4.98e-03 > 1e-06"):
        gradcheck.assert_gradients_match(np.array([1.0, 2.0]), np.array([1.0, 2.02]), name="dW")


def test_check_model_finds_the_block_with_a_wrong_gradient(monkeypatch, rng):
    # Break one backward: the bias gradient of every Dense is 1% too large.
    model = npvae.VAE(5, (4,), 2, dtype="float64", seed=0)
    x, eps = rng.uniform(size=(3, 5)), rng.standard_normal((3, 2))
    assert gradcheck.check_model(model, x, eps).passed()
    scale_dense_gradient(monkeypatch, "db", 1.01)
    report = gradcheck.check_model(model, x, eps)
    assert not report.passed()
    bad = {name for name, err in report.errors.items() if err > 1e-6}
    assert bad == {name for name, *_ in model.blocks if name.endswith(".b")}
    assert report.directional > 1e-6
    text = str(report)
    assert "theta.encoder.0.b" in text and "directional (all entries)" in text


def test_a_float32_model_is_not_precise_enough_to_check(rng):
    # The reason checks run in float64: float32 rounding swamps the central difference.
    model = npvae.VAE(5, (4,), 2, dtype="float32", seed=0)
    report = gradcheck.check_model(model, rng.uniform(size=(3, 5)), rng.standard_normal((3, 2)), h=1e-3)
    assert report.max_error > 1e-6
    assert get_backend().dtype_name(model.params.dtype) == "float32"


# -- NaN and inf fail, wherever they appear ------------------------------------------------
# (Python's max skips a NaN that is not first, and nan > tol is False: both once let a NaN
# gradient through as "PASS".)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rel_error_and_assert_gradients_match_on_a_non_finite_entry(bad):
    a, b = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0])
    wrong = a.copy()
    wrong[1] = bad  # not the first entry
    assert not np.isfinite(gradcheck.rel_error(wrong, b))
    assert not np.isfinite(gradcheck.rel_error(a, wrong))
    assert not np.isfinite(gradcheck.rel_error(wrong, wrong))  # equal, and still not a match
    message = r"dW: relative error nan \(entries that are NaN or inf: analytic 1, numeric 0\)"
    with pytest.raises(AssertionError, match=message):
        gradcheck.assert_gradients_match(wrong, b, name="dW")
    with pytest.raises(AssertionError, match=r"analytic 0, numeric 1"):
        gradcheck.assert_gradients_match(a, wrong, atol=np.inf)  # atol cannot excuse it


def test_directional_check_fails_on_a_non_finite_gradient_or_loss(be, rng):
    x = be.asarray(rng.standard_normal(6), "float64")
    f = lambda: float(be.xp.sum(be.xp.sin(x)))  # noqa: E731
    grad = host(be.xp.cos(x))
    grad[3] = np.nan
    assert np.isnan(gradcheck.directional_check(f, x, grad)[2])
    assert np.isnan(gradcheck.directional_check(lambda: np.inf, x, be.xp.cos(x))[2])


def _blocks(model):
    return {name: (a, b) for name, a, b, _shape in model.blocks}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("entries", [None, 2])  # every entry, or 2 per block (the NaN may go unsampled)
def test_a_non_finite_analytic_gradient_fails_the_report_and_names_its_block(monkeypatch, rng, bad, entries):
    model = npvae.VAE(5, (4,), 2, dtype="float64", seed=0)
    x, eps = rng.uniform(size=(3, 5)), rng.standard_normal((3, 2))
    a, _ = _blocks(model)["theta.mu.W"]  # not the first block: max() used to skip it
    original = model.loss_and_grads

    def planted(*args, **kwargs):
        res = original(*args, **kwargs)
        res.grads[a + 3] = bad
        return res

    monkeypatch.setattr(model, "loss_and_grads", planted)
    report = gradcheck.check_model(model, x, eps, max_entries_per_block=entries)
    assert not np.isfinite(report.max_error)
    assert not report.passed() and not report.passed(tol=np.inf)
    assert report.failed() == ["theta.mu.W", "directional (all entries)"]
    assert report.failed(tol=np.inf) == report.failed()
    assert all(np.isfinite(err) and err < 1e-6 for name, err in report.errors.items() if name != "theta.mu.W")
    assert "nan" in str(report)


def test_a_non_finite_numeric_gradient_fails_the_report(monkeypatch, rng):
    # The loss is NaN whenever one entry of theta.encoder.0.b moves: its central
    # difference, and the directional one, are NaN.
    model = npvae.VAE(5, (4,), 2, dtype="float64", seed=0)
    x, eps = rng.uniform(size=(3, 5)), rng.standard_normal((3, 2))
    j = _blocks(model)["theta.encoder.0.b"][0] + 1
    at_j = float(model.params[j])
    original = model.loss
    monkeypatch.setattr(model, "loss", lambda *a, **k: np.nan if float(model.params[j]) != at_j else original(*a, **k))
    report = gradcheck.check_model(model, x, eps)
    assert report.failed() == ["theta.encoder.0.b", "directional (all entries)"]
    assert np.isnan(report.max_error) and not report.passed()


def test_a_non_finite_loss_fails_the_report(monkeypatch, rng):
    import dataclasses

    model = npvae.VAE(5, (4,), 2, dtype="float64", seed=0)
    x, eps = rng.uniform(size=(3, 5)), rng.standard_normal((3, 2))
    original = model.loss_and_grads
    monkeypatch.setattr(model, "loss_and_grads",
                        lambda *a, **k: dataclasses.replace(original(*a, **k), loss_array=np.inf))
    report = gradcheck.check_model(model, x, eps)
    assert all(err < 1e-6 for err in report.errors.values()) and report.directional < 1e-6  # the gradient is right
    assert report.failed() == ["loss"] and not report.passed() and np.isnan(report.max_error)
    assert str(report).splitlines()[-1].split() == ["loss", "value", "inf"]


def test_failed_lists_the_blocks_over_the_tolerance():
    report = gradcheck.GradcheckReport(errors={"a": 1e-9, "b": 1e-3, "c": 2e-7}, directional=1e-4)
    assert report.failed() == ["b", "directional (all entries)"]
    assert report.failed(tol=1e-7) == ["b", "c", "directional (all entries)"]
    assert report.failed(tol=1e-2) == [] and report.passed(tol=1e-2)
    assert report.max_error == 1e-3
    not_run = gradcheck.GradcheckReport(errors={"a": 1e-9})  # no directional check: not a pass
    assert not_run.failed() == ["directional (all entries)"]
