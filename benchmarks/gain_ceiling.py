"""How close can a cost-aware stopping rule get to the clairvoyant oracle? A ceiling, measured.

Issue #8 asks, at BoN@N_max accuracy (within 0.5 point), for <= 3x the oracle's tokens. This script
measures, on the held-out problems of ``bench_rules.py``'s pools (same pools, split and orderings), the
cheapest (exchange rate, warm-up k) of ``costaware`` (``tokens_per_point``: a fine grid plus evaluate's;
k in 1, 2) reaching BoN@N_max - 0.5
point, for several gain-model states, with the gain model fitted

* on the calibration split (what a user gets, but with the rate picked on the test problems:
  like-for-like), and
* on the held-out problems THEMSELVES (in-sample; not a usable rule), with a finer, barely shrunk table
  (CEILING_FIT: 32 bins for the first feature, 6 for the others, 1 pseudo-row): about the best any table
  over that state can do on these problems -- if even this misses 3x the oracle, no tuning of that rule
  family will reach it, and the missing tokens are information the state does not carry;

and, for the semi-synthetic pools, on a LARGE independent calibration pool: the same generator over the
4,501 MATH training problems' labels (``train_mu_sigma.json``; no held-out problem's law in it) -- what the
rule does when calibration data is plentiful, as the paper's OptScale^t assumes for its predictor; its rate
is then also chosen on that pool (evaluate's "match" rule: the cheapest rate whose paired difference to BoN
there is above -0.5 point by one standard error), which makes a true held-out number for the test problems;
beside the known-law allocation (``known_law.py``: exact per-problem accuracy curves, the best fixed N per
problem) and the oracle. For the semi-synthetic pools it also prints where the samples go, by the
problem's true solve rate q (samples per problem: cost-aware fitted on calibration, known-law, oracle), and
a LAW-KNOWING cost-aware rule: each held-out problem gets its own gain table, fitted on ``--law-draws`` fresh
pools drawn from that problem's true law (its score law, solve rate and verifier noise: ``semi_draw``), one
exchange rate for all, the cheapest reaching the goal on the test rows -- what the rule does with perfect
knowledge of each problem's law but without seeing which draws are correct (state: best score, agreement).

``--fits JSON --seeds 0,1,2`` instead compares ``GainModel.fit`` settings ({name: keyword arguments}):
per pool and seed, the like-for-like tokens of the default state fitted on the calibration split with each
(how the default 8 bins were chosen over 16: ``--fits '{"16 bins": {"bins": 16}, "8 bins": {"bins": 8}}'``).

    PYTHONPATH=src python benchmarks/gain_ceiling.py [--pools beta,tn,selfcert] [--data ../shared/data]
        [--fits JSON --seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_rules as br  # noqa: E402
import known_law  # noqa: E402

from optscale.policies import GainModel  # noqa: E402

ev = importlib.import_module("optscale.evaluate")

STATES = ("best,mean", "best,mean,agree", "best,mean,agree,sd")
CEILING_FIT = {"bins": 32, "bins2": 6, "shrink": 1.0}  #: the in-sample table: more cells, little shrinkage
#: a fine grid plus evaluate's own (the cheapest point reaching the goal is a knife edge between rates)
RATES = tuple(sorted({float(x) for x in np.geomspace(3, 1e7, 28)}
                     | {float(x) for x in ev.DEFAULT_GRIDS["costaware"]["tokens_per_point"]}))


def grid_metrics(prep, rows, gm) -> list:
    """RowMetrics of ``costaware`` with model ``gm`` at every (rate in RATES, k in 1, 2) on ``rows``."""
    M = prep.max_samples
    grid = [{"tokens_per_point": t, "k": k, "model": gm} for t in RATES for k in (1, 2)]
    res = ev._grid_metrics(prep, rows, "costaware", grid, [M], fast=False)
    return [res[(i, M)] for i in range(len(grid))]


def cheapest(prep, rows, gm, goal: float, metrics: list | None = None) -> tuple[float, np.ndarray | None]:
    """(fewest mean tokens over RATES x k in (1, 2) reaching ``goal`` accuracy, samples per row there) on ``rows``
    (``metrics``: :func:`grid_metrics` of ``rows``, when already computed)."""
    ok = [m for m in (metrics or grid_metrics(prep, rows, gm)) if m.correct.mean() >= goal - 1e-12]
    if not ok:
        return np.inf, None
    m = min(ok, key=lambda m: m.tokens.mean())
    return float(m.tokens.mean()), m.samples


def setup(name: str, data: Path, seed: int):
    """(arrays, prep, calibration problems, test problems, their rows, BoN on the test rows, goal) as in
    bench_rules: pool order + 3 orderings, 30% calibration split."""
    arrays = br.named_pool(name, data, seed)
    P, M = arrays.answers.shape
    prep = ev.build_batch(arrays, orderings=3, seed=seed)
    calib, test = ev.split_problems(P, 0.3, seed)
    rc, rt = prep.rows_of(calib), prep.rows_of(test)
    bon = ev._replay(prep, rt, ev._make("bon", {}), "bon", M)
    return arrays, prep, calib, test, rc, rt, bon, bon.correct.mean() - 0.005


def compare_fits(name: str, data: Path, seeds: list[int], fits: dict) -> None:
    for seed in seeds:
        _, prep, _, _, rc, rt, _, goal = setup(name, data, seed)
        cells = []
        for label, kw in fits.items():
            t, _ = cheapest(prep, rt, GainModel.fit(prep.sub(rc), prep.sample_correct[rc], **kw), goal)
            cells.append(f"{label} {t:,.0f}" if np.isfinite(t) else f"{label} miss")
        print(f"{name} seed {seed}: like-for-like tokens, " + " | ".join(cells), flush=True)


def law_knowing(name: str, data: Path, seed: int, prep, test, rt, goal: float, draws: int,
                features: str = "best,agree", draw_seed: int = 0) -> tuple[float, np.ndarray | None]:
    """(fewest mean tokens reaching ``goal`` on the test rows, its samples per row) of ``costaware`` with a
    gain table PER held-out problem, fitted on ``draws`` fresh M-sample pools of that problem's true law
    (``bench_rules.semi_draw``; seeded by ``draw_seed`` and the problem, independent of the test rows), one (rate, k) for all
    problems, over RATES x k in (1, 2)."""
    laws = br.semi_laws(data, name, None, seed)
    M = prep.max_samples
    grid = [{"tokens_per_point": t, "k": k} for t in RATES for k in (1, 2)]
    pos = {int(r): i for i, r in enumerate(rt)}
    corr = np.zeros((len(grid), rt.size), dtype=bool)
    tok = np.zeros((len(grid), rt.size))
    nd = np.zeros((len(grid), rt.size), dtype=np.int64)
    for p in test:
        fresh = ev.build_batch(br.semi_draw(laws, M, np.random.default_rng([seed, 0x1A3, draw_seed, int(p)]),
                                            rows=np.full(draws, p)), orderings=0, seed=0)
        rf = fresh.rows_of(None)
        gm = GainModel.fit(fresh.sub(rf), fresh.sample_correct[rf], features=features, orderings=1)
        rows_p = prep.rows_of(np.array([p]))
        res = ev._grid_metrics(prep, rows_p, "costaware", [{**g, "model": gm} for g in grid], [M], fast=False)
        idx = [pos[int(r)] for r in rows_p]
        for g in range(len(grid)):
            m = res[(g, M)]
            corr[g, idx], tok[g, idx], nd[g, idx] = m.correct, m.tokens, m.samples
    return cheapest(prep, rt, None, goal, [ev.RowMetrics(correct=c, tokens=t, samples=n)
                                           for c, t, n in zip(corr, tok, nd, strict=True)])


def run(name: str, data: Path, seed: int = 0, law_draws: int = 512, law_seeds: tuple[int, ...] = (0,)) -> None:
    arrays, prep, calib, test, rc, rt, bon, goal = setup(name, data, seed)
    P, M = arrays.answers.shape
    orc = ev.oracle_costs(prep, rt, [M], ev._make("bon", {}))[M]
    acc = known_law.bon_accuracy_curve(prep.scores_p[test], prep.answers_p[test], prep.sample_correct[:P][test],
                                       prep.n_p[test], M)
    tok = known_law.expected_tokens_curve(prep.tokens_p[test], prep.n_p[test], M)
    kl = known_law.allocate(acc, tok, acc[:, -1].mean() - 0.005)
    o = float(orc.tokens.mean())
    print(f"== {name} (N_max {M}, {test.size} held-out problems): BoN@{M} {100 * bon.correct.mean():.2f}%, "
          f"{bon.tokens.mean():,.0f} tokens; oracle {o:,.0f}; known-law allocation {kl.tokens:,.0f} "
          f"({kl.tokens / o:.2f}x oracle)", flush=True)
    honest_n = None
    for state in STATES:
        cells = []
        for where, rows in (("calibration", rc), ("held-out (in-sample)", rt)):
            kw = CEILING_FIT if rows is rt else {}
            gm = GainModel.fit(prep.sub(rows), prep.sample_correct[rows], features=state, **kw)
            t, nd = cheapest(prep, rt, gm, goal)
            cells.append(f"fitted on {where}: " + (f"{t:,.0f} = {t / o:.2f}x oracle, {t / kl.tokens:.2f}x known-law"
                                                  if np.isfinite(t) else "miss"))
            if where == "calibration" and state == "best,mean,agree":
                honest_n = nd
        print(f"  costaware ({state}): " + "; ".join(cells), flush=True)
    if name in ("beta", "tn"):
        big = br.semi_synthetic(data, name, None, M, seed + 1000, labels="train")[0]
        bprep = ev.build_batch(big, orderings=0, seed=seed + 1000)
        rb = bprep.rows_of(None)
        gm = GainModel.fit(bprep.sub(rb), bprep.sample_correct[rb])
        test_m = grid_metrics(prep, rt, gm)
        t, _ = cheapest(prep, rt, gm, goal, test_m)
        # the rate chosen on the big pool itself (test problems untouched): match BoN within 0.5 pt, z = 1
        big_m = grid_metrics(bprep, rb, gm)
        bbon = ev._replay(bprep, rb, ev._make("bon", {}), "bon", M)
        _, lower = ev.paired_lower((x.correct.astype(float) for x in big_m), bbon.correct.astype(float), 1.0)
        gi = ev._choose(np.array([x.correct.mean() for x in big_m]), np.array([x.tokens.mean() for x in big_m]),
                        bbon.correct.mean(), bbon.tokens.mean(), "match", 0.005, 0.0, lower=lower)
        r, k = RATES[gi // 2], 1 + gi % 2
        m = test_m[gi]
        print(f"  costaware (default state) fitted on {big.answers.shape[0]:,} other MATH problems (semi-synthetic, "
              f"training labels): rate picked on the test problems {t:,.0f} = {t / o:.2f}x oracle, "
              f"{t / kl.tokens:.2f}x known-law; rate picked on that pool (tokens_per_point {r:.3g}, k {k}): "
              f"held-out {100 * m.correct.mean():.2f}% ({100 * (m.correct.mean() - bon.correct.mean()):+.2f} pt vs "
              f"BoN), {m.tokens.mean():,.0f} = {m.tokens.mean() / o:.2f}x oracle", flush=True)
    law_n = None
    if name in ("beta", "tn") and law_draws > 0:
        for ds in law_seeds:  # the cheapest point reaching the goal is a knife edge: several draws of the tables
            t, n_ds = law_knowing(name, data, seed, prep, test, rt, goal, law_draws, draw_seed=ds)
            law_n = n_ds if law_n is None else law_n
            print(f"  law-knowing costaware (best,agree; a table per problem from {law_draws} fresh pools of its true "
                  f"law, draw seed {ds}): "
                  + (f"{t:,.0f} = {t / o:.2f}x oracle, {t / kl.tokens:.2f}x known-law" if np.isfinite(t) else "miss"),
                  flush=True)
    if name in ("beta", "tn") and honest_n is not None:
        n_ord = prep.n_orderings
        q = arrays.correct.mean(axis=1)[test]
        cost_n = honest_n.reshape(n_ord, -1).mean(axis=0)
        orc_n = orc.samples.reshape(n_ord, -1).mean(axis=0)
        law_p = law_n.reshape(n_ord, -1).mean(axis=0) if law_n is not None else np.full(test.size, np.nan)
        print("  where the samples go (per problem, by true solve rate q; cost-aware (best,mean,agree) fitted on "
              "calibration at its cheapest rate | law-knowing cost-aware | known-law | oracle):")
        for lo, hi in ((0, 0.01), (0.01, 0.1), (0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9), (0.9, 1.01)):
            s = (q >= lo) & (q < hi)
            if s.any():
                print(f"    q in [{lo:.2f}, {min(hi, 1):.2f}): {s.sum():3d} problems, samples {cost_n[s].mean():5.1f} | "
                      f"{law_p[s].mean():5.1f} | {kl.n[s].mean():5.1f} | {orc_n[s].mean():5.1f}; share of all cost-aware samples "
                      f"{cost_n[s].sum() / cost_n.sum():.0%}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--pools", default="beta,tn,selfcert")
    ap.add_argument("--fits", default=None, help="JSON {name: GainModel.fit kwargs}: compare fit settings instead")
    ap.add_argument("--seeds", default="0", help="with --fits: the seeds")
    ap.add_argument("--law-draws", type=int, default=512,
                    help="fresh pools per problem for the law-knowing rule (semi-synthetic pools; 0 = skip)")
    ap.add_argument("--law-seeds", default="0,1,2", help="draw seeds of the law-knowing rule's tables")
    args = ap.parse_args(argv)
    data = Path(args.data)
    for name in args.pools.split(","):
        if name in ("beta", "tn") and not (data / "optscale-paper").exists():
            print(f"shared data not found at {data}: {name} skipped", file=sys.stderr)
            continue
        if args.fits:
            compare_fits(name, data, [int(s) for s in args.seeds.split(",")], json.loads(args.fits))
        else:
            run(name, data, law_draws=args.law_draws, law_seeds=tuple(int(x) for x in args.law_seeds.split(",")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
