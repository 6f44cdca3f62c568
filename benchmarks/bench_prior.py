"""Benchmark: what the OptScale^t prior buys on MATH-500.

Ground truth: the 500 MATH-500 label pairs (mean, std of 64 verifier scores per problem) converted by moment
matching (``theory.moments_to_params``) to truncated-normal (mu, sigma). For k = 3, 5, 10 warm-up scores per
problem drawn from that truncated normal (``--seeds`` repetitions) the score model is fitted by

* ``mle``        OptScale^0 (``theory.fit_mle``), no prior;
* ``map-paper``  MAP with the paper's published MATH-500 predictions as (mu0, sigma0), sd 0.1 (as in the paper);
* ``map-const``  MAP with a constant prior: the training-label mean, moment-matched, sd 0.1;
* ``map-ours``   MAP with the shipped predictor's priors (moment-matched, heteroscedastic sd from CV residuals);
* ``map-ours-sd0.1``  the same prior means with the paper's fixed sd 0.1 (isolates the effect of the sd).

Reported per (k, method): median |mu_hat - mu| and |sigma_hat - sigma| (parameters; medians because
moment matching puts heavy-left-tailed problems on the family's boundary, mu ~ 100), mean absolute error of
the fitted distribution's mean and std (moments), and the error of N* (s* = 0.95, alpha = 0.05,
N_max = 64) against N* of the true parameters: mean |N*_hat - N*|, share of problems where N* is
underestimated (risk of stopping too early) / exact.

    python benchmarks/bench_prior.py [--seeds 20] [--k 3,5,10] [--predictor MODEL.npz] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from optscale import theory

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "optscale-paper"
TARGET, ALPHA, N_MAX = 0.95, 0.05, 64


def load(data: Path):
    pred = data / "predictor"
    val = np.array(json.loads((pred / "val_mu_sigma.json").read_text()), float)
    train = np.array(json.loads((pred / "train_mu_sigma.json").read_text()), float)
    paper = np.array(json.loads((data / "results" / "MATH500_predicted_mu_sigma.json").read_text()), float)
    texts = [d["problem"] for d in json.loads((pred / "val_data.json").read_text())]
    return val, train, paper, texts


def priors(val, train, paper, texts, predictor_path=None) -> dict[str, np.ndarray]:
    P = len(val)
    out = {}
    out["map-paper"] = np.column_stack([paper[:, 0], np.maximum(paper[:, 1], 1e-3), np.full(P, 0.1), np.full(P, 0.1)])
    cm, cs = theory.moments_to_params(train[:, 0].mean(), train[:, 1].mean())
    out["map-const"] = np.column_stack([np.full(P, float(cm)), np.full(P, float(cs)), np.full(P, 0.1), np.full(P, 0.1)])
    from optscale.predictor import Predictor, load_default

    pred = load_default() if predictor_path is None else Predictor.load(predictor_path)
    ours = pred.priors_for(texts)
    out["map-ours"] = ours
    out["map-ours-sd0.1"] = np.column_stack([ours[:, 0], ours[:, 1], np.full(P, 0.1), np.full(P, 0.1)])
    return out


def run(k_list=(3, 5, 10), seeds=20, predictor_path=None, data=DATA, seed=0) -> dict:
    val, train, paper, texts = load(data)
    mu, sigma = theory.moments_to_params(val[:, 0], val[:, 1])
    mom_mean, mom_std = theory.params_to_moments(mu, sigma)
    n_true = theory.n_star(mu, sigma, TARGET, ALPHA, N_MAX).n
    t0 = time.time()
    pri = priors(val, train, paper, texts, predictor_path)
    t_prior = time.time() - t0
    P = len(val)
    rows = []
    rng = np.random.default_rng(seed)
    for k in k_list:
        mu_r, sg_r = np.repeat(mu, seeds), np.repeat(sigma, seeds)
        scores = theory.sample(mu_r[:, None], sg_r[:, None], (P * seeds, k), rng)
        fits = {"mle": theory.fit_mle(scores)}
        for name, p in pri.items():
            pr = np.repeat(p, seeds, axis=0)
            fits[name] = theory.fit_map(scores, mu0=pr[:, 0], sigma0=pr[:, 1], sd_mu=pr[:, 2], sd_sigma=pr[:, 3])
        nt = np.repeat(n_true, seeds)
        for name, f in fits.items():
            m_hat, s_hat = theory.params_to_moments(f.mu, f.sigma)
            n_hat = theory.n_star(f.mu, f.sigma, TARGET, ALPHA, N_MAX).n
            rows.append({
                "k": int(k), "method": name,
                "mu_medae": float(np.median(np.abs(f.mu - mu_r))),
                "sigma_medae": float(np.median(np.abs(f.sigma - sg_r))),
                "mean_mae": float(np.mean(np.abs(m_hat - np.repeat(mom_mean, seeds)))),
                "std_mae": float(np.mean(np.abs(s_hat - np.repeat(mom_std, seeds)))),
                "nstar_mae": float(np.mean(np.abs(n_hat - nt))),
                "nstar_under": float(np.mean(n_hat < nt)),
                "nstar_exact": float(np.mean(n_hat == nt)),
                "nstar_mean": float(np.mean(n_hat)),
            })
    return {"problems": P, "seeds": seeds, "target": TARGET, "alpha": ALPHA, "n_max": N_MAX,
            "nstar_true_mean": float(n_true.mean()), "nstar_true_share_nmax": float(np.mean(n_true == N_MAX)),
            "boundary_share": float(np.mean(mu >= 0.99 * theory.MU_BOUND)),
            "prior_seconds": round(t_prior, 1), "rows": rows}


def to_markdown(res: dict) -> str:
    lines = [f"MATH-500 ({res['problems']} problems x {res['seeds']} seeds); N* with s*={res['target']}, "
             f"alpha={res['alpha']}, N_max={res['n_max']}; true N*: mean {res['nstar_true_mean']:.1f}, "
             f"{res['nstar_true_share_nmax']:.0%} at N_max; {res['boundary_share']:.0%} of problems moment-match "
             "to the family boundary (mu = 100)", "",
             "| k | method | med abs err mu | med abs err sigma | MAE mean | MAE std | MAE N* | N* under | N* exact | mean N* |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['k']} | {r['method']} | {r['mu_medae']:.4f} | {r['sigma_medae']:.4f} | {r['mean_mae']:.4f} | "
                     f"{r['std_mae']:.4f} | {r['nstar_mae']:.2f} | {r['nstar_under']:.1%} | {r['nstar_exact']:.1%} | "
                     f"{r['nstar_mean']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--k", default="3,5,10")
    ap.add_argument("--predictor", default=None, help="predictor .npz (default: the shipped one)")
    ap.add_argument("--data", default=str(DATA), help="optscale-paper data folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not (Path(a.data) / "predictor" / "val_mu_sigma.json").exists():
        print(f"data not found under {a.data} (../shared/data/optscale-paper)", file=sys.stderr)
        return 2
    res = run(tuple(int(x) for x in a.k.split(",")), a.seeds, a.predictor, Path(a.data), a.seed)
    print(json.dumps(res, indent=2) if a.json else to_markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
