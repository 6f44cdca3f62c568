"""Sample pools: the JSON Lines schema (docs/POOL_FORMAT.md), validation, and the padded array view.

A pool holds, for each problem, samples drawn i.i.d. from a model, each with its final answer, an
optional verifier score, an optional token count and an optional correctness flag. Engines replay
policies over the array view :class:`PoolArrays` built by :func:`to_arrays`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optscale import jsonio as _jsonio
from optscale.errors import InputError, ParameterError

__all__ = [
    "Sample",
    "Problem",
    "Pool",
    "PoolError",
    "PoolArrays",
    "load_pool",
    "save_pool",
    "iter_jsonl",
    "problem_from_dict",
    "problem_to_dict",
    "to_arrays",
    "load_arrays",
    "summary",
]


class PoolError(InputError):
    """Invalid pool content; the message names the file, the line and the field."""


@dataclass
class Sample:
    """One sampled solution: its final answer (None = no answer / unparsable), the verifier score in
    [0, 1], per-step scores, the generated token count, the text and a correctness flag."""

    answer: str | None
    score: float | None = None
    step_scores: list[float] | None = None
    tokens: int | None = None
    text: str | None = None
    correct: bool | None = None


@dataclass
class Problem:
    """A problem with its samples, in the order they were drawn."""

    id: str
    question: str
    gold: str | None
    samples: list[Sample]
    meta: dict = field(default_factory=dict)


@dataclass
class Pool:
    """Problems with samples. ``source`` is the file it was read from; ``notes`` records anything the
    loader had to say about the file (e.g. a skipped truncated last line)."""

    problems: list[Problem]
    source: str | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.problems)


# --------------------------------------------------------------------------------------------------
# reading JSON Lines
# --------------------------------------------------------------------------------------------------

ON_ERROR = _jsonio.ON_ERROR


def iter_jsonl(path: str | os.PathLike, on_error: str = "raise", notes: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed object)`` for each non-blank line of a JSON Lines file (gzip too,
    recognised by its magic bytes): :func:`optscale.jsonio.iter_jsonl`, whose errors are raised as
    :class:`PoolError` (naming the file and line).

    A line that is not valid JSON raises; when it is the last line and the file does not end with a
    newline, the message says the file is truncated. With ``on_error="skip-truncated-last"`` such a
    truncated last line is skipped instead, with a warning and a note appended to ``notes``; any other
    invalid line still raises. ``NaN``/``Infinity``, binary or non-UTF-8 data, corrupt gzip, nesting
    deeper than :data:`optscale.jsonio.MAX_DEPTH`, over-long integers and lone surrogates are errors too.
    """
    try:
        yield from _jsonio.iter_jsonl(path, on_error=on_error, notes=notes)
    except _jsonio.JsonError as exc:
        raise PoolError(exc.file, exc.line, exc.field, exc.reason) from None


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------

PROBLEM_FIELDS = ("id", "question", "gold", "samples", "meta")
SAMPLE_FIELDS = ("answer", "score", "step_scores", "tokens", "text", "correct")


def _is_real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _unit(x, fail, name: str) -> float:
    if not _is_real(x) or not math.isfinite(x):
        fail(name, f"must be a number in [0, 1], got {x!r}")
    if not 0.0 <= x <= 1.0:
        fail(name, f"must be in [0, 1], got {x!r}")
    return float(x)


def _sample_from_dict(d: Any, fail, where: str) -> Sample:
    if not isinstance(d, dict):
        fail(where, f"each sample must be a JSON object, got {type(d).__name__}")
    unknown = [k for k in d if k not in SAMPLE_FIELDS]
    if unknown:
        fail(f"{where}.{unknown[0]}", f"unknown sample field; allowed: {', '.join(SAMPLE_FIELDS)}")
    if "answer" not in d:
        fail(f"{where}.answer", "missing (use null for a sample without a parsable answer)")
    ans = d["answer"]
    if ans is not None and not isinstance(ans, str):
        fail(f"{where}.answer", f"must be a string or null, got {type(ans).__name__} {ans!r}")
    score = d.get("score")
    if score is not None:
        score = _unit(score, fail, f"{where}.score")
    steps = d.get("step_scores")
    if steps is not None:
        if not isinstance(steps, list):
            fail(f"{where}.step_scores", f"must be a list of numbers in [0, 1] or null, got {type(steps).__name__}")
        steps = [_unit(s, fail, f"{where}.step_scores[{k}]") for k, s in enumerate(steps)]
    tokens = d.get("tokens")
    if tokens is not None:
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            fail(f"{where}.tokens", f"must be an integer >= 0 or null, got {tokens!r}")
        if tokens < 0:
            fail(f"{where}.tokens", f"must be >= 0, got {tokens}")
    text = d.get("text")
    if text is not None and not isinstance(text, str):
        fail(f"{where}.text", f"must be a string or null, got {type(text).__name__}")
    correct = d.get("correct")
    if correct is not None and not isinstance(correct, bool):
        fail(f"{where}.correct", f"must be true, false or null, got {correct!r}")
    return Sample(answer=ans, score=score, step_scores=steps, tokens=tokens, text=text, correct=correct)


def problem_from_dict(d: Any, file: str | None = None, line: int | None = None) -> Problem:
    """Validate one pool line (a parsed JSON object) and build its :class:`Problem`.

    Raises :class:`PoolError` naming ``file``, ``line`` and the offending field (``samples[3].score``).
    """

    def fail(fld: str | None, msg: str):
        raise PoolError(file, line, fld, msg)

    if not isinstance(d, dict):
        fail(None, f"each line must be a JSON object (one problem), got {type(d).__name__}")
    unknown = [k for k in d if k not in PROBLEM_FIELDS]
    if unknown:
        fail(unknown[0], f"unknown problem field; allowed: {', '.join(PROBLEM_FIELDS)} (put extra data in 'meta')")
    if "id" not in d:
        fail("id", "missing")
    pid = d["id"]
    if not isinstance(pid, str) or not pid:
        fail("id", f"must be a non-empty string, got {pid!r}")
    question = d.get("question", "")
    if not isinstance(question, str):
        fail("question", f"must be a string, got {type(question).__name__}")
    gold = d.get("gold")
    if gold is not None and not isinstance(gold, str):
        fail("gold", f"must be a string or null, got {type(gold).__name__} {gold!r}")
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        fail("meta", f"must be a JSON object, got {type(meta).__name__}")
    if "samples" not in d:
        fail("samples", "missing")
    samples = d["samples"]
    if not isinstance(samples, list):
        fail("samples", f"must be a list of sample objects, got {type(samples).__name__}")
    if not samples:
        fail("samples", "empty: a problem needs at least one sample")
    parsed = [_sample_from_dict(s, fail, f"samples[{k}]") for k, s in enumerate(samples)]
    return Problem(id=pid, question=question, gold=gold, samples=parsed, meta=meta)


def problem_to_dict(p: Problem) -> dict:
    """The JSON object of one pool line (optional sample fields that are None are left out)."""
    samples = []
    for s in p.samples:
        d: dict[str, Any] = {"answer": s.answer}
        for k in ("score", "step_scores", "tokens", "text", "correct"):
            v = getattr(s, k)
            if v is not None:
                d[k] = v
        samples.append(d)
    out: dict[str, Any] = {"id": p.id, "question": p.question, "gold": p.gold, "samples": samples}
    if p.meta:
        out["meta"] = p.meta
    return out



def _unique_problems(path, on_error: str, notes: list[str]):
    """Validated problems of a pool file in file order; a repeated id raises :class:`PoolError` naming both
    lines (the one loop behind :func:`load_pool` and :func:`load_arrays`)."""
    file = str(path)
    seen: dict[str, int] = {}
    for line, obj in iter_jsonl(path, on_error=on_error, notes=notes):
        p = problem_from_dict(obj, file, line)
        if p.id in seen:
            raise PoolError(file, line, "id", f"duplicate problem id {p.id!r} (first on line {seen[p.id]})")
        seen[p.id] = line
        yield p

def load_pool(path: str | os.PathLike, on_error: str = "raise") -> Pool:
    """Read and validate a pool file (JSON Lines, one problem per line; ``.gz`` accepted).

    Every field is checked (types, scores in [0, 1], tokens integers >= 0, unique problem ids, no
    unknown fields); the first problem raises :class:`PoolError` naming the file, line and field. A
    truncated last line raises too, unless ``on_error="skip-truncated-last"`` (then it is skipped with a
    warning and a note in ``Pool.notes``). An empty file raises.
    """
    file = str(path)
    notes: list[str] = []
    problems: list[Problem] = []
    for p in _unique_problems(path, on_error, notes):
        problems.append(p)
    if not problems:
        raise PoolError(file, None, None, "no problems: the file is empty")
    return Pool(problems=problems, source=file, notes=notes)


def save_pool(pool: Pool, path: str | os.PathLike) -> None:
    """Write ``pool`` as JSON Lines (``.gz`` compresses), one problem per line, atomically (a temporary
    file in the same directory, renamed into place; removed on failure, see
    :func:`optscale.jsonio.atomic_write`). The path is checked first (its directory exists, it is not a
    directory) and every problem is validated before anything is written; invalid content raises
    :class:`PoolError` and writes nothing."""
    path = Path(path)
    _jsonio.check_output(path, "path")
    lines = []
    seen: set[str] = set()
    where = f"<pool to save to {path}>"
    for k, p in enumerate(pool.problems):
        d = problem_to_dict(p)
        try:
            problem_from_dict(json.loads(json.dumps(d, allow_nan=True)), where, k + 1)  # fields, NaN
            line = json.dumps(d, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (ValueError, TypeError, RecursionError) as exc:
            if isinstance(exc, PoolError):
                raise
            try:  # name the field: a lone surrogate, too deep a nesting, ...
                _jsonio.loads(json.dumps(d), where, k + 1)
            except _jsonio.JsonError as err:
                raise PoolError(where, k + 1, err.field, err.reason) from None
            except (ValueError, TypeError, RecursionError):
                pass
            raise PoolError(where, k + 1, None, f"problem {p.id!r} cannot be written as JSON: {exc}") from None
        if p.id in seen:
            raise PoolError(where, k + 1, "id", f"duplicate problem id {p.id!r}")
        seen.add(p.id)
        lines.append(line)
    with _jsonio.atomic_write(path, "wb") as fh:
        for line in lines:
            fh.write(line + b"\n")


# --------------------------------------------------------------------------------------------------
# array view
# --------------------------------------------------------------------------------------------------


@dataclass
class PoolArrays:
    """Padded array view of a pool (P problems, M = the largest sample count).

    scores  float64[P, M]  verifier score, nan where missing or padding
    tokens  float64[P, M]  token count, 0 where missing or padding
    answers int64[P, M]    answer class id within its problem (0, 1, ... by first appearance),
                           -1 for no/unparsable answer and for padding
    correct bool[P, M]     sample correctness, False for padding
    n       int64[P]       samples available per problem
    class_correct bool[P, C]  correctness of each answer class (C = the most classes of any problem;
                           False for padding)
    ids     problem ids; ``gold`` gold answers; ``equiv`` the equivalence used for the classes;
    has_scores / has_tokens  whether every sample has a score / a token count.
    """

    scores: np.ndarray
    tokens: np.ndarray
    answers: np.ndarray
    correct: np.ndarray
    n: np.ndarray
    class_correct: np.ndarray
    ids: list[str] = field(default_factory=list)
    gold: list[str | None] = field(default_factory=list)
    equiv: str = "exact"
    has_scores: bool = False
    has_tokens: bool = False

    @property
    def shape(self) -> tuple[int, int]:
        return self.scores.shape  # type: ignore[return-value]

    def __len__(self) -> int:
        return self.scores.shape[0]


def _grade_kind(equiv: str) -> str:
    return {"exact": "auto", "math": "math", "number": "number", "choice": "choice"}.get(equiv, "auto")


class _ArrayBuilder:
    """Accumulates the rows of :class:`PoolArrays` problem by problem in flat typed buffers (8 bytes per
    sample value, no per-sample objects), so that a pool can be turned into arrays while it is streamed."""

    def __init__(self, equiv: str, timeout: float | None, source: str | None):
        from array import array

        from optscale.answers import EQUIVALENCES

        if equiv not in EQUIVALENCES:
            raise ParameterError("equiv", f"unknown equivalence {equiv!r}; choose one of {sorted(EQUIVALENCES)}")
        self.equiv, self.timeout, self.source, self.kind = equiv, timeout, source, _grade_kind(equiv)
        self.scores, self.tokens = array("d"), array("d")
        self.answers, self.correct, self.n = array("q"), array("b"), array("q")
        self.class_correct, self.n_classes = array("b"), array("q")
        self.ids: list[str] = []
        self.gold: list[str | None] = []
        self.has_scores = self.has_tokens = True

    def add(self, p: Problem) -> None:
        from optscale.answers import cluster_answers, grade

        k = len(p.samples)
        ids = cluster_answers([s.answer for s in p.samples], self.equiv)
        nan = float("nan")
        for s in p.samples:
            if s.score is None:
                self.has_scores = False
            if s.tokens is None:
                self.has_tokens = False
            self.scores.append(nan if s.score is None else s.score)
            self.tokens.append(0.0 if s.tokens is None else s.tokens)
        self.answers.extend(ids.tolist())
        C = int(ids.max()) + 1 if k else 0
        graded: dict[int, bool] = {}
        flags = np.zeros(k, dtype=bool)
        for j, s in enumerate(p.samples):
            if s.correct is not None:
                flags[j] = s.correct
            elif ids[j] < 0:
                flags[j] = False
            else:
                c = int(ids[j])
                if c not in graded:
                    g = grade(p.samples[int(np.argmax(ids == c))].answer, p.gold, kind=self.kind,
                              timeout=self.timeout)
                    if g is None:
                        raise PoolError(
                            self.source, None, f"samples[{j}].correct",
                            f"problem {p.id!r}: no correctness flag and no gold answer to grade against",
                        )
                    graded[c] = g
                flags[j] = graded[c]
        self.correct.frombytes(flags.astype(np.int8).tobytes())
        for c in range(C):
            members = flags[ids == c]
            pos = int(members.sum())
            neg = len(members) - pos
            self.class_correct.append(int(members[0] if pos == neg else pos > neg))
        self.n.append(k)
        self.n_classes.append(C)
        self.ids.append(p.id)
        self.gold.append(p.gold)

    def finish(self) -> PoolArrays:
        P = len(self.n)
        if P == 0:
            raise ParameterError("pool", "has no problems")
        n = np.frombuffer(self.n, dtype=np.int64).copy()
        M = int(n.max())
        rows = np.repeat(np.arange(P), n)
        cols = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)  # position of each sample in its problem

        def padded(buf, dtype, fill):
            out = np.full((P, M), fill, dtype=dtype)
            out[rows, cols] = np.frombuffer(buf, dtype={"d": np.float64, "q": np.int64, "b": np.int8}[buf.typecode])
            return out

        nc = np.frombuffer(self.n_classes, dtype=np.int64)
        class_correct = np.zeros((P, max(int(nc.max()), 1)), dtype=bool)
        class_correct[np.repeat(np.arange(P), nc), np.arange(nc.sum()) - np.repeat(np.cumsum(nc) - nc, nc)] = \
            np.frombuffer(self.class_correct, dtype=np.int8).astype(bool)
        return PoolArrays(
            scores=padded(self.scores, np.float64, np.nan), tokens=padded(self.tokens, np.float64, 0.0),
            answers=padded(self.answers, np.int64, -1), correct=padded(self.correct, bool, False), n=n,
            class_correct=class_correct, ids=self.ids, gold=self.gold, equiv=self.equiv,
            has_scores=self.has_scores, has_tokens=self.has_tokens,
        )


def to_arrays(pool: Pool, equiv: str = "exact", *, timeout: float | None = 5.0, progress=None) -> PoolArrays:
    """Build the padded :class:`PoolArrays` of ``pool``.

    Answers are clustered per problem with :func:`optscale.answers.cluster_answers` under ``equiv``
    (``"exact"``, ``"math"``, ``"number"``, ``"choice"``). Correctness of a sample is its ``correct`` flag
    when present; otherwise its class is graded against the problem's gold answer once
    (:func:`optscale.answers.grade`, kind ``auto`` for exact clustering, else the same kind as ``equiv``;
    ``timeout`` per comparison). A class is correct when the majority of its flagged/graded members is
    (ties: its first member). A sample without an answer is incorrect. A problem with samples lacking
    both a flag and a gold answer raises :class:`PoolError` — correctness is never guessed.
    ``progress``: optional callable called with 1 after each problem (e.g. a tqdm ``update``).
    """
    b = _ArrayBuilder(equiv, timeout, pool.source)
    if not pool.problems:
        raise ParameterError("pool", "has no problems")
    for p in pool.problems:
        b.add(p)
        if progress is not None:
            progress(1)
    return b.finish()


def load_arrays(path: str | os.PathLike, equiv: str = "exact", *, timeout: float | None = 5.0,
                on_error: str = "raise") -> tuple[PoolArrays, Pool]:
    """Read, validate and convert a pool file in one streaming pass: ``(to_arrays(load_pool(path)), pool
    of the problems without their samples)``, without ever holding every sample as an object (memory
    about the size of the arrays, not of the parsed file). Validation and errors are those of
    :func:`load_pool`; the second value keeps each problem's ``id``, ``question``, ``gold`` and ``meta``
    (``samples`` empty) for what needs them (priors, difficulty, the predictor)."""
    file = str(path)
    b = _ArrayBuilder(equiv, timeout, file)
    notes: list[str] = []
    heads: list[Problem] = []
    for p in _unique_problems(path, on_error, notes):
        b.add(p)
        heads.append(Problem(id=p.id, question=p.question, gold=p.gold, samples=[], meta=p.meta))
    if not heads:
        raise PoolError(file, None, None, "no problems: the file is empty")
    return b.finish(), Pool(problems=heads, source=file, notes=notes)


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------


def summary(pool: Pool, equiv: str = "exact", arrays: PoolArrays | None = None) -> dict:
    """Facts about a pool, as a JSON-ready dict: counts, which fields are present, per-sample accuracy
    and majority-vote accuracy (the most frequent answer class among all samples, ties broken by first
    appearance; a problem whose samples have no answer counts as wrong).

    Accuracies need correctness (flags or gold answers); they are None when some sample lacks both.
    """
    samples = [s for p in pool.problems for s in p.samples]
    counts = [len(p.samples) for p in pool.problems]
    total = len(samples)

    def frac(pred) -> float:
        return sum(1 for s in samples if pred(s)) / total if total else 0.0

    out: dict[str, Any] = {
        "source": pool.source,
        "problems": len(pool.problems),
        "samples": total,
        "samples_per_problem": {"min": min(counts, default=0), "max": max(counts, default=0),
                                "mean": (total / len(counts)) if counts else 0.0},
        "with_score": frac(lambda s: s.score is not None),
        "with_step_scores": frac(lambda s: s.step_scores is not None),
        "with_tokens": frac(lambda s: s.tokens is not None),
        "with_text": frac(lambda s: s.text is not None),
        "with_correct_flag": frac(lambda s: s.correct is not None),
        "with_gold": (sum(1 for p in pool.problems if p.gold is not None) / len(pool.problems)) if pool.problems else 0.0,
        "no_answer": sum(1 for s in samples if not s.answer or not s.answer.strip()),
        "mean_tokens": None,
        "mean_score": None,
        "per_sample_accuracy": None,
        "correct_samples": None,
        "majority_accuracy": None,
        "equiv": equiv,
        "notes": list(pool.notes),
    }
    toks = [s.tokens for s in samples if s.tokens is not None]
    if toks:
        out["mean_tokens"] = float(np.mean(toks))
    sc = [s.score for s in samples if s.score is not None]
    if sc:
        out["mean_score"] = float(np.mean(sc))
    if arrays is None:
        try:
            arrays = to_arrays(pool, equiv=equiv)
        except PoolError as exc:
            out["notes"].append(f"accuracy not computed: {exc}")
            return out
    ncorrect = int(arrays.correct.sum())
    out["correct_samples"] = ncorrect
    out["per_sample_accuracy"] = ncorrect / total if total else None
    maj = 0
    for i in range(len(arrays)):
        ids = arrays.answers[i, : arrays.n[i]]
        valid = ids[ids >= 0]
        if valid.size == 0:
            continue
        counts_c = np.bincount(valid)
        best = int(np.argmax(counts_c))  # first maximal id = earliest-appearing class among ties
        maj += bool(arrays.class_correct[i, best])
    out["majority_accuracy"] = maj / len(arrays)
    return out
