"""Pool schema: loading with validation, saving, array view, summary (optscale.pool)."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optscale.errors import InputError, ParameterError
from optscale.pool import (
    Pool,
    PoolError,
    Problem,
    Sample,
    load_pool,
    save_pool,
    summary,
    to_arrays,
)


def _line(**kw):
    d = {"id": "p1", "question": "q", "gold": "43", "samples": [{"answer": "43", "score": 0.5, "tokens": 10}]}
    d.update(kw)
    return json.dumps(d)


def _write(path, lines, final_newline=True):
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")
    return path


def _pool():
    return Pool(
        problems=[
            Problem(
                id="a", question="1/2+1/4?", gold=r"\frac{3}{4}",
                samples=[
                    Sample(answer="3/4", score=0.9, step_scores=[0.95, 0.9], tokens=120, text="t1"),
                    Sample(answer=r"\frac{3}{4}", score=0.8, tokens=100),
                    Sample(answer="1/2", score=0.3, tokens=80, correct=False),
                    Sample(answer=None, score=0.1, tokens=300),
                ],
                meta={"level": 2},
            ),
            Problem(
                id="b", question="6*7?", gold="42",
                samples=[Sample(answer="42", score=0.7, tokens=5, correct=True),
                         Sample(answer="41", score=0.6, tokens=7, correct=False)],
            ),
        ]
    )


# --------------------------------------------------------------------------------------------------
# round trip


def test_save_load_round_trip(tmp_path):
    pool = _pool()
    path = tmp_path / "pool.jsonl"
    save_pool(pool, path)
    back = load_pool(path)
    assert back.problems == pool.problems
    assert back.source == str(path)
    # optional None fields are left out of the file
    first = json.loads(path.read_text().splitlines()[0])
    assert "correct" not in first["samples"][0] and first["samples"][3] == {"answer": None, "score": 0.1, "tokens": 300}


def test_save_load_gzip(tmp_path):
    path = tmp_path / "pool.jsonl.gz"
    save_pool(_pool(), path)
    assert gzip.decompress(path.read_bytes()).startswith(b'{"id": "a"')
    assert load_pool(path).problems == _pool().problems


def test_save_rejects_invalid_and_writes_nothing(tmp_path):
    pool = _pool()
    pool.problems[0].samples[0].score = 1.5
    path = tmp_path / "out.jsonl"
    with pytest.raises(PoolError, match=r"samples\[0\]\.score"):
        save_pool(pool, path)
    assert not path.exists()
    pool = _pool()
    pool.problems[1].id = "a"
    with pytest.raises(PoolError, match="duplicate"):
        save_pool(pool, path)


# --------------------------------------------------------------------------------------------------
# validation errors name file, line, field


@pytest.mark.parametrize(
    "line, field, msg",
    [
        (_line(samples=[{"answer": "1", "score": 1.2}]), "samples[0].score", "in [0, 1]"),
        (_line(samples=[{"answer": "1", "score": -0.1}]), "samples[0].score", "in [0, 1]"),
        (_line(samples=[{"answer": "1", "score": True}]), "samples[0].score", "number"),
        (_line(samples=[{"answer": "1", "score": "0.5"}]), "samples[0].score", "number"),
        (_line(samples=[{"answer": "1"}, {"answer": "2", "tokens": -3}]), "samples[1].tokens", ">= 0"),
        (_line(samples=[{"answer": "1", "tokens": 12.0}]), "samples[0].tokens", "integer"),
        (_line(samples=[{"answer": "1", "correct": "yes"}]), "samples[0].correct", "true, false"),
        (_line(samples=[{"answer": 43}]), "samples[0].answer", "string or null"),
        (_line(samples=[{"score": 0.5}]), "samples[0].answer", "missing"),
        (_line(samples=[{"answer": "1", "step_scores": [0.5, 2]}]), "samples[0].step_scores[1]", "in [0, 1]"),
        (_line(samples=[{"answer": "1", "step_scores": 0.5}]), "samples[0].step_scores", "list"),
        (_line(samples=[{"answer": "1", "scor": 0.5}]), "samples[0].scor", "unknown sample field"),
        (_line(samples=[]), "samples", "at least one sample"),
        (_line(samples={"answer": "1"}), "samples", "list"),
        (_line(id=7), "id", "non-empty string"),
        (_line(gold=43), "gold", "string or null"),
        (_line(meta=[1]), "meta", "object"),
        (_line(extra=1), "extra", "unknown problem field"),
        ('{"id": "x", "question": "q"}', "samples", "missing"),
        ('{"question": "q", "samples": [{"answer": "1"}]}', "id", "missing"),
        ("[1, 2]", None, "JSON object"),
    ],
)
def test_bad_field_is_named(tmp_path, line, field, msg):
    path = _write(tmp_path / "bad.jsonl", [_line(id="ok"), "", line])
    with pytest.raises(PoolError) as ei:
        load_pool(path)
    err = ei.value
    assert err.file == str(path) and err.line == 3 and err.field == field
    assert msg in str(err) and str(path) in str(err) and "line 3" in str(err)
    assert isinstance(err, InputError)


def test_nan_is_rejected(tmp_path):
    path = _write(tmp_path / "nan.jsonl", ['{"id": "a", "samples": [{"answer": "1", "score": NaN}]}'])
    with pytest.raises(PoolError, match="line 1.*NaN"):
        load_pool(path)


def test_duplicate_ids(tmp_path):
    path = _write(tmp_path / "dup.jsonl", [_line(), _line(id="p2"), _line()])
    with pytest.raises(PoolError, match="duplicate problem id 'p1' \\(first on line 1\\)") as ei:
        load_pool(path)
    assert ei.value.line == 3 and ei.value.field == "id"


def test_invalid_json_in_the_middle(tmp_path):
    path = _write(tmp_path / "mid.jsonl", [_line(), '{"id": "p2", "samples": [', _line(id="p3")])
    with pytest.raises(PoolError, match="line 2: invalid JSON"):
        load_pool(path)
    # skip-truncated-last does not excuse a broken line in the middle
    with pytest.raises(PoolError, match="line 2: invalid JSON"):
        load_pool(path, on_error="skip-truncated-last")


def test_truncated_last_line(tmp_path):
    path = _write(tmp_path / "trunc.jsonl", [_line(), _line(id="p2"), '{"id": "p3", "samples": [{"ans'], False)
    with pytest.raises(PoolError, match="line 3: truncated last line") as ei:
        load_pool(path)
    assert ei.value.line == 3
    with pytest.warns(UserWarning, match="line 3: skipped the truncated last line"):
        pool = load_pool(path, on_error="skip-truncated-last")
    assert [p.id for p in pool.problems] == ["p1", "p2"]
    assert len(pool.notes) == 1 and "line 3" in pool.notes[0]


def test_invalid_last_line_with_newline_is_not_called_truncated(tmp_path):
    path = _write(tmp_path / "x.jsonl", [_line(), "{oops"])
    with pytest.raises(PoolError, match="line 2: invalid JSON"):
        load_pool(path, on_error="skip-truncated-last")


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(PoolError, match="empty"):
        load_pool(_write(tmp_path / "e.jsonl", [""]))
    with pytest.raises(InputError, match="no such file"):
        load_pool(tmp_path / "nope.jsonl")
    with pytest.raises(ParameterError, match="on_error"):
        load_pool(tmp_path / "nope.jsonl", on_error="ignore")


def test_real_truncated_file_is_reported_not_half_read(shared_data):
    """The n256 file: 3 complete problems, then a line cut off upstream (SOURCE.md). Not in the pool
    format, so the loader first objects to the fields of line 1; the JSONL reader reports line 4."""
    from optscale.pool import iter_jsonl

    path = shared_data / "pools/prm-bon-fragments/BayesPRM-Search__n256_truncated.jsonl"
    with pytest.raises(PoolError) as ei:
        list(iter_jsonl(path))
    assert ei.value.line == 4 and ei.value.file == str(path) and "truncated last line" in str(ei.value)
    with pytest.warns(UserWarning):
        rows = list(iter_jsonl(path, on_error="skip-truncated-last"))
    assert [n for n, _ in rows] == [1, 2, 3]
    assert all(len(d["completions"]) == 256 for _, d in rows)
    with pytest.raises(PoolError, match="line 1, field 'problem': unknown problem field"):
        load_pool(path)


# --------------------------------------------------------------------------------------------------
# arrays


def test_to_arrays_shapes_and_classes():
    arr = to_arrays(_pool(), equiv="math")
    assert arr.scores.shape == arr.tokens.shape == arr.answers.shape == arr.correct.shape == (2, 4)
    assert arr.n.tolist() == [4, 2]
    assert arr.answers.tolist() == [[0, 0, 1, -1], [0, 1, -1, -1]]
    assert np.isnan(arr.scores[1, 2:]).all() and arr.scores[0, 0] == 0.9
    assert arr.tokens[1].tolist() == [5, 7, 0, 0]
    # sample 0/1 graded against gold 3/4 (math), sample 2 flagged False, no answer -> False, padding False
    assert arr.correct.tolist() == [[True, True, False, False], [True, False, False, False]]
    assert arr.class_correct.shape == (2, 2)
    assert arr.class_correct.tolist() == [[True, False], [True, False]]
    assert arr.ids == ["a", "b"] and arr.gold == [r"\frac{3}{4}", "42"]
    assert arr.has_scores and arr.has_tokens and arr.equiv == "math"


def test_to_arrays_exact_keeps_forms_apart():
    arr = to_arrays(_pool(), equiv="exact")
    assert arr.answers[0].tolist() == [0, 1, 2, -1]
    # exact clustering grades each class with the automatic grader (math for 3/4 vs \frac{3}{4})
    assert arr.class_correct[0, :3].tolist() == [True, True, False]


def test_to_arrays_missing_fields():
    pool = Pool([Problem("x", "", "1", [Sample("1"), Sample("2", score=0.4)])])
    arr = to_arrays(pool)
    assert not arr.has_scores and not arr.has_tokens
    assert np.isnan(arr.scores[0, 0]) and arr.tokens[0].tolist() == [0, 0]


def test_to_arrays_refuses_to_guess_correctness():
    pool = Pool([Problem("x", "", None, [Sample("1", correct=True), Sample("2")])], source="f.jsonl")
    with pytest.raises(PoolError, match="no correctness flag and no gold"):
        to_arrays(pool)
    with pytest.raises(ParameterError):
        to_arrays(pool, equiv="fuzzy")


def test_class_correct_majority_of_flags():
    pool = Pool([Problem("x", "", None, [Sample("7", correct=True), Sample("7", correct=False),
                                         Sample("7", correct=True), Sample("8", correct=False),
                                         Sample("9", correct=False), Sample("9", correct=True)])])
    arr = to_arrays(pool)
    assert arr.correct[0].tolist() == [True, False, True, False, False, True]
    assert arr.class_correct[0].tolist() == [True, False, False]  # tie -> first member


# --------------------------------------------------------------------------------------------------
# summary


def test_summary_small():
    s = summary(_pool())
    assert s["problems"] == 2 and s["samples"] == 6
    assert s["samples_per_problem"] == {"min": 2, "max": 4, "mean": 3.0}
    assert s["with_score"] == 1.0 and s["with_tokens"] == 1.0 and s["no_answer"] == 1
    assert s["correct_samples"] == 3 and s["per_sample_accuracy"] == pytest.approx(0.5)
    assert s["majority_accuracy"] == 1.0  # "3/4" (first) wins the tie in a; "42" wins in b


def test_summary_without_correctness():
    s = summary(Pool([Problem("x", "", None, [Sample("1")])]))
    assert s["per_sample_accuracy"] is None and any("accuracy not computed" in n for n in s["notes"])


# --------------------------------------------------------------------------------------------------
# property: any valid pool survives save + load unchanged

_unit = st.floats(0.0, 1.0, allow_nan=False)
_samples = st.builds(
    Sample,
    answer=st.one_of(st.none(), st.text(max_size=8)),
    score=st.one_of(st.none(), _unit),
    step_scores=st.one_of(st.none(), st.lists(_unit, max_size=4)),
    tokens=st.one_of(st.none(), st.integers(0, 10**9)),
    text=st.one_of(st.none(), st.text(max_size=20)),
    correct=st.one_of(st.none(), st.booleans()),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=6)), st.lists(_samples, min_size=1, max_size=5)),
                min_size=1, max_size=4))
def test_round_trip_property(tmp_path, problems):
    pool = Pool([Problem(id=f"p{i}\u00e9", question="q\n\"x\"", gold=g, samples=s, meta={"k": [i]})
                 for i, (g, s) in enumerate(problems)])
    path = tmp_path / "rt.jsonl"
    save_pool(pool, path)
    assert load_pool(path).problems == pool.problems
