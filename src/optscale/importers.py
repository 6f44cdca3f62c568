"""Importers from published sample-pool formats into the pool schema (docs/POOL_FORMAT.md).

===================  =====================================================================================
format               source
===================  =====================================================================================
``optscale``         the OptScale paper's pools: a JSON list aligned with a prompts file, item
                     ``{"id", "output", "n", "score": {"problem": [q], "completions": [[N]], "scores": [[N]],
                     "last_scores": [[N]], "pred": [..], "completion_tokens": [[N]]}}``
``search-and-learn`` HuggingFace search-and-learn ``best_of_n_completions.jsonl`` (per-step PRM scores)
``selfconsistency``  the normalized self-consistency release (``idx, question, gold, samples, answers,
                     correct, char_len``)
``pool``             a file already in the pool schema (validated by :func:`optscale.pool.load_pool`)
===================  =====================================================================================

Each importer is ``import_<format>(path, ...) -> Pool``; :data:`IMPORTERS` maps format names to them and
:func:`import_pool` sniffs the format of a file. Correctness is graded at import when the source gives a
gold answer but no correctness flags: with math-verify for math answers (per-comparison time limit),
exact rational equality for numbers and letter equality for choices (:func:`optscale.answers.grade`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any

from optscale import jsonio
from optscale.answers import extract_answer, grade
from optscale.errors import InputError, ParameterError
from optscale.pool import PROBLEM_FIELDS, Pool, Problem, Sample, iter_jsonl, load_pool

__all__ = [
    "AGGREGATIONS",
    "IMPORTERS",
    "aggregate_steps",
    "import_optscale",
    "import_search_and_learn",
    "import_selfconsistency",
    "import_pool",
    "load_prompts",
    "sniff_format",
]

Progress = Callable[[int], Any] | None

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _agg_prod(xs: list[float]) -> float:
    return float(math.prod(xs))


AGGREGATIONS: dict[str, Callable[[list[float]], float]] = {
    "mean": lambda xs: float(sum(xs) / len(xs)),
    "min": lambda xs: float(min(xs)),
    "last": lambda xs: float(xs[-1]),
    "prod": _agg_prod,
}


def aggregate_steps(step_scores: list[float], agg: str = "mean") -> float | None:
    """One score from per-step scores: ``mean``, ``min``, ``last`` or ``prod``; None when there are no
    steps."""
    if agg not in AGGREGATIONS:
        raise ParameterError("agg", f"unknown aggregation {agg!r}; choose one of {list(AGGREGATIONS)}")
    if not step_scores:
        return None
    return AGGREGATIONS[agg](step_scores)


def _check_unit(x: Any, file: str, line: int | None, fld: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        raise InputError(file, line, fld, f"must be a number in [0, 1], got {x!r}")
    if not 0.0 <= x <= 1.0:
        raise InputError(file, line, fld, f"must be in [0, 1], got {x!r}")
    return float(x)


def _check_tokens(x: Any, file: str, line: int | None, fld: str) -> int:
    if isinstance(x, float) and x.is_integer():
        x = int(x)
    if isinstance(x, bool) or not isinstance(x, int) or x < 0:
        raise InputError(file, line, fld, f"must be an integer >= 0, got {x!r}")
    return x


def _require(d: dict, key: str, typ, file: str, line: int | None, prefix: str = ""):
    if key not in d:
        raise InputError(file, line, prefix + key, "missing")
    v = d[key]
    if not isinstance(v, typ):
        names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
        raise InputError(file, line, prefix + key, f"must be {names}, got {type(v).__name__}")
    return v


def _gsm8k_gold(answer: str) -> str:
    m = re.search(r"####\s*(.+)\s*$", answer.strip())
    return m.group(1).strip() if m else answer.strip()


def _read_json_list(file: str, what: str) -> list:
    """The JSON list in ``file``; InputError naming the file (and the line and column of a syntax error)."""
    data = jsonio.read_json(file)  # gzip, encoding, syntax, depth, number and surrogate checks
    if not isinstance(data, list):
        raise InputError(file, None, None, f"{what} is a JSON list, got {type(data).__name__}")
    return data


def load_prompts(path: str | os.PathLike) -> list[dict]:
    """The items of an OptScale prompts file (a JSON list: math500_test, gsm8k_test, aime24/25, amc23),
    each as ``{"question", "gold", "id", "meta"}``. GSM8K-style answers ("... #### 18") give the number
    after ``####``."""
    file = str(path)
    data = _read_json_list(file, "a prompts file")
    out = []
    for k, item in enumerate(data):
        where = f"[{k}]"
        if not isinstance(item, dict):
            raise InputError(file, None, where, "each prompt must be a JSON object")
        q = item.get("problem", item.get("question"))
        if not isinstance(q, str):
            raise InputError(file, None, where + ".problem", "missing: no 'problem' or 'question' string")
        gold = item.get("answer")
        if gold is not None and not isinstance(gold, (str, int, float)):
            raise InputError(file, None, where + ".answer", f"must be a string or number, got {type(gold).__name__}")
        if gold is not None:
            gold = _gsm8k_gold(str(gold)) if "####" in str(gold) else str(gold).strip()
        pid = item.get("unique_id", item.get("id", k))
        meta = {key: item[key] for key in ("subject", "level", "unique_id", "url", "year") if key in item}
        out.append({"question": q, "gold": gold, "id": str(pid), "meta": meta})
    return out


def _squash(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


# --------------------------------------------------------------------------------------------------
# optscale
# --------------------------------------------------------------------------------------------------


def import_optscale(
    path: str | os.PathLike,
    prompts: str | os.PathLike | None = None,
    *,
    score_field: str = "scores",
    keep_text: bool = True,
    grade_kind: str = "auto",
    timeout: float | None = 5.0,
    progress: Progress = None,
) -> Pool:
    """Import an OptScale-paper pool: a JSON list aligned item by item with ``prompts`` (a prompts file
    of the paper, which gives the gold answers; without it golds are null and correctness unknown).

    Item: ``{"id", "output", "n", "score": {"problem": [q], "completions": [[N texts]], "scores": [[N]],
    "last_scores": [[N]], "pred": [..], "completion_tokens": [[N ints]]}}``. Answer = last ``\\boxed{}``
    of a completion; score = ``score[score_field]`` (``"scores"``, the mean step reward, or
    ``"last_scores"``); tokens = ``completion_tokens``. When ``prompts`` is given, the file must have as
    many items and each item's problem text must contain (or be contained in) the prompt's text;
    a mismatch is an error, not a silent misalignment.
    """
    file = str(path)
    if score_field not in ("scores", "last_scores"):
        raise ParameterError("score_field", f"must be 'scores' or 'last_scores', got {score_field!r}")
    data = _read_json_list(file, "an OptScale pool")
    if not data:
        raise InputError(file, None, None, "empty list: no problems")
    prompt_items = load_prompts(prompts) if prompts is not None else None
    if prompt_items is not None and len(prompt_items) != len(data):
        raise InputError(
            file, None, None,
            f"{len(data)} items but the prompts file {prompts} has {len(prompt_items)}: they must be aligned",
        )
    problems: list[Problem] = []
    seen: set[str] = set()
    for k, item in enumerate(data):
        w = f"[{k}]"
        if not isinstance(item, dict):
            raise InputError(file, None, w, f"each item must be a JSON object, got {type(item).__name__}")
        sc = _require(item, "score", dict, file, None, w + ".")
        fields = {}
        for key in ("problem", "completions", score_field):
            v = _require(sc, key, list, file, None, w + ".score.")
            if len(v) != 1:
                raise InputError(file, None, f"{w}.score.{key}", f"expected a list of one entry, got {len(v)}")
            fields[key] = v[0]
        comps = fields["completions"]
        scores = fields[score_field]
        question = fields["problem"]
        if not isinstance(question, str):
            raise InputError(file, None, f"{w}.score.problem[0]", "must be a string")
        if not isinstance(comps, list) or not isinstance(scores, list):
            raise InputError(file, None, f"{w}.score.completions[0]", "must be a list of completions")
        if len(scores) != len(comps):
            raise InputError(
                file, None, f"{w}.score.{score_field}[0]", f"{len(scores)} scores for {len(comps)} completions"
            )
        if not comps:
            raise InputError(file, None, f"{w}.score.completions[0]", "empty: no completions (no samples)")
        toks = None
        if "completion_tokens" in sc:
            ct = sc["completion_tokens"]
            if not isinstance(ct, list) or len(ct) != 1 or not isinstance(ct[0], list) or len(ct[0]) != len(comps):
                raise InputError(file, None, f"{w}.score.completion_tokens", f"must be [[{len(comps)} integers]]")
            toks = [_check_tokens(t, file, None, f"{w}.score.completion_tokens[0][{j}]") for j, t in enumerate(ct[0])]
        if "n" in item and isinstance(item["n"], int) and item["n"] != len(comps):
            raise InputError(file, None, f"{w}.n", f"says {item['n']} samples but there are {len(comps)} completions")
        gold = None
        meta: dict[str, Any] = {"format": "optscale", "score": score_field}
        pid = str(item.get("id", k))
        if prompt_items is not None:
            pi = prompt_items[k]
            a, b = _squash(pi["question"]), _squash(question)
            if a not in b and b not in a:
                raise InputError(
                    file, None, f"{w}.score.problem",
                    f"does not match item {k} of the prompts file {prompts} (is the pool aligned with it?)",
                )
            gold = pi["gold"]
            meta.update(pi["meta"])
        if pid in seen:
            pid = f"{pid}#{k}"
        seen.add(pid)
        samples = []
        for j, text in enumerate(comps):
            if not isinstance(text, str):
                raise InputError(file, None, f"{w}.score.completions[0][{j}]", "must be a string")
            ans = extract_answer(text)
            samples.append(
                Sample(
                    answer=ans,
                    score=_check_unit(scores[j], file, None, f"{w}.score.{score_field}[0][{j}]"),
                    tokens=None if toks is None else toks[j],
                    text=text if keep_text else None,
                    correct=grade(ans, gold, kind=grade_kind, timeout=timeout),
                )
            )
        problems.append(Problem(id=pid, question=question, gold=gold, samples=samples, meta=meta))
        if progress is not None:
            progress(1)
    return Pool(problems=problems, source=file)


# --------------------------------------------------------------------------------------------------
# search-and-learn
# --------------------------------------------------------------------------------------------------


def import_search_and_learn(
    path: str | os.PathLike,
    *,
    agg: str = "mean",
    keep_text: bool = True,
    grade_kind: str = "auto",
    timeout: float | None = 5.0,
    on_error: str = "raise",
    progress: Progress = None,
) -> Pool:
    """Import a HuggingFace search-and-learn ``best_of_n_completions.jsonl``.

    Line: ``{problem, solution, answer (gold), subject, level, unique_id, completions [N],
    scores [N][steps] (per-step PRM scores), pred, agg_scores [N], ..., completion_tokens [N]?}``.
    Sample score = the per-step scores aggregated by ``agg`` (``mean``, ``min``, ``last``, ``prod``;
    the step scores are kept in ``step_scores``; a completion without step scores gets score null);
    tokens = ``completion_tokens`` when the file has them, else null; answer = last ``\\boxed{}`` of
    the completion; correctness graded against ``answer``. ``on_error`` as in
    :func:`optscale.pool.load_pool` (a truncated last line is an error unless
    ``"skip-truncated-last"``).
    """
    if agg not in AGGREGATIONS:
        raise ParameterError("agg", f"unknown aggregation {agg!r}; choose one of {list(AGGREGATIONS)}")
    file = str(path)
    notes: list[str] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, d in iter_jsonl(path, on_error=on_error, notes=notes):
        if not isinstance(d, dict):
            raise InputError(file, line, None, f"each line must be a JSON object, got {type(d).__name__}")
        question = _require(d, "problem", str, file, line)
        gold = d.get("answer")
        if gold is not None and not isinstance(gold, (str, int, float)):
            raise InputError(file, line, "answer", f"must be a string or null, got {type(gold).__name__}")
        gold = None if gold is None else str(gold)
        comps = _require(d, "completions", list, file, line)
        steps = _require(d, "scores", list, file, line)
        if len(steps) != len(comps):
            raise InputError(file, line, "scores", f"{len(steps)} score lists for {len(comps)} completions")
        toks = None
        if "completion_tokens" in d:
            ct = d["completion_tokens"]
            if not isinstance(ct, list) or len(ct) != len(comps):
                raise InputError(file, line, "completion_tokens", f"must be a list of {len(comps)} integers")
            toks = [_check_tokens(t, file, line, f"completion_tokens[{j}]") for j, t in enumerate(ct)]
        if not comps:
            raise InputError(file, line, "completions", "empty: no samples")
        samples = []
        for j, text in enumerate(comps):
            if not isinstance(text, str):
                raise InputError(file, line, f"completions[{j}]", "must be a string")
            st = steps[j]
            if not isinstance(st, list):
                raise InputError(file, line, f"scores[{j}]", "must be a list of per-step scores")
            st = [_check_unit(x, file, line, f"scores[{j}][{t}]") for t, x in enumerate(st)]
            ans = extract_answer(text)
            samples.append(
                Sample(
                    answer=ans,
                    score=aggregate_steps(st, agg),
                    step_scores=st,
                    tokens=None if toks is None else toks[j],
                    text=text if keep_text else None,
                    correct=grade(ans, gold, kind=grade_kind, timeout=timeout),
                )
            )
        pid = d.get("unique_id")
        pid = str(pid) if pid is not None else f"line{line}"
        if pid in seen:
            raise InputError(file, line, "unique_id", f"duplicate problem {pid!r} (first on line {seen[pid]})")
        seen[pid] = line
        meta = {k: d[k] for k in ("subject", "level", "unique_id") if k in d}
        meta.update({"format": "search-and-learn", "agg": agg})
        problems.append(Problem(id=pid, question=question, gold=gold, samples=samples, meta=meta))
        if progress is not None:
            progress(1)
    if not problems:
        raise InputError(file, None, None, "no problems: the file is empty")
    return Pool(problems=problems, source=file, notes=notes)


# --------------------------------------------------------------------------------------------------
# self-consistency (normalized release)
# --------------------------------------------------------------------------------------------------

TOKEN_PROXIES = ("whitespace", "char_len", "none")


def import_selfconsistency(
    path: str | os.PathLike,
    *,
    tokens: str = "whitespace",
    keep_text: bool = True,
    on_error: str = "raise",
    progress: Progress = None,
) -> Pool:
    """Import the normalized self-consistency release: lines ``{"idx", "question", "gold", "samples"
    [N texts], "answers" [N extracted answers or null], "correct" [N bools], "char_len" [N ints]}``.

    Answers and correctness flags are taken as given (null answer = unparsable). The release has no
    scores and no token counts; ``tokens`` picks the cost proxy stored as ``tokens``: ``"whitespace"``
    (number of whitespace-separated words of the sample text, the default), ``"char_len"`` (its
    character length, as released) or ``"none"`` (null). The choice is recorded in each problem's
    ``meta["tokens"]``.
    """
    if tokens not in TOKEN_PROXIES:
        raise ParameterError("tokens", f"must be one of {list(TOKEN_PROXIES)}, got {tokens!r}")
    file = str(path)
    notes: list[str] = []
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    for line, d in iter_jsonl(path, on_error=on_error, notes=notes):
        if not isinstance(d, dict):
            raise InputError(file, line, None, f"each line must be a JSON object, got {type(d).__name__}")
        if "idx" not in d or isinstance(d["idx"], bool) or not isinstance(d["idx"], (int, str)):
            raise InputError(file, line, "idx", "missing or not an integer/string")
        pid = str(d["idx"])
        question = _require(d, "question", str, file, line)
        gold = d.get("gold")
        if gold is not None and not isinstance(gold, (str, int, float)):
            raise InputError(file, line, "gold", f"must be a string or null, got {type(gold).__name__}")
        texts = _require(d, "samples", list, file, line)
        answers = _require(d, "answers", list, file, line)
        correct = d.get("correct")
        n = len(texts)
        if n == 0:
            raise InputError(file, line, "samples", "empty: no samples")
        if len(answers) != n:
            raise InputError(file, line, "answers", f"{len(answers)} answers for {n} samples")
        if correct is not None and (not isinstance(correct, list) or len(correct) != n):
            raise InputError(file, line, "correct", f"must be a list of {n} booleans")
        char_len = d.get("char_len")
        if tokens == "char_len":
            if not isinstance(char_len, list) or len(char_len) != n:
                raise InputError(file, line, "char_len", f"must be a list of {n} integers (tokens='char_len')")
        samples = []
        for j in range(n):
            text = texts[j]
            if not isinstance(text, str):
                raise InputError(file, line, f"samples[{j}]", "must be a string")
            ans = answers[j]
            if ans is not None and not isinstance(ans, str):
                raise InputError(file, line, f"answers[{j}]", f"must be a string or null, got {ans!r}")
            c = None
            if correct is not None:
                c = correct[j]
                if not isinstance(c, bool):
                    raise InputError(file, line, f"correct[{j}]", f"must be true or false, got {c!r}")
            if tokens == "whitespace":
                tk: int | None = len(text.split())
            elif tokens == "char_len":
                tk = _check_tokens(char_len[j], file, line, f"char_len[{j}]")  # type: ignore[index]
            else:
                tk = None
            samples.append(Sample(answer=ans, tokens=tk, text=text if keep_text else None, correct=c))
        if pid in seen:
            raise InputError(file, line, "idx", f"duplicate idx {pid!r} (first on line {seen[pid]})")
        seen[pid] = line
        meta = {"format": "selfconsistency", "tokens": tokens}
        problems.append(
            Problem(id=pid, question=question, gold=None if gold is None else str(gold), samples=samples, meta=meta)
        )
        if progress is not None:
            progress(1)
    if not problems:
        raise InputError(file, None, None, "no problems: the file is empty")
    return Pool(problems=problems, source=file, notes=notes)


# --------------------------------------------------------------------------------------------------
# registry and sniffing
# --------------------------------------------------------------------------------------------------


def _import_native(path: str | os.PathLike, *, on_error: str = "raise", progress: Progress = None) -> Pool:
    """A file already in the pool schema: validated by :func:`optscale.pool.load_pool`."""
    return load_pool(path, on_error=on_error)


IMPORTERS: dict[str, Callable[..., Pool]] = {
    "optscale": import_optscale,
    "search-and-learn": import_search_and_learn,
    "selfconsistency": import_selfconsistency,
    "pool": _import_native,
}


def sniff_format(path: str | os.PathLike) -> str:
    """The format of ``path`` (a key of :data:`IMPORTERS`), from its first character / first record
    (gzip-compressed files are recognised by their magic bytes and sniffed after decompression).

    A JSON list is ``optscale``; a first line with ``completions`` and ``scores`` is ``search-and-learn``,
    with ``idx``, ``samples`` and ``answers`` ``selfconsistency``; a first line whose keys are pool fields
    (``id``, ``question``, ``gold``, ``samples``, ``meta``) including ``id`` or ``samples`` is ``pool`` (so a
    pool line missing one of them is reported by the pool validation, naming the field). Raises
    :class:`InputError` (naming the file and line) when the file cannot be read or the format is not
    recognized."""
    file = str(path)
    head = jsonio.read_head(file, 4096)
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head:
        raise InputError(file, None, None, "empty file")
    if head.startswith(b"["):
        return "optscale"
    records = jsonio.iter_jsonl(file)
    try:
        line, d = next(records)
    finally:
        records.close()
    if isinstance(d, dict):
        keys = set(d)
        if {"completions", "scores"} <= keys:
            return "search-and-learn"
        if {"idx", "samples", "answers"} <= keys:
            return "selfconsistency"
        if keys <= set(PROBLEM_FIELDS) and ("id" in keys or "samples" in keys):
            return "pool"
        shown = ", ".join(sorted(keys)[:12])
    else:
        shown = type(d).__name__
    raise InputError(
        file, line, None,
        f"cannot tell the format from the first record (keys: {shown}); pass the format explicitly "
        f"(one of {', '.join(IMPORTERS)})",
    )


def import_pool(path: str | os.PathLike, fmt: str = "auto", **kwargs) -> Pool:
    """Import ``path`` with the importer of ``fmt`` (``"auto"`` sniffs it, see :func:`sniff_format`);
    ``kwargs`` go to the importer (e.g. ``prompts=``, ``agg=``, ``tokens=``). Options the chosen importer
    does not take raise :class:`ParameterError` rather than being ignored."""
    import inspect

    if fmt == "auto":
        fmt = sniff_format(path)
    if fmt not in IMPORTERS:
        raise ParameterError("format", f"unknown format {fmt!r}; choose one of auto, {', '.join(IMPORTERS)}")
    fn = IMPORTERS[fmt]
    accepted = set(inspect.signature(fn).parameters)
    extra = [k for k in kwargs if k not in accepted]
    if extra:
        raise ParameterError(extra[0], f"not an option of the {fmt!r} importer")
    return fn(path, **kwargs)

