"""Benchmark optscale.theory against the paper's published procedure (the yardstick).

Yardstick for N* (as published in the paper's code): for N = 1, 2, ... build the pdf of the max of N scores
on a 1000-point grid over [0, 1] (N f F^{N-1}, f and F from scipy.stats.norm, recomputed per N), integrate it
by a normalised cumulative sum, read its alpha-quantile and stop at the first N whose quantile is >= s*
(N_max if none).
Yardstick for fits: one scipy.optimize.minimize(method="L-BFGS-B") per problem on the truncated-normal
negative log-likelihood (scipy.stats.truncnorm), started at the sample mean / std, in the same box.

What a user would pick instead (the second yardstick, beside the paper's procedure): for N*, scipy.stats.truncnorm
(F(s*) = truncnorm.cdf, vectorized over the problems, then ceil(ln alpha / ln F)); for fits, the same L-BFGS-B
on truncnorm.logpdf as above (scipy has no truncated-normal fit with a box on mu).
Ours: theory.n_star (closed form, vectorized) and theory.fit_mle / fit_map (batched projected Newton).
Also timed one decision at a time (B = 1, as in the online runner): N* (ours / scipy truncnorm, one call
each) and fit + N* per problem.
Timing: every side runs on the same problems (a random subset: the slow yardsticks bound its size), the
sides interleaved (order rotated every round) with the same number of rounds; the median round is reported
per decision / per fit. Ours is also timed on the full set (batch throughput).
Two problem sets, side by side: the wide synthetic set (mu ~ U(-0.5, 1.5), sigma ~ 10^U(-1.5, 0), a stress
test with far tails and MLEs on the mu box) and a label-derived set ((mu, sigma) from the 4501 real MATH
labels, REPO/../shared/data/optscale-paper/predictor/train_mu_sigma.json, [mean, std] of PRM scores per problem
converted by theory.moments_to_params; skipped with a printed reason when the file is absent). B = 1 timings
use the synthetic set. Ours and the yardsticks run on the same problems; the slow yardsticks are timed on a
random subset and reported per decision / per fit. "Exact" N* comes from the definition (smallest N with 1 - F^N >= 1 - alpha) evaluated
with F in 50-digit arithmetic (mpmath).

    python benchmarks/bench_theory.py [--quick] [--json] [--problems 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from optscale import theory

N_MAX = 64


LABELS = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "optscale-paper" / "predictor" \
    / "train_mu_sigma.json"
SYNTHETIC = "mu ~ U(-0.5, 1.5), sigma ~ 10^U(-1.5, 0), s* ~ U(0.3, 0.99)"
LABEL_DERIVED = "(mu, sigma) = moments_to_params of the 4501 MATH labels [mean, std], s* ~ U(0.5, 0.99)"
COMMON = "alpha ~ U(0.01, 0.3), k = 5..10 scores from the truncated normal"


def _scores(rng, mu, sigma, target, alpha):
    n = mu.size
    k = rng.integers(5, 11, n)
    scores = theory.sample(mu[:, None], sigma[:, None], (n, 10), rng)
    mask = np.arange(10)[None, :] < k[:, None]
    return mu, sigma, target, alpha, scores, mask


def make_problems(rng, n):
    """The wide synthetic set (a stress test: far tails, near-uniform scores, MLEs on the mu box)."""
    mu = rng.uniform(-0.5, 1.5, n)
    sigma = 10 ** rng.uniform(-1.5, 0.0, n)
    target = rng.uniform(0.3, 0.99, n)
    alpha = rng.uniform(0.01, 0.3, n)
    return _scores(rng, mu, sigma, target, alpha)


def make_label_problems(rng, n, path=LABELS):
    """Problems whose (mu, sigma) come from the real MATH labels (per-problem [mean, std] of PRM scores),
    drawn with replacement; None if the label file is absent."""
    if not path.exists():
        return None
    mean, std = np.asarray(json.loads(path.read_text()), dtype=float).T
    mu_l, sigma_l = theory.moments_to_params(np.clip(mean, 0.0, 1.0), np.maximum(std, 0.0))
    pick = rng.integers(0, mu_l.size, n)
    mu, sigma = mu_l[pick], sigma_l[pick]
    target = rng.uniform(0.5, 0.99, n)
    alpha = rng.uniform(0.01, 0.3, n)
    return _scores(rng, mu, sigma, target, alpha)


def grid_n_star(mu, sigma, target, alpha, n_max=N_MAX, points=1000):
    """The published grid procedure for one problem, step for step.

    For N = 1, 2, ...: evaluate the truncated-normal pdf f and cdf F on a ``points``-point grid over [0, 1]
    (scipy.stats.norm, recomputed for each N as the published code does), form the max-of-N pdf
    N f F^(N-1), integrate it by a cumulative sum normalised to end at 1, read its alpha-quantile
    (first grid point where the cdf reaches alpha) and stop at the first N whose quantile is >= s*.
    """
    from scipy.stats import norm

    x = np.linspace(0.0, 1.0, points)
    dx = x[1] - x[0]
    a, b = (0.0 - mu) / sigma, (1.0 - mu) / sigma
    for n in range(1, n_max + 1):
        with np.errstate(all="ignore"):   # the published code divides by a vanishing normaliser far out
            z = norm.cdf(b) - norm.cdf(a)
            f = norm.pdf(x, mu, sigma) / z
            F = (norm.cdf((x - mu) / sigma) - norm.cdf(a)) / z
            pdf_max = f if n == 1 else n * f * np.power(F, n - 1)
            cdf_max = np.cumsum(pdf_max) * dx
            cdf_max = cdf_max / cdf_max[-1]
        i = np.searchsorted(cdf_max, alpha)
        quantile = x[-1] if i >= points else x[i]
        if quantile >= target:
            return n
    return n_max


def exact_n_star(mu, sigma, target, alpha, n_max=N_MAX):
    """Smallest N with 1 - F(s*)^N >= 1 - alpha, F in 50-digit arithmetic (clipped to n_max)."""
    import mpmath as mp

    with mp.workdps(50):
        mu, sigma, s, a = mp.mpf(mu), mp.mpf(sigma), mp.mpf(target), mp.mpf(alpha)
        lo, hi, z = -mu / sigma, (1 - mu) / sigma, (s - mu) / sigma
        if mu < 0.5:   # upper tail: use 1 - Phi(x) = Phi(-x)
            f = 1 - (mp.ncdf(-z) - mp.ncdf(-hi)) / (mp.ncdf(-lo) - mp.ncdf(-hi))
        else:
            f = (mp.ncdf(z) - mp.ncdf(lo)) / (mp.ncdf(hi) - mp.ncdf(lo))
        p = mp.mpf(1)
        for n in range(1, n_max + 1):
            p *= f
            if 1 - p >= 1 - a:
                return n
    return n_max


def scipy_fit(x):
    from scipy import optimize, stats

    def nll(p):
        m, ls = p
        s = np.exp(ls)
        v = -stats.truncnorm.logpdf(x, -m / s, (1 - m) / s, loc=m, scale=s).sum()
        return v if np.isfinite(v) else 1e300

    bounds = [(-theory.MU_BOUND, theory.MU_BOUND), (np.log(theory.SIGMA_MIN), np.log(theory.SIGMA_MAX))]
    start = (x.mean(), np.log(np.clip(x.std(), theory.SIGMA_MIN, theory.SIGMA_MAX)))
    return optimize.minimize(nll, start, method="L-BFGS-B", bounds=bounds)


def best_time(fn, repeat):
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def interleaved(sides: dict, rounds: int) -> tuple[dict, dict]:
    """Run every side once per round, the order rotated each round; (median seconds, last output) per side."""
    names = list(sides)
    times: dict = {n: [] for n in names}
    outs: dict = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t = time.perf_counter()
            outs[name] = sides[name]()
            times[name].append(time.perf_counter() - t)
    return {n: float(np.median(v)) for n, v in times.items()}, outs


def scipy_n_star(mu, sigma, target, alpha, n_max=N_MAX):
    """What a user would write with scipy: F(s*) from scipy.stats.truncnorm, N* = ceil(ln alpha / ln F)."""
    from scipy.stats import truncnorm

    mu, sigma = np.asarray(mu, float), np.asarray(sigma, float)
    with np.errstate(all="ignore"):
        F = truncnorm.cdf(target, -mu / sigma, (1 - mu) / sigma, loc=mu, scale=sigma)
        n = np.ceil(np.log(alpha) / np.log(F))
    n = np.where(F >= 1.0, n_max, np.where(F <= 0.0, 1, n))
    return np.clip(np.nan_to_num(n, nan=n_max), 1, n_max).astype(np.int64)


def run_set(rng, problems, quick):
    """N* and fit timings / agreement on one problem set (ours on all problems, yardsticks on a subset)."""
    mu, sigma, target, alpha, scores, mask = problems
    P = mu.size
    sub_n = min(P, 100 if quick else 600)       # yardstick subset for N*
    sub_fit = min(P, 40 if quick else 200)      # yardstick subset for fits

    rounds = 2 if quick else 3
    # ---- N*: all sides on the same subset, interleaved
    t_all, ours = best_time(lambda: theory.n_star(mu, sigma, target, alpha, N_MAX), rounds)
    idx = rng.choice(P, sub_n, replace=False)
    sm, ss, st, sa = mu[idx], sigma[idx], target[idx], alpha[idx]
    grid_n_star(0.5, 0.2, 0.9, 0.05)   # warm-up: imports and caches are not part of a decision
    scipy_n_star(sm[:2], ss[:2], st[:2], sa[:2])
    t_n, out_n = interleaved({
        "ours": lambda: theory.n_star(sm, ss, st, sa, N_MAX).n,
        "scipy": lambda: scipy_n_star(sm, ss, st, sa),
        "grid": lambda: np.array([grid_n_star(sm[i], ss[i], st[i], sa[i]) for i in range(sub_n)]),
    }, rounds)
    grid, n_scipy, n_ours = out_n["grid"], out_n["scipy"], out_n["ours"]
    exact = np.array([exact_n_star(mu[i], sigma[i], target[i], alpha[i]) for i in idx])
    assert np.array_equal(n_ours, ours.n[idx])
    per_ours, per_truncnorm, per_grid = t_n["ours"] / sub_n, t_n["scipy"] / sub_n, t_n["grid"] / sub_n

    # ---- fits: all sides on the same subset, interleaved
    fidx = rng.choice(P, sub_fit, replace=False)
    fs, fm = scores[fidx], mask[fidx]
    t_fit_all, fit = best_time(lambda: theory.fit_mle(scores, mask), rounds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scipy_fit(np.array([0.2, 0.5, 0.7]))   # warm-up
        t_f, out_f = interleaved({
            "mle": lambda: theory.fit_mle(fs, fm),
            "map": lambda: theory.fit_map(fs, fm, mu0=mu[fidx], sigma0=sigma[fidx]),
            "scipy": lambda: [scipy_fit(fs[i, fm[i]]) for i in range(sub_fit)],
        }, rounds)
    fmap = theory.fit_map(scores, mask, mu0=mu, sigma0=sigma)
    ref_nll = np.array([r.fun for r in out_f["scipy"]])
    our_nll = out_f["mle"].nll
    scale = np.maximum(1.0, np.abs(ref_nll))
    per_fit, per_map, per_scipy = t_f["mle"] / sub_fit, t_f["map"] / sub_fit, t_f["scipy"] / sub_fit
    return {
        "nstar": {
            "ours_per_decision_s": per_ours, "grid_per_decision_s": per_grid, "scipy_per_decision_s": per_truncnorm,
            "ours_full_batch_per_decision_s": t_all / P,
            "grid_subset": sub_n, "speed_ratio": per_grid / per_ours, "scipy_speed_ratio": per_truncnorm / per_ours,
            "agree_exact_pct": 100.0 * np.mean(n_ours == exact),
            "scipy_agree_exact_pct": 100.0 * np.mean(n_scipy == exact),
            "agree_grid_pct": 100.0 * np.mean(n_ours == grid),
            "grid_within_1_pct": 100.0 * np.mean(np.abs(n_ours - grid) <= 1),
            "grid_max_abs_diff": int(np.max(np.abs(n_ours - grid))),
            "grid_agree_exact_pct": 100.0 * np.mean(grid == exact),
            "unreachable_pct": 100.0 * np.mean(~ours.reachable),
            "mean_n_star": float(np.mean(ours.n)),
        },
        "fit": {
            "ours_mle_per_fit_s": per_fit, "ours_map_per_fit_s": per_map, "scipy_per_fit_s": per_scipy,
            "ours_mle_full_batch_per_fit_s": t_fit_all / P,
            "scipy_subset": sub_fit, "speed_ratio": per_scipy / per_fit,
            "map_speed_ratio": per_scipy / per_map,
            "mle_converged_pct": 100.0 * np.mean(fit.converged),
            "map_converged_pct": 100.0 * np.mean(fmap.converged),
            "mle_at_bound_pct": 100.0 * np.mean(fit.at_bound),
            "nll_ours_le_scipy_pct": 100.0 * np.mean(our_nll <= ref_nll + 1e-6 * scale),
            "nll_within_1e-6_pct": 100.0 * np.mean(np.abs(our_nll - ref_nll) <= 1e-6 * scale),
            "nll_scipy_minus_ours_max": float(np.max(ref_nll - our_nll)),
            "nll_ours_minus_scipy_max": float(np.max(our_nll - ref_nll)),
            "iterations_mle": fit.iterations, "iterations_map": fmap.iterations,
        },
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller yardstick subsets (a few seconds)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--problems", type=int, default=10_000, help="random problems per set (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    P = args.problems
    problems = make_problems(rng, P)
    mu, sigma, target, alpha, scores, mask = problems
    res = {"problems": P, "n_max": N_MAX, "sets": {"synthetic": SYNTHETIC, "label_derived": LABEL_DERIVED},
           "common": COMMON}
    res.update(run_set(rng, problems, args.quick))   # the synthetic set keeps the top-level keys
    labelled = make_label_problems(np.random.default_rng(args.seed + 1), P)
    if labelled is None:
        res["label_derived"] = None
        res["label_derived_skipped"] = f"label file not found: {LABELS}"
    else:
        res["label_derived"] = run_set(rng, labelled, args.quick)

    # ---- one decision at a time (online runner: B = 1, one fit + one N* per problem per wave), synthetic set
    sub_one = min(P, 100 if args.quick else 500)
    oidx = rng.choice(P, sub_one, replace=False)
    rows = [(scores[i, mask[i]], float(mu[i]), float(sigma[i]), float(target[i]), float(alpha[i])) for i in oidx]

    def one_by_one(kind):
        def run():
            for x, m0, s0, s_star, a in rows:
                f = theory.fit_mle(x) if kind == "mle" else theory.fit_map(x, mu0=m0, sigma0=s0)
                theory.n_star(float(f.mu), float(f.sigma), s_star, a, N_MAX)
        return run

    def nstar_one_by_one():
        for _, m0, s0, s_star, a in rows:
            theory.n_star(m0, s0, s_star, a, N_MAX)

    def scipy_one_by_one():
        for _, m0, s0, s_star, a in rows:
            scipy_n_star(m0, s0, s_star, a)

    reps = 2 if args.quick else 3
    t1, _ = interleaved({"mle": one_by_one("mle"), "map": one_by_one("map"), "nstar": nstar_one_by_one,
                         "scipy": scipy_one_by_one}, reps)
    t_one_nstar, t_one_scipy = t1["nstar"] / sub_one, t1["scipy"] / sub_one
    res["single"] = {
        "decisions": sub_one, "nstar_s": t_one_nstar, "scipy_nstar_s": t_one_scipy,
        "mle_plus_nstar_s": t1["mle"] / sub_one, "map_plus_nstar_s": t1["map"] / sub_one,
        "nstar_speed_ratio": res["nstar"]["grid_per_decision_s"] / t_one_nstar,
        "nstar_scipy_speed_ratio": t_one_scipy / t_one_nstar,
    }
    if args.json:
        print(json.dumps(res, indent=2))
        return res
    sets = [("synthetic", res)] + ([("label-derived", res["label_derived"])] if res["label_derived"] else [])
    print(f"{P} problems per set, n_max = {N_MAX}, {COMMON}")
    print(f"  synthetic (stress test): {SYNTHETIC}")
    if res["label_derived"]:
        print(f"  label-derived:           {LABEL_DERIVED}")
    else:
        print(f"  label-derived: skipped ({res['label_derived_skipped']})")
    print("every side timed on the same random subset, interleaved, median round, per decision / per fit; ours also on all problems (full batch)")
    head = "".join(f"{name:>24}" for name, _ in sets)
    print(f"{'':44}{head}")

    def row(label, fmt, get):
        print(f"{label:44}" + "".join(f"{fmt(get(r)):>24}" for _, r in sets))

    row("N*   ours (us/decision; subset / full batch)", lambda v: f"{v[0] * 1e6:.3f} / {v[1] * 1e6:.3f}",
        lambda r: (r["nstar"]["ours_per_decision_s"], r["nstar"]["ours_full_batch_per_decision_s"]))
    row("     scipy truncnorm, vectorized (us/dec.)", lambda v: f"{v * 1e6:.3f}", lambda r: r["nstar"]["scipy_per_decision_s"])
    row("     ratio vs scipy truncnorm", lambda v: f"{v:,.1f}x", lambda r: r["nstar"]["scipy_speed_ratio"])
    row("     scipy truncnorm agrees with exact (%)", lambda v: f"{v:.1f}", lambda r: r["nstar"]["scipy_agree_exact_pct"])
    row("     grid yardstick (ms/decision)", lambda v: f"{v * 1e3:.3f}", lambda r: r["nstar"]["grid_per_decision_s"])
    row("     ratio vs grid", lambda v: f"{v:,.0f}x", lambda r: r["nstar"]["speed_ratio"])
    row("     mean N*", lambda v: f"{v:.2f}", lambda r: r["nstar"]["mean_n_star"])
    row("     agree exact (50-digit) / grid (%)", lambda v: f"{v[0]:.1f} / {v[1]:.1f}",
        lambda r: (r["nstar"]["agree_exact_pct"], r["nstar"]["agree_grid_pct"]))
    row("     grid within 1 (%) / max |diff|", lambda v: f"{v[0]:.1f} / {v[1]}",
        lambda r: (r["nstar"]["grid_within_1_pct"], r["nstar"]["grid_max_abs_diff"]))
    row("     grid vs exact (%) / unreachable (%)", lambda v: f"{v[0]:.1f} / {v[1]:.1f}",
        lambda r: (r["nstar"]["grid_agree_exact_pct"], r["nstar"]["unreachable_pct"]))
    row("fit  ours MLE / MAP (us/fit)", lambda v: f"{v[0] * 1e6:.2f} / {v[1] * 1e6:.2f}",
        lambda r: (r["fit"]["ours_mle_per_fit_s"], r["fit"]["ours_map_per_fit_s"]))
    row("     scipy L-BFGS-B (ms/fit)", lambda v: f"{v * 1e3:.3f}", lambda r: r["fit"]["scipy_per_fit_s"])
    row("     ratio MLE / MAP", lambda v: f"{v[0]:,.0f}x / {v[1]:,.0f}x",
        lambda r: (r["fit"]["speed_ratio"], r["fit"]["map_speed_ratio"]))
    row("     iterations MLE / MAP", lambda v: f"{v[0]} / {v[1]}",
        lambda r: (r["fit"]["iterations_mle"], r["fit"]["iterations_map"]))
    row("     NLL ours <= scipy + 1e-6 rel (%)", lambda v: f"{v:.1f}", lambda r: r["fit"]["nll_ours_le_scipy_pct"])
    row("     NLL within 1e-6 rel (%)", lambda v: f"{v:.1f}", lambda r: r["fit"]["nll_within_1e-6_pct"])
    row("     max (scipy - ours) / (ours - scipy)", lambda v: f"{v[0]:.2g} / {v[1]:.2g}",
        lambda r: (r["fit"]["nll_scipy_minus_ours_max"], r["fit"]["nll_ours_minus_scipy_max"]))
    row("     converged MLE / MAP (%)", lambda v: f"{v[0]:.2f} / {v[1]:.2f}",
        lambda r: (r["fit"]["mle_converged_pct"], r["fit"]["map_converged_pct"]))
    row("     MLE on the box (%)", lambda v: f"{v:.1f}", lambda r: r["fit"]["mle_at_bound_pct"])
    o = res["single"]
    print(f"B=1  per decision, synthetic set ({o['decisions']} problems, one call each): N* {o['nstar_s'] * 1e6:.1f} us "
          f"(scipy truncnorm {o['scipy_nstar_s'] * 1e6:.1f} us, ratio {o['nstar_scipy_speed_ratio']:,.1f}x; "
          f"ratio vs grid {o['nstar_speed_ratio']:,.0f}x)   fit MLE + N* {o['mle_plus_nstar_s'] * 1e6:.1f} us   "
          f"fit MAP + N* {o['map_plus_nstar_s'] * 1e6:.1f} us")
    return res


if __name__ == "__main__":
    main()
