"""Voting baselines: Self-Consistency, weighted SC, Early-stopping SC (ESC), Adaptive-Consistency (ASC).

* SC — Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning": majority vote over a
  fixed number of samples.
* Weighted SC — the vote of each sample is weighted by its verifier score.
* ESC — Li et al. 2024, "Escape Sky-high Cost: Early-stopping Self-Consistency for Multi-step
  Reasoning": sample in windows of ``w``; stop after the first window whose answers are all equal.
* ASC — Aggarwal et al. 2023, "Let's Sample Step by Step: Adaptive-Consistency for Efficient Reasoning
  and Coding with LLMs": after each sample, with v1 >= v2 the votes of the two leading answers, the
  Beta stopping criterion of the reference code (``BetaStoppingCriteria``) computes
  ``P(p1 > 1/2)`` for ``p1 ~ Beta(v1 + 1, v2 + 1)`` (uniform prior on the leader's share among the top
  two), i.e. ``1 - I_{1/2}(v1 + 1, v2 + 1) = I_{1/2}(v2 + 1, v1 + 1)`` with ``I`` the regularized
  incomplete beta function (closed form via :func:`scipy.special.betainc`; the reference code integrates
  numerically), and stops once it is >= ``threshold``.

Answers -1 (none/unparsable) never vote; a vote is won by the answer with most votes, ties by the answer
seen first; the selected sample is the first sample carrying the winning answer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optscale.errors import ParameterError
from optscale.policies._vec import first_index, prefix_top2, vote_winner
from optscale.policies.base import (
    GUARANTEE_NONE,
    Observation,
    Policy,
    ReplayBatch,
    ReplayResult,
    check_n_max,
    effective_budget,
)
from optscale.policies.bon import check_count

__all__ = ["ASC", "ESC", "SelfConsistency", "WeightedSC", "asc_confidence", "majority", "top2_votes"]


def majority(obs: Observation, weights: np.ndarray | None = None) -> int:
    """Index of the first sample of the (weighted) plurality answer of one problem.

    Scalar reference of :func:`optscale.policies._vec.vote_winner`: -1 answers never vote, NaN weights
    count 0, ties go to the answer seen first; if every answer is -1 the first sample is returned, and -1
    for an empty observation.
    """
    n = len(obs)
    if n == 0:
        return -1
    totals: dict[int, float] = {}
    first: dict[int, int] = {}
    for i in range(n):
        a = int(obs.answers[i])
        if a < 0:
            continue
        w = 1.0 if weights is None else float(weights[i])
        if w != w:  # NaN
            w = 0.0
        if a not in totals:
            totals[a], first[a] = 0.0, i
        totals[a] += w
    if not totals:
        return 0
    best = None
    for a in totals:  # insertion order = order of first appearance
        if best is None or totals[a] > totals[best]:
            best = a
    return first[best]


def top2_votes(answers: np.ndarray) -> tuple[int, int]:
    """Votes of the leading and the runner-up answer (-1 answers do not vote).

    A plain dict count over the Python ints: for the few dozen answers of one online decision this is
    several times cheaper than ``np.unique(..., return_counts=True)`` (benchmarks/bench_stopping.py)."""
    counts: dict[int, int] = {}
    for a in np.asarray(answers).tolist():
        if a >= 0:
            counts[a] = counts.get(a, 0) + 1
    v1 = v2 = 0
    for c in counts.values():
        if c > v1:
            v1, v2 = c, v1
        elif c > v2:
            v2 = c
    return v1, v2


def asc_confidence(v1: Any, v2: Any) -> np.ndarray:
    """Adaptive-Consistency confidence ``P(p1 > 1/2)``, ``p1 ~ Beta(v1 + 1, v2 + 1)``.

    Closed form ``1 - I_{1/2}(v1 + 1, v2 + 1) = I_{1/2}(v2 + 1, v1 + 1)`` (regularized incomplete beta).
    E.g. 4 agreeing votes: ``1 - 2**-5 = 0.969``; votes (4, 1): ``1 - 7/64 = 0.891``.
    """
    from scipy.special import betainc

    v1 = np.asarray(v1, dtype=np.float64)
    v2 = np.asarray(v2, dtype=np.float64)
    return betainc(v2 + 1.0, v1 + 1.0, 0.5)


def check_threshold(value: Any) -> float:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ParameterError("threshold", f"must be a number in (0.5, 1), got {value!r}") from None
    if not 0.5 < t < 1.0:
        raise ParameterError("threshold", f"must lie in (0.5, 1), got {value!r}")
    return t


class SelfConsistency(Policy):
    """Self-Consistency (majority vote) over a fixed number of samples ``n`` (None -> ``n_max``)."""

    key = "sc"
    display = "SC"
    guarantee = GUARANTEE_NONE
    replay_info = False

    def __init__(self, n: int | None = None):
        self.n = check_count("n", n, allow_none=True)

    def params(self) -> dict[str, Any]:
        return {"n": self.n}

    def _target(self, n_max: int) -> int:
        return n_max if self.n is None else min(self.n, n_max)

    def _weights(self, scores: np.ndarray) -> np.ndarray | None:
        return None

    def next_wave(self, obs: Observation, n_max: int) -> int:
        return max(self._target(check_n_max(n_max)) - len(obs), 0)

    def select(self, obs: Observation) -> int:
        return majority(obs, self._weights(obs.scores))

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        n_drawn = np.minimum(effective_budget(batch, n_max), self._target(check_n_max(n_max)))
        return ReplayResult(n_drawn, vote_winner(batch.answers, self._weights(batch.scores), n_drawn), {})


class WeightedSC(SelfConsistency):
    """Score-weighted Self-Consistency: each answer gets the sum of its samples' verifier scores (NaN
    counts 0); the answer with the largest total wins, ties by the answer seen first."""

    key = "wsc"
    display = "WSC"
    guarantee = GUARANTEE_NONE
    needs_scores = True

    def _weights(self, scores: np.ndarray) -> np.ndarray | None:
        return scores


class ESC(Policy):
    """Early-stopping Self-Consistency (Li et al. 2024): draw windows of ``window`` samples and stop
    after the first window whose answers are all the same parsable answer (a window of only -1 answers
    does not count as agreement); otherwise draw the whole budget. Only complete windows are judged; a
    final partial window (budget not a multiple of ``window``) is drawn in full. Select = majority."""

    key = "esc"
    display = "ESC"
    guarantee = GUARANTEE_NONE

    def __init__(self, window: int = 5):
        self.window = check_count("window", window)

    def params(self) -> dict[str, Any]:
        return {"window": self.window}

    def next_wave(self, obs: Observation, n_max: int) -> int:
        n_max = check_n_max(n_max)
        d, w = len(obs), self.window
        if d > 0 and d % w == 0:
            last = obs.answers[d - w : d]
            if last[0] >= 0 and bool(np.all(last == last[0])):
                return 0
        if d >= n_max:
            return 0
        return min(w - d % w, n_max - d)

    def select(self, obs: Observation) -> int:
        return majority(obs)

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        budget = effective_budget(batch, n_max)
        B, M = batch.answers.shape
        w = self.window
        J = M // w
        n_drawn = budget.copy()
        if J > 0:
            win = batch.answers[:, : J * w].reshape(B, J, w)
            agree = (win[:, :, 0] >= 0) & np.all(win == win[:, :, :1], axis=2)
            ends = (np.arange(J) + 1) * w
            agree &= ends[None, :] <= budget[:, None]
            j = first_index(agree, -1)
            n_drawn = np.where(j >= 0, (j + 1) * w, budget)
        info = {"stopped_early": n_drawn < budget}
        return ReplayResult(n_drawn.astype(np.int64), vote_winner(batch.answers, None, n_drawn), info)


class ASC(Policy):
    """Adaptive-Consistency (Aggarwal et al. 2023) with the Beta stopping criterion: draw one sample at
    a time and stop as soon as ``P(p1 > 1/2) = I_{1/2}(v2 + 1, v1 + 1) >= threshold``, where v1 >= v2 are
    the votes of the two leading answers (-1 answers do not vote). With the default 0.95, four agreeing
    votes stop (0.969). Select = majority."""

    key = "asc"
    display = "ASC"
    guarantee = GUARANTEE_NONE

    def __init__(self, threshold: float = 0.95):
        self.threshold = check_threshold(threshold)
        self._lead: list[int] = []   # _lead[v2]: the fewest leader votes v1 that stop, given runner-up v2

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def min_leader_votes(self, v2: int) -> int:
        """The smallest v1 >= max(v2, 1) with ``asc_confidence(v1, v2) >= threshold``.

        The confidence I_{1/2}(v2 + 1, v1 + 1) increases with v1 (to 1), so "stop" is exactly
        ``v1 >= min_leader_votes(v2)``: one online decision is then a vote count and a list lookup, with the
        very same ``asc_confidence`` values the vectorized replay compares (computed once per v2, cached)."""
        while len(self._lead) <= v2:
            u = len(self._lead)
            v1 = max(u, 1, self._lead[-1] if self._lead else 1)   # the bound does not decrease with v2
            while float(asc_confidence(v1, u)) < self.threshold:
                v1 += 1
            self._lead.append(v1)
        return self._lead[v2]

    def next_wave(self, obs: Observation, n_max: int) -> int:
        n_max = check_n_max(n_max)
        n = len(obs.answers)
        if n > 0:
            v1, v2 = top2_votes(obs.answers)
            if v1 >= self.min_leader_votes(v2):
                return 0
        return 1 if n < n_max else 0

    def select(self, obs: Observation) -> int:
        return majority(obs)

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        budget = effective_budget(batch, n_max)
        T = int(budget.max(initial=0))  # columns that can be drawn at all
        v1, v2 = prefix_top2(batch.answers[:, :T])
        stop = asc_confidence(v1, v2) >= self.threshold
        stop &= np.arange(T)[None, :] < budget[:, None]
        t = first_index(stop, -1)
        n_drawn = np.where(t >= 0, t + 1, budget).astype(np.int64)
        info = {"stopped_early": t >= 0}
        return ReplayResult(n_drawn, vote_winner(batch.answers, None, n_drawn), info)
