"""Helpers shared by the sub-commands: JSON output, progress bars, tables."""

from __future__ import annotations

import json
import sys
from typing import Any

from optscale._json import json_default


def add_json_flag(parser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON on stdout (for scripts) instead of a table"
    )


def emit_json(obj: Any) -> None:
    """Standard JSON on stdout: numpy values converted, non-finite floats (inf, nan) written as null."""
    json.dump(_finite(obj), sys.stdout, indent=2, default=json_default, allow_nan=False)
    sys.stdout.write("\n")


def _finite(o: Any) -> Any:
    import math

    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return o
    if isinstance(o, np.ndarray):
        return _finite(o.tolist())
    if isinstance(o, np.floating):
        return _finite(float(o))
    return o


def progress(total: int | None = None, desc: str = "", disable: bool | None = None, unit: str = "it"):
    """A tqdm progress bar on stderr (disabled automatically when stderr is not a terminal and
    ``disable`` is None)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, disable=disable, unit=unit, dynamic_ncols=True)
