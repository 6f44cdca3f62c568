"""The committed SmolLM2 arithmetic pools (pools/smollm2-arith): their documented properties hold.

The numbers compared against are read from the pool's README (its ``sanity`` JSON block), and recomputed
here from the pool files, so an edit of either that makes them disagree fails.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from optscale.answers import grade
from optscale.pool import load_pool, to_arrays

POOL_DIR = Path(__file__).resolve().parents[1] / "pools" / "smollm2-arith"
FILES = ("selfcert.jsonl", "judge.jsonl")


def _readme_block(name: str) -> dict:
    text = (POOL_DIR / "README.md").read_text(encoding="utf-8")
    m = re.search(r"```json " + re.escape(name) + r"\n(.*?)\n```", text, re.S)
    assert m, f"README.md has no ```json {name} block"
    return json.loads(m.group(1))


def _make_pool_module():
    spec = importlib.util.spec_from_file_location("make_pool", POOL_DIR / "make_pool.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def pools():
    missing = [f for f in FILES if not (POOL_DIR / f).exists()]
    if missing:
        pytest.fail(f"committed pool files missing: {missing}")
    return {f: load_pool(POOL_DIR / f) for f in FILES}


def test_size_and_no_texts():
    total = sum((POOL_DIR / f).stat().st_size for f in FILES)
    assert total < 2 * 2**20, f"pools take {total} bytes, documented < 2 MB"
    for f in FILES:
        for i, line in enumerate((POOL_DIR / f).read_text(encoding="utf-8").splitlines(), 1):
            d = json.loads(line)
            assert all("text" not in s for s in d["samples"]), f"{f} line {i} has a text"


def test_counts_tokens_scores(pools):
    doc = _readme_block("pool")
    for f, pool in pools.items():
        assert len(pool.problems) == doc["problems"] >= 200, f
        for p in pool.problems:
            assert len(p.samples) == doc["samples_per_problem"] == 32, (f, p.id)
            for s in p.samples:
                assert isinstance(s.tokens, int) and 0 <= s.tokens <= doc["max_tokens"], (f, p.id, s.tokens)
                assert s.score is not None and 0.0 <= s.score <= 1.0, (f, p.id)
                assert s.text is None
                assert s.correct is not None


def test_same_samples_in_both_files(pools):
    a, b = (pools[f].problems for f in FILES)
    assert [p.id for p in a] == [p.id for p in b]
    for pa, pb in zip(a, b, strict=True):
        assert pa.question == pb.question and pa.gold == pb.gold
        assert [s.answer for s in pa.samples] == [s.answer for s in pb.samples], pa.id
        assert [s.tokens for s in pa.samples] == [s.tokens for s in pb.samples], pa.id
        assert [s.correct for s in pa.samples] == [s.correct for s in pb.samples], pa.id
    # the scorers differ: not one score column copied into the other file
    sa = np.array([s.score for p in a for s in p.samples])
    sb = np.array([s.score for p in b for s in p.samples])
    assert not np.allclose(sa, sb)


def test_correct_flags_match_gold(pools):
    """Each stored correctness flag equals grading the stored answer against the problem's gold as the runner
    does (``grade`` kind auto: "5 * 9" is 45), and the gold is the product the question states."""
    cache: dict = {}
    for p in pools["selfcert.jsonl"].problems:
        a, b = (int(x) for x in re.findall(r"has (\d+) \w+\. Each \w+ holds (\d+) ", p.question)[0])
        assert p.gold == str(a * b), p.id
        for s in p.samples:
            key = (s.answer, p.gold)
            if key not in cache:
                cache[key] = bool(grade(s.answer, p.gold))
            assert s.correct == cache[key], (p.id, s.answer)


def test_problems_regenerate_from_the_script(pools):
    """make_pool.py's seeded generators yield exactly the committed problems (ids, questions, gold): each is a
    v1 problem or a new candidate, and the new candidates repeat no v1 question."""
    mp = _make_pool_module()
    v1 = {r["id"]: r for r in mp.make_problems(mp.MIX)}
    cands = mp.make_candidates()
    assert not {r["question"] for r in cands} & {r["question"] for r in v1.values()}
    assert len({r["question"] for r in cands}) == len(cands) == sum(mp.MIX.values()) * mp.CAND_PER_LEVEL // 100
    known = {**v1, **{r["id"]: r for r in cands}}
    assert len(known) == len(v1) + len(cands)
    for p in pools["selfcert.jsonl"].problems:
        r = known[p.id]
        assert (r["question"], r["answer"], r["level"]) == (p.question, p.gold, p.meta["level"]), p.id


def test_selection_rule():
    """selection.json (ids and pilot solve counts, no texts) follows the documented rule, and the pool holds
    exactly its selected problems: v1 problems with their v1-pool count of 32 in V1_BAND, then new candidates in
    candidate order with their pilot count of PILOT_K in NEW_BAND, until TARGET or MAX_PILOT candidates
    piloted; the counts as in README."""
    mp = _make_pool_module()
    sel = json.loads((POOL_DIR / "selection.json").read_text(encoding="utf-8"))
    doc = _readme_block("selection")
    for k, v in doc.items():
        assert sel[k] == v, k
    assert sel["v1_band"] == list(mp.V1_BAND) and sel["new_band"] == list(mp.NEW_BAND)
    assert sel["pilot_k"] == mp.PILOT_K and sel["target"] == mp.TARGET and sel["max_pilot"] == mp.MAX_PILOT
    assert sel["complete"]
    assert len({mp.V1_SEED, mp.PILOT_SEED, mp.SEED}) == 3  # the final samples are fresh draws
    v1 = [e for e in sel["pilot"] if e["source"] == "v1"]
    new = [e for e in sel["pilot"] if e["source"] == "new"]
    assert [e["id"] for e in v1] == [r["id"] for r in mp.make_problems(mp.MIX)]
    for e in v1:
        assert e["samples"] == 32 and e["selected"] == (mp.V1_BAND[0] <= e["correct"] <= mp.V1_BAND[1]), e
    assert sum(e["selected"] for e in v1) == sel["v1_selected"]
    cand_ids = [r["id"] for r in mp.make_candidates()]
    assert [e["id"] for e in new] == cand_ids[: len(new)] and len(new) == sel["candidates_piloted"]
    passed = [e["id"] for e in new if e["samples"] == mp.PILOT_K and mp.NEW_BAND[0] <= e["correct"] <= mp.NEW_BAND[1]]
    assert len(passed) == sel["candidates_passed"]
    room = mp.TARGET - sel["v1_selected"]
    assert [e["id"] for e in new if e["selected"]] == passed[:room]
    # complete: the target is reached, or every candidate the pilot was allowed is piloted
    assert sel["selected"] == mp.TARGET or sel["candidates_piloted"] == mp.MAX_PILOT
    chosen = {e["id"] for e in sel["pilot"] if e["selected"]}
    assert len(chosen) == sel["selected"] == sel["v1_selected"] + sel["new_selected"]
    pool_ids = [json.loads(ln)["id"] for ln in (POOL_DIR / "selfcert.jsonl").read_text().splitlines()]
    assert sorted(pool_ids) == sorted(chosen)


@pytest.mark.parametrize("name", FILES)
def test_documented_sanity_numbers(pools, name):
    """Solve-rate distribution and single-sample / majority / BoN / oracle accuracies as in the README."""
    mp = _make_pool_module()
    doc = _readme_block(name.removesuffix(".jsonl"))
    got = mp.sanity(POOL_DIR / name)
    assert set(got) == set(doc)
    for k, v in doc.items():
        assert got[k] == pytest.approx(v, abs=5e-4), k
    arr = to_arrays(pools[name], equiv="number")
    rate = arr.correct.mean(axis=1)
    frac = float(np.mean((rate >= 0.2) & (rate <= 0.8)))
    assert frac == pytest.approx(doc["frac_solve_rate_in_0.2_0.8"], abs=5e-4)
    assert doc["oracle_acc"] >= doc["majority_acc"] and doc["oracle_acc"] >= doc["bon_acc"]


def test_pool_replays_offline(pools):
    """The pool is usable by the offline engine: fixed BoN and self-consistency at N = 32 reproduce the
    README's BoN@32 / majority@32 accuracies."""
    from optscale.evaluate import evaluate

    for name in FILES:
        doc = _readme_block(name.removesuffix(".jsonl"))
        rep = evaluate(to_arrays(pools[name], equiv="number"), ["bon", "sc"], [32], orderings=0, calib_frac=0.0)
        assert rep.get(method="bon", budget=32).accuracy == pytest.approx(doc["bon_acc"], abs=5e-4), name
        assert rep.get(method="sc", budget=32).accuracy == pytest.approx(doc["majority_acc"], abs=5e-4), name
