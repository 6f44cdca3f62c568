"""Score models beyond the paper's plug-in truncated normal, behind one interface (issue #8, items 3-4).

The OptScale bound only needs the law of the best of N scores. With i.i.d. scores of law F_theta,

    P(best of N >= s* | theta) = 1 - F_theta(s*)^N.

The paper plugs a point estimate theta_hat (from k warm-up scores) into this. Here the guarantee is asked of
the POSTERIOR PREDICTIVE given the observed scores x_1..x_n (and the prior):

    P(best of N >= s* | x) = 1 - E_{theta | x}[ F_theta(s*)^N ],
    N_needed = min { N in [1, n_max] : E_{theta | x}[F_theta(s*)^N] <= alpha }    (n_max if none)

E[F^N] is decreasing in N (a mixture of decreasing functions), so N_needed is found by bisection.

Models (each vectorized over rows: ``scores`` [R, W] with a boolean ``mask`` of the observed entries):

* :class:`TruncNormalModel` -- Normal(mu, sigma^2) truncated to [0, 1] (the paper's law; functions of
  :mod:`optscale.theory`). Posterior over (lambda = mu / sigma^2, log sigma) with a flat prior on the box
  |mu| <= 100, sigma in [0.005, 10] (OptScale^0) or the per-problem Gaussian priors N(mu0, sd_mu^2)
  N(sigma0, sd_sigma^2) of OptScale^t.
* :class:`BetaModel` -- Beta(a, b) scores (scores clipped to [1e-4, 1 - 1e-4]); posterior over
  (logit m, log kappa), m = a / (a + b), kappa = a + b, flat on logit m in [-7, 7], kappa in [0.1, 1e4].
* :class:`ExceedanceModel` -- model-free: only p = P(score >= s*) matters. With j of n scores >= s* and a
  Beta(a0, b0) prior on p, p | x ~ Beta(a0 + j, b0 + n - j) and, in closed form,

      P(best of N >= s* | x) = 1 - B(a0 + j, b0 + n - j + N) / B(a0 + j, b0 + n - j).

  The prior predictor can supply (a0, b0) = nu * (p0, 1 - p0) with p0 = P_{TN(mu0, sigma0)}(score >= s*).

The two parametric posteriors are integrated by adaptive Gauss-Hermite quadrature (7 x 7 nodes) around the
point estimate in the unconstrained coordinates, importance-corrected by the exact log posterior (so the
quadrature targets the true posterior, not a Laplace approximation of it); all sums in log space.

Model choice (:func:`heldout_log_score`): each model is fitted on the first k scores of a problem and
scored on that problem's other scores, by the log-probability it gave to the event "score >= s*" (the only
thing the bound uses; comparable across all three models) and, for the two density models, by the log
posterior predictive density (log sum_q w_q f_q(x), clipped at -50 per score).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import special as sc

from optscale.errors import ParameterError

__all__ = [
    "ScoreModel", "TruncNormalModel", "BetaModel", "ExceedanceModel", "Posterior", "MODELS", "get_model",
    "n_needed_from_log_f", "log_fail_from_log_f", "heldout_log_score",
]

_QUIET = dict(divide="ignore", over="ignore", under="ignore", invalid="ignore")
_GH_X, _GH_W = hermegauss(7)
_U1, _U2 = (a.ravel() for a in np.meshgrid(_GH_X, _GH_X, indexing="ij"))  # [Q] standard nodes
_LOG_GHW = (np.log(_GH_W)[:, None] + np.log(_GH_W)[None, :]).ravel() + 0.5 * (_U1**2 + _U2**2)  # e^{u^2/2}
EPS = 1e-4  #: scores are clipped to [EPS, 1 - EPS] for the Beta law (its density is 0/inf at 0 and 1)


@dataclass
class Posterior:
    """Quadrature nodes of a posterior per row: ``theta`` = tuple of float[R, Q] parameter arrays in the
    model's natural parametrization, ``logw`` float[R, Q] normalized log weights (logsumexp = 0); rows with
    ``informative`` False had no observation and no prior (their decisions fall back to n_max)."""

    theta: tuple[np.ndarray, np.ndarray]
    logw: np.ndarray
    informative: np.ndarray


def _logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    with np.errstate(**_QUIET):
        m = np.max(x, axis=axis, keepdims=True)
        m = np.where(np.isfinite(m), m, 0.0)
        return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def log_fail_from_log_f(logw: np.ndarray, log_f: np.ndarray, n) -> np.ndarray:
    """log E[F^N] = log sum_q w_q F_q^N (posterior predictive probability that the best of N < s*)."""
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(**_QUIET):
        term = np.where(np.isneginf(log_f), np.where(n[..., None] > 0, -np.inf, 0.0), n[..., None] * log_f)
    return _logsumexp(logw + term, axis=-1)


def n_needed_from_log_f(logw: np.ndarray, log_f: np.ndarray, alpha, n_max: int) -> np.ndarray:
    """int64[R]: smallest N in [1, n_max] with sum_q w_q F_q(s*)^N <= alpha (n_max if none), by bisection
    (the left side decreases in N). ``logw``, ``log_f``: float[R, Q]; ``alpha``: scalar or float[R]."""
    R = logw.shape[0]
    log_a = np.broadcast_to(np.log(np.asarray(alpha, dtype=np.float64)), (R,))
    lo = np.ones(R, dtype=np.int64)
    hi = np.full(R, int(n_max), dtype=np.int64)
    ok_hi = log_fail_from_log_f(logw, log_f, hi) <= log_a + 1e-12
    while True:
        act = lo < hi
        if not act.any():
            break
        mid = (lo + hi) // 2
        good = log_fail_from_log_f(logw, log_f, mid) <= log_a + 1e-12
        hi = np.where(act & good, mid, hi)
        lo = np.where(act & ~good, mid + 1, lo)
    return np.where(ok_hi, lo, int(n_max)).astype(np.int64)


def _as_rows(scores, mask) -> tuple[np.ndarray, np.ndarray]:
    x = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m = ~np.isnan(x) if mask is None else np.atleast_2d(np.asarray(mask, dtype=bool)) & ~np.isnan(x)
    if x.size and np.any((x[m] < 0) | (x[m] > 1)):
        raise ParameterError("scores", "must lie in [0, 1]")
    return np.where(m, x, 0.0), m


class ScoreModel:
    """Interface of a score law. Subclasses implement the posterior, log P(score >= s*) and the held-out
    density. ``priors``: float[R, 4] (mu0, sigma0, sd_mu, sd_sigma) of the predictor, or None."""

    name = "model"
    density = True  # has a density over scores (held-out log-likelihood comparable between such models)

    def posterior(self, scores, mask=None, priors=None) -> Posterior:
        raise NotImplementedError

    def log_cdf(self, target: float, theta: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """log F_theta(s*) = log P(score < s*) at each node."""
        raise NotImplementedError

    def log_density(self, x: np.ndarray, theta: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """log f_theta(x): ``x`` [R, H] against per-row nodes [R, Q]; returns [R, H, Q]."""
        raise NotImplementedError

    def log_predictive_density(self, x: np.ndarray, post: Posterior) -> np.ndarray:
        """log of the posterior predictive density sum_q w_q f_q(x) of held-out scores ``x`` [R, H]."""
        return _logsumexp(post.logw[:, None, :] + self.log_density(x, post.theta), axis=-1)

    def point(self, post: Posterior) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean of the parameters per row (natural parametrization)."""
        w = np.exp(post.logw)
        return tuple((w * t).sum(axis=1) for t in post.theta)  # type: ignore[return-value]

    # ----- derived (shared) ---------------------------------------------------------------------------
    def log_p_fail(self, target: float, n, scores, mask=None, priors=None) -> np.ndarray:
        """log P(best of N < s* | scores): the posterior predictive failure probability."""
        post = self.posterior(scores, mask, priors)
        return log_fail_from_log_f(post.logw, self._log_f(target, post, scores, mask, priors), n)

    def p_reach(self, target: float, n, scores, mask=None, priors=None) -> np.ndarray:
        """P(best of N >= s* | scores) = 1 - E[F(s*)^N]."""
        return -np.expm1(self.log_p_fail(target, n, scores, mask, priors))

    def n_needed(self, target: float, alpha, n_max: int, scores, mask=None, priors=None) -> np.ndarray:
        """Smallest N <= n_max with P(best of N >= s* | scores) >= 1 - alpha (n_max if none; n_max where a
        row has neither scores nor prior)."""
        post = self.posterior(scores, mask, priors)
        ns = n_needed_from_log_f(post.logw, self._log_f(target, post, scores, mask, priors), alpha, n_max)
        return np.where(post.informative, ns, int(n_max))

    def _log_f(self, target, post, scores, mask, priors) -> np.ndarray:
        return self.log_cdf(target, post.theta)


def _gh_posterior(center1, scale1, center2, scale2, log_post) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nodes u = center + scale * GH node in the unconstrained coordinates (t1, t2) and importance-
    corrected normalized log weights log w_q + u_q^2 / 2 + log_post(t1, t2)."""
    t1 = center1[:, None] + scale1[:, None] * _U1[None, :]
    t2 = center2[:, None] + scale2[:, None] * _U2[None, :]
    with np.errstate(**_QUIET):
        lw = _LOG_GHW[None, :] + log_post(t1, t2)
    lw = np.where(np.isnan(lw), -np.inf, lw)
    norm = _logsumexp(lw, axis=1)
    bad = ~np.isfinite(norm)
    lw = np.where(bad[:, None], np.log(_GH_W[:, None] * _GH_W[None, :]).ravel()[None, :], lw - norm[:, None])
    return t1, t2, lw


class TruncNormalModel(ScoreModel):
    """The paper's truncated normal with a posterior instead of a point estimate.

    The posterior is integrated in the coordinates (lambda, log sigma), lambda = mu / sigma^2 (a natural
    parameter: the density is proportional to exp(lambda x - x^2 / (2 sigma^2)) on [0, 1]). Laws on the
    family's boundary (mu -> infinity with mu / sigma^2 fixed: a truncated exponential, where moment
    matching puts 64% of the MATH-500 label laws) form a ridge along log sigma at fixed lambda there, which
    these coordinates follow; the flat prior is on the box |mu| <= 100, sigma in [0.005, 10]."""

    name = "tn"
    MU_BOX = (-100.0, 100.0)
    SIGMA_BOX = (0.005, 10.0)

    def posterior(self, scores, mask=None, priors=None) -> Posterior:
        from optscale import theory

        x, m = _as_rows(scores, mask)
        R = x.shape[0]
        n = m.sum(axis=1).astype(np.float64)
        mean = np.where(n > 0, x.sum(axis=1) / np.maximum(n, 1), 0.5)
        var = np.where(n > 0, (np.where(m, x - mean[:, None], 0.0) ** 2).sum(axis=1) / np.maximum(n, 1), 0.0)
        mu_c = np.full(R, 0.5)
        sig_c = np.full(R, 0.3)
        has = n > 0
        if priors is not None:
            priors = np.asarray(priors, dtype=np.float64)
            mu_c, sig_c = priors[:, 0].copy(), priors[:, 1].copy()
        if has.any():
            if priors is None:
                fit = theory.fit_mle(x[has], m[has])
            else:
                p = priors[has]
                fit = theory.fit_map(x[has], m[has], mu0=p[:, 0], sigma0=p[:, 1], sd_mu=p[:, 2], sd_sigma=p[:, 3])
            mu_c[has], sig_c[has] = fit.mu, fit.sigma
        mu_c = np.clip(np.nan_to_num(mu_c, nan=0.5), *self.MU_BOX)
        sig_c = np.clip(np.nan_to_num(sig_c, nan=0.3), 0.01, self.SIGMA_BOX[1])
        lam_c = mu_c / sig_c**2
        # scales: d^2 loglik / d lambda^2 = -n Var_F(x) (exponential family); log sigma ~ 1 / sqrt(2n), widened
        # where sigma is large (the ridge towards the exponential limit)
        _, std_f = theory.params_to_moments(mu_c, sig_c)
        nn = np.maximum(n, 1)
        scale_lam = np.minimum(1.5 / np.sqrt(nn * np.maximum(std_f, 0.01) ** 2), 200.0)
        scale_ls = np.maximum(1.5 / np.sqrt(2.0 * nn), np.where(sig_c >= 0.3, 0.75, 0.0))
        if priors is not None:  # where no score was seen, cover the prior
            scale_lam = np.where(has, scale_lam, 1.5 * np.hypot(priors[:, 2] / sig_c**2,
                                                                2 * np.abs(mu_c) * priors[:, 3] / sig_c**3))
            scale_ls = np.where(has, scale_ls, 1.5 * priors[:, 3] / sig_c)
        scale_ls = np.minimum(scale_ls, 2.0)

        def log_post(lam, ls):
            sigma = np.exp(ls)
            mu = lam * sigma**2
            box = (mu >= self.MU_BOX[0]) & (mu <= self.MU_BOX[1]) & (sigma >= self.SIGMA_BOX[0]) & (
                sigma <= self.SIGMA_BOX[1])
            mu_s = np.where(box, mu, 0.5)
            sig_s = np.where(box, sigma, 0.3)
            ll = (-n[:, None] * np.log(sig_s) - n[:, None] * (var[:, None] + (mean[:, None] - mu_s) ** 2)
                  / (2 * sig_s**2) - n[:, None] * theory.log_normalizer(mu_s, sig_s))
            lp = np.where(box, 0.0, -np.inf)
            if priors is not None:  # Gaussian priors on mu and sigma; |d(mu, sigma) / d(lambda, log sigma)| = sigma^3
                lp = lp - 0.5 * ((mu_s - priors[:, 0:1]) / priors[:, 2:3]) ** 2 - 0.5 * (
                    (sig_s - priors[:, 1:2]) / priors[:, 3:4]) ** 2 + 3 * np.log(sig_s)
            return ll + lp

        lam, ls, lw = _gh_posterior(lam_c, scale_lam, np.log(sig_c), scale_ls, log_post)
        sigma = np.exp(ls)
        mu = np.clip(lam * sigma**2, *self.MU_BOX)  # outside the box the weight is 0 anyway
        sigma = np.clip(sigma, *self.SIGMA_BOX)
        return Posterior((mu, sigma), lw, has | (priors is not None))

    def log_cdf(self, target, theta):
        from optscale import theory

        return theory.logcdf(float(target), theta[0], theta[1])

    def log_density(self, x, theta):
        from optscale import theory

        return theory.logpdf(np.clip(x, 0.0, 1.0)[:, :, None], theta[0][:, None, :], theta[1][:, None, :])


class BetaModel(ScoreModel):
    """Beta(a, b) scores, posterior over (logit m, log kappa) with m = a / (a + b), kappa = a + b."""

    name = "beta"
    LOGIT_BOX = (-7.0, 7.0)
    KAPPA_BOX = (0.1, 1e4)

    def posterior(self, scores, mask=None, priors=None) -> Posterior:
        x, m = _as_rows(scores, mask)
        x = np.clip(x, EPS, 1 - EPS)
        n = m.sum(axis=1).astype(np.float64)
        sl = np.where(m, np.log(x), 0.0).sum(axis=1)
        sl1 = np.where(m, np.log1p(-x), 0.0).sum(axis=1)
        mean = np.where(n > 0, np.where(m, x, 0.0).sum(axis=1) / np.maximum(n, 1), 0.5)
        var = np.where(n > 0, (np.where(m, x - mean[:, None], 0.0) ** 2).sum(axis=1) / np.maximum(n, 1), 0.0)
        mc = np.clip(mean, 1e-3, 1 - 1e-3)
        kappa = np.clip(mc * (1 - mc) / np.maximum(var, 1e-8) - 1.0, 0.5, 5e3)
        kappa = np.where(n > 1, kappa, 2.0)
        has = n > 0
        scale_lm = np.minimum(1.5 / np.sqrt(np.maximum(n, 1) * mc * (1 - mc) * (kappa + 1)), 3.0)
        scale_lk = np.minimum(1.5 * np.sqrt(2.0 / np.maximum(n, 1)), 2.5)

        def log_post(lm, lk):
            mm = sc.expit(lm)
            kk = np.exp(lk)
            a, b = mm * kk, (1 - mm) * kk
            ll = (a - 1) * sl[:, None] + (b - 1) * sl1[:, None] - n[:, None] * sc.betaln(a, b)
            box = (lm >= self.LOGIT_BOX[0]) & (lm <= self.LOGIT_BOX[1]) & (kk >= self.KAPPA_BOX[0]) & (
                kk <= self.KAPPA_BOX[1])
            return ll + np.where(box, 0.0, -np.inf)

        lm, lk, lw = _gh_posterior(sc.logit(mc), scale_lm, np.log(kappa), scale_lk, log_post)
        mm, kk = sc.expit(lm), np.exp(lk)
        return Posterior((mm * kk, (1 - mm) * kk), lw, has)

    def log_cdf(self, target, theta):
        with np.errstate(**_QUIET):
            return np.log(sc.betainc(theta[0], theta[1], float(target)))

    def log_density(self, x, theta):
        a, b = theta[0][:, None, :], theta[1][:, None, :]
        x = np.clip(x, EPS, 1 - EPS)[:, :, None]
        return (a - 1) * np.log(x) + (b - 1) * np.log1p(-x) - sc.betaln(a, b)


class ExceedanceModel(ScoreModel):
    """Model-free: p = P(score >= s*) with a Beta(a0, b0) prior; closed-form posterior predictive.

    ``a0``/``b0``: the prior where no predictor prior is given; with predictor priors (mu0, sigma0, ...)
    the prior is nu * (p0, 1 - p0), p0 = P_{TN(mu0, sigma0)}(score >= s*), nu = ``strength``."""

    name = "exc"
    density = False

    def __init__(self, a0: float = 1.0, b0: float = 1.0, strength: float = 2.0):
        for k, v in (("a0", a0), ("b0", b0), ("strength", strength)):
            if not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ParameterError(k, f"must be a positive number, got {v!r}")
        self.a0, self.b0, self.strength = float(a0), float(b0), float(strength)

    def prior_ab(self, target: float, priors, R: int) -> tuple[np.ndarray, np.ndarray]:
        if priors is None:
            return np.full(R, self.a0), np.full(R, self.b0)
        from optscale import theory

        priors = np.asarray(priors, dtype=np.float64)
        p0 = np.exp(theory.logsf(float(target), priors[:, 0], priors[:, 1]))
        p0 = np.clip(p0, 1e-3, 1 - 1e-3)
        return self.strength * p0, self.strength * (1 - p0)

    def counts(self, target: float, scores, mask=None) -> tuple[np.ndarray, np.ndarray]:
        """(j, n): scores >= s* and scores observed, per row."""
        x, m = _as_rows(scores, mask)
        return (m & (x >= target)).sum(axis=1).astype(np.float64), m.sum(axis=1).astype(np.float64)

    def log_p_fail(self, target, n, scores, mask=None, priors=None):
        j, k = self.counts(target, scores, mask)
        a, b = self.prior_ab(target, priors, j.shape[0])
        a, b = a + j, b + k - j
        n = np.asarray(n, dtype=np.float64)
        return sc.betaln(a, b + n) - sc.betaln(a, b)

    def n_needed(self, target, alpha, n_max, scores, mask=None, priors=None):
        j, k = self.counts(target, scores, mask)
        a, b = self.prior_ab(target, priors, j.shape[0])
        return exceedance_n_needed(a + j, b + k - j, alpha, n_max)

    def posterior_p(self, target, scores, mask=None, priors=None) -> tuple[np.ndarray, np.ndarray]:
        """Beta posterior (a, b) of p = P(score >= s*)."""
        j, k = self.counts(target, scores, mask)
        a, b = self.prior_ab(target, priors, j.shape[0])
        return a + j, b + k - j


def exceedance_n_needed(a: np.ndarray, b: np.ndarray, alpha, n_max: int) -> np.ndarray:
    """Smallest N in [1, n_max] with B(a, b + N) / B(a, b) <= alpha (n_max if none), vectorized bisection."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    log_a = np.broadcast_to(np.log(np.asarray(alpha, dtype=np.float64)), a.shape)
    base = sc.betaln(a, b)

    def ok(n):
        return sc.betaln(a, b + n) - base <= log_a + 1e-12

    lo = np.ones(a.shape, dtype=np.int64)
    hi = np.full(a.shape, int(n_max), dtype=np.int64)
    ok_hi = ok(hi)
    while (lo < hi).any():
        mid = (lo + hi) // 2
        g = ok(mid)
        act = lo < hi
        hi = np.where(act & g, mid, hi)
        lo = np.where(act & ~g, mid + 1, lo)
    return np.where(ok_hi, lo, int(n_max)).astype(np.int64)


MODELS = {"tn": TruncNormalModel, "beta": BetaModel, "exc": ExceedanceModel}


def get_model(name: str, **kw) -> ScoreModel:
    """The score model named ``name`` (tn, beta, exc)."""
    cls = MODELS.get(str(name).lower())
    if cls is None:
        raise ParameterError("model", f"must be one of {', '.join(MODELS)}, got {name!r}")
    return cls(**kw) if kw else cls()


def heldout_log_score(scores, mask=None, *, k: int = 4, targets=(0.7, 0.8, 0.9), priors=None,
                      models=("tn", "beta", "exc")) -> dict[str, dict[str, float]]:
    """Held-out fit of each model: fitted (posterior) on the first ``k`` scores of each row, scored on the
    row's remaining scores. Returns {model: {"event": mean log P(1[score >= s*]) per held-out score,
    averaged over ``targets``; "density": mean held-out log density per score (density models only)}}.
    Rows with <= k scores are skipped."""
    x, m = _as_rows(scores, mask)
    n = m.sum(axis=1)
    rows = n > k
    if not rows.any():
        raise ParameterError("k", f"no row has more than k = {k} scores to hold out")
    x, m = x[rows], m[rows]
    pri = None if priors is None else np.asarray(priors, dtype=np.float64)[rows]
    fit_m = m.copy()
    fit_m[:, k:] = False
    held = m.copy()
    held[:, :k] = False
    H = held.sum()
    out: dict[str, dict[str, float]] = {}
    for name in models:
        model = get_model(name)
        res: dict[str, float] = {}
        ev = []
        for t in targets:
            hit = held & (x >= t)
            if isinstance(model, ExceedanceModel):
                a, b = model.posterior_p(t, x, fit_m, pri)
                lp_hit = np.log(a / (a + b))
                lp_miss = np.log(b / (a + b))
            else:
                post = model.posterior(x, fit_m, pri)
                lf = model.log_cdf(t, post.theta)  # [R, Q]
                with np.errstate(**_QUIET):
                    lp_miss = _logsumexp(post.logw + lf, axis=1)
                    lp_hit = np.log(np.clip(-np.expm1(lp_miss), 1e-300, None))
            ev.append(float((np.where(hit, lp_hit[:, None], 0.0) + np.where(held & ~hit, lp_miss[:, None], 0.0)).sum()
                            / H))
        res["event"] = float(np.mean(ev))
        if model.density:
            post = model.posterior(x, fit_m, pri)
            ld = model.log_predictive_density(x, post)
            res["density"] = float(np.where(held, np.clip(ld, -50, None), 0.0).sum() / H)
        out[name] = res
    return out
