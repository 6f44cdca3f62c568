"""Cost-aware stopping (issue #8, item 5): stop when one more wave is worth less than its tokens.

A :class:`GainModel` is learned on calibration problems (rows of a replay batch with known correctness):
over cells (best score so far b, samples drawn n), with b binned at quantiles of the calibration best
scores, it stores

    p_now(b, n)     = P(the Best-of-n pick is correct | best score b after n draws)
    gain_h(b, n)    = E[correct(n + h) - correct(n) | b, n]   for horizons h = 1, 2, 4, ..., M - 1
                      (paired over the calibration rows)

each shrunk towards its bin's pooled value with ``shrink`` pseudo-rows (gains floored at GAIN_FLOOR). The
state b is, by default, richer than the best score: (best, mean score, agreement of the drawn answers with
the pick), see FEATURES / DEFAULT_FEATURES and :meth:`GainModel.fit`. It is
a plain JSON file (:meth:`GainModel.save` / :meth:`GainModel.load`) so that ``optscale run`` and the server
can use it.

:class:`CostAware` (``costaware``) draws ``k`` warm-up samples, then after each wave continues iff

    max_{h <= n_max - n}  100 * gain_h(b, n) * tokens_per_point - h * (mean tokens per sample so far)  > 0,

i.e. iff at some horizon the accuracy points more samples are expected to add are worth more tokens than
they are expected to cost, at the user's exchange rate ``tokens_per_point`` (tokens one accuracy point is worth).

:class:`BudgetAllocation` (``budget-alloc``, set-level, batch-only) spreads a fixed token budget over a
whole problem set by expected marginal gain: the rule above with ONE exchange rate per problem set, found
by bisection so that the set spends at most ``per_problem`` x (number of problems) tokens -- the Lagrangian
form of the greedy compute-optimal allocation (every problem keeps sampling while its marginal gain per
token exceeds the common price 1 / tokens_per_point). Selection: Best-of-N.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from optscale.errors import InputError, ParameterError
from optscale.jsonio import read_json
from optscale.policies._vec import best_score, class_reps, prefix_best_score
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
from optscale.policies.bon import best_of, check_count
from optscale.policies.optscale import check_positive

__all__ = ["GainModel", "CostAware", "BudgetAllocation", "GAIN_FLOOR", "FEATURES", "prefix_features",
           "prefix_agreement"]

GAIN_FLOOR = 1e-6  #: smallest expected gain of a wave inside the table (accuracy fraction)

#: state features of the gain model, each a function of the scores drawn so far (NaN scores ignored):
#: best = the highest score; mean = the mean score (the problem's location); gap = best - mean (the best's
#: standing above the others); margin = best - second best; sd = the scores' standard deviation;
#: z = gap / sd (the best's standard score under the drawn scores' moments; 0 when sd = 0);
#: agree = the share of the drawn samples whose answer is the Best-of-n pick's (0 when the pick has none):
#: the answers' agreement with the verifier's choice, a correctness signal the scores alone do not carry
FEATURES = ("best", "mean", "gap", "margin", "sd", "z", "agree")
#: the state of GainModel.fit unless told otherwise (v2 models: ("best",)); chosen by
#: benchmarks/bench_gain_state.py (best, mean -> best, mean, agree: 0.56x -> 0.51x the paper's tokens at BoN
#: accuracy over 4 pools x 3 seeds, better at every measurable pool and seed)
DEFAULT_FEATURES = ("best", "mean", "agree")
AUGMENT_CELLS = 500_000  #: GainModel.fit: permuted copies only while rows x samples stay below this
GAIN_MODEL_VERSION = 3  #: JSON version written (version 2 files, one feature "best", load unchanged)


def prefix_agreement(answers: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """float64 [B, M]: after each prefix (column n - 1 = after n draws), the share of the n drawn samples
    whose answer is that of the Best-of-n pick (:func:`optscale.policies._vec.best_score`'s choice, for
    every prefix at once by :func:`~optscale.policies._vec.prefix_best_score`; 0 when the pick has no
    answer). One pass over the columns, vectorized over rows: a vote count per answer class (indexed by the
    class's first column)."""
    a = np.asarray(answers, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if a.ndim == 1:
        a, s = a[None, :], s[None, :]
    B, M = a.shape
    out = np.zeros((B, M))
    if M == 0:
        return out
    rep = class_reps(a)  # -1 for no answer
    pick_rep = np.take_along_axis(rep, prefix_best_score(a, s), axis=1)  # the pick's class, -1 = none
    count = np.zeros((B, M))
    rows = np.arange(B)
    for j in range(M):
        r = rep[:, j]
        count[rows, np.maximum(r, 0)] += r >= 0
        out[:, j] = np.where(pick_rep[:, j] >= 0, count[rows, np.maximum(pick_rep[:, j], 0)], 0.0) / (j + 1)
    return out


def prefix_features(scores: np.ndarray, features: tuple[str, ...] | list[str],
                    answers: np.ndarray | None = None) -> np.ndarray:
    """float64 [F, B, M]: the state features after each prefix of the rows' scores (column n - 1 = after
    n draws), vectorized over rows with one pass over the columns (cumulative max / sums / second max).

    NaN scores are ignored; a prefix without a scored sample has best -inf and NaN otherwise; ``margin``
    with one scored sample is +inf; ``sd`` is the population standard deviation of the scored samples
    (0 for one sample or all-equal scores; computed around the row's first score, so a location of 30
    with a spread of 1e-4 keeps its digits). The online rule calls this on its one row, so replay and
    the step loop see bit-identical features. ``agree`` needs the rows' ``answers`` (:func:`prefix_agreement`)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        s = s[None, :]
    B, M = s.shape
    ok = ~np.isnan(s)
    out = np.empty((len(features), B, M))
    if M == 0:
        return out
    x = np.where(ok, s, -np.inf)
    best = np.maximum.accumulate(x, axis=1)
    cnt = np.cumsum(ok, axis=1)
    first = np.where(ok.any(axis=1), s[np.arange(B), ok.argmax(axis=1)], 0.0)
    d = np.where(ok, s - first[:, None], 0.0)  # shifted: sums of small numbers (no cancellation)
    s1 = np.cumsum(d, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_d = np.where(cnt > 0, s1 / np.maximum(cnt, 1), np.nan)
        mean = mean_d + first[:, None]
        for i, f in enumerate(features):
            if f == "best":
                out[i] = best
            elif f == "mean":
                out[i] = mean
            elif f == "gap":
                out[i] = np.where(cnt > 0, np.maximum(best - mean, 0.0), np.nan)
            elif f in ("sd", "z"):
                s2 = np.cumsum(d * d, axis=1)
                var = np.where(cnt > 0, s2 / np.maximum(cnt, 1) - mean_d**2, np.nan)
                sd = np.sqrt(np.maximum(var, 0.0))
                if f == "sd":
                    out[i] = sd
                else:
                    gap = np.maximum(best - mean, 0.0)
                    out[i] = np.where(cnt > 0, np.where(sd > 0, gap / np.where(sd > 0, sd, 1.0), 0.0), np.nan)
            elif f == "margin":
                b1 = np.full(B, -np.inf)
                b2 = np.full(B, -np.inf)
                for j in range(M):
                    b2 = np.maximum(b2, np.minimum(b1, x[:, j]))
                    b1 = np.maximum(b1, x[:, j])
                    out[i, :, j] = np.where(np.isfinite(b2), b1 - b2, np.where(np.isfinite(b1), np.inf, np.nan))
            elif f == "agree":
                if answers is None:
                    raise ParameterError("features", "the gain-model feature 'agree' needs the samples' answers")
                out[i] = prefix_agreement(np.asarray(answers).reshape(B, M), s)
            else:
                raise ParameterError("features", f"unknown gain-model feature {f!r} (known: {', '.join(FEATURES)})")
    return out


def _check_features(features) -> tuple[str, ...]:
    if isinstance(features, str):
        features = tuple(f for f in features.replace("+", ",").split(",") if f)
    feats = tuple(str(f) for f in features)
    if not feats or len(set(feats)) != len(feats) or any(f not in FEATURES for f in feats):
        raise ParameterError("features", f"must be distinct names from {', '.join(FEATURES)}, got {features!r}")
    return feats


def _bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Quantile bin edges of the finite ``values`` (outer edges -inf / +inf; one bin if degenerate)."""
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.array([-np.inf, np.inf])
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1)))
    if edges.size < 2:
        edges = np.array([edges[0] - 1e-9, edges[0] + 1e-9])
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def _bin(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index of each value (NaN goes to the first bin, +inf to the last)."""
    return np.clip(np.searchsorted(edges, np.nan_to_num(values, nan=-np.inf, posinf=np.inf), side="right") - 1,
                   0, edges.size - 2)


class GainModel:
    """Learned P(correct | state after n draws) and the expected gain of h more samples.

    The state is the tuple of ``features`` (names from FEATURES, the first the primary one) of the scores
    drawn so far, each binned by ``edges[f]`` (E_f + 1 edges); a cell is their ravelled bin index (the last
    feature fastest), C = prod E_f cells. ``p_now`` [C, N]; ``gain`` [H, C, N] for the horizons
    ``horizons`` [H] (column n - 1 = after n draws); ``wave``: the decision granularity. With the single
    feature ``best`` this is the version-2 model (one bin table of the best score per n)."""

    def __init__(self, edges, p_now, gain, horizons=(1,), wave: int = 1, meta: dict | None = None,
                 features=("best",)):
        self.features = _check_features(features)
        if len(self.features) == 1 and np.ndim(edges) == 1 and not isinstance(edges[0], (list, tuple, np.ndarray)):
            edges = [edges]
        if len(edges) != len(self.features):
            raise ParameterError("model", f"{len(self.features)} features but {len(edges)} edge lists")
        self.edges = [np.asarray(e, dtype=np.float64).reshape(-1) for e in edges]
        self.p_now = np.asarray(p_now, dtype=np.float64)
        self.gain = np.asarray(gain, dtype=np.float64)
        self.horizons = np.asarray(horizons, dtype=np.int64).reshape(-1)
        self.wave = int(wave)
        self.meta = dict(meta or {})
        self.dims = tuple(e.size - 1 for e in self.edges)
        C = int(np.prod(self.dims))
        if self.gain.ndim == 2:  # a single horizon
            self.gain = self.gain[None]
        if (min(self.dims) < 1 or any(np.any(np.diff(e) <= 0) for e in self.edges) or self.p_now.ndim != 2
                or self.p_now.shape[0] != C or self.gain.shape != (self.horizons.size, *self.p_now.shape)):
            raise ParameterError("model", f"inconsistent gain table: {self.dims} bins, {self.horizons.size} "
                                          f"horizons, p_now {self.p_now.shape}, gain {self.gain.shape}")
        if self.horizons.size == 0 or np.any(self.horizons < 1) or np.any(np.diff(self.horizons) <= 0):
            raise ParameterError("model", f"horizons must be increasing integers >= 1, got {self.horizons.tolist()}")
        if not (np.all(np.isfinite(self.p_now)) and np.all(np.isfinite(self.gain))):
            raise ParameterError("model", "gain table has non-finite entries")
        self.tag = "fitted:" + hashlib.sha1(self.to_json().encode()).hexdigest()[:10]

    @property
    def n_max(self) -> int:
        """Largest n the table covers (gain is 0 beyond: no evidence that more samples help)."""
        return self.p_now.shape[1]

    # ----- fit ----------------------------------------------------------------------------------------
    @classmethod
    def fit(cls, batch: ReplayBatch, sample_correct: np.ndarray, *, wave: int = 1, bins: int = 8,
            shrink: float = 10.0, horizons: tuple[int, ...] | None = None, features=None,
            bins2: int = 4, orderings: int = 8, seed: int = 0, smooth: float = 0.5) -> GainModel:
        """Learn the table from replay rows (samples in draw order) and per-sample correctness
        (bool[B, M], the correctness of each sample's answer). ``horizons``: default 1, 2, 4, ... below M
        and M - 1 (the gain of h more samples is measured with h capped at the row's samples).

        ``features`` (default DEFAULT_FEATURES): the state; the primary feature gets ``bins`` quantile
        bins (default 8: with 16 the tables over-fit 60-150 calibration problems, see docs/DESIGN.md),
        every further one ``bins2``. Shrinkage is hierarchical: a primary cell (b, n) is shrunk
        towards its bin's value pooled over n, and a cell of the first j + 1 features towards its parent
        cell of the first j features at the same n, each with ``shrink`` pseudo-rows -- where a finer
        cell has few calibration rows it falls back to the coarser table.

        ``orderings``: the rows are used in this many random draw orders (the given one and ``orderings - 1``
        permutations of each row's samples, seeded by ``seed``; a row's samples are exchangeable), each
        weighing 1 / orderings -- the tables average over orderings instead of following one (at most
        AUGMENT_CELLS rows x samples in all). ``smooth``: each decision n's sums and counts are averaged over
        the decisions n' within n +- smooth * n before shrinkage (gains change slowly with n; one noisy
        column with a non-positive gain would stop every row there). The version-2 fit (one feature, one
        ordering, no smoothing): ``features="best", orderings=1, smooth=0``."""
        wave = check_count("wave", wave)
        feats = _check_features(DEFAULT_FEATURES if features is None else features)
        bins, bins2 = check_count("bins", bins), check_count("bins2", bins2)
        orderings = check_count("orderings", orderings)
        if not (math.isfinite(smooth) and smooth >= 0):
            raise ParameterError("smooth", f"must be a finite number >= 0, got {smooth!r}")
        B, M = batch.answers.shape
        orderings = max(1, min(orderings, AUGMENT_CELLS // max(B * M, 1)))  # memory: rows x samples
        if B == 0 or M < 2:
            raise ParameterError("calibration", "needs rows with at least 2 samples to learn a gain model")
        if horizons is None:
            horizons = tuple(sorted({*(2**i for i in range(int(math.log2(M - 1)) + 1)), M - 1, wave}))
        H = np.asarray(sorted(set(int(h) for h in horizons if 1 <= h < M)), dtype=np.int64)
        answers, scores, n_row = batch.answers, batch.scores, batch.n
        sc = np.asarray(sample_correct, dtype=bool)
        if orderings > 1:  # the rows again in random draw orders (a row's real samples are exchangeable)
            rng = np.random.default_rng(seed)
            key = rng.random((orderings - 1, B, M)) + (np.arange(M)[None, None, :] >= n_row[None, :, None])
            perm = np.concatenate([np.broadcast_to(np.arange(M), (1, B, M)), np.argsort(key, axis=2)])
            perm = perm.reshape(orderings * B, M)
            rep = np.tile(np.arange(B), orderings)
            answers, scores, sc = (np.take_along_axis(x[rep], perm, axis=1) for x in (answers, scores, sc))
            n_row = n_row[rep]
        R = answers.shape[0]
        w_row = 1.0 / orderings  # counts stay in calibration rows (the shrinkage keeps its meaning)
        corr = np.zeros((R, M + 1), dtype=bool)
        fv = prefix_features(scores, feats, answers)  # [F, R, M]
        best = fv[feats.index("best")] if "best" in feats else prefix_features(scores, ("best",))[0]
        # the pick after n draws (capped at the row's samples), for every n at once
        col = np.minimum(np.arange(1, M + 1)[None, :], n_row[:, None]) - 1  # [R, M]; -1: a row without samples
        pick = np.where(col >= 0, np.take_along_axis(prefix_best_score(answers, scores), np.maximum(col, 0), axis=1),
                        -1)
        corr[:, 1:] = (pick >= 0) & np.take_along_axis(sc, np.maximum(pick, 0), axis=1)
        Nt = M - 1  # decisions after n = 1 .. M - 1 draws
        valid = (np.arange(1, M)[None, :] < n_row[:, None]) & np.isfinite(best[:, : M - 1])  # [R, Nt]
        if not valid.any():
            raise ParameterError("calibration", "no scored calibration row with a next sample")
        edges = [_bin_edges(fv[i, :, : M - 1][valid], bins if i == 0 else bins2) for i in range(len(feats))]
        dims = [e.size - 1 for e in edges]
        # per level j (features[: j + 1]): sums and counts per (cell, n)
        sums_p, sums_g, counts = [], [], []
        for j in range(len(feats)):
            C = int(np.prod(dims[: j + 1]))
            sums_p.append(np.zeros((C, Nt)))
            sums_g.append(np.zeros((H.size, C, Nt)))
            counts.append(np.zeros((C, Nt)))
        for n in range(1, Nt + 1):
            rows = np.flatnonzero(valid[:, n - 1])
            idx = [_bin(edges[i], fv[i, rows, n - 1]) for i in range(len(feats))]
            now = corr[rows, n].astype(float)
            diffs = [corr[rows, np.minimum(n + h, n_row[rows])].astype(float) - now for h in H]
            cell = np.zeros(rows.size, dtype=np.int64)
            for j in range(len(feats)):
                cell = cell * dims[j] + idx[j]
                C = counts[j].shape[0]
                counts[j][:, n - 1] = np.bincount(cell, minlength=C) * w_row
                sums_p[j][:, n - 1] = np.bincount(cell, weights=now, minlength=C) * w_row
                for i in range(H.size):
                    sums_g[j][i, :, n - 1] = np.bincount(cell, weights=diffs[i], minlength=C) * w_row
        if smooth > 0:  # each n's sums and counts: their mean over the decisions n' within n +- smooth * n
            half = np.floor(smooth * np.arange(1, Nt + 1)).astype(np.int64)
            lo = np.maximum(np.arange(Nt) - half, 0)
            hi = np.minimum(np.arange(Nt) + half, Nt - 1) + 1

            def _window(a):
                c = np.concatenate([np.zeros((*a.shape[:-1], 1)), np.cumsum(a, axis=-1)], axis=-1)
                return (c[..., hi] - c[..., lo]) / (hi - lo)

            sums_p, sums_g, counts = ([_window(a) for a in x] for x in (sums_p, sums_g, counts))
        # level 0: the primary bin's cell shrunk towards the bin pooled over n. A cell's mean paired difference
        # is mostly 0 (the pick rarely changes) and noisy: shrunk, and floored at GAIN_FLOOR so that a high
        # enough exchange rate always continues (up to the budget) instead of stopping on a noisy cell
        cnt = counts[0]
        tot = np.maximum(cnt.sum(axis=1, keepdims=True), 1)
        p_now = (sums_p[0] + shrink * sums_p[0].sum(axis=1, keepdims=True) / tot) / (cnt + shrink)
        pool_g = np.maximum(sums_g[0].sum(axis=2, keepdims=True) / tot[None], 0.0)
        gain = np.maximum((sums_g[0] + shrink * pool_g) / (cnt[None] + shrink), GAIN_FLOOR)
        for j in range(1, len(feats)):  # finer levels: shrunk towards the parent cell at the same n
            parent = np.repeat(np.arange(p_now.shape[0]), dims[j])
            cnt = counts[j]
            p_now = (sums_p[j] + shrink * p_now[parent]) / (cnt + shrink)
            gain = np.maximum((sums_g[j] + shrink * gain[:, parent]) / (cnt[None] + shrink), GAIN_FLOOR)
        meta = {"rows": int(B), "bins": [int(d) for d in dims], "shrink": float(shrink), "orderings": orderings}
        return cls(edges, p_now, gain, H, wave, meta, feats)

    # ----- lookup -------------------------------------------------------------------------------------
    def cells(self, feats: np.ndarray) -> np.ndarray:
        """Cell index of each state (``feats`` [F, R], or [R] for a one-feature model)."""
        feats = np.asarray(feats, dtype=np.float64)
        if feats.ndim == 1:
            feats = feats[None]
        if feats.shape[0] != len(self.features):
            raise ParameterError("features", f"the model's state has {len(self.features)} features "
                                             f"{self.features}, got {feats.shape[0]}")
        cell = np.zeros(feats.shape[1], dtype=np.int64)
        for e, d, v in zip(self.edges, self.dims, feats, strict=True):
            cell = cell * d + _bin(e, v)
        return cell

    def lookup(self, feats: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_now [R], gain [H, R]) in state ``feats`` ([F, R]; [R] = the best score of a one-feature model)
        after ``n`` draws (gain 0 beyond the table)."""
        n = np.asarray(n, dtype=np.int64)
        e = self.cells(feats)
        inside = (n >= 1) & (n <= self.n_max)
        col = np.clip(n - 1, 0, self.n_max - 1)
        return (np.where(inside, self.p_now[e, col], np.nan), np.where(inside, self.gain[:, e, col], 0.0))

    def continue_value(self, feats, n, left, mean_tokens, tokens_per_point) -> np.ndarray:
        """The value of drawing more samples at the best horizon; > 0 means continue (one-stage look-ahead
        over horizons):

            max over h of  100 * gain_h * tokens_per_point - h_eff * mean_tokens,

        h_eff = min(h, n_max + 1 - n): a horizon past the calibration rows' samples was measured as the gain
        of the samples left in them (and costs those). Horizons with h_eff <= ``left`` (the budget still
        open) count, plus h = ``left`` itself when it falls between two horizons, its gain interpolated
        linearly between theirs -- so that the whole remaining budget is always one of the options."""
        _, g = self.lookup(feats, n)  # [H, R]
        n = np.asarray(n, dtype=np.float64)
        left = np.broadcast_to(np.asarray(left, dtype=np.float64), n.shape)
        h = np.minimum(self.horizons[:, None].astype(np.float64), self.n_max + 1 - n[None, :])  # [H, R]
        tpp = 100.0 * np.asarray(tokens_per_point, dtype=np.float64)
        cost = np.asarray(mean_tokens, dtype=np.float64)
        val = np.where(h <= left[None, :], g * tpp - h * cost, -np.inf)
        # the remaining budget as a horizon: between the last horizon inside it and the first beyond it
        below = (h <= left[None, :]).sum(axis=0)  # horizons h_eff are non-decreasing in the table order
        i_hi = np.minimum(below, h.shape[0] - 1)
        i_lo = np.maximum(below - 1, 0)
        cols = np.arange(h.shape[1])
        h_lo = np.where(below > 0, h[i_lo, cols], 0.0)
        g_lo = np.where(below > 0, g[i_lo, cols], 0.0)
        h_hi, g_hi = h[i_hi, cols], g[i_hi, cols]
        inside = (below < h.shape[0]) & (h_hi > left) & (left > h_lo)
        with np.errstate(invalid="ignore", divide="ignore"):
            g_left = g_lo + (g_hi - g_lo) * (left - h_lo) / np.where(h_hi > h_lo, h_hi - h_lo, 1.0)
        v_left = np.where(inside, g_left * tpp - left * cost, -np.inf)
        return np.maximum(val.max(axis=0), v_left)

    # ----- I/O ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        inner = [[float(x) for x in e[1:-1]] for e in self.edges]
        return {"kind": "optscale-gain-model", "version": GAIN_MODEL_VERSION, "wave": self.wave,
                "features": list(self.features), "inner_edges": inner, "horizons": self.horizons.tolist(),
                "p_now": self.p_now.round(6).tolist(), "gain": self.gain.round(6).tolist(), "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> GainModel:
        """Read a model written by :meth:`save` (version 3; version 2 = one feature ``best``, flat edges)."""
        path = Path(path)
        d = read_json(path)  # the one JSON reader: gzip, binary, deep nesting, huge numbers -> InputError
        if not isinstance(d, dict) or d.get("kind") != "optscale-gain-model":
            raise InputError(str(path), None, "kind", "not an optscale gain model (kind 'optscale-gain-model')")
        version = d.get("version")
        if version not in (1, 2, 3):
            raise InputError(str(path), None, "version", f"unsupported gain model version {version!r} (1, 2 or 3)")
        need = ("wave", "inner_edges", "p_now", "gain") + (("horizons",) if version >= 2 else ()) + (
            ("features",) if version >= 3 else ())
        for f in need:
            if f not in d:
                raise InputError(str(path), None, f, "missing")
        try:
            if version < 3:  # one feature (the best score), flat edges; version 1: the one horizon 1
                feats, inner = ["best"], [d["inner_edges"]]
            else:
                feats, inner = d["features"], d["inner_edges"]
                if not isinstance(inner, list) or not all(isinstance(e, list) for e in inner):
                    raise ValueError("inner_edges must be a list of lists (one per feature)")
            edges = [np.concatenate([[-np.inf], np.asarray(e, dtype=float), [np.inf]]) for e in inner]
            return cls(edges, d["p_now"], d["gain"], d.get("horizons", [1]), int(d["wave"]), d.get("meta"), feats)
        except ParameterError as exc:
            raise InputError(str(path), None, exc.name if exc.name != "model" else "gain", str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise InputError(str(path), None, "gain", str(exc)) from None


def _resolve_model(model) -> GainModel:
    if isinstance(model, GainModel):
        return model
    if isinstance(model, (str, Path)) and not str(model).startswith("fitted:"):
        return GainModel.load(model)
    raise ParameterError("model", "costaware needs a gain model: a GainModel (evaluate fits one on the "
                                  f"calibration split) or the path of one saved with GainModel.save, got {model!r}")


def _costaware_draws(batch: ReplayBatch, n_max: int, k: int, model: GainModel,
                     tpp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n_drawn, stopped_by_rule) per row for per-row exchange rates ``tpp`` (vectorized over rows)."""
    budget = effective_budget(batch, n_max)
    B, M = batch.scores.shape
    k = min(k, n_max)
    wave = model.wave
    feats = prefix_features(batch.scores, model.features, batch.answers)  # [F, B, M]
    ctok = np.cumsum(np.nan_to_num(batch.tokens), axis=1) if M else batch.tokens
    n_drawn = budget.copy()
    by_rule = np.zeros(B, dtype=bool)
    active = budget > k  # rows with budget <= k end with their budget
    n_drawn[~active] = budget[~active]
    c = k
    while active.any():
        rows = np.flatnonzero(active & (budget > c))
        if rows.size:
            val = model.continue_value(feats[:, rows, c - 1], np.full(rows.size, c), np.full(rows.size, n_max - c),
                                       ctok[rows, c - 1] / c, tpp[rows])
            stop = val <= 0
            n_drawn[rows[stop]] = c
            by_rule[rows[stop]] = True
            active[rows[stop]] = False
        active &= budget > c
        c = c + wave
        if c >= n_max:
            break
    return np.minimum(n_drawn, budget), by_rule


class CostAware(Policy):
    """Stop when the expected accuracy gain of one more wave is worth less than its expected tokens."""

    key = "costaware"
    display = "CostAware"
    guarantee = GUARANTEE_NONE
    needs_scores = True
    text_params = ("model",)  # a path: kept as written by the spec parser

    def __init__(self, tokens_per_point: float = 100.0, k: int = 1, model: Any = None):
        self.tokens_per_point = check_positive("tokens_per_point", tokens_per_point)
        self.k = check_count("k", k)
        self._model_arg = model
        self.model = None if model is None else _resolve_model(model)

    def params(self) -> dict[str, Any]:
        arg = self._model_arg
        m = arg if isinstance(arg, (str, Path)) else (self.model.tag if self.model else None)
        return {"tokens_per_point": self.tokens_per_point, "k": self.k, "model": None if m is None else str(m)}

    def _label_params(self) -> dict[str, Any]:
        return {"tokens_per_point": self.tokens_per_point, "k": self.k}

    def _need_model(self) -> GainModel:
        if self.model is None:
            raise ParameterError("model", "costaware needs a gain model (model=PATH, or evaluate's calibration fit)")
        return self.model

    def next_wave(self, obs: Observation, n_max: int) -> int:
        n_max = check_n_max(n_max)
        model = self._need_model()
        d = len(obs)
        k = min(self.k, n_max)
        if d < k:
            return k - d
        if d >= n_max:
            return 0
        # the same prefix features and cumulative tokens as replay (bit-identical decisions)
        feats = prefix_features(obs.scores[None, :], model.features, obs.answers[None, :])[:, :, d - 1]  # [F, 1]
        mean_tok = np.cumsum(np.nan_to_num(obs.tokens))[d - 1] / d
        val = model.continue_value(feats, np.array([d]), np.array([n_max - d]), np.array([mean_tok]),
                                   np.array([self.tokens_per_point]))
        if float(val[0]) <= 0:
            return 0
        return min(model.wave, n_max - d)

    def select(self, obs: Observation) -> int:
        return best_of(obs)

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        n_max = check_n_max(n_max)
        model = self._need_model()
        nd, by_rule = _costaware_draws(batch, n_max, self.k, model, np.full(batch.size, self.tokens_per_point))
        return ReplayResult(nd, best_score(batch.answers, batch.scores, nd), {"stopped_by_rule": by_rule})


class BudgetAllocation(CostAware):
    """Set-level: one exchange rate per problem set (per ``group`` of a replay batch), the largest whose
    cost-aware stopping spends at most ``per_problem`` tokens per problem on average (bisection on
    log tokens_per_point). Batch-only: it needs the whole set at once."""

    key = "budget-alloc"
    display = "BudgetAlloc"
    guarantee = GUARANTEE_NONE
    batch_only = True

    def __init__(self, per_problem: float = 1000.0, k: int = 1, model: Any = None):
        super().__init__(1.0, k, model)
        self.per_problem = check_positive("per_problem", per_problem)

    def params(self) -> dict[str, Any]:
        p = super().params()
        p.pop("tokens_per_point")
        return {"per_problem": self.per_problem, **p}

    def _label_params(self) -> dict[str, Any]:
        return {"per_problem": self.per_problem, "k": self.k}

    def next_wave(self, obs: Observation, n_max: int) -> int:
        raise BatchOnlyError("budget-alloc spreads a budget over a whole problem set: replay only "
                             "(online, use costaware with the exchange rate it found)")

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        n_max = check_n_max(n_max)
        model = self._need_model()
        groups, g_idx = np.unique(batch.group, return_inverse=True)
        G = groups.size
        allowed = self.per_problem * np.bincount(g_idx, minlength=G)
        ctok = np.concatenate([np.zeros((batch.size, 1)), np.cumsum(np.nan_to_num(batch.tokens), axis=1)], axis=1)
        lo = np.full(G, -3.0)  # log10 tokens_per_point
        hi = np.full(G, 9.0)

        def spent(log_t):
            nd, _ = _costaware_draws(batch, n_max, self.k, model, 10.0 ** log_t[g_idx])
            return np.bincount(g_idx, weights=ctok[np.arange(batch.size), nd], minlength=G), nd

        for _ in range(40):
            mid = 0.5 * (lo + hi)
            s, _ = spent(mid)
            ok = s <= allowed
            lo = np.where(ok, mid, lo)
            hi = np.where(ok, hi, mid)
        _, nd = spent(lo)
        return ReplayResult(nd, best_score(batch.answers, batch.scores, nd),
                            {"tokens_per_point": 10.0 ** lo[g_idx]})
