"""Best-of-N with a fixed N: draw N samples, keep the one the verifier scores highest."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optscale.errors import ParameterError
from optscale.policies._vec import best_score
from optscale.policies.base import (
    GUARANTEE_NONE,
    Observation,
    Policy,
    ReplayBatch,
    ReplayResult,
    check_n_max,
    effective_budget,
)

__all__ = ["BoN", "best_of", "check_count"]


def check_count(name: str, value: Any, *, minimum: int = 1, allow_none: bool = False) -> int | None:
    """Validate an integer parameter (>= ``minimum``); None passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ParameterError(name, f"must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ParameterError(name, f"must be >= {minimum}, got {value}")
    return int(value)


def best_of(obs: Observation) -> int:
    """The Best-of-N choice for one problem (scalar reference of :func:`optscale.policies._vec.best_score`).

    Highest score wins; answers -1 never win while a parsable answer exists; NaN scores never win while
    a scored candidate exists; ties go to the first drawn; -1 for an empty observation.
    """
    n = len(obs)
    if n == 0:
        return -1
    parsable = [i for i in range(n) if obs.answers[i] >= 0]
    cand = parsable if parsable else list(range(n))
    best, best_val = -1, -math.inf
    for i in cand:
        s = float(obs.scores[i])
        if math.isnan(s):
            continue
        if best < 0 or s > best_val:
            best, best_val = i, s
    return best if best >= 0 else cand[0]


class BoN(Policy):
    """Best-of-N (fixed N): draw ``n`` samples (``n=None`` -> ``n_max``) in one wave and select the
    highest verifier score. Answers -1 (empty/unparsable) never win while a parsable one exists, NaN
    scores never win, ties go to the first drawn."""

    key = "bon"
    display = "BoN"
    guarantee = GUARANTEE_NONE
    needs_scores = True
    replay_info = False

    def __init__(self, n: int | None = None):
        self.n = check_count("n", n, allow_none=True)

    def params(self) -> dict[str, Any]:
        return {"n": self.n}

    def _target(self, n_max: int) -> int:
        return n_max if self.n is None else min(self.n, n_max)

    def next_wave(self, obs: Observation, n_max: int) -> int:
        return max(self._target(check_n_max(n_max)) - len(obs), 0)

    def select(self, obs: Observation) -> int:
        return best_of(obs)

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        n_drawn = np.minimum(effective_budget(batch, n_max), self._target(check_n_max(n_max)))
        return ReplayResult(n_drawn, best_score(batch.answers, batch.scores, n_drawn), {})
