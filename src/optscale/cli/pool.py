"""``optscale pool``: import sample pools from published formats, validate them, show what they hold."""

from __future__ import annotations

import argparse
import sys

from optscale.cli._common import add_json_flag, emit_json, progress

FORMATS = ("auto", "optscale", "search-and-learn", "selfconsistency", "pool")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pool",
        help="import, validate and describe sample pools (JSON Lines, docs/POOL_FORMAT.md)",
        description="Import sample pools from published formats, validate pool files and summarize them.",
    )
    sub = parser.add_subparsers(dest="pool_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser(
        "import",
        help="convert a published pool file into the pool format",
        description=(
            "Convert SRC into a pool file (JSON Lines). Answers are extracted from completions where the "
            "source has none, and graded against the gold answers (math-verify for math answers)."
        ),
    )
    p.add_argument("src", metavar="SRC", help="the file to import")
    p.add_argument(
        "--format", "-f", choices=FORMATS, default="auto",
        help="format of SRC (default: auto, recognized from the file's first line)",
    )
    p.add_argument(
        "--prompts", metavar="FILE",
        help="optscale format only: the paper's prompts file aligned with SRC, which gives the gold answers",
    )
    p.add_argument(
        "--agg", choices=("mean", "min", "last", "prod"), default=None,
        help="search-and-learn only: how per-step PRM scores become one score (default: mean)",
    )
    p.add_argument(
        "--score-field", choices=("scores", "last_scores"), default=None,
        help="optscale only: which score list to use (default: scores, the mean step reward)",
    )
    p.add_argument(
        "--tokens", choices=("whitespace", "char_len", "none"), default=None,
        help="selfconsistency only: token-count proxy (default: whitespace-separated words of the text)",
    )
    p.add_argument("--no-text", action="store_true", help="do not keep the completion texts (smaller pool files)")
    p.add_argument(
        "--timeout", type=float, default=5.0,
        help="time limit in seconds of one math-verify comparison when grading (default: 5)",
    )
    p.add_argument(
        "--skip-truncated-last", action="store_true",
        help="skip (with a warning) a truncated last line instead of failing; other invalid lines still fail",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="pool file to write (.jsonl, or .jsonl.gz)")
    add_json_flag(p)
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser(
        "validate",
        help="check a pool file; print its summary or the first error (exit code 2 if invalid)",
        description="Check every line and field of POOL. Prints a summary, or the first error and exits with 2.",
    )
    p.add_argument("pool", metavar="POOL", help="pool file (JSON Lines)")
    p.add_argument(
        "--skip-truncated-last", action="store_true",
        help="accept a file whose last line is truncated (it is skipped, with a warning)",
    )
    add_json_flag(p)
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser(
        "info",
        help="summarize a pool: problems, samples, fields present, accuracies",
        description="Summarize POOL: counts, which fields are present, per-sample and majority-vote accuracy.",
    )
    p.add_argument("pool", metavar="POOL", help="pool file (JSON Lines)")
    p.add_argument(
        "--equiv", choices=("exact", "math", "number", "choice"), default="exact",
        help="answer equivalence used for majority voting (default: exact)",
    )
    p.add_argument(
        "--skip-truncated-last", action="store_true",
        help="accept a file whose last line is truncated (it is skipped, with a warning)",
    )
    add_json_flag(p)
    p.set_defaults(func=_cmd_info)


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def _print_summary(s: dict, title: str | None = None) -> None:
    if title:
        print(title)
    keys = [k for k in s if k != "notes"]
    width = max(len(k) for k in keys)
    for k in keys:
        print(f"  {k.ljust(width)}  {_fmt(s[k])}")
    for note in s.get("notes", []):
        print(f"  note: {note}")


def _count_items(path: str, fmt: str) -> int | None:
    """Number of problems in SRC for the progress bar (lines of a JSONL file), None when unknown."""
    if fmt == "optscale":
        return None
    import zlib

    from optscale.errors import InputError
    from optscale.jsonio import open_binary

    try:
        with open_binary(path) as fh:
            return sum(1 for line in fh if line.strip())
    except (InputError, OSError, EOFError, zlib.error):  # the importer reports what is wrong
        return None


def _cmd_import(args: argparse.Namespace) -> int:
    import math

    from optscale.errors import ParameterError
    from optscale.importers import import_pool, sniff_format
    from optscale.jsonio import check_output
    from optscale.pool import save_pool, summary

    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise ParameterError("--timeout", f"must be a number of seconds > 0, got {args.timeout}")
    check_output(args.output, "--output")  # before importing (and grading), not after
    fmt = args.format if args.format != "auto" else sniff_format(args.src)
    kwargs: dict = {}
    only = {"prompts": "optscale", "agg": "search-and-learn", "score_field": "optscale", "tokens": "selfconsistency"}
    for opt, owner in only.items():
        val = getattr(args, opt)
        if val is not None:
            if fmt != owner:
                raise ParameterError(f"--{opt.replace('_', '-')}", f"applies to the {owner} format only, not {fmt}")
            kwargs[opt] = val
    if fmt != "pool":
        kwargs["keep_text"] = not args.no_text
    if fmt in ("optscale", "search-and-learn"):
        kwargs["timeout"] = args.timeout
    if fmt != "optscale":
        kwargs["on_error"] = "skip-truncated-last" if args.skip_truncated_last else "raise"
    elif args.skip_truncated_last:
        raise ParameterError("--skip-truncated-last", "applies to JSON Lines formats only, not optscale")
    with progress(total=_count_items(args.src, fmt), desc=f"import {fmt}", unit="problem") as bar:
        if fmt != "pool":
            kwargs["progress"] = bar.update
        pool = import_pool(args.src, fmt, **kwargs)
    save_pool(pool, args.output)
    s = summary(pool)
    s["format"] = fmt
    s["output"] = args.output
    if args.json:
        emit_json(s)
    else:
        _print_summary(s, f"imported {args.src} ({fmt}) -> {args.output}")
    return 0


def _load(args):
    from optscale.pool import load_pool

    return load_pool(args.pool, on_error="skip-truncated-last" if args.skip_truncated_last else "raise")


def _import_hint(path) -> str | None:
    """A hint when ``path`` is not a pool but a published format that ``optscale pool import`` reads."""
    from optscale.errors import InputError
    from optscale.importers import sniff_format

    try:
        fmt = sniff_format(path)
    except (InputError, OSError, UnicodeDecodeError):
        return None
    if fmt == "pool":
        return None
    return f"this file looks like the {fmt!r} format: convert it with 'optscale pool import {path} -o POOL.jsonl'"


def _cmd_validate(args: argparse.Namespace) -> int:
    from optscale.errors import InputError
    from optscale.pool import summary

    try:
        pool = _load(args)
    except InputError as exc:
        hint = _import_hint(args.pool)
        if args.json:
            emit_json({"valid": False, "error": str(exc), "file": exc.file, "line": exc.line, "field": exc.field,
                       "hint": hint})
        else:
            print(f"optscale pool validate: invalid: {exc}" + (f"\n  hint: {hint}" if hint else ""),
                  file=sys.stderr)
        return 2
    s = summary(pool)
    if args.json:
        emit_json({"valid": True, **s})
    else:
        _print_summary(s, f"valid pool: {args.pool}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from optscale.pool import summary

    pool = _load(args)
    s = summary(pool, equiv=args.equiv)
    if args.json:
        emit_json(s)
    else:
        _print_summary(s, f"pool {args.pool}")
    return 0
