"""Tests of the offline evaluation engine (optscale.evaluate) and its reports (optscale.report)."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optscale.errors import InputError, OptScaleError, ParameterError
from optscale.policies import ReplayResult, make_policy
from optscale.pool import PoolArrays
from optscale.report import EvalReport, EvalRow, pareto_frontier

# the module (``optscale.evaluate`` the attribute is the lazily exported function evaluate())
ev = importlib.import_module("optscale.evaluate")


# ------------------------------------------------------------------------------------------ helpers
def synthetic_arrays(P=60, M=16, seed=0, short=True, scores=True) -> PoolArrays:
    """P problems x M samples: scores ~ clipped normal with random (mu, sigma) per problem; a sample is
    correct with probability = its score (class 0), else one of 3 wrong classes; some problems have fewer
    samples (padding) when ``short``."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(0.2, 0.9, P)
    sigma = rng.uniform(0.05, 0.3, P)
    sc = np.clip(rng.normal(mu[:, None], sigma[:, None], (P, M)), 0.0, 1.0)
    corr = rng.random((P, M)) < sc
    ans = np.where(corr, 0, rng.integers(1, 4, (P, M)))
    ans[rng.random((P, M)) < 0.05] = -1
    corr &= ans >= 0
    tok = rng.integers(50, 500, (P, M)).astype(float)
    n = np.full(P, M)
    if short:
        n[: P // 5] = rng.integers(M // 2, M, P // 5)
    pad = np.arange(M)[None, :] >= n[:, None]
    sc[pad] = np.nan
    tok[pad] = 0.0
    ans[pad] = -1
    corr[pad] = False
    if not scores:
        sc[:] = np.nan
    cc = np.zeros((P, 4), dtype=bool)
    cc[:, 0] = True
    return PoolArrays(scores=sc, tokens=tok, answers=ans.astype(np.int64), correct=corr, n=n.astype(np.int64),
                      class_correct=cc, ids=[f"p{i}" for i in range(P)], has_scores=scores, has_tokens=True)


class FirstK:
    """Draw min(k, n_max) samples, select the last drawn one."""

    name = "firstk"
    needs_scores = False

    def __init__(self, k):
        self.k = k

    def replay(self, batch, n_max):
        nd = np.minimum(np.minimum(self.k, n_max), batch.n)
        return ReplayResult(nd.astype(np.int64), (nd - 1).astype(np.int64), {})


# ------------------------------------------------------------------------------------------ batches
def test_build_batch_orderings_are_permutations_of_available_samples():
    a = synthetic_arrays(P=30, M=12, seed=1)
    prep = ev.build_batch(a, orderings=5, seed=3)
    P, M = a.answers.shape
    assert prep.batch.answers.shape == (6 * P, M)
    assert (prep.perm[:P] == np.arange(M)).all()  # ordering 0 = pool order
    for r in range(prep.perm.shape[0]):
        p = prep.problem[r]
        k = a.n[p]
        assert sorted(prep.perm[r, :k]) == list(range(k))
        assert (prep.perm[r, k:] == np.arange(k, M)).all()  # padding stays at the end
    # arrays permuted consistently
    r = 4 * P + 7
    assert np.array_equal(prep.batch.answers[r], a.answers[7, prep.perm[r]])
    assert np.allclose(prep.cumtok[r, -1], a.tokens[7].sum())
    assert (prep.batch.group == prep.ordering).all()
    # deterministic, seed-dependent, not all orderings equal
    assert np.array_equal(ev.build_batch(a, orderings=5, seed=3).perm, prep.perm)
    assert not np.array_equal(ev.build_batch(a, orderings=5, seed=4).perm, prep.perm)
    assert not np.array_equal(prep.perm[P:2 * P], prep.perm[2 * P:3 * P])


def test_cyclic_orderings_put_every_sample_first_once():
    a = synthetic_arrays(P=10, M=8, seed=2, short=False)
    prep = ev.build_batch(a, orderings=7, ordering_mode="cyclic")
    firsts = prep.perm[:, 0].reshape(8, 10)
    assert (np.sort(firsts, axis=0) == np.arange(8)[:, None]).all()
    with pytest.raises(ParameterError, match="ordering_mode"):
        ev.build_batch(a, orderings=1, ordering_mode="bogus")


def test_metrics_correctness_and_cumsum_cost():
    a = synthetic_arrays(P=20, M=10, seed=5)
    prep = ev.build_batch(a, orderings=2, seed=0)
    rows = prep.rows_of(None)
    m = ev._replay(prep, rows, FirstK(3), "firstk", 8)
    for r in range(0, rows.size, 7):
        p = prep.problem[r]
        nd = min(3, a.n[p])
        drawn = prep.perm[r, :nd]
        assert m.samples[r] == nd
        assert m.tokens[r] == pytest.approx(a.tokens[p, drawn].sum())
        cls = a.answers[p, drawn[-1]]
        assert m.correct[r] == (cls >= 0 and a.class_correct[p, cls])


def test_policy_result_is_validated():
    a = synthetic_arrays(P=5, M=6, seed=5)
    prep = ev.build_batch(a)

    class Bad(FirstK):
        def replay(self, batch, n_max):
            return ReplayResult(np.full(batch.n.size, 99), np.zeros(batch.n.size, dtype=np.int64), {})

    with pytest.raises(OptScaleError, match=r"^policy 'bad' drew 99 samples in row 0 with \d+ available$") as ei:
        ev._replay(prep, prep.rows_of(None), Bad(1), "bad", 4)
    assert type(ei.value) is OptScaleError   # an engine error, not a mistyped-input error


# ------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_coverage_and_determinism():
    rng = np.random.default_rng(0)
    p_true, P, reps = 0.7, 300, 200
    vals = (rng.random((reps, P)) < p_true).astype(float)
    mean, lo, hi = ev.bootstrap_ci(vals, n_boot=500, seed=1)
    assert (lo <= mean).all() and (mean <= hi).all()
    coverage = np.mean((lo <= p_true) & (p_true <= hi))
    assert 0.88 <= coverage <= 0.99, coverage
    width = np.mean(hi - lo)
    assert width == pytest.approx(2 * 1.96 * np.sqrt(p_true * (1 - p_true) / P), rel=0.15)
    again = ev.bootstrap_ci(vals, n_boot=500, seed=1)
    assert np.array_equal(again[1], lo) and np.array_equal(again[2], hi)
    # constant values: degenerate interval
    m, lo2, hi2 = ev.bootstrap_ci(np.ones(50), n_boot=100)
    assert m == lo2 == hi2 == 1.0


def test_bootstrap_weights_sum_to_problem_count():
    W = ev.bootstrap_weights(37, n_boot=64, seed=2)
    assert W.shape == (64, 37) and (W.sum(axis=1) == 37).all()


# ------------------------------------------------------------------------------------------ splits
def test_calibration_split_disjoint_and_deterministic():
    calib, test = ev.split_problems(101, 0.3, seed=7)
    assert len(calib) == 30 and len(test) == 71
    assert not set(calib) & set(test)
    assert sorted(set(calib) | set(test)) == list(range(101))
    c2, t2 = ev.split_problems(101, 0.3, seed=7)
    assert np.array_equal(c2, calib) and np.array_equal(t2, test)
    assert not np.array_equal(ev.split_problems(101, 0.3, seed=8)[0], calib)
    with pytest.raises(ParameterError, match="calib_frac"):
        ev.split_problems(10, 1.5)


def test_tuning_never_sees_the_reported_split():
    a = synthetic_arrays(P=80, M=16, seed=11)
    kw = dict(orderings=2, seed=3, grids={"optscale0": {"target": (0.6, 0.8, 0.9), "alpha": (0.1, 0.5)}},
              oracle=False, n_boot=100)
    rep = ev.evaluate(a, ["bon", "optscale0"], [8, 16], **kw)
    calib = rep.meta["calib_problems"]
    test = rep.meta["test_problems"]
    assert not set(calib) & set(test) and len(calib) + len(test) == 80
    assert {r.split for r in rep.rows} == {"test"}
    assert all(r.n_problems == len(test) for r in rep.rows)
    # scramble the reported problems: the tuned parameters must not change
    b = synthetic_arrays(P=80, M=16, seed=99)
    t = np.asarray(test)
    for f in ("scores", "tokens", "answers", "correct", "n", "class_correct"):
        getattr(a, f)[t] = getattr(b, f)[t]
    rep2 = ev.evaluate(a, ["bon", "optscale0"], [8, 16], **kw)
    assert rep2.meta["tuned"] == rep.meta["tuned"]



def test_cross_fit_splits_hold_each_problem_out_once():
    splits = ev.cross_fit_splits(23, 5, seed=3)
    assert len(splits) == 5
    tests = np.concatenate([t for _, t in splits])
    assert sorted(tests.tolist()) == list(range(23))  # a partition: each problem held out exactly once
    for calib, test in splits:
        assert sorted(np.concatenate([calib, test]).tolist()) == list(range(23))
        assert np.array_equal(calib, np.sort(calib)) and 4 <= test.size <= 5
    again = ev.cross_fit_splits(23, 5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(splits, ev.cross_fit_splits(23, 5, seed=4),
                                                              strict=True))
    with pytest.raises(ParameterError, match="'folds'"):
        ev.cross_fit_splits(3, 5)
    with pytest.raises(ParameterError, match="'folds'"):
        ev.cross_fit_splits(10, 1)


def test_given_calibration_split_is_used_and_cross_fitting_covers_every_problem():
    """calib_problems replaces the seeded split (tuning sees only it; the report is on the rest), and one
    evaluate per cross_fit_splits fold reports every problem once: the fold-weighted mean of BoN's test
    accuracy is BoN's accuracy over all problems."""
    a = synthetic_arrays(P=40, M=12, seed=13)
    kw = dict(orderings=1, seed=2, oracle=False, n_boot=50, coverage=False,
              grids={"optscale0": {"target": (0.6, 0.8), "alpha": (0.1, 0.5)}})
    calib = list(range(0, 40, 3))
    rep = ev.evaluate(a, ["bon", "optscale0"], [12], calib_problems=calib, **kw)
    assert rep.meta["calib_problems"] == calib and rep.meta["calib_frac"] is None
    assert rep.meta["test_problems"] == [p for p in range(40) if p not in calib]
    # tuning sees only the given calibration problems: scrambling the others keeps the tuned parameters
    b = synthetic_arrays(P=40, M=12, seed=77)
    t = np.asarray(rep.meta["test_problems"])
    a2 = synthetic_arrays(P=40, M=12, seed=13)
    for f in ("scores", "tokens", "answers", "correct", "n", "class_correct"):
        getattr(a2, f)[t] = getattr(b, f)[t]
    assert ev.evaluate(a2, ["bon", "optscale0"], [12], calib_problems=calib, **kw).meta["tuned"] == rep.meta["tuned"]
    # nothing tuned: the given split still holds (learned models fit there, rows report the rest)
    untuned = ev.evaluate(a, ["bon"], [12], calib_problems=calib, **kw)
    assert {r.split for r in untuned.rows} == {"test"} and untuned.rows[0].n_problems == 40 - len(calib)
    all_bon = ev.evaluate(a, ["bon"], [12], tune=False, **kw).get(method="bon", budget=12).accuracy
    total = 0.0
    for cal, test in ev.cross_fit_splits(40, 4, seed=1):
        r = ev.evaluate(a, ["bon", "optscale0"], [12], calib_problems=cal.tolist(), **kw)
        assert r.meta["test_problems"] == test.tolist()
        total += r.get(method="bon", budget=12).accuracy * test.size
    assert total / 40 == pytest.approx(all_bon, abs=1e-12)
    with pytest.raises(ParameterError, match="'calib_problems'"):
        ev.evaluate(a, ["bon"], [12], calib_problems=[3, 40], **kw)
    with pytest.raises(ParameterError, match="'calib_problems'"):
        ev.evaluate(a, ["bon"], [12], calib_problems=list(range(40)), **kw)

# ------------------------------------------------------------------------------------------ safety margin
@settings(max_examples=40, deadline=None)
@given(st.integers(2, 40), st.floats(0.0, 3.0), st.integers(0, 2**31 - 1))
def test_paired_lower_is_the_paired_mean_minus_z_standard_errors(P, z, seed):
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, 4, P) / 3.0  # per-problem means over 3 orderings
    pts = [rng.integers(0, 4, P) / 3.0, ref + 0.0, np.clip(ref + 1 / 3, 0, 1)]
    mean, lower = ev.paired_lower(pts, ref, z)
    for g, c in enumerate(pts):
        d = c - ref
        assert mean[g] == pytest.approx(c.mean() - ref.mean(), abs=1e-12)  # = accuracy difference
        assert lower[g] == pytest.approx(d.mean() - z * d.std(ddof=1) / np.sqrt(P), abs=1e-12)
        assert lower[g] <= mean[g] + 1e-15
    assert mean[1] == lower[1] == 0.0  # the reference itself: no noise in the paired difference
    assert np.array_equal(ev.paired_lower(pts, ref, 0.0)[1], mean)


def test_margin_rejects_a_cheap_point_that_matches_only_by_luck():
    """Two grid points on 50 problems: a cheap one whose accuracy equals the reference's but differs from it
    on 20 problems (+10 / -10: SE(d) = 0.09), and an expensive one equal to the reference on every problem.
    The plain tolerance match takes the cheap one; with a one-SE margin only the expensive one is accepted."""
    ref = np.r_[np.ones(30), np.zeros(20)]
    cheap = np.r_[np.ones(20), np.zeros(10), np.ones(10), np.zeros(10)]
    same = ref.copy()
    acc, tok = np.array([cheap.mean(), same.mean()]), np.array([100.0, 900.0])
    for z, expect in ((0.0, 0), (1.0, 1)):
        _, lower = ev.paired_lower([cheap, same], ref, z)
        assert ev._choose(acc, tok, ref.mean(), 1000.0, "match", 0.005, 0.01, lower=lower) == expect
    assert ev._choose(acc, tok, ref.mean(), 1000.0, "match", 0.005, 0.01) == 0  # no lower: the old rule


def test_tuning_with_a_margin_accepts_only_points_within_tolerance_by_more_than_their_noise():
    a = synthetic_arrays(P=90, M=16, seed=31)
    kw = dict(orderings=2, seed=2, oracle=False, n_boot=50, coverage=False,
              grids={"optscale0-seq": {"target": (0.6, 0.7, 0.8, 0.9), "alpha": (0.05, 0.2, 0.5), "k": (2, 4)},
                     "asc": {"threshold": (0.6, 0.8, 0.95, 0.99)}})
    r0 = ev.evaluate(a, ["bon", "optscale0-seq", "asc"], [8, 16], margin_z=0.0, **kw)
    r1 = ev.evaluate(a, ["bon", "optscale0-seq", "asc"], [8, 16], **kw)  # the default margin
    assert ev.EvalConfig().margin_z == 1.0 and "margin_z 1.0" in r1.meta["selection"]
    assert r0.meta["calib_problems"] == r1.meta["calib_problems"]
    for m in ("optscale0-seq", "asc"):
        for b in ("8", "16"):
            t0, t1 = r0.meta["tuned"][m][b], r1.meta["tuned"][m][b]
            # the accepted set only shrinks as the margin grows: never a cheaper point
            assert t1["calib_tokens"] >= t0["calib_tokens"] - 1e-9
            # margin 0 is the plain match: the chosen point's accuracy is within tolerance (when any is)
            if t0["calib_lower"] >= -0.005 - 1e-12:
                assert t0["calib_accuracy"] >= t0["reference_calib_accuracy"] - 0.005 - 1e-12
                assert t0["calib_lower"] == pytest.approx(t0["calib_accuracy"] - t0["reference_calib_accuracy"])
            assert t1["calib_lower"] <= t1["calib_accuracy"] - t1["reference_calib_accuracy"] + 1e-12
    # the recorded lower bound of the chosen point is the paired one, recomputed from a direct replay
    prep = ev.build_batch(a, orderings=2, seed=2)
    rows = prep.rows_of(np.asarray(r1.meta["calib_problems"]))
    t = r1.meta["tuned"]["optscale0-seq"]["16"]
    pol = make_policy("optscale0-seq", **t["params"])
    mine = ev._per_problem(ev._replay(prep, rows, pol, "optscale0-seq", 16), prep.n_orderings)[0]
    ref = ev._per_problem(ev._replay(prep, rows, make_policy("bon"), "bon", 16), prep.n_orderings)[0]
    d = mine - ref
    assert t["calib_lower"] == pytest.approx(d.mean() - d.std(ddof=1) / np.sqrt(d.size), abs=1e-12)


# ------------------------------------------------------------------------------------------ oracle / pareto
def test_oracle_matches_bon_accuracy_with_fewer_tokens():
    a = synthetic_arrays(P=50, M=16, seed=4)
    rep = ev.evaluate(a, ["bon"], [4, 8, 16], orderings=3, tune=False, n_boot=100)
    for b in (4, 8, 16):
        bon = rep.get(method="bon", budget=b)
        orc = rep.get(method="oracle", budget=b)
        assert orc.accuracy == pytest.approx(bon.accuracy)
        assert orc.tokens <= bon.tokens + 1e-9
        assert orc.samples <= bon.samples + 1e-9
    prep = ev.build_batch(a, orderings=3)
    rows = prep.rows_of(None)
    orc = ev.oracle_costs(prep, rows, [16], make_policy("bon"))[16]
    bon = ev._replay(prep, rows, make_policy("bon"), "bon", 16)
    assert (orc.tokens <= bon.tokens + 1e-9).all()
    assert np.array_equal(orc.correct, bon.correct)


def test_pareto_frontier():
    def row(acc, tok):
        return EvalRow("m", "m", {}, 8, "all", "adaptive", acc, acc, acc, tok, tok, tok, 1, 1, 1, 10, 1)

    rows = [row(0.5, 100), row(0.6, 200), row(0.55, 250), row(0.6, 150), row(0.4, 100), row(0.9, 1000)]
    front = pareto_frontier(rows)
    assert [(r.accuracy, r.tokens) for r in front] == [(0.5, 100), (0.6, 150), (0.9, 1000)]


# ------------------------------------------------------------------------------------------ evaluate
def test_evaluate_report_rows_and_outputs(tmp_path):
    a = synthetic_arrays(P=40, M=16, seed=6)
    rep = ev.evaluate(a, ["bon", "sc", "esc"], [8, 16], orderings=2, tune=False, n_boot=200)
    assert {(r.method, r.budget) for r in rep.rows} >= {("bon", 8), ("sc", 16), ("esc", 8), ("oracle", 16)}
    for r in rep.rows:
        assert 0 <= r.acc_ci_low <= r.accuracy <= r.acc_ci_high <= 1
        assert r.tok_ci_low <= r.tokens <= r.tok_ci_high
        assert r.split == "all" and r.n_problems == 40 and r.n_orderings == 3
    bon8 = rep.get(method="bon", budget=8)
    assert bon8.kind == "fixed"
    assert bon8.samples == pytest.approx(np.minimum(a.n, 8).mean())
    assert any(r.pareto for r in rep.rows)
    md = rep.to_markdown(tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == md
    assert "| BoN * |" in md or "| BoN |" in md
    csv_text = rep.to_csv(tmp_path / "r.csv")
    assert csv_text.splitlines()[0].startswith("method,label,params,budget,split")
    assert len(csv_text.strip().splitlines()) == len(rep.rows) + 1
    js = json.loads(rep.to_json(tmp_path / "r.json"))
    assert len(js["rows"]) == len(rep.rows) and js["meta"]["orderings"] == 3
    png = ev.plot_accuracy_vs_tokens(rep, tmp_path / "p.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_deterministic():
    a = synthetic_arrays(P=30, M=8, seed=8)
    r1 = ev.evaluate(a, ["bon", "asc"], [4, 8], orderings=3, seed=5, tune=False, n_boot=100)
    r2 = ev.evaluate(a, ["bon", "asc"], [4, 8], orderings=3, seed=5, tune=False, n_boot=100)
    assert r1.to_json() == r2.to_json()


def test_method_needing_scores_on_unscored_pool_is_a_clear_error():
    a = synthetic_arrays(P=10, M=8, seed=8, scores=False)
    with pytest.raises(ParameterError, match="'bon' needs verifier scores"):
        ev.evaluate(a, ["sc", "bon"], [4], tune=False)
    rep = ev.evaluate(a, ["sc"], [4, 8], tune=False, n_boot=50)  # oracle falls back to self-consistency
    assert rep.get(method="oracle", budget=8).params == {"reference": "sc"}


def test_optscalet_needs_priors_and_accepts_them():
    a = synthetic_arrays(P=20, M=8, seed=8)
    with pytest.raises(ParameterError, match="'optscalet' needs priors"):
        ev.evaluate(a, ["optscalet"], [8], tune=False)
    pri = np.column_stack([np.full(20, 0.6), np.full(20, 0.2)])
    rep = ev.evaluate(a, ["optscalet"], [8], tune=False, priors=pri, n_boot=50, oracle=False)
    assert rep.rows[0].method == "optscalet"
    rep = ev.evaluate(a, ["optscalet:prior=0.6/0.2"], [8], tune=False, n_boot=50, oracle=False)  # constant prior
    assert rep.rows[0].params["prior"] == (0.6, 0.2)


def test_dsc_difficulty_sources():
    a = synthetic_arrays(P=20, M=8, seed=9)
    rep = ev.evaluate(a, ["dsc"], [8], tune=False, n_boot=50, oracle=False)
    assert rep.meta["difficulty"].startswith("sample-disagreement")
    d = ev.difficulty_proxy(a)
    assert d.shape == (20,) and (d >= 0).all() and (d < 1).all()
    rep = ev.evaluate(a, ["dsc"], [8], tune=False, n_boot=50, oracle=False, difficulty=np.arange(20.0))
    assert rep.meta["difficulty"] == "given"


def test_budget_validation():
    a = synthetic_arrays(P=10, M=8, seed=8)
    with pytest.raises(ParameterError, match="budget 16 exceeds"):
        ev.evaluate(a, ["bon"], [8, 16], tune=False)
    assert ev.default_budgets(40) == [8, 16, 32, 40]
    assert ev.default_budgets(64) == [8, 16, 32, 64]


def test_load_priors(tmp_path):
    f = tmp_path / "pri.json"
    f.write_text(json.dumps([[0.5, 0.1], [0.6, 0.2]]))
    assert ev.load_priors(f, ["a", "b"]).tolist() == [[0.5, 0.1], [0.6, 0.2]]
    f.write_text(json.dumps({"b": [0.6, 0.2], "a": [0.5, 0.1]}))
    assert ev.load_priors(f, ["a", "b"]).tolist() == [[0.5, 0.1], [0.6, 0.2]]
    with pytest.raises(InputError, match="no prior for problem 'c'"):
        ev.load_priors(f, ["a", "c"])
    f.write_text(json.dumps([[0.5, -0.1], [0.6, 0.2]]))
    with pytest.raises(InputError, match="sigma0"):
        ev.load_priors(f, ["a", "b"])
    assert ev.expand_priors([[0.5, 0.1]], 1).shape == (1, 4)


# ------------------------------------------------------------------------------------------ sweep
def test_sweep_fast_path_equals_policy_replay():
    a = synthetic_arrays(P=30, M=16, seed=12)
    pri = np.column_stack([np.random.default_rng(0).uniform(0.3, 0.8, 30), np.full(30, 0.15)])
    prep = ev.build_batch(a, orderings=1, seed=1, priors=pri)
    rows = prep.rows_of(None)
    for name in ("optscale0", "optscalet", "optscale0-seq", "optscalet-seq"):
        big = name == "optscale0"  # the reference replays of the others (MAP fits, refits) are slower
        grid = ev._grid({"target": (0.6, 0.85, 0.95) if big else (0.6, 0.9), "alpha": (0.05, 0.5),
                         "k": (2, 4) if name.startswith("optscale0") else (2,)})
        budgets = [3, 8, 16] if big else [3, 8]
        fast = ev._fast_optscale(prep, rows, name, grid, budgets)
        assert fast is not None
        slow = ev._grid_metrics(prep, rows, name, grid, budgets, fast=False)
        for key, m in slow.items():
            f = fast[key]
            assert np.array_equal(f.samples, m.samples), (name, key)
            assert np.array_equal(f.correct, m.correct), (name, key)
            assert np.allclose(f.tokens, m.tokens), (name, key)


def test_fast_path_sequential_with_waves_equals_policy_replay():
    a = synthetic_arrays(P=30, M=16, seed=14)
    prep = ev.build_batch(a, orderings=1, seed=2)
    rows = prep.rows_of(np.arange(5, 25))
    grid = ev._grid({"target": (0.7, 0.9), "alpha": (0.1, 0.6), "wave": (3,)})
    fast = ev._fast_optscale(prep, rows, "optscale0-seq", grid, [5, 16])
    slow = ev._grid_metrics(prep, rows, "optscale0-seq", grid, [5, 16], fast=False)
    for key, m in slow.items():
        assert np.array_equal(fast[key].samples, m.samples) and np.array_equal(fast[key].correct, m.correct)
    assert ev._fast_optscale(prep, rows, "optscale0-seq", ev._grid({"wave": (1, 2)}), [8]) is None
    assert ev._fast_optscale(prep, rows, "esc", [{}], [8]) is None


def test_sweep_report_is_labelled_not_held_out():
    a = synthetic_arrays(P=30, M=16, seed=13)
    rep = ev.sweep(a, ["optscale0"], [8, 16], targets=(0.7, 0.9), alphas=(0.1, 0.5), orderings=1, n_boot=50)
    sw = [r for r in rep.rows if r.kind == "sweep"]
    assert len(sw) == 2 * 2 * 2
    assert all(r.split == "all (not held-out)" for r in sw)
    assert "NOT held-out" in rep.to_markdown(include_sweep=True)
    assert "not held-out" in rep.to_markdown() and "target=0.7" not in rep.to_markdown()


# ------------------------------------------------------------------------------------------ real pool
def test_real_addsub_pool_majority_and_single_sample(shared_data):
    from optscale.importers import import_pool
    from optscale.pool import to_arrays

    path = shared_data / "pools" / "selfconsistency-codex" / "addsub_output_sc_002.normalized.jsonl"
    arrays = to_arrays(import_pool(path))
    assert arrays.answers.shape == (395, 40)
    prep = ev.build_batch(arrays, orderings=39, ordering_mode="cyclic")
    pool_order = np.arange(395)  # rows 0..394 = ordering 0 (the pool's order: ties go to the first seen)
    maj = ev._replay(prep, pool_order, make_policy("sc"), "sc", 40)
    assert int(maj.correct.sum()) == 362
    assert maj.correct.mean() == pytest.approx(0.9165, abs=1e-4)
    single = ev._replay(prep, prep.rows_of(None), make_policy("sc"), "sc", 1)
    assert int(single.correct.sum()) == 12983
    assert single.correct.mean() == pytest.approx(0.8217, abs=1e-4)
    rep = ev.evaluate(arrays, ["sc"], [1, 40], orderings=0, tune=False, n_boot=200)
    assert rep.get(method="sc", budget=40).accuracy == pytest.approx(362 / 395)
    rep = ev.evaluate(arrays, ["sc"], [1], orderings=39, ordering_mode="cyclic", tune=False, n_boot=200)
    assert isinstance(rep, EvalReport)
    row = rep.get(method="sc", budget=1)
    assert row.accuracy == pytest.approx(12983 / 15800)
    assert row.acc_ci_low < row.accuracy < row.acc_ci_high


# ------------------------------------------------------------------------------------------ EvalConfig
@pytest.mark.parametrize("field,value", [
    ("orderings", -1), ("seed", 1.5), ("n_boot", 0), ("calib_frac", 1.0), ("tolerance", float("nan")),
    ("token_penalty", -0.1), ("level", 0.0), ("select", "best"), ("ordering_mode", "sorted"), ("tune", "yes"),
    ("margin_z", -0.5), ("margin_z", float("inf")), ("margin_z", "1"), ("tune_folds", 0), ("tune_folds", 2.5),
    ("budgets", (8, 0)), ("budgets", ()), ("budgets", "8"), ("grids", {"optscale0": [0.1]}),
    ("calib_problems", ()), ("calib_problems", (1, 1)), ("calib_problems", (-1,)), ("calib_problems", "12"),
    ("calib_problems", (0.5,)),
])
def test_eval_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ParameterError, match=f"'{field}'"):
        ev.EvalConfig(**{field: value})
    with pytest.raises(ParameterError, match=f"'{field}'"):  # the keyword path validates the same way
        ev.evaluate(synthetic_arrays(P=10, M=8), ["bon"], **{field: value})


def test_eval_config_and_keyword_paths_agree():
    a = synthetic_arrays(P=40, M=16, seed=21)
    cfg = ev.EvalConfig(budgets=(4, 8), orderings=2, seed=4, tune=True, n_boot=100,
                        grids={"optscale0": {"target": (0.7, 0.9), "alpha": (0.1, 0.5)}})
    r1 = ev.evaluate(a, ["bon", "optscale0", "asc"], config=cfg)
    r2 = ev.evaluate(a, ["bon", "optscale0", "asc"], [4, 8], orderings=2, seed=4, n_boot=100,
                     grids={"optscale0": {"target": (0.7, 0.9), "alpha": (0.1, 0.5)}})
    assert r1.to_json() == r2.to_json()
    r3 = ev.evaluate(a, ["bon", "optscale0", "asc"], config=cfg.replace(seed=5))  # override one field
    assert r3.meta["seed"] == 5 and r3.to_json() != r1.to_json()
    with pytest.raises(ParameterError, match="'orderingz'"):
        ev.evaluate(a, ["bon"], config=cfg, orderingz=3)
    with pytest.raises(ParameterError, match="'config'"):
        ev.evaluate(a, ["bon"], config={"orderings": 2})
    s1 = ev.sweep(a, ["optscale0"], config=cfg, targets=(0.8,), alphas=(0.1,))
    s2 = ev.sweep(a, ["optscale0"], [4, 8], targets=(0.8,), alphas=(0.1,), orderings=2, seed=4, n_boot=100)
    assert s1.to_json() == s2.to_json()
