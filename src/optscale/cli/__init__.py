"""The ``optscale`` command line.

Each sub-command lives in its own module of this package and exposes ``add_parser(subparsers)``,
which registers an ``argparse`` sub-parser whose ``func`` default is called with the parsed
arguments and returns an exit code. Heavy imports happen inside those functions only, so that
``optscale --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings

#: sub-command modules, in the order shown by ``optscale --help``
COMMANDS = ("run", "generate", "eval", "nstar", "pool", "predictor", "serve")


#: what argparse should read as a negative number, not an option: -1, -.5, -1e6, -2.5E-3, -inf, -nan
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|infinity|nan)$", re.IGNORECASE)


class _Parser(argparse.ArgumentParser):
    """ArgumentParser that takes ``--mu -1e6`` as a value: argparse's own test for negative numbers
    (``-1``, ``-0.5``) misses exponents and ``-inf``, so ``-1e6`` was read as an unknown option. Sub-parsers
    are created with the parser's class, so every sub-command gets it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _NEGATIVE_NUMBER


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="optscale",
        description=(
            "Compute-optimal inference-time scaling (OptScale): decide per problem how many "
            "Best-of-N samples to draw, replay policies offline over sample pools, run them online."
        ),
    )
    from optscale import __version__

    parser.add_argument("--version", action="version", version=f"optscale {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"optscale.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            # library warnings (e.g. a torn checkpoint line discarded) as one line each, not a source excerpt
            warnings.showwarning = lambda message, *a, **k: print(
                f"optscale {args.command}: warning: {message}", file=sys.stderr
            )
            code = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `optscale ... --json | head`: the reader left; exit quietly
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # user-facing errors: one clear line, no traceback
        from optscale.errors import OptScaleError

        if isinstance(exc, OptScaleError):
            print(f"optscale {args.command}: error: {exc}", file=sys.stderr)
            return 2
        raise
    return int(code or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
