"""Difficulty-Adaptive Self-Consistency (DSC; Wang et al. 2024, "Make Every Penny Count:
Difficulty-Adaptive Self-Consistency for Cost-Efficient Reasoning", arXiv 2408.13457, NAACL 2025 Findings).

DSC is a *batch* policy: it looks at a whole problem set ranked by difficulty.

1. **Difficulty ranking.** The paper ranks problems with the LLM itself; here the ranking is given
   (``ReplayBatch.difficulty``, higher = harder, or the ``difficulty`` argument of :meth:`DSC.replay`),
   ties broken by row order. Rows are processed per ``ReplayBatch.group`` (one ordering of the samples
   = one independent run of DSC over the problem set).
2. **Problem partition.** A problem is *easy-judged* when its first ``window`` pre-samples already meet
   the Adaptive-Consistency Beta criterion (``I_{1/2}(v2+1, v1+1) >= threshold``; with window 5 and
   0.95 that means five equal answers, or four plus one unparsable). A binary search over the ranking
   finds the longest easy prefix: the midpoint is accepted when it and the ``judge - 1`` problems
   ranked just before it are all easy-judged. Easy-prefix problems are answered with a single sample.
   A second binary search over the rest finds the hard suffix: a problem is *hard-judged* when ASC
   window expansion (checks at window, 2 window, ...) needs at least half of the budget (rounded down to
   whole windows); when the midpoint and the ``judge - 1`` problems ranked just after it are all
   hard-judged, the suffix from the midpoint gets the full budget.
3. **Sample-size pre-allocation.** Each remaining problem, in difficulty order, starts with a first
   wave of ``w0`` samples, ``w0`` = the mean ASC stopping size of the previous ``interp`` such problems
   rounded to a multiple of ``window`` (``window`` when there is no history), then expands by
   ``window`` until the Beta criterion holds or the budget is spent.

Cost accounting: every sample drawn for the pre-sampling and the binary-search judgements is counted in
``n_drawn``, and samples already drawn are reused (a judged problem draws ``max(judgement, its own
allocation)``; an easy problem that was pre-sampled keeps its ``window`` samples and votes on them).

Simplifications with respect to the paper/reference code, on purpose:

* the difficulty ranking is an input (no LLM ranking prompts);
* the easy answer is the first sample of the pool (the reference code uses a separate greedy decode);
* the pre-allocation history uses the stopping sizes of earlier *middle* problems, computed from the
  samples actually drawn (the smallest prefix meeting the criterion), rather than an oracle over all
  samples; the judge windows end (easy search) or start (hard search) at the midpoint, clipped to the
  range searched, where the reference code uses ``[mid - judge//2, mid + judge//2)``;
* selection is the plain majority vote (-1 never wins while a parsable answer exists, ties -> the answer
  seen first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optscale.errors import ParameterError
from optscale.policies._vec import prefix_top2, vote_winner
from optscale.policies.base import (
    GUARANTEE_NONE,
    BatchOnlyError,
    Observation,
    Policy,
    ReplayBatch,
    ReplayResult,
    check_n_max,
    effective_budget,
)
from optscale.policies.bon import check_count
from optscale.policies.consistency import asc_confidence, check_threshold, majority

__all__ = ["DSC", "EASY", "HARD", "MIDDLE"]

EASY, MIDDLE, HARD = 0, 1, 2


class DSC(Policy):
    """Difficulty-Adaptive Self-Consistency (batch-only; see the module docstring for the algorithm).

    ``window``: pre-sample size and expansion step; ``judge``: neighbouring problems that must agree in
    the binary searches; ``interp``: history length of the sample-size pre-allocation; ``threshold``:
    the Adaptive-Consistency Beta criterion.
    """

    key = "dsc"
    display = "DSC"
    guarantee = GUARANTEE_NONE
    batch_only = True

    def __init__(self, window: int = 5, judge: int = 3, interp: int = 5, threshold: float = 0.95):
        self.window = check_count("window", window)
        self.judge = check_count("judge", judge)
        self.interp = check_count("interp", interp)
        self.threshold = check_threshold(threshold)

    def params(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "judge": self.judge,
            "interp": self.interp,
            "threshold": self.threshold,
        }

    def next_wave(self, obs: Observation, n_max: int) -> int:
        raise BatchOnlyError(
            "dsc (Difficulty-Adaptive Self-Consistency) is a batch policy: it ranks a whole problem set by "
            "difficulty, so it has no per-problem next_wave; use replay() on a ReplayBatch with difficulty"
        )

    def select(self, obs: Observation) -> int:
        return majority(obs)

    def replay(self, batch: ReplayBatch, n_max: int, difficulty: np.ndarray | None = None) -> ReplayResult:
        n_max = check_n_max(n_max)
        if difficulty is None:
            difficulty = batch.difficulty
        if difficulty is None:
            raise ParameterError(
                "difficulty", "dsc needs a difficulty per row (ReplayBatch.difficulty, higher = harder)"
            )
        difficulty = np.asarray(difficulty, dtype=np.float64)
        if difficulty.shape != (batch.size,):
            raise ParameterError("difficulty", f"must have shape ({batch.size},), got {difficulty.shape}")
        if np.isnan(difficulty).any():
            raise ParameterError("difficulty", "contains NaN")

        B = batch.size
        budget = effective_budget(batch, n_max)
        M = int(budget.max(initial=0))  # columns that can be drawn at all
        if M == 0:
            empty = np.zeros(B, dtype=np.int64)
            info = {
                "dsc_class": np.full(B, HARD, dtype=np.int64),
                "w0": empty.copy(),
                "presampled": empty.copy(),
            }
            return ReplayResult(empty, np.full(B, -1, dtype=np.int64), info)
        w = self.window
        # ok[b, t]: the Beta criterion holds after the first t + 1 samples of row b
        v1, v2 = prefix_top2(batch.answers[:, :M])
        ok = asc_confidence(v1, v2) >= self.threshold
        ok &= np.arange(M)[None, :] < budget[:, None]
        # smallest prefix length meeting the criterion (M + 1 if none)
        first_ok = np.where(ok.any(axis=1), ok.argmax(axis=1) + 1, M + 1)
        # window checkpoints (j + 1) * w; nxt[b, j] = first checkpoint index >= j where the criterion holds
        J = M // w
        if J > 0:
            okw = ok[:, w - 1 : J * w : w]
            idx = np.where(okw, np.arange(J)[None, :], J)
            nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
        else:
            nxt = np.zeros((B, 0), dtype=np.int64)

        def expand(b: int, w0: int) -> int:
            """Samples drawn by ASC window expansion starting with w0 (a multiple of w)."""
            cap = int(budget[b])
            j0 = w0 // w - 1
            if w0 >= cap or j0 >= J:
                return cap
            j = int(nxt[b, j0])
            return min((j + 1) * w, cap) if j < J else cap

        p = np.minimum(w, budget)
        easy_judged = (p >= 1) & ok[np.arange(B), np.maximum(p - 1, 0)]

        n_drawn = np.zeros(B, dtype=np.int64)
        klass = np.full(B, MIDDLE, dtype=np.int64)
        w0s = np.zeros(B, dtype=np.int64)
        pre = np.zeros(B, dtype=np.int64)  # samples drawn by the judgements

        for g in np.unique(batch.group):
            rows = np.flatnonzero(batch.group == g)
            order = rows[np.lexsort((rows, difficulty[rows]))]
            L = len(order)
            drawn = {}  # row -> samples drawn so far by judgements

            # easy prefix: binary search on "all judged problems around mid are easy"
            lo, hi = 0, L
            while lo < hi:
                mid = (lo + hi) // 2
                all_easy = True
                for i in range(max(mid - self.judge + 1, 0), mid + 1):
                    b = int(order[i])
                    drawn[b] = max(drawn.get(b, 0), int(p[b]))
                    all_easy &= bool(easy_judged[b])
                if all_easy:
                    lo = mid + 1
                else:
                    hi = mid
            easy_end = lo

            # hard suffix: binary search on "all judged problems around mid need >= half the budget"
            lo, hi = easy_end, L
            while lo < hi:
                mid = (lo + hi) // 2
                all_hard = True
                for i in range(mid, min(mid + self.judge, L)):
                    b = int(order[i])
                    s = expand(b, w)
                    drawn[b] = max(drawn.get(b, 0), s)
                    all_hard &= 2 * s >= (int(budget[b]) // w) * w
                if all_hard:
                    hi = mid
                else:
                    lo = mid + 1
            hard_start = lo

            history: list[int] = []
            for i, b in enumerate(order.tolist()):
                cap = int(budget[b])
                got = drawn.get(b, 0)
                pre[b] = got
                if i < easy_end:
                    klass[b] = EASY
                    n_drawn[b] = min(max(1, got), cap)
                elif i >= hard_start:
                    klass[b] = HARD
                    n_drawn[b] = cap
                else:
                    recent = history[-self.interp :]
                    if recent:
                        w0 = int(np.floor(sum(recent) / len(recent) / w + 0.5)) * w
                        w0 = max(w0, w)
                    else:
                        w0 = w
                    w0s[b] = w0
                    n_drawn[b] = max(expand(b, w0), min(got, cap))
                    history.append(int(first_ok[b]) if first_ok[b] <= n_drawn[b] else cap)

        selected = vote_winner(batch.answers, None, n_drawn)
        info = {"dsc_class": klass, "w0": w0s, "presampled": pre}
        return ReplayResult(n_drawn, selected, info)
