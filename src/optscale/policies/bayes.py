"""Uncertainty-aware OptScale (issue #8, items 2-4): N from the posterior predictive, any score model.

The paper plugs a point estimate of the score law into N* = ceil(ln alpha / ln F(s*)). This rule asks the
guarantee of the posterior predictive instead (:mod:`optscale.theory_models`):

    N = min { N <= n_max : P(best of N >= s* | warm-up scores [, prior]) >= 1 - alpha }
      = min { N : E_{theta | x}[F_theta(s*)^N] <= alpha },

under a truncated normal (``model="tn"``, the paper's law), a Beta law (``"beta"``) or the model-free
exceedance model (``"exc"``: only p = P(score >= s*) with a Beta prior; closed form
1 - B(a + j, b + k - j + N) / B(a + j, b + k - j)). With ``prior=True`` the per-problem predictor priors
(mu0, sigma0, sd_mu, sd_sigma) enter the posterior (OptScale^t's information): Gaussian priors on
(mu, sigma) for ``tn``; (a0, b0) = strength * (p0, 1 - p0), p0 = P_{TN(mu0, sigma0)}(score >= s*), for
``exc`` (``beta`` ignores them).

Stopping: ``early_stop`` (default on) stops as soon as a drawn score reaches s* (the goal is met,
:meth:`stop_early`); ``mode`` one-shot (decide once after the ``k`` warm-up draws) or sequential
(re-decide after each ``wave`` on everything drawn). Selection: Best-of-N.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from optscale.errors import ParameterError
from optscale.policies.base import GUARANTEE_POSTERIOR, Observation, ReplayBatch
from optscale.policies.optscale import OptScaleRule, check_positive

__all__ = ["PosteriorOptScale"]


class PosteriorOptScale(OptScaleRule):
    """Best-of-N with N from the posterior predictive of a score model (see module docstring)."""

    base_key = "optscale-post"
    display = "OptScalePost"
    guarantee = GUARANTEE_POSTERIOR
    min_k = 1

    def __init__(self, target: float = 0.9, alpha: float = 0.1, k: int = 4, mode: str = "one-shot",
                 wave: int = 1, early_stop: bool = True, model: str = "tn", prior: bool = False,
                 a0: float = 1.0, b0: float = 1.0, strength: float = 2.0):
        super().__init__(target, alpha, k, mode, wave, early_stop)
        from optscale import theory_models as tm

        if model not in tm.MODELS:
            raise ParameterError("model", f"must be one of {', '.join(tm.MODELS)}, got {model!r}")
        if not isinstance(prior, (bool, np.bool_)):
            raise ParameterError("prior", f"must be true or false, got {prior!r}")
        self.model = model
        self.prior = bool(prior)
        self.needs_prior = self.prior
        self.a0 = check_positive("a0", a0)
        self.b0 = check_positive("b0", b0)
        self.strength = check_positive("strength", strength)
        self._model = (tm.ExceedanceModel(self.a0, self.b0, self.strength) if model == "exc"
                       else tm.get_model(model))

    def params(self) -> dict[str, Any]:
        p = super().params()
        if not self.early_stop:
            p["early_stop"] = False
        else:
            p.pop("early_stop", None)
        p["model"] = self.model
        if self.prior:
            p["prior"] = True
        if self.model == "exc":
            if self.prior:
                p["strength"] = self.strength
            else:
                p["a0"], p["b0"] = self.a0, self.b0
        return p

    @property
    def label(self) -> str:
        seq = ", seq" + (f" w={self.wave}" if self.wave != 1 else "") if self.mode == "sequential" else ""
        pri = ", prior" if self.prior else ""
        return f"Post[{self.model}{pri}](s*={self.target!r}, α={self.alpha!r}, k={self.k}{seq})"

    # --- priors ---------------------------------------------------------------------------------------
    def _obs_prior(self, obs: Observation) -> np.ndarray | None:
        if not self.prior:
            return None
        if obs.prior is None or not all(np.isfinite(obs.prior)):
            raise ParameterError("prior", f"{self.name} needs a per-problem prior (Observation.prior)")
        return np.asarray(obs.prior, dtype=np.float64)

    def batch_priors(self, batch: ReplayBatch) -> np.ndarray | None:
        if not self.prior:
            return None
        if batch.priors is None or not np.all(np.isfinite(batch.priors)):
            raise ParameterError("prior", f"{self.name} needs per-problem priors (ReplayBatch.priors)")
        return batch.priors

    # --- decisions (also the evaluate fast path's hooks) ---------------------------------------------
    def posterior_state(self, scores: np.ndarray, priors: np.ndarray | None, targets) -> list:
        """Per target, what N depends on besides (alpha, n_max): posterior nodes and log F(s*) at them
        (tn, beta) or the Beta posterior (a, b) of p = P(score >= s*) (exc). Rows: those of ``scores``."""
        mask = ~np.isnan(scores)
        if self.model == "exc":
            return [self._model.posterior_p(float(t), scores, mask, priors) for t in targets]
        post = self._model.posterior(scores, mask, priors)
        return [(post.logw, self._model.log_cdf(float(t), post.theta), post.informative) for t in targets]

    def n_from_state(self, state, alpha: float, n_max: int) -> np.ndarray:
        from optscale import theory_models as tm

        if self.model == "exc":
            return tm.exceedance_n_needed(state[0], state[1], alpha, n_max)
        logw, log_f, informative = state
        ns = tm.n_needed_from_log_f(logw, log_f, alpha, n_max)
        return np.where(informative, ns, int(n_max)).astype(np.int64)

    def _n_star(self, scores: np.ndarray, priors: np.ndarray | None, n_max: int) -> dict[str, np.ndarray]:
        return {"n_star": self.n_from_state(self.posterior_state(scores, priors, [self.target])[0], self.alpha, n_max)}

    def fit_scores(self, scores, mask, priors):  # not a point-estimate rule
        raise NotImplementedError("PosteriorOptScale decides from a posterior, not from a fit")
