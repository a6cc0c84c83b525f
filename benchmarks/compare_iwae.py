"""The importance-weighted bound L_K against the ELBO as a training objective, on the embedded digits.

    python benchmarks/compare_iwae.py                      # K = 1 5 50, seeds 0 1 2, after 10 and 30 epochs
    python benchmarks/compare_iwae.py --ks 1 5 --epochs 10 --seeds 0 --n-test 100    # a quick look

The model is the default one: 784-400-20, ReLU, Bernoulli on grey levels, diagonal Q(z|x), Adam
1e-3, batch 128, float32, trained by ``npvae.fit(..., k=K)`` on the 8,000 training digits of
``npvae.datasets.load()`` (``mnist-subset``); K = 1 is the -ELBO with its closed-form KL, K > 1
the importance-weighted bound of Burda, Grosse & Salakhutdinov (2016), -L_K. For each seed the
models of every K are trained from the same initialization and data order, in lockstep (one
epoch each in turn, who goes first rotating). Printed for each (K, seed, epochs):

- log p(x): ``npvae.log_marginal_likelihood`` with k = --k importance samples (default 5000) on
  the first --n-test test digits (default 200), the model's own Q(z|x) as proposal;
- test -ELBO: ``npvae.evaluate`` on all 2,000 test digits (one eps each, seed 0);
- L_K: the bound the model was trained on, on the same --n-test digits (one draw of K samples);
- active units: ``npvae.metrics.active_units`` on the test digits, Burda et al.'s
  A_u = #{j : Cov_x(E_Q[z_j]) > 1e-2};
- training seconds so far (``fit``'s own epoch times).

Equal wall time: after the equal-epoch measurements, the K = 1 model of each seed trains on until
its training time first reaches the 10-epoch training time of each larger K's model, and is
measured there. Then mean ± std over the seeds and markdown tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import npvae  # noqa: E402
from _common import machine  # noqa: E402
from compare_posteriors import cpu_counters, cpu_report, fmt, load_average  # noqa: E402


def measure(model, x_test, x_lml, k, K):
    """The measured numbers of one model: log p(x), test -ELBO, L_K, active units, training seconds."""
    return {"lml": npvae.log_marginal_likelihood(model, x_lml, k=k, seed=0),
            "elbo": npvae.evaluate(model, x_test, seed=0)["loss"],
            "lk": npvae.log_marginal_likelihood(model, x_lml, k=K, seed=1),
            "au": npvae.metrics.active_units(model, x_test),
            "seconds": sum(model.train_state.history.column("seconds"))}


def train_to(model, epoch, x_train, seed, K):
    if model.train_state is None:
        npvae.fit(model, x_train, epochs=epoch, batch_size=128, optimizer="adam", lr=1e-3, seed=seed, k=K,
                  progress=False)
    else:
        npvae.fit(model, x_train, epochs=epoch, resume=True, progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 50], help="1 first (the ELBO)")
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test digit for log p(x)")
    parser.add_argument("--n-test", type=int, default=200, help="log p(x) and L_K on the first N test digits")
    args = parser.parse_args()
    ks, epochs = sorted(set(args.ks)), sorted(set(args.epochs))
    if ks[0] != 1:
        parser.error("--ks: expected 1 among them (the ELBO, the baseline), got " + " ".join(map(str, ks)))

    wall, cpu_start = time.perf_counter(), cpu_counters()
    print(f"machine: {machine(f', npvae {npvae.__version__} (backend {npvae.get_backend().name})')}")
    print(f"at start: {load_average()}")
    print(f"model 784-400-20, ReLU, Bernoulli, diagonal Q, Adam 1e-3, batch 128, float32; K = {' '.join(map(str, ks))}; "
          f"measured after {' and '.join(map(str, epochs))} epochs; seeds {' '.join(map(str, args.seeds))}")
    (x_train, _), (x_test, _) = npvae.datasets.load()
    x_lml = x_test[: args.n_test]
    print(f"data: mnist-subset, {x_train.shape[0]:,} train / {x_test.shape[0]:,} test digits; log p(x) with "
          f"k = {args.k} and L_K on the first {x_lml.shape[0]:,}, test -ELBO and active units on all\n", flush=True)

    results = {}  # (label, epochs or "time K", K) -> {quantity: [one value per seed]}
    for seed in args.seeds:
        models = {K: npvae.VAE(784, (400,), 20, dtype="float32", seed=seed) for K in ks}
        for epoch in range(1, max(epochs) + 1):
            shift = (epoch - 1) % len(ks)
            for K in ks[shift:] + ks[:shift]:
                train_to(models[K], epoch, x_train, seed, K)
            if epoch in epochs:
                for K in ks:
                    r = measure(models[K], x_test, x_lml, args.k, K)
                    for key, value in r.items():
                        results.setdefault((epoch, K), {}).setdefault(key, []).append(value)
                    print(f"seed {seed} epoch {epoch:<3} K={K:<3} log p(x) {r['lml']:8.2f}  test -ELBO {r['elbo']:7.2f}  "
                          f"L_K {r['lk']:8.2f}  active units {r['au']:2d}  training {r['seconds']:6.0f} s", flush=True)
        # equal wall time: the K = 1 model trains on until its time reaches each larger K's at the first --epochs
        base, first = models[1], epochs[0]
        for K in ks[1:]:
            target = results[(first, K)]["seconds"][-1]
            while sum(base.train_state.history.column("seconds")) < target:
                train_to(base, base.train_state.epoch + 1, x_train, seed, 1)
            r = measure(base, x_test, x_lml, args.k, 1)
            r["epochs"] = base.train_state.epoch
            for key, value in r.items():
                results.setdefault((f"time of K={K}", 1), {}).setdefault(key, []).append(value)
            print(f"seed {seed} K=1 trained as long as K={K}'s {first} epochs ({target:.0f} s): {r['epochs']} epochs, "
                  f"log p(x) {r['lml']:8.2f}  test -ELBO {r['elbo']:7.2f}  active units {r['au']:2d}", flush=True)

    print(f"\n| trained | K | log p(x), k={args.k} (nats) | test -ELBO (nats) | L_K (nats) | active units | training (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (when, K), r in results.items():
        label = f"{when} epochs" if isinstance(when, int) else f"{statistics.fmean(r['epochs']):.0f} epochs ({when})"
        print(f"| {label} | {K} | {fmt(r['lml'])} | {fmt(r['elbo'])} | {fmt(r['lk'])} | {fmt(r['au'], 1)} | "
              f"{fmt(r['seconds'], 0)} |")
    print("\nper-seed differences against K = 1 at equal epochs (positive log p(x) = K better):")
    for epoch in epochs:
        for K in ks[1:]:
            d = [b - a for a, b in zip(results[(epoch, 1)]["lml"], results[(epoch, K)]["lml"])]
            u = [b - a for a, b in zip(results[(epoch, 1)]["au"], results[(epoch, K)]["au"])]
            print(f"  {epoch} epochs, K={K}: log p(x) {fmt(d)} nats, active units {fmt(u, 1)}")
    print(f"\nat end: {load_average()}")
    print(cpu_report(cpu_start, cpu_counters(), time.perf_counter() - wall))
    print(f"wall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
