"""Helpers shared by the sub-commands: JSON output, progress bars, tables."""

from __future__ import annotations

import json
import sys
from typing import Any


def add_json_flag(parser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (for scripts) instead of a table"
    )


def emit_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=_default)
    sys.stdout.write("\n")


def _default(o: Any):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def progress(total: int | None = None, desc: str = "", disable: bool | None = None, unit: str = "it"):
    """A tqdm progress bar on stderr (disabled automatically when stderr is not a terminal and
    ``disable`` is None)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, unit=unit, dynamic_ncols=True)
