"""Diagonal against full-covariance posteriors Q(z|x), measured on the embedded digits.

    python benchmarks/compare_posteriors.py                     # Z = 2 and 20, seeds 0 1 2, 10 epochs
    python benchmarks/compare_posteriors.py --epochs 10 30      # measured after 10 and after 30 epochs
    python benchmarks/compare_posteriors.py --epochs 30 --k 5000 --n-test 2000

The model is the default one: 784-400-Z, ReLU, Bernoulli on grey levels, Adam 1e-3, batch
128, float32, trained by ``npvae.fit`` on the 8,000 training digits of ``npvae.datasets.load()``
(``mnist-subset``). For each Z and seed, one model per posterior (--posteriors, default all of
``npvae.vae.POSTERIORS``) is trained with the same seed (the same data order and the same eps
stream; the initializations of "diagonal" and the full ones differ, since a full one has one
more head; "full" and "full-absolute" start alike but for that head, which "full" starts at 0):
``VAE(..., posterior="diagonal")``, Q(z|x) = N(mu, diag(exp(logvar))),
``VAE(..., posterior="full")``, Q(z|x) = N(mu, L L^T) with L = U diag(exp(s)) (U unit lower-
triangular, scale-relative), and ``VAE(..., posterior="full-absolute")``, the same family with
L's entries below the diagonal output as they are. Each --epochs value is a point where all
are measured (training goes on from there).

The models are trained in lockstep, one epoch at a time (``fit(..., epochs=e, resume=True)``),
and who goes first alternates from epoch to epoch, so that both see the same state of the
machine. Epoch times are ``fit``'s own (``history[i]["seconds"]``: the epoch's training steps,
no test evaluation).

Printed per configuration (Z, posterior), mean +- std over the seeds (sample std, ddof 1):

- test -ELBO: ``npvae.evaluate`` on the 2,000 test digits (one eps per example, seed 0);
- log p(x): ``npvae.log_marginal_likelihood`` with the model's own Q(z|x) as proposal, k
  importance samples (--k, default 500) on the first --n-test test digits (default 500);
- gap: log p(x) - ELBO on those same digits (ELBO by ``npvae.evaluate``, one eps each), an
  estimate of KL(Q(z|x) || P(z|x)), the looseness that a richer Q(z|x) is meant to remove
  (from below: k = 500 samples leave part of it);
- the epoch time, median over all epochs and seeds, and each full one / diagonal: the ratio of
  the two medians, the median of the paired ratios (epoch i of the full one over epoch i of
  "diagonal", same seed), which cancels slow drifts of the machine's speed, and the ratio of
  the two fastest epochs (other work on the machine only ever adds time);
- how much of the machine's CPU time other processes took during the run (/proc/stat), so a
  reader can tell a quiet run from a noisy one.

Then the per-seed differences of each full one - diagonal (mean +- std over seeds; the seeds
pair the models), and a markdown table per --epochs value.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import npvae  # noqa: E402
from _common import machine  # noqa: E402  (benchmarks/, this script's folder)



def load_average():
    try:
        return "load average %.2f %.2f %.2f (1, 5, 15 min)" % os.getloadavg()
    except OSError:
        return "load average unknown"


def cpu_counters():
    """(machine busy, machine stolen, this process) CPU seconds so far, all cores together:
    busy from the first line of /proc/stat (user nice system irq softirq; idle and iowait left
    out), steal (time the hypervisor gave to other machines) apart; None where unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    t = os.times()
    return (user + nice + system + irq + softirq) / hz, steal / hz, t.user + t.system


def cpu_report(start, end, wall):
    """How much of the machine's CPU time went to other work while this script ran."""
    if start is None or end is None:
        return "CPU use of the machine: unknown (no /proc/stat)"
    busy, steal, ours = (b - a for a, b in zip(start, end))
    others = max(0.0, busy - ours)
    capacity = wall * (os.cpu_count() or 1)
    return (f"CPU time during the run ({capacity:.0f} core-s available): this script {ours:.0f} core-s, "
            f"other processes {others:.0f} core-s ({others / capacity:.0%} of the machine), "
            f"stolen by the hypervisor {steal:.0f} core-s")


def mean_std(values):
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values, digits=2):
    m, s = mean_std(values)
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def train_together(z_dim, seed, posteriors, epochs, x_train):
    """One model per posterior for (Z, seed), trained in lockstep to each of ``epochs`` in turn,
    who goes first rotating from epoch to epoch; yields (epoch, models) at each."""
    models = {p: npvae.VAE(784, (400,), z_dim, likelihood="bernoulli", activation="relu", dtype="float32",
                           seed=seed, posterior=p) for p in posteriors}
    for epoch in range(1, max(epochs) + 1):
        shift = (epoch - 1) % len(posteriors)
        for p in posteriors[shift:] + posteriors[:shift]:
            if epoch == 1:
                npvae.fit(models[p], x_train, epochs=1, batch_size=128, optimizer="adam", lr=1e-3,
                          seed=seed, progress=False)
            else:
                npvae.fit(models[p], x_train, epochs=epoch, resume=True, progress=False)
        if epoch in epochs:
            yield epoch, models


def report(results, latents, posteriors, seeds, epoch, k):
    """The per-seed differences and the markdown table of the models measured at ``epoch``."""
    def median_time(z_dim, post):
        return statistics.median(t for times in results[(epoch, z_dim, post)]["times"] for t in times)

    def paired_ratios(z_dim, post):
        d, f = results[(epoch, z_dim, "diagonal")]["times"], results[(epoch, z_dim, post)]["times"]
        return [tf / td for sd, sf in zip(d, f) for td, tf in zip(sd, sf)]

    def fastest(z_dim, post):
        return min(t for times in results[(epoch, z_dim, post)]["times"] for t in times)

    fulls = [p for p in posteriors if p != "diagonal"]
    print(f"\nafter {epoch} epochs: per-seed difference full - diagonal (mean ± std over {len(seeds)} seeds; "
          "negative -ELBO / positive log p(x) = full better):")
    for z_dim in latents:
        d = results[(epoch, z_dim, "diagonal")]
        for post in fulls:
            f = results[(epoch, z_dim, post)]
            diffs = {key: [b - a for a, b in zip(d[key], f[key])] for key in ("elbo", "lml", "gap")}
            ratios = sorted(paired_ratios(z_dim, post))
            q = len(ratios) // 4
            print(f"Z={z_dim:<2} {post:<13} test -ELBO {fmt(diffs['elbo'])} nats; log p(x) {fmt(diffs['lml'])} "
                  f"nats; gap {fmt(diffs['gap'])} nats")
            print(f"      epoch time {post} / diagonal: ratio of medians "
                  f"{median_time(z_dim, post) / median_time(z_dim, 'diagonal'):.2f}, median of paired ratios "
                  f"{statistics.median(ratios):.2f} (middle half {ratios[q]:.2f} to {ratios[-q - 1]:.2f}), "
                  f"ratio of the fastest epochs {fastest(z_dim, post) / fastest(z_dim, 'diagonal'):.2f}")

    print(f"\n| Z | posterior | parameters | test -ELBO (nats) | log p(x), k={k} (nats) | gap (nats) | "
          "epoch (s): median, fastest | / diagonal: medians, paired, fastest |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for z_dim in latents:
        for post in posteriors:
            r = results[(epoch, z_dim, post)]
            ratio = ("" if post == "diagonal" else
                     f"{median_time(z_dim, post) / median_time(z_dim, 'diagonal'):.2f}, "
                     f"{statistics.median(paired_ratios(z_dim, post)):.2f}, "
                     f"{fastest(z_dim, post) / fastest(z_dim, 'diagonal'):.2f}")
            print(f"| {z_dim} | {post} | {r['n_params']:,} | {fmt(r['elbo'])} | {fmt(r['lml'])} | {fmt(r['gap'])} | "
                  f"{median_time(z_dim, post):.2f}, {fastest(z_dim, post):.2f} | {ratio} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[10], help="measure after these epochs (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--latent", type=int, nargs="+", default=[2, 20], help="the values of Z (default 2 20)")
    parser.add_argument("--posteriors", nargs="+", choices=npvae.vae.POSTERIORS, default=list(npvae.vae.POSTERIORS),
                        help="diagonal first (the differences are against it)")
    parser.add_argument("--k", type=int, default=500, help="importance samples per test digit for log p(x)")
    parser.add_argument("--n-test", type=int, default=500, help="log p(x) on the first N test digits")
    args = parser.parse_args()
    posteriors, epochs = ["diagonal"] + [p for p in args.posteriors if p != "diagonal"], sorted(set(args.epochs))

    wall, cpu_start = time.perf_counter(), cpu_counters()
    print(f"machine: {machine(f', npvae {npvae.__version__} (backend {npvae.get_backend().name})')}")
    print(f"at start: {load_average()}")
    print(f"model 784-400-Z, ReLU, Bernoulli, Adam 1e-3, batch 128, float32; measured after "
          f"{' and '.join(map(str, epochs))} epochs; seeds {' '.join(map(str, args.seeds))}")
    (x_train, _), (x_test, _) = npvae.datasets.load()
    x_lml = x_test[: args.n_test]
    print(f"data: mnist-subset, {x_train.shape[0]:,} train / {x_test.shape[0]:,} test digits; test -ELBO on all "
          f"{x_test.shape[0]:,}, log p(x) with k = {args.k} on the first {x_lml.shape[0]:,}")
    print(f"{', '.join(posteriors)} trained in lockstep, one epoch each in turn, who goes first rotating\n")

    # results[(epoch, Z, posterior)] = {"elbo", "lml", "gap": one value per seed, "times": [epoch seconds] per seed}
    results = {}
    for z_dim in args.latent:
        for seed in args.seeds:
            for epoch, models in train_together(z_dim, seed, posteriors, epochs, x_train):
                for post, model in models.items():
                    r = results.setdefault((epoch, z_dim, post), {"elbo": [], "lml": [], "gap": [], "times": [],
                                                                  "n_params": model.n_params})
                    elbo = npvae.evaluate(model, x_test, seed=0)["loss"]
                    lml = npvae.log_marginal_likelihood(model, x_lml, k=args.k, seed=0)
                    gap = lml + npvae.evaluate(model, x_lml, seed=0)["loss"]  # log p(x) - ELBO on the same digits
                    times = model.train_state.history.column("seconds")
                    for key, value in (("elbo", elbo), ("lml", lml), ("gap", gap), ("times", times)):
                        r[key].append(value)
                    print(f"Z={z_dim:<2} seed {seed} epoch {epoch:<3} {post:<13} test -ELBO {elbo:7.2f}  "
                          f"log p(x) {lml:8.2f}  gap {gap:5.2f}  train loss {model.train_state.history[-1]['loss']:7.2f}"
                          f"  epoch s median {statistics.median(times):.2f}", flush=True)
        for epoch in epochs:  # each Z's tables as soon as it is done
            report(results, [z_dim], posteriors, args.seeds, epoch, args.k)
    print(f"\nat end: {load_average()}")
    print(cpu_report(cpu_start, cpu_counters(), time.perf_counter() - wall))
    for epoch in epochs:
        report(results, args.latent, posteriors, args.seeds, epoch, args.k)
    print(f"\nwall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
