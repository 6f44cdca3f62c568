"""Peak memory of ``optscale eval`` against the size of the pool file (issue #9: under 10x the file).

Writes a synthetic pool (default 100,000 problems x 4 samples, with answers, scores, token counts and
correctness flags; about 35 MB) to a temporary directory and runs, each in a fresh Python process, the
steps of ``optscale eval POOL`` with its default methods, reporting each process's peak resident set
size (``ru_maxrss``) and its ratio to the file size:

* ``load-objects``: the previous loader path, reading and validating the pool into sample objects
  (:func:`optscale.pool.load_pool`) and then building the arrays (:func:`optscale.pool.to_arrays`);
* ``load-stream``: what ``eval`` does now, :func:`optscale.pool.load_arrays` (validated lines streamed
  straight into the arrays, no per-sample objects);
* ``eval``: the whole command, ``optscale eval POOL --json`` (defaults: 7 methods, 10 orderings,
  tuning on a 30 % calibration split, bootstrap intervals, oracle).

Run: ``python benchmarks/bench_eval_memory.py [--problems 100000] [--samples 4]`` (about 2-3 minutes on
two cores for the default size). Measured (2026-12-01, 2 shared cores)::

    pool: 100,000 problems x 4 samples, 33.2 MiB
    step           peak RSS MiB  peak / file  target  seconds
    load-objects            191         5.8x    <10x     16.5  ok
    load-stream             107         3.2x    <10x     22.7  ok
    eval                    304         9.2x    <10x    129.4  ok
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 10.0

LOAD_OBJECTS = """
import resource, sys
from optscale.pool import load_pool, to_arrays
arrays = to_arrays(load_pool(sys.argv[1]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

LOAD_STREAM = """
import resource, sys
from optscale.pool import load_arrays
arrays, heads = load_arrays(sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""

EVAL = """
import contextlib, io, resource, sys
from optscale.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["eval", sys.argv[1], "--json"])
assert code == 0, code
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def write_pool(path: Path, problems: int, samples: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(problems):
            gold = str(rng.randint(0, 9))
            ss = []
            for _ in range(samples):
                a = str(rng.randint(0, 9))
                ss.append({"answer": a, "score": round(rng.random(), 4), "tokens": rng.randint(50, 900),
                           "correct": a == gold})
            fh.write(json.dumps({"id": f"p{i}", "question": f"What is problem {i}?", "gold": gold,
                                 "samples": ss}) + "\n")


def peak_kib(code: str, pool: Path) -> tuple[int, float]:
    """(peak RSS in KiB, seconds) of ``code`` run in a fresh interpreter on ``pool``."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code, str(pool)], capture_output=True, text=True, env=env,
                         check=True)
    return int(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=100_000)
    ap.add_argument("--samples", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pool = Path(tmp) / "pool.jsonl"
        write_pool(pool, args.problems, args.samples)
        size = pool.stat().st_size
        print(f"pool: {args.problems:,} problems x {args.samples} samples, {size / 2**20:.1f} MiB")
        print(f"{'step':<13} {'peak RSS MiB':>13} {'peak / file':>12} {'target':>7} {'seconds':>8}")
        for name, code in (("load-objects", LOAD_OBJECTS), ("load-stream", LOAD_STREAM), ("eval", EVAL)):
            kib, secs = peak_kib(code, pool)
            ratio = kib * 1024 / size
            ok = "ok" if ratio < TARGET_RATIO else "OVER"
            print(f"{name:<13} {kib / 1024:13.0f} {ratio:11.1f}x {f'<{TARGET_RATIO:g}x':>7} {secs:8.1f}  {ok}")


if __name__ == "__main__":
    main()
