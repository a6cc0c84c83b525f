"""Graders for notebook 06 (the graphical model and the ELBO).

- ``check_kl_to_posterior(kl_to_posterior)``, exercise 06.1: KL(Q(z|x) || P(z|x)) on a 2-D grid,
  from the log densities at the grid points, log Q(z_i|x), log P(x|z_i) and log P(z_i), and the
  cell area. It is graded on a model whose posterior is known in closed form (z ~ N(0, I),
  x | z ~ N(A z + b, s^2 I): a linear Gaussian, so P(z|x) and P(x) are Gaussian too), against
  the closed-form KL between two Gaussians, and by the identity log P(x) - ELBO = KL(Q || P(z|x)),
  each side computed on its own. Tried on two Q's: one near the posterior and one far from it.

It recognises the common mistakes (the KL's direction swapped, a posterior not normalized, the
prior or the likelihood in place of the posterior, Q's cell probabilities not normalized) and
says what is wrong in words.
"""

from __future__ import annotations

import numpy as np

from . import call, fail, host, passed

EXERCISE = "06.1"
RTOL = 1e-6  # the grid (161 x 161 over mu +- 9 sigma of both Gaussians) is accurate to about 1e-12


def _logsumexp(a):
    m = np.max(a)
    return m + np.log(np.sum(np.exp(a - m)))


def _gaussian_kl(m0, S0, m1, S1):
    """KL(N(m0, S0) || N(m1, S1)) in closed form."""
    S1_inv = np.linalg.inv(S1)
    d = m1 - m0
    return 0.5 * (np.trace(S1_inv @ S0) + d @ S1_inv @ d - len(m0) + np.log(np.linalg.det(S1) / np.linalg.det(S0)))


def _log_normal(z, mean, cov):
    """log N(z_i; mean, cov) at the rows of z (M, 2)."""
    d = z - mean
    return -0.5 * (np.sum(d @ np.linalg.inv(cov) * d, axis=1) + np.log(np.linalg.det(2 * np.pi * cov)))


def _case(shift):
    """A linear-Gaussian model and one observed x; Q = the posterior moved by ``shift`` (in its own
    standard deviations) and made rounder. Returns the grid's (log_q, log_px_z, log_pz, area) and
    the closed-form log P(x), KL(Q || P(z|x)), KL(P(z|x) || Q), KL(Q || P(z)) and E_Q[log P(x|z)]."""
    A = np.array([[1.2, -0.4], [0.3, 0.9], [-0.7, 0.5]])
    b, s2, x = np.array([0.1, -0.2, 0.3]), 0.5**2, np.array([0.8, -0.5, 1.1])
    post_cov = np.linalg.inv(np.eye(2) + A.T @ A / s2)               # P(z|x) = N(post_mean, post_cov)
    post_mean = post_cov @ A.T @ (x - b) / s2
    q_mean = post_mean + shift * np.sqrt(np.diag(post_cov))
    q_cov = np.diag(np.diag(post_cov)) * 1.3                          # Q is diagonal, like the encoder's
    sd = np.sqrt(np.maximum(np.diag(post_cov), np.diag(q_cov)))
    lo, hi = np.minimum(post_mean, q_mean) - 9 * sd, np.maximum(post_mean, q_mean) + 9 * sd
    g1, g2 = np.linspace(lo[0], hi[0], 161), np.linspace(lo[1], hi[1], 161)
    z = np.stack([a.ravel() for a in np.meshgrid(g1, g2)], axis=1)
    area = (g1[1] - g1[0]) * (g2[1] - g2[0])
    log_px_z = _log_normal(x - z @ A.T, b, s2 * np.eye(3))            # N(x; A z + b, s^2 I)
    log_pz = _log_normal(z, np.zeros(2), np.eye(2))
    log_q = _log_normal(z, q_mean, q_cov)
    log_px = _log_normal(x[None, :], b, A @ A.T + s2 * np.eye(3))[0]  # P(x) = N(b, A A^T + s^2 I)
    kl = _gaussian_kl(q_mean, q_cov, post_mean, post_cov)
    reverse = _gaussian_kl(post_mean, post_cov, q_mean, q_cov)
    kl_prior = _gaussian_kl(q_mean, q_cov, np.zeros(2), np.eye(2))
    return (log_q, log_px_z, log_pz, area), {"log_px": log_px, "kl": kl, "reverse": reverse, "kl_prior": kl_prior}


def _slips(log_q, log_px_z, log_pz, area):
    """(value, message) of the common mistakes, computed on the grid."""
    q = np.exp(log_q) * area
    log_joint = log_px_z + log_pz
    log_p = log_joint - _logsumexp(log_joint)                       # log P_i, the normalized grid posterior
    p = np.exp(log_p)

    def kl_q(log_other):  # sum_i Q_i (log Q_i - log other_i)
        return q @ (np.log(q) - log_other)

    return [
        (p @ (log_p - np.log(q)), "that is KL(P(z|x) || Q), the KL's direction swapped: the expectation is over Q, "
                                  "the first argument (slide 25's KL(Q || P(z|x))); the KL is not symmetric"),
        (kl_q(log_joint + np.log(area)), "the posterior is not normalized: log P(x|z) + log P(z) is the log of "
                                         "P(x, z) = P(z|x) P(x), so divide by P(x), its sum over the grid"),
        (kl_q(log_joint), "the posterior is not normalized: log P(x|z) + log P(z) is the log of P(x, z), "
                          "not of P(z|x); divide by P(x), its sum over the grid times the cell area"),
        (kl_q(log_pz + np.log(area)), "that is KL(Q || P(z)), to the prior: the posterior is P(z|x), proportional "
                                      "to P(x|z) P(z)"),
        (kl_q(log_px_z - _logsumexp(log_px_z)), "the posterior lacks the prior: P(z|x) is proportional to "
                                                "P(x|z) P(z), not to P(x|z) alone"),
        (np.exp(log_q) @ (log_q - log_p), "Q's values are densities, not cell probabilities: weigh each point by "
                                          "Q(z_i|x) times the cell area, as the posterior's P_i are"),
    ]


def check_kl_to_posterior(kl_to_posterior):
    """Grade exercise 06.1: ``kl_to_posterior(log_q, log_px_z, log_pz, area)`` -> KL(Q(z|x) || P(z|x))."""
    for shift in (0.3, 3.0):
        args, exact = _case(shift)
        got = host(call(EXERCISE, kl_to_posterior, *args), EXERCISE, "the KL")
        if got.shape != ():
            fail(EXERCISE, f"return one number, the KL in nats, not an array of shape {got.shape}")
        if not np.isclose(got, exact["kl"], rtol=RTOL, atol=1e-9):
            for value, message in _slips(*args):
                if np.isclose(got, value, rtol=1e-9, atol=1e-9):
                    fail(EXERCISE, message)
            fail(EXERCISE, f"KL(Q || P(z|x)) is {exact['kl']:.6f} nats on this grid (a Q {shift:g} posterior standard "
                           f"deviations off; closed form, the model is linear-Gaussian); yours is {float(got):.6f}")
        # The identity, each side on its own: log P(x) - ELBO, with the ELBO from Q's expectation of log P(x|z)
        log_q, log_px_z, log_pz, area = args
        q = np.exp(log_q) * area
        elbo = (q / q.sum()) @ log_px_z - exact["kl_prior"]
        gap = exact["log_px"] - elbo
        if not np.isclose(got, gap, rtol=RTOL, atol=1e-9):
            fail(EXERCISE, f"log P(x) - ELBO is {gap:.6f} nats here and your KL {float(got):.6f}")
    passed(EXERCISE, f"your KL(Q || P(z|x)) on a 161 x 161 grid equals the closed form of a linear-Gaussian model "
                     f"and log P(x) - ELBO (to {RTOL:g} relative), for a Q near the posterior and one far from it")
