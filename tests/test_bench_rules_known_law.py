"""benchmarks/known_law.py: the exact BoN accuracy curve acc_p(n) against brute force over every ordering
(with the library's own ``bon`` selection), and the known-law allocation against brute force / the LP."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linprog

from optscale.policies._vec import best_score

REPO = Path(__file__).resolve().parents[1]


def _load_known_law():
    spec = importlib.util.spec_from_file_location("known_law", REPO / "benchmarks" / "known_law.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["known_law"] = mod
    spec.loader.exec_module(mod)
    return mod


kl = _load_known_law()


def brute_curve(scores, answers, correct, m, n_max):
    """acc(n) = mean over every ordering of the m samples of [bon pick of the first n draws is correct]."""
    acc = np.zeros(n_max)
    perms = np.array(list(itertools.permutations(range(m))), dtype=np.int64)
    sc, an, co = scores[perms], answers[perms], correct[perms]
    for n in range(1, n_max + 1):
        sel = best_score(an, sc, np.full(perms.shape[0], min(n, m)))
        acc[n - 1] = co[np.arange(perms.shape[0]), sel].mean()
    return acc


@st.composite
def problems(draw):
    """A few problems of <= 6 samples with ties, NaN scores, unparsable answers and padding."""
    P = draw(st.integers(1, 3))
    M = draw(st.integers(1, 6))
    vals = st.sampled_from([0.1, 0.5, 0.5, 0.9, float("nan"), 0.0, 1.0])
    scores = np.array(draw(st.lists(st.lists(vals, min_size=M, max_size=M), min_size=P, max_size=P)))
    answers = np.array(draw(st.lists(st.lists(st.integers(-1, 2), min_size=M, max_size=M), min_size=P,
                                      max_size=P)))
    correct = np.array(draw(st.lists(st.lists(st.booleans(), min_size=M, max_size=M), min_size=P,
                                      max_size=P))) & (answers >= 0)
    n = np.array(draw(st.lists(st.integers(1, M), min_size=P, max_size=P)))
    return scores, answers, correct, n


@settings(max_examples=150, deadline=None)
@given(problems(), st.integers(1, 7))
def test_accuracy_curve_equals_brute_force_over_all_orderings(prob, n_max):
    scores, answers, correct, n = prob
    # padding past n holds junk the curve must ignore
    M = scores.shape[1]
    pad = np.arange(M)[None, :] >= n[:, None]
    scores = np.where(pad, 5.0, scores)
    correct = correct | pad
    got = kl.bon_accuracy_curve(scores, answers, correct, n, n_max)
    assert got.shape == (scores.shape[0], n_max)
    for p in range(scores.shape[0]):
        m = int(n[p])
        want = brute_curve(scores[p, :m], answers[p, :m], correct[p, :m], m, n_max)
        np.testing.assert_allclose(got[p], want, atol=1e-12)


def test_accuracy_curve_known_values():
    # 4 samples, distinct scores, only the 2nd best correct: the pick is it iff the best is not drawn and
    # it is: C(2, n - 1) / C(4, n) -> n=1: 1/4, n=2: 2/6, n=3: 1/4, n=4: 0
    scores = np.array([[0.9, 0.7, 0.5, 0.1]])
    correct = np.array([[False, True, False, False]])
    got = kl.bon_accuracy_curve(scores, np.zeros((1, 4), int), correct, np.array([4]), 5)
    np.testing.assert_allclose(got[0], [0.25, 1 / 3, 0.25, 0.0, 0.0], atol=1e-15)
    # one correct of 64 at the top: acc(n) = n / 64; padding-free large M stays exact
    M = 64
    sc = np.linspace(1, 0, M)[None, :]
    co = np.zeros((1, M), bool)
    co[0, 0] = True
    got = kl.bon_accuracy_curve(sc, np.zeros((1, M), int), co, np.array([M]), M)
    np.testing.assert_allclose(got[0], np.arange(1, M + 1) / M, atol=1e-12)


def test_expected_tokens_curve_is_the_mean_over_orderings():
    tok = np.array([[100.0, 200.0, np.nan, 7.0], [10.0, 20.0, 30.0, 40.0]])
    n = np.array([2, 4])
    got = kl.expected_tokens_curve(tok, n, 5)
    np.testing.assert_allclose(got[0], [150, 300, 300, 300, 300])
    np.testing.assert_allclose(got[1], [25, 50, 75, 100, 100])


def brute_allocation(acc, tok, goal):
    P, K = acc.shape
    best = np.inf
    for combo in itertools.product(range(K), repeat=P):
        a = acc[np.arange(P), combo].mean()
        if a >= goal - 1e-12:
            best = min(best, tok[np.arange(P), combo].mean())
    return best


def lp_allocation(acc, tok, goal):
    """min mean tok . x s.t. mean acc . x >= goal, each problem's weights on its K points sum to 1."""
    P, K = acc.shape
    A_eq = np.kron(np.eye(P), np.ones((1, K)))
    res = linprog(tok.ravel() / P, A_ub=-acc.ravel()[None, :] / P, b_ub=[-goal], A_eq=A_eq, b_eq=np.ones(P),
                  bounds=(0, None), method="highs")
    assert res.status == 0
    return res.fun


@st.composite
def instances(draw):
    P = draw(st.integers(1, 4))
    K = draw(st.integers(1, 5))
    accs = draw(st.lists(st.lists(st.floats(0, 1), min_size=K, max_size=K), min_size=P, max_size=P))
    acc = np.maximum.accumulate(np.array(accs), axis=1) if draw(st.booleans()) else np.array(accs)
    per = np.array(draw(st.lists(st.floats(1, 100), min_size=P, max_size=P)))
    tok = per[:, None] * np.arange(1, K + 1)[None, :]
    q = draw(st.floats(0, 1))
    lo, hi = acc[:, 0].mean(), acc.max(axis=1).mean()
    return acc, tok, lo + q * (hi - lo)


@settings(max_examples=200, deadline=None)
@given(instances())
def test_allocation_is_feasible_and_within_one_segment_of_optimal(inst):
    acc, tok, goal = inst
    P, K = acc.shape
    got = kl.allocate(acc, tok, goal)
    assert got.n.shape == (P,) and np.all((got.n >= 1) & (got.n <= K))
    chosen = got.n - 1
    assert got.accuracy == pytest.approx(acc[np.arange(P), chosen].mean())
    assert got.tokens == pytest.approx(tok[np.arange(P), chosen].mean())
    assert got.accuracy >= goal - 1e-9
    opt = brute_allocation(acc, tok, goal)
    lp = lp_allocation(acc, tok, goal)
    # LP value: equal to scipy's LP optimum (exact for allocations that may randomise n); allocate() asks for
    # the goal less 1e-12 (summation-order slack), which moves the LP by up to 1e-12 x the steepest slope
    # (tokens per accuracy): compare at that goal (hypothesis found acc = [0, 1e-6], tokens = [1, 2])
    assert got.lp_tokens == pytest.approx(lp_allocation(acc, tok, goal - 1e-12), rel=1e-7, abs=1e-7)
    assert lp <= opt + 1e-7 and opt <= got.tokens + 1e-7
    # integer gap: at most one hull segment of one problem (mean over P)
    gap = np.max(np.diff(tok, axis=1)) * (K - 1) / P if K > 1 else 0.0
    assert got.tokens <= got.lp_tokens + gap + 1e-7


def test_allocation_optimal_on_small_instances_by_brute_force():
    # the fix-up makes it exact on most tiny instances: count exact hits on random 3 x 4 instances
    rng = np.random.default_rng(0)
    exact = 0
    for _ in range(200):
        acc = np.sort(rng.random((3, 4)), axis=1)
        tok = rng.uniform(1, 10, (3, 1)) * np.arange(1, 5)[None, :]
        goal = rng.uniform(acc[:, 0].mean(), acc[:, -1].mean())
        got = kl.allocate(acc, tok, goal)
        opt = brute_allocation(acc, tok, goal)
        assert got.tokens >= opt - 1e-9
        exact += got.tokens <= opt + 1e-9
    assert exact >= 180, exact  # measured: see the report


def test_allocation_on_a_hand_instance():
    # two problems; problem 0 gains 0.5 per 1 token (steep), problem 1 gains 0.2 per 10 tokens
    acc = np.array([[0.2, 0.7], [0.5, 0.7]])
    tok = np.array([[1.0, 2.0], [10.0, 20.0]])
    got = kl.allocate(acc, tok, goal=(0.7 + 0.5) / 2)
    assert list(got.n) == [2, 1] and got.tokens == pytest.approx(6.0) and got.lp_tokens == pytest.approx(6.0)
    got = kl.allocate(acc, tok, goal=(0.7 + 0.6) / 2)  # half of problem 1's segment: LP 8.5, integer 11
    assert list(got.n) == [2, 2] and got.tokens == pytest.approx(11.0) and got.lp_tokens == pytest.approx(8.5)
    assert got.rate == pytest.approx(0.02)
    with pytest.raises(ValueError):
        kl.allocate(acc, tok, goal=0.8)


def test_upper_hull_drops_dominated_and_concave_points():
    tok = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    acc = np.array([0.1, 0.15, 0.6, 0.55, 0.7])  # 2 is below the chord 1->3, 4 is dominated by 3
    assert list(kl.upper_hull(tok, acc)) == [0, 2, 4]


def _load_bench_rules():
    spec = importlib.util.spec_from_file_location("bench_rules", REPO / "benchmarks" / "bench_rules.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_rules"] = mod  # its dataclasses resolve their module while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_exact_curve_matches_replay_over_many_orderings_on_a_pool():
    """On a pool with padding, unparsable answers and tied scores (0 and 1), through the engine's batch:
    the exact curve equals BoN replayed over 400 random orderings (within sampling error), and the
    benchmark's known-law row replays its own n_p to the same accuracy and tokens."""
    from test_evaluate import synthetic_arrays

    import optscale.evaluate as ev

    br = _load_bench_rules()
    arrays = synthetic_arrays(P=40, M=12, seed=3)
    prep = ev.build_batch(arrays, orderings=400, seed=1)
    P, M = arrays.answers.shape
    rows = np.arange(P, prep.n_rows)  # random orderings only (ordering 0 is the pool's order)
    sub = prep.sub(rows)
    exact = kl.bon_accuracy_curve(prep.scores_p, prep.answers_p, prep.sample_correct[:P], prep.n_p, M)
    for n in (1, 3, 7, 12):
        nd = np.minimum(n, sub.n)
        sel = best_score(sub.answers, sub.scores, nd)
        got = ev._metrics(prep, rows, nd, sel).correct.reshape(-1, P).mean(axis=0)
        se = np.sqrt(exact[:, n - 1] * (1 - exact[:, n - 1]) / 400) + 1e-9
        assert np.all(np.abs(got - exact[:, n - 1]) <= 5 * se + 1e-12), n
    ref = br.known_law_reference(prep, np.arange(P), M)
    assert ref["accuracy"] >= ref["bon_exact"] - 0.005 - 1e-12
    assert ref["lp_tokens"] <= ref["tokens"] + 1e-9 < ref["bon_exact_tokens"]
    assert abs(ref["rows_accuracy"] - ref["accuracy"]) < 0.02
    assert abs(ref["rows_tokens"] / ref["tokens"] - 1) < 0.02


def test_paired_ratio_interval_covers_and_pairs():
    br = _load_bench_rules()
    rng = np.random.default_rng(0)
    den = rng.uniform(100, 1000, 300)
    r, lo, hi = br.paired_ratio(0.5 * den, den)  # a constant ratio: paired resamples give no spread
    assert r == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    num = den * rng.uniform(0.2, 0.8, 300)
    r, lo, hi = br.paired_ratio(num, den)
    assert lo < r < hi and hi - lo < 0.1


def test_reselected_ratio_chooses_again_per_resample():
    br = _load_bench_rules()
    P = 200
    rng = np.random.default_rng(1)
    bon = (rng.random(P) < 0.9).astype(float)
    tok = rng.uniform(100, 1000, P)
    # paper: one grid point as accurate as BoN at 2x the tokens; the new rule: the same accuracy at 1x
    pp = {"bon": bon, ("grid", br.PAPER): (bon[None, :], 2 * tok[None, :]), ("grid", "new"): (bon[None, :], tok[None, :])}
    mid, lo, hi, miss = br.reselected_ratio(pp, ["new"], None)
    assert mid == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5) and miss == 0
    # a cheaper new point 0.5 point below BoN on these problems: chosen in some resamples only -> a wide interval
    worse = bon.copy()
    worse[np.flatnonzero(bon)[0]] = 0.0  # one problem (1/200 = 0.5 point) lost
    pp[("grid", "new")] = (np.stack([bon, worse]), np.stack([tok, 0.1 * tok]))
    mid, lo, hi, miss = br.reselected_ratio(pp, ["new"], None)
    assert lo == pytest.approx(0.05) and hi == pytest.approx(0.5) and miss == 0
    # against a per-problem reference
    mid, lo, hi, miss = br.reselected_ratio({"bon": bon, ("grid", "new"): (bon[None, :], tok[None, :])}, ["new"],
                                            4 * tok)
    assert mid == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_gain_ceiling_search_finds_the_cheapest_rate_reaching_the_goal():
    """benchmarks/gain_ceiling.py's search: at a goal below every rate's accuracy it returns the cheapest
    rate's tokens; at BoN's own accuracy it never costs more than BoN; above BoN it finds nothing."""
    from test_evaluate import synthetic_arrays

    import optscale.evaluate as ev
    from optscale.policies import GainModel, make_policy

    _load_bench_rules()
    spec = importlib.util.spec_from_file_location("gain_ceiling", REPO / "benchmarks" / "gain_ceiling.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    arrays = synthetic_arrays(P=40, M=12, seed=5)
    prep = ev.build_batch(arrays, orderings=2, seed=5)
    rows = prep.rows_of(None)
    gm = GainModel.fit(prep.sub(rows), prep.sample_correct[rows])
    sub = prep.sub(rows)
    metrics = [ev._metrics(prep, rows, r.n_drawn, r.selected) for r in (
        make_policy(f"costaware:tokens_per_point={t!r},k={k}", model=gm).replay(sub, 12)
        for t in gc.RATES for k in (1, 2))]
    t0, nd0 = gc.cheapest(prep, rows, gm, 0.0)
    assert t0 == pytest.approx(min(m.tokens.mean() for m in metrics)) and nd0.shape == (rows.size,)
    bon = ev._replay(prep, rows, ev._make("bon", {}), "bon", 12)
    t1, _ = gc.cheapest(prep, rows, gm, bon.correct.mean())
    ok = [m.tokens.mean() for m in metrics if m.correct.mean() >= bon.correct.mean() - 1e-12]
    assert t1 == pytest.approx(min(ok)) and t1 <= bon.tokens.mean() + 1e-9
    assert gc.cheapest(prep, rows, gm, 1.01)[0] == np.inf


def test_semi_synthetic_pool_from_the_training_labels():
    data = REPO.parent / "shared" / "data"
    if not (data / "optscale-paper" / "predictor" / "train_mu_sigma.json").exists():
        pytest.skip(f"shared data not found at {data} (../shared/data/optscale-paper)")
    br = _load_bench_rules()
    arrays, priors = br.semi_synthetic(data, "beta", None, 8, 3, labels="train")
    assert priors is None and arrays.answers.shape == (4501, 8)
    val, vpri = br.semi_synthetic(data, "beta", 50, 8, 3)
    assert vpri.shape == (50, 2) and val.answers.shape == (50, 8)
    assert 0.5 < arrays.correct.mean() < 0.9  # pass@1 ~ 0.7 by construction, as for the MATH-500 pool


def _shared_labels():
    data = REPO.parent / "shared" / "data"
    if not (data / "optscale-paper" / "predictor" / "val_mu_sigma.json").exists():
        pytest.skip(f"shared data not found at {data} (../shared/data/optscale-paper)")
    return data


def test_semi_draw_samples_each_problem_from_its_own_law():
    """semi_synthetic = semi_laws + semi_draw (one stream); fresh draws of one problem (rows = [p] * R) have
    that problem's solve rate q and score mean, and a Beta law's scores its sd."""
    data = _shared_labels()
    br = _load_bench_rules()
    arrays, priors = br.semi_synthetic(data, "beta", 40, 8, 4)
    rng = np.random.default_rng(4)
    laws = br.semi_laws(data, "beta", 40, 4, rng=rng)
    again = br.semi_draw(laws, 8, rng)
    for f in ("scores", "tokens", "answers", "correct"):
        assert np.array_equal(getattr(arrays, f), getattr(again, f))
    assert np.array_equal(priors, laws.priors)
    for law in ("beta", "tn"):
        laws = br.semi_laws(data, law, 40, 4)
        for p in (int(np.argmin(laws.q)), int(np.argmax(laws.q)), 17):
            fresh = br.semi_draw(laws, 64, np.random.default_rng(p), rows=np.full(400, p))
            assert fresh.correct.mean() == pytest.approx(laws.q[p], abs=4 * np.sqrt(laws.q[p] * (1 - laws.q[p])
                                                                              / 25600) + 1e-3)
            assert fresh.scores.mean() == pytest.approx(laws.mean[p], abs=0.01)
            if law == "beta":
                assert fresh.scores.std() == pytest.approx(laws.sd[p], rel=0.05)
            assert np.array_equal(fresh.answers == 0, fresh.correct)


def test_law_knowing_rule_reaches_the_goal_at_most_at_bons_cost():
    """gain_ceiling.law_knowing: a gain table per problem from fresh draws of its own law (seeded: the same call
    gives the same answer, another draw seed other tables); at BoN's accuracy it costs no more than BoN, above
    it nothing reaches the goal, at a goal of 0 the cheapest point costs less."""
    data = _shared_labels()
    br = _load_bench_rules()
    spec = importlib.util.spec_from_file_location("gain_ceiling", REPO / "benchmarks" / "gain_ceiling.py")
    gc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gc)
    import optscale.evaluate as ev

    arrays, _ = br.semi_synthetic(data, "beta", 30, 8, 2)
    prep = ev.build_batch(arrays, orderings=1, seed=2)
    test = np.arange(30)
    rt = prep.rows_of(test)
    bon = ev._replay(prep, rt, ev._make("bon", {}), "bon", 8)
    t, nd = gc.law_knowing("beta", data, 2, prep, test, rt, bon.correct.mean(), 64)
    assert np.isfinite(t) and t <= bon.tokens.mean() + 1e-9 and nd.shape == (rt.size,)
    assert np.all((nd >= 1) & (nd <= 8))
    again = gc.law_knowing("beta", data, 2, prep, test, rt, bon.correct.mean(), 64)
    assert again[0] == t and np.array_equal(again[1], nd)
    assert gc.law_knowing("beta", data, 2, prep, test, rt, 1.01, 64)[0] == np.inf
    t0, _ = gc.law_knowing("beta", data, 2, prep, test, rt, 0.0, 64)
    assert t0 < t
