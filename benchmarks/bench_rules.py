"""Benchmark of the issue-#8 stopping rules against the paper's, on every scored pool the project has.

Pools (each run through ``optscale.evaluate`` with hyper-parameters tuned on a calibration split and every
number reported on the held-out problems):

* ``pools/*/*.jsonl`` of this repository (the real SmolLM2 arithmetic pools, one per scorer, when present)
  and any ``--pool FILE``;
* the real PRM best-of-N fragments of ``../shared/data/pools/prm-bon-fragments`` (tiny: 10 x 4);
* SEMI-SYNTHETIC pools (clearly labelled; all 500 label problems by default, ``--semi-problems``): one law
  per MATH-500 problem whose mean and standard deviation are the paper's labels
  (``../shared/data/optscale-paper/predictor/val_mu_sigma.json``: moments of 64 Qwen2.5-Math-PRM-7B scores
  per problem) -- ``semi-synthetic beta`` (Beta laws with those moments: the
  heavier left tail the real laws have) and ``semi-synthetic tn`` (truncated normals with those moments);
  per problem a solve rate q = Phi(1 + 1.5 z) (z: normal score of the problem's rank by label mean; ~5% of
  problems never solved, pass@1 ~ 0.7), correct samples drawn independently, the law's scores handed out so
  that the verifier ranks correct samples higher with noise (AUC ~ 0.92), wrong answers split 0.6 / 0.3 /
  0.1 over three classes (a popular wrong answer), tokens ~ U[300, 3000);
  OptScale^t priors = the paper's predicted (mu, sigma) for MATH-500 (``results/MATH500_predicted_mu_sigma.json``).

Methods: BoN, SC, ASC (fixed / adaptive baselines), the paper's OptScale^0 and OptScale^t (one-shot),
our sequential OptScale^0 with target-reached stop, and the new rules: posterior-predictive N (score model
chosen by held-out likelihood), the exceedance model, cost-aware stopping (learned gain), the score-weighted
vote. Per pool: one table at the largest budget N_max and one PNG (accuracy vs tokens, all budgets).

Table columns (every number on the held-out problems, mean over pool order + ``--orderings`` random
orderings, then over problems): ``accuracy %``; ``tokens/problem`` (cost: every drawn sample's tokens, or
samples for a pool without token counts); ``tokens at BoN@N_max acc.`` = the tokens when the accuracy is
within 0.5 point of BoN@N_max's, else ``miss``; ``vs paper OptScale0`` / ``vs oracle`` = that column over
the paper's tuned OptScale^0's / the oracle's; ``coverage`` = for a rule claiming P(best of N >= s*) >= 1 -
alpha: the achieved fraction of early-stopped runs with a drawn score >= s*, the promised 1 - alpha, and the
fraction of runs that stopped early. Two reference rows, neither a usable rule:

* ``oracle (clairvoyant)``: per (problem, ordering) the first prefix whose BoN pick is as correct as
  BoN@N_max's (it sees the draws; optscale.evaluate.oracle_costs). It matches BoN's correctness row by
  row, so where more samples make BoN worse (a weak verifier) it can cost more than the known-law row.
* ``known-law allocation (fixed N per problem, knows acc_p(n))`` (benchmarks/known_law.py): knows each
  problem's exact accuracy curve acc_p(n) (expectation over random orderings of its samples) and
  expected tokens, not the draws; one n_p per problem reaching E[BoN@N_max accuracy] - 0.5 point at the
  fewest expected tokens. Its accuracy and tokens are exact expectations; the same n_p replayed on the
  report's rows is printed below the table. It is the best any fixed-N-per-problem rule can do even with
  perfect difficulty knowledge: a rule beating it must stop on what it draws.

Lines below each table: the known-law allocation (with its LP lower bound), then the best new rule at
BoN@N_max accuracy held-out tuned and at its best test-split grid point (every rule tuned on the test
problems: equally optimistic for all), as ratios to the paper's OptScale0, the oracle and the known-law
allocation, each with a 95% paired bootstrap interval over the held-out problems (each rule's grid point
fixed), and the same like-for-like ratios with re-selection: per resample every rule's cheapest grid point
reaching that resample's BoN accuracy - 0.5 point is chosen again (median and 95% interval; this one
carries the knife-edge noise of "within 0.5 point", which the fixed-point interval hides).

    python benchmarks/bench_rules.py [--data ../shared/data] [--out bench_rules_out] [--orderings 3]
        [--semi-problems 500] [--only NAME]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optscale import theory
from optscale.pool import PoolArrays

ev = importlib.import_module("optscale.evaluate")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import known_law  # noqa: E402  (benchmarks/known_law.py: the known-law allocation)

KNOWN_LAW = "known-law allocation (fixed N per problem, knows acc_p(n))"

METHODS = ["bon", "sc", "asc", "optscale0", "optscale0-seq:early_stop=true", "optscale-post-seq",
           "optscale-post-seq:model=exc", "costaware", "wvote"]
PRIOR_METHODS = ["optscalet", "optscale-post-seq:prior=true"]
PAPER = "optscale0"  # the paper's OptScale^0 (one-shot)


@dataclass(frozen=True)
class SemiLaws:
    """The per-problem truth of a semi-synthetic pool (see :func:`semi_synthetic`): ``law`` ("beta" | "tn"),
    the score law's ``mean`` and ``sd`` [P] (from the MATH labels), the solve rate ``q`` [P], the label rows
    ``pick`` [P] and the paper's predicted (mu0, sigma0) [P, 2] (None for training labels)."""

    law: str
    mean: np.ndarray
    sd: np.ndarray
    q: np.ndarray
    pick: np.ndarray
    priors: np.ndarray | None


def semi_laws(data: Path, law: str, P: int | None, seed: int, labels: str = "val",
              rng: np.random.Generator | None = None) -> SemiLaws:
    """The per-problem laws of :func:`semi_synthetic` (``rng``: its generator, advanced by the pick)."""
    lab = np.asarray(json.loads((data / f"optscale-paper/predictor/{labels}_mu_sigma.json").read_text()), float)
    pred = None if labels != "val" else np.asarray(
        json.loads((data / "optscale-paper/results/MATH500_predicted_mu_sigma.json").read_text()), float)
    rng = np.random.default_rng(seed) if rng is None else rng
    pick = rng.permutation(lab.shape[0])[:P]  # P = None: every label problem (500)
    P = pick.shape[0]
    mean = np.clip(lab[pick, 0], 0.02, 0.98)
    sd = np.clip(lab[pick, 1], 0.005, None)
    sd = np.minimum(sd, 0.95 * np.sqrt(mean * (1 - mean)))  # a Beta law needs var < m (1 - m)
    # per problem a solve rate q = Phi(1 + 1.5 z), z = the normal score of the problem's rank by label mean
    # (problems the verifier likes are easier; ~5% are never solved, pass@1 ~ 0.7)
    from scipy.stats import norm, rankdata

    q = norm.cdf(1.0 + 1.5 * norm.ppf((rankdata(mean) - 0.5) / P))
    priors = None
    if pred is not None:
        pm = pred[pick]
        mu0, s0 = theory.moments_to_params(np.clip(pm[:, 0], 0.02, 0.98), np.clip(pm[:, 1], 0.005, 0.5))
        priors = np.column_stack([mu0, s0])
    return SemiLaws(law, mean, sd, q, pick, priors)


def semi_draw(laws: SemiLaws, M: int, rng: np.random.Generator, rows: np.ndarray | None = None) -> PoolArrays:
    """M fresh samples of each problem ``rows`` (default all) from its true law: scores from the score law;
    correctness bits drawn independently with the problem's q; the verifier ranks correct samples higher
    with noise (AUC ~ 0.92): the law's scores, sorted, are handed out in the order of correct * 2 + N(0, 1)
    -- each problem's scores keep its law; wrong answers 1-3 (a popular wrong answer exists); tokens
    uniform in [300, 3000)."""
    rows = np.arange(laws.mean.shape[0]) if rows is None else np.asarray(rows)
    mean, sd, q = laws.mean[rows], laws.sd[rows], laws.q[rows]
    P = rows.shape[0]
    if laws.law == "beta":
        kappa = mean * (1 - mean) / sd**2 - 1
        scores = rng.beta(mean[:, None] * kappa[:, None], (1 - mean[:, None]) * kappa[:, None], (P, M))
    else:
        mu, sigma = theory.moments_to_params(mean, sd)
        scores = theory.sample(mu[:, None], sigma[:, None], (P, M), rng)
    correct = rng.random((P, M)) < q[:, None]
    key = correct * 2.0 + rng.normal(size=(P, M))
    rank = np.argsort(np.argsort(-key, axis=1), axis=1)  # 0 = highest key
    scores = np.take_along_axis(-np.sort(-scores, axis=1), rank, axis=1)
    wrong = rng.choice(np.arange(1, 4), size=(P, M), p=[0.6, 0.3, 0.1])  # a popular wrong answer exists
    answers = np.where(correct, 0, wrong).astype(np.int64)
    tokens = rng.integers(300, 3000, (P, M)).astype(float)
    cc = np.zeros((P, 4), dtype=bool)
    cc[:, 0] = True
    return PoolArrays(scores=scores, tokens=tokens, answers=answers, correct=correct,
                      n=np.full(P, M, dtype=np.int64), class_correct=cc, ids=[str(i) for i in range(P)],
                      has_scores=True, has_tokens=True)


def semi_synthetic(data: Path, law: str, P: int | None, M: int, seed: int,
                   labels: str = "val") -> tuple[PoolArrays, np.ndarray | None]:
    """(arrays, priors [P, 2]) of a semi-synthetic pool whose per-problem laws have the MATH-500 label
    moments (see the module docstring; :func:`semi_laws` + :func:`semi_draw`). ``labels="train"``: the 4,501
    MATH training problems' labels instead (``train_mu_sigma.json``: other problems from the same
    distribution; no priors, None)."""
    rng = np.random.default_rng(seed)
    laws = semi_laws(data, law, P, seed, labels, rng=rng)
    return semi_draw(laws, M, rng), laws.priors


def named_pool(name: str, data: Path, seed: int, semi_problems: int | None = None) -> PoolArrays:
    """The benchmarks' pools by name: "beta" / "tn" = :func:`semi_synthetic` (``semi_problems`` label
    problems, None = all 500, 64 samples; drawn with ``seed``), else the committed SmolLM2 pool
    ``pools/smollm2-arith/{name}.jsonl`` ("selfcert", "judge")."""
    if name in ("beta", "tn"):
        return semi_synthetic(data, name, semi_problems, 64, seed)[0]
    return load_real(REPO / "pools" / "smollm2-arith" / f"{name}.jsonl")[0]


def real_pools(data: Path, extra: list[str]) -> list[tuple[str, Path]]:
    files = sorted((REPO / "pools").glob("*/*.jsonl")) + [Path(p) for p in extra]
    prm = data / "pools/prm-bon-fragments"
    for name in ("bayesian-prm-search__n4.jsonl", "BayesPRM-Search__data_previous_n4.jsonl"):
        if (prm / name).exists():
            files.append(prm / name)
    return [(f"real: {f.parent.name}/{f.name}", f) for f in files]


def load_real(path: Path):
    from optscale.importers import import_pool
    from optscale.pool import to_arrays

    pool = import_pool(path)
    arrays = to_arrays(pool, equiv="math")
    return arrays, None


def summarize(rep, budgets) -> list[dict]:
    top = budgets[-1]
    rows = [r for r in rep.rows if r.budget == top and r.split in ("test", "all")]
    bon = next(r for r in rows if r.method == "bon")
    oracle = next((r for r in rows if r.method == "oracle"), None)
    cov = {c["label"]: c for c in rep.meta.get("coverage", []) if c["budget"] == top}
    verdicts = rep.meta.get("guarantees") or {}
    out = []
    for r in rows:
        if r.method == "oracle":
            continue
        matched = r.accuracy >= bon.accuracy - 0.005 - 1e-12
        c = cov.get(r.label)
        out.append({"method": r.label, "params": r.params, "accuracy": r.accuracy, "tokens": r.tokens,
                    "tokens_at_bon": r.tokens if matched else None, "samples": r.samples,
                    "coverage": None if c is None else (c["achieved"], c["promised"], c["stopped"]),
                    "guarantee": verdicts.get(r.label)})
    out.append({"method": "oracle (clairvoyant)", "accuracy": oracle.accuracy if oracle else None,
                "tokens": oracle.tokens if oracle else None, "tokens_at_bon": oracle.tokens if oracle else None,
                "samples": oracle.samples if oracle else None, "coverage": None, "params": {}})
    return out


def prepare(arrays, priors, args):
    """The replay batch evaluate builds (same orderings and seed, cost in tokens or samples as it does)."""
    return ev.build_batch(ev._cost_arrays(arrays)[0], orderings=args.orderings, seed=args.seed,
                          priors=None if priors is None else ev.expand_priors(priors, arrays.answers.shape[0]))


def best_on_test(arrays, priors, rep, methods, grids, budget: int, args, prep=None):
    """Per rule, its CHEAPEST grid point reaching BoN@N_max accuracy (within 0.5 point) on the held-out
    problems themselves -- every rule tuned on the test split, i.e. equally optimistic for all: a
    like-for-like comparison of the rules' accuracy-vs-tokens frontiers (the held-out columns are what a
    user gets). Same rows (problems x orderings) as the report. Returns ``({spec: point or None},
    {spec: float[held-out problems] tokens of that point, ("grid", spec): (accuracy, tokens) float[G,
    held-out problems] of every grid point, "bon": float[held-out problems] BoN@N_max accuracy})``.
    The cost-aware rule uses the gain model evaluate fitted on the calibration split (``rep.gain_model``)."""
    prep = prep or prepare(arrays, priors, args)
    rows = prep.rows_of(np.asarray(rep.meta["test_problems"]))
    bon = ev._replay(prep, rows, ev._make("bon", {}), "bon", budget)
    goal = bon.correct.mean() - 0.005 - 1e-12
    chosen = (rep.meta.get("score_models") or {}).get("chosen", "tn")
    out: dict[str, dict | None] = {}
    per_problem: dict[str, np.ndarray] = {}
    for spec in methods:
        name, params = ev._parse_spec(spec)
        if name not in grids:
            continue
        fixed = dict(params)
        if name in ev.GAIN_METHODS and "model" not in fixed:
            fixed["model"] = rep.gain_model
        if name in ev.POSTERIOR_METHODS and fixed.get("model", "auto") == "auto":
            fixed["model"] = chosen
        grid = [{**g, **fixed} for g in ev._grid(grids[name])]
        res = ev._grid_metrics(prep, rows, name, grid, [budget])
        pts = [(res[(i, budget)].tokens.mean(), res[(i, budget)].correct.mean(), g, i)
               for i, g in enumerate(grid)]
        ok = [p for p in pts if p[1] >= goal]
        best = min(ok, key=lambda p: p[0]) if ok else None
        out[spec] = None if best is None else {
            "tokens": float(best[0]), "accuracy": float(best[1]),
            "params": {k: getattr(v, "tag", v) for k, v in best[2].items()}}
        if best is not None:  # per held-out problem (mean over orderings), for the paired bootstrap
            per_problem[spec] = res[(best[3], budget)].tokens.reshape(prep.n_orderings, -1).mean(axis=0)
        per_problem[("grid", spec)] = (  # [G, held-out problems]: every grid point, for re-selection
            np.stack([res[(i, budget)].correct.reshape(prep.n_orderings, -1).mean(axis=0) for i in range(len(grid))]),
            np.stack([res[(i, budget)].tokens.reshape(prep.n_orderings, -1).mean(axis=0) for i in range(len(grid))]))
    per_problem["bon"] = bon.correct.reshape(prep.n_orderings, -1).mean(axis=0)
    return out, per_problem


def known_law_reference(prep, test: np.ndarray, budget: int) -> dict:
    """The known-law allocation on the held-out problems at N_max = ``budget`` (benchmarks/known_law.py):
    each problem's exact BoN accuracy curve acc_p(n) and expected tokens, n = 1..N_max, over uniformly random
    orderings of its pool samples; one n_p per problem reaching E[BoN@N_max accuracy] - 0.5 point at the
    fewest expected tokens. Also the same n_p replayed on the report's rows (pool order + the random
    orderings) as a check of the expectation."""
    from optscale.policies._vec import best_score

    P = prep.n_problems
    correct = prep.sample_correct[:P]  # rows 0..P-1: ordering 0 = pool order
    acc = known_law.bon_accuracy_curve(prep.scores_p[test], prep.answers_p[test], correct[test], prep.n_p[test],
                                       budget)
    tok = known_law.expected_tokens_curve(prep.tokens_p[test], prep.n_p[test], budget)
    bon = float(acc[:, -1].mean())
    alloc = known_law.allocate(acc, tok, bon - 0.005)
    rows = prep.rows_of(test)
    sub = prep.sub(rows)
    nd = np.minimum(np.tile(alloc.n, prep.n_orderings), sub.n)  # rows are ordering-major
    real = ev._metrics(prep, rows, nd, best_score(sub.answers, sub.scores, nd))
    return {"method": KNOWN_LAW, "params": {"goal": bon - 0.005}, "accuracy": alloc.accuracy,
            "tokens": alloc.tokens, "tokens_at_bon": alloc.tokens, "samples": float(alloc.n.mean()),
            "coverage": None, "lp_tokens": alloc.lp_tokens, "bon_exact": bon,
            "bon_exact_tokens": float(tok[:, -1].mean()), "rate": alloc.rate,
            "rows_accuracy": float(real.correct.mean()), "rows_tokens": float(real.tokens.mean()),
            "per_problem": tok[np.arange(test.shape[0]), alloc.n - 1]}


def spec_of_label(rep, methods: list[str], label: str) -> str | None:
    """The method spec whose tuned row has this label (``"<spec> (tuned)"`` for a spec with parameters,
    the policy's display name + ``" (tuned)"`` for a bare one)."""
    for spec in methods:
        if ev._parse_spec(spec)[1] and label == f"{spec} (tuned)":
            return spec
    for spec in methods:
        name, params = ev._parse_spec(spec)
        if not params and any(r.method == name and r.label == label for r in rep.rows):
            return spec
    return None


def tuned_per_problem(prep, rep, spec: str, budget: int, reported_tokens: float) -> np.ndarray | None:
    """Tokens per held-out problem (mean over orderings) of a rule at its held-out-tuned parameters,
    replayed again on the report's rows; None when the replay does not give the reported mean (then the
    interval is not printed rather than wrong)."""
    tuned = (rep.meta.get("tuned") or {}).get(spec, {}).get(str(budget))
    if tuned is None:
        return None
    name, _ = ev._parse_spec(spec)
    params = dict(tuned["params"])
    if name in ev.GAIN_METHODS:
        params["model"] = rep.gain_model  # the one evaluate fitted on the calibration split
    rows = prep.rows_of(np.asarray(rep.meta["test_problems"]))
    m = ev._replay(prep, rows, ev._make(name, params), name, budget)
    per = m.tokens.reshape(prep.n_orderings, -1).mean(axis=0)
    if not np.isclose(per.mean(), reported_tokens, rtol=1e-9):
        print(f"{spec}: replay gives {per.mean():,.1f} tokens, the report {reported_tokens:,.1f}: no interval",
              file=sys.stderr)
        return None
    return per


def paired_ratio(num: np.ndarray, den: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(num) / mean(den) over held-out problems and its 95% percentile interval from a bootstrap of the
    problems (the same resample for both: paired; the resamples of ``optscale.evaluate.bootstrap_weights``)."""
    W = ev.bootstrap_weights(num.shape[0], n_boot, seed).astype(np.float64)  # [B, P] draw counts
    r = (W @ num) / (W @ den)
    lo, hi = np.quantile(r, (0.025, 0.975))
    return float(num.sum() / den.sum()), float(lo), float(hi)


def reselected_ratio(pp: dict, new_specs: list[str], ref: np.ndarray | None, n_boot: int = 2000,
                     seed: int = 0) -> tuple[float, float, float, float] | None:
    """The like-for-like headline with its selection noise: per bootstrap resample of the held-out
    problems, every rule's cheapest grid point reaching the resample's BoN@N_max accuracy - 0.5 point is
    chosen again, and the best new rule's tokens are divided by the paper's OptScale0 chosen the same way
    (``ref`` None) or by ``ref`` per problem (oracle, known-law allocation). Returns (median, 2.5%, 97.5%
    of the ratio over the resamples where both reach the accuracy, fraction of resamples where one does
    not), or None without grids."""
    grids = [pp[("grid", s)] for s in new_specs if ("grid", s) in pp]
    if not grids or "bon" not in pp or (ref is None and ("grid", PAPER) not in pp):
        return None
    P = pp["bon"].shape[0]
    W = ev.bootstrap_weights(P, n_boot, seed).T / P  # [P, B]: optscale.evaluate's resamples
    goal = pp["bon"] @ W - 0.005 - 1e-12

    def cheapest(acc, tok):
        a, t = acc @ W, tok @ W  # [G, B]
        return np.where(a >= goal[None, :], t, np.inf).min(axis=0)

    new = np.min([cheapest(a, t) for a, t in grids], axis=0)
    den = cheapest(*pp[("grid", PAPER)]) if ref is None else ref @ W
    ok = np.isfinite(new) & np.isfinite(den)
    if not ok.any():
        return None
    r = new[ok] / den[ok]
    lo, mid, hi = np.quantile(r, (0.025, 0.5, 0.975))
    return float(mid), float(lo), float(hi), float(1 - ok.mean())


def _ci(x: tuple[float, float, float] | None) -> str:
    return "" if x is None else f" [{x[1]:.2f}, {x[2]:.2f}]"


BASELINES = ("BoN", "SC", "ASC", "OptScale0 (", "OptScaleT (", "oracle", "known-law")  # labels that are not new rules


def best_new_held_out(summary: list[dict]) -> dict | None:
    """The new rule (not a baseline) with the fewest tokens among those at BoN@N_max accuracy, held-out."""
    new = [s for s in summary if s["tokens_at_bon"] is not None and not s["method"].startswith(BASELINES)]
    return min(new, key=lambda s: s["tokens_at_bon"]) if new else None


def best_new_on_test(best: dict[str, dict | None]) -> tuple[str, dict] | None:
    cand = {m: v for m, v in best.items() if v is not None and m not in (PAPER, "optscalet")}
    return min(cand.items(), key=lambda kv: kv[1]["tokens"]) if cand else None


def verdict(summary: list[dict], best: dict[str, dict | None], methods: list[str], cis: dict | None = None) -> str:
    """The best new rule at BoN@N_max accuracy vs the paper's OptScale^0, the oracle and the known-law
    allocation: held-out tuned, and with every rule at its best test-split grid point (equally optimistic
    for all). ``cis``: paired bootstrap intervals of those ratios over the held-out problems, by key."""
    cis = cis or {}
    paper = next((s for s in summary if s["method"].startswith("OptScale0 (tuned)")), None)
    oracle = summary[-1]
    known = next((s for s in summary if s["method"] == KNOWN_LAW), None)
    lines = []
    if known is not None:
        lines.append(
            f"known-law allocation: {known['tokens']:,.0f} (LP bound {known['lp_tokens']:,.0f}), exact E[accuracy] "
            f"{100 * known['accuracy']:.2f}% for the goal E[BoN@N_max] {100 * known['bon_exact']:.2f}% - 0.5 pt "
            f"(BoN {known['bon_exact_tokens']:,.0f} tokens), {known['samples']:.1f} samples/problem; the same N "
            f"on the report's rows: {100 * known['rows_accuracy']:.2f}%, {known['rows_tokens']:,.0f}"
            + (f"; oracle = {oracle['tokens'] / known['tokens']:.2f}x the known-law allocation" if oracle["tokens"]
               else ""))
    b = best_new_held_out(summary)
    if b is not None:
        t = f"held-out tuned: best new rule at BoN@N_max accuracy {b['method']}, {b['tokens_at_bon']:,.0f}"
        if paper and paper["tokens_at_bon"]:
            t += (f" = {b['tokens_at_bon'] / paper['tokens_at_bon']:.2f}x{_ci(cis.get('held_paper'))} "
                  "the paper's OptScale0")
        elif paper:
            t += " (the paper's OptScale0 misses BoN@N_max accuracy)"
        if oracle["tokens"]:
            t += f", {b['tokens_at_bon'] / oracle['tokens']:.2f}x{_ci(cis.get('held_oracle'))} the oracle"
        if known is not None:
            t += f", {b['tokens_at_bon'] / known['tokens']:.2f}x{_ci(cis.get('held_known'))} the known-law allocation"
        lines.append(t)
    else:
        lines.append("held-out tuned: no new rule reached BoN@N_max accuracy (within 0.5 point)")
    pb = best.get(PAPER)
    bt = best_new_on_test(best)
    if bt is not None:
        m, v = bt
        t = f"best test-split grid point (all rules): {m} {v['tokens']:,.0f}"
        t += (f" = {v['tokens'] / pb['tokens']:.2f}x{_ci(cis.get('test_paper'))} the paper's OptScale0 "
              f"({pb['tokens']:,.0f})" if pb else " (the paper's OptScale0 never reaches BoN@N_max accuracy)")
        if oracle["tokens"]:
            t += f", {v['tokens'] / oracle['tokens']:.2f}x{_ci(cis.get('test_oracle'))} the oracle"
        if known is not None:
            t += f", {v['tokens'] / known['tokens']:.2f}x{_ci(cis.get('test_known'))} the known-law allocation"
        lines.append(t)
    rs = [(k, cis[f"resel_{k}"]) for k in ("paper", "oracle", "known") if f"resel_{k}" in cis]
    if rs:
        names = {"paper": "the paper's OptScale0", "oracle": "the oracle", "known": "the known-law allocation"}
        lines.append("with re-selection (every rule's cheapest grid point at the resample's BoN accuracy chosen "
                     "again per resample): best new rule = " + ", ".join(
                         f"{v[0]:.2f}x [{v[1]:.2f}, {v[2]:.2f}] {names[k]}"
                         + (f" ({100 * v[3]:.0f}% of resamples: one misses)" if v[3] > 0 else "") for k, v in rs))
    if cis:
        lines.append(f"[lo, hi]: 95% paired bootstrap over the {cis['n']} held-out problems (2,000 resamples of "
                     "problems; ratio of mean tokens; the rule is the one picked on all of them)")
    lines.append("test-split grid points: " + "; ".join(
        f"{m} {'miss' if v is None else format(v['tokens'], ',.0f')}" for m, v in best.items()))
    return "\n".join(lines)


def table(name: str, summary: list[dict], meta: dict, budget: int, unit: str) -> str:
    bon = next(s for s in summary if s["method"] == "BoN")
    paper = next((s for s in summary if s["method"].startswith("OptScale0 (tuned)")), None)
    oracle = summary[-1]
    lines = [f"### {name} (N_max = {budget}, {meta['problems']} problems, held-out: "
             f"{len(meta.get('test_problems') or [])}, cost in {unit})", "",
             f"| rule | accuracy % | {unit}/problem | {unit} at BoN@N_max acc. | vs paper OptScale0 | vs oracle "
             "| coverage (achieved / promised, stopped early; guarantee kind: verdict over the rule's checked points) |",
             "|---|---|---|---|---|---|---|"]
    for s in summary:
        tb = s["tokens_at_bon"]
        vs_p = (f"{tb / paper['tokens_at_bon']:.2f}x" if tb is not None and paper and paper["tokens_at_bon"] else "")
        vs_o = f"{tb / oracle['tokens']:.2f}x" if tb is not None and oracle["tokens"] else ""
        cov = s["coverage"]
        cov_s = "" if cov is None else (f"{cov[0]:.3f} / {cov[1]:.3f}, {cov[2]:.2f}" if np.isfinite(cov[0])
                                         else f"n/a / {cov[1]:.3f}, 0.00")
        g = s.get("guarantee")
        if g:  # plug-in = the paper's claim (exact fitted law); posterior = optscale's (posterior predictive)
            cov_s += f"; {g['guarantee']}: " + ("kept" if g["verdict"] == "kept" else
                                                f"missed {g['missed']}/{g['checked']}" if g["verdict"] == "missed"
                                                else "unchecked")
        acc = "" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f}"
        tok = "" if s["tokens"] is None else f"{s['tokens']:,.0f}"
        lines.append(f"| {s['method']} | {acc} | {tok} | {'miss' if tb is None else f'{tb:,.0f}'} | {vs_p} | "
                     f"{vs_o} | {cov_s} |")
    sm = meta.get("score_models")
    if sm:
        lines.append("")
        lines.append("score models (held-out on the calibration split; event log score / predictive density): "
                     + ", ".join(f"{m} {v['event']:.4f}" + (f" / {v['density']:.3f}" if "density" in v else "")
                                 for m, v in sm["heldout"].items()) + f"; chosen: {sm['chosen']}")
    lines.append(f"BoN@{budget}: {100 * bon['accuracy']:.2f}%")
    return "\n".join(lines)


def grids_for(arrays, seed: int, calib: np.ndarray | None = None) -> dict:
    """Tuning grids with the targets s* on the pool's own score scale: the paper's grid plus quantiles of
    the CALIBRATION problems' scores (a self-certainty or PRM scale can sit far from [0.6, 0.95]); the
    same targets for the paper's rules and ours. ``calib``: the calibration problems (default: evaluate's
    seeded 30% split)."""
    if calib is None:
        calib, _ = ev.split_problems(arrays.answers.shape[0], 0.3, seed)
    sc = np.asarray(arrays.scores, float)[calib]
    sc = sc[~np.isnan(sc)]
    qs = np.quantile(sc, (0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995))
    targets = tuple(sorted({t for t in (round(float(x), 4) for x in (*ev.SWEEP_TARGETS, *qs)) if 0 < t < 1}))
    seq_targets = tuple(sorted({t for t in (round(float(x), 4) for x in (0.7, 0.8, 0.9, *qs)) if 0 < t < 1}))
    grids = {k: dict(v) for k, v in ev.DEFAULT_GRIDS.items()}
    for name in ("optscale0", "optscalet"):
        grids[name]["target"] = targets
    for name in ("optscale0-seq", "optscalet-seq", "optscale-post", "optscale-post-seq"):
        grids[name]["target"] = seq_targets
    return grids


def intervals(prep, rep, methods, summ, best, best_pp, top: int) -> dict:
    """Paired bootstrap intervals (over held-out problems) of the verdict's ratios: the best new rule's
    tokens / the paper's OptScale0, the oracle and the known-law allocation, held-out tuned (``held_*``)
    and at the best test-split grid points (``test_*``)."""
    test = np.asarray(rep.meta["test_problems"], dtype=np.int64)
    rows = prep.rows_of(test)
    oracle = summ[-1]
    known = next(s for s in summ if s["method"] == KNOWN_LAW)
    orc = ev.oracle_costs(prep, rows, [top], ev._make("bon", {}))[top].tokens
    orc = orc.reshape(prep.n_orderings, -1).mean(axis=0)
    refs = {"known": known["per_problem"]}
    if oracle["tokens"] and np.isclose(orc.mean(), oracle["tokens"], rtol=1e-9):
        refs["oracle"] = orc
    paper = next((s for s in summ if s["method"].startswith("OptScale0 (tuned)")), None)
    if paper and paper["tokens_at_bon"]:
        pp = tuned_per_problem(prep, rep, PAPER, top, paper["tokens"])
        if pp is not None:
            refs["paper"] = pp
    out: dict = {"n": int(test.shape[0])}
    b = best_new_held_out(summ)
    spec = spec_of_label(rep, methods, b["method"]) if b is not None else None
    per = tuned_per_problem(prep, rep, spec, top, b["tokens"]) if spec is not None else None
    if per is not None:
        for k, ref in refs.items():
            out[f"held_{k}"] = paired_ratio(per, ref)
    new_specs = [m for m in best if m not in (PAPER, "optscalet")]
    for k, ref in (("paper", None), ("oracle", refs.get("oracle")), ("known", refs["known"])):
        if k == "paper" or ref is not None:
            r = reselected_ratio(best_pp, new_specs, ref)
            if r is not None:
                out[f"resel_{k}"] = r
    bt = best_new_on_test(best)
    if bt is not None and bt[0] in best_pp:
        per = best_pp[bt[0]]
        test_refs = {**refs, "paper": best_pp.get(PAPER)}
        for k, ref in test_refs.items():
            if ref is not None:
                out[f"test_{k}"] = paired_ratio(per, ref)
    return out


def run_pool(name, arrays, priors, args, out: Path) -> dict:
    P, M = arrays.answers.shape
    budgets = [b for b in (4, 8, 16, 32, 64) if b < M] + [M]
    budgets = budgets[-3:] if M >= 16 else [M]
    methods = list(METHODS) + (PRIOR_METHODS if priors is not None else [])
    cfg = ev.EvalConfig(budgets=tuple(budgets), orderings=args.orderings, seed=args.seed, n_boot=args.n_boot,
                        tune=P >= 10, grids=grids_for(arrays, args.seed) if P >= 10 else None)
    t0 = time.time()
    rep = ev.evaluate(arrays, methods, config=cfg, priors=priors)
    secs = time.time() - t0
    summ = summarize(rep, budgets)
    top = budgets[-1]
    prep = prepare(arrays, priors, args)
    test = np.asarray(rep.meta.get("test_problems") or np.arange(P), dtype=np.int64)
    known = known_law_reference(prep, test, top)
    summ.insert(len(summ) - 1, known)  # before the oracle (the last row)
    t1 = time.time()
    best, best_pp = best_on_test(arrays, priors, rep, methods, cfg.grids or ev.DEFAULT_GRIDS, top, args,
                                 prep=prep) if rep.meta.get("test_problems") else ({}, {})
    t2 = time.time()
    cis = intervals(prep, rep, methods, summ, best, best_pp, top) if rep.meta.get("test_problems") else {}
    known.pop("per_problem")
    secs_all = time.time() - t0
    text = (table(name, summ, rep.meta, top, rep.meta["cost"]) + "\n\n" + verdict(summ, best, methods, cis)
            + f"\n({secs_all:.0f} s: evaluate {secs:.0f} s, known-law allocation {t1 - t0 - secs:.0f} s, test-split "
            f"grid points {t2 - t1:.0f} s, intervals {time.time() - t2:.0f} s)")
    slug = "".join(c if c.isalnum() else "_" for c in name)[:60]
    ev.plot_accuracy_vs_tokens(rep, out / f"{slug}.png", title=name)
    if rep.meta.get("reliability"):
        ev.plot_reliability(rep, out / f"{slug}_reliability.png", title=f"{name}: reliability")
    (out / f"{slug}.json").write_text(rep.to_json())
    print(text + "\n", flush=True)
    return {"name": name, "summary": summ, "best_on_test": best, "intervals": cis, "text": text,
            "seconds": secs_all}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--pool", action="append", default=[], help="extra pool file (repeatable)")
    ap.add_argument("--out", default="bench_rules_out")
    ap.add_argument("--orderings", type=int, default=3)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--semi-problems", type=int, default=None,
                    help="problems of each semi-synthetic pool (default: every MATH-500 label problem, 500)")
    ap.add_argument("--semi-samples", type=int, default=64)
    ap.add_argument("--only", default=None, help="run only pools whose name contains this")
    args = ap.parse_args(argv)
    data = Path(args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    jobs: list[tuple[str, object]] = []
    for name, path in real_pools(data, args.pool):
        jobs.append((name, lambda path=path: load_real(path)))
    if (data / "optscale-paper/predictor/val_mu_sigma.json").exists():
        for law in ("beta", "tn"):
            jobs.append((f"semi-synthetic {law} (MATH-500 label moments)",
                         lambda law=law: semi_synthetic(data, law, args.semi_problems, args.semi_samples, args.seed)))
    else:
        print(f"shared data not found at {data}: semi-synthetic pools skipped", file=sys.stderr)
    for name, load in jobs:
        if args.only and args.only not in name:
            continue
        try:
            arrays, priors = load()
        except Exception as exc:  # a pool that cannot be read is reported, not fatal
            print(f"{name}: skipped ({exc})", file=sys.stderr)
            continue
        if not getattr(arrays, "has_scores", False):
            print(f"{name}: skipped (no verifier scores)", file=sys.stderr)
            continue
        results.append(run_pool(name, arrays, priors, args, out))
    (out / "summary.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "tables.md").write_text("\n\n".join(r["text"] for r in results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
