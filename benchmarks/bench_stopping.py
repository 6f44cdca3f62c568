"""Benchmark one online stopping decision of optscale's ASC against the original Adaptive-Consistency package.

Peer: ``AdaptiveConsistency`` 1.0.0 from PyPI (Aggarwal et al. 2023, the authors' package;
``pip install AdaptiveConsistency==1.0.0``, import name ``adaptive_consistency``):
``BetaStoppingCriteria(threshold).should_stop(answers)`` counts the answers with ``collections.Counter`` and
integrates the Beta posterior numerically (two ``scipy.integrate.quad`` calls). This is both what a user
would pick instead and the paper's own procedure.
Ours: ``make_policy("asc:threshold=...").next_wave(Observation, n_max)`` (a dict vote count and a cached
bound on the leader's votes, see ``ASC.min_leader_votes``); also shown: the previous implementation of the
same decision (``np.unique`` counts + ``scipy.special.betainc``), kept here as a yardstick.

Workload: observations of 1..40 answers drawn from 5 answer classes with a skewed distribution (a clear
majority answer 60% of the time), threshold 0.95. The peer counts every answer as a vote, so the workload
has no unparsable answers and the two sides see the same votes; the decisions are checked to agree.
Timing: the sides run interleaved (ABC, BCA, CAB, ...) over the same observations, ``--reps`` rounds; the
median per-decision time of each side is reported with the ratios.

    python benchmarks/bench_stopping.py [--decisions 2000] [--reps 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from optscale.policies import Observation, asc_confidence, make_policy


def workload(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    p = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    return [rng.choice(5, size=int(rng.integers(1, 41)), p=rng.permutation(p)).astype(np.int64) for _ in range(n)]


def previous_decision(answers: np.ndarray, threshold: float, n_max: int) -> int:
    """optscale's ASC decision before this change: np.unique counts and a betainc call per decision."""
    _, counts = np.unique(answers[answers >= 0], return_counts=True)
    counts = np.sort(counts)[::-1]
    v1 = int(counts[0]) if counts.size > 0 else 0
    v2 = int(counts[1]) if counts.size > 1 else 0
    if answers.size and float(asc_confidence(v1, v2)) >= threshold:
        return 0
    return 1 if answers.size < n_max else 0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decisions", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    try:
        from adaptive_consistency import BetaStoppingCriteria
    except ImportError:
        raise SystemExit("the peer package is not installed: pip install AdaptiveConsistency==1.0.0") from None

    n_max = 64
    obs_list = workload(np.random.default_rng(args.seed), args.decisions)
    observations = [Observation(a, np.full(a.size, np.nan), np.ones(a.size)) for a in obs_list]
    as_lists = [a.tolist() for a in obs_list]        # the peer's input: a list of answers
    ours = make_policy(f"asc:threshold={args.threshold}")
    peer = BetaStoppingCriteria(args.threshold)

    def run_ours():
        return [ours.next_wave(o, n_max) for o in observations]

    def run_peer():
        return [0 if peer.should_stop(a)["stop"] else 1 for a in as_lists]

    def run_previous():
        return [previous_decision(a, args.threshold, n_max) for a in obs_list]

    sides = {"ours": run_ours, "peer": run_peer, "previous": run_previous}
    results = {name: fn() for name, fn in sides.items()}   # warm-up (imports, caches) and agreement
    agree_peer = float(np.mean(np.array(results["ours"]) == np.array(results["peer"])))
    agree_prev = float(np.mean(np.array(results["ours"]) == np.array(results["previous"])))
    times: dict[str, list[float]] = {name: [] for name in sides}
    names = list(sides)
    for r in range(args.reps):
        for name in names[r % len(names):] + names[:r % len(names)]:   # rotate the order every round
            t = time.perf_counter()
            sides[name]()
            times[name].append((time.perf_counter() - t) / args.decisions)
    med = {name: statistics.median(v) for name, v in times.items()}
    res = {
        "decisions": args.decisions, "reps": args.reps, "threshold": args.threshold,
        "per_decision_us": {k: v * 1e6 for k, v in med.items()},
        "speedup_vs_peer": med["peer"] / med["ours"],
        "speedup_vs_previous": med["previous"] / med["ours"],
        "agree_with_peer": agree_peer, "agree_with_previous": agree_prev,
        "stop_rate": float(np.mean(np.array(results["ours"]) == 0)),
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(f"ASC stopping decision, threshold {args.threshold}, {args.decisions} observations of 1..40 answers, "
          f"{args.reps} interleaved rounds (median per decision)")
    for name, label in (("ours", "optscale ASC.next_wave"), ("peer", "AdaptiveConsistency 1.0.0 (peer)"),
                        ("previous", "optscale before (np.unique + betainc)")):
        print(f"  {label:42} {res['per_decision_us'][name]:8.2f} us")
    print(f"  speed-up vs peer {res['speedup_vs_peer']:.1f}x, vs previous {res['speedup_vs_previous']:.1f}x; "
          f"decisions agree with peer {100 * agree_peer:.1f}%, with previous {100 * agree_prev:.1f}%; "
          f"stop rate {100 * res['stop_rate']:.0f}%")
    return res


if __name__ == "__main__":
    main()
