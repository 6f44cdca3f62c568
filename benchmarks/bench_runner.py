"""Benchmark: the online runner on the embedded model (llama.cpp + SmolLM2-135M-Instruct, CPU).

Runs a handful of demo problems twice with the same generator, seed and scorer (self-certainty):

* adaptive — ``--method`` (default OptScale^0, k=4 warm-up then one more wave) drawing waves;
* fixed    — Best-of-N with N = ``--n-max`` (one wave of N samples).

Reports, per configuration: samples and tokens drawn, wall time, throughput (generated tokens/s),
controller time per decision (``policy.next_wave`` / ``policy.select``) and its share of wall time, and
accuracy on the demo set (meaningless for a 135M model; shown for completeness). A second, model-free
measurement times the policy alone on realistic observations (many repetitions) for a stable
per-decision figure. Targets: controller < 1 ms per decision and < 1 % of wall time.

    python benchmarks/bench_runner.py [--problems 3] [--n-max 8] [--max-tokens 32] [--method optscale0] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import numpy as np


def controller_microbench(method: str, n_max: int, reps: int = 300) -> dict:
    """Per-decision time of ``method`` alone on random observations of the sizes the runner sees."""
    from optscale.policies import Observation, make_policy

    policy = make_policy(method)
    rng = np.random.default_rng(0)
    sizes = [0, min(4, n_max), n_max]

    def obs(m):
        return Observation(rng.integers(0, 3, m), rng.uniform(0.2, 0.9, m), rng.uniform(20, 40, m))

    policy.next_wave(obs(n_max), n_max)  # warm-up (lazy imports)
    out = {}
    for m in sizes:
        o = [obs(m) for _ in range(reps)]
        t0 = time.perf_counter()
        for x in o:
            policy.next_wave(x, n_max)
        out[f"next_wave_ms@n={m}"] = (time.perf_counter() - t0) / reps * 1e3
    o = [obs(n_max) for _ in range(reps)]
    t0 = time.perf_counter()
    for x in o:
        policy.select(x)
    out["select_ms"] = (time.perf_counter() - t0) / reps * 1e3
    return out


async def bench(args) -> dict:
    from optscale.online.data import load_demo
    from optscale.online.generators import default_generator
    from optscale.online.runner import arun
    from optscale.online.scorers import make_scorer
    from optscale.policies import make_policy

    problems = load_demo(limit=args.problems)
    scorer = make_scorer("self-certainty")
    rows = []
    async with default_generator() as gen:
        # load the model and warm the caches outside the timed runs
        await gen.generate("Hi", 1, seed=0, max_tokens=2, temperature=0.7)
        for label, method in (("adaptive", args.method), ("fixed BoN", "bon")):
            policy = make_policy(method)
            s = await arun(
                problems,
                gen,
                scorer,
                policy,
                args.n_max,
                max_tokens=args.max_tokens,
                seed=args.seed,
                concurrency=args.concurrency,
                progress=False,
                equiv="math",
            )
            rows.append(
                {
                    "config": label,
                    "method": s.method,
                    "problems": s.completed,
                    "mean_samples": s.mean_samples,
                    "mean_tokens": s.mean_tokens,
                    "waves": [r["waves"] for r in s.results],
                    "accuracy": s.accuracy,
                    "wall_s": s.wall_s,
                    "tokens_per_s": s.tokens_per_s,
                    "decisions": s.decisions,
                    "controller_ms_per_decision": s.controller_ms_per_decision,
                    "controller_share": s.controller_share,
                }
            )
    return {
        "setup": {
            "model": "SmolLM2-135M-Instruct (embedded llama.cpp, CPU)",
            "problems": args.problems,
            "n_max": args.n_max,
            "max_tokens": args.max_tokens,
            "concurrency": args.concurrency,
            "seed": args.seed,
        },
        "runs": rows,
        "controller_alone": controller_microbench(args.method, args.n_max),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=3, help="demo problems (default 3)")
    p.add_argument("--n-max", type=int, default=8, help="N_max (default 8)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per sample (default 32)")
    p.add_argument("--method", default="optscale0", help="adaptive policy spec (default optscale0)")
    p.add_argument("--concurrency", type=int, default=2, help="problems in flight (default 2)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    res = asyncio.run(bench(args))
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
        return 0
    st = res["setup"]
    print(
        f"{st['model']}: {st['problems']} demo problems, N_max={st['n_max']}, max_tokens={st['max_tokens']}, "
        f"concurrency={st['concurrency']}"
    )
    head = f"{'config':<10} {'samples':>7} {'tokens':>7} {'wall s':>7} {'tok/s':>7} {'ctrl ms/dec':>11} {'ctrl share':>10}"
    print(head)
    print("-" * len(head))
    for r in res["runs"]:
        print(
            f"{r['config']:<10} {r['mean_samples']:>7.2f} {r['mean_tokens']:>7.1f} {r['wall_s']:>7.1f} "
            f"{r['tokens_per_s']:>7.1f} {r['controller_ms_per_decision']:>11.4f} {r['controller_share']:>10.4%}"
        )
    print("controller alone (ms):", ", ".join(f"{k}={v:.4f}" for k, v in res["controller_alone"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
