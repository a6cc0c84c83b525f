"""The posterior as one object (``npvae.vae``): each posterior's rsample/kl backwards and the
encoder's head, against central differences in float64, on both posteriors; and the model
choosing the posterior once, at construction."""

import numpy as np
import pytest

import npvae
from npvae.backend import get_backend
from npvae.gradcheck import assert_gradients_match, numerical_gradient
from npvae.layers import FlatParameters
from npvae.vae import FAMILIES, GaussianHead
from conftest import host

N, H, Z = 3, 5, 3
both = pytest.mark.parametrize("posterior", ["diagonal", "full"])


def on_backend(a):
    return npvae.asarray(np.asarray(a, dtype=np.float64), dtype="float64")


def weighted_sum(a, w):
    """sum(a * w): a scalar whose gradient with respect to a is w."""
    return float(get_backend().xp.sum(a * w))


def joined(grads):
    return np.concatenate([host(g).ravel() for g in grads])


@both
def test_rsample_and_kl_backwards_match_central_differences(rng, posterior):
    # loss(q's fields) = sum g_z * q.rsample(eps) + sum g_kl * q.kl(), as the VAE composes them
    family = FAMILIES[posterior]
    fields = [on_backend(rng.uniform(-1.5, 1.0, size=(N, w))) for w in family.widths(Z)]
    eps, g_z, g_kl = (on_backend(rng.standard_normal(shape)) for shape in ((N, Z), (N, Z), (N,)))

    def loss():
        q = family(*fields)
        return weighted_sum(q.rsample(eps), g_z) + weighted_sum(q.kl(), g_kl)

    q = family(*fields)
    dq = [a + b for a, b in zip(q.rsample_backward(g_z, eps), q.kl_backward(g_kl))]
    assert len(dq) == len(fields) and all(d.shape == f.shape for d, f in zip(dq, fields))
    assert_gradients_match(joined(dq), joined(numerical_gradient(loss, f) for f in fields))


@both
def test_the_head_backward_matches_central_differences(rng, posterior):
    head = GaussianHead(FAMILIES[posterior], H, Z)
    flat = FlatParameters([(f"theta.{name}", layer) for name, layer in head.layers.items()], seed=3,
                          dtype="float64")
    h = on_backend(rng.standard_normal((N, H)))
    weights = [on_backend(rng.standard_normal((N, w))) for w in FAMILIES[posterior].widths(Z)]

    def loss():  # sum over the fields of q of (field * its weight): d loss / d field = weight
        q, _ = head.forward(h)
        return sum(weighted_sum(field, w) for field, w in zip(q, weights))

    q, caches = head.forward(h)
    assert type(q) is FAMILIES[posterior]
    dh = head.backward(weights, caches)
    assert_gradients_match(host(dh), numerical_gradient(loss, h), name="dh")
    assert_gradients_match(host(flat.grads), numerical_gradient(loss, flat.params), name="dW, db")


@both
def test_the_posterior_is_chosen_at_construction(rng, posterior):
    model = npvae.VAE(6, (H,), Z, dtype="float64", posterior=posterior)
    x = rng.uniform(size=(N, 6))
    fwd = model.forward(x, rng.standard_normal((N, Z)))
    assert type(fwd.q) is type(model.posterior(x)) is FAMILIES[posterior]
    assert list(model.head.layers) == list(FAMILIES[posterior]._fields)  # the blocks theta.<field>
    for a, b in zip(fwd.q, model.posterior(x)):  # posterior() runs forward's encoder
        np.testing.assert_array_equal(host(a), host(b))
    mu, logvar = model.encode(x)
    np.testing.assert_allclose(host(logvar), np.log(host(fwd.q.variance)), rtol=1e-12)  # log diag(Sigma)
    np.testing.assert_allclose(np.exp(host(logvar)), np.diagonal(host(fwd.q.covariance), axis1=1, axis2=2),
                               rtol=1e-12)


def test_an_unknown_posterior_is_refused_by_the_size_functions_too():
    # a checkpoint's config reaches parameter_count before VAE(): it once counted "bogus" as diagonal
    with pytest.raises(ValueError, match=r"^posterior: expected one of \('diagonal', 'full', 'full-absolute'\), got 'bogus'$"):
        npvae.vae.parameter_count(4, (3,), 2, "bogus")
