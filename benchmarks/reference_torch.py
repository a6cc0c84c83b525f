"""Train the same VAE in npvae and in PyTorch and check that their test -ELBO agree.

    python benchmarks/reference_torch.py                         # both datasets, seeds 0 1 2
    python benchmarks/reference_torch.py --datasets mnist-subset --seeds 0 --epochs 2

The model is the one of PyTorch's examples (``examples/vae/main.py``), 784-400-20 with ReLU:

    encoder: Linear(784, 400) + ReLU, then two heads Linear(400, 20): mu and logvar
    z = mu + exp(logvar / 2) * eps,  eps ~ N(0, I)
    decoder: Linear(20, 400) + ReLU, Linear(400, 784) -> logits
    loss = mean over the batch of [ BCE-with-logits(logits, x) summed over pixels + KL ],
    KL = 0.5 * sum(mu^2 + exp(logvar) - 1 - logvar)

trained on grey levels (the Bernoulli likelihood of x in [0, 1]) with Adam (lr 1e-3, PyTorch's
defaults), batch 128, reshuffled every epoch with the last partial batch kept, default
``nn.Linear`` initialization, float32. After every epoch the test -ELBO is the mean over the
test set of the same loss, one eps per example, without gradient.

For each dataset and seed both are trained (npvae with ``seed``, PyTorch after
``torch.manual_seed(seed)``), a per-epoch table of test -ELBO is printed, and per dataset the
mean and standard deviation over seeds of the final test -ELBO of each, their difference, and
PASS / FAIL for |difference of means| <= --tol nats (default 1). The exit status is 1 if any
dataset fails.

The two do not draw the same random numbers (initialization, data order and eps come from
different generators), so single runs differ by the seed-to-seed spread; the comparison is
between means over seeds.

Threads: ``--threads N`` (default: all available cores) is used by both: PyTorch through
``torch.set_num_threads(N)``, NumPy's BLAS through ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``
/ ``MKL_NUM_THREADS``, which this script sets before it imports NumPy (npvae's own elementwise
work runs in one thread).

PyTorch is *not* a dependency of npvae: it is needed by this script only. Without it, the
script says so and exits with status 0.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

DATASETS = ("mnist-subset", "fashion-mnist")
TORCH_HINT = "pip install torch  (CPU build: pip install torch --index-url https://download.pytorch.org/whl/cpu)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Train the same VAE (784-400-20, ReLU, Bernoulli) in npvae and in PyTorch "
        "and compare their final test -ELBO.")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=["mnist-subset", "fashion-mnist", "mnist"], metavar="NAME",
                   help="mnist-subset, fashion-mnist and/or mnist (default: %(default)s)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="SEED", help="seeds (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=10, help="epochs (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads for both PyTorch and NumPy's BLAS (default: all available cores)")
    p.add_argument("--tol", type=float, default=1.0,
                   help="PASS if |mean npvae - mean PyTorch| <= tol nats (default: %(default)s)")
    p.add_argument("--data-dir", default=None, help="where to look for fashion-mnist / mnist first")
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs: expected a positive integer")
    if args.threads is None:
        args.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if args.threads < 1:
        p.error("--threads: expected a positive integer")
    return args


def set_blas_threads(n):
    """Must run before NumPy is imported: OpenBLAS / MKL read these when they load."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)


def git_revision(path):
    """``<commit>`` or ``<commit>+dirty`` of the git tree holding ``path``, or None."""
    import subprocess

    try:
        cwd = os.path.dirname(os.path.abspath(path))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=cwd,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except Exception:  # noqa: BLE001 - only informative
        return None


def numpy_blas_threads():
    """OpenBLAS's thread count as NumPy's wheel reports it, or None where it can't be asked."""
    try:
        import ctypes
        import glob

        import numpy as np

        libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
        for path in glob.glob(os.path.join(libdir, "*openblas*")):
            lib = ctypes.CDLL(path)
            for sym in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                        "openblas_get_num_threads64_", "openblas_get_num_threads"):
                if hasattr(lib, sym):
                    return int(getattr(lib, sym)())
    except Exception:  # noqa: BLE001 - only informative
        pass
    return None


# ---------------------------------------------------------------------------------------
# PyTorch: the examples VAE
# ---------------------------------------------------------------------------------------
def make_torch_vae(torch):
    nn, F = torch.nn, torch.nn.functional

    class VAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(784, 400)
            self.fc21 = nn.Linear(400, 20)  # mu
            self.fc22 = nn.Linear(400, 20)  # logvar
            self.fc3 = nn.Linear(20, 400)
            self.fc4 = nn.Linear(400, 784)  # logits

        def encode(self, x):
            h = F.relu(self.fc1(x))
            return self.fc21(h), self.fc22(h)

        def decode(self, z):
            return self.fc4(F.relu(self.fc3(z)))

        def forward(self, x):
            mu, logvar = self.encode(x)
            eps = torch.randn_like(mu)
            z = mu + torch.exp(0.5 * logvar) * eps
            return self.decode(z), mu, logvar

    def per_example_loss(logits, x, mu, logvar):
        """(N,): BCE-with-logits summed over pixels + KL, i.e. -ELBO of each example."""
        bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)
        kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=1)
        return bce + kl

    return VAE, per_example_loss


def train_torch(torch, x_train, x_test, seed, epochs, batch_size=128, lr=1e-3):
    """Returns [(test -ELBO, seconds)] per epoch."""
    VAE, per_example_loss = make_torch_vae(torch)
    torch.manual_seed(seed)
    model = VAE()  # default nn.Linear init
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xtr, xte = torch.from_numpy(x_train), torch.from_numpy(x_test)
    n = xtr.shape[0]
    rows = []
    for _epoch in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(n)
        for a in range(0, n, batch_size):  # last partial batch kept
            xb = xtr[order[a : a + batch_size]]
            logits, mu, logvar = model(xb)
            loss = per_example_loss(logits, xb, mu, logvar).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        total = 0.0
        with torch.no_grad():
            for a in range(0, xte.shape[0], 1000):
                xb = xte[a : a + 1000]
                logits, mu, logvar = model(xb)  # one eps per example
                total += float(per_example_loss(logits, xb, mu, logvar).double().sum())
        rows.append((total / xte.shape[0], time.perf_counter() - start))
    return rows


def train_npvae(npvae, x_train, x_test, seed, epochs):
    """Returns [(test -ELBO, seconds)] per epoch (seconds include the test evaluation, as
    in npvae's history)."""
    model = npvae.VAE(784, (400,), 20, likelihood="bernoulli", activation="relu", dtype="float32", seed=seed)
    history = npvae.fit(model, x_train, x_test, epochs=epochs, batch_size=128, optimizer="adam", lr=1e-3,
                        seed=seed, progress=False)
    return list(zip(history.column("test_loss"), history.column("seconds")))


# ---------------------------------------------------------------------------------------
def mean_std(values):
    """Mean and sample standard deviation (ddof 1; nan for one value)."""
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return m, s


def fmt_ms(m, s):
    return f"{m:.2f} ± {s:.2f}" if math.isfinite(s) else f"{m:.2f} ± n/a"


def main(argv=None):
    args = parse_args(argv)
    set_blas_threads(args.threads)
    try:
        import torch
    except ImportError:
        print(f"reference_torch: PyTorch is not installed, so there is nothing to compare; skipping. "
              f"To run this benchmark: {TORCH_HINT}")
        return 0

    import numpy as np

    import npvae

    torch.set_num_threads(args.threads)
    blas = numpy_blas_threads()
    print(f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"npvae {getattr(npvae, '__version__', '?')} (git {git_revision(npvae.__file__) or 'n/a'}), "
          f"backend {npvae.get_backend().name}")
    print(f"threads: torch {torch.get_num_threads()}, numpy BLAS "
          f"{blas if blas is not None else os.environ['OPENBLAS_NUM_THREADS'] + ' (requested)'}")
    print(f"model 784-400-20 ReLU, Bernoulli on grey levels; Adam lr 1e-3, batch 128, {args.epochs} epochs; "
          f"seeds {' '.join(map(str, args.seeds))}")
    print("test -ELBO in nats per example (lower is better); seconds per epoch include the test evaluation")

    summaries = []
    for name in args.datasets:
        (x_train, _), (x_test, _) = npvae.datasets.load(name, data_dir=args.data_dir)
        x_train = np.ascontiguousarray(x_train, dtype=np.float32)
        x_test = np.ascontiguousarray(x_test, dtype=np.float32)
        print(f"\n=== {name}: {x_train.shape[0]} train, {x_test.shape[0]} test ===")
        finals = {"npvae": [], "torch": []}
        times = {"npvae": [], "torch": []}
        for seed in args.seeds:
            ours = train_npvae(npvae, x_train, x_test, seed, args.epochs)
            ref = train_torch(torch, x_train, x_test, seed, args.epochs)
            print(f"\n{name}, seed {seed}")
            print(f"{'epoch':>5}  {'npvae':>9}  {'PyTorch':>9}  {'diff':>7}  {'npvae s':>8}  {'torch s':>8}")
            for epoch, ((lo, so), (lt, st)) in enumerate(zip(ours, ref), start=1):
                print(f"{epoch:>5}  {lo:9.2f}  {lt:9.2f}  {lo - lt:+7.2f}  {so:8.2f}  {st:8.2f}")
            sys.stdout.flush()
            finals["npvae"].append(ours[-1][0])
            finals["torch"].append(ref[-1][0])
            times["npvae"] += [s for _, s in ours]
            times["torch"] += [s for _, s in ref]
        m_o, s_o = mean_std(finals["npvae"])
        m_t, s_t = mean_std(finals["torch"])
        diff = m_o - m_t
        ok = abs(diff) <= args.tol
        summaries.append((name, m_o, s_o, m_t, s_t, diff, ok,
                          sum(times["npvae"]) / len(times["npvae"]), sum(times["torch"]) / len(times["torch"])))

    print(f"\n=== Summary: final test -ELBO after {args.epochs} epochs, mean ± std over "
          f"{len(args.seeds)} seed(s) {' '.join(map(str, args.seeds))} (nats) ===")
    print(f"| dataset | npvae | PyTorch | difference | verdict (±{args.tol:g} nat) | npvae s/epoch | PyTorch s/epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, m_o, s_o, m_t, s_t, diff, ok, t_o, t_t in summaries:
        print(f"| {name} | {fmt_ms(m_o, s_o)} | {fmt_ms(m_t, s_t)} | {diff:+.2f} | "
              f"{'PASS' if ok else 'FAIL'} | {t_o:.2f} | {t_t:.2f} |")
    failed = [s[0] for s in summaries if not s[6]]
    print("\nverdict: " + ("PASS: every dataset within " if not failed else f"FAIL: {', '.join(failed)} not within ")
          + f"{args.tol:g} nat")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
