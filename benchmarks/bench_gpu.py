"""Training-step time of npvae on CuPy against PyTorch CUDA eager, on one GPU, in one run.

    python benchmarks/bench_gpu.py                            # batch 128 and 1024, on the GPU
    python benchmarks/bench_gpu.py --device cpu --steps 20    # a smoke run of this script on the CPU

Both train PyTorch's examples VAE (784-400-20, ReLU, Bernoulli on grey levels, Adam 1e-3,
float32) on consecutive batches of the same data (Fashion-MNIST when found, else the embedded
digits), already on the device. One step is what a training loop does per batch: draw eps,
forward, loss, backward, Adam. npvae's step is the one ``npvae.fit`` takes (eps drawn on the
host by ``npvae.Generator`` and copied over, as in ``fit``); PyTorch's is the examples' loop
(``torch.randn_like`` on the device). Neither reads the loss back inside the timed loop, so
the host can queue work ahead of the GPU (npvae's Generator copies eps through pinned
memory, so that copy does not wait for the GPU either; the breakdown measures its cost).

Timing: kernels run asynchronously, so each measurement is a pair of CUDA events recorded on
the stream around ``--steps`` steps (``cupy.cuda.Event``, ``torch.cuda.Event``), after
``--warmup`` untimed steps; the two frameworks alternate, ``--repeats`` times each, and the
median per step is reported with the ratio npvae / PyTorch (the issue's target: <= 1.0).
``--device cpu`` runs the same code with NumPy, PyTorch on the CPU and a wall clock.
On the GPU a second table follows: where npvae's step goes (host and GPU time of each part).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine  # noqa: E402  (sibling modules, not a package)
from bench_train import load_data  # noqa: E402
from reference_torch import make_torch_vae  # noqa: E402


class CudaTimer:
    """Milliseconds between two CUDA events on the current stream (``lib``: cupy or torch)."""

    def __init__(self, lib):
        self.lib = lib

    def __call__(self, fn, steps):
        if self.lib.__name__ == "cupy":
            start, end = self.lib.cuda.Event(), self.lib.cuda.Event()
        else:
            start, end = self.lib.cuda.Event(enable_timing=True), self.lib.cuda.Event(enable_timing=True)
        start.record()
        for i in range(steps):
            fn(i)
        end.record()
        end.synchronize()
        if self.lib.__name__ == "cupy":
            return self.lib.cuda.get_elapsed_time(start, end) / steps
        return start.elapsed_time(end) / steps


def wall_timer(fn, steps):
    """The CPU stand-in for CudaTimer: milliseconds per step by the wall clock."""
    start = time.perf_counter()
    for i in range(steps):
        fn(i)
    return (time.perf_counter() - start) * 1e3 / steps


def npvae_runner(x_host, batch_size, device):
    """A function step(i) that trains npvae one step on batch i, and the backend's timer."""
    import npvae

    be = npvae.set_backend("cupy" if device == "cuda" else "numpy")
    x = be.asarray(x_host)
    n_batches = x.shape[0] // batch_size
    model = npvae.VAE(784, (400,), 20, likelihood="bernoulli", activation="relu", seed=0)
    opt = npvae.optim.Adam(model.params, lr=1e-3)
    rng = npvae.Generator(0)

    def step(i):
        j = i % n_batches
        xb = x[j * batch_size : (j + 1) * batch_size]
        eps = rng.standard_normal((batch_size, 20), dtype="float32")
        opt.step(model.backward(model.forward(xb, eps), 1.0))  # what fit runs on checked input

    return step, (CudaTimer(be.xp) if device == "cuda" else wall_timer), be.description


def breakdown(x_host, batch_size, steps, repeats):
    """Where npvae/CuPy's step goes: the host (CPU) time and the GPU time of each part, per
    call, by ``cupyx.profiler.benchmark`` (which waits for the GPU after every call). Where
    the two are about equal, the GPU waits for the host to launch its kernels. Last, the
    step timed as in the table but with eps already on the GPU: the difference to the
    table's step is what drawing eps on the host and copying it over costs inside a loop
    that does not wait for the GPU."""
    import cupy
    from cupyx.profiler import benchmark

    import npvae

    be = npvae.set_backend("cupy")
    model = npvae.VAE(784, (400,), 20, likelihood="bernoulli", activation="relu", seed=0)
    opt = npvae.optim.Adam(model.params, lr=1e-3)
    rng = npvae.Generator(0)
    xb = be.asarray(x_host[:batch_size])
    eps = rng.standard_normal((batch_size, 20), dtype="float32")
    parts = {
        "eps: draw on the host, copy to the GPU": lambda: rng.standard_normal((batch_size, 20), dtype="float32"),
        "forward + backward (model.forward, model.backward)": lambda: model.backward(model.forward(xb, eps), 1.0),
        "Adam (one fused kernel)": lambda: opt.step(model.grads),
    }
    for name, fn in parts.items():
        r = benchmark(fn, n_repeat=steps, n_warmup=20)
        host_ms, gpu_ms = statistics.median(r.cpu_times) * 1e3, statistics.median(r.gpu_times[0]) * 1e3
        print(f"| {batch_size} | {name} | {host_ms:.3f} | {gpu_ms:.3f} |", flush=True)

    def step_with_eps_on_gpu(i):
        opt.step(model.backward(model.forward(xb, eps), 1.0))

    timer = CudaTimer(cupy)
    timer(step_with_eps_on_gpu, 20)
    ms = statistics.median(timer(step_with_eps_on_gpu, steps) for _ in range(repeats))
    print(f"| {batch_size} | whole step as in the table, but eps already on the GPU | | {ms:.3f} |", flush=True)


def torch_runner(x_host, batch_size, device):
    import torch

    torch.manual_seed(0)
    VAE, per_example_loss = make_torch_vae(torch)
    model = VAE().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.from_numpy(x_host).to(device)
    n_batches = x.shape[0] // batch_size

    def step(i):
        j = i % n_batches
        xb = x[j * batch_size : (j + 1) * batch_size]
        logits, mu, logvar = model(xb)
        loss = per_example_loss(logits, xb, mu, logvar).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    return step, (CudaTimer(torch) if device == "cuda" else wall_timer), f"torch {torch.__version__} on {name}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    p.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=50, help="untimed steps first (kernel compilation, memory pools)")
    p.add_argument("--repeats", type=int, default=5, help="measurements per framework, alternating")
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--no-breakdown", action="store_true", help="skip the table of where npvae's step goes")
    args = p.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: expected a positive integer, got {getattr(args, name)}")

    x_host, data = load_data()
    print(f"machine: {machine()}")
    print(f"data: {data}; model 784-400-20, Adam 1e-3, float32; {args.steps} timed steps x {args.repeats}, "
          f"after {args.warmup} warm-up steps; timer: {'CUDA events' if args.device == 'cuda' else 'wall clock'}")
    frameworks = {"npvae": npvae_runner}
    if importlib.util.find_spec("torch") is not None:
        frameworks["torch"] = torch_runner
    else:
        print("torch is not installed: npvae only")

    print("| batch | npvae ms/step | PyTorch ms/step | npvae / PyTorch |")
    print("| ---: | ---: | ---: | ---: |")
    described = {}
    for batch_size in args.batch_sizes:
        runners = {}
        for name, make in frameworks.items():
            step, timer, description = make(x_host, batch_size, args.device)
            described[name] = description
            if args.warmup:
                timer(step, args.warmup)
            runners[name] = (step, timer)
        times = {name: [] for name in runners}
        for _ in range(args.repeats):  # alternate, so both see the same device state
            for name, (step, timer) in runners.items():
                times[name].append(timer(step, args.steps))
        med = {name: statistics.median(t) for name, t in times.items()}
        torch_ms = f"{med['torch']:.3f}" if "torch" in med else "n/a"
        ratio = f"{med['npvae'] / med['torch']:.2f}" if "torch" in med else "n/a"
        print(f"| {batch_size} | {med['npvae']:.3f} | {torch_ms} | {ratio} |", flush=True)
    print("; ".join(f"{name}: {description}" for name, description in described.items()))
    if args.device == "cuda" and not args.no_breakdown:
        print("\nwhere npvae's step goes (ms per call; host: CPU time until the call returns and the GPU is done)")
        print("| batch | part | host ms | GPU ms |")
        print("| ---: | --- | ---: | ---: |")
        for batch_size in args.batch_sizes:
            breakdown(x_host, batch_size, args.steps, args.repeats)


if __name__ == "__main__":
    main()
