"""The planted wrong answers of the notebooks' exercises, keyed by exercise: each is a
plausible mistake put in place of the solution (between nbgrader's markers) by
tests/test_exercises.py, to check that the exercise's grader catches it. They live here, not in
the notebooks, so that nbgrader never copies them into a release for students."""

WRONG = {
    "02.1": """\
sigma = xp.exp(logvar)
return mu + sigma * eps""",
    "02.2": """\
sigma = xp.exp(0.5 * logvar)
return dz, dz * sigma * eps""",
    "03.1": """\
p = 1.0 / (1.0 + xp.exp(-logits))
return xp.sum(x * xp.log(p) + (1 - x) * xp.log(1 - p), axis=-1)""",
    "03.2": """\
p = dist.sigmoid(logits)
return dist.per_row(dlog_p) * (p - x)""",
    "03.3": """\
squared_error = xp.sum((x - mean) ** 2, axis=-1)
return -0.5 * squared_error""",
    "04.1": """\
return xp.sum(mu**2 + xp.exp(logvar) - 1 - logvar, axis=-1)""",
    "04.2": """\
dkl = dist.per_row(dkl)
return dkl * mu, dkl * (xp.exp(logvar) - 1)""",
    "06.1": """\
q = np.exp(log_q) * area
q = q / q.sum()
log_joint = log_px_z + log_pz
top = np.max(log_joint)
p = np.exp(log_joint - top)
p = p / p.sum()
return float(p @ (np.log(p) - np.log(q)))""",
    "07.1": """\
x = cache
self.dW[...] = dout.T @ x
self.db[...] = xp.sum(dout, axis=0)
return dout @ self.W.T if need_dx else None""",
    "07.2": """\
self.t += 1
self.m[...] = self.beta1 * self.m + (1.0 - self.beta1) * grads
self.v[...] = self.beta2 * self.v + (1.0 - self.beta2) * grads * grads
self.params -= self.lr * self.m / (xp.sqrt(self.v) + self.eps)""",
    "07.3": """\
log_p = dist.bernoulli_log_likelihood(x, logits)
kl = dist.gaussian_kl(mu, logvar)
return xp.sum(-log_p + beta * kl)""",
    "07.4": """\
return {"distributions.reparameterize": mine["02.1"], "distributions.reparameterize_backward": mine["02.2"],
        "distributions.bernoulli_log_likelihood": mine["03.1"],
        "distributions.bernoulli_log_likelihood_backward": mine["03.2"],
        "distributions.gaussian_kl": mine["04.1"], "distributions.gaussian_kl_backward": mine["04.2"],
        "layers.Dense.backward": mine["07.1"], "optim.Adam.step": npvae.optim.Adam.step.textbook}""",
    "08.1": """\
class ELU:
    param_shapes = {}

    def forward(self, x):
        xp = backend.array_namespace(x)
        neg = xp.minimum(x, 0.0)
        out = xp.where(x > 0, x, alpha * xp.expm1(neg))
        return out, out

    def backward(self, dout, cache):
        xp = backend.array_namespace(dout)
        out = cache
        slope = xp.where(out > 0, xp.ones_like(out), alpha * xp.exp(xp.minimum(out, 0.0)))
        return dout * slope

return ELU()""",
    "08.2": """\
z = mu.shape[-1]
trace = xp.sum(xp.exp(2.0 * log_diag), axis=-1)
log_det = 2.0 * xp.sum(log_diag, axis=-1)
return 0.5 * (trace + xp.sum(mu * mu, axis=-1) - z - log_det)""",
    "10.1": """\
w = xp.exp(log_w - xp.max(log_w, axis=0, keepdims=True))
return dist.per_row(dL) * (w / xp.sum(w, axis=0, keepdims=True))""",
}
