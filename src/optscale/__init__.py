"""optscale — compute-optimal inference-time scaling for LLMs (OptScale, Wang et al., AAAI 2026).

The public API is loaded lazily so that ``import optscale`` stays fast and light:

>>> import optscale
>>> optscale.n_star(mu=0.7, sigma=0.15, target=0.95, alpha=0.05, n_max=64).n   # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    # theory
    "n_star": "optscale.theory",
    "n_star_from_logcdf": "optscale.theory",
    "NStar": "optscale.theory",
    "fit_mle": "optscale.theory",
    "fit_map": "optscale.theory",
    "Fit": "optscale.theory",
    "moments_to_params": "optscale.theory",
    "params_to_moments": "optscale.theory",
    # answers
    "extract_answer": "optscale.answers",
    "cluster_answers": "optscale.answers",
    "grade": "optscale.answers",
    # policies
    "make_policy": "optscale.policies",
    "Policy": "optscale.policies",
    "Observation": "optscale.policies",
    # pools
    "Pool": "optscale.pool",
    "Problem": "optscale.pool",
    "Sample": "optscale.pool",
    "load_pool": "optscale.pool",
    "save_pool": "optscale.pool",
    "to_arrays": "optscale.pool",
    # errors
    "OptScaleError": "optscale.errors",
    "InputError": "optscale.errors",
    "ParameterError": "optscale.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


#: sub-modules reachable as attributes (``optscale.evaluate.evaluate(...)``) without an explicit import
_SUBMODULES = {"theory", "answers", "policies", "pool", "importers", "evaluate", "report", "online", "predictor"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"optscale.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'optscale' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from optscale.theory import Fit, NStar, fit_map, fit_mle, n_star  # noqa: F401
