"""``optscale nstar``: the compute-optimal sample count N* for one score distribution.

N* = ceil(ln alpha / ln F(s*)) (OptScale, Theorem 1) is the smallest N for which the best of N i.i.d.
scores reaches the target s* with probability at least 1 - alpha, where F is Normal(mu, sigma^2)
truncated to [0, 1]; it is clipped to [1, --max-n].
"""

from __future__ import annotations

import argparse

from optscale.cli._common import add_json_flag, emit_json


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "nstar",
        help="compute N*, the number of samples whose best score reaches a target with a given confidence",
        description=(
            "Compute N* = ceil(ln(alpha) / ln F(s*)) for verifier scores F = Normal(mu, sigma^2) truncated to "
            "[0, 1]: the smallest N such that P(best of N scores >= s*) >= 1 - alpha, clipped to [1, --max-n]. "
            "When F(s*) = 1 the target is unreachable and N* is --max-n."
        ),
    )
    p.add_argument("--mu", type=float, required=True,
                   help="location of the score distribution (mean of the untruncated normal; may lie outside [0, 1])")
    p.add_argument("--sigma", type=float, required=True, help="scale of the score distribution (> 0)")
    p.add_argument("--target", type=float, required=True, help="target score s* in [0, 1]")
    level = p.add_mutually_exclusive_group()
    level.add_argument("--confidence", type=float, default=None,
                       help="required probability 1 - alpha that the best score reaches s*, in (0, 1) (default 0.95)")
    level.add_argument("--alpha", type=float, default=None,
                       help="allowed failure probability alpha in (0, 1) (alternative to --confidence)")
    p.add_argument("--max-n", type=int, default=64, help="sampling budget N_max >= 1; N* is clipped to it (default 64)")
    add_json_flag(p)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import numpy as np

    from optscale import theory
    from optscale.errors import ParameterError

    if not 1 <= args.max_n <= theory.MAX_N_MAX:
        raise ParameterError("--max-n", f"must be an integer in [1, 2^53 = {theory.MAX_N_MAX}], got {args.max_n}")
    if args.alpha is not None:
        alpha = args.alpha
    else:
        confidence = 0.95 if args.confidence is None else args.confidence
        if not 0.0 < confidence < 1.0:
            raise ParameterError("confidence", f"must be in (0, 1), got {confidence:g}")
        alpha = float(f"{1.0 - confidence:.15g}")   # 1 - 0.95 = 0.050000000000000044 otherwise
    result = theory.n_star(args.mu, args.sigma, args.target, alpha, args.max_n)
    n = int(result.n)
    log_f = float(theory.logcdf(args.target, args.mu, args.sigma))
    with np.errstate(under="ignore"):
        p_reach = float(-np.expm1(n * log_f)) + 0.0   # 1 - F(s*)^N*, exact when F is close to 1 (no -0.0)
    out = {
        "n_star": n,
        "reachable": bool(result.reachable),
        "exact": float(result.exact),
        "cdf_target": float(np.exp(log_f)),
        "p_best_reaches_target": p_reach,
        "mu": args.mu, "sigma": args.sigma, "target": args.target, "alpha": alpha, "max_n": args.max_n,
    }
    if args.json:
        emit_json(out)
        return 0
    note = ""
    if not out["reachable"]:
        note = f"  (target unreachable: F(s*) = 1; set to --max-n {args.max_n})"
    elif out["exact"] > args.max_n:
        note = f"  (clipped to --max-n {args.max_n}: the confidence is not met within the budget)"
    print(f"N* = {n}{note}")
    print(f"reachable                  {out['reachable']}")
    print(f"ln(alpha) / ln F(s*)       {out['exact']:.6g}")
    print(f"F(s*) = P(score <= s*)     {out['cdf_target']:.6g}")
    print(f"P(best of N* >= s*)        {p_reach:.6g}   (required: {1 - alpha:.6g})")
    return 0
