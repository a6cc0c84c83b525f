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
