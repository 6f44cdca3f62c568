"""Vectorized building blocks shared by the policies' ``replay`` (numpy only, no loop over samples).

All functions take ``[B, M]`` arrays in draw order. Answer class ids are compared within a row only;
``-1`` (no answer / unparsable) never forms a class.
"""

from __future__ import annotations

import numpy as np


def first_index(mask: np.ndarray, default: np.ndarray | int) -> np.ndarray:
    """Per row, the first column where ``mask`` is True, else ``default``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.shape[1] == 0:
        return np.broadcast_to(np.asarray(default, dtype=np.int64), mask.shape[:1]).copy()
    hit = mask.any(axis=1)
    return np.where(hit, mask.argmax(axis=1), default).astype(np.int64)


def class_reps(answers: np.ndarray) -> np.ndarray:
    """For each sample, the column of the first sample in its row with the same answer (-1 for -1).

    The first occurrence in the whole row is also the first occurrence in every prefix that contains
    the sample, so one call serves all prefixes.
    """
    answers = np.asarray(answers, dtype=np.int64)
    B, M = answers.shape
    if M == 0:
        return np.full((B, 0), -1, dtype=np.int64)
    order = np.argsort(answers, axis=1, kind="stable")
    srt = np.take_along_axis(answers, order, axis=1)
    start = np.ones((B, M), dtype=bool)
    start[:, 1:] = srt[:, 1:] != srt[:, :-1]
    run_start = np.maximum.accumulate(np.where(start, np.arange(M)[None, :], 0), axis=1)
    rep_sorted = np.take_along_axis(order, run_start, axis=1)  # stable sort: smallest index first
    rep = np.empty_like(rep_sorted)
    np.put_along_axis(rep, order, rep_sorted, axis=1)
    return np.where(answers >= 0, rep, -1)


def vote_winner(answers: np.ndarray, weights: np.ndarray | None, n_drawn: np.ndarray) -> np.ndarray:
    """Weighted plurality vote over the first ``n_drawn[b]`` samples of each row.

    Returns the column of the first sample of the winning answer. Ties go to the answer seen first;
    ``-1`` answers never win unless every drawn answer is ``-1`` (then column 0 is returned);
    rows with ``n_drawn == 0`` give -1. ``weights`` None = one vote per sample; NaN weights count 0.
    """
    answers = np.asarray(answers, dtype=np.int64)
    B, M = answers.shape
    n_drawn = np.asarray(n_drawn, dtype=np.int64)
    if M == 0:
        return np.full(B, -1, dtype=np.int64)
    rep = class_reps(answers)
    cols = np.arange(M)[None, :]
    valid = (rep >= 0) & (cols < n_drawn[:, None])
    if weights is None:
        w = np.ones((B, M))
    else:
        w = np.nan_to_num(np.asarray(weights, dtype=np.float64), nan=0.0)
    rows = np.broadcast_to(np.arange(B)[:, None], (B, M))
    totals = np.bincount(
        (rows * M + np.where(valid, rep, 0))[valid], weights=w[valid], minlength=B * M
    ).reshape(B, M)
    is_rep = valid & (rep == cols)
    key = np.where(is_rep, totals, -np.inf)
    winner = key.argmax(axis=1)  # first maximum = class seen first
    has = is_rep.any(axis=1)
    return np.where(has, winner, np.where(n_drawn > 0, 0, -1)).astype(np.int64)


def best_score(answers: np.ndarray, scores: np.ndarray, n_drawn: np.ndarray) -> np.ndarray:
    """Best-of-N selection over the first ``n_drawn[b]`` samples.

    The highest score wins; answers -1 never win while a parsable answer was drawn; NaN scores never
    win while a non-NaN candidate exists; ties go to the first drawn. Rows with ``n_drawn == 0`` give -1.
    """
    answers = np.asarray(answers, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    B, M = answers.shape
    n_drawn = np.asarray(n_drawn, dtype=np.int64)
    if M == 0:
        return np.full(B, -1, dtype=np.int64)
    drawn = np.arange(M)[None, :] < n_drawn[:, None]
    parsable = drawn & (answers >= 0)
    cand = np.where(parsable.any(axis=1)[:, None], parsable, drawn)
    scored = cand & ~np.isnan(scores)
    key = np.where(scored, scores, -np.inf)
    best = key.argmax(axis=1)
    # a candidate whose score is -inf still beats the non-candidates: fall back to the first scored one
    best = np.where(np.take_along_axis(scored, best[:, None], axis=1)[:, 0], best, first_index(scored, -1))
    best = np.where(scored.any(axis=1), best, first_index(cand, -1))
    return best.astype(np.int64)


def _running_first_argmax(key: np.ndarray) -> np.ndarray:
    """Per row and prefix, the column of the first maximum of ``key`` so far (-1 while every key is -inf)."""
    B, M = key.shape
    prev = np.concatenate([np.full((B, 1), -np.inf), np.maximum.accumulate(key, axis=1)[:, :-1]], axis=1)
    return np.maximum.accumulate(np.where(key > prev, np.arange(M)[None, :], -1), axis=1)


def prefix_best_score(answers: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """int64 [B, M]: column n - 1 = ``best_score(answers, scores, n)`` for every prefix length n at once.

    The same rule, vectorized over rows and prefixes: among the parsable samples drawn so far (all drawn
    samples while none is parsable), the first with the highest non-NaN score -- the first scored one when
    every score is -inf -- else the first candidate."""
    answers = np.asarray(answers, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    B, M = answers.shape
    if M == 0:
        return np.zeros((B, 0), dtype=np.int64)
    cols = np.arange(M)[None, :]
    parsable = answers >= 0
    scored = ~np.isnan(scores)
    first_par = first_index(parsable, M)[:, None]  # while n <= first_par the candidates are all drawn samples
    out = np.zeros((B, M), dtype=np.int64)  # no parsable, nothing scored: the first drawn (column 0)
    for cand, in_tier in ((parsable, first_par <= cols), (np.ones_like(parsable), first_par > cols)):
        ok = cand & scored
        run = _running_first_argmax(np.where(ok, scores, -np.inf))
        first_ok = first_index(ok, M)[:, None]
        first_cand = first_index(cand, M)[:, None]
        pick = np.where(run >= 0, run, np.where(first_ok <= cols, first_ok, first_cand))
        out = np.where(in_tier, pick, out)
    return out


def prefix_top2(answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vote counts of the leading and the runner-up answer after each prefix.

    Returns ``(v1, v2)``, int64 [B, M]: after drawing columns ``0..t`` of row b, the largest and the
    second largest number of votes held by one answer (answers -1 do not vote). One pass over the
    columns, vectorized over rows: a new vote for answer c (now x votes) either raises the leader
    (c leads), takes the lead (x > v1: the old leader becomes the runner-up) or raises the runner-up.
    """
    answers = np.asarray(answers, dtype=np.int64)
    B, M = answers.shape
    v1 = np.zeros((B, M), dtype=np.int64)
    v2 = np.zeros((B, M), dtype=np.int64)
    if B == 0 or M == 0:
        return v1, v2
    rep = class_reps(answers)
    counts = np.zeros((B, M), dtype=np.int64)
    lead = np.full(B, -1, dtype=np.int64)
    top1 = np.zeros(B, dtype=np.int64)
    top2 = np.zeros(B, dtype=np.int64)
    for t in range(M):
        c = rep[:, t]
        rows = np.flatnonzero(c >= 0)
        if rows.size:
            cv = c[rows]
            counts[rows, cv] += 1
            x = counts[rows, cv]
            old1, old2 = top1[rows], top2[rows]
            is_lead = cv == lead[rows]
            takes = ~is_lead & (x > old1)
            top1[rows] = np.where(is_lead | takes, x, old1)
            top2[rows] = np.where(is_lead, old2, np.where(takes, old1, np.maximum(old2, x)))
            lead[rows] = np.where(takes, cv, lead[rows])
        v1[:, t] = top1
        v2[:, t] = top2
    return v1, v2
