"""Policy registry and the ``"name:key=val,key=val"`` spec parser (:func:`make_policy`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from typing import Any

from optscale.errors import ParameterError
from optscale.policies.base import Policy
from optscale.policies.bayes import PosteriorOptScale
from optscale.policies.bon import BoN
from optscale.policies.consistency import ASC, ESC, SelfConsistency, WeightedSC
from optscale.policies.costaware import BudgetAllocation, CostAware
from optscale.policies.dsc import DSC
from optscale.policies.optscale import OptScale0, OptScaleT
from optscale.policies.refine import MRThinking
from optscale.policies.wvote import WeightedASC

__all__ = ["POLICIES", "make_policy", "parse_spec"]

# registry name -> factory (a Policy class, or a partial fixing the mode)
POLICIES: dict[str, Callable[..., Policy]] = {
    "bon": BoN,
    "optscale0": partial(OptScale0, mode="one-shot"),
    "optscale0-seq": partial(OptScale0, mode="sequential"),
    "optscalet": partial(OptScaleT, mode="one-shot"),
    "optscalet-seq": partial(OptScaleT, mode="sequential"),
    "optscale-post": partial(PosteriorOptScale, mode="one-shot"),
    "optscale-post-seq": partial(PosteriorOptScale, mode="sequential"),
    "sc": SelfConsistency,
    "wsc": WeightedSC,
    "esc": ESC,
    "asc": ASC,
    "dsc": DSC,
    "mr-thinking": MRThinking,
    "costaware": CostAware,
    "budget-alloc": BudgetAllocation,
    "wvote": WeightedASC,
}


def _policy_class(factory: Callable[..., Policy]) -> Callable[..., Policy]:
    """The class behind a registry entry (a partial fixing the mode wraps it)."""
    return factory.func if isinstance(factory, partial) else factory


def _keys(factory: Callable[..., Policy]) -> list[str]:
    return [k for k in inspect.signature(_policy_class(factory)).parameters if k != "self"]


def _value(text: str) -> Any:
    t = text.strip()
    low = t.lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if "/" in t:  # numeric pairs such as prior=0.6/0.2; anything else (a path such as runs/01/gain.json) stays text
        parts = tuple(_value(part) for part in t.split("/"))
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in parts)
        return parts if numeric else t
    try:
        return int(t)
    except ValueError:
        pass
    try:
        return float(t)
    except ValueError:
        return t


def _text_params(name: str) -> tuple[str, ...]:
    factory = POLICIES.get(name)
    return () if factory is None else tuple(_policy_class(factory).text_params)


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=val,key=val"`` into the name and typed values (int, float, bool, None, a numeric
    a/b tuple, else the text unchanged -- so a path value such as ``model=runs/01/gain.json`` is kept).
    A policy's declared ``text_params`` (e.g. costaware's ``model``) are always text (None for none/null):
    ``model=01/02`` stays the path ``01/02``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError("policy", f"expected a policy spec such as 'esc:window=5', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    kwargs: dict[str, Any] = {}
    text = _text_params(name)
    for item in filter(None, (x.strip() for x in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ParameterError("policy", f"bad parameter {item!r} in {spec!r}: expected key=value")
        key = key.strip()
        raw = val.strip()
        kwargs[key] = (None if raw.lower() in ("none", "null") else raw) if key in text else _value(val)
    return name, kwargs


def make_policy(spec: str, **kw: Any) -> Policy:
    """Build a policy from ``"name"`` or ``"name:key=val,key=val"``; keyword arguments override the spec.

    Names: bon, optscale0, optscale0-seq, optscalet, optscalet-seq, sc, wsc, esc, asc, dsc, mr-thinking,
    optscale-post, optscale-post-seq, costaware, budget-alloc, wvote.
    ``make_policy(p.name)`` rebuilds a policy equal to ``p``.
    """
    name, kwargs = parse_spec(spec)
    kwargs.update(kw)
    factory = POLICIES.get(name)
    if factory is None:
        raise ParameterError("policy", f"unknown policy {name!r}; valid names: {', '.join(POLICIES)}")
    valid = _keys(factory)
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise ParameterError(
            "policy",
            f"unknown parameter(s) {', '.join(map(repr, unknown))} for {name!r}; valid: {', '.join(valid) or '(none)'}",
        )
    return factory(**kwargs)
