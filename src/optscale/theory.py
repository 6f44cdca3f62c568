"""The formulas of OptScale (Wang et al., arXiv 2506.22376), in one place.

Score model (paper Sec. 3): the verifier score of one i.i.d. sample follows
F = Normal(mu, sigma^2) truncated to [0, 1]. With a = -mu/sigma, b = (1-mu)/sigma, z = (s-mu)/sigma,

    F(s) = (Phi(z) - Phi(a)) / Z,     Z = Phi(b) - Phi(a),     f(s) = phi(z) / (sigma Z).

Best-of-N keeps the maximum of N samples, whose law is P(max_N <= s) = F(s)^N (Sec. 3, "max-of-N").
The compute-optimal N* (Sec. 4, Theorem 1) is the smallest N with P(max_N >= s*) >= 1 - alpha:

    N* = ceil(ln alpha / ln F(s*)),  1 if F(s*) = 0, unreachable if F(s*) = 1; clipped to [1, n_max].

OptScale^0 estimates (mu, sigma) by maximum likelihood on k warm-up scores (Sec. 4.1); OptScale^t by MAP
with Gaussian priors N(mu0, sd_mu^2) N(sigma0, sd_sigma^2) predicted per problem (Sec. 4.2, sd = 0.1).

Numerics: everything is computed in log space. log(Phi(hi) - Phi(lo)) is evaluated by `_log_ndtr_diff`,
which is accurate in both tails (scaled erfc ratio), across zero (erf sum) and for tiny widths
(midpoint rule), so mu = 30, sigma = 1e-4 or scores exactly 0 / 1 give finite, warning-free results.
Supported range: any mu with |mu| <= 1e6 and 1e-6 <= sigma <= 1e6.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special as sc

from optscale.errors import ParameterError

__all__ = [
    "SIGMA_MIN", "SIGMA_MAX", "MU_BOUND", "logcdf", "cdf", "logsf", "logpdf", "pdf", "ppf", "sample",
    "max_cdf", "max_ppf", "NStar", "n_star", "n_star_from_logcdf", "NSTAR_TIE_RTOL", "Fit", "fit_mle", "fit_map",
    "neg_log_likelihood", "moments_to_params", "params_to_moments", "log_normalizer",
]

SIGMA_MIN = 1e-4   #: lower bound on sigma used by the estimators
SIGMA_MAX = 10.0   #: upper bound on sigma (sigma = 10 is uniform on [0, 1] to within 0.5 %)
MU_BOUND = 100.0   #: estimators keep mu in [-MU_BOUND, MU_BOUND]

_LN2 = np.log(2.0)
_HALF_LOG_2PI = 0.5 * np.log(2.0 * np.pi)
_SQRT1_2 = np.sqrt(0.5)
_QUIET = dict(divide="ignore", over="ignore", under="ignore", invalid="ignore")


# ----------------------------------------------------------------------------------------- validation
def _array(name: str, x, *, lo=None, hi=None, lo_open=False, hi_open=False) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if np.isnan(arr).any():
        raise ParameterError(name, "must not be NaN")
    if lo is not None and (np.any(arr <= lo) if lo_open else np.any(arr < lo)):
        raise ParameterError(name, f"must be {'>' if lo_open else '>='} {lo}, got {arr.min():g}")
    if hi is not None and (np.any(arr >= hi) if hi_open else np.any(arr > hi)):
        raise ParameterError(name, f"must be {'<' if hi_open else '<='} {hi}, got {arr.max():g}")
    return arr


def _params(mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    mu = _array("mu", mu)
    if not np.all(np.isfinite(mu)):
        raise ParameterError("mu", "must be finite")
    sigma = _array("sigma", sigma, lo=0.0, lo_open=True)
    if not np.all(np.isfinite(sigma)):
        raise ParameterError("sigma", "must be finite")
    return mu, sigma


# ------------------------------------------------------------------------------------ log-space helpers
def _log1mexp(x: np.ndarray) -> np.ndarray:
    """log(1 - exp(x)) for x <= 0 (Maechler 2012): expm1 near 0, log1p further out."""
    with np.errstate(**_QUIET):
        return np.where(x > -_LN2, np.log(-np.expm1(x)), np.log1p(-np.exp(x)))


def _log_ndtr_scaled(x):
    """log Phi(x) + x^2/2 = log(erfcx(-x/sqrt2) / 2) for x <= 0: moderate even where Phi underflows."""
    return np.log(0.5 * sc.erfcx(-x * _SQRT1_2))


def _log_ratio(x, y, d):
    """log Phi(x) - log Phi(y) for x <= y <= 0, d = y - x: the squares enter only as d (x + y) / 2."""
    return _log_ndtr_scaled(x) - _log_ndtr_scaled(y) + 0.5 * d * (x + y)


def _log1m_ratio(x, y, d):
    """log(1 - Phi(x) / Phi(y)) = log((Phi(y) - Phi(x)) / Phi(y)) for x <= y <= 0, d = y - x >= 0.

    Midpoint rule when d is tiny: Phi(y) - Phi(x) = d phi(m) (1 + d^2 (m^2 - 1) / 24 + O(d^4 m^4)),
    m = y - d/2, and log phi(m) - log Phi(y) = d (m + y) / 4 - log(2 pi)/2 - _log_ndtr_scaled(y).
    """
    x, y, d = np.broadcast_arrays(x, y, d)
    shape = x.shape
    x, y, d = x.reshape(-1), y.reshape(-1), d.reshape(-1)
    out = np.empty(x.shape)
    with np.errstate(**_QUIET):
        m = y - 0.5 * d
        small = d * (1.0 + np.abs(m)) < 1e-3
        i = small
        out[i] = (np.log(d[i]) + 0.25 * d[i] * (m[i] + y[i]) - _HALF_LOG_2PI - _log_ndtr_scaled(y[i])
                  + np.log1p(d[i] * d[i] * (m[i] * m[i] - 1.0) / 24.0))
        i = ~small
        out[i] = _log1mexp(np.minimum(_log_ratio(x[i], y[i], d[i]), 0.0))
    return out.reshape(shape)


def _log_ndtr_diff(lo, hi, width) -> np.ndarray:
    """log(Phi(hi) - Phi(lo)) for lo <= hi, width = hi - lo computed from unstandardized values.

    Both bounds > 0: symmetry Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi). Same (lower) tail:
    log Phi(h) + log(1 - Phi(l)/Phi(h)) (`_log1m_ratio`). Straddling 0: (erf(h/sqrt2) - erf(l/sqrt2)) / 2,
    two same-sign terms, or the midpoint rule when the width is tiny.
    """
    lo, hi, width = np.broadcast_arrays(*(np.asarray(v, float) for v in (lo, hi, width)))
    shape = lo.shape
    lo, hi, width = lo.reshape(-1), hi.reshape(-1), width.reshape(-1)
    flip = lo > 0
    low, high = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    out = np.empty(low.shape)
    with np.errstate(**_QUIET):
        tail = high <= 0
        i = tail
        out[i] = sc.log_ndtr(high[i]) + _log1m_ratio(low[i], high[i], width[i])
        mid = 0.5 * (low + high)
        quad = ~tail & (width * (1.0 + np.abs(mid)) < 1e-3)
        i = quad
        out[i] = (np.log(width[i]) - 0.5 * mid[i] ** 2 - _HALF_LOG_2PI
                  + np.log1p(width[i] ** 2 * (mid[i] ** 2 - 1.0) / 24.0))
        i = ~tail & ~quad
        out[i] = np.log(0.5 * (sc.erf(high[i] * _SQRT1_2) - sc.erf(low[i] * _SQRT1_2)))
    return out.reshape(shape)


def log_normalizer(mu, sigma) -> np.ndarray:
    """log Z = log(Phi(b) - Phi(a)), a = -mu/sigma, b = (1-mu)/sigma: the truncation mass."""
    mu, sigma = _params(mu, sigma)
    with np.errstate(**_QUIET):
        return _log_ndtr_diff(-mu / sigma, (1.0 - mu) / sigma, 1.0 / sigma)


def _reflected(s, mu, sigma):
    """Standardized bounds after the reflection x -> 1 - x, mu -> 1 - mu applied where mu < 1/2, so that
    the normal's bulk lies at or above the interval's middle (F(s; mu) = 1 - F(1 - s; 1 - mu)).
    Returns (refl, a, b, z, width(a, z), width(z, b), width(a, b)); widths come from s, 1 - s, 1."""
    refl = mu < 0.5
    a, b, z = -mu / sigma, (1.0 - mu) / sigma, (s - mu) / sigma
    wl, wh = s / sigma, (1.0 - s) / sigma
    return (refl, np.where(refl, -b, a), np.where(refl, -a, b), np.where(refl, -z, z),
            np.where(refl, wh, wl), np.where(refl, wl, wh), 1.0 / sigma)


def _pair_logs(a, b, z, w_az, w_zb, w_ab, want):
    """log(Phi(z)-Phi(a)) - log Z ('cdf') or log(Phi(b)-Phi(z)) - log Z ('sf') in reflected coordinates.

    With all of [a, b] in the lower tail (b <= 0) the huge log Phi(b) cancels exactly:
    log F = log(Phi(z)/Phi(b)) + log(1 - Phi(a)/Phi(z)) - log(1 - Phi(a)/Phi(b)),
    log(1 - F) = log(1 - Phi(z)/Phi(b)) - log(1 - Phi(a)/Phi(b)). Otherwise the log-differences are
    moderate and subtracted directly."""
    out = np.empty(a.shape)
    i = b <= 0
    a_i, b_i, z_i = a[i], b[i], np.minimum(z[i], 0.0)
    if want == "cdf":
        out[i] = _log_ratio(z_i, b_i, w_zb[i]) + _log1m_ratio(a_i, z_i, w_az[i])
    else:
        out[i] = _log1m_ratio(z_i, b_i, w_zb[i])
    out[i] -= _log1m_ratio(a_i, b_i, w_ab[i])
    i = ~i
    a_i, b_i, z_i = a[i], b[i], z[i]
    pair = _log_ndtr_diff(a_i, z_i, w_az[i]) if want == "cdf" else _log_ndtr_diff(z_i, b_i, w_zb[i])
    out[i] = pair - _log_ndtr_diff(a_i, b_i, w_ab[i])
    return np.minimum(out, 0.0)


def _logcdf_logsf(s, mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """(log F(s), log(1 - F(s))). The smaller of F, 1 - F is computed directly (`_pair_logs`), the other
    by log1mexp, so both are accurate near 0 and near 1."""
    s, mu, sigma = np.broadcast_arrays(np.asarray(s, float), mu, sigma)
    shape = s.shape
    s, mu, sigma = s.reshape(-1), mu.reshape(-1), sigma.reshape(-1)
    with np.errstate(**_QUIET):
        refl, a, b, z, w_az, w_zb, w_ab = _reflected(np.clip(s, 0.0, 1.0), mu, sigma)
        first = _pair_logs(a, b, z, w_az, w_zb, w_ab, "cdf")   # log F' (reflected coordinates)
        big = first > -_LN2
        second = np.empty(s.shape)                                # log(1 - F')
        second[big] = _pair_logs(a[big], b[big], z[big], w_az[big], w_zb[big], w_ab[big], "sf")
        first[big] = _log1mexp(second[big])
        second[~big] = _log1mexp(first[~big])
        lc, ls = np.where(refl, second, first), np.where(refl, first, second)
    lc = np.where(s <= 0.0, -np.inf, np.where(s >= 1.0, 0.0, lc)).reshape(shape)
    ls = np.where(s <= 0.0, 0.0, np.where(s >= 1.0, -np.inf, ls)).reshape(shape)
    return lc, ls


def _log1m_from_ratio(r, x, y, d, ls_y):
    """`_log1m_ratio` given r = `_log_ratio`(x, y, d) and ls_y = `_log_ndtr_scaled`(y) (no erfcx here)."""
    m = y - 0.5 * d
    small = d * (1.0 + np.abs(m)) < 1e-3
    mid = np.log(d) + 0.25 * d * (m + y) - _HALF_LOG_2PI - ls_y + np.log1p(d * d * (m * m - 1.0) / 24.0)
    return np.where(small, mid, _log1mexp(np.minimum(r, 0.0)))


def _logcdf_only(s, mu, sigma) -> np.ndarray:
    """log F(s) alone, as `_logcdf_logsf` computes it (same formulas, same rounding), for N*: one erfcx per
    bound in the lower-tail case (log Phi at a, z, b shared by every ratio) and log Z computed once."""
    s, mu, sigma = np.broadcast_arrays(np.asarray(s, float), mu, sigma)
    shape = s.shape
    s, mu, sigma = s.reshape(-1), mu.reshape(-1), sigma.reshape(-1)
    out = np.empty(s.shape)
    with np.errstate(**_QUIET):
        refl, a, b, z, w_az, w_zb, w_ab = _reflected(np.clip(s, 0.0, 1.0), mu, sigma)
        tail = b <= 0
        i = np.flatnonzero(tail)
        if i.size:
            a_i, b_i, z_i = a[i], b[i], np.minimum(z[i], 0.0)
            waz, wzb, wab = w_az[i], w_zb[i], w_ab if np.ndim(w_ab) == 0 else w_ab[i]
            ls_a, ls_b, ls_z = np.split(_log_ndtr_scaled(np.concatenate([a_i, b_i, z_i])), 3)
            r_zb = ls_z - ls_b + 0.5 * wzb * (z_i + b_i)
            r_az = ls_a - ls_z + 0.5 * waz * (a_i + z_i)
            r_ab = ls_a - ls_b + 0.5 * wab * (a_i + b_i)
            l_ab = _log1m_from_ratio(r_ab, a_i, b_i, wab, ls_b)
            first = np.minimum(r_zb + _log1m_from_ratio(r_az, a_i, z_i, waz, ls_z) - l_ab, 0.0)
            big = first > -_LN2
            second = np.minimum(_log1m_from_ratio(r_zb, z_i, b_i, wzb, ls_b) - l_ab, 0.0)
            out[i] = np.where(refl[i], np.where(big, second, _log1mexp(first)),
                              np.where(big, _log1mexp(second), first))
        i = np.flatnonzero(~tail)
        if i.size:
            a_i, b_i, z_i = a[i], b[i], z[i]
            wab = w_ab if np.ndim(w_ab) == 0 else w_ab[i]
            log_z = _log_ndtr_diff(a_i, b_i, wab)
            first = np.minimum(_log_ndtr_diff(a_i, z_i, w_az[i]) - log_z, 0.0)
            big = first > -_LN2
            second = np.empty(i.size)
            j = np.flatnonzero(big)
            second[j] = np.minimum(_log_ndtr_diff(z_i[j], b_i[j], w_zb[i][j]) - log_z[j], 0.0)
            first[j] = _log1mexp(second[j])
            second[~big] = _log1mexp(first[~big])
            out[i] = np.where(refl[i], second, first)
    return np.where(s <= 0.0, -np.inf, np.where(s >= 1.0, 0.0, out)).reshape(shape)


def _logpdf(x, mu, sigma):
    """log f(x) = -z^2/2 - log(2 pi)/2 - log sigma - log Z; in the lower tail (b <= 0 after reflection)
    -z^2/2 - log Phi(b) = -(z - b)(z + b)/2 - _log_ndtr_scaled(b), with z - b = (x - 1)/sigma."""
    refl, a, b, z, _, w_zb, w_ab = _reflected(x, mu, sigma)
    bc = np.minimum(b, 0.0)
    tail = 0.5 * w_zb * (z + bc) - _log_ndtr_scaled(bc) - _log1m_ratio(a, bc, w_ab)
    gen = -0.5 * z * z - _log_ndtr_diff(a, b, w_ab)
    return np.where(b <= 0, tail, gen) - _HALF_LOG_2PI - np.log(sigma)


# ------------------------------------------------------------------------------------ distribution
def logcdf(s, mu, sigma) -> np.ndarray:
    """log F(s) of the truncated normal: -inf for s <= 0, 0 for s >= 1."""
    mu, sigma = _params(mu, sigma)
    return _logcdf_logsf(_array("s", s), mu, sigma)[0]


def cdf(s, mu, sigma) -> np.ndarray:
    """F(s) = (Phi((s-mu)/sigma) - Phi(a)) / Z, in [0, 1]."""
    return np.exp(logcdf(s, mu, sigma))


def logsf(s, mu, sigma) -> np.ndarray:
    """log(1 - F(s)), accurate when F(s) is close to 1."""
    mu, sigma = _params(mu, sigma)
    return _logcdf_logsf(_array("s", s), mu, sigma)[1]


def logpdf(x, mu, sigma) -> np.ndarray:
    """log f(x) = log phi((x-mu)/sigma) - log sigma - log Z on [0, 1]; -inf outside."""
    mu, sigma = _params(mu, sigma)
    x, mu, sigma = np.broadcast_arrays(_array("x", x), mu, sigma)
    with np.errstate(**_QUIET):
        out = _logpdf(np.clip(x, 0.0, 1.0), mu, sigma)
    return np.where((x < 0.0) | (x > 1.0), -np.inf, out)


def pdf(x, mu, sigma) -> np.ndarray:
    """f(x) = phi((x-mu)/sigma) / (sigma Z) on [0, 1]; 0 outside."""
    return np.exp(logpdf(x, mu, sigma))


def _ppf_log(log_p, log_q, mu, sigma) -> np.ndarray:
    """F^{-1}(p) given log p and log q = log(1-p).

    Oriented so that the truncation interval [l, h] has the normal's bulk on its upper side
    (flip z -> -z, p <-> q when the interval lies in the upper tail, i.e. a > -b):
    Phi(z) = q Phi(l) + p Phi(h), a sum of positive terms, inverted by ndtri_exp.
    """
    log_p, log_q, mu, sigma = np.broadcast_arrays(log_p, log_q, mu, sigma)
    with np.errstate(**_QUIET):
        a, b = -mu / sigma, (1.0 - mu) / sigma
        flip = a > -b
        low = np.where(flip, -b, a)
        high = np.where(flip, -a, b)
        lp = np.where(flip, log_q, log_p)
        lq = np.where(flip, log_p, log_q)
        z = sc.ndtri_exp(np.logaddexp(lq + sc.log_ndtr(low), lp + sc.log_ndtr(high)))
        z = np.clip(np.where(flip, -z, z), a, b)
        return np.clip(mu + sigma * z, 0.0, 1.0)


def ppf(q, mu, sigma) -> np.ndarray:
    """Quantile F^{-1}(q) for q in [0, 1] (q=0 -> 0, q=1 -> 1)."""
    mu, sigma = _params(mu, sigma)
    q = _array("q", q, lo=0.0, hi=1.0)
    with np.errstate(**_QUIET):
        return _ppf_log(np.log(q), np.log1p(-q), mu, sigma)


def sample(mu, sigma, size=None, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Draw scores by inversion, F^{-1}(U) with U ~ Uniform(0, 1); mu, sigma broadcast to ``size``."""
    mu, sigma = _params(mu, sigma)
    rng = np.random.default_rng(rng)
    shape = np.broadcast_shapes(mu.shape, sigma.shape) if size is None else size
    u = rng.random(shape)
    with np.errstate(**_QUIET):
        return _ppf_log(np.log(u), np.log1p(-u), mu, sigma)


def max_cdf(s, n, mu, sigma) -> np.ndarray:
    """P(max of n i.i.d. scores <= s) = F(s)^n, computed as exp(n log F(s))."""
    n = _array("n", n, lo=1.0)
    with np.errstate(**_QUIET):
        return np.exp(n * logcdf(s, mu, sigma))


def max_ppf(q, n, mu, sigma) -> np.ndarray:
    """Quantile of the max of n scores: F^{-1}(q^{1/n}) (log q / n keeps q^{1/n} exact near 1)."""
    mu, sigma = _params(mu, sigma)
    q = _array("q", q, lo=0.0, hi=1.0)
    n = _array("n", n, lo=1.0)
    with np.errstate(**_QUIET):
        log_p = np.log(q) / n
        return _ppf_log(log_p, _log1mexp(log_p), mu, sigma)


# ------------------------------------------------------------------------------------------------ N*
@dataclass(frozen=True)
class NStar:
    """Result of the N* bound; arrays of one broadcast shape.

    n: int64 in [1, n_max]; reachable: False where F(s*) == 1 (n is then n_max);
    exact: ln alpha / ln F(s*) before ceil/clip (inf if unreachable, 0 if F(s*) == 0).
    """

    n: np.ndarray
    reachable: np.ndarray
    exact: np.ndarray


#: the largest sampling budget N_max accepted (2^53: integers up to it are exact in float64)
MAX_N_MAX = 2**53
NSTAR_TIE_RTOL = 1e-13   # quotients this close above an integer are ties (float noise in ln F, ln alpha)


def _check_alpha_nmax(alpha, n_max) -> tuple[np.ndarray, np.ndarray]:
    alpha = _array("alpha", alpha, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    n_max = np.asarray(n_max)
    if not np.issubdtype(n_max.dtype, np.number) or np.any(~np.isfinite(n_max)) or np.any(n_max < 1) \
            or np.any(n_max != np.floor(n_max)):
        raise ParameterError("n_max", "must be an integer >= 1")
    if np.any(n_max > MAX_N_MAX):  # beyond 2^53 the float arithmetic of N* is not exact (and int64 overflows)
        raise ParameterError("n_max", f"must be at most 2^53 = {MAX_N_MAX}, got {n_max.max()}")
    return alpha, n_max.astype(np.int64)


def n_star_from_logcdf(log_F, alpha, n_max) -> NStar:
    """N* = ceil(ln alpha / ln F(s*)) clipped to [1, n_max], from log F(s*) (Theorem 1).

    The result is the smallest N >= 1 with N ln F <= ln alpha, i.e. 1 - F^N >= 1 - alpha. Where the
    quotient lies within a relative ``NSTAR_TIE_RTOL`` (1e-13) above an integer k, N* = k: there F^k and
    alpha agree to within the rounding of F itself, so float noise must not decide, and mathematically exact
    ties (F(s*) = 1/2 at mu = s* = 0.5, alpha = 2^-k) give k, as the definition does (1 - F^k = 1 - alpha).
    log F = -inf gives N = 1; log F = 0 (F = 1) is unreachable and gives n_max.
    """
    log_F = _array("log_F", log_F, hi=0.0)
    alpha, n_max = _check_alpha_nmax(alpha, n_max)
    log_F, alpha, n_max = np.broadcast_arrays(log_F, alpha, n_max)
    log_a = np.log(alpha)
    reachable = log_F < 0.0
    with np.errstate(**_QUIET):
        exact = np.where(reachable, log_a / log_F, np.inf)
        n = np.ceil(np.minimum(exact * (1.0 - NSTAR_TIE_RTOL), n_max + 1.0))
    n = np.clip(np.where(reachable, n, n_max), 1, n_max).astype(np.int64)
    return NStar(n=n, reachable=reachable, exact=exact)


def n_star(mu, sigma, target, alpha, n_max) -> NStar:
    """N* for the truncated normal: N* = ceil(ln alpha / ln F(s*)), clipped to [1, n_max].

    ``target`` is s* in [0, 1]; ``alpha`` in (0, 1) is one minus the confidence that the best of N* scores
    reaches s*; ``n_max`` >= 1 is the sampling budget.
    """
    fast = _n_star_scalar(mu, sigma, target, alpha, n_max)
    if fast is not None:
        return fast
    mu, sigma = _params(mu, sigma)
    target = _array("target", target, lo=0.0, hi=1.0)
    if mu.ndim == 1 and sigma.shape == mu.shape and target.ndim == 0 and mu.size > _FIT_CHUNK:
        # elementwise: in chunks, so that the log-CDF temporaries stay small (same numbers)
        log_f = np.concatenate([_logcdf_only(target, mu[s:s + _FIT_CHUNK], sigma[s:s + _FIT_CHUNK])
                                for s in range(0, mu.size, _FIT_CHUNK)])
        return n_star_from_logcdf(log_f, alpha, n_max)
    return n_star_from_logcdf(_logcdf_only(target, mu, sigma), alpha, n_max)


# ------------------------------------------------------------------------------------------ estimation
@dataclass(frozen=True)
class Fit:
    """Estimated (mu, sigma) per problem.

    nll: negative log-likelihood (MLE) or negative log-posterior (MAP, Gaussian priors with their
    normalizing constants) at the estimate; converged: the projected Newton decrement fell below tol;
    iterations: iterations of the batch loop; at_bound: the estimate lies on the box
    [-mu_bound, mu_bound] x [sigma_min, sigma_max] (no interior optimum, e.g. one score, all scores equal).
    """

    mu: np.ndarray
    sigma: np.ndarray
    nll: np.ndarray
    converged: np.ndarray
    iterations: int
    at_bound: np.ndarray | None = None


def _stats(scores, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """(n, mean, biased variance) per row; a 1-D input is one row. Missing = mask False (or NaN)."""
    x = np.asarray(scores, dtype=float)
    if x.ndim not in (1, 2):
        raise ParameterError("scores", f"must be 1-D or 2-D, got shape {x.shape}")
    shape = x.shape[:-1]
    x = np.atleast_2d(x)
    m = np.isfinite(x) if mask is None else np.atleast_2d(np.asarray(mask, dtype=bool))
    if m.shape != x.shape:
        raise ParameterError("mask", f"shape {m.shape} does not match scores {x.shape}")
    used = np.where(m, x, 0.5)
    if not np.all(np.isfinite(used)) or np.any((used < 0) | (used > 1)):
        raise ParameterError("scores", "scores in use must be finite and in [0, 1]")
    n = m.sum(axis=1).astype(float)
    with np.errstate(**_QUIET):
        mean = np.where(n > 0, np.where(m, x, 0.0).sum(axis=1) / np.maximum(n, 1), 0.5)
        var = np.where(m, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(n, 1)
    return n, mean, var, shape


def _mills_tail(t):
    """(r, s) with r = lambda(t) - t and s = 1/r - t, lambda(t) = phi(t)/(1 - Phi(t)) the inverse Mills ratio,
    for t >= 0: the continued fraction r = 1/(t + 2/(t + 3/(t + ...))) = 1/(t + s) beyond t = 10, where the
    direct forms cancel."""
    with np.errstate(**_QUIET):
        lam = np.sqrt(2.0 / np.pi) / sc.erfcx(t * _SQRT1_2)
        r_direct = lam - t
        v = t.copy()
        for k in range(40, 2, -1):
            v = t + k / v
        s_cf = 2.0 / v
        far = t > 10.0
        r = np.where(far, 1.0 / (t + s_cf), r_direct)
        return r, np.where(far, s_cf, 1.0 / r_direct - t)


def _objective(mu, tau, n, mean, var, prior, need_grad=True):
    """Per-row objective f = NLL (+ neg. log prior), and its derivatives in local natural coordinates.

    NLL = n [(v + (xbar - mu)^2) / (2 sigma^2) + log sigma + log Z + log(2 pi)/2]. The truncated normal is an
    exponential family: with y = z - E z, z = (x - mu)/sigma, its density is proportional to
    exp(q1 y + q2 y^2) on the shifted interval. In q the NLL is convex, with gradient
    n (D, Var z - v/sigma^2 - D^2), D = (E x - xbar)/sigma, and Hessian n [[mu2, mu3], [mu3, mu4 - mu2^2]]
    (central moments of z). Moments come from m_k = (k-1) m_{k-2} + (a^{k-1} phi(a) - b^{k-1} phi(b))/Z;
    far in a tail the mean and variance come from the inverse Mills ratio (`_mills_tail`), the higher
    moments from the exponential limit (only the Hessian uses them).
    Returns f, or (f, g1, g2, h11, h12, h22, delta) with delta = E x - mu.
    """
    sigma = np.exp(tau)
    w = 1.0 / sigma
    refl = mu < 0.5   # orient so that the bulk of the normal lies at or above the interval (b <= 0: tail)
    a, b = -mu * w, (1.0 - mu) * w
    A, Bv = np.where(refl, -b, a), np.where(refl, -a, b)
    tail = Bv <= 0
    Bc = np.minimum(Bv, 0.0)
    L = _log1m_ratio(A, Bc, w)
    lsc = _log_ndtr_scaled(Bc)
    zo = np.where(refl, mu - mean, mean - mu) * w   # zhat, oriented
    dist = np.where(refl, mean, 1.0 - mean) * w    # Bv - zo = distance of xbar from the near edge / sigma
    log_z = _log_ndtr_diff(A, Bv, w)
    quad = np.where(tail, 0.5 * (zo + Bc) * (zo - Bc) + lsc + L, 0.5 * zo * zo + log_z)
    f = n * (0.5 * var * w * w + quad + tau + _HALF_LOG_2PI)
    if prior is not None:
        mu0, s0, sdm, sds = prior
        f = f + 0.5 * ((mu - mu0) / sdm) ** 2 + 0.5 * ((sigma - s0) / sds) ** 2 + np.log(sdm * sds) \
            + 2 * _HALF_LOG_2PI
    if not need_grad:
        return f
    pB = np.where(tail, np.exp(-_HALF_LOG_2PI - lsc - L), np.exp(-0.5 * Bv * Bv - _HALF_LOG_2PI - log_z))
    pA = np.where(tail, np.exp(0.5 * w * (A + Bc) - _HALF_LOG_2PI - lsc - L),
                  np.exp(-0.5 * A * A - _HALF_LOG_2PI - log_z))
    pA = np.where(np.isfinite(A), pA, 0.0)
    m1 = pA - pB
    m2 = 1.0 + A * pA - Bv * pB
    m3 = 2.0 * m1 + A * A * pA - Bv * Bv * pB
    m4 = 3.0 * m2 + A * A * A * pA - Bv * Bv * Bv * pB
    mu2 = m2 - m1 * m1
    mu3 = m3 - 3.0 * m1 * m2 + 2.0 * (m1 * m1 * m1)
    mu4c = m4 - 4.0 * m1 * m3 + 6.0 * m1 * m1 * m2 - 3.0 * ((m1 * m1) * (m1 * m1)) - mu2 * mu2
    edge = Bv - m1   # (near edge - E z) in z units
    r, s = _mills_tail(np.maximum(-Bv, 0.0))
    far = tail & (-Bv > 10.0) & (-Bv * w + 0.5 * w * w > 45.0)   # far side carries < e^-45 of the mass
    edge = np.where(far, r, edge)
    mu2 = np.maximum(np.where(far, r * (s - r), mu2), 1e-300)
    rough = np.abs(m1) >= 30.0   # raw 3rd/4th central moments cancel: exponential limit
    mu3 = np.where(rough, -2.0 * (mu2 * np.sqrt(mu2)), mu3)
    mu4c = np.maximum(np.where(rough, 8.0 * mu2 * mu2, mu4c), 1e-300)
    D = np.where(refl, edge - dist, dist - edge)    # (E x - xbar) / sigma
    delta = np.where(refl, -sigma * (Bv - edge), sigma * (Bv - edge))   # E x - mu = sigma E z
    mu3 = np.where(refl, -mu3, mu3)
    g1, g2 = n * D, n * (mu2 - var * w * w - D * D)
    h11, h12, h22 = n * mu2, n * mu3, n * mu4c
    if prior is not None:   # prior terms mapped to q via J = d(mu, tau)/dq = [[sigma, -2 delta], [0, 1]]; the
        # Hessian includes the curvature of the q -> (mu, sigma) map of `_move` (d2 mu/dq1 dq2 = 2 sigma,
        # d2 mu/dq2^2 = -8 delta, d2 sigma/dq2^2 = 3 sigma), kept positive: Newton converges quadratically
        dmu, dsig = (mu - mu0) / sdm**2, (sigma - s0) / sds**2
        g1, g2 = g1 + sigma * dmu, g2 + sigma * dsig - 2.0 * delta * dmu
        p1 = 1.0 / sdm**2
        pos = h22 + 4.0 * delta**2 * p1 + sigma**2 / sds**2
        h11, h12, h22 = (h11 + sigma**2 * p1, h12 - 2.0 * sigma * delta * p1 + 2.0 * sigma * dmu,
                         np.maximum(pos + (3.0 * sigma * dsig - 8.0 * delta * dmu), 0.1 * pos))
    return f, g1, g2, h11, h12, h22, delta


def _move(mu, tau, t, d_mu, d_tau, lo, hi):
    """Step t along (d_mu, d_tau) on the straight line of natural parameters, mapped back and clipped to the box:
    mu' = mu + t d_mu / (1 - 2 t d_tau), sigma' = sigma / sqrt(1 - 2 t d_tau)."""
    den = np.maximum(1.0 - 2.0 * t * d_tau, 1e-300)
    return np.clip(mu + t * d_mu / den, lo[0], hi[0]), np.clip(tau - 0.5 * np.log(den), lo[1], hi[1])


def _optimize(n, mean, var, prior, lo, hi, init, max_iter, tol):
    """Projected Newton on the exponential-family parameters, for all rows at once, inside the box lo <= (mu,
    log sigma) <= hi. Directions are solved in centered natural coordinates q (well conditioned) and mapped
    to theta = (mu, log sigma) by J = [[sigma, -2 delta], [0, 1]]; a variable on its bound is held fixed when
    its gradient or Newton step points outward. Levenberg-Marquardt damping adapts per row, and Armijo
    backtracking along the natural-parameter line means the objective never increases.
    Converged: Newton decrement -g.d <= tol (1 + |f|)."""
    mu, tau = (np.array(v, dtype=float) for v in init)
    B = mu.shape[0]
    converged = np.zeros(B, bool)
    lam = np.zeros(B)
    active = np.arange(B)
    it = 0
    with np.errstate(**_QUIET):
        while active.size and it < max_iter:
            it += 1
            rows = (n[active], mean[active], var[active], None if prior is None else
                    tuple(p[active] for p in prior))
            m, t, la = mu[active], tau[active], lam[active]
            f, g1, g2, h11, h12, h22, delta = _objective(m, t, *rows)
            sigma = np.exp(t)
            c = delta / sigma
            gm, gt = g1 / sigma, g2 + 2.0 * c * g1                    # gradient in (mu, tau)
            h12 = np.clip(h12, -(1 - 1e-12) * np.sqrt(h11 * h22), (1 - 1e-12) * np.sqrt(h11 * h22))
            hmm, htt = h11 / sigma**2, 4.0 * c * c * h11 + 4.0 * c * h12 + h22   # 1-D curvatures in theta

            def direction(k11, k12, k22, free_m, free_t, sm=0.0, st=0.0, sigma=sigma, delta=delta, g1=g1, g2=g2):
                # Newton step of the quadratic model in q over the free variables. A held mu lands on m + sm, a
                # held tau on the line parameter st: `_move` is a straight line in natural parameters, so both
                # constraints are lines in q and the held-variable steps stay on the ridge mu / sigma^2 ~ const.
                det = k11 * k22 - k12 * k12
                q1, q2 = -(k22 * g1 - k12 * g2) / det, -(k11 * g2 - k12 * g1) / det
                r1 = -(g1 + k12 * st) / k11                                 # tau held: q2 = st
                v1, p1 = 2.0 * (delta - sm), sm / sigma                      # mu held: q = (p1, 0) + s (v1, sigma)
                s = -(g1 * v1 + g2 * sigma + p1 * (k11 * v1 + k12 * sigma)) \
                    / (k11 * v1 * v1 + 2.0 * k12 * v1 * sigma + k22 * sigma * sigma)
                both, some = free_m & free_t, free_m | free_t
                q1 = np.where(both, q1, np.where(free_m, r1, p1 + s * v1))
                q2 = np.where(both, q2, np.where(free_m, st, s * sigma))
                return (np.where(some, sigma * q1 - 2.0 * delta * q2, sm * (1.0 - 2.0 * st)),
                        np.where(some, q2, st))

            # epsilon-active set (Bertsekas 1982): a variable within reach of a bound (its Newton step) whose
            # gradient points outward is snapped onto that bound and held; a variable on its bound whose Newton
            # step points outward is held; the others take the Newton step of the free subspace.
            everyone = np.ones(m.shape, bool)
            dm_f, dt_f = direction(h11, h12, h22, everyone, everyone)
            eps_m = np.minimum(np.maximum(np.abs(dm_f), np.abs(gm / hmm)), 1.0)
            eps_t = np.minimum(np.maximum(np.abs(dt_f), np.abs(gt / htt)), 0.5)
            act_m = ((m <= lo[0] + eps_m) & (gm > 0)) | ((m >= hi[0] - eps_m) & (gm < 0))
            act_t = ((t <= lo[1] + eps_t) & (gt > 0)) | ((t >= hi[1] - eps_t) & (gt < 0))
            free_m, free_t = ~act_m, ~act_t
            dm, dt = direction(h11, h12, h22, free_m, free_t)
            both = free_m & free_t
            out_m = both & (((m <= lo[0]) & (dm < 0)) | ((m >= hi[0]) & (dm > 0)))
            out_t = both & ~out_m & (((t <= lo[1]) & (dt < 0)) | ((t >= hi[1]) & (dt > 0)))
            free_m, free_t = free_m & ~out_m, free_t & ~out_t
            snap_m = np.where(gm > 0, lo[0], hi[0]) - m
            snap_t = 0.5 * (1.0 - np.exp(-2.0 * (np.where(gt > 0, lo[1], hi[1]) - t)))  # lands on the bound
            snap_m, snap_t = np.where(act_m, snap_m, 0.0), np.where(act_t, snap_t, 0.0)
            for damp in (0.0, la):
                dm, dt = direction(h11 * (1 + damp), h12, h22 * (1 + damp), free_m, free_t, snap_m, snap_t)
                if damp is not la:
                    decrement = np.maximum(-(gm * dm + gt * dt), 0.0)
            done = ~(decrement > tol * (1.0 + np.abs(f)))
            converged[active[done]] = True
            # first trial at most doubles sigma (1 - 2 dt >= 1/4) and moves mu by at most max(2|mu|, 20 sigma, 1)
            step = np.minimum(1.0, np.minimum(0.375 / np.maximum(dt, 1e-300),
                                              np.maximum(np.maximum(2 * np.abs(m), 20 * sigma), 1.0)
                                              / np.maximum(np.abs(dm), 1e-300)))
            pending = ~done
            first = np.zeros(active.size, bool)
            flat = np.zeros(active.size, bool)   # accepted without a strict decrease: at the noise floor of f
            for k in range(40):
                if not pending.any():
                    break
                idx = np.flatnonzero(pending)
                nm, nt = _move(m[idx], t[idx], step[idx], dm[idx], dt[idx], lo, hi)
                sub = tuple(r[idx] for r in rows[:3]) + (None if prior is None else
                                                          tuple(p[idx] for p in rows[3]),)
                lin = gm[idx] * (nm - m[idx]) + gt[idx] * (nt - t[idx])   # first-order change of the move
                fn = _objective(nm, nt, *sub, need_grad=False)
                ok = fn <= f[idx] + 1e-4 * np.minimum(lin, 0.0)
                acc = idx[ok]
                mu[active[acc]], tau[active[acc]] = nm[ok], nt[ok]
                pending[acc] = False
                first[acc] = k == 0
                flat[acc] = ~(fn[ok] < f[acc])
                # predicted decrease below what f resolves: shorter steps cannot show one either
                lost = idx[~ok & (lin < 0.0) & (-lin <= 1e-14 * (1.0 + np.abs(f[idx])))]
                pending[lost], flat[lost] = False, True
                step[idx[~ok]] *= 0.5
            lam[active] = np.where(first, la * 0.1, np.where(pending, np.maximum(la * 10, 1.0), la))
            lam[lam < 1e-6] = 0.0
            # no decrease even under heavy damping, or none beyond rounding: nothing representable left to gain
            give_up = (pending & (la > 1e8)) | flat
            converged[active[give_up]] = decrement[give_up] <= 1e-6 * (1.0 + np.abs(f[give_up]))
            active = active[~done & ~give_up]
    return mu, tau, converged, it


def _fit(scores, mask, prior, sigma_min, sigma_max, mu_bound, max_iter, tol) -> Fit:
    sigma_min = _positive("sigma_min", sigma_min)
    sigma_max = _positive("sigma_max", sigma_max, lo=sigma_min)
    mu_bound = _positive("mu_bound", mu_bound)
    n, mean, var, shape = _stats(scores, mask)
    if n.shape[0] <= _SMALL_BATCH:
        fast = _fit_small(n, mean, var, shape, prior, sigma_min, sigma_max, mu_bound, max_iter, tol)
        if fast is not None:
            return fast
    B = n.shape[0]
    if B <= _FIT_CHUNK:
        return _fit_stats(n, mean, var, shape, prior, sigma_min, sigma_max, mu_bound, max_iter, tol)
    # rows are independent: fit in chunks so that the optimizer's temporaries stay small (memory linear in
    # the chunk, not the batch); the numbers are the same as one batch's
    if prior is not None:
        prior = tuple(np.broadcast_to(np.asarray(p, float), (B,)) for p in prior)
    parts = [
        _fit_stats(n[s:s + _FIT_CHUNK], mean[s:s + _FIT_CHUNK], var[s:s + _FIT_CHUNK], (min(_FIT_CHUNK, B - s),),
                   None if prior is None else tuple(p[s:s + _FIT_CHUNK] for p in prior),
                   sigma_min, sigma_max, mu_bound, max_iter, tol)
        for s in range(0, B, _FIT_CHUNK)
    ]
    cat = {f: np.concatenate([getattr(p, f) for p in parts]).reshape(shape)
           for f in ("mu", "sigma", "nll", "converged", "at_bound")}
    return Fit(**cat, iterations=max(p.iterations for p in parts))


#: rows per batch of the vectorized fit (bounds its temporaries to tens of MB)
_FIT_CHUNK = 1 << 16


def _fit_stats(n, mean, var, shape, prior, sigma_min, sigma_max, mu_bound, max_iter, tol) -> Fit:
    B = n.shape[0]
    lo = (-mu_bound, np.log(sigma_min))
    hi = (mu_bound, np.log(sigma_max))
    data_init = (np.clip(mean, *np.array([lo[0], hi[0]])), np.clip(0.5 * np.log(np.maximum(var, 1e-300)), lo[1], hi[1]))
    if prior is None:
        init = (np.where(n > 0, data_init[0], 0.5), np.where(n > 0, data_init[1], hi[1]))
        mu, tau, converged, it = _optimize(n, mean, var, None, lo, hi, init, max_iter, tol)
        converged &= n > 0
    else:  # the posterior may have two modes (data-like small sigma, prior-like): start at both, keep the best
        prior = tuple(np.broadcast_to(np.asarray(p, float), (B,)) for p in prior)
        prior_init = (np.clip(prior[0], lo[0], hi[0]),
                      np.clip(np.log(np.maximum(prior[1], 1e-300)), lo[1], hi[1]))
        init = tuple(np.concatenate(pair) for pair in zip(data_init, prior_init, strict=True))
        twice = tuple(np.concatenate([v, v]) for v in (n, mean, var))
        mu2, tau2, conv2, it = _optimize(*twice, tuple(np.concatenate([p, p]) for p in prior), lo, hi, init,
                                         max_iter, tol)
        with np.errstate(**_QUIET):
            f2 = _objective(mu2, tau2, *twice, tuple(np.concatenate([p, p]) for p in prior), need_grad=False)
        pick = np.where(f2[B:] < f2[:B], B, 0) + np.arange(B)
        mu, tau, converged = mu2[pick], tau2[pick], conv2[pick]
    with np.errstate(**_QUIET):
        nll = _objective(mu, tau, n, mean, var, prior, need_grad=False)
    low, high = tau <= lo[1] + 1e-12, tau >= hi[1] - 1e-12
    sigma = np.where(low, sigma_min, np.where(high, sigma_max, np.exp(tau)))
    at_bound = (np.abs(mu) >= mu_bound) | low | high
    return Fit(mu=mu.reshape(shape), sigma=sigma.reshape(shape), nll=nll.reshape(shape),
               converged=converged.reshape(shape), iterations=it, at_bound=at_bound.reshape(shape))


def fit_mle(scores, mask=None, *, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, mu_bound=MU_BOUND,
            max_iter=100, tol=1e-13) -> Fit:
    """OptScale^0 (Sec. 4.1): maximum-likelihood (mu, sigma) of the truncated normal, per row.

    scores: [B, M] (or [M]) in [0, 1]; mask: [B, M] bool, True = use (default: the finite entries), so rows
    may have different counts. The MLE maximizes sum_i log f(x_i) over the box
    |mu| <= mu_bound, sigma_min <= sigma <= sigma_max. With one score or all scores equal the likelihood
    grows without bound as sigma -> 0: the result is then on the bound sigma = sigma_min (flag at_bound).
    A row without scores gets (0.5, sigma_max), converged False.
    """
    return _fit(scores, mask, None, sigma_min, sigma_max, mu_bound, max_iter, tol)


def fit_map(scores, mask=None, *, mu0, sigma0, sd_mu=0.1, sd_sigma=0.1, sigma_min=SIGMA_MIN,
            sigma_max=SIGMA_MAX, mu_bound=MU_BOUND, max_iter=100, tol=1e-13) -> Fit:
    """OptScale^t (Sec. 4.2): MAP estimate with priors mu ~ N(mu0, sd_mu^2), sigma ~ N(sigma0, sd_sigma^2).

    Minimizes NLL(mu, sigma) + (mu - mu0)^2 / (2 sd_mu^2) + (sigma - sigma0)^2 / (2 sd_sigma^2) (+ constants);
    mu0, sigma0, sd_mu, sd_sigma broadcast to [B]. Rows without scores return the prior mode.
    """
    prior = (_array("mu0", mu0), _array("sigma0", sigma0), _array("sd_mu", sd_mu, lo=0, lo_open=True),
             _array("sd_sigma", sd_sigma, lo=0, lo_open=True))
    return _fit(scores, mask, prior, sigma_min, sigma_max, mu_bound, max_iter, tol)


def neg_log_likelihood(scores, mask, mu, sigma) -> np.ndarray:
    """-sum_i log f(x_i | mu, sigma) over the used scores of each row ([B], or a scalar for 1-D scores)."""
    n, mean, var, shape = _stats(scores, mask)
    mu, sigma = _params(mu, sigma)
    mu, sigma = np.broadcast_to(mu, n.shape), np.broadcast_to(sigma, n.shape)
    with np.errstate(**_QUIET):
        return _objective(mu.reshape(-1), np.log(sigma).reshape(-1), n, mean, var, None,
                          need_grad=False).reshape(shape)


# --------------------------------------------------------------------------- small-batch fast path
# The online runner asks for one decision per problem per wave (B = 1). There numpy's per-call overhead
# dominates, so small batches and scalar N* queries go to `optscale._theory_scalar`, a plain-Python port of
# the functions above (same branches, same order of operations, same special functions). Anything it does
# not handle exactly like numpy (nan, inf, 0/0) raises, and the vectorized path answers instead.
_SMALL_BATCH = 8   #: fits with at most this many rows use the scalar path, row by row
_SCALARS = (float, int, np.floating, np.integer)


def _positive(name: str, x, lo: float = 0.0) -> float:
    """float(x) for a scalar x > lo (the estimators' box parameters), validated like `_array`."""
    if isinstance(x, _SCALARS) and not isinstance(x, bool) and lo < x < np.inf:
        return float(x)
    return float(_array(name, x, lo=lo, lo_open=True))


def _fit_small(n, mean, var, shape, prior, sigma_min, sigma_max, mu_bound, max_iter, tol) -> Fit | None:
    """`_fit_stats` row by row in scalar arithmetic; None where the scalar path declines."""
    from optscale import _theory_scalar as S

    B = n.shape[0]
    lo = (-mu_bound, float(np.log(sigma_min)))
    hi = (mu_bound, float(np.log(sigma_max)))
    if prior is not None:
        prior = [np.broadcast_to(p, (B,)).tolist() for p in prior]
    rows = []
    try:
        for i, (ni, mi, vi) in enumerate(zip(n.tolist(), mean.tolist(), var.tolist(), strict=True)):
            pr = None if prior is None else (prior[0][i], prior[1][i], prior[2][i], prior[3][i])
            rows.append(S.fit_row(ni, mi, vi, pr, lo, hi, int(max_iter), tol))
    except (ArithmeticError, ValueError):
        return None
    mu, tau, converged, its, nll = (np.array(v) for v in zip(*rows, strict=True))
    low, high = tau <= lo[1] + 1e-12, tau >= hi[1] - 1e-12
    sigma = np.where(low, sigma_min, np.where(high, sigma_max, np.exp(tau)))
    at_bound = (np.abs(mu) >= mu_bound) | low | high
    return Fit(mu=mu.reshape(shape), sigma=sigma.reshape(shape), nll=nll.reshape(shape),
               converged=converged.astype(bool).reshape(shape), iterations=int(its.max()),
               at_bound=at_bound.reshape(shape))


def _n_star_scalar(mu, sigma, target, alpha, n_max) -> NStar | None:
    """`n_star` for scalar arguments in scalar arithmetic; None (use the vectorized path, which also
    reports invalid arguments) unless all five are valid scalars."""
    args = (mu, sigma, target, alpha)
    if not all(isinstance(v, _SCALARS) and not isinstance(v, bool) for v in args) \
            or not isinstance(n_max, (int, np.integer)) or isinstance(n_max, bool):
        return None
    mu, sigma, target, alpha = (float(v) for v in args)
    n_max = int(n_max)
    if not (abs(mu) < np.inf and 0.0 < sigma < np.inf and 0.0 <= target <= 1.0 and 0.0 < alpha < 1.0
            and 1 <= n_max <= MAX_N_MAX):
        return None
    from optscale import _theory_scalar as S

    try:
        log_F = S.logcdf(target, mu, sigma)
        n, reachable, exact = S.n_star(log_F, float(np.log(alpha)), n_max)
    except (ArithmeticError, ValueError):
        return None
    return NStar(n=np.int64(n), reachable=np.bool_(reachable), exact=np.array(exact))


# --------------------------------------------------------------------------------- Fisher information
def fisher_information(mu, sigma, *, grid: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample Fisher information (I_mu_mu, I_sigma_sigma) of the truncated normal at (mu, sigma).

    The family is exponential with natural parameters (mu / sigma^2, -1 / (2 sigma^2)) and sufficient
    statistics (x, x^2), so I = J^T Cov(x, x^2) J, which gives
    I_mu_mu = Var(x) / sigma^4 and I_sigma_sigma = Var((x - mu)^2) / sigma^6.
    The moments are integrated by a ``grid``-point midpoint rule over the part of [0, 1] within 12 sigma
    of the mode clip(mu, 0, 1) (weights from ``logpdf``, normalised: no NaN for mu far outside [0, 1] or
    tiny sigma). Used to cap how many samples a prior is worth: a prior sd below 1 / sqrt(k0 I) says more
    than k0 observations would.
    """
    mu, sigma = _params(mu, sigma)
    mu, sigma = np.broadcast_arrays(mu, sigma)
    shape = mu.shape
    m, sg = mu.reshape(-1, 1), sigma.reshape(-1, 1)
    mode = np.clip(m, 0.0, 1.0)
    lo, hi = np.maximum(0.0, mode - 12.0 * sg), np.minimum(1.0, mode + 12.0 * sg)
    x = lo + (hi - lo) * ((np.arange(grid) + 0.5) / grid)[None, :]
    with np.errstate(**_QUIET):
        lp = _logpdf(x, m, sg)
        w = np.exp(lp - lp.max(axis=1, keepdims=True))
        w /= w.sum(axis=1, keepdims=True)
        mean = (w * x).sum(axis=1, keepdims=True)
        var = (w * (x - mean) ** 2).sum(axis=1)
        d2 = (x - m) ** 2
        var2 = (w * (d2 - (w * d2).sum(axis=1, keepdims=True)) ** 2).sum(axis=1)
        s = sg[:, 0]
        return (var / s**4).reshape(shape), (var2 / s**6).reshape(shape)


# --------------------------------------------------------------------------------- moment matching
def params_to_moments(mu, sigma) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of the truncated normal: mean = mu + sigma E[z], std = sigma sqrt(Var z), with
    E[z] = (phi(a) - phi(b)) / Z and E[z^2] = 1 + (a phi(a) - b phi(b)) / Z (inverse Mills ratio far in a
    tail; computed by the estimator's moment code, `_objective`)."""
    mu, sigma = _params(mu, sigma)
    mu, sigma = np.broadcast_arrays(mu, sigma)
    shape = mu.shape
    mu, tau = mu.reshape(-1).astype(float), np.log(sigma.reshape(-1))
    one = np.ones(mu.shape)
    with np.errstate(**_QUIET):
        _, _, _, var_z, _, _, delta = _objective(mu, tau, one, 0.5 * one, 0.0 * one, None)
        return (np.clip(mu + delta, 0.0, 1.0).reshape(shape),
                (np.exp(tau) * np.sqrt(var_z)).reshape(shape))


def moments_to_params(mean, std, *, sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, mu_bound=MU_BOUND,
                      max_iter=100, tol=1e-15) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the truncated normal with the given mean and std (moment matching), vectorized.

    Matching E[x] = mean and E[x^2] = mean^2 + std^2 is exactly the likelihood equation of an exponential
    family, so this is the MLE for data with those moments; moments no truncated normal in the box can
    reach (e.g. std near sqrt(mean(1-mean))) give the closest member on the box boundary, std = 0 gives
    sigma = sigma_min.
    """
    mean = _array("mean", mean, lo=0.0, hi=1.0)
    std = _array("std", std, lo=0.0)
    mean, std = np.broadcast_arrays(mean, std)
    sigma_min = float(_array("sigma_min", sigma_min, lo=0.0, lo_open=True))
    sigma_max = float(_array("sigma_max", sigma_max, lo=sigma_min, lo_open=True))
    fit = _fit_stats(np.ones(mean.size), mean.reshape(-1).astype(float), (std**2).reshape(-1).astype(float),
                     mean.shape, None, sigma_min, sigma_max, float(mu_bound), max_iter, tol)
    return fit.mu, fit.sigma
