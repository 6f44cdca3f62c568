"""JSON helpers shared by the reports, the checkpoints and the CLI (stdlib + numpy, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def json_default(o: Any):
    """``default=`` for :func:`json.dumps`: numpy scalars and arrays as plain Python, paths as strings."""
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
