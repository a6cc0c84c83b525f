"""Epoch time of npvae (NumPy) against PyTorch eager on the same CPU, measured in one run.

    python benchmarks/bench_train.py                  # 6 epochs each, alternating
    python benchmarks/bench_train.py --epochs 20      # is the epoch time flat?
    python benchmarks/bench_train.py --scaling        # epoch time vs batch size and width
    python benchmarks/bench_train.py --baseline DIR   # and another checkout of npvae, alternating
    python benchmarks/bench_train.py --baseline DIR --compare   # step time against DIR, in bursts

The model is PyTorch's examples VAE: 784-400-20, ReLU, Bernoulli on grey levels, Adam 1e-3,
batch 128, float32, one epoch = every training image once (469 steps on 60,000 images). The
data are Fashion-MNIST when it is installed (Debian's dataset-fashion-mnist, or any folder
npvae.datasets finds), else the embedded 8,000 digits repeated to 60,000 rows.

Each framework trains in its own worker process (so each one's memory is its own), and the
driver alternates them epoch by epoch, so that both see the same machine state. Both use
the same number of threads (--threads). Printed: every epoch's time and resident memory,
the median of epochs 2-6 and the ratio npvae / PyTorch; then npvae's step split into matrix
products, elementwise work and optimizer, against the GEMM throughput measured in this run;
then peak memory. PyTorch is optional: without it only npvae runs.

``--baseline DIR`` adds a third worker: the npvae package of another checkout (``git worktree
add /tmp/base <commit>``), imported from DIR, trained the same way (``npvae.fit``) in the same
alternation, so a change's cost is measured against its parent in one run: the ratio of the
two medians, and of their step times (epoch time / steps).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from _common import machine  # benchmarks/, this script's folder

HERE = os.path.abspath(__file__)


# --------------------------------------------------------------------------------------
# Workers: one process per framework, told "epoch" on stdin, answering one JSON line each
# --------------------------------------------------------------------------------------
def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_data():
    import numpy as np

    import npvae

    try:
        (x, _), _ = npvae.datasets.load("fashion-mnist")
        return x, "Fashion-MNIST (60,000 x 784)"
    except Exception:
        (x, _), _ = npvae.datasets.load("mnist-subset")
        reps = -(-60_000 // x.shape[0])
        return np.tile(x, (reps, 1))[:60_000], "embedded MNIST digits repeated to 60,000 x 784"


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker_npvae(args):
    if args.baseline:  # the other checkout's package, before the installed one
        sys.path.insert(0, args.baseline)
    import npvae

    x, name = load_data()
    model = npvae.VAE(784, (args.hidden,), 20, likelihood="bernoulli", activation="relu", seed=0)
    say({"ready": True, "data": name, "rss": rss_mb(), "version": npvae.__version__,
         "where": os.path.dirname(os.path.dirname(os.path.abspath(npvae.__file__)))})

    def after_epoch(model, row):
        say({"epoch": row["epoch"], "seconds": row["seconds"], "loss": row["loss"], "rss": rss_mb(), "peak": peak_mb()})
        if sys.stdin.readline().strip() != "epoch":
            raise SystemExit(0)

    command = sys.stdin.readline().strip()
    if command.startswith("burst"):
        return bursts(model, x, args.batch_size, command)
    if command != "epoch":
        return
    try:
        npvae.fit(model, x, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3, progress=False,
                  callbacks=[after_epoch])
    except SystemExit:
        pass
    if args.breakdown:
        say({"breakdown": breakdown(model, x, args.batch_size)})


def bursts(model, x, batch_size, command):
    """Answer "burst N" with the seconds N training steps took, until told anything else.

    A step is what ``fit`` runs on checked input: draw eps, forward, backward, Adam. The
    baseline's older npvae had no public forward/backward; its step is the private method it
    had then (``_loss_and_grads``), the same computation."""
    import npvae

    opt = npvae.optim.Adam(model.params, lr=1e-3)
    rng = npvae.Generator(0)
    x = npvae.asarray(x)
    n, b = x.shape[0], 0
    if hasattr(model, "backward"):
        def step(xb, eps):
            opt.step(model.backward(model.forward(xb, eps), 1.0))
    else:
        def step(xb, eps):
            opt.step(model._loss_and_grads(xb, eps, 1.0).grads)
    while command.startswith("burst"):
        start = time.perf_counter()
        for _ in range(int(command.split()[1])):
            xb = x[b : b + batch_size]
            b = (b + batch_size) % (n - batch_size)
            step(xb, rng.standard_normal((batch_size, model.latent_dim)))
        say({"seconds": time.perf_counter() - start})
        command = sys.stdin.readline().strip()


def breakdown(model, x, batch_size, reps=40):
    """Split one training step's time into matrix products, optimizer and the rest.

    The matrix products are timed by replaying the step's own products (same shapes, same
    operands) on their own; the optimizer step on its own; elementwise = step - the two.
    """
    import numpy as np

    import npvae

    xb = npvae.asarray(x[:batch_size])
    eps = npvae.Generator(0).standard_normal((batch_size, model.latent_dim))
    opt = model.train_state.optimizer

    def full_step():
        opt.step(model.backward(model.forward(xb, eps), 1.0))  # what fit runs on checked input

    # The step's products: forward x @ W for every Dense; backward x^T @ dout for every
    # Dense and dout @ W^T for every Dense except the first.
    dense = [*[l for l in model.encoder.layers if l.param_shapes], *model.head.layers.values(),
             *[l for l in model.decoder.layers if l.param_shapes]]
    inputs = {id(l): np.ones((batch_size, l.in_dim), np.float32) for l in dense}
    douts = {id(l): np.ones((batch_size, l.out_dim), np.float32) for l in dense}
    first = dense[0]

    def products():
        for l in dense:
            inputs[id(l)] @ l.W
            inputs[id(l)].T @ douts[id(l)]
            if l is not first:
                douts[id(l)] @ l.W.T

    flops = 2 * sum(batch_size * l.in_dim * l.out_dim * (2 if l is first else 3) for l in dense)

    def timed(fn):
        fn()
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    step, gemm, optim = timed(full_step), timed(products), timed(lambda: opt.step(model.grads))
    a = np.ones((1024, 1024), np.float32)
    peak = 2 * 1024**3 / timed(lambda: a @ a) / 1e9
    return {"step_ms": step * 1e3, "gemm_ms": gemm * 1e3, "optim_ms": optim * 1e3,
            "elementwise_ms": (step - gemm - optim) * 1e3, "gemm_share": gemm / step,
            "step_gflops": flops / gemm / 1e9, "peak_gflops": peak}


def worker_torch(args):
    try:
        import torch
    except ImportError:
        say({"missing": "torch is not installed (pip install torch==2.13.0 for a CPU build)"})
        return
    from torch import nn

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x_np, name = load_data()
    x = torch.from_numpy(x_np)

    class VAE(nn.Module):  # the PyTorch examples VAE
        def __init__(self):
            super().__init__()
            self.fc1, self.fc21, self.fc22 = nn.Linear(784, args.hidden), nn.Linear(args.hidden, 20), nn.Linear(args.hidden, 20)
            self.fc3, self.fc4 = nn.Linear(20, args.hidden), nn.Linear(args.hidden, 784)

        def forward(self, xb):
            h = torch.relu(self.fc1(xb))
            mu, logvar = self.fc21(h), self.fc22(h)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            return self.fc4(torch.relu(self.fc3(z))), mu, logvar

    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    say({"ready": True, "data": name, "rss": rss_mb(), "version": torch.__version__})
    n = x.shape[0]
    for epoch in range(1, args.epochs + 1):
        if sys.stdin.readline().strip() != "epoch":
            return
        start, total = time.perf_counter(), 0.0
        perm = torch.randperm(n)
        for i in range(0, n, args.batch_size):
            xb = x[perm[i : i + args.batch_size]]
            logits, mu, logvar = model(xb)
            rec = nn.functional.binary_cross_entropy_with_logits(logits, xb, reduction="sum")
            kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1 - logvar)
            loss = (rec + kl) / xb.shape[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]
        say({"epoch": epoch, "seconds": time.perf_counter() - start, "loss": total / n, "rss": rss_mb(), "peak": peak_mb()})


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------
class Worker:
    def __init__(self, framework, args, name=None, baseline=None):
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads),
               "MKL_NUM_THREADS": str(args.threads), "NPVAE_BACKEND": "numpy"}
        cmd = [sys.executable, HERE, "--worker", framework, "--epochs", str(args.epochs), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--hidden", str(args.hidden)]
        if not args.breakdown or baseline:
            cmd.append("--no-breakdown")
        if baseline:
            cmd += ["--baseline", baseline]
        self.name = name or framework
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.hello = self.read()

    def read(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped (exit {self.proc.wait()})")
        return json.loads(line)

    def epoch(self):
        self.proc.stdin.write("epoch\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self):
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        out = [json.loads(line) for line in self.proc.stdout.read().splitlines() if line.strip()]
        self.proc.wait()
        return out


def run(args):
    print(f"machine: {machine()}")
    print(f"model 784-{args.hidden}-20, batch {args.batch_size}, Adam 1e-3, float32, {args.threads} threads each")
    workers = [Worker("npvae", args)]
    if args.baseline:
        workers.append(Worker("npvae", args, name="base", baseline=os.path.abspath(args.baseline)))
        for w in workers:
            print(f"{w.name}: npvae from {w.hello['where']}")
    torch_worker = Worker("torch", args)
    if "missing" in torch_worker.hello:
        print(f"PyTorch: skipped, {torch_worker.hello['missing']}")
        torch_worker.close()
    else:
        workers.append(torch_worker)
    print(f"data: {workers[0].hello['data']}")
    for w in workers:
        print(f"{w.name} {w.hello['version']}: resident memory after loading {w.hello['rss']:.0f} MB")
    rows = {w.name: [] for w in workers}
    for epoch in range(1, args.epochs + 1):
        for w in workers:
            r = w.epoch()
            rows[w.name].append(r)
            print(f"epoch {epoch:>2}  {w.name:<6} {r['seconds']:6.2f} s   loss {r['loss']:8.2f}   "
                  f"resident {r['rss']:6.0f} MB", flush=True)
    # Close PyTorch first: npvae's worker measures its step breakdown as it closes, and an
    # idle PyTorch process beside it would still hold its threads.
    extra = {w.name: w.close() for w in reversed(workers)}

    def median(name):
        times = [r["seconds"] for r in rows[name][1:6]]
        return statistics.median(times) if times else rows[name][0]["seconds"]

    summary = {"npvae": median("npvae")}
    print(f"\nmedian epoch time, epochs 2-{min(6, args.epochs)}: npvae {summary['npvae']:.2f} s", end="")
    if "torch" in rows:
        summary["torch"] = median("torch")
        summary["ratio"] = summary["npvae"] / summary["torch"]
        print(f", PyTorch {summary['torch']:.2f} s; ratio npvae / PyTorch = {summary['ratio']:.2f} (target <= 0.90)")
    else:
        print()
    if "base" in rows:
        summary["base"] = median("base")
        summary["vs_base"] = summary["npvae"] / summary["base"]
        steps = -(-60_000 // args.batch_size)
        print(f"baseline ({args.baseline}): median {summary['base']:.2f} s; step {1e3 * summary['base'] / steps:.2f} ms "
              f"against npvae's {1e3 * summary['npvae'] / steps:.2f} ms; ratio npvae / baseline = "
              f"{summary['vs_base']:.3f} (target <= 1.03)")
    for name in rows:  # PyTorch's lines show how much of the spread is the machine's
        times = [r["seconds"] for r in rows[name][1:]]
        if len(times) > 1:
            spread = (max(times) - min(times)) / min(times)
            print(f"{name:<6} epochs 2-{args.epochs}: {min(times):.2f} to {max(times):.2f} s, spread {spread:.1%}"
                  + (" (target <= 10%)" if name == "npvae" else ""))
        if len(times) >= 10:  # growth would show as a drift from the first five to the last five
            first, last = statistics.median(times[:5]), statistics.median(times[-5:])
            print(f"{name:<6} drift: median of the last 5 epochs {last:.2f} s against the first 5 (from epoch 2) "
                  f"{first:.2f} s, {last / first - 1:+.1%}")
    for name in rows:
        rss = [r["rss"] for r in rows[name]]
        print(f"{name:<6} peak resident {rows[name][-1]['peak']:.0f} MB; resident after epoch 1 {rss[0]:.0f} MB, "
              f"after the last {rss[-1]:.0f} MB (growth {rss[-1] - rss[0]:+.1f} MB)")
    for item in extra.get("npvae", []):
        if "breakdown" in item:
            b = item["breakdown"]
            print(f"npvae step {b['step_ms']:.2f} ms = matrix products {b['gemm_ms']:.2f} ms ({b['gemm_share']:.0%}, "
                  f"target >= 60%) + optimizer {b['optim_ms']:.2f} ms + elementwise {b['elementwise_ms']:.2f} ms; "
                  f"products run at {b['step_gflops']:.0f} GFLOP/s, a 1024^3 SGEMM at {b['peak_gflops']:.0f} GFLOP/s")
            summary["breakdown"] = b
    return summary


def compare(args):
    """npvae against another checkout (``--baseline DIR``), step time only: the two workers take
    turns running short bursts of steps, so both see the same machine; printed are each one's
    median step time and the median of the paired ratios (burst i of one over burst i of the
    other), which cancels drifts in the machine's speed that last longer than a burst."""
    print(f"machine: {machine()}")
    print(f"model 784-{args.hidden}-20, batch {args.batch_size}, Adam 1e-3, float32, {args.threads} threads each")
    workers = [Worker("npvae", args), Worker("npvae", args, name="base", baseline=os.path.abspath(args.baseline))]
    for w in workers:
        print(f"{w.name}: npvae from {w.hello['where']}")
    times = {w.name: [] for w in workers}
    for i in range(args.rounds + 1):
        for w in (workers if i % 2 else workers[::-1]):  # who goes first alternates too
            w.proc.stdin.write(f"burst {args.burst}\n")
            w.proc.stdin.flush()
            seconds = w.read()["seconds"]
            if i:  # the first round warms up
                times[w.name].append(1e3 * seconds / args.burst)
    for w in workers:
        w.close()
    ratios = sorted(a / b for a, b in zip(times["npvae"], times["base"]))
    quart = len(ratios) // 4
    for name, ms in times.items():
        print(f"{name:<6} step: median {statistics.median(ms):.3f} ms over {len(ms)} bursts of {args.burst} steps "
              f"(fastest {min(ms):.3f} ms)")
    print(f"step time npvae / baseline: median of paired ratios {statistics.median(ratios):.3f} (middle half "
          f"{ratios[quart]:.3f} to {ratios[-quart - 1]:.3f}); target <= 1.03")
    return {"ratio": statistics.median(ratios)}


def scaling(args):
    print(f"machine: {machine()}")
    print("one epoch (60,000 images) of npvae per configuration, with its step breakdown")
    print("| batch | hidden | epoch (s) | step (ms) | matrix products | optimizer | elementwise |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    configs = [(b, 400) for b in (32, 64, 128, 256, 512, 1024)] + [(128, h) for h in (200, 600, 800, 1000)]
    for batch, hidden in configs:
        a = argparse.Namespace(**{**vars(args), "batch_size": batch, "hidden": hidden, "epochs": 1, "breakdown": True})
        w = Worker("npvae", a)
        r = w.epoch()
        b = next(item["breakdown"] for item in w.close() if "breakdown" in item)
        print(f"| {batch} | {hidden} | {r['seconds']:.2f} | {b['step_ms']:.2f} | {b['gemm_ms']:.2f} ms ({b['gemm_share']:.0%}) "
              f"| {b['optim_ms']:.2f} ms | {b['elementwise_ms']:.2f} ms |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--scaling", action="store_true", help="the table of epoch time against batch size and width")
    p.add_argument("--no-breakdown", dest="breakdown", action="store_false")
    p.add_argument("--baseline", metavar="DIR", help="another checkout of npvae to time alongside, alternating")
    p.add_argument("--compare", action="store_true",
                   help="with --baseline: step times only, in alternating bursts (the robust comparison)")
    p.add_argument("--rounds", type=int, default=60, help="--compare: bursts per checkout (default 60)")
    p.add_argument("--burst", type=int, default=50, help="--compare: steps per burst (default 50)")
    p.add_argument("--worker", choices=("npvae", "torch"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "npvae":
        worker_npvae(args)
    elif args.worker == "torch":
        worker_torch(args)
    elif args.scaling:
        scaling(args)
    elif args.compare:
        if not args.baseline:
            p.error("--compare needs --baseline DIR")
        compare(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
