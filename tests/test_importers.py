"""Importers into the pool schema, on the real files of ../shared/data (optscale.importers)."""

from __future__ import annotations

import json

import pytest

from optscale.errors import InputError, ParameterError
from optscale.importers import (
    IMPORTERS,
    aggregate_steps,
    import_optscale,
    import_pool,
    import_search_and_learn,
    import_selfconsistency,
    load_prompts,
    sniff_format,
)
from optscale.pool import PoolError, load_pool, save_pool, summary, to_arrays

SC = "pools/selfconsistency-codex"
PRM = "pools/prm-bon-fragments"

# --------------------------------------------------------------------------------------------------
# self-consistency (counts from pools/selfconsistency-codex/SOURCE.md)


def test_selfconsistency_addsub(shared_data):
    pool = import_selfconsistency(shared_data / SC / "addsub_output_sc_002.normalized.jsonl")
    assert len(pool.problems) == 395
    assert all(len(p.samples) == 40 for p in pool.problems)
    s = summary(pool)
    assert s["samples"] == 15800
    assert s["correct_samples"] == 12983 and s["per_sample_accuracy"] == pytest.approx(0.822, abs=5e-4)
    assert s["no_answer"] == 383
    # majority@40 over exact answer classes: 362/395 = 0.9165 (SOURCE.md rounds it to 0.917)
    assert s["majority_accuracy"] == pytest.approx(362 / 395)
    p0 = pool.problems[0]
    assert p0.id == "0" and p0.gold == "43" and p0.samples[0].answer == "43" and p0.samples[0].correct is True
    assert p0.samples[31].answer is None and p0.samples[31].correct is False
    # default cost proxy: whitespace words of the text, recorded in meta
    assert p0.samples[0].tokens == len(p0.samples[0].text.split()) and p0.meta["tokens"] == "whitespace"
    assert all(s.score is None for s in p0.samples)


def test_selfconsistency_aqua_and_token_proxies(shared_data):
    path = shared_data / SC / "aqua_output_sc_001.normalized.jsonl"
    pool = import_selfconsistency(path, tokens="char_len", keep_text=False)
    s = summary(pool)
    assert (s["problems"], s["samples"], s["no_answer"]) == (254, 10160, 1901)
    assert s["per_sample_accuracy"] == pytest.approx(0.195, abs=5e-4)
    assert s["majority_accuracy"] == pytest.approx(0.256, abs=5e-4)
    assert [x.tokens for x in pool.problems[0].samples][:10] == [89, 368, 505, 411, 446, 334, 468, 301, 286, 435]
    assert pool.problems[0].samples[0].text is None
    assert all(x.tokens is None for x in import_selfconsistency(path, tokens="none").problems[0].samples)
    with pytest.raises(ParameterError, match="tokens"):
        import_selfconsistency(path, tokens="bpe")


def test_selfconsistency_bad_line(tmp_path):
    row = {"idx": 0, "question": "q", "gold": "1", "samples": ["a", "b"], "answers": ["1"], "correct": [True, False],
           "char_len": [1, 1]}
    path = tmp_path / "sc.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match="line 1, field 'answers': 1 answers for 2 samples"):
        import_selfconsistency(path)
    row["answers"] = ["1", "2"]
    row["correct"] = [True, "no"]
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(InputError, match=r"field 'correct\[1\]'"):
        import_selfconsistency(path)


# --------------------------------------------------------------------------------------------------
# search-and-learn


def test_search_and_learn_n4_with_tokens(shared_data):
    path = shared_data / PRM / "BayesPRM-Search__data_previous_n4.jsonl"
    pool = import_search_and_learn(path)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(pool.problems) == 10 and all(len(p.samples) == 4 for p in pool.problems)
    p0, r0 = pool.problems[0], rows[0]
    assert p0.id == "test/precalculus/807.json" and p0.gold == r"\left( 3, \frac{\pi}{2} \right)"
    assert [s.tokens for s in p0.samples] == [554, 232, 351, 553]
    assert [s.step_scores for s in p0.samples] == r0["scores"]
    assert p0.samples[0].step_scores == [0.6796875, 0.9921875]
    assert p0.samples[0].score == 0.8359375   # mean of the two step scores, exact in binary
    # answers from the last \boxed{}; graded with math-verify against the gold
    assert [s.answer for s in p0.samples] == [r"\left(3, \frac{\pi}{2}\right)", r"(3, \pi)",
                                              r"\left(3, \frac{\pi}{2}\right)", r"\left(3,\frac{\pi}{2}\right)"]
    assert [s.correct for s in p0.samples] == [True, False, True, True]
    assert pool.problems[2].samples[3].answer == "14/3" and pool.problems[2].samples[3].correct is True
    assert sum(s.correct for p in pool.problems for s in p.samples) == 17
    assert p0.meta["subject"] == "Precalculus" and p0.meta["agg"] == "mean"


@pytest.mark.parametrize("fname", ["BayesPRM-Search__data_previous_n4.jsonl", "bayesian-prm-search__n4.jsonl",
                                   "dist_test_time_compute_scaling__n4.jsonl"])
def test_search_and_learn_last_matches_agg_scores(shared_data, fname):
    """The recipe's own agg_scores is the last step score: agg='last' reproduces it exactly."""
    path = shared_data / PRM / fname
    pool = import_search_and_learn(path, agg="last", keep_text=False)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert [[s.score for s in p.samples] for p in pool.problems] == [r["agg_scores"] for r in rows]


def test_search_and_learn_without_tokens(shared_data):
    pool = import_search_and_learn(shared_data / PRM / "dist_test_time_compute_scaling__n4.jsonl", agg="min")
    assert len(pool.problems) == 1 and len(pool.problems[0].samples) == 4
    assert all(s.tokens is None for s in pool.problems[0].samples)
    assert [s.correct for s in pool.problems[0].samples] == [False, False, True, False]
    # agg="min" over each sample's step scores (literals from the file's first row)
    assert [s.score for s in pool.problems[0].samples] == [0.0952148438, 0.2021484375, 0.95703125, 0.1826171875]


def test_search_and_learn_truncated_n256(shared_data):
    path = shared_data / PRM / "BayesPRM-Search__n256_truncated.jsonl"
    with pytest.raises(PoolError) as ei:
        import_search_and_learn(path)
    assert ei.value.line == 4 and str(path) in str(ei.value) and "truncated" in str(ei.value)
    with pytest.warns(UserWarning, match="line 4"):
        pool = import_search_and_learn(path, on_error="skip-truncated-last", keep_text=False, agg="last")
    assert len(pool.problems) == 3 and all(len(p.samples) == 256 for p in pool.problems)
    assert len(pool.notes) == 1
    arr = to_arrays(pool, "exact")
    assert arr.answers.shape == (3, 256) and arr.n.tolist() == [256, 256, 256]
    assert int(arr.correct.sum()) == 346


def test_aggregate_steps():
    assert aggregate_steps([0.5, 1.0], "mean") == 0.75
    assert aggregate_steps([0.5, 0.8], "min") == 0.5
    assert aggregate_steps([0.5, 0.8], "last") == 0.8
    assert aggregate_steps([0.5, 0.8], "prod") == pytest.approx(0.4)
    assert aggregate_steps([], "mean") is None
    with pytest.raises(ParameterError, match="agg"):
        aggregate_steps([0.5], "max")


def test_search_and_learn_bad_score(tmp_path):
    path = tmp_path / "bon.jsonl"
    path.write_text(json.dumps({"problem": "q", "answer": "1", "completions": ["\\boxed{1}"], "scores": [[0.5, 1.5]]}) + "\n")
    with pytest.raises(InputError, match=r"line 1, field 'scores\[0\]\[1\]': must be in \[0, 1\]"):
        import_search_and_learn(path)


# --------------------------------------------------------------------------------------------------
# optscale (no real pool of this format is public: built from real MATH-500 prompts, in the exact format)


def _optscale_file(tmp_path, prompts, n_items=5):
    items = []
    for k, it in enumerate(prompts[:n_items]):
        gold = it["answer"]
        comps = [f"Work.\nSo the answer is $\\boxed{{{gold}}}$.", "I think it is \\boxed{-12345}.",
                 f"Hence \\boxed{{{gold}}}", "No final answer."]
        items.append({"id": k, "output": "", "n": 4, "score": {
            "problem": [it["problem"]], "completions": [comps], "scores": [[0.9, 0.2, 0.8, 0.1]],
            "last_scores": [[0.95, 0.1, 0.7, 0.05]], "pred": [comps[0]], "completion_tokens": [[100, 50, 80, 400]]}})
    path = tmp_path / "optscale_pool.json"
    path.write_text(json.dumps(items))
    return path


def test_optscale_format(shared_data, tmp_path):
    prompts_path = shared_data / "optscale-paper/prompts/math500_test.json"
    prompts = json.loads(prompts_path.read_text())
    # the prompts file must be aligned with the pool: use all 500 items
    path = _optscale_file(tmp_path, prompts, n_items=500)
    pool = import_optscale(path, prompts=prompts_path, keep_text=False)
    assert len(pool.problems) == 500 and all(len(p.samples) == 4 for p in pool.problems)
    p = pool.problems[0]
    assert p.gold == prompts[0]["answer"] and p.id == "0" and p.meta["unique_id"] == prompts[0]["unique_id"]
    assert [s.score for s in p.samples] == [0.9, 0.2, 0.8, 0.1]
    assert [s.tokens for s in p.samples] == [100, 50, 80, 400]
    assert [s.answer for s in p.samples] == [prompts[0]["answer"], "-12345", prompts[0]["answer"], None]
    correct = [[s.correct for s in q.samples] for q in pool.problems]
    assert sum(c[0] and c[2] for c in correct) == 500  # every gold graded equal to itself
    assert sum(c[1] for c in correct) == 0 and sum(c[3] for c in correct) == 0
    last = import_optscale(path, prompts=prompts_path, score_field="last_scores", keep_text=False)
    assert [s.score for s in last.problems[0].samples] == [0.95, 0.1, 0.7, 0.05]


def test_optscale_gsm8k_gold_and_misalignment(shared_data, tmp_path):
    gsm = shared_data / "optscale-paper/prompts/gsm8k_test.json"
    items = load_prompts(gsm)
    assert len(items) == 1319 and items[0]["gold"] == "18"  # the number after ####
    math500 = shared_data / "optscale-paper/prompts/math500_test.json"
    prompts = json.loads(math500.read_text())
    short = _optscale_file(tmp_path, prompts, n_items=5)
    with pytest.raises(InputError, match="5 items but the prompts file .* has 500"):
        import_optscale(short, prompts=math500)
    # same length but shifted by one: the problem texts do not match
    items = json.loads(_optscale_file(tmp_path, prompts, n_items=500).read_text())
    items = items[1:] + items[:1]
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(items))
    with pytest.raises(InputError, match=r"field '\[0\]\.score\.problem': does not match item 0"):
        import_optscale(shifted, prompts=math500)
    # without prompts: no gold, correctness unknown
    pool = import_optscale(short)
    assert pool.problems[0].gold is None and pool.problems[0].samples[0].correct is None


# --------------------------------------------------------------------------------------------------
# registry and sniffing


def test_sniff_and_import_pool(shared_data, tmp_path):
    assert sniff_format(shared_data / SC / "addsub_output_sc_002.normalized.jsonl") == "selfconsistency"
    assert sniff_format(shared_data / PRM / "bayesian-prm-search__n4.jsonl") == "search-and-learn"
    prompts = json.loads((shared_data / "optscale-paper/prompts/math500_test.json").read_text())
    assert sniff_format(_optscale_file(tmp_path, prompts, 2)) == "optscale"
    pool = import_pool(shared_data / PRM / "bayesian-prm-search__n4.jsonl", agg="prod", keep_text=False)
    assert len(pool.problems) == 10 and pool.problems[0].meta["agg"] == "prod"
    out = tmp_path / "p.jsonl"
    save_pool(pool, out)
    assert sniff_format(out) == "pool"
    assert import_pool(out).problems == load_pool(out).problems
    assert set(IMPORTERS) == {"optscale", "search-and-learn", "selfconsistency", "pool"}
    with pytest.raises(ParameterError, match="agg"):
        import_pool(shared_data / SC / "addsub_output_sc_002.normalized.jsonl", agg="mean")
    with pytest.raises(ParameterError, match="format"):
        import_pool(out, "csv")


def test_sniff_unknown(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n')
    with pytest.raises(InputError, match="cannot tell the format"):
        sniff_format(path)
    with pytest.raises(InputError, match="no such file"):
        sniff_format(tmp_path / "missing.jsonl")
