"""Every layer's backward against central differences, in float64.

For a layer out = f(x) and a fixed random upstream gradient G, the scalar L = sum(out * G)
has dL/dout = G, so backward(G) must equal the numerical gradient of L.
"""

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from npvae import layers
from npvae.backend import get_backend
from npvae.gradcheck import assert_gradients_match, numerical_gradient
from conftest import host, values

dims = st.integers(1, 6)


def scalar_loss(layer, x, g):
    """L = sum(forward(x) * g) as a Python float."""
    xp = get_backend().xp
    return float(xp.sum(layer.forward(x)[0] * g))


def check_input_gradient(layer, x_host, g_host):
    be = get_backend()
    x, g = be.asarray(x_host, "float64"), be.asarray(g_host, "float64")
    out, cache = layer.forward(x)
    assert tuple(out.shape) == g_host.shape
    dx = layer.backward(g, cache)
    assert tuple(dx.shape) == x_host.shape
    numeric = numerical_gradient(lambda: scalar_loss(layer, x, g), x)
    assert_gradients_match(dx, numeric)
    return x, g


@given(data=st.data(), n=dims, d_in=dims, d_out=dims, seed=st.integers(0, 2**16))
def test_dense_backward(data, n, d_in, d_out, seed):
    layer = layers.Dense(d_in, d_out)
    flat = layers.FlatParameters([("dense", layer)], seed=seed, dtype="float64")
    x_host = data.draw(values((n, d_in)))
    g_host = data.draw(values((n, d_out)))
    x, g = check_input_gradient(layer, x_host, g_host)
    layer.backward(g, layer.forward(x)[1])  # fills dW, db (views into flat.grads)
    f = lambda: scalar_loss(layer, x, g)  # noqa: E731
    assert_gradients_match(layer.dW, numerical_gradient(f, layer.W))
    assert_gradients_match(layer.db, numerical_gradient(f, layer.b))
    # The views are the flat vectors: dW sits at the start of flat.grads.
    np.testing.assert_array_equal(host(flat.grads)[: d_in * d_out], host(layer.dW).ravel())


def test_dense_forward_is_affine(rng):
    layer = layers.Dense(3, 2)
    layers.FlatParameters([("d", layer)], seed=0, dtype="float64")
    x = rng.standard_normal((4, 3))
    out, _ = layer.forward(get_backend().asarray(x))
    np.testing.assert_allclose(host(out), x @ host(layer.W) + host(layer.b), rtol=1e-12)


def test_dense_skips_input_gradient_when_asked(rng):
    layer = layers.Dense(3, 2)
    layers.FlatParameters([("d", layer)], seed=0, dtype="float64")
    be = get_backend()
    out, cache = layer.forward(be.asarray(rng.standard_normal((4, 3))))
    assert layer.backward(be.asarray(rng.standard_normal((4, 2))), cache, need_dx=False) is None
    assert float(be.xp.sum(be.xp.abs(layer.dW))) > 0  # the parameter gradient is still written


def test_dense_init_matches_pytorch_default():
    layer = layers.Dense(400, 30)
    layers.FlatParameters([("d", layer)], seed=0, dtype="float64")
    bound = 1 / np.sqrt(400)
    w = host(layer.W)
    assert w.min() >= -bound and w.max() <= bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.05 * bound  # uniform on [-b, b]


@given(data=st.data(), n=dims, d=dims)
def test_relu_backward_away_from_the_kink(data, n, d):
    x = data.draw(values((n, d)))
    x = np.sign(x + 1e-12) * (np.abs(x) + 0.01)  # |x| >= 0.01 > h: no difference crosses 0
    check_input_gradient(layers.ReLU(), x, data.draw(values((n, d))))


@given(data=st.data(), n=dims, d=dims)
def test_tanh_backward(data, n, d):
    check_input_gradient(layers.Tanh(), data.draw(values((n, d))), data.draw(values((n, d))))


@given(data=st.data(), n=dims, d=dims)
def test_sigmoid_backward(data, n, d):
    x = data.draw(values((n, d), -20.0, 20.0))
    check_input_gradient(layers.Sigmoid(), x, data.draw(values((n, d))))


def test_sigmoid_is_stable_for_huge_inputs():
    be = get_backend()
    x = be.asarray(np.array([[-1e4, -50.0, 0.0, 50.0, 1e4]]))
    # Underflow of exp(-1e4) to 0 is exact here; overflow, 0/0 or inf-inf would not be.
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        s = host(layers.sigmoid(x))
    np.testing.assert_allclose(s, [[0.0, 1.9287498479639178e-22, 0.5, 1.0, 1.0]], rtol=1e-12, atol=0)


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_mlp_backward_two_hidden_layers(activation, rng):
    mlp = layers.MLP((5, 4, 3, 2), activation, activate_last=True)
    flat = layers.FlatParameters([(f"mlp.{k}", layer) for k, layer in mlp.named_layers()], seed=1, dtype="float64")
    assert [name for name, *_ in flat.blocks] == ["mlp.0.W", "mlp.0.b", "mlp.1.W", "mlp.1.b", "mlp.2.W", "mlp.2.b"]
    be = get_backend()
    x = be.asarray(rng.standard_normal((6, 5)))
    g = be.asarray(rng.standard_normal((6, 2)))
    f = lambda: float(be.xp.sum(mlp.forward(x)[0] * g))  # noqa: E731
    out, caches = mlp.forward(x)
    dx = mlp.backward(g, caches)
    assert_gradients_match(dx, numerical_gradient(f, x))
    # All parameters at once, through the flat vector the layers are views of.
    assert_gradients_match(flat.grads, numerical_gradient(f, flat.params))


def test_mlp_layout_and_identity():
    mlp = layers.MLP((784, 400, 20), "relu")
    assert [repr(layer) for layer in mlp.layers] == ["Dense(784, 400)", "ReLU()", "Dense(400, 20)"]
    assert layers.MLP((5,), "tanh").layers == []
    with pytest.raises(ValueError, match=r"activation: expected one of \('relu', 'tanh', 'sigmoid'\), got 'gelu'"):
        layers.MLP((3, 2, 1), "gelu")
    with pytest.raises(ValueError, match=r"dims: expected one or more positive widths, got \[3, 0\]"):
        layers.MLP((3, 0), "relu")
