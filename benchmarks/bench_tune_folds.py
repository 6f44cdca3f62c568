"""In-sample vs out-of-fold tuning of the cost-aware rule (``EvalConfig.tune_folds``), held-out.

For each pool and seed (the seed of the semi-synthetic draw, the calibration/test split and the orderings, as
in ``bench_rules.py``), ``optscale.evaluate`` tunes ``costaware`` on the calibration split with
``tune_folds=1`` (the gain model's tables judged on the very rows they were fitted to) and with
``tune_folds=5`` (each calibration fold replayed under a model fitted on the other folds), and the tuned
rule is reported on the held-out problems: accuracy minus BoN@N_max in points, and tokens (also as a
fraction of BoN's).

    PYTHONPATH=src python benchmarks/bench_tune_folds.py --pools selfcert,beta --seeds 0,1,2,3
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_rules as br  # noqa: E402

ev = importlib.import_module("optscale.evaluate")


def load(name: str, seed: int, data: Path):
    if name in ("beta", "tn"):
        return br.semi_synthetic(data, name, None, 64, seed)[0]
    return br.load_real(REPO / "pools" / "smollm2-arith" / f"{name}.jsonl")[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--pools", default="selfcert,beta")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--folds", default="1,5", help="tune_folds values to compare")
    args = ap.parse_args(argv)
    for name in args.pools.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            arrays = load(name, seed, Path(args.data))
            M = arrays.answers.shape[1]
            cells = []
            for folds in (int(f) for f in args.folds.split(",")):
                cfg = ev.EvalConfig(budgets=(M,), orderings=3, seed=seed, coverage=False, n_boot=10,
                                    tune_folds=folds)
                rows = {r.method: r for r in ev.evaluate(arrays, ["bon", "costaware"], config=cfg).rows
                        if r.split == "test"}
                r, b = rows["costaware"], rows["bon"]
                cells.append(f"tune_folds={folds}: {100 * (r.accuracy - b.accuracy):+.2f} pt, {r.tokens:,.0f} tokens "
                             f"({r.tokens / b.tokens:.3f}x BoN)")
            print(f"{name} seed {seed}: " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
