"""Benchmark: a full one-shot OptScale sweep through ``optscale.evaluate.sweep``.

500 problems x 64 samples (synthetic truncated-normal verifier scores, random per-problem (mu, sigma),
correctness correlated with the score) x 48 (s*, alpha) pairs x 4 budgets (8, 16, 32, 64) x 2 variants
(OptScale^0 = MLE, OptScale^t = MAP with noisy priors) x 20 orderings (the pool order + 19 random).
Target: under 30 s on a 2-core machine. The sequential mode (refit after every sample) is then measured
for the same grid through the fast path, and through ``policy.replay`` for a stated fraction of the grid
(extrapolated). Wall and CPU times are printed (a shared machine inflates wall time).

    python benchmarks/bench_sweep.py [--problems 500] [--samples 64] [--orderings 19] [--seq-pairs 2]
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np

from optscale import theory
from optscale.pool import PoolArrays

ev = importlib.import_module("optscale.evaluate")  # the module (optscale.evaluate is also a function export)


def synthetic_pool(P: int, M: int, seed: int = 0) -> tuple[PoolArrays, np.ndarray]:
    """(arrays, priors [P, 2]): scores ~ truncated normal with mu ~ U(0.2, 0.9), sigma ~ U(0.05, 0.3); a
    sample is correct with probability score**2 (class 0) else one of 3 wrong answers; tokens ~ U[100, 1000);
    priors = true (mu, sigma) plus noise."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.2, 0.9, P)
    sigma = rng.uniform(0.05, 0.3, P)
    scores = theory.sample(mu[:, None], sigma[:, None], (P, M), rng)
    correct = rng.random((P, M)) < scores**2
    answers = np.where(correct, 0, rng.integers(1, 4, (P, M))).astype(np.int64)
    tokens = rng.integers(100, 1000, (P, M)).astype(float)
    cc = np.zeros((P, 4), dtype=bool)
    cc[:, 0] = True
    arrays = PoolArrays(scores=scores, tokens=tokens, answers=answers, correct=correct,
                        n=np.full(P, M, dtype=np.int64), class_correct=cc, ids=[str(i) for i in range(P)],
                        has_scores=True, has_tokens=True)
    priors = np.column_stack([np.clip(mu + rng.normal(0, 0.05, P), 0.01, 0.99),
                              np.clip(sigma + rng.normal(0, 0.03, P), 0.02, 1.0)])
    return arrays, priors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--orderings", type=int, default=19, help="random orderings besides the pool order")
    ap.add_argument("--seq-pairs", type=int, default=2,
                    help="(s*, alpha) pairs of the sequential policy.replay measurement (of the 48), per variant")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    budgets = [8, 16, 32, 64]
    arrays, priors = synthetic_pool(args.problems, args.samples, args.seed)
    n_pairs = len(ev.SWEEP_TARGETS) * len(ev.SWEEP_ALPHAS)
    rows = args.problems * (1 + args.orderings)
    print(f"pool: {args.problems} problems x {args.samples} samples; {1 + args.orderings} orderings "
          f"({rows} replay rows); grid: {n_pairs} (s*, alpha) pairs x {len(budgets)} budgets x 2 variants "
          f"= {2 * n_pairs * len(budgets)} points")

    t0, c0 = time.perf_counter(), time.process_time()
    report = ev.sweep(arrays, ["optscale0", "optscalet"], budgets, orderings=args.orderings, seed=args.seed,
                      priors=priors, baselines=("bon",))
    t_fast, c_fast = time.perf_counter() - t0, time.process_time() - c0
    n_points = sum(r.kind == "sweep" for r in report.rows)
    print(f"one-shot sweep (fast path, incl. BoN baseline, bootstrap CIs): {t_fast:.2f} s wall, {c_fast:.2f} s CPU "
          f"for {n_points} points -> {'OK' if t_fast < 30 else 'SLOW'} (target < 30 s)")
    best = max((r for r in report.rows if r.kind == "sweep" and r.budget == 64), key=lambda r: r.accuracy)
    bon = report.get(method="bon", budget=64)
    print(f"  BoN@64: acc {bon.accuracy:.4f}, {bon.tokens:,.0f} tokens; best sweep point @64: {best.label} "
          f"{best.params} acc {best.accuracy:.4f}, {best.tokens:,.0f} tokens")

    # one grid point through policy.replay (no fast path): the speed-up, and identity of the results
    prep = ev.build_batch(arrays, orderings=args.orderings, seed=args.seed, priors=priors)
    all_rows = prep.rows_of(None)
    grid = ev._grid({"target": ev.SWEEP_TARGETS[:1], "alpha": ev.SWEEP_ALPHAS[:1]})
    t0 = time.perf_counter()
    slow = ev._grid_metrics(prep, all_rows, "optscale0", grid, budgets, fast=False)
    t_one = time.perf_counter() - t0
    fast = ev._fast_optscale(prep, all_rows, "optscale0", grid, budgets)
    same = all(np.array_equal(slow[k].samples, fast[k].samples) and np.array_equal(slow[k].correct, fast[k].correct)
               for k in slow)
    print(f"  policy.replay of one (s*, alpha) pair x 4 budgets (MLE): {t_one:.2f} s -> a replay-only one-shot "
          f"sweep would take ~{t_one * n_pairs * 2:.0f} s; fast path identical: {same}")

    # sequential mode (refit after every sample, wave = 1): the same full sweep through the fast path
    # (one fit per checkpoint c = k..64 and row), then policy.replay on a fraction of the grid, extrapolated
    t0, c0 = time.perf_counter(), time.process_time()
    seq = ev.sweep(arrays, ["optscale0-seq", "optscalet-seq"], budgets, orderings=args.orderings, seed=args.seed,
                   priors=priors, baselines=())
    t_seq, c_seq = time.perf_counter() - t0, time.process_time() - c0
    print(f"sequential sweep, same grid (fast path): {t_seq:.2f} s wall, {c_seq:.2f} s CPU "
          f"({t_seq / t_fast:.1f}x the one-shot sweep) for {sum(r.kind == 'sweep' for r in seq.rows)} points")
    pairs = ev._grid({"target": ev.SWEEP_TARGETS, "alpha": ev.SWEEP_ALPHAS})[: max(1, args.seq_pairs)]
    t0, c0 = time.perf_counter(), time.process_time()
    for name in ("optscale0-seq", "optscalet-seq"):
        ev._grid_metrics(prep, all_rows, name, pairs, budgets, fast=False)
    t_rep, c_rep = time.perf_counter() - t0, time.process_time() - c0
    frac = len(pairs) / n_pairs
    print(f"sequential via policy.replay: {t_rep:.2f} s wall, {c_rep:.2f} s CPU for {len(pairs)} of {n_pairs} "
          f"(s*, alpha) pairs ({100 * frac:.1f}% of the grid) x 4 budgets x 2 variants -> full grid "
          f"~{t_rep / frac:.0f} s wall / ~{c_rep / frac:.0f} s CPU")


if __name__ == "__main__":
    main()
