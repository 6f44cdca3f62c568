"""``optscale generate``: draw K scored samples per problem and write a sample pool.

The pool (JSON Lines, ``optscale.pool`` schema, readable by ``optscale eval``) is appended one problem
at a time, with a per-sample checkpoint beside it, so running the same command again resumes an
interrupted run. Sample ``i`` of a problem gets the same seed as in ``optscale run`` with the same
``--seed``, so an offline replay over the pool sees the very samples an online run would draw.
"""

from __future__ import annotations

import argparse

from optscale.cli.run import (
    add_generation_args,
    add_problem_args,
    load_cli_problems,
    make_cli_scorer,
    make_generator,
    print_summary,
    prompt_template,
    run_config,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "generate",
        help="draw K scored samples per problem and write a sample pool (for optscale eval)",
        description=(
            "Draw K samples per problem with the embedded model or an OpenAI-compatible server, score "
            "them with --scorer, grade them against the gold answers and write a sample pool (JSON Lines, "
            "docs/POOL_FORMAT.md) to -o. Finished problems and individual samples are checkpointed, so "
            "running the same command again resumes an interrupted run."
        ),
    )
    add_problem_args(p)
    p.add_argument("-k", "--samples", dest="k", type=int, default=8, help="samples per problem (default 8)")
    p.add_argument("-o", "--out", required=True, help="pool file to write (JSON Lines)")
    add_generation_args(p)
    p.set_defaults(func=main)
    return p


def main(args) -> int:
    from optscale.errors import ParameterError
    from optscale.online.runner import generate

    problems = load_cli_problems(args)
    template = prompt_template(args)
    if args.k < 1:
        raise ParameterError("-k", f"must be >= 1, got {args.k}")
    scorer = make_cli_scorer(args)
    config = run_config(args, template, args.k, equiv="exact", results_path=args.out)
    generator = make_generator(args, scorer)
    summary = generate(problems, generator, scorer, config=config)
    print_summary(summary, args, what="generate")
    return 0
