"""The memory-bounded evaluation path (issue #9, Load) gives exactly the numbers of the one-shot path:
streamed pool arrays, replays and the tuning fast path in blocks of orderings, lazily drawn bootstrap
weights, chunked fits. Peak memory itself is measured by benchmarks/bench_eval_memory.py."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

import optscale.evaluate as ev
from optscale import theory
from optscale.pool import load_arrays, load_pool, to_arrays


def _write_pool(path, problems=240, samples=6, seed=0):
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(problems):
            gold = str(rng.randint(0, 5))
            ss = []
            for _ in range(rng.randint(1, samples)):
                a = rng.choice([str(rng.randint(0, 5)), None])
                s = {"answer": a, "score": round(rng.random(), 3), "tokens": rng.randint(10, 300)}
                if rng.random() < 0.5:  # the rest is graded against the gold answer
                    s["correct"] = a == gold
                ss.append(s)
            fh.write(json.dumps({"id": f"p{i}", "question": f"q{i}", "gold": gold, "samples": ss,
                                 "meta": {"level": rng.randint(1, 5)}}) + "\n")
    return path


def test_streamed_arrays_equal_to_arrays_of_the_loaded_pool(tmp_path):
    path = _write_pool(tmp_path / "p.jsonl")
    pool = load_pool(path)
    want = to_arrays(pool)
    got, heads = load_arrays(path)
    for f in ("scores", "tokens", "answers", "correct", "n", "class_correct"):
        a, b = getattr(got, f), getattr(want, f)
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), f
    assert (got.ids, got.gold, got.has_scores, got.has_tokens) == (want.ids, want.gold, want.has_scores,
                                                                    want.has_tokens)
    assert [(p.id, p.question, p.gold, p.meta) for p in heads.problems] == \
        [(p.id, p.question, p.gold, p.meta) for p in pool.problems]
    assert all(p.samples == [] for p in heads.problems)


def test_bootstrap_weights_are_the_one_shot_draw_in_chunks(monkeypatch):
    P, n_boot, seed = 37, 50, 3
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB007]))
    idx = rng.integers(0, P, size=(n_boot, P))
    ref = np.stack([np.bincount(r, minlength=P) for r in idx])
    monkeypatch.setattr(ev, "_BOOT_CHUNK", 5 * P)  # 5 resamples per chunk
    assert np.array_equal(ev.bootstrap_weights(P, n_boot, seed), ref)
    lazy = ev.LazyBootstrapWeights(P, n_boot, seed)
    assert np.array_equal(np.asarray(lazy), ref)
    v = np.random.default_rng(1).random((4, P))
    for a, b in zip(ev.bootstrap_ci(v, weights=lazy), ev.bootstrap_ci(v, weights=ref), strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("tune", [True, False])
def test_blocked_evaluation_equals_one_shot(tmp_path, monkeypatch, tune):
    arrays, _ = load_arrays(_write_pool(tmp_path / "p.jsonl"))
    methods = ["bon", "sc", "esc", "dsc", "optscale0", "optscale0-seq"]
    kw = dict(orderings=7, seed=2, tune=tune, oracle=True, n_boot=200)
    monkeypatch.setattr(ev, "_ROW_CHUNK", 10**9)
    monkeypatch.setattr(ev, "_GRID_CHUNK", 10**9)
    monkeypatch.setattr(theory, "_FIT_CHUNK", 10**9)
    one = ev.evaluate(arrays, methods, [2, 4, 6], **kw)
    monkeypatch.setattr(ev, "_ROW_CHUNK", 300)  # blocks of 2 orderings (of 168 or 240 rows)
    monkeypatch.setattr(ev, "_GRID_CHUNK", 700)
    monkeypatch.setattr(theory, "_FIT_CHUNK", 64)
    assert len(ev._row_blocks(ev.build_batch(arrays, orderings=7), np.arange(8 * 240))) > 1
    blocked = ev.evaluate(arrays, methods, [2, 4, 6], **kw)
    assert json.dumps(one.to_dict(), sort_keys=True) == json.dumps(blocked.to_dict(), sort_keys=True)


def test_row_blocks_gathered_on_demand_equal_the_whole_batch(tmp_path):
    """Prepared keeps only per-problem arrays and the draw order: a block's ReplayBatch, tokens and
    cumulative tokens gathered on demand equal the rows of the whole batch."""
    arrays, _ = load_arrays(_write_pool(tmp_path / "p.jsonl"))
    prep = ev.build_batch(arrays, orderings=3, seed=5, difficulty=np.linspace(0, 1, 240))
    whole, cum = prep.batch, prep.cumtok
    rows = np.random.default_rng(0).permutation(prep.n_rows)[:300]
    sub = prep.sub(rows)
    for f in ("answers", "scores", "tokens", "n", "difficulty", "group"):
        assert np.array_equal(getattr(sub, f), getattr(whole, f)[rows], equal_nan=True), f
    assert np.array_equal(prep.problem[rows], rows % 240) and np.array_equal(prep.ordering[rows], rows // 240)
    nd = np.random.default_rng(1).integers(0, sub.n + 1)
    assert np.array_equal(prep.tokens_at(rows, nd), cum[rows, nd])
    assert np.array_equal(prep.cumtok_of(rows), cum[rows])


def test_compact_tuning_sums_read_as_float64_means():
    rng = np.random.default_rng(2)
    n_ord, P, M = 7, 50, 6
    parts = [np.stack([rng.integers(0, 2, (k, P)).sum(0).astype(np.float64), rng.random((k, P)).sum(0) * 300,
                       rng.integers(0, M + 1, (k, P)).sum(0).astype(np.float64)]) for k in (3, 2, 2)]
    ref = parts[0].copy()
    for p in parts[1:]:
        ref += p
    ref /= n_ord
    ps = ev._ProblemSums(P, n_ord, M)
    for p in parts:
        ps.add(p)
    ps.divisor = n_ord
    assert ps.correct.dtype == np.uint8 and ps.samples.dtype == np.uint8
    assert np.array_equal(np.asarray(ps), ref)
    assert all(ps[i].mean() == ref[i].mean() for i in range(3))


def test_reliability_grid_in_blocks_equals_coverage_on_all_rows(tmp_path, monkeypatch):
    arrays, _ = load_arrays(_write_pool(tmp_path / "p.jsonl"))
    prep = ev.build_batch(arrays, orderings=7, seed=1)
    rows = prep.rows_of(np.arange(240))
    monkeypatch.setattr(ev, "_ROW_CHUNK", 300)  # blocks of 2 orderings
    assert len(ev._row_blocks(prep, rows)) > 1
    got = ev.reliability_grid(prep, rows, "optscale0", {}, 4, targets=(0.5, 0.8), alphas=(0.1, 0.3))
    for g in got:
        m = ev._replay(prep, rows, ev._make("optscale0", {"target": g["target"], "alpha": g["alpha"]}),
                       "optscale0", 4)
        want = ev.coverage_of(prep, rows, g["target"], 4, m.samples)
        assert {k: g[k] for k in want} == pytest.approx(want, nan_ok=True, rel=0, abs=0)
