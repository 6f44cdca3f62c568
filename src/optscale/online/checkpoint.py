"""Crash-safe JSON Lines files for the online runner.

Every record is appended as one line with a single ``write`` and then flushed and ``fsync``-ed, so a run
killed at any moment leaves at most its last line torn (cut mid-write). :func:`recover_jsonl` detects
such a torn tail, discards it (truncating the file back to its last complete line, so that appending
resumes cleanly) and reports it; a malformed line anywhere else is corruption and raises
:class:`~optscale.errors.InputError`.

:class:`SampleCheckpoint` is the per-sample log of a run (``<results>.samples.jsonl``): a header line
with the generation configuration, then one line per generated and scored sample, keyed by problem id
and sample index. A resumed run reuses the recorded samples instead of generating them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

from optscale._json import json_default
from optscale.errors import InputError

#: version of the sample checkpoint format
CHECKPOINT_VERSION = 1


def recover_jsonl(path: str | Path, *, truncate: bool = True) -> tuple[list[dict], bool]:
    """Read a JSONL file written by :class:`JsonlAppender`; return (records, torn).

    ``torn`` is True when the last line was incomplete (no final newline, or not valid JSON) and was
    discarded; with ``truncate`` the file is cut back to its last complete line. A missing file gives
    ``([], False)``. Raises :class:`InputError` on a malformed line that is not the last one, or on a
    line that is valid JSON but not an object.
    """
    path = Path(path)
    if not path.exists():
        return [], False
    data = path.read_bytes()
    records: list[dict] = []
    good_end = 0
    torn = False
    pos = 0
    lineno = 0
    while pos < len(data):
        lineno += 1
        nl = data.find(b"\n", pos)
        end = len(data) if nl < 0 else nl + 1
        line = data[pos:end]
        is_last = end >= len(data)
        text = line.strip()
        if text:
            try:
                obj = json.loads(text.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                if is_last:
                    torn = True
                    break
                raise InputError(str(path), lineno, None, f"corrupt line ({exc}); not a torn tail") from None
            if nl < 0:  # valid JSON but the newline never made it: treat as torn (write was cut)
                torn = True
                break
            if not isinstance(obj, dict):
                raise InputError(str(path), lineno, None, "expected a JSON object")
            records.append(obj)
        elif nl < 0:  # trailing whitespace without newline
            torn = True
            break
        good_end = end
        pos = end
    if torn and truncate:
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
            fh.flush()
            os.fsync(fh.fileno())
    return records, torn


class JsonlAppender:
    """Append JSON objects to a file, one line each, flushed and fsynced after every call."""

    def __init__(self, path: str | Path, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "ab")
        self._fsync = fsync

    def append(self, *objs: dict) -> None:
        """Write ``objs`` as lines with a single ``write`` call, then flush and fsync."""
        if not objs:
            return
        buf = b"".join(_line(o) for o in objs)
        self._fh.write(buf)
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _line(obj: dict) -> bytes:
    """One JSON line, UTF-8; a record whose strings hold lone surrogates (e.g. ``"\\ud800"`` from a
    malformed model output), which UTF-8 cannot encode, is written with ``\\u`` escapes instead, so it
    reads back equal."""
    text = json.dumps(obj, ensure_ascii=False, default=json_default)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:
        return json.dumps(obj, ensure_ascii=True, default=json_default).encode("ascii") + b"\n"


def question_fingerprint(question: str) -> str:
    """A short fingerprint of a question (16 hex digits of SHA-256), recorded with every checkpointed
    sample so that a resumed run never reuses samples of another problem that has the same id."""
    return hashlib.sha256(str(question).encode("utf-8", "surrogatepass")).hexdigest()[:16]


class OutputLock:
    """An exclusive, non-blocking ``fcntl.flock`` on a run's output file, held while the run writes it, so
    that two processes never write the same results (the second one gets :class:`InputError`). The lock
    goes away with the process (also when it is killed). No-op where ``fcntl`` does not exist."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "ab")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise InputError(
                str(self.path),
                None,
                None,
                "is being written by another optscale process (it holds the lock); wait until it is done "
                "or choose another output file",
            ) from None
        self._fh = fh

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing the descriptor releases the flock
            self._fh = None


#: fields of a checkpointed sample: name -> (types, may be None)
_SAMPLE_FIELDS = {
    "answer": (str, True),
    "score": ((int, float), True),
    "tokens": (int, False),
    "finish_reason": (str, True),
    "seed": (int, True),
    "text": (str, True),
}


def _check_sample(path: Path, lineno: int, rec: dict) -> tuple[str, int]:
    """(problem id, index) of a checkpointed sample record; InputError naming file, line and field."""
    pid, idx = rec.get("problem"), rec.get("index")
    if not isinstance(pid, str | int) or isinstance(pid, bool):
        raise InputError(str(path), lineno, "problem", f"sample record needs a problem id, got {pid!r}")
    if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
        raise InputError(str(path), lineno, "index", f"sample record needs an index >= 0, got {idx!r}")
    for name, (types, nullable) in _SAMPLE_FIELDS.items():
        if name not in rec:
            raise InputError(str(path), lineno, name, "missing in the sample record")
        v = rec[name]
        if v is None and nullable:
            continue
        if isinstance(v, bool) or not isinstance(v, types):
            raise InputError(str(path), lineno, name, f"has the wrong type: {v!r}")
    if rec["tokens"] < 0:
        raise InputError(str(path), lineno, "tokens", f"must be >= 0, got {rec['tokens']!r}")
    if rec["score"] is not None and not (0.0 <= rec["score"] <= 1.0):
        raise InputError(str(path), lineno, "score", f"must be in [0, 1], got {rec['score']!r}")
    return str(pid), idx


def checkpoint_path(results_path: str | Path) -> Path:
    """Where the per-sample checkpoint of ``results_path`` lives: ``<results_path>.samples.jsonl``."""
    p = Path(results_path)
    return p.with_name(p.name + ".samples.jsonl")


class SampleCheckpoint:
    """Per-sample log of a run; see the module docstring.

    ``config`` (JSON-able dict) describes what determines the samples and results (model, prompt,
    seed, ...). Opening an existing checkpoint whose header differs raises :class:`InputError` naming
    the first differing key, so a resumed run never mixes samples of two configurations.
    """

    def __init__(self, path: str | Path, config: dict, *, resume: bool = True, warn=None):
        self.path = Path(path)
        self.config = json.loads(json.dumps(config, default=json_default))
        self.samples: dict[str, dict[int, dict]] = {}
        self.lines: dict[tuple[str, int], int] = {}  # (problem, index) -> line of a loaded sample
        self.torn = False
        warn = warn or _warn
        if resume and self.path.exists():
            records, self.torn = recover_jsonl(self.path)
            if self.torn:
                warn(f"{self.path}: discarded a torn last line (the previous run was killed mid-write)")
            if records:
                head = records[0]
                if head.get("type") != "header":
                    raise InputError(
                        str(self.path), 1, "type", "not an optscale sample checkpoint (no header)"
                    )
                old = head.get("config", {})
                for key in sorted(set(old) | set(self.config)):
                    if old.get(key) != self.config.get(key):
                        raise InputError(
                            str(self.path),
                            1,
                            key,
                            f"written by a run with {key}={old.get(key)!r}, this run has "
                            f"{key}={self.config.get(key)!r}; use another output file or start over "
                            "(resume=False / --no-resume)",
                        )
                for lineno, rec in enumerate(records[1:], 2):
                    if rec.get("type") != "sample":
                        continue
                    pid, idx = _check_sample(self.path, lineno, rec)
                    # a duplicate (same problem, same index) can only come from identical regeneration;
                    # the first one wins, so the set of samples stays exactly one per index
                    if idx not in self.samples.setdefault(pid, {}):
                        self.samples[pid][idx] = rec
                        self.lines[(pid, idx)] = lineno
                self._out = JsonlAppender(self.path)
                return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "wb") as fh:
            fh.truncate(0)
        self._out = JsonlAppender(self.path)
        self._out.append({"type": "header", "version": CHECKPOINT_VERSION, "config": self.config})

    def recorded(self, problem_id: str) -> dict[int, dict]:
        """Samples recorded for ``problem_id``: {sample index: record}."""
        return self.samples.get(str(problem_id), {})

    def n_recorded(self) -> int:
        return sum(len(v) for v in self.samples.values())

    def add(self, problem_id: str, index: int, sample: dict) -> dict:
        """Record one sample (fsynced before returning) and return the stored record."""
        rec = {"type": "sample", "problem": str(problem_id), "index": int(index), **sample}
        self._out.append(rec)
        self.samples.setdefault(str(problem_id), {})[int(index)] = rec
        return rec

    def close(self) -> None:
        self._out.close()


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)
