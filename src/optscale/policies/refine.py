"""Sequential-refinement baseline (MR-Thinking, as evaluated in the OptScale paper)."""

from __future__ import annotations

from typing import Any

import numpy as np

from optscale.policies.base import (
    GUARANTEE_NONE,
    Observation,
    Policy,
    ReplayBatch,
    ReplayResult,
    check_n_max,
    effective_budget,
)

__all__ = ["MRThinking"]


class MRThinking(Policy):
    """Multi-round thinking: the pool's samples are successive refinement rounds (round i sees round
    i-1), so the policy draws exactly ``min(n_max, n)`` rounds, one per wave, and answers with the last
    round — the baseline of the OptScale paper (answer of the N-th round, cost of all N rounds)."""

    key = "mr-thinking"
    display = "MR-Thinking"
    guarantee = GUARANTEE_NONE
    replay_info = False

    def params(self) -> dict[str, Any]:
        return {}

    def next_wave(self, obs: Observation, n_max: int) -> int:
        return 1 if len(obs) < check_n_max(n_max) else 0

    def select(self, obs: Observation) -> int:
        return len(obs) - 1

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        n_drawn = effective_budget(batch, n_max).astype(np.int64)
        return ReplayResult(n_drawn, n_drawn - 1, {})
