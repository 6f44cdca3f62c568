"""Problem loaders: the paper's five benchmark files, generic JSON/JSONL, the demo set, clear errors."""

from __future__ import annotations

import json

import pytest

from optscale.errors import InputError, ParameterError
from optscale.problems import DEMO, load_demo, load_problems, normalize_gold

BENCHMARKS = {  # file: (items, first id, first gold)
    "math500_test.json": (500, None, None),
    "gsm8k_test.json": (1319, "0", "18"),
    "aime24.json": (30, "60", "204"),
    "aime25.json": (30, "0", "70"),
    "amc23.json": (40, "0", "27"),
}


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_files(shared_data, name):
    path = shared_data / "optscale-paper" / "prompts" / name
    raw = json.loads(path.read_text())
    problems = load_problems(path)
    n, first_id, first_gold = BENCHMARKS[name]
    assert len(problems) == len(raw) == n
    assert len({p.id for p in problems}) == n
    assert all(p.question.strip() and p.gold for p in problems)
    if name != "math500_test.json":
        assert problems[0].id == first_id and problems[0].gold == first_gold
    else:
        assert problems[0].id == raw[0]["unique_id"] and problems[0].gold == raw[0]["answer"]
    assert problems[0].question == raw[0].get("problem", raw[0].get("question"))
    assert load_problems(path, limit=3) == problems[:3]


def test_gsm8k_answers_are_the_final_numbers(shared_data):
    path = shared_data / "optscale-paper" / "prompts" / "gsm8k_test.json"
    raw = json.loads(path.read_text())
    problems = load_problems(path)
    for p, r in zip(problems, raw, strict=True):
        assert "####" not in p.gold
        assert p.gold == r["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        float(p.gold)  # every GSM8K gold is a number


def test_demo_set():
    demo = load_demo()
    assert 15 <= len(demo) <= 30
    assert len({p.id for p in demo}) == len(demo)
    assert all(p.gold.isdigit() and p.question.endswith("?") for p in demo)
    assert load_problems(DEMO, limit=2) == demo[:2]


def test_jsonl_with_custom_fields(tmp_path):
    f = tmp_path / "qs.jsonl"
    f.write_text(
        '{"key": "a", "q": "1+1?", "sol": 2}\n\n{"key": "b", "q": "2+2?", "sol": "4.0", "extra": [1]}\n'
    )
    ps = load_problems(f, question_field="q", answer_field="sol", id_field="key")
    assert [(p.id, p.question, p.gold) for p in ps] == [("a", "1+1?", "2"), ("b", "2+2?", "4.0")]
    assert ps[1].meta == {"extra": [1]}
    with pytest.raises(InputError, match="line 1.*no question field.*have: key, q, sol"):
        load_problems(f)  # no standard question field


def test_json_object_wrapper_and_unlabeled(tmp_path):
    f = tmp_path / "qs.json"
    f.write_text(json.dumps({"problems": [{"question": "x?"}, {"question": "y?", "answer": 3.5}]}))
    ps = load_problems(f)
    assert [(p.id, p.gold) for p in ps] == [("0", None), ("1", "3.5")]


def test_pool_file_is_a_problem_file(tmp_path):
    f = tmp_path / "pool.jsonl"
    f.write_text(json.dumps({"id": "p1", "question": "q?", "gold": "7", "samples": [{"answer": "7"}]}) + "\n")
    (p,) = load_problems(f)
    assert (p.id, p.question, p.gold, p.meta) == ("p1", "q?", "7", {})


@pytest.mark.parametrize(
    "content, match",
    [
        ("", "empty"),
        ('{"question": "a"}\n{"question": \n', "line 2.*invalid JSON"),
        ("[1, 2]", "item 0: expected a JSON object"),
        ('{"question": ""}\n', "line 1.*'question'.*non-empty"),
        ('{"question": "a", "answer": [1]}\n', "'answer'.*string or a number"),
        ('{"id": 1, "question": "a"}\n{"id": "1", "question": "b"}\n', "line 2.*duplicate id '1'.*line 1"),
        ('{"id": true, "question": "a"}\n', "'id'"),
        ('[{"question": ', "invalid JSON"),
    ],
)
def test_bad_input(tmp_path, content, match):
    f = tmp_path / "bad.jsonl"
    f.write_text(content)
    with pytest.raises(InputError, match=match):
        load_problems(f)


def test_missing_file_and_bad_limit(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_problems(tmp_path / "nope.json")
    with pytest.raises(ParameterError, match="limit"):
        load_problems(DEMO, limit=-1)


def test_normalize_gold():
    assert normalize_gold(3) == "3" and normalize_gold(3.0) == "3" and normalize_gold(2.5) == "2.5"
    assert normalize_gold("Some work\n#### 1,234") == "1234"
    assert normalize_gold(" \\frac{1}{2} ") == "\\frac{1}{2}"
    with pytest.raises(TypeError):
        normalize_gold(True)
