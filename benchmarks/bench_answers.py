"""Benchmark ``cluster_answers(..., "math")`` on many distinct answers: the fingerprint index vs all pairs.

Before: every new distinct answer was compared (math-verify parse + numeric fingerprint, then sympy where
the fingerprints cannot tell) with the representative of every existing class, D²/2 comparisons for D
distinct answers (1,000 distinct: 14 s). That loop is what ``cluster_answers(answers, equiv)`` still does
for a plain callable ``equiv``, so "before" here is ``cluster_answers(answers, lambda a, b:
math_equiv(a, b))`` - the same comparisons, the same caches. After: ``cluster_answers(answers, "math")``,
which compares a newcomer only with the classes its fingerprint cannot rule out (``answers._RepIndex``).

Workload: D distinct answers, realistic spellings of numbers (integers, decimals, fractions, negatives),
every tenth one repeated in an equivalent spelling (``7`` / ``7.0`` / ``\\frac{14}{2}``), shuffled.
Both sides start from empty parse / comparison caches (``answers.clear_caches()``) and run interleaved,
alternating which goes first, ``--reps`` times; the classes are checked to be identical.

    python benchmarks/bench_answers.py [--distinct 1000] [--reps 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from optscale.answers import clear_caches, cluster_answers, math_equiv


def workload(rng: np.random.Generator, distinct: int) -> list[str]:
    out = []
    for i in range(distinct):
        kind = i % 4
        if kind == 0:
            out.append(str(i))
        elif kind == 1:
            out.append(f"{i / 8:.3f}")
        elif kind == 2:
            out.append(rf"\frac{{{i}}}{{{i % 7 + 3}}}")
        else:
            out.append(f"-{i}")
    extra = []
    for i in range(0, distinct, 10):   # equivalent spellings of some of them
        extra.append(f"{i}.0" if i % 4 == 0 else out[i] + " ")
    answers = out + extra
    return [answers[j] for j in rng.permutation(len(answers))]


def all_pairs(a, b):
    return math_equiv(a, b)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--distinct", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    answers = workload(np.random.default_rng(args.seed), args.distinct)
    sides = {"after": lambda: cluster_answers(answers, "math"), "before": lambda: cluster_answers(answers, all_pairs)}
    math_equiv("x + 1", "1 + x")   # imports (math-verify, sympy) are not part of the timing
    times: dict[str, list[float]] = {k: [] for k in sides}
    ids = {}
    names = list(sides)
    for r in range(args.reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            clear_caches()
            t = time.perf_counter()
            ids[name] = sides[name]()
            times[name].append(time.perf_counter() - t)
    same = bool(np.array_equal(ids["after"], ids["before"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"answers": len(answers), "distinct": args.distinct, "classes": int(ids["after"].max()) + 1,
           "reps": args.reps, "seconds": med, "speedup": med["before"] / med["after"], "identical_classes": same}
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    print(f"cluster_answers(..., 'math'): {len(answers)} answers, {args.distinct} distinct spellings, "
          f"{res['classes']} classes; median of {args.reps} interleaved runs from cold caches")
    print(f"  before (all pairs)         {med['before']:8.2f} s")
    print(f"  after (fingerprint index)  {med['after']:8.2f} s")
    print(f"  speed-up {res['speedup']:.1f}x; identical classes: {same}")
    return res


if __name__ == "__main__":
    main()
