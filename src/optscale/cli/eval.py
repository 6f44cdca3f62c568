"""``optscale eval POOL``: replay policies x budgets offline over a sample pool and report accuracy vs tokens.

Writes results.csv, results.json, results.md and accuracy_vs_tokens.png to ``--out`` (when given; plus
coverage.md and reliability.png for rules that claim the OptScale guarantee, and gain_model.json -- loadable
by ``costaware:model=PATH`` -- when a cost-aware rule learned one) and
prints the markdown table (or the JSON report with ``--json``) on stdout; a progress bar over
(method, budget) goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from optscale.cli._common import add_json_flag, emit_json, progress

DEFAULT_METHODS_SCORED = "bon,sc,esc,asc,dsc,optscale0,optscale0-seq"
DEFAULT_METHODS_UNSCORED = "sc,esc,asc,dsc"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "eval",
        help="replay policies x budgets over a sample pool (accuracy vs tokens, tuned on a calibration split)",
        description=(
            "Replay stopping/selection policies offline over a pool of sampled solutions. Each policy is "
            "replayed at each budget N_max over the pool's own sample order plus R random orderings; "
            "hyper-parameters of OptScale (target s*, alpha) are tuned on a calibration split of problems "
            "and every row is reported on the held-out rest, with bootstrap 95% intervals over problems."
        ),
    )
    p.add_argument("pool", metavar="POOL",
                   help="pool file (JSON Lines, docs/POOL_FORMAT.md) or a published format optscale can import")
    p.add_argument("--format", default="auto",
                   help="format of POOL: auto (sniffed, default), pool, optscale, search-and-learn, selfconsistency")
    p.add_argument("--methods", default=None,
                   help="comma-separated policy specs, e.g. bon,sc,esc,asc,dsc,optscale0,optscale0-seq,optscalet "
                        "or 'esc:window=4' (a spec with parameters is not tuned). Default: "
                        f"{DEFAULT_METHODS_SCORED} (+optscalet with priors) on a scored pool, "
                        f"{DEFAULT_METHODS_UNSCORED} otherwise")
    p.add_argument("--budgets", default=None,
                   help="comma-separated N_max values (default 8,16,32,... below the pool's sample count, "
                        "then that count)")
    p.add_argument("--orderings", type=int, default=10,
                   help="random sample orderings per problem besides the pool's own order (default 10)")
    p.add_argument("--ordering-mode", choices=("random", "cyclic"), default="random",
                   help="random permutations or cyclic rotations of each problem's samples")
    p.add_argument("--seed", type=int, default=0, help="seed of orderings, calibration split and bootstrap")
    p.add_argument("--calib-frac", type=float, default=0.3,
                   help="fraction of problems used to tune hyper-parameters (default 0.3)")
    p.add_argument("--calib-ids", default=None, metavar="FILE",
                   help="JSON list of problem ids: the calibration split (instead of a --calib-frac random one)")
    p.add_argument("--tune", action=argparse.BooleanOptionalAction, default=True,
                   help="tune hyper-parameters on the calibration split and report on the rest (default on)")
    p.add_argument("--select", choices=("match", "penalty"), default="match",
                   help="tuning rule: 'match' = fewest tokens within --tolerance of the fixed-budget "
                        "counterpart's accuracy (default); 'penalty' = max accuracy - penalty * relative tokens")
    p.add_argument("--tolerance", type=float, default=0.005, help="accuracy tolerance of 'match' (default 0.005)")
    p.add_argument("--margin-z", type=float, default=1.0,
                   help="safety margin of 'match' in standard errors of the paired per-problem accuracy "
                        "difference to the counterpart on the calibration split: a point is accepted iff "
                        "mean(d) - Z * SE(d) >= -tolerance (default 1.0; 0 = plain tolerance)")
    p.add_argument("--tune-folds", type=int, default=5,
                   help="rules with a model learned on the calibration split (costaware, budget-alloc) are tuned "
                        "on cross-fitted calibration metrics: each of K folds replayed with a model fitted on the "
                        "others (default 5; 1 = in-sample, which overstates their accuracy)")
    p.add_argument("--token-penalty", type=float, default=0.01, help="penalty of 'penalty' (default 0.01)")
    p.add_argument("--predictor", default=None, metavar="MODEL",
                   help="OptScale^t priors predicted from each problem's question by a prior predictor: "
                   "'default' (the shipped one) or a model file from 'optscale predictor train'")
    p.add_argument("--priors", default=None,
                   help="JSON file of OptScale^t priors: a list of [mu0, sigma0] aligned with the problems "
                        "or {id: [mu0, sigma0]} (default: problem meta 'prior' when every problem has one)")
    p.add_argument("--equiv", choices=("exact", "math", "number", "choice"), default="exact",
                   help="answer equivalence used to cluster answers (default exact)")
    p.add_argument("--sweep", action="store_true",
                   help="also add a full (s*, alpha) grid sweep of the OptScale methods over all problems "
                        "(labelled not held-out; for the plot)")
    p.add_argument("--tokens-per-point", type=float, default=None, metavar="TOKENS",
                   help="add the cost-aware rule at this exchange rate: stop when one more sample's expected "
                        "accuracy gain (learned on the calibration split) is worth fewer than TOKENS per "
                        "accuracy point; list 'costaware' in --methods to have the rate tuned instead")
    p.add_argument("--total-budget", type=float, default=None, metavar="TOKENS",
                   help="add the set-level allocation rule: spread TOKENS over the whole problem set (the "
                        "reported split gets its share, TOKENS x its problems / all problems) by expected "
                        "marginal gain")
    p.add_argument("--no-coverage", dest="coverage", action="store_false",
                   help="skip the reliability grid of the rules that claim P(best >= s*) >= 1 - alpha")
    p.add_argument("--no-oracle", dest="oracle", action="store_false", help="skip the oracle lower bound")
    p.add_argument("--out", default=None,
                   help="directory for results.{csv,json,md} and accuracy_vs_tokens.png (created with its parents; "
                        "files in it are replaced; a path that exists and is not a directory is refused before "
                        "evaluating)")
    add_json_flag(p)
    p.set_defaults(func=run)
    return p


def _int_list(text: str, name: str) -> list[int]:
    from optscale.errors import ParameterError

    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            out.append(int(item))
        except ValueError:
            raise ParameterError(name, f"expected comma-separated integers, got {item!r}") from None
    if not out:
        raise ParameterError(name, "is empty")
    return out


def _split_methods(text: str) -> list[str]:
    """Split on commas that start a new method (a comma followed by 'key=' continues the parameters)."""
    parts: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if parts and "=" in item and ":" in parts[-1] and ":" not in item:
            parts[-1] += "," + item
        else:
            parts.append(item)
    return parts


def _meta_priors(pool):
    """Priors from problem meta "prior" ([mu0, sigma0], [mu0, sigma0, sd_mu, sd_sigma] or {"mu0", "sigma0"}),
    None when no problem has one. A malformed prior, or a pool where only some problems have one, raises
    InputError naming the problem (never silently evaluated without priors)."""
    import math

    import numpy as np

    from optscale.errors import InputError

    have = [(prob.meta or {}).get("prior") is not None for prob in pool.problems]
    if not any(have):
        return None
    vals = []
    width = None
    for prob in pool.problems:
        pr = (prob.meta or {}).get("prior")

        def bad(msg: str, pid=prob.id):
            raise InputError(pool.source, None, "meta.prior", f"problem {pid!r}: {msg}")

        if pr is None:
            bad(f"missing, but {sum(have)} of {len(have)} problems have a prior (give every problem one, or none)")
        if isinstance(pr, dict):
            pr = [pr.get("mu0", pr.get("mu")), pr.get("sigma0", pr.get("sigma"))]
        if not isinstance(pr, list) or len(pr) not in (2, 4):
            bad(f"must be [mu0, sigma0], [mu0, sigma0, sd_mu, sd_sigma] or {{\"mu0\": .., \"sigma0\": ..}}, got {pr!r}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in pr):
            bad(f"values must be finite numbers, got {pr!r}")
        if pr[1] <= 0 or (len(pr) == 4 and (pr[2] <= 0 or pr[3] <= 0)):
            bad(f"sigma0 (and sd_mu, sd_sigma) must be > 0, got {pr!r}")
        if width is not None and len(pr) != width:
            bad(f"has {len(pr)} values, other problems {width}")
        width = len(pr)
        vals.append(pr)
    return np.asarray(vals, dtype=float)


def run(args) -> int:
    import importlib

    import numpy as np

    from optscale.errors import ParameterError
    from optscale.importers import import_pool, sniff_format
    from optscale.pool import load_arrays, to_arrays

    ev = importlib.import_module("optscale.evaluate")  # (optscale.evaluate is also a lazy function export)
    if args.out:  # decided before evaluating: an --out that cannot be a directory fails now, not at the end
        from optscale.jsonio import check_output

        check_output(args.out, "--out", directory=True)
    methods = _split_methods(args.methods) if args.methods else None
    if args.methods is not None:
        if not methods:
            raise ParameterError("--methods", "no method given")
        dup = sorted({m for m in methods if methods.count(m) > 1})
        if dup:
            raise ParameterError("--methods", f"{', '.join(dup)} given more than once")
    fmt = sniff_format(args.pool) if args.format == "auto" else args.format
    if fmt == "pool":  # streamed straight into arrays: no per-sample objects (memory ~ the arrays)
        arrays, pool = load_arrays(args.pool, equiv=args.equiv)
    else:
        pool = import_pool(args.pool, fmt)
        arrays = to_arrays(pool, equiv=args.equiv)
    P, M = arrays.answers.shape

    calib_problems = None
    if args.calib_ids:
        calib_problems = tuple(ev.load_calib_ids(args.calib_ids, arrays.ids or [p.id for p in pool.problems]))

    priors = None
    if args.priors and args.predictor:
        raise ParameterError("--predictor", "give either --priors or --predictor, not both")
    if args.priors:
        priors = ev.load_priors(args.priors, arrays.ids or [p.id for p in pool.problems])
    elif args.predictor:
        from optscale.predictor import Predictor, load_default

        model = load_default() if args.predictor == "default" else Predictor.load(args.predictor)
        priors = model.priors_for([p.question for p in pool.problems])
    else:
        priors = _meta_priors(pool)
        if priors is not None:
            priors = ev.expand_priors(priors, P)

    difficulty = None  # DSC: problem meta "difficulty" (or "level") when every problem has one
    for key in ("difficulty", "level"):
        vals = [(p.meta or {}).get(key) for p in pool.problems]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            difficulty = np.asarray(vals, dtype=float)
            break

    del pool  # the arrays, priors and difficulty hold all the evaluation needs (frees the sample objects)

    if not methods:
        has_scores = bool(getattr(arrays, "has_scores", False)) or bool(
            np.all(~np.isnan(arrays.scores) | (np.arange(M)[None, :] >= arrays.n[:, None])))
        methods = (DEFAULT_METHODS_SCORED if has_scores else DEFAULT_METHODS_UNSCORED).split(",")
        if has_scores and priors is not None:
            methods.append("optscalet")
    budgets = _int_list(args.budgets, "budgets") if args.budgets else ev.default_budgets(M)
    for flag, value in (("--tokens-per-point", args.tokens_per_point), ("--total-budget", args.total_budget)):
        if value is not None and not (value > 0 and np.isfinite(value)):
            raise ParameterError(flag, f"must be a positive number of tokens, got {value!r}")
    if args.tokens_per_point is not None:
        methods.append(f"costaware:tokens_per_point={args.tokens_per_point!r}")
    if args.total_budget is not None:
        methods.append(f"budget-alloc:per_problem={args.total_budget / P!r}")

    total = len(methods) * len(budgets) + (1 if args.oracle else 0)
    bar = progress(total=total, desc="eval", unit="run")
    try:
        def tick(method: str, budget: int) -> None:
            bar.set_postfix_str(f"{method} N={budget}", refresh=False)
            bar.update(1)

        config = ev.EvalConfig(
            budgets=tuple(budgets), orderings=args.orderings, seed=args.seed, calib_frac=args.calib_frac,
            calib_problems=calib_problems,
            tune=args.tune, select=args.select, tolerance=args.tolerance, margin_z=args.margin_z,
            tune_folds=args.tune_folds, token_penalty=args.token_penalty,
            oracle=args.oracle, ordering_mode=args.ordering_mode, coverage=args.coverage,
        )
        report = ev.evaluate(arrays, methods, config=config, priors=priors, difficulty=difficulty, progress=tick)
        if args.sweep:
            opt = [m for m in methods if m.split(":")[0].startswith("optscale")]
            if opt:
                sw = ev.sweep(arrays, opt, config=config, priors=priors, baselines=())
                report.extend(sw)
                report.mark_pareto()
    finally:
        bar.close()

    report.meta["pool"] = str(args.pool)
    report.meta["equiv"] = args.equiv
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        report.to_csv(out / "results.csv")
        report.to_json(out / "results.json")
        report.to_markdown(out / "results.md")
        ev.plot_accuracy_vs_tokens(report, out / "accuracy_vs_tokens.png", title=Path(args.pool).name)
        if report.meta.get("coverage"):
            (out / "coverage.md").write_text(ev.coverage_markdown(report) + "\n", encoding="utf-8")
        if report.meta.get("reliability"):
            ev.plot_reliability(report, out / "reliability.png", title=f"{Path(args.pool).name}: reliability")
        gm = getattr(report, "gain_model", None)
        if gm is not None:
            gm.save(out / "gain_model.json")
    if args.json:
        emit_json(report.to_dict())
    else:
        sys.stdout.write(report.to_markdown())
        extra = ev.coverage_markdown(report)
        if extra:
            sys.stdout.write("\n" + extra + "\n")
        if args.out:
            sys.stdout.write(f"\nwrote results.csv, results.json, results.md, accuracy_vs_tokens.png to {args.out}\n")
    return 0
