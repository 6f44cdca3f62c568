"""Score-weighted vote with adaptive stopping, for weak verifiers (issue #8, item 6).

When a verifier's best score picks worse than the majority does, its scores can still help as vote
weights. ``wvote`` draws one sample at a time; sample i votes for its answer with weight
w_i = s_i^power, normalized so that the weights of the voting samples sum to their number (the weighted
counts are then on the scale of plain votes). With W1 >= W2 the weighted votes of the two leading
answers, it stops as soon as the leading answer's weighted posterior

    P(p1 > 1/2),  p1 ~ Beta(W1 + 1, W2 + 1)      (= I_{1/2}(W2 + 1, W1 + 1))

reaches ``threshold`` (Adaptive-Consistency's criterion on weighted counts; ``power = 0`` is ASC), and
selects the weighted plurality answer. -1 answers do not vote; a NaN score weighs 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optscale.errors import ParameterError
from optscale.policies._vec import class_reps, first_index, vote_winner
from optscale.policies.base import (
    GUARANTEE_NONE,
    Observation,
    Policy,
    ReplayBatch,
    ReplayResult,
    check_n_max,
    effective_budget,
)

__all__ = ["WeightedASC", "weighted_top2"]


def _weights(answers: np.ndarray, scores: np.ndarray, power: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        w = np.where(np.isnan(scores), 0.0, np.power(np.clip(np.nan_to_num(scores), 0.0, None), power))
    return np.where(answers >= 0, w, 0.0)


def weighted_top2(answers: np.ndarray, scores: np.ndarray, power: float) -> tuple[np.ndarray, np.ndarray]:
    """float64[B, M] (W1, W2) after each prefix: the two largest normalized weighted votes of one answer."""
    answers = np.asarray(answers, dtype=np.int64)
    B, M = answers.shape
    W1 = np.zeros((B, M))
    W2 = np.zeros((B, M))
    if B == 0 or M == 0:
        return W1, W2
    rep = class_reps(answers)
    w = _weights(answers, np.asarray(scores, dtype=np.float64), power)
    totals = np.zeros((B, M))
    voters = np.zeros(B)
    wsum = np.zeros(B)
    rows = np.arange(B)
    for t in range(M):
        c = rep[:, t]
        v = c >= 0
        totals[rows[v], c[v]] += w[v, t]
        voters += v
        wsum += w[:, t]
        factor = np.where(wsum > 0, voters / np.where(wsum > 0, wsum, 1.0), 0.0)
        top = -np.partition(-totals[:, : t + 1], min(1, t), axis=1)[:, :2] if t >= 1 else totals[:, :1]
        W1[:, t] = top[:, 0] * factor
        W2[:, t] = (top[:, 1] if t >= 1 else 0.0) * factor
    return W1, W2


class WeightedASC(Policy):
    """Score-weighted Adaptive-Consistency (see module docstring)."""

    key = "wvote"
    display = "WeightedVote"
    guarantee = GUARANTEE_NONE
    needs_scores = True

    def __init__(self, threshold: float = 0.95, power: float = 1.0):
        try:
            t = float(threshold)
            p = float(power)
        except (TypeError, ValueError):
            raise ParameterError("threshold", f"threshold and power must be numbers, got {threshold!r}, {power!r}") from None
        if not (0.5 <= t < 1.0):
            raise ParameterError("threshold", f"must lie in [0.5, 1), got {threshold!r}")
        if not (p >= 0 and math.isfinite(p)):
            raise ParameterError("power", f"must be a finite number >= 0, got {power!r}")
        self.threshold, self.power = t, p

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "power": self.power}

    def next_wave(self, obs: Observation, n_max: int) -> int:
        from scipy.special import betainc

        n_max = check_n_max(n_max)
        d = len(obs)
        if d > 0:
            W1, W2 = weighted_top2(obs.answers[None, :], obs.scores[None, :], self.power)
            if float(betainc(W2[0, -1] + 1.0, W1[0, -1] + 1.0, 0.5)) >= self.threshold:
                return 0
        return 1 if d < n_max else 0

    def select(self, obs: Observation) -> int:
        if len(obs) == 0:
            return -1
        w = _weights(obs.answers, obs.scores, self.power)
        return int(vote_winner(obs.answers[None, :], w[None, :], np.array([len(obs)]))[0])

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        from scipy.special import betainc

        budget = effective_budget(batch, check_n_max(n_max))
        T = int(budget.max(initial=0))
        W1, W2 = weighted_top2(batch.answers[:, :T], batch.scores[:, :T], self.power)
        stop = (betainc(W2 + 1.0, W1 + 1.0, 0.5) >= self.threshold) & (np.arange(T)[None, :] < budget[:, None])
        t = first_index(stop, -1)
        n_drawn = np.where(t >= 0, t + 1, budget).astype(np.int64)
        w = _weights(batch.answers, batch.scores, self.power)
        return ReplayResult(n_drawn, vote_winner(batch.answers, w, n_drawn), {"stopped_early": t >= 0})
