"""Answer extraction, equivalences, clustering and grading (optscale.answers)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from optscale import answers as A
from optscale.answers import (
    choice_equiv,
    cluster_answers,
    exact_equiv,
    extract_answer,
    get_equivalence,
    grade,
    math_equiv,
    number_equiv,
    parse_choice,
    parse_number,
)
from optscale.errors import ParameterError

# --------------------------------------------------------------------------------------------------
# extraction


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so $\boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
        (r"first \boxed{1}, then finally \boxed{(3,\frac{\pi}{2})}.", r"(3,\frac{\pi}{2})"),
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces inside
        (r"\fbox{5}", "5"),
        (r"The final answer is $\boxed{7}$", "7"),
        (r"thus \boxed 7$ done", "7"),
        ("She has 70. The answer is 43.\n\n", "43"),
        ("The answer is (a).\n\nQ: next", "(a)"),
        ("The answer is 3.5 dollars. More text", "3.5 dollars"),
        (r"the final answer is $\text{Evelyn}$.", "Evelyn"),
        ("Janet sells 9 eggs.\n#### 18", "18"),
        ("x\n#### 1,234\n", "1,234"),
        ("no answer here", None),
        ("", None),
        (None, None),
        (r"unclosed \boxed{12", None),
        (r"\boxed{}", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_extract_prefers_boxed_over_answer_is():
    assert extract_answer(r"The answer is 4. Actually \boxed{5}") == "5"


# --------------------------------------------------------------------------------------------------
# exact / number / choice


def test_exact_equiv_normalizes():
    assert exact_equiv(" 43. ", "43")
    assert exact_equiv(r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})")
    assert exact_equiv(r"\dfrac{1}{2}", r"\frac{1}{2}")
    assert exact_equiv("$5$", "5")
    assert not exact_equiv("x", "X")
    assert not exact_equiv(None, None)
    assert not exact_equiv("", "")


@pytest.mark.parametrize(
    "s, value",
    [("43", 43), ("43.0", 43), ("43,000", 43000), ("1,234.5", 1234.5), ("-.5", -0.5), ("1e3", 1000),
     (r"\$18", 18), ("50%", 50), (r"\frac{3}{4}", 0.75), ("-3/4", -0.75), ("$7$", 7)],
)
def test_parse_number(s, value):
    assert parse_number(s) == pytest.approx(value)


@pytest.mark.parametrize("s", ["1,2", "12,34", "abc", "", None, "3/0", "x+1", "1.2.3"])
def test_parse_number_rejects(s):
    assert parse_number(s) is None


def test_number_equiv():
    assert number_equiv("43", "43.0")
    assert number_equiv("43,000", "43000")
    assert number_equiv("0.5", "1/2")
    assert not number_equiv("43", "43.5")
    assert not number_equiv("1,2", "12")  # not a thousands separator: compared as strings
    assert number_equiv("abc", "abc")  # non-numbers fall back to exact


def test_number_equiv_is_exact_not_float():
    assert not number_equiv("0.30000000000000004", "0.3")


@pytest.mark.parametrize("s, letter", [("(a)", "a"), ("B", "b"), ("C.", "c"), ("option d", "d"), ("(E)", "e")])
def test_parse_choice(s, letter):
    assert parse_choice(s) == letter


def test_choice_equiv():
    assert choice_equiv("(a)", "A")
    assert not choice_equiv("(a)", "b")
    assert parse_choice("ab") is None


# --------------------------------------------------------------------------------------------------
# math


@pytest.mark.parametrize(
    "a, b",
    [
        ("1/2", r"\frac{1}{2}"),
        ("0.5", r"\frac12"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}"),
        ("x^2+2x+1", "(x+1)^2"),
        (r"\{1,2\}", r"\{2,1\}"),
        ("43", "43.0"),
        (r"\dfrac{14}{3}", r"\frac{14}{3}"),
    ],
)
def test_math_equiv_true(a, b):
    assert math_equiv(a, b)


@pytest.mark.parametrize(
    "a, b",
    [("1/2", "1/3"), ("(3,\\pi)", r"(3,\frac{\pi}{2})"), ("p-q", "p+q"), ("[1,2)", "[1,2]"), ("2", None), ("", "")],
)
def test_math_equiv_false(a, b):
    assert not math_equiv(a, b)


def test_math_equiv_unparsable_falls_back_to_exact():
    assert math_equiv("@@##", "@@##")
    assert not math_equiv("@@##", "@@#")


def test_math_equiv_rejects_bad_timeout():
    with pytest.raises(ParameterError):
        math_equiv("1", "2", timeout=0)


# No wall-clock bounds below (a loaded machine would make them flaky): each slow call returns a value of
# its own when it is NOT interrupted, so getting ``_UNSET`` back proves the limit cut it short.
def test_call_with_limit_main_thread_interrupts():
    assert threading.current_thread() is threading.main_thread()
    assert A._call_with_limit(lambda: time.sleep(5) or "finished", 0.2) is A._UNSET
    assert A._call_with_limit(lambda: "fast", 5.0) == "fast"


def test_call_with_limit_survives_except_exception():
    """The time-out must not be swallowed by the ``except Exception`` handlers of sympy/math-verify."""

    def stubborn():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                time.sleep(0.01)
            except Exception:
                pass
        return "finished"

    assert A._call_with_limit(stubborn, 0.2) is A._UNSET


def test_call_with_limit_worker_thread():
    out = {}

    def run():
        out["slow"] = A._call_with_limit(lambda: time.sleep(3) or "finished", 0.2)
        out["fast"] = A._call_with_limit(lambda: 42, 1.0)
        try:
            A._call_with_limit(lambda: 1 / 0, 1.0)
        except ZeroDivisionError:
            out["raised"] = True

    th = threading.Thread(target=run)
    th.start()
    th.join(60)
    assert out["slow"] is A._UNSET
    assert out["fast"] == 42 and out["raised"]


def test_math_equiv_in_worker_thread():
    res = {}

    def run():
        res["eq"] = math_equiv("x^2+2x+1", "(x+1)^2", timeout=10)
        res["ne"] = math_equiv("x^2+2x", "(x+1)^2", timeout=10)

    th = threading.Thread(target=run)
    th.start()
    th.join(30)
    assert res == {"eq": True, "ne": False}


def test_math_equiv_timeout_returns_false(monkeypatch):
    """A comparison exceeding the limit returns False promptly instead of hanging."""
    A._math_verify()
    import math_verify

    def slow_verify(*args, **kwargs):
        time.sleep(10)
        return True

    monkeypatch.setattr(math_verify, "verify", slow_verify)
    A._VERIFY_CACHE.clear()
    # fingerprints are not comparable (tuple vs set), so verify is reached; slow_verify would say True
    assert math_equiv(r"(1, 2)", r"\{7, 9\}", timeout=0.3) is False
    assert list(A._VERIFY_CACHE.values()) == [(None, 0.3)]   # remembered as a time-out, with its limit
    A._VERIFY_CACHE.clear()


def test_fingerprint_pruning_agrees_with_sympy():
    # different numbers / expressions are rejected without symbolic comparison, equal ones are not
    pa, fa = A._parse_math("p - q", None)
    pb, fb = A._parse_math("q - p", None)
    pc, fc = A._parse_math("-(q-p)", None)
    assert A._surely_different(fa, fb)
    assert not A._surely_different(fa, fc)
    _, f1 = A._parse_math(r"\frac{\pi^2}{6}", None)
    _, f2 = A._parse_math("1.6449340668", None)
    assert not A._surely_different(f1, f2)  # close numerically: left to math-verify


# --------------------------------------------------------------------------------------------------
# equivalence registry, clustering, grading


def test_get_equivalence():
    assert get_equivalence("math") is math_equiv
    assert get_equivalence(exact_equiv) is exact_equiv
    with pytest.raises(ParameterError, match="equiv"):
        get_equivalence("fuzzy")


def test_cluster_math_groups_fractions():
    ids = cluster_answers(["1/2", r"\frac{1}{2}", None, "0.5", "", "3", r"\dfrac12", "3.0"], "math")
    assert ids.tolist() == [0, 0, -1, 0, -1, 1, 0, 1]
    assert ids.dtype == np.int64


def test_cluster_exact_and_number_and_choice():
    assert cluster_answers(["43", "43.0", "43,000", "43000", "43"], "exact").tolist() == [0, 1, 2, 3, 0]
    assert cluster_answers(["43", "43.0", "43,000", "43000"], "number").tolist() == [0, 0, 1, 1]
    assert cluster_answers(["(a)", "A", "b", None], "choice").tolist() == [0, 0, 1, -1]
    assert cluster_answers([], "exact").tolist() == []


def test_cluster_rejects_non_strings():
    with pytest.raises(ParameterError):
        cluster_answers(["1", 2], "exact")  # type: ignore[list-item]


def test_cluster_fast_path_calls_equiv_once_per_distinct_pair():
    calls = []

    def eq(a, b):
        calls.append((a, b))
        return a == b

    ids = cluster_answers(["7", "8"] * 32 + ["9"], eq)
    assert ids.tolist() == [0, 1] * 32 + [2]
    assert len(calls) == 3  # 8 vs 7, 9 vs 7, 9 vs 8


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(["1", "2", "3", "x", " 2 ", "2."])), max_size=30))
def test_cluster_ids_first_appearance_order(answers):
    ids = cluster_answers(answers, "exact")
    seen = -1
    for a, i in zip(answers, ids, strict=True):
        if a is None:
            assert i == -1
        else:
            assert i <= seen + 1
            seen = max(seen, i)
    # equal normalized answers share an id
    for a, i in zip(answers, ids, strict=True):
        for b, j in zip(answers, ids, strict=True):
            if a is not None and b is not None:
                assert (i == j) == exact_equiv(a, b)


MIXED = ["1/2", r"\frac{1}{2}", "0.5", "0.5000001", "0.50000000001", "3", "3.0", "-3", "1e6", "1000000",
         "1000000.5", "(1, 2)", "(2, 1)", r"\left(1,2\right)", r"\{1, 2\}", r"\{2, 1\}", "[0, 1)", "x + 1",
         "1 + x", "2x", "x^2", r"\sqrt{2}", "1.41421356", r"\pi", "3.14159265", r"10\%", "yes", "(1, 2, 3)",
         r"\sum_{k=1}^{n} k", "0", "-0", r"\infty", "unparsable ((", "2", "2.000000001", r"\frac{14}{2}", "7",
         r"-\frac{3}{4}", "-0.75", "-3/4", r"\frac{3}{0}", "3/0", r"\dfrac{3}{4}", "007", "0.3333333", "1/3"]


def _all_pairs(a, b):
    """math_equiv as a plain callable: cluster_answers then compares a newcomer with every class in turn."""
    return math_equiv(a, b, timeout=10.0)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.sampled_from(MIXED)), max_size=25))
def test_cluster_math_index_gives_the_all_pairs_classes(answers):
    """The fingerprint index prunes comparisons, never changes the classes."""
    assert cluster_answers(answers, "math", timeout=10.0).tolist() == cluster_answers(answers, _all_pairs).tolist()


def test_cluster_math_index_keeps_numerically_close_answers_as_candidates():
    """math-verify equates answers that agree to its numeric precision (1/3 and 0.3333333): the index's
    window around a fingerprint must keep them candidates, or they would split into two classes."""
    answers = ["0.3333333", "1/3", r"\sqrt{2}", "1.41421356", "0.5000001", "0.5", "2", "2.000000001"]
    ids = cluster_answers(answers, "math", timeout=10.0).tolist()
    assert ids == [0, 0, 1, 1, 2, 2, 3, 4]
    assert ids == cluster_answers(answers, _all_pairs).tolist()


def test_cluster_math_many_distinct_numbers_compares_few_pairs(monkeypatch):
    """Distinct numbers (plus a few equal spellings) need about one comparison per new answer,
    not one per (answer, class) pair, and keep the all-pairs classes."""
    answers = [str(i) for i in range(300)] + ["7.0", r"\frac{14}{2}", "299.0", "299.0000001", "-7"]
    calls = []
    real = A._math_compare
    monkeypatch.setattr(A, "_math_compare", lambda a, b, t=5.0: calls.append((a, b)) or real(a, b, t))
    ids = cluster_answers(answers, "math")
    assert ids.tolist() == list(range(300)) + [7, 7, 299, 300, 301]
    assert len(calls) < 20, len(calls)   # the all-pairs loop makes 300 * 299 / 2 + ... = 45,000+


def test_grade():
    assert grade("43", "43.0") is True
    assert grade("(b)", "b") is True
    assert grade("(c)", "b") is False
    assert grade(r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})") is True
    assert grade("1/2", r"\frac12", kind="math") is True
    assert grade("1/2", r"\frac12", kind="exact") is False
    assert grade("43,000", "43000", kind="number") is True
    assert grade(None, "1") is False
    assert grade("", "1") is False
    assert grade("1", None) is None
    with pytest.raises(ParameterError, match="kind"):
        grade("1", "1", kind="fuzzy")


def test_grade_math500_golds_against_themselves(shared_data):
    import json

    items = json.loads((shared_data / "optscale-paper/prompts/math500_test.json").read_text())
    for it in items[:40]:
        assert grade(it["answer"], it["answer"]) is True
        boxed = extract_answer(f"so the answer is $\\boxed{{{it['answer']}}}$.")
        assert grade(boxed, it["answer"]) is True, it["answer"]
