"""In-sample vs out-of-fold tuning of the cost-aware rule (``EvalConfig.tune_folds``), held-out.

For each pool and seed (the seed of the semi-synthetic draw, the calibration/test split and the orderings, as
in ``bench_rules.py``), ``optscale.evaluate`` tunes ``costaware`` on the calibration split with
``tune_folds=1`` (the gain model's tables judged on the very rows they were fitted to) and with
``tune_folds=5`` (each calibration fold replayed under a model fitted on the other folds), and the tuned
rule is reported on the held-out problems: accuracy minus BoN@N_max in points, and tokens (also as a
fraction of BoN's).

``--cv K`` instead holds every problem out once: K evaluations, each tuned (out of fold, as by default) on
the other K - 1 folds of the problems (``evaluate.cross_fit_splits``, ``EvalConfig.calib_problems``), and
prints, over all problems, the held-out accuracy minus BoN's and the tokens of ``costaware`` and of the
paper's OptScale^0 (both tuned with bench_rules' grids on each fold's calibration problems) -- the
held-out comparison with 80% of the problems for tuning instead of 30%.

    PYTHONPATH=src python benchmarks/bench_tune_folds.py --pools selfcert,beta --seeds 0,1,2,3
    PYTHONPATH=src python benchmarks/bench_tune_folds.py --pools selfcert --seeds 0 --cv 5
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


CV_METHODS = ("bon", br.PAPER, "costaware")


def cross_fitted(arrays, seed: int, K: int) -> dict[str, tuple[float, float]]:
    """{method: (accuracy, tokens)} over all problems, each problem held out once (K folds): the fold-size-
    weighted means of each fold's held-out rows."""
    P, M = arrays.answers.shape
    acc = dict.fromkeys(CV_METHODS, 0.0)
    tok = dict.fromkeys(CV_METHODS, 0.0)
    for cal, test in ev.cross_fit_splits(P, K, seed):
        cfg = ev.EvalConfig(budgets=(M,), orderings=3, seed=seed, coverage=False, oracle=False, n_boot=10,
                            calib_problems=tuple(int(x) for x in cal), grids=br.grids_for(arrays, seed, cal))
        rep = ev.evaluate(arrays, list(CV_METHODS), config=cfg)
        for r in rep.rows:
            acc[r.method] += r.accuracy * test.size / P
            tok[r.method] += r.tokens * test.size / P
    return {m: (acc[m], tok[m]) for m in CV_METHODS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--pools", default="selfcert,beta")
    ap.add_argument("--seeds", default="0,1,2,3")
    ap.add_argument("--folds", default="1,5", help="tune_folds values to compare")
    ap.add_argument("--cv", type=int, default=0, help="hold every problem out once over this many folds instead")
    args = ap.parse_args(argv)
    if args.cv:
        for name in args.pools.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                res = cross_fitted(br.named_pool(name, Path(args.data), seed), seed, args.cv)
                (ba, bt), (pa, pt), (ca, ct) = (res[m] for m in CV_METHODS)
                print(f"{name} seed {seed}, every problem held out once ({args.cv} folds): BoN {100 * ba:.2f}%, "
                      f"{bt:,.0f} tokens | paper OptScale0 {100 * (pa - ba):+.2f} pt, {pt:,.0f} | costaware "
                      f"{100 * (ca - ba):+.2f} pt, {ct:,.0f} ({ct / pt:.2f}x the paper's)", flush=True)
        return 0
    for name in args.pools.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            arrays = br.named_pool(name, Path(args.data), seed)
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
