"""Problem sets: benchmark files, any JSON/JSONL of questions, a built-in demo set (an input edge, used by
the online runner and the predictor; files are read by :mod:`optscale.jsonio`).

``load_problems(path)`` reads the five benchmark files released with the OptScale paper
(``math500_test.json``, ``gsm8k_test.json``, ``aime24.json``, ``aime25.json``, ``amc23.json``) and any
JSON array / JSON Lines file of question/answer records. The format (JSON array, an object wrapping a
list, or JSON Lines) is sniffed from the content; the field names are found among common spellings
(``problem``/``question``/``prompt``, ``answer``/``gold``/..., ``id``/``unique_id``) or given
explicitly. GSM8K-style answers (a worked solution ending in ``#### 42``) are reduced to the final
number. A sample pool (``optscale.pool`` schema) is also a valid problem file: its ``gold`` is used.

``load_problems("demo")`` (or :func:`load_demo`) returns a small built-in set of easy arithmetic word
problems with integer answers, written for this project, handy for smoke tests with a tiny model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optscale import jsonio
from optscale.errors import InputError, ParameterError

#: the name that selects the built-in demo set
DEMO = "demo"

#: candidate field names, in order of preference
QUESTION_FIELDS = ("problem", "question", "prompt", "input", "query")
ANSWER_FIELDS = ("answer", "gold", "final_answer", "target", "label", "expected_answer")
ID_FIELDS = ("id", "unique_id", "uid", "idx", "problem_id", "qid")
#: keys under which a JSON object may wrap its list of records
LIST_KEYS = jsonio.LIST_KEYS

_NUMBER_WITH_COMMAS = re.compile(r"^[-+]?\d{1,3}(,\d{3})+(\.\d+)?$")


@dataclass(frozen=True)
class Question:
    """One problem to solve: ``id`` (unique in its set), the question text, the gold answer if known."""

    id: str
    question: str
    gold: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def demo_path() -> Path:
    """Path of the built-in demo set (package data ``optscale/data/demo.jsonl``)."""
    return Path(__file__).resolve().parent / "data" / "demo.jsonl"


def load_demo(limit: int | None = None) -> list[Question]:
    """The built-in demo set: ~20 easy arithmetic word problems with integer gold answers."""
    return load_problems(demo_path(), limit=limit)


def normalize_gold(value: Any) -> str:
    """Gold answer as a string: numbers without a spurious ``.0``, GSM8K ``#### n`` reduced to ``n``."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not an answer")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a string or a number, got {type(value).__name__}")
    text = value.strip()
    if "####" in text:  # GSM8K: a worked solution ending in "#### <final answer>"
        text = text.rsplit("####", 1)[-1].strip()
    if _NUMBER_WITH_COMMAS.match(text):
        text = text.replace(",", "")
    return text


def read_records(path: str | Path) -> tuple[list[tuple[int | None, Any]], str]:
    """Records of a JSON / JSON Lines file as (line number or None, record), and the format found
    (``"json"`` or ``"jsonl"``): :func:`optscale.jsonio.read_records` (gzip, encoding and JSON errors
    name the file and the line)."""
    return jsonio.read_records(path)


def _pick(keys: set[str], candidates: tuple[str, ...], explicit: str | None) -> str | None:
    if explicit is not None:
        return explicit
    for name in candidates:
        if name in keys:
            return name
    return None


def load_problems(
    path: str | Path,
    limit: int | None = None,
    *,
    question_field: str | None = None,
    answer_field: str | None = None,
    id_field: str | None = None,
) -> list[Question]:
    """Load a problem set.

    ``path``: a JSON / JSON Lines file, or ``"demo"`` for the built-in demo set. ``limit``: keep the
    first ``limit`` problems. ``question_field`` / ``answer_field`` / ``id_field`` override the field
    names found automatically (see :data:`QUESTION_FIELDS`, :data:`ANSWER_FIELDS`, :data:`ID_FIELDS`).
    Problems without an answer field get ``gold=None``; problems without an id get their position
    (``"0"``, ``"1"``, ...). Raises :class:`~optscale.errors.InputError` naming the file, line and field
    on bad input (not a JSON file, a record that is not an object, a missing or empty question, an
    answer that is neither a string nor a number, duplicate ids).
    """
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ParameterError("limit", f"must be a non-negative integer, got {limit!r}")
    if str(path) == DEMO:
        path = demo_path()
    path = Path(path)
    records, fmt = read_records(path)
    if limit is not None:
        records = records[:limit]
    file = str(path)
    problems: list[Question] = []
    seen: dict[str, int | None] = {}
    for pos, (lineno, rec) in enumerate(records):
        where = lineno if fmt == "jsonl" else None
        item = "" if fmt == "jsonl" else f"item {pos}: "
        if not isinstance(rec, dict):
            raise InputError(file, where, None, f"{item}expected a JSON object, got {type(rec).__name__}")
        keys = set(rec)
        qf = _pick(keys, QUESTION_FIELDS, question_field)
        if qf is None or qf not in rec:
            wanted = question_field or "/".join(QUESTION_FIELDS)
            raise InputError(
                file, where, wanted, f"{item}no question field (have: {', '.join(sorted(keys))})"
            )
        question = rec[qf]
        if not isinstance(question, str) or not question.strip():
            raise InputError(file, where, qf, f"{item}the question must be a non-empty string")
        af = _pick(keys, ANSWER_FIELDS, answer_field)
        gold = None
        if af is not None and af in rec and rec[af] is not None:
            try:
                gold = normalize_gold(rec[af])
            except TypeError as exc:
                raise InputError(file, where, af, f"{item}{exc}") from None
        elif answer_field is not None:
            raise InputError(file, where, answer_field, f"{item}answer field missing")
        idf = _pick(keys, ID_FIELDS, id_field)
        if idf is not None and idf in rec and rec[idf] is not None:
            pid = rec[idf]
            if isinstance(pid, bool) or not isinstance(pid, str | int):
                raise InputError(file, where, idf, f"{item}an id must be a string or an integer")
            pid = str(pid)
        elif id_field is not None:
            raise InputError(file, where, id_field, f"{item}id field missing")
        else:
            pid = str(pos)
        if pid in seen:
            first = seen[pid]
            also = f" (first at line {first})" if first is not None else ""
            raise InputError(file, where, idf or "id", f"{item}duplicate id {pid!r}{also}")
        seen[pid] = where
        meta = {k: v for k, v in rec.items() if k not in {qf, af, idf, "samples"}}
        problems.append(Question(id=pid, question=question, gold=gold, meta=meta))
    return problems
