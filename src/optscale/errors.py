"""Exceptions shown to users as one clear line (the CLI prints them without a traceback)."""

from __future__ import annotations


class OptScaleError(Exception):
    """Base class of every user-facing error of optscale."""


class ParameterError(OptScaleError, ValueError):
    """A parameter has an invalid value; the message names the parameter."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(f"parameter {name!r}: {message}")


class InputError(OptScaleError, ValueError):
    """A file has invalid content; the message names the file, the line and the field."""

    def __init__(self, file: str | None, line: int | None, field: str | None, message: str):
        self.file, self.line, self.field = file, line, field
        where = []
        if file is not None:
            where.append(str(file))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
