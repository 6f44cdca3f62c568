"""The small-batch / scalar fast path of optscale.theory (`optscale._theory_scalar`) gives the vectorized answers."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from optscale import _theory_scalar as S
from optscale import theory as T


@pytest.fixture(autouse=True)
def warnings_are_errors():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _vectorized(fn, *args, **kw):
    """Run a theory function with the small-batch path switched off."""
    old = T._SMALL_BATCH
    T._SMALL_BATCH = 0
    try:
        return fn(*args, **kw)
    finally:
        T._SMALL_BATCH = old


def _assert_same_fit(fast, ref, ctx):
    for name in ("mu", "sigma"):
        a, b = np.asarray(getattr(fast, name)), np.asarray(getattr(ref, name))
        assert a.shape == b.shape, (ctx, name)
        assert np.all(np.abs(a - b) <= 1e-9 * np.maximum(np.abs(b), 1e-300)), (ctx, name, a, b)
    assert np.all(np.abs(fast.nll - ref.nll) <= 1e-10 * np.maximum(np.abs(ref.nll), 1e-300)), (ctx, fast.nll, ref.nll)
    assert np.array_equal(fast.converged, ref.converged), ctx
    assert np.array_equal(fast.at_bound, ref.at_bound), ctx
    assert fast.iterations == ref.iterations, ctx
    assert fast.converged.dtype == ref.converged.dtype and fast.mu.dtype == ref.mu.dtype


def _extreme_rows(rng):
    """Score sets including the corner cases: one score, all equal, exactly 0 / 1, tails, big n."""
    rows = [[0.5], [0.0], [1.0], [0.3, 0.3, 0.3], [0.0, 0.0], [1.0, 1.0, 1.0], [1e-12, 1e-12], [0.0, 1.0],
            [0.0, 0.0, 1.0], [1.0 - 1e-12, 1.0], [0.999, 0.9995, 1.0, 1.0], [0.0, 1e-4, 2e-4],
            [0.5, 0.5 + 1e-9], list(np.linspace(0, 1, 64)), [0.2, 0.9]]
    for mu, sigma in [(30.0, 1e-4), (30.0, 0.8), (-30.0, 0.8), (0.5, 1e-4), (1.5, 0.01), (-0.5, 0.02),
                      (0.0, 1e-3), (1.0, 1e-4), (0.5, 5.0), (0.9, 0.05)]:
        for k in (1, 2, 5, 16, 64):
            rows.append(list(T.sample(mu, sigma, k, rng)))
    for _ in range(150):
        k = int(rng.integers(1, 65))
        rows.append(list(T.sample(rng.uniform(-1, 2), 10 ** rng.uniform(-4, 0.5), k, rng)))
    return rows


def test_fit_mle_fast_equals_vectorized():
    rng = np.random.default_rng(11)
    for i, row in enumerate(_extreme_rows(rng)):
        x = np.array(row)
        _assert_same_fit(T.fit_mle(x), _vectorized(T.fit_mle, x), (i, row))
        _assert_same_fit(T.fit_mle(x[None, :]), _vectorized(T.fit_mle, x[None, :]), (i, row))


def test_fit_map_fast_equals_vectorized():
    rng = np.random.default_rng(12)
    priors = [(0.5, 0.2, 0.1, 0.1), (0.95, 0.05, 0.1, 0.1), (-3.0, 2.0, 0.1, 0.1), (5.0, 1e-3, 0.1, 0.1),
              (0.5, 0.2, 1e-3, 1e-3), (0.2, 0.3, 10.0, 10.0), (0.0, 1e-4, 0.1, 0.1), (30.0, 0.8, 0.05, 0.2)]
    rows = _extreme_rows(rng)
    for i, row in enumerate(rows):
        x = np.array(row)
        pr = priors[i % len(priors)] if i % 3 else (rng.uniform(-1, 2), 10 ** rng.uniform(-3, 0.5),
                                                    10 ** rng.uniform(-2, 0), 10 ** rng.uniform(-2, 0))
        kw = dict(mu0=pr[0], sigma0=pr[1], sd_mu=pr[2], sd_sigma=pr[3])
        _assert_same_fit(T.fit_map(x, **kw), _vectorized(T.fit_map, x, **kw), (i, row, pr))


def test_small_batches_with_masks_and_empty_rows():
    rng = np.random.default_rng(13)
    for B in (1, 2, 5, T._SMALL_BATCH):
        x = rng.uniform(0, 1, (B, 12))
        mask = rng.random((B, 12)) < 0.6
        mask[0] = False    # a row without scores
        mu0, s0 = rng.uniform(0, 1, B), rng.uniform(0.05, 0.5, B)
        _assert_same_fit(T.fit_mle(x, mask), _vectorized(T.fit_mle, x, mask), B)
        _assert_same_fit(T.fit_map(x, mask, mu0=mu0, sigma0=s0), _vectorized(T.fit_map, x, mask, mu0=mu0, sigma0=s0), B)


def test_box_parameters_and_errors_unchanged():
    x = np.array([0.2, 0.4, 0.45, 0.9])
    kw = dict(sigma_min=1e-3, sigma_max=2.0, mu_bound=3.0, max_iter=3, tol=1e-6)
    _assert_same_fit(T.fit_mle(x, **kw), _vectorized(T.fit_mle, x, **kw), kw)
    for bad in (dict(sigma_min=0.0), dict(sigma_max=1e-5), dict(mu_bound=-1.0), dict(sigma_min=np.nan)):
        with pytest.raises(T.ParameterError):
            T.fit_mle(x, **bad)


def _n_star_cases(rng):
    cases = [(30.0, 1e-4, 0.9, 0.05, 64), (-30.0, 1.0, 0.9, 0.05, 10**9), (0.5, 0.1, 0.0, 0.05, 64),
             (0.5, 0.1, 1.0, 0.05, 64), (0.5, 1e-6, 0.5, 0.05, 64), (1e6, 1e-6, 0.3, 0.5, 7),
             (-1e6, 1.0, 0.99, 0.01, 100), (0.5, 1e6, 0.5, 0.05, 64), (0.0, 1e-4, 1e-12, 0.05, 64),
             (1.0, 1e-4, 1 - 1e-12, 0.05, 64), (0.5, 0.1, 0.999999, 0.05, 10**15), (0.7, 0.2, 0.5, 0.999, 1)]
    for _ in range(3000):
        cases.append((rng.uniform(-3, 4), 10 ** rng.uniform(-4, 1), rng.choice([rng.uniform(0, 1), rng.uniform(0.99, 1)]),
                      10 ** rng.uniform(-6, -0.01), int(rng.integers(1, 400))))
    return cases


def test_n_star_scalar_equals_vectorized():
    rng = np.random.default_rng(14)
    cases = _n_star_cases(rng)
    mu, sigma, target, alpha, n_max = (np.array(v) for v in zip(*cases, strict=True))
    ref = T.n_star(mu[:, None], sigma[:, None], target[:, None], alpha[:, None], n_max[:, None])
    for i, c in enumerate(cases):
        r = T.n_star(*c)
        assert r.n == ref.n[i, 0] and r.reachable == ref.reachable[i, 0], (c, r, ref.n[i, 0])
        e, re_ = float(r.exact), float(ref.exact[i, 0])
        assert e == re_ or abs(e - re_) <= 1e-12 * abs(re_), (c, e, re_)
        assert type(r.n) is np.int64 and type(r.reachable) is np.bool_ and isinstance(r.exact, np.ndarray)
        lf = S.logcdf(c[2], c[0], c[1])
        ref_lf = float(T.logcdf(c[2], np.array([c[0]]), c[1])[0])
        assert lf == ref_lf or abs(lf - ref_lf) <= 1e-13 * abs(ref_lf), (c, lf, ref_lf)


def test_n_star_scalar_types_and_errors():
    r = T.n_star(np.float64(0.6), 0.15, 0.9, 0.05, np.int64(64))
    ref = T.n_star(np.array(0.6), 0.15, 0.9, 0.05, 64)
    assert r.n == ref.n and r.n.dtype == ref.n.dtype and r.exact.shape == ref.exact.shape == ()
    for bad in [(0.5, 0.0, 0.9, 0.05, 64), (0.5, 0.1, 0.9, 1.0, 64), (0.5, 0.1, 1.5, 0.05, 64),
                (0.5, 0.1, 0.9, 0.05, 0), (np.nan, 0.1, 0.9, 0.05, 64), (0.5, 0.1, 0.9, 0.05, 2.5)]:
        with pytest.raises(T.ParameterError):
            T.n_star(*bad)
