"""OptScale (Wang et al., "OptScale: Probabilistic Optimality for Inference-time Scaling", arXiv 2506.22376).

Verifier scores of i.i.d. samples follow F = Normal(mu, sigma^2) truncated to [0, 1]. Best-of-N reaches
the target score s* with probability ``1 - F(s*)^N``; asking for at least ``1 - alpha`` gives the bound

    N* = ceil( ln(alpha) / ln F(s*) ),   clipped to [1, n_max]           (:func:`optscale.theory.n_star`)

* OptScale^0 (:class:`OptScale0`) estimates (mu, sigma) by maximum likelihood on ``k`` warm-up scores
  (:func:`optscale.theory.fit_mle`).
* OptScale^t (:class:`OptScaleT`) uses maximum a-posteriori estimates with Gaussian priors
  ``mu ~ N(mu0, sd_mu^2)``, ``sigma ~ N(sigma0, sd_sigma^2)`` per problem (the prior predictor's output;
  :func:`optscale.theory.fit_map`). With ``k = 0`` the prior mode (mu0, sigma0) alone decides.

Modes: ``one-shot`` (the paper) decides once after the warm-up and draws up to ``max(N*, k)`` (capped at
``n_max``) in one more wave; ``sequential`` refits on everything drawn after each wave of ``wave``
samples and stops once ``drawn >= N*`` of the current fit (or the budget is spent). Samples with a NaN
score are left out of the fit; if no scored sample is available, OptScale^0 falls back to ``n_max``
(nothing to estimate from) and OptScale^t to the prior mode. Selection is the Best-of-N rule
(:func:`optscale.policies.bon.best_of`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from optscale.errors import ParameterError
from optscale.policies._vec import best_score
from optscale.policies.base import (
    GUARANTEE_PLUGIN,
    Observation,
    Policy,
    ReplayBatch,
    ReplayResult,
    check_n_max,
    effective_budget,
)
from optscale.policies.bon import best_of, check_count

__all__ = ["OptScale0", "OptScaleT"]

MODES = ("one-shot", "sequential")


def _check_prob(name: str, value: Any, *, closed_low: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be a number in (0, 1), got {value!r}") from None
    ok = (0.0 <= v < 1.0) if closed_low else (0.0 < v < 1.0)
    if not ok or math.isnan(v):
        raise ParameterError(name, f"must lie in {'[0' if closed_low else '(0'}, 1), got {value!r}")
    return v


def _check_positive(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be a positive number, got {value!r}") from None
    if not (v > 0.0 and math.isfinite(v)):
        raise ParameterError(name, f"must be a positive finite number, got {value!r}")
    return v


class _OptScale(Policy):
    needs_scores = True
    base_key = "optscale"
    default_k = 4
    min_k = 1

    def __init__(self, target: float, alpha: float, k: int, mode: str, wave: int, early_stop: bool = False):
        self.target = _check_prob("target", target)
        self.alpha = _check_prob("alpha", alpha)
        self.k = check_count("k", k, minimum=self.min_k)
        if mode not in MODES:
            raise ParameterError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self.wave = check_count("wave", wave)
        if not isinstance(early_stop, (bool, np.bool_)):
            raise ParameterError("early_stop", f"must be true or false, got {early_stop!r}")
        self.early_stop = bool(early_stop)

    # --- naming -------------------------------------------------------------------------------------
    @property
    def key(self) -> str:  # type: ignore[override]
        return self.base_key + ("-seq" if self.mode == "sequential" else "")

    def params(self) -> dict[str, Any]:
        p: dict[str, Any] = {"target": self.target, "alpha": self.alpha, "k": self.k}
        if self.mode == "sequential":
            p["wave"] = self.wave
        if self.early_stop:
            p["early_stop"] = True
        return p

    @property
    def label(self) -> str:
        seq = ", seq" + (f" w={self.wave}" if self.wave != 1 else "") if self.mode == "sequential" else ""
        stop = ", stop at s*" if self.early_stop else ""
        return f"{self.display}(s*={self.target!r}, α={self.alpha!r}, k={self.k}{seq}{stop})"

    # --- estimation (subclasses) --------------------------------------------------------------------
    def fit_scores(
        self, scores: np.ndarray, mask: np.ndarray, priors: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _obs_prior(self, obs: Observation) -> np.ndarray | None:
        return None

    def batch_priors(self, batch: ReplayBatch) -> np.ndarray | None:
        return None

    def _n_star(self, scores: np.ndarray, priors: np.ndarray | None, n_max: int) -> dict[str, np.ndarray]:
        """N* from the fit on ``scores`` [R, W] (NaN = left out); returns n_star, mu, sigma per row."""
        from optscale import theory

        mask = ~np.isnan(scores)
        mu, sigma = self.fit_scores(np.where(mask, scores, 0.0), mask, priors)
        ok = np.isfinite(mu) & np.isfinite(sigma)
        ns = np.full(scores.shape[0], n_max, dtype=np.int64)
        if ok.any():
            ns[ok] = theory.n_star(mu[ok], sigma[ok], self.target, self.alpha, n_max).n
        return {"n_star": ns, "mu": mu, "sigma": sigma}

    # --- step-by-step -------------------------------------------------------------------------------
    @property
    def stop_early(self):
        """The ``stop_early(obs)`` hook when ``early_stop`` is on (else None, so that loops skip it): target
        reached = stop (issue #8 item 2): a drawn score >= s* already meets the goal the bound is about,
        whatever N* says; the online loop asks it after every sample, also inside a wave."""
        return self.target_reached if self.early_stop else None

    def target_reached(self, obs: Observation) -> bool:
        """A drawn score is >= s*."""
        return bool(np.any(obs.scores >= self.target))

    def next_wave(self, obs: Observation, n_max: int) -> int:
        n_max = check_n_max(n_max)
        if self.early_stop and self.target_reached(obs):
            return 0
        d = len(obs)
        k = min(self.k, n_max)
        if d < k:
            return k - d
        prior = self._obs_prior(obs)
        priors = None if prior is None else prior[None, :]
        if self.mode == "one-shot":
            ns = int(self._n_star(obs.scores[None, :k], priors, n_max)["n_star"][0])
            return max(min(max(ns, k), n_max) - d, 0)
        if d >= n_max:
            return 0
        ns = int(self._n_star(obs.scores[None, :d], priors, n_max)["n_star"][0])
        return 0 if d >= ns else min(self.wave, n_max - d)

    def select(self, obs: Observation) -> int:
        return best_of(obs)

    # --- vectorized ---------------------------------------------------------------------------------
    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        n_max = check_n_max(n_max)
        budget = effective_budget(batch, n_max)
        priors = self.batch_priors(batch)
        B = batch.size
        k = min(self.k, n_max)
        n_drawn = budget.copy()
        info = {
            "mu": np.full(B, np.nan),
            "sigma": np.full(B, np.nan),
            "n_star": np.full(B, -1, dtype=np.int64),
        }

        def decide(rows: np.ndarray, width: int) -> np.ndarray:
            res = self._n_star(batch.scores[rows, :width], None if priors is None else priors[rows], n_max)
            for key_, val in res.items():
                info[key_][rows] = val
            return res["n_star"]

        if self.mode == "one-shot":
            rows = np.flatnonzero(budget >= k)
            if rows.size:
                ns = decide(rows, k)
                n_drawn[rows] = np.minimum(np.minimum(np.maximum(ns, k), n_max), budget[rows])
        else:
            # checkpoints k, k + wave, k + 2 wave, ... (capped at n_max): refit the rows still sampling
            # (one batched fit per checkpoint), stop the first time drawn >= N*(drawn) or drawn = n_max;
            # a row whose next checkpoint exceeds its available samples ends with all of them.
            active = budget >= k
            c = k
            while active.any():
                rows = np.flatnonzero(active & (budget >= c))
                if rows.size:
                    ns = decide(rows, c)
                    stop = (c >= ns) | (c >= n_max)
                    n_drawn[rows[stop]] = c
                    active[rows[stop]] = False
                active &= budget > c  # rows with budget == c (or < c) end with their budget
                if c >= n_max:
                    break
                c = min(c + self.wave, n_max)
        if self.early_stop:
            n_drawn = np.minimum(n_drawn, target_hit(batch, self.target, budget) + 1)
        selected = best_score(batch.answers, batch.scores, n_drawn)
        return ReplayResult(n_drawn.astype(np.int64), selected, info)


def target_hit(batch: ReplayBatch, target, budget: np.ndarray) -> np.ndarray:
    """int64[..., B]: first draw position whose score is >= ``target`` (scalar or [T, 1]) within the row's
    ``budget``, else a large number (no hit)."""
    cols = np.arange(batch.scores.shape[1])
    with np.errstate(invalid="ignore"):
        hit = (batch.scores >= np.asarray(target, dtype=np.float64)[..., None]) & (cols < budget[:, None])
    big = np.iinfo(np.int64).max // 4
    return np.where(hit.any(axis=-1), hit.argmax(axis=-1), big).astype(np.int64)


class OptScale0(_OptScale):
    """OptScale^0: MLE of (mu, sigma) on ``k`` warm-up scores, then Best-of-N* with
    ``N* = ceil(ln alpha / ln F(target))`` (total draws ``max(N*, k)``, capped at ``n_max``).
    ``mode="sequential"`` refits after each ``wave`` samples and stops when drawn >= N*."""

    base_key = "optscale0"
    display = "OptScale0"
    guarantee = GUARANTEE_PLUGIN

    def __init__(
        self, target: float = 0.95, alpha: float = 0.05, k: int = 4, mode: str = "one-shot", wave: int = 1,
        early_stop: bool = False,
    ):
        super().__init__(target, alpha, k, mode, wave, early_stop)

    def fit_scores(self, scores, mask, priors):
        from optscale import theory

        count = mask.sum(axis=1)
        mu = np.full(scores.shape[0], np.nan)
        sigma = np.full(scores.shape[0], np.nan)
        rows = count > 0
        if rows.any():
            fit = theory.fit_mle(scores[rows], mask[rows])
            mu[rows], sigma[rows] = fit.mu, fit.sigma
        return mu, sigma


class OptScaleT(_OptScale):
    """OptScale^t: MAP estimate of (mu, sigma) with per-problem Gaussian priors
    ``N(mu0, sd_mu^2)``, ``N(sigma0, sd_sigma^2)`` on ``k`` warm-up scores, then Best-of-N*.

    Priors come from ``Observation.prior`` / ``ReplayBatch.priors`` (the predictor); ``prior=(mu0,
    sigma0)`` is a constant fallback used where none is given, with ``sd_mu``/``sd_sigma``.
    """

    base_key = "optscalet"
    display = "OptScaleT"
    guarantee = GUARANTEE_PLUGIN
    min_k = 0
    needs_prior = True

    def __init__(
        self,
        target: float = 0.95,
        alpha: float = 0.05,
        k: int = 4,
        mode: str = "one-shot",
        wave: int = 1,
        prior: tuple[float, float] | None = None,
        sd_mu: float = 0.1,
        sd_sigma: float = 0.1,
        early_stop: bool = False,
    ):
        super().__init__(target, alpha, k, mode, wave, early_stop)
        self.sd_mu = _check_positive("sd_mu", sd_mu)
        self.sd_sigma = _check_positive("sd_sigma", sd_sigma)
        if prior is not None:
            try:
                mu0, sigma0 = (float(x) for x in prior)
            except (TypeError, ValueError):
                raise ParameterError("prior", f"must be (mu0, sigma0), got {prior!r}") from None
            if not math.isfinite(mu0):
                raise ParameterError("prior", f"mu0 must be finite, got {mu0!r}")
            _check_positive("prior", sigma0)
            prior = (mu0, sigma0)
        self.prior = prior

    def params(self) -> dict[str, Any]:
        p = super().params()
        if self.prior is not None:
            p["prior"] = self.prior
            p["sd_mu"] = self.sd_mu
            p["sd_sigma"] = self.sd_sigma
        return p

    def _fallback(self) -> np.ndarray:
        if self.prior is None:
            raise ParameterError(
                "prior",
                "optscalet needs a per-problem prior (mu0, sigma0, sd_mu, sd_sigma): give Observation.prior /"
                " ReplayBatch.priors (e.g. from the prior predictor) or a constant prior=(mu0, sigma0)",
            )
        return np.array([self.prior[0], self.prior[1], self.sd_mu, self.sd_sigma])

    def _obs_prior(self, obs: Observation) -> np.ndarray:
        if obs.prior is not None and all(math.isfinite(x) for x in obs.prior):
            return np.asarray(obs.prior, dtype=np.float64)
        return self._fallback()

    def batch_priors(self, batch: ReplayBatch) -> np.ndarray:
        if batch.priors is None:
            return np.broadcast_to(self._fallback(), (batch.size, 4)).copy()
        priors = batch.priors.copy()
        bad = ~np.all(np.isfinite(priors), axis=1)
        if bad.any():
            priors[bad] = self._fallback()
        return priors

    def fit_scores(self, scores, mask, priors):
        from optscale import theory

        if priors is None:  # pragma: no cover - callers always resolve priors
            raise ParameterError("prior", "optscalet needs priors")
        count = mask.sum(axis=1)
        mu = priors[:, 0].astype(np.float64).copy()  # no scored sample: the prior mode
        sigma = priors[:, 1].astype(np.float64).copy()
        rows = count > 0
        if rows.any():
            p = priors[rows]
            fit = theory.fit_map(
                scores[rows], mask[rows], mu0=p[:, 0], sigma0=p[:, 1], sd_mu=p[:, 2], sd_sigma=p[:, 3]
            )
            mu[rows], sigma[rows] = fit.mu, fit.sigma
        return mu, sigma


#: public names of the shared OptScale machinery, for rules built on it (policies.bayes)
OptScaleRule = _OptScale
check_positive = _check_positive
