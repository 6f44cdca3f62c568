"""Answer extraction, answer equivalence and clustering.

* :func:`extract_answer` pulls the final answer out of a completion: the last ``\\boxed{...}`` (or
  ``\\fbox{...}``, nested braces allowed), else the last ``#### ...`` line (GSM8K style), else the last
  "The (final) answer is ..." phrase.
* Equivalences are functions ``(a, b) -> bool``: :func:`exact_equiv` (normalized strings),
  :func:`number_equiv` (exact rational comparison of numbers), :func:`choice_equiv` (multiple-choice
  letters) and :func:`math_equiv` (symbolic, via the ``math-verify`` package, with a per-call time limit
  that also works outside the main thread). :func:`get_equivalence` maps names to them.
* :func:`cluster_answers` gives each answer a class id (order of first appearance, ``-1`` for none);
  :func:`grade` compares an answer with a gold answer.

``math_verify`` (and through it sympy) is imported lazily, the first time a math comparison is made.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import re
import signal
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np

from optscale.errors import ParameterError

Equivalence = Callable[[str, str], bool]

__all__ = [
    "Equivalence",
    "EQUIVALENCES",
    "extract_answer",
    "normalize_answer",
    "exact_equiv",
    "number_equiv",
    "parse_number",
    "choice_equiv",
    "parse_choice",
    "math_equiv",
    "get_equivalence",
    "cluster_answers",
    "clear_caches",
    "grade",
]

# --------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS_RE = re.compile(r"(?:the\s+)?(?:final\s+)?answer\s+is\s*[:：]?\s*", re.IGNORECASE)
_HASH_RE = re.compile(r"####\s*(.*)")


def _read_braced(text: str, start: int) -> str | None:
    """Content of the brace group opening at ``text[start] == '{'``; None when it never closes."""
    depth = 0
    i = start
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2  # an escaped brace \{ or \} does not count
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i]
        i += 1
    return None


def _last_boxed(text: str) -> str | None:
    found = None
    for m in _BOX_RE.finditer(text):
        j = m.end()
        if j < len(text) and text[j] == "{":
            content = _read_braced(text, j)
            if content is not None:
                found = content
        elif m.group(0).endswith((" ", "\t")) and j < len(text):
            # "\boxed 5": the argument is the next token
            tok = re.match(r"[^\s$]+", text[j:])
            if tok:
                found = tok.group(0)
    return found


_WRAPPER_RE = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|textrm|mbox)\s*\{(.*)\}$", re.DOTALL)


def _clean(ans: str) -> str:
    """Strip whitespace, enclosing ``$``/``\\(\\)``, a trailing period and a whole-string ``\\text{}``."""
    s = ans.strip()
    for _ in range(4):
        before = s
        s = s.strip()
        s = re.sub(r"[.。]+$", "", s).strip()
        if len(s) >= 2 and s.startswith("$") and s.endswith("$"):
            s = s.strip("$")
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        m = _WRAPPER_RE.match(s)
        if m and _read_braced(s, s.index("{")) == m.group(1):
            s = m.group(1)
        if s == before:
            break
    return s.strip()


def extract_answer(text: str | None) -> str | None:
    """The final answer stated in ``text``, or None when there is none.

    Looks, in order, for the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces allowed), the last
    ``#### ...`` line, and the last "The answer is ..." phrase (up to the end of that line, or up to a
    sentence-ending period). The result is stripped of whitespace, a trailing period, enclosing ``$``
    signs and a ``\\text{...}`` wrapper around the whole answer. An empty answer gives None.
    """
    if not text:
        return None
    ans = _last_boxed(text)
    if ans is None:
        hashes = _HASH_RE.findall(text)
        if hashes:
            ans = hashes[-1]
    if ans is None:
        matches = list(_ANSWER_IS_RE.finditer(text))
        if matches:
            rest = text[matches[-1].end() :]
            rest = rest.split("\n", 1)[0]
            # a period followed by a space (or the end) ends the sentence; "3.5" is kept whole
            rest = re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]
            ans = rest
    if ans is None:
        return None
    ans = _clean(ans)
    return ans or None


# --------------------------------------------------------------------------------------------------
# exact / number / choice equivalence
# --------------------------------------------------------------------------------------------------

_LATEX_NOISE = (
    ("\\left", ""),
    ("\\right", ""),
    ("\\!", ""),
    ("\\,", ""),
    ("\\;", ""),
    ("\\ ", ""),
    ("\\:", ""),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("^\\circ", ""),
    ("^{\\circ}", ""),
)


def normalize_answer(ans: str | None) -> str | None:
    """The normalized form used by :func:`exact_equiv`: cleaned as by :func:`extract_answer`, spacing
    and LaTeX spacing/sizing commands removed (``\\left``, ``\\!``, ``\\dfrac`` -> ``\\frac``, ...).
    Case is kept. None or an empty string gives None. (A pure function of the string: the forms of
    recent strings are cached, since clustering normalizes each answer once per comparison.)"""
    if ans is None:
        return None
    return _normalize_str(ans) if type(ans) is str else _normalize_str.__wrapped__(str(ans))


@functools.lru_cache(maxsize=8192)
def _normalize_str(ans: str) -> str | None:
    s = _clean(ans)
    for a, b in _LATEX_NOISE:
        s = s.replace(a, b)
    s = re.sub(r"\s+", "", s)
    return s or None


def exact_equiv(a: str | None, b: str | None) -> bool:
    """Normalized string equality (see :func:`normalize_answer`); None/empty is never equivalent."""
    na, nb = normalize_answer(a), normalize_answer(b)
    return na is not None and na == nb


_THOUSANDS_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?$")
_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$")
_FRAC_RE = re.compile(r"^([+-]?)\\frac\{([+-]?\d+)\}\{([+-]?\d+)\}$")
_SLASH_RE = re.compile(r"^([+-]?\d+)/(\d+)$")


def parse_number(ans: str | None) -> Fraction | None:
    """``ans`` as an exact rational number, or None when it is not a plain number.

    Accepted: integers and decimals (``43``, ``43.0``, ``-.5``, ``1e3``), thousands separators
    (``43,000`` only when every group after the first has 3 digits: ``1,2`` is not a number), a leading
    ``$`` or ``\\$`` and trailing ``%`` or ``\\%`` (the number itself is kept: ``50%`` -> 50), simple
    fractions ``3/4`` and ``\\frac{3}{4}``.
    """
    if ans is None:
        return None
    s = _clean(str(ans)).replace(" ", "").replace("{,}", ",")
    s = re.sub(r"^\\?\$", "", s)
    s = re.sub(r"\\?%$", "", s)
    if not s:
        return None
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    if _NUMBER_RE.match(s):
        try:
            return Fraction(s)
        except (ValueError, ZeroDivisionError):  # pragma: no cover - the regex excludes these
            return None
    m = _FRAC_RE.match(s) or _SLASH_RE.match(s)
    if m:
        groups = m.groups()
        sign = -1 if (len(groups) == 3 and groups[0] == "-") else 1
        num, den = int(groups[-2]), int(groups[-1])
        if den == 0:
            return None
        return sign * Fraction(num, den)
    return None


def number_equiv(a: str | None, b: str | None) -> bool:
    """Numeric equality (``"43" == "43.0" == "43,000"/1000``... exactly, as rationals) when both are
    plain numbers (see :func:`parse_number`); otherwise normalized string equality."""
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return na == nb
    return exact_equiv(a, b)


_CHOICE_RE = re.compile(
    r"^(?:\\text\{)?(?:option|choice|answer)?\s*[:]?\s*[(\[{]?\s*([A-Ja-j])\s*[)\]}]?\s*[.:)]?\s*\}?$",
    re.IGNORECASE,
)


def parse_choice(ans: str | None) -> str | None:
    """The multiple-choice letter (lower case) of ``ans`` (``"(B)"``, ``"b"``, ``"B."``, ``"option c"``),
    or None when ``ans`` is not just a choice letter (A-J)."""
    if ans is None:
        return None
    s = _clean(str(ans))
    m = _CHOICE_RE.match(s)
    return m.group(1).lower() if m else None


def choice_equiv(a: str | None, b: str | None) -> bool:
    """Same choice letter (case and brackets ignored) when both are choice letters; otherwise
    normalized string equality."""
    ca, cb = parse_choice(a), parse_choice(b)
    if ca is not None and cb is not None:
        return ca == cb
    return exact_equiv(a, b)


# --------------------------------------------------------------------------------------------------
# math equivalence (math-verify) with a time limit that works from any thread
# --------------------------------------------------------------------------------------------------


class _TimeLimit(BaseException):
    """Raised inside a guarded call when its time limit expires (main thread only). A BaseException,
    so that the ``except Exception`` handlers inside math-verify and sympy do not swallow it."""


_UNSET = object()


def _call_with_limit(fn: Callable[[], object], limit: float | None):
    """Run ``fn()`` for at most ``limit`` seconds; return its result, or ``_UNSET`` on time-out.

    In the main thread (with no interval timer already running) a ``SIGALRM`` interval timer interrupts
    the call. In any other thread signals cannot be used: the call runs in a daemon helper thread and
    is abandoned (left to finish in the background, its result discarded) when the limit expires.
    Exceptions raised by ``fn`` propagate.
    """
    if limit is None or math.isinf(limit):
        return fn()
    if limit <= 0:
        return _UNSET
    in_main = threading.current_thread() is threading.main_thread()
    if in_main and hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0:

        def handler(signum, frame):
            raise _TimeLimit()

        old = signal.signal(signal.SIGALRM, handler)
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                return fn()
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _TimeLimit:
            return _UNSET
        finally:
            signal.signal(signal.SIGALRM, old)
    box: dict[str, object] = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            box["error"] = exc

    t = threading.Thread(target=target, name="optscale-math-verify", daemon=True)
    t.start()
    t.join(limit)
    if t.is_alive():
        return _UNSET
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]


class _QuietTimeoutWarning(logging.Filter):
    """math-verify logs a warning when its own (signal-based) timeout is disabled; we enforce ours."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


_mv_lock = threading.Lock()
_mv_ready = False
# parse cache: normalized answer -> (parsed list | None (unparsable), time limit it timed out under | None)
_PARSE_CACHE: dict[str, tuple[object, float | None]] = {}
_PARSE_CACHE_MAX = 50_000


def _math_verify():
    global _mv_ready
    import math_verify

    if not _mv_ready:
        with _mv_lock:
            if not _mv_ready:
                for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
                    logging.getLogger(name).addFilter(_QuietTimeoutWarning())
                _mv_ready = True
    return math_verify


_WORD_RE = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{3,}")


def _probe_value(name: str, k: int) -> float:
    """Value given to the symbol ``name`` at probe point ``k`` (a fixed function of the name, in [0.5, 2))."""
    h = zlib.crc32(f"{k}:{name}".encode())
    return 0.5 + 1.5 * (h % 100_003) / 100_003


def _fingerprint(expr, text: str):
    """A cheap numeric signature of a parsed answer, used to rule out equivalence without sympy's
    (slow) symbolic comparison; None when the answer has no safe signature.

    ``("seq", values)`` for a number, an expression, a tuple or an interval (ordered elements),
    ``("set", values)`` for a finite set; each element is represented by its values at two probe
    points, where every symbol takes a fixed value derived from its name. Equivalent expressions have
    equal values at every point, so different values prove non-equivalence. Percentages, equations
    and words (math-verify compares text answers as strings) get None. Answers containing an
    unevaluated sum, product, integral, limit or derivative get ``("opaque",)``: they are equivalent
    only to normalized-equal strings (sympy takes seconds per comparison on them and rarely proves
    anything)."""
    import sympy

    if "%" in text or _WORD_RE.search(text):
        return None
    if not isinstance(expr, sympy.Basic) or isinstance(expr, sympy.Symbol):
        return None
    if expr.has(sympy.Sum, sympy.Product, sympy.Integral, sympy.Limit, sympy.Derivative):
        return ("opaque",)  # unevaluated: comparing it symbolically is slow and rarely succeeds

    def vals(e):
        if not isinstance(e, sympy.Expr):
            raise ValueError("not an expression")
        out = []
        for k in range(2):
            sub = {x: _probe_value(x.name, k) for x in e.free_symbols}
            v = complex(sympy.N(e.subs(sub) if sub else e, 15))
            if not (math.isfinite(v.real) and math.isfinite(v.imag)):
                raise ValueError("not finite")
            out.append(v)
        return tuple(out)

    try:
        if isinstance(expr, sympy.Expr):
            return ("seq", (vals(expr),))
        if isinstance(expr, sympy.Tuple):
            return ("seq", tuple(vals(e) for e in expr))
        if isinstance(expr, sympy.Interval):
            return ("seq", (vals(expr.start), vals(expr.end)))
        if isinstance(expr, sympy.FiniteSet):
            key = lambda v: (round(v[0].real, 9), round(v[0].imag, 9))  # noqa: E731
            return ("set", tuple(sorted((vals(e) for e in expr), key=key)))
    except Exception:  # evaluation failed (non-finite, unevaluable): no signature
        return None
    return None


def _close(u: complex, v: complex) -> bool:
    return abs(u - v) <= 1e-6 * max(1.0, abs(u), abs(v))


def _surely_different(fa, fb) -> bool:
    """True when two fingerprints prove the answers differ (same kind and shape, different values)."""
    if (fa is not None and fa[0] == "opaque") or (fb is not None and fb[0] == "opaque"):
        return True
    if fa is None or fb is None or fa[0] != fb[0]:
        return False  # e.g. a tuple against a set: left to math-verify
    va, vb = fa[1], fb[1]
    if len(va) != len(vb):
        return False
    return not all(_close(u, v) for pa, pb in zip(va, vb, strict=True) for u, v in zip(pa, pb, strict=True))


def _parse_math(ans: str, limit: float | None):
    """``(parsed, fingerprint)`` of ``ans``: parsed is math-verify's list, None when unparsable;
    ``_UNSET`` on time-out.

    Results are cached (time-outs too, with their limit; a later call with a larger limit tries
    again)."""
    key = ans
    hit = _PARSE_CACHE.get(key)
    if hit is not None:
        value, timed_out_at = hit
        if timed_out_at is None:
            return value
        if limit is not None and limit <= timed_out_at:
            return _UNSET
    mv = _math_verify()

    def work():
        try:
            parsed = mv.parse("\\boxed{" + ans + "}", parsing_timeout=None, raise_on_error=False) or None
        except Exception:  # math-verify raised despite raise_on_error=False: unparsable
            parsed = None
        if parsed is None:
            return (None, None)
        return (parsed, _fingerprint(parsed[0], ans))

    value = _call_with_limit(work, limit)
    if len(_PARSE_CACHE) >= _PARSE_CACHE_MAX:
        _PARSE_CACHE.clear()
    if value is _UNSET:
        _PARSE_CACHE[key] = (None, math.inf if limit is None else limit)
        return _UNSET
    _PARSE_CACHE[key] = (value, None)
    return value


# verify cache: (answer a, answer b) -> (result, None) or (None, time limit it timed out under)
_VERIFY_CACHE: dict[tuple[str, str], tuple[bool | None, float | None]] = {}


def _math_compare(a: str | None, b: str | None, timeout: float | None = 5.0) -> bool | None:
    """:func:`math_equiv`, but None (instead of False) when the time limit was hit."""
    na, nb = normalize_answer(a), normalize_answer(b)
    if na is None or nb is None:
        return False
    if na == nb:
        return True
    if timeout is not None and timeout <= 0:
        raise ParameterError("timeout", f"must be positive or None, got {timeout!r}")
    key = (na, nb)
    hit = _VERIFY_CACHE.get(key)
    if hit is not None:
        value, timed_out_at = hit
        if timed_out_at is None:
            return value
        if timeout is not None and timeout <= timed_out_at:
            return None
    deadline = None if timeout is None else time.monotonic() + timeout

    def remaining():
        return None if deadline is None else deadline - time.monotonic()

    ra = _parse_math(_clean(str(a)), remaining())
    if ra is _UNSET:
        return None
    rb = _parse_math(_clean(str(b)), remaining())
    if rb is _UNSET:
        return None
    (pa, fa), (pb, fb) = ra, rb  # type: ignore[misc]
    if pa is None or pb is None or _surely_different(fa, fb):
        # as certain as a verify result: remembered, so that clustering (which compares every new answer
        # with each class representative) does not redo the parse lookups and fingerprints
        if len(_VERIFY_CACHE) >= _PARSE_CACHE_MAX:
            _VERIFY_CACHE.clear()
        _VERIFY_CACHE[key] = (False, None)
        return False
    mv = _math_verify()

    def work():
        try:
            return bool(mv.verify(pa, pb, timeout_seconds=None, raise_on_error=False))
        except Exception:
            return False

    result = _call_with_limit(work, remaining())
    if len(_VERIFY_CACHE) >= _PARSE_CACHE_MAX:
        _VERIFY_CACHE.clear()
    if result is _UNSET:
        _VERIFY_CACHE[key] = (None, math.inf if timeout is None else timeout)
        return None
    _VERIFY_CACHE[key] = (bool(result), None)
    return bool(result)


def math_equiv(a: str | None, b: str | None, timeout: float | None = 5.0) -> bool:
    """Mathematical equivalence of two answers, via ``math_verify.parse`` + ``math_verify.verify``
    (``a`` plays the gold answer: math-verify is not always symmetric).

    Normalized-equal strings are equivalent without parsing; answers either of which cannot be parsed
    are not equivalent (exact equality having been checked). Answers whose numeric signatures differ
    (two different numbers, tuples of numbers, or expressions in the same symbols that differ at probe
    points) are not equivalent without calling sympy's slow symbolic comparison. ``timeout`` (seconds,
    None = no limit) bounds the whole call: a call that exceeds it returns False instead of hanging.
    Safe to call from worker threads (see :func:`_call_with_limit`). Parses and results are cached
    across calls (a time-out is remembered with its limit: the same pair is retried only with a
    larger limit).
    """
    return bool(_math_compare(a, b, timeout))


EQUIVALENCES: dict[str, Equivalence] = {
    "exact": exact_equiv,
    "number": number_equiv,
    "choice": choice_equiv,
    "math": math_equiv,
}


def get_equivalence(name: str | Equivalence) -> Equivalence:
    """The equivalence called ``name`` (``"exact"``, ``"math"``, ``"number"``, ``"choice"``); a callable
    is returned unchanged."""
    if callable(name):
        return name
    try:
        return EQUIVALENCES[name]
    except KeyError:
        raise ParameterError("equiv", f"unknown equivalence {name!r}; choose one of {sorted(EQUIVALENCES)}") from None


# --------------------------------------------------------------------------------------------------
# clustering and grading
# --------------------------------------------------------------------------------------------------


class _RepIndex:
    """Representatives of the math clustering, indexed by the numeric fingerprint of their parse (the cheap
    canonical form of :func:`_fingerprint`), so that a newcomer is compared only with the representatives
    that :func:`_surely_different` would not reject anyway.

    Representatives with a ``("seq" | "set", values)`` fingerprint are grouped by (kind, number of
    elements) and sorted by the real part of their first value: two answers can only be "close" (equal
    fingerprints) if these lie within the relative tolerance of :func:`_close`, a window found by bisection.
    Representatives without a usable fingerprint (unparsable, parse time-out, words, percentages) are
    candidates for everyone; ``("opaque",)`` ones for no one. The candidates are visited in class order,
    so the first equivalent class and every time-out happen exactly as in the all-pairs loop."""

    _REL = 1.01e-6   # >= 1e-6 / (1 - 1e-6): the window of _close's relative tolerance, on the larger magnitude

    def __init__(self) -> None:
        self.always: list[int] = []
        self.groups: dict[tuple[str, int], tuple[list[float], list[int]]] = {}
        self.count = 0

    @staticmethod
    def _key(fp) -> tuple[tuple[str, int], complex] | None:
        if fp is None or fp[0] not in ("seq", "set") or not fp[1]:
            return None
        return (fp[0], len(fp[1])), fp[1][0][0]

    def add(self, c: int, parsed) -> None:
        """Class ``c`` (= number of classes so far) with the parse of its representative (or _UNSET)."""
        self.count = c + 1
        fp = None if parsed is _UNSET or parsed[0] is None else parsed[1]
        if fp is not None and fp[0] == "opaque":
            return
        key = self._key(fp)
        if key is None:
            self.always.append(c)
            return
        keys, ids = self.groups.setdefault(key[0], ([], []))
        i = bisect.bisect_right(keys, key[1].real)
        keys.insert(i, key[1].real)
        ids.insert(i, c)

    def candidates(self, parsed) -> list[int] | None:
        """Classes whose representative may be equivalent to an answer with this parse, in class order;
        None: no pruning possible (compare with every class)."""
        if parsed is _UNSET or parsed[0] is None or parsed[1] is None:
            return None
        fp = parsed[1]
        if fp[0] == "opaque":   # surely different from every parsed representative
            return list(self.always)
        key = self._key(fp)
        if key is None:
            return None
        out = list(self.always)
        for group, (keys, ids) in self.groups.items():
            if group != key[0]:   # another kind or shape is never surely different: math-verify decides
                out += ids
                continue
            u = key[1]
            w = self._REL * max(1.0, abs(u)) + 1e-300
            lo = bisect.bisect_left(keys, u.real - w)
            hi = bisect.bisect_right(keys, u.real + w)
            out += ids[lo:hi]
        out.sort()
        return out


_PLAIN_NUMBER_RE = re.compile(r"^[+-]?\d+(?:\.\d+)?$")


def _cheap_parse(ans: str, timeout: float | None):
    """``(parsed, fingerprint)`` as :func:`_parse_math` gives it, but for a plain integer or decimal the
    fingerprint alone, from ``float`` without math-verify (``parsed`` is then True): its value is what sympy
    evaluates the parse to, up to rounding far inside the tolerance of :func:`_close`. Likewise
    ``\\frac{a}{b}`` and ``a/b`` with integers a, b != 0."""
    text = _clean(ans).strip()
    v = None
    if _PLAIN_NUMBER_RE.match(text):
        v = float(text)
    else:
        m = _FRAC_RE.match(text)
        if m:
            num, den = int(m.group(2)), int(m.group(3))
            v = (-1.0 if m.group(1) == "-" else 1.0) * num / den if den else None
        else:
            m = _SLASH_RE.match(text)
            if m and int(m.group(2)):
                v = int(m.group(1)) / int(m.group(2))
    if v is not None and math.isfinite(v):
        return (True, ("seq", ((complex(v), complex(v)),)))
    return _parse_math(_clean(ans), timeout)


def cluster_answers(
    answers: Sequence[str | None], equiv: str | Equivalence = "exact", *, timeout: float | None = 5.0
) -> np.ndarray:
    """Answer class id of each answer: ids 0, 1, ... in order of first appearance, -1 for None/empty.

    An answer joins the first existing class whose first member (its representative) is equivalent
    to it. Normalized-equal answers share a class without calling ``equiv`` (fast path), and each
    distinct normalized answer is compared with each representative at most once, so clustering
    many copies of few distinct answers costs few comparisons.

    With the math equivalence, each new answer gets a cheap canonical form, its numeric fingerprint (for a
    plain integer or decimal straight from ``float``, otherwise from one math-verify parse), and is
    compared only with the representatives that fingerprint cannot rule out (:class:`_RepIndex`: a
    bisection among numbers, tuples, sets of the same shape), instead of with every class: D distinct
    numbers cost about D comparisons, not D²/2, and math-verify runs only on the few candidates that could
    match (benchmarks/bench_answers.py). The classes are the same as with the all-pairs
    loop. ``timeout`` bounds each comparison, and answers that hit it are compared no further, so a
    pathological answer costs about one time-out, not one per class: a newcomer whose comparison timed
    out starts its own class and is not used as a representative; a representative involved in two
    time-outs is skipped from then on. (A time-out is thus not an equivalence: such answers may end up in
    separate classes.)
    """
    eq = get_equivalence(equiv)
    is_math = eq is math_equiv
    if is_math and timeout is not None and timeout <= 0:
        raise ParameterError("timeout", f"must be positive or None, got {timeout!r}")
    ids = np.full(len(answers), -1, dtype=np.int64)
    by_norm: dict[str, int] = {}
    reps: list[str] = []  # representative (raw answer) of each class
    index = _RepIndex()
    timeouts: dict[int, int] = {}  # class -> time-outs its representative was involved in
    skip: set[int] = set()  # classes not used as representatives any more
    for i, ans in enumerate(answers):
        if ans is not None and not isinstance(ans, str):
            raise ParameterError("answers", f"answer {i} is {type(ans).__name__}, expected str or None")
        norm = normalize_answer(ans)
        if norm is None:
            continue
        cid = by_norm.get(norm)
        if cid is None:
            cid = -1
            slow = False
            parsed = _cheap_parse(str(ans), timeout) if is_math else None
            order = index.candidates(parsed) if is_math else None
            for c in range(len(reps)) if order is None else order:
                if c in skip:
                    continue
                rep = reps[c]
                r = _math_compare(rep, ans, timeout) if is_math else eq(rep, ans)  # type: ignore[arg-type]
                if r is None:  # math time-out
                    timeouts[c] = timeouts.get(c, 0) + 1
                    if timeouts[c] >= 2:
                        skip.add(c)
                    slow = True
                    break
                if r:
                    cid = c
                    break
            if cid < 0:
                cid = len(reps)
                reps.append(ans)  # type: ignore[arg-type]
                if is_math:
                    index.add(cid, parsed)
                if slow:
                    skip.add(cid)
            by_norm[norm] = cid
        ids[i] = cid
    return ids


def clear_caches() -> None:
    """Forget the cached math-verify parses and comparisons and the cached normalized forms (they persist
    across calls otherwise)."""
    _PARSE_CACHE.clear()
    _VERIFY_CACHE.clear()
    _normalize_str.cache_clear()


GRADE_KINDS = ("auto", "math", "number", "choice", "exact")


def grade(answer: str | None, gold: str | None, kind: str = "auto", timeout: float | None = 5.0) -> bool | None:
    """Whether ``answer`` matches ``gold``: None when there is no gold answer, False when there is no
    answer.

    ``kind``: ``"exact"``, ``"number"``, ``"choice"``, ``"math"`` (math-verify, time limit ``timeout``)
    or ``"auto"``: choice letters when the gold is a choice letter, numbers when both are plain numbers,
    else math.
    """
    if kind not in GRADE_KINDS:
        raise ParameterError("kind", f"unknown grading kind {kind!r}; choose one of {list(GRADE_KINDS)}")
    if gold is None or normalize_answer(gold) is None:
        return None
    if answer is None or normalize_answer(answer) is None:
        return False
    if kind == "exact":
        return exact_equiv(answer, gold)
    if kind == "number":
        return number_equiv(answer, gold)
    if kind == "choice":
        return choice_equiv(answer, gold)
    if kind == "math":
        return math_equiv(gold, answer, timeout=timeout)
    # auto
    if parse_choice(gold) is not None and len(normalize_answer(gold) or "") <= 3:
        return choice_equiv(answer, gold)
    ng, na = parse_number(gold), parse_number(answer)
    if ng is not None and na is not None:
        return ng == na
    return math_equiv(gold, answer, timeout=timeout)
