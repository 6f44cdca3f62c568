"""Scalar fast path of `optscale.theory`: the same formulas, one problem at a time, in plain Python floats.

The online runner makes one decision per problem per wave (one row of at most a few dozen scores). At that
size numpy's per-call overhead (a few microseconds per ufunc, hundreds of ufuncs per Newton iteration)
dominates, so `theory` routes small batches and scalar N* queries here. Every function below is a line-by-
line port of its vectorized namesake in `theory` (same branches, same order of operations, the same scipy
special functions called on scalars), so the results agree with the vectorized path to rounding: the only
differences come from libm vs numpy's own exp/log (at most an ulp or so per call).

Only the branch a value needs is evaluated (np.where evaluates both). Where Python float arithmetic would
raise instead of returning inf/nan (math.log(0), math.exp overflow, division by zero) the caller falls back
to the vectorized path, which is the reference: `Fallback` is raised, or escapes as ArithmeticError /
ValueError, and `theory` catches both.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special as sc

_LN2 = math.log(2.0)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT1_2 = math.sqrt(0.5)
_SQRT_2_PI = math.sqrt(2.0 / math.pi)
_INF = math.inf
_NSTAR_TIE_RTOL = 1e-13   # = theory.NSTAR_TIE_RTOL (a test keeps them equal)

class Fallback(ArithmeticError):
    """The scalar path met a value it does not handle like numpy (nan, inf, 0/0): use the vectorized path."""


_erfcx, _erf, _log_ndtr = sc.erfcx, sc.erf, sc.log_ndtr
_np_log, _np_exp, _np_log1p, _np_expm1 = np.log, np.exp, np.log1p, np.expm1


# numpy's exp/log/log1p/expm1 (SIMD, SVML) differ from libm's in the last bit for a few percent of
# arguments; the scalar path calls the numpy ufuncs on Python floats so that both paths round alike (a fit
# that stops on max_iter, or a flat likelihood, would otherwise amplify one ulp into a visible difference).
def _log(x: float) -> float:
    return float(_np_log(x))


def _exp(x: float) -> float:
    if x > 709.0:   # numpy would overflow (with a warning): leave it to the vectorized path
        raise Fallback
    return float(_np_exp(x))


def _log1p(x: float) -> float:
    return float(_np_log1p(x))


def _expm1(x: float) -> float:
    return float(_np_expm1(x))


def _sq(x: float) -> float:
    return x * x


def _safe_log(x: float) -> float:
    """log x with numpy's conventions at 0 (-inf); negative or nan input -> Fallback."""
    if x > 0.0:
        return _log(x)
    if x == 0.0:
        return -_INF
    raise Fallback


# ------------------------------------------------------------------------------------ log-space helpers
def log1mexp(x: float) -> float:
    """log(1 - exp(x)) for x <= 0 (theory._log1mexp)."""
    if x > -_LN2:
        return _safe_log(-_expm1(x))
    return _log1p(-_exp(x))


def log_ndtr_scaled(x: float) -> float:
    """log Phi(x) + x^2/2 for x <= 0 (theory._log_ndtr_scaled)."""
    return _log(0.5 * float(_erfcx(-x * _SQRT1_2)))


def log_ratio(x: float, y: float, d: float) -> float:
    """log Phi(x) - log Phi(y) for x <= y <= 0, d = y - x (theory._log_ratio)."""
    return log_ndtr_scaled(x) - log_ndtr_scaled(y) + 0.5 * d * (x + y)


def log1m_ratio(x: float, y: float, d: float) -> float:
    """log(1 - Phi(x) / Phi(y)) for x <= y <= 0, d = y - x (theory._log1m_ratio; midpoint rule when d is tiny)."""
    m = y - 0.5 * d
    if d * (1.0 + abs(m)) < 1e-3:
        return (_safe_log(d) + 0.25 * d * (m + y) - _HALF_LOG_2PI - log_ndtr_scaled(y)
                + _log1p(d * d * (m * m - 1.0) / 24.0))
    return log1mexp(min(log_ratio(x, y, d), 0.0))


def log_ndtr_diff(lo: float, hi: float, width: float) -> float:
    """log(Phi(hi) - Phi(lo)) for lo <= hi, width = hi - lo (theory._log_ndtr_diff)."""
    if lo > 0:
        lo, hi = -hi, -lo
    if hi <= 0:
        return float(_log_ndtr(hi)) + log1m_ratio(lo, hi, width)
    mid = 0.5 * (lo + hi)
    if width * (1.0 + abs(mid)) < 1e-3:
        return (_safe_log(width) - 0.5 * (mid * mid) - _HALF_LOG_2PI
                + _log1p(width * width * (mid * mid - 1.0) / 24.0))
    return _safe_log(0.5 * (float(_erf(hi * _SQRT1_2)) - float(_erf(lo * _SQRT1_2))))


# ------------------------------------------------------------------------------------ distribution
def logcdf(s: float, mu: float, sigma: float) -> float:
    """log F(s) of the truncated normal (theory._logcdf_logsf, first output) for validated scalars."""
    if s <= 0.0:
        return -_INF
    if s >= 1.0:
        return 0.0
    # theory._reflected: orient so that the normal's bulk lies at or above the interval's middle
    refl = mu < 0.5
    a, b, z = -mu / sigma, (1.0 - mu) / sigma, (s - mu) / sigma
    wl, wh = s / sigma, (1.0 - s) / sigma
    w_ab = 1.0 / sigma
    if refl:
        a, b, z, w_az, w_zb = -b, -a, -z, wh, wl
    else:
        w_az, w_zb = wl, wh
    # theory._pair_logs, with the normalizer log Z shared by the 'cdf' and 'sf' pairs
    if b <= 0:
        zc = min(z, 0.0)
        log_z = log1m_ratio(a, b, w_ab)
        first = min(log_ratio(zc, b, w_zb) + log1m_ratio(a, zc, w_az) - log_z, 0.0)
        if first > -_LN2:   # F' > 1/2: the smaller 1 - F' directly
            second = min(log1m_ratio(zc, b, w_zb) - log_z, 0.0)
            first = log1mexp(second)
        elif refl:
            second = log1mexp(first)
    else:
        log_z = log_ndtr_diff(a, b, w_ab)
        first = min(log_ndtr_diff(a, z, w_az) - log_z, 0.0)
        if first > -_LN2:
            second = min(log_ndtr_diff(z, b, w_zb) - log_z, 0.0)
            first = log1mexp(second)
        elif refl:
            second = log1mexp(first)
    return second if refl else first


def n_star(log_F: float, log_a: float, n_max: int) -> tuple[int, bool, float]:
    """(N*, reachable, exact) from log F(s*) and log alpha (theory.n_star_from_logcdf)."""
    reachable = log_F < 0.0
    exact = log_a / log_F if reachable else _INF
    if not reachable:
        return n_max, False, exact
    n = float(math.ceil(min(exact * (1.0 - _NSTAR_TIE_RTOL), n_max + 1.0)))
    return min(max(int(n), 1), n_max), True, exact


# ------------------------------------------------------------------------------------------ estimation
def _mills_far(t: float) -> tuple[float, float]:
    """(r, s) of theory._mills_tail for t > 10 (continued fraction)."""
    v = t
    for k in range(40, 2, -1):
        v = t + k / v
    s_cf = 2.0 / v
    return 1.0 / (t + s_cf), s_cf


def objective(mu, tau, n, mean, var, prior, need_grad=True):
    """theory._objective for one row: f, or (f, g1, g2, h11, h12, h22, delta)."""
    sigma = _exp(tau)
    w = 1.0 / sigma
    refl = mu < 0.5
    a, b = -mu * w, (1.0 - mu) * w
    if refl:
        A, Bv = -b, -a
        zo, dist = (mu - mean) * w, mean * w
    else:
        A, Bv = a, b
        zo, dist = (mean - mu) * w, (1.0 - mean) * w
    tail = Bv <= 0
    if tail:
        Bc = Bv
        L = log1m_ratio(A, Bc, w)
        lsc = log_ndtr_scaled(Bc)
        quad = 0.5 * (zo + Bc) * (zo - Bc) + lsc + L
    else:
        Bc = 0.0
        log_z = log_ndtr_diff(A, Bv, w)
        quad = 0.5 * zo * zo + log_z
    f = n * (0.5 * var * w * w + quad + tau + _HALF_LOG_2PI)
    if prior is not None:
        mu0, s0, sdm, sds = prior
        f = f + 0.5 * _sq((mu - mu0) / sdm) + 0.5 * _sq((sigma - s0) / sds) + _log(sdm * sds) \
            + 2 * _HALF_LOG_2PI
    if not need_grad:
        return f
    if tail:
        pB = _exp(-_HALF_LOG_2PI - lsc - L)
        pA = _exp(0.5 * w * (A + Bc) - _HALF_LOG_2PI - lsc - L)
    else:
        pB = _exp(-0.5 * Bv * Bv - _HALF_LOG_2PI - log_z)
        pA = _exp(-0.5 * A * A - _HALF_LOG_2PI - log_z)
    m1 = pA - pB
    m2 = 1.0 + A * pA - Bv * pB
    m3 = 2.0 * m1 + A * A * pA - Bv * Bv * pB
    m4 = 3.0 * m2 + A * A * A * pA - Bv * Bv * Bv * pB
    mu2 = m2 - m1 * m1
    mu3 = m3 - 3.0 * m1 * m2 + 2.0 * (m1 * m1 * m1)
    mu4c = m4 - 4.0 * m1 * m3 + 6.0 * m1 * m1 * m2 - 3.0 * ((m1 * m1) * (m1 * m1)) - mu2 * mu2
    edge = Bv - m1
    if tail and -Bv > 10.0 and -Bv * w + 0.5 * w * w > 45.0:   # far side carries < e^-45 of the mass
        r, s = _mills_far(-Bv)
        edge, mu2 = r, r * (s - r)
    mu2 = max(mu2, 1e-300)
    if abs(m1) >= 30.0:
        mu3, mu4c = -2.0 * (mu2 * math.sqrt(mu2)), 8.0 * mu2 * mu2
    mu4c = max(mu4c, 1e-300)
    if refl:
        D, delta, mu3 = edge - dist, -sigma * (Bv - edge), -mu3
    else:
        D, delta = dist - edge, sigma * (Bv - edge)
    g1, g2 = n * D, n * (mu2 - var * w * w - D * D)
    h11, h12, h22 = n * mu2, n * mu3, n * mu4c
    if prior is not None:
        dmu, dsig = (mu - mu0) / (sdm * sdm), (sigma - s0) / (sds * sds)
        g1, g2 = g1 + sigma * dmu, g2 + sigma * dsig - 2.0 * delta * dmu
        p1 = 1.0 / (sdm * sdm)
        pos = h22 + 4.0 * (delta * delta) * p1 + sigma * sigma / (sds * sds)
        h11, h12, h22 = (h11 + sigma * sigma * p1, h12 - 2.0 * sigma * delta * p1 + 2.0 * sigma * dmu,
                         max(pos + (3.0 * sigma * dsig - 8.0 * delta * dmu), 0.1 * pos))
    return f, g1, g2, h11, h12, h22, delta


def optimize(n, mean, var, prior, lo, hi, mu, tau, max_iter, tol):
    """theory._optimize for one row: projected Newton with Levenberg-Marquardt damping and Armijo
    backtracking along the natural-parameter line. Returns (mu, tau, converged, iterations)."""
    lo0, lo1 = lo
    hi0, hi1 = hi
    converged = False
    lam = 0.0
    it = 0
    while it < max_iter:
        it += 1
        m, t, la = mu, tau, lam
        f, g1, g2, h11, h12, h22, delta = objective(m, t, n, mean, var, prior)
        sigma = _exp(t)
        c = delta / sigma
        gm, gt = g1 / sigma, g2 + 2.0 * c * g1
        lim = (1 - 1e-12) * math.sqrt(h11 * h22)
        h12 = min(max(h12, -lim), lim)
        hmm, htt = h11 / (sigma * sigma), 4.0 * c * c * h11 + 4.0 * c * h12 + h22

        def direction(k11, k12, k22, free_m, free_t, sm=0.0, st=0.0, sigma=sigma, delta=delta, g1=g1, g2=g2):
            if free_m and free_t:
                det = k11 * k22 - k12 * k12
                q1, q2 = -(k22 * g1 - k12 * g2) / det, -(k11 * g2 - k12 * g1) / det
            elif free_m:   # tau held: q2 = st
                q1, q2 = -(g1 + k12 * st) / k11, st
            elif free_t:   # mu held: q = (p1, 0) + s (v1, sigma)
                v1, p1 = 2.0 * (delta - sm), sm / sigma
                s = -(g1 * v1 + g2 * sigma + p1 * (k11 * v1 + k12 * sigma)) \
                    / (k11 * v1 * v1 + 2.0 * k12 * v1 * sigma + k22 * sigma * sigma)
                q1, q2 = p1 + s * v1, s * sigma
            else:
                return sm * (1.0 - 2.0 * st), st
            return sigma * q1 - 2.0 * delta * q2, q2

        dm_f, dt_f = direction(h11, h12, h22, True, True)
        eps_m = min(max(abs(dm_f), abs(gm / hmm)), 1.0)
        eps_t = min(max(abs(dt_f), abs(gt / htt)), 0.5)
        if eps_m != eps_m or eps_t != eps_t:
            raise Fallback
        act_m = (m <= lo0 + eps_m and gm > 0) or (m >= hi0 - eps_m and gm < 0)
        act_t = (t <= lo1 + eps_t and gt > 0) or (t >= hi1 - eps_t and gt < 0)
        free_m, free_t = not act_m, not act_t
        if free_m and free_t:
            dm, dt = direction(h11, h12, h22, True, True)
            out_m = (m <= lo0 and dm < 0) or (m >= hi0 and dm > 0)
            out_t = not out_m and ((t <= lo1 and dt < 0) or (t >= hi1 and dt > 0))
            free_m, free_t = not out_m, not out_t
        snap_m = (lo0 if gm > 0 else hi0) - m
        snap_t = 0.5 * (1.0 - _exp(-2.0 * ((lo1 if gt > 0 else hi1) - t)))
        snap_m, snap_t = (snap_m if act_m else 0.0), (snap_t if act_t else 0.0)
        for k, damp in enumerate((0.0, la)):
            dm, dt = direction(h11 * (1 + damp), h12, h22 * (1 + damp), free_m, free_t, snap_m, snap_t)
            if k == 0:
                decrement = max(-(gm * dm + gt * dt), 0.0)
        if dm != dm or dt != dt or decrement != decrement:
            raise Fallback
        if not decrement > tol * (1.0 + abs(f)):
            return mu, tau, True, it
        step = min(1.0, min(0.375 / max(dt, 1e-300), max(max(2 * abs(m), 20 * sigma), 1.0) / max(abs(dm), 1e-300)))
        pending, first, flat = True, False, False
        for k in range(40):
            den = max(1.0 - 2.0 * step * dt, 1e-300)
            nm = min(max(m + step * dm / den, lo0), hi0)
            nt = min(max(t - 0.5 * _log(den), lo1), hi1)
            lin = gm * (nm - m) + gt * (nt - t)
            fn = objective(nm, nt, n, mean, var, prior, need_grad=False)
            if fn <= f + 1e-4 * min(lin, 0.0):
                mu, tau = nm, nt
                pending, first, flat = False, k == 0, not fn < f
                break
            if lin < 0.0 and -lin <= 1e-14 * (1.0 + abs(f)):   # predicted decrease below what f resolves
                pending, flat = False, True
                break
            step *= 0.5
        lam = la * 0.1 if first else (max(la * 10, 1.0) if pending else la)
        if lam < 1e-6:
            lam = 0.0
        if (pending and la > 1e8) or flat:   # no decrease even under heavy damping, or none beyond rounding
            converged = decrement <= 1e-6 * (1.0 + abs(f))
            return mu, tau, converged, it
    return mu, tau, converged, it


def fit_row(n, mean, var, prior, lo, hi, max_iter, tol):
    """theory._fit_stats for one row: (mu, tau, converged, iterations, nll)."""
    data_mu = min(max(mean, lo[0]), hi[0])
    data_tau = min(max(0.5 * _log(max(var, 1e-300)), lo[1]), hi[1])
    if prior is None:
        if n == 0:   # no data: the vectorized path stops after one iteration at (0.5, sigma_max)
            return 0.5, hi[1], False, 1, 0.0
        mu, tau, conv, it = optimize(n, mean, var, None, lo, hi, data_mu, data_tau, max_iter, tol)
    else:   # two starts (data-like, prior-like), keep the better
        mu, tau, conv, it = optimize(n, mean, var, prior, lo, hi, data_mu, data_tau, max_iter, tol)
        p_mu = min(max(prior[0], lo[0]), hi[0])
        p_tau = min(max(_safe_log(max(prior[1], 1e-300)), lo[1]), hi[1])
        mu2, tau2, conv2, it2 = optimize(n, mean, var, prior, lo, hi, p_mu, p_tau, max_iter, tol)
        it = max(it, it2)
        if objective(mu2, tau2, n, mean, var, prior, False) < objective(mu, tau, n, mean, var, prior, False):
            mu, tau, conv = mu2, tau2, conv2
    return mu, tau, conv, it, objective(mu, tau, n, mean, var, prior, False)
