"""Cost-aware stopping (issue #8, item 5): stop when one more wave is worth less than its tokens.

A :class:`GainModel` is learned on calibration problems (rows of a replay batch with known correctness):
over cells (best score so far b, samples drawn n), with b binned at quantiles of the calibration best
scores, it stores

    p_now(b, n)     = P(the Best-of-n pick is correct | best score b after n draws)
    gain_h(b, n)    = E[correct(n + h) - correct(n) | b, n]   for horizons h = 1, 2, 4, ..., M - 1
                      (paired over the calibration rows)

each shrunk towards its bin's pooled value with ``shrink`` pseudo-rows (gains floored at GAIN_FLOOR). It is
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
from optscale.policies._vec import best_score
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

__all__ = ["GainModel", "CostAware", "BudgetAllocation", "GAIN_FLOOR"]

GAIN_FLOOR = 1e-6  #: smallest expected gain of a wave inside the table (accuracy fraction)


class GainModel:
    """Learned P(correct | best score so far, n drawn) and the expected gain of h more samples.

    ``edges`` [E + 1] bin edges of the best score; ``p_now`` [E, N]; ``gain`` [H, E, N] for the horizons
    ``horizons`` [H] (column n - 1 = after n draws); ``wave``: the decision granularity."""

    def __init__(self, edges, p_now, gain, horizons=(1,), wave: int = 1, meta: dict | None = None):
        self.edges = np.asarray(edges, dtype=np.float64)
        self.p_now = np.asarray(p_now, dtype=np.float64)
        self.gain = np.asarray(gain, dtype=np.float64)
        self.horizons = np.asarray(horizons, dtype=np.int64).reshape(-1)
        self.wave = int(wave)
        self.meta = dict(meta or {})
        E = self.edges.size - 1
        if self.gain.ndim == 2:  # a single horizon
            self.gain = self.gain[None]
        if (E < 1 or self.p_now.ndim != 2 or self.p_now.shape[0] != E
                or self.gain.shape != (self.horizons.size, *self.p_now.shape)):
            raise ParameterError("model", f"inconsistent gain table: {E} bins, {self.horizons.size} horizons, "
                                          f"p_now {self.p_now.shape}, gain {self.gain.shape}")
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
    def fit(cls, batch: ReplayBatch, sample_correct: np.ndarray, *, wave: int = 1, bins: int = 16,
            shrink: float = 10.0, horizons: tuple[int, ...] | None = None) -> GainModel:
        """Learn the table from replay rows (samples in draw order) and per-sample correctness
        (bool[B, M], the correctness of each sample's answer). ``horizons``: default 1, 2, 4, ... below M
        and M - 1 (the gain of h more samples is measured with h capped at the row's samples)."""
        wave = check_count("wave", wave)
        B, M = batch.answers.shape
        if B == 0 or M < 2:
            raise ParameterError("calibration", "needs rows with at least 2 samples to learn a gain model")
        if horizons is None:
            horizons = tuple(sorted({*(2**i for i in range(int(math.log2(M - 1)) + 1)), M - 1, wave}))
        H = np.asarray(sorted(set(int(h) for h in horizons if 1 <= h < M)), dtype=np.int64)
        sc = np.asarray(sample_correct, dtype=bool)
        best = np.full((B, M + 1), np.nan)
        corr = np.zeros((B, M + 1), dtype=bool)
        scores = np.where(np.isnan(batch.scores), -np.inf, batch.scores)
        best[:, 1:] = np.maximum.accumulate(scores, axis=1)
        for n in range(1, M + 1):
            pick = best_score(batch.answers, batch.scores, np.minimum(np.full(B, n), batch.n))
            corr[:, n] = (pick >= 0) & sc[np.arange(B), np.maximum(pick, 0)]
        Nt = M - 1  # decisions after n = 1 .. M - 1 draws
        valid = (np.arange(M + 1)[None, :] >= 1) & (np.arange(M + 1)[None, :] < batch.n[:, None])
        b_vals = best[:, 1:M][valid[:, 1:M] & np.isfinite(best[:, 1:M])]
        if b_vals.size == 0:
            raise ParameterError("calibration", "no scored calibration row with a next sample")
        edges = np.unique(np.quantile(b_vals, np.linspace(0, 1, bins + 1)))
        if edges.size < 2:
            edges = np.array([edges[0] - 1e-9, edges[0] + 1e-9])
        edges[0], edges[-1] = -np.inf, np.inf
        E = edges.size - 1
        p_now = np.zeros((E, Nt))
        gain = np.zeros((H.size, E, Nt))
        cnt = np.zeros((E, Nt))
        for n in range(1, Nt + 1):
            rows = valid[:, n] & np.isfinite(best[:, n])
            e = np.clip(np.searchsorted(edges, best[rows, n], side="right") - 1, 0, E - 1)
            cnt[:, n - 1] = np.bincount(e, minlength=E)
            now = corr[rows, n].astype(float)
            p_now[:, n - 1] = np.bincount(e, weights=now, minlength=E)
            for i, h in enumerate(H):
                later = corr[np.flatnonzero(rows), np.minimum(n + h, batch.n[rows])].astype(float)
                gain[i, :, n - 1] = np.bincount(e, weights=later - now, minlength=E)
        tot = np.maximum(cnt.sum(axis=1, keepdims=True), 1)
        p_now = (p_now + shrink * p_now.sum(axis=1, keepdims=True) / tot) / (cnt + shrink)
        # a cell's mean paired difference is mostly 0 (the pick rarely changes) and noisy: shrink it towards
        # its bin's pooled gain (over n) and floor it at GAIN_FLOOR, so that a high enough exchange rate
        # always continues (up to the budget) instead of stopping on a noisy non-positive cell
        pool_g = np.maximum(gain.sum(axis=2, keepdims=True) / tot[None], 0.0)
        gain = np.maximum((gain + shrink * pool_g) / (cnt[None] + shrink), GAIN_FLOOR)
        return cls(edges, p_now, gain, H, wave, {"rows": int(B), "bins": int(E), "shrink": float(shrink)})

    # ----- lookup -------------------------------------------------------------------------------------
    def lookup(self, best: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(p_now [R], gain [H, R]) at best score ``best`` after ``n`` draws (gain 0 beyond the table)."""
        best = np.asarray(best, dtype=np.float64)
        n = np.asarray(n, dtype=np.int64)
        e = np.clip(np.searchsorted(self.edges, np.nan_to_num(best, nan=-np.inf), side="right") - 1, 0,
                    self.edges.size - 2)
        inside = (n >= 1) & (n <= self.n_max)
        col = np.clip(n - 1, 0, self.n_max - 1)
        return (np.where(inside, self.p_now[e, col], np.nan), np.where(inside, self.gain[:, e, col], 0.0))

    def continue_value(self, best, n, left, mean_tokens, tokens_per_point) -> np.ndarray:
        """max over horizons h <= ``left`` of 100 * gain_h * tokens_per_point - h * mean_tokens: the value of
        drawing h more samples at the best horizon; > 0 means continue (one-stage look-ahead over horizons)."""
        _, g = self.lookup(best, n)
        h = self.horizons[:, None].astype(np.float64)
        val = 100.0 * g * np.asarray(tokens_per_point, dtype=np.float64) - h * np.asarray(mean_tokens)
        val = np.where(h <= np.asarray(left)[None, :], val, -np.inf)
        return val.max(axis=0)

    # ----- I/O ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        inner = [None if not math.isfinite(x) else float(x) for x in self.edges[1:-1]]
        return {"kind": "optscale-gain-model", "version": 2, "wave": self.wave, "inner_edges": inner,
                "horizons": self.horizons.tolist(), "p_now": self.p_now.round(6).tolist(),
                "gain": self.gain.round(6).tolist(), "meta": self.meta}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> GainModel:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(str(path), None, None, "file not found") from None
        except json.JSONDecodeError as exc:
            raise InputError(str(path), exc.lineno, None, f"invalid JSON: {exc.msg}") from None
        if not isinstance(d, dict) or d.get("kind") != "optscale-gain-model":
            raise InputError(str(path), None, "kind", "not an optscale gain model (kind 'optscale-gain-model')")
        for f in ("wave", "inner_edges", "horizons", "p_now", "gain"):
            if f not in d:
                raise InputError(str(path), None, f, "missing")
        try:
            edges = np.concatenate([[-np.inf], np.asarray(d["inner_edges"], dtype=float), [np.inf]])
            return cls(edges, d["p_now"], d["gain"], d["horizons"], int(d["wave"]), d.get("meta"))
        except (TypeError, ValueError) as exc:
            raise InputError(str(path), None, "gain", str(exc)) from None


def _resolve_model(model) -> GainModel:
    if isinstance(model, GainModel):
        return model
    if isinstance(model, tuple) and all(isinstance(x, (str, int, float)) for x in model):
        model = "/".join(str(x) for x in model)  # the spec parser splits "a/b" values into tuples
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
    scores = np.where(np.isnan(batch.scores), -np.inf, batch.scores)
    best = np.maximum.accumulate(scores, axis=1) if M else scores
    ctok = np.cumsum(np.nan_to_num(batch.tokens), axis=1) if M else batch.tokens
    n_drawn = budget.copy()
    by_rule = np.zeros(B, dtype=bool)
    active = budget > k  # rows with budget <= k end with their budget
    n_drawn[~active] = budget[~active]
    c = k
    while active.any():
        rows = np.flatnonzero(active & (budget > c))
        if rows.size:
            val = model.continue_value(best[rows, c - 1], np.full(rows.size, c), np.full(rows.size, n_max - c),
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

    def __init__(self, tokens_per_point: float = 100.0, k: int = 1, model: Any = None):
        self.tokens_per_point = check_positive("tokens_per_point", tokens_per_point)
        self.k = check_count("k", k)
        self._model_arg = model
        self.model = None if model is None else _resolve_model(model)

    def params(self) -> dict[str, Any]:
        arg = self._model_arg
        if isinstance(arg, tuple):
            arg = "/".join(str(x) for x in arg)
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
        sc = obs.scores[~np.isnan(obs.scores)]
        best = float(sc.max()) if sc.size else -np.inf
        val = model.continue_value(np.array([best]), np.array([d]), np.array([n_max - d]),
                                   np.array([float(np.nansum(obs.tokens)) / d]), np.array([self.tokens_per_point]))
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
