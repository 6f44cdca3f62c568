"""The one reader (and writer) of JSON and JSON Lines files: pools, importers' sources, problem files,
labels, priors, checkpoints.

Every input file of optscale goes through this module, so every reader gives the same answer to bad
input: one :class:`JsonError` (an :class:`~optscale.errors.InputError`) naming the file, the line and,
where it can, the field, never a traceback. What it checks:

* **gzip** is recognised by its magic bytes (``1f 8b``), not by the file name, and decompressed while
  reading; truncated or corrupt gzip data is an error naming the line reached.
* **text**: the file must be UTF-8 (a UTF-8 byte-order mark is skipped); NUL bytes (a binary file),
  UTF-16 and invalid UTF-8 are errors naming the line. A directory, a missing or unreadable file is
  one line too.
* **JSON**: syntax errors name the line (and column); ``NaN``/``Infinity`` are rejected;
  nesting deeper than :data:`MAX_DEPTH` levels is rejected (instead of a ``RecursionError``); an
  integer with more than :data:`MAX_INT_DIGITS` digits or a float literal beyond the float range
  (``1e400``) is rejected (instead of an ``OverflowError`` wherever it is used, or Python's int/str
  conversion limit).
* **lone surrogates**: a string escape ``"\\ud800"`` that is not half of a surrogate pair is not
  Unicode text; it is *rejected* (with the field that holds it) rather than replaced, because it cannot
  be written back as UTF-8 and nothing should be silently altered. Encoded surrogate bytes are
  invalid UTF-8 and are rejected by the decoder.

The checks beyond the C parser cost nothing on ordinary lines: the parsed object is walked only when
the raw text contains a ``\\ud`` escape, a run of 309+ digits, a 3-digit exponent, or more than
:data:`MAX_DEPTH` brackets.

Readers: :func:`iter_jsonl` (streaming JSON Lines, optional skipping of a truncated last line),
:func:`read_json` (one JSON document), :func:`read_records` (a JSON list, an object wrapping a list,
or JSON Lines, sniffed from the content), :func:`read_text` (any UTF-8 text file, e.g. a prompt
template), :func:`parse_line` (one line of bytes, for crash-recovery readers such as
``online.checkpoint.recover_jsonl``).

Writers: :func:`check_output` validates an output path *before* any work (its parent directory
exists, it is not a directory, optionally that it does not exist yet) and :func:`atomic_write` writes
through a temporary file in the same directory that is renamed into place (``os.replace``) only when
complete, and removed on failure, so a failed write leaves neither a partial file nor a temporary one.
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import io
import json
import os
import re
import tempfile
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from optscale.errors import InputError, ParameterError

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "JsonError",
    "atomic_write",
    "check_output",
    "iter_jsonl",
    "loads",
    "open_binary",
    "parse_line",
    "read_bytes",
    "read_head",
    "read_json",
    "read_records",
    "read_text",
]

#: deepest nesting of lists/objects accepted (real files nest 4-6 levels; the C parser and every writer
#: would hit Python's recursion limit around 1000)
MAX_DEPTH = 100
#: most digits of a JSON integer literal: 10^308 is the largest power of ten a float holds, so a longer
#: integer overflows any float conversion (scores, tokens, arrays)
MAX_INT_DIGITS = 308
#: keys under which a JSON object may wrap its list of records (see :func:`read_records`)
LIST_KEYS = ("problems", "data", "items", "examples", "questions", "rows")

GZIP_MAGIC = b"\x1f\x8b"
ON_ERROR = ("raise", "skip-truncated-last")

# raw-text triggers of the (slower) checked parse; ordinary lines match none of them
_SUSPECT = re.compile(r"\\u[dD]|\d{309}|[eE][-+]?\d{3}")
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


class JsonError(InputError):
    """A JSON / JSON Lines input that cannot be read. ``kind`` says why: ``"file"`` (missing, a
    directory, unreadable), ``"gzip"`` (corrupt or truncated compressed data), ``"encoding"`` (not UTF-8
    text: binary, UTF-16, invalid bytes), ``"syntax"`` (invalid JSON), ``"value"`` (valid syntax but
    unusable: NaN/Infinity, too deep, an over-long integer, a lone surrogate), ``"empty"``."""

    def __init__(self, file, line, field, message, kind: str = "syntax"):
        self.kind, self.reason = kind, message
        super().__init__(file, line, field, message)


# --------------------------------------------------------------------------------------------------
# opening files
# --------------------------------------------------------------------------------------------------


def _file_error(file: str, exc: OSError) -> JsonError:
    if isinstance(exc, FileNotFoundError):
        return JsonError(file, None, None, "no such file (not found)", "file")
    if isinstance(exc, IsADirectoryError):
        return JsonError(file, None, None, "is a directory, not a file", "file")
    if isinstance(exc, PermissionError):
        return JsonError(file, None, None, "permission denied", "file")
    return JsonError(file, None, None, f"cannot read: {exc.strerror or exc}", "file")


@contextlib.contextmanager
def open_binary(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """The content of ``path`` as a binary stream, gunzipped when it starts with the gzip magic bytes.

    A missing file, a directory or an unreadable file raises :class:`JsonError` (kind ``"file"``)."""
    file = str(path)
    try:
        if os.path.isdir(file):
            raise IsADirectoryError(file)
        fh = open(file, "rb")
    except OSError as exc:
        raise _file_error(file, exc) from None
    with fh:
        try:
            magic = fh.peek(2)[:2]
        except OSError as exc:  # e.g. EISDIR on some platforms
            raise _file_error(file, exc) from None
        if magic == GZIP_MAGIC:
            with gzip.GzipFile(fileobj=fh, mode="rb") as gz:
                yield gz
        else:
            yield fh


def _gzip_error(file: str, line: int | None, exc: BaseException) -> JsonError:
    if isinstance(exc, EOFError):
        msg = "truncated gzip file: the compressed stream ends early (the file was cut off)"
    else:
        msg = f"corrupt gzip data ({exc})"
    return JsonError(file, line, None, msg, "gzip")


def read_bytes(path: str | os.PathLike) -> bytes:
    """All bytes of ``path`` (decompressed when gzip); errors as :func:`open_binary`."""
    file = str(path)
    with open_binary(path) as fh:
        try:
            return fh.read()
        except _GZIP_ERRORS as exc:
            raise _gzip_error(file, None, exc) from None
        except OSError as exc:
            raise _file_error(file, exc) from None


def read_head(path: str | os.PathLike, size: int = 4096) -> bytes:
    """The first ``size`` bytes of ``path`` (decompressed when gzip), for format sniffing."""
    file = str(path)
    with open_binary(path) as fh:
        try:
            return fh.read(size)
        except _GZIP_ERRORS as exc:
            raise _gzip_error(file, 1, exc) from None
        except OSError as exc:
            raise _file_error(file, exc) from None


def _decode(raw: bytes, file: str | None, line: int | None, *, first: bool = False) -> str:
    """UTF-8 text of ``raw`` (one line, or a whole file when ``line`` is None) with errors naming the
    line; a UTF-8 BOM at the start of the file is dropped."""
    if first and raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise JsonError(file, line or 1, None, "UTF-16 text; save the file as UTF-8", "encoding")
    nul = raw.find(b"\x00")
    if nul >= 0:
        where = line if line is not None else raw.count(b"\n", 0, nul) + 1
        raise JsonError(file, where, None, f"binary data (a NUL byte at byte {nul}), not JSON text", "encoding")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = line if line is not None else raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start:exc.start + 1].hex()
        raise JsonError(file, where, None, f"not UTF-8 text (byte 0x{bad}: {exc.reason})", "encoding") from None
    if first and text.startswith("\ufeff"):
        text = text[1:]
    return text


def read_text(path: str | os.PathLike) -> str:
    """The UTF-8 text of ``path`` (gzip by magic bytes; BOM dropped). Binary, UTF-16 or invalid UTF-8
    content, a directory or a missing file raise :class:`JsonError` naming the file (and line)."""
    return _decode(read_bytes(path), str(path), None, first=True)


# --------------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------------


class _Bad:
    """A number the checked parse refused; the walk reports it with its field."""

    __slots__ = ("why",)

    def __init__(self, why: str):
        self.why = why


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON (use null, or a finite number)")


def _checked_int(s: str):
    digits = len(s) - (s[0] == "-")
    if digits > MAX_INT_DIGITS:
        return _Bad(f"an integer with {digits} digits is out of range (at most {MAX_INT_DIGITS})")
    return int(s)


def _checked_float(s: str):
    x = float(s)
    if x in (float("inf"), float("-inf")):
        return _Bad(f"the number {s[:40]}{'...' if len(s) > 40 else ''} is beyond the range of a float")
    return x


def _fmt_path(path: tuple) -> str | None:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def _has_surrogate(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _walk(obj: Any, file, line, base: tuple, surrogates: bool) -> None:
    """Depth, refused numbers and (when ``surrogates``) lone surrogates, iteratively (no recursion)."""
    stack: list[tuple[Any, tuple, int]] = [(obj, base, 0)]
    while stack:
        o, path, depth = stack.pop()
        if isinstance(o, _Bad):
            raise JsonError(file, line, _fmt_path(path), o.why, "value")
        if isinstance(o, str):
            if surrogates and _has_surrogate(o):
                raise JsonError(file, line, _fmt_path(path),
                                "a lone surrogate escape (\\ud800-\\udfff without its pair) is not Unicode "
                                "text", "value")
            continue
        if isinstance(o, (dict, list)):
            if depth >= MAX_DEPTH:
                raise JsonError(file, line, _fmt_path(path), f"nested more than {MAX_DEPTH} levels deep", "value")
            if isinstance(o, dict):
                for k, v in o.items():
                    if surrogates and _has_surrogate(k):
                        raise JsonError(file, line, _fmt_path(path + (k.encode("utf-8", "replace").decode(),)),
                                        "a lone surrogate escape in a key is not Unicode text", "value")
                    stack.append((v, path + (k,), depth + 1))
            else:
                stack.extend((v, path + (i,), depth + 1) for i, v in enumerate(o))


def loads(text: str, file: str | None = None, line: int | None = None, *, field: str | None = None) -> Any:
    """Parse one JSON text with every check of this module; :class:`JsonError` names ``file``, ``line``
    (the line of a syntax error inside a multi-line document when ``line`` is None) and the field
    (prefixed with ``field`` when given)."""
    base = (field,) if field else ()
    suspect = _SUSPECT.search(text) is not None
    deep = text.count("[") + text.count("{") > MAX_DEPTH
    try:
        if suspect:
            obj = json.loads(text, parse_constant=_reject_constant, parse_int=_checked_int,
                             parse_float=_checked_float)
        else:
            obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        where = line if line is not None else exc.lineno
        raise JsonError(file, where, field, f"invalid JSON: {exc.msg} (column {exc.colno})", "syntax") from None
    except RecursionError:
        raise JsonError(file, line, field, f"nested more than {MAX_DEPTH} levels deep", "value") from None
    except ValueError as exc:  # NaN / Infinity, or Python's int/str conversion limit
        raise JsonError(file, line, field, f"invalid JSON value: {exc}", "value") from None
    if suspect or deep:
        _walk(obj, file, line, base, surrogates=suspect)
    return obj


def parse_line(raw: bytes | str, file: str | None = None, line: int | None = None) -> Any:
    """One line of a JSON Lines file (bytes are decoded as UTF-8) with every check of :func:`loads`.

    For crash-recovery readers: :class:`JsonError` ``kind`` is ``"encoding"`` or ``"syntax"`` for a
    line that may have been cut mid-write (a torn tail when it is the last line), ``"value"`` for a
    complete line with unusable content."""
    text = _decode(raw, file, line) if isinstance(raw, bytes) else raw
    return loads(text, file, line)


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------


def iter_jsonl(path: str | os.PathLike, on_error: str = "raise",
               notes: list[str] | None = None) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, parsed object)`` for each non-blank line of a JSON Lines file (gzip too),
    streaming (one line in memory at a time).

    A line that is not valid JSON raises :class:`JsonError` naming the file and line; when it is the last
    line and the file does not end with a newline, the message says the file is truncated. With
    ``on_error="skip-truncated-last"`` such a truncated last line is skipped instead, with a warning and
    a note appended to ``notes``; any other invalid line still raises.
    """
    if on_error not in ON_ERROR:
        raise ParameterError("on_error", f"must be one of {list(ON_ERROR)}, got {on_error!r}")
    file = str(path)
    with open_binary(path) as fh:
        lineno = 0
        pending: tuple[int, bytes] | None = None  # a line is parsed once we know whether it is the last
        while True:
            try:
                raw = fh.readline()
            except _GZIP_ERRORS as exc:
                raise _gzip_error(file, lineno + 1, exc) from None
            except OSError as exc:
                raise _file_error(file, exc) from None
            if pending is not None:
                n, data = pending
                is_last = raw == b""
                try:
                    obj = parse_line(data, file, n) if n > 1 else loads(_decode(data, file, n, first=True), file, n)
                except JsonError as exc:
                    truncated = is_last and not data.endswith(b"\n") and exc.kind in ("syntax", "encoding")
                    if truncated and on_error == "skip-truncated-last":
                        msg = (f"{file}, line {n}: skipped the truncated last line ({len(data)} bytes, "
                               "invalid JSON, no final newline)")
                        warnings.warn(msg, stacklevel=2)
                        if notes is not None:
                            notes.append(msg)
                        return
                    if truncated:
                        raise JsonError(
                            file, n, None,
                            f"truncated last line: {exc.reason} and the file does not end "
                            "with a newline; the file was cut off (use on_error='skip-truncated-last' / "
                            "--skip-truncated-last to read the complete lines before it)",
                            exc.kind,
                        ) from None
                    raise
                yield n, obj
                pending = None
            if raw == b"":
                return
            lineno += 1
            if raw.strip():
                pending = (lineno, raw)


def read_json(path: str | os.PathLike) -> Any:
    """The one JSON document in ``path`` (gzip by magic bytes), with every check of :func:`loads`; an
    empty file raises :class:`JsonError` (kind ``"empty"``)."""
    file = str(path)
    text = read_text(path)
    if not text.strip():
        raise JsonError(file, None, None, "the file is empty", "empty")
    return loads(text, file)


def read_records(path: str | os.PathLike) -> tuple[list[tuple[int | None, Any]], str]:
    """Records of a JSON / JSON Lines file as (line number or None, record), and the format found.

    The format is sniffed from the content: a JSON list (``"json"``), a JSON object wrapping a list
    under one of :data:`LIST_KEYS` (``"json"``), or JSON Lines (``"jsonl"``, also a single object).
    Errors are :class:`JsonError` naming the file and the line."""
    file = str(path)
    text = read_text(path)
    stripped = text.strip()
    if not stripped:
        raise JsonError(file, None, None, "the file is empty", "empty")
    if stripped[0] in "[{":
        try:
            data = loads(stripped, file)
        except JsonError as exc:
            if stripped[0] == "[" or exc.kind != "syntax":
                raise
            data = None  # several objects: JSON Lines
        if isinstance(data, list):
            return [(None, r) for r in data], "json"
        if isinstance(data, dict):
            for key in LIST_KEYS:
                if isinstance(data.get(key), list):
                    return [(None, r) for r in data[key]], "json"
            return [(1, data)], "jsonl"  # a single JSON object is a one-record JSON Lines file
    records = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if line.strip():
            records.append((lineno, loads(line, file, lineno)))
    return records, "jsonl"


# --------------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------------


def check_output(path: str | os.PathLike, param: str = "path", *, overwrite: bool = True,
                 directory: bool = False) -> Path:
    """Validate an output path before any work is done; return it as a :class:`Path`.

    A file output (``directory=False``) must not be an existing directory, its parent directory must
    exist and be writable, and with ``overwrite=False`` it must not exist. A directory output
    (``directory=True``, created later with its parents) must not be an existing non-directory, and its
    nearest existing ancestor must be a writable directory. Raises :class:`ParameterError` naming
    ``param`` (e.g. ``"--out"``)."""
    p = Path(path)
    if str(path) == "":
        raise ParameterError(param, "is empty")
    if directory:
        if p.exists() and not p.is_dir():
            raise ParameterError(param, f"{p} exists and is not a directory")
        anc = p
        while not anc.exists():
            if anc.parent == anc:
                break
            anc = anc.parent
        if anc.exists() and not anc.is_dir():
            raise ParameterError(param, f"cannot create {p}: {anc} is not a directory")
        if not os.access(anc, os.W_OK | os.X_OK):
            raise ParameterError(param, f"cannot create files under {anc}: permission denied")
        return p
    if p.is_dir():
        raise ParameterError(param, f"{p} is a directory; give a file name")
    parent = p.parent
    if not parent.exists():
        raise ParameterError(param, f"cannot write {p}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise ParameterError(param, f"cannot write {p}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ParameterError(param, f"cannot write {p}: permission denied in {parent}")
    if p.exists() and not overwrite:
        raise ParameterError(param, f"{p} already exists (choose another name, or allow overwriting)")
    if p.exists() and not os.access(p, os.W_OK):
        raise ParameterError(param, f"cannot overwrite {p}: permission denied")
    return p


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, param: str = "path",
                 compress: bool | None = None) -> Iterator[IO]:
    """Context manager: a file handle (``mode`` ``"wb"`` or ``"w"``, UTF-8 text) whose content replaces
    ``path`` atomically when the block ends without error; on error the temporary file is removed and
    ``path`` is untouched. ``path`` is checked with :func:`check_output` first. ``compress`` (default:
    ``path`` ends with ``.gz``) writes gzip."""
    if mode not in ("wb", "w"):
        raise ParameterError("mode", f"must be 'wb' or 'w', got {mode!r}")
    p = check_output(path, param)
    if compress is None:
        compress = p.suffix == ".gz"
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if compress else raw
            try:
                if mode == "w":
                    text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
                    yield text
                    text.flush()
                    text.detach()
                else:
                    yield stream
            finally:
                if compress:
                    stream.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask would race with other threads)
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str, *, param: str = "path") -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path, "wb", param=param) as fh:
        fh.write(text.encode("utf-8"))
