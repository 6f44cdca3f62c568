"""OpenAI-compatible HTTP generator (chat and completions endpoints) over ``httpx.AsyncClient``.

Works with vLLM, SGLang, llama.cpp's server (``python -m llama_cpp.server`` or ``llama-server``), TGI,
OpenAI and other servers that speak the OpenAI REST API. ``httpx`` is imported when the first request
is made, not at import time.

Behaviour:

* ``n`` samples per request. Some servers ignore ``n`` and return one choice (llama-cpp-python), others
  refuse ``n != 1`` with HTTP 400 (llama.cpp's ``llama-server``); in ``n_mode="auto"`` the missing
  samples are then requested separately (with seeds ``seed + i``) and this generator instance remembers
  it: later calls go straight to separate requests (one instance per upstream). ``"native"`` trusts ``n`` (fewer choices is an error);
  ``"separate"`` always sends ``n`` requests with ``n=1``.
* Per-token logprobs: chat sends ``logprobs=true, top_logprobs=k`` (llama.cpp needs ``k >= 1`` to return
  any); completions sends ``logprobs=k``.
* At most ``concurrency`` requests in flight (an ``asyncio.Semaphore``, held only during an attempt and
  always released, also on cancellation).
* Each attempt has a total deadline of ``timeout`` seconds. 408/409/429/5xx answers, connection errors
  and timeouts are retried up to ``max_retries`` times with exponential backoff and jitter
  (``Retry-After`` is honoured, capped at ``Backoff.max_retry_after``); then :class:`GenerationError`
  names the URL, the last status and the number of attempts. Other 4xx answers fail at once.
* Per call: ``extra_body`` fields are merged into the request unchanged (after the instance's own
  ``extra_body``); each :class:`Completion` keeps the upstream choice object in ``raw``; the first
  completion of each request carries that request's usage in ``usage``. A reply that breaks the OpenAI
  schema (a non-object message, a logprob that is not a number, a negative token count, ...) is one
  :class:`GenerationError` naming the field.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Any, Literal

from optscale.errors import ParameterError
from optscale.online.generators import (
    Completion,
    GenerationError,
    Generator,
    Prompt,
    as_messages,
    check_generate_args,
    record_usage,
)
from optscale.online.http import (  # noqa: F401 - Backoff, parse_retry_after, RETRY_STATUSES re-exported
    RETRY_STATUSES,
    Backoff,
    HTTPFailure,
    make_client,
    parse_retry_after,
    post_with_retries,
)

__all__ = ["Backoff", "OpenAICompatGenerator"]

N_REFUSED = frozenset({400, 422})
"""Statuses with which a server refuses ``n > 1`` (llama.cpp's server: 400 "only n = 1 is supported")."""

logger = logging.getLogger(__name__)


class OpenAICompatGenerator(Generator):
    """Generator for an OpenAI-compatible server.

    Args:
        base_url: API root including the version prefix, as for the OpenAI SDK, e.g.
            ``"http://127.0.0.1:8000/v1"``; the client posts to ``{base_url}/chat/completions`` or
            ``{base_url}/completions``.
        model: model name sent in each request.
        api_key: sent as ``Authorization: Bearer <key>`` when given.
        endpoint: ``"chat"`` (prompt strings become one user message) or ``"completions"`` (raw text
            prompts only).
        concurrency: maximum requests in flight for this generator.
        timeout: seconds allowed for one attempt (connect + send + full response).
        max_retries: retries after the first attempt (so at most ``max_retries + 1`` attempts).
        backoff: :class:`Backoff` parameters.
        n_mode: ``"auto"``, ``"native"`` or ``"separate"`` (see module docstring).
        top_logprobs: alternatives per position requested when ``logprobs=True`` (>= 1).
        extra_body: extra JSON fields merged into every request (e.g. ``{"top_k": 20}``).
        headers: extra HTTP headers.
        trust_env: let httpx read proxy settings from the environment.
        transport: an ``httpx.AsyncBaseTransport`` to use instead of the network (tests).
    """

    name = "openai-compat"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        endpoint: Literal["chat", "completions"] = "chat",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: Backoff | None = None,
        n_mode: Literal["auto", "native", "separate"] = "auto",
        top_logprobs: int = 1,
        extra_body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        trust_env: bool = True,
        transport: Any = None,
    ) -> None:
        super().__init__()
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ParameterError(
                "base_url", f"must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}"
            )
        if not model:
            raise ParameterError("model", "must be a non-empty model name")
        if endpoint not in ("chat", "completions"):
            raise ParameterError("endpoint", f"must be 'chat' or 'completions', got {endpoint!r}")
        if n_mode not in ("auto", "native", "separate"):
            raise ParameterError("n_mode", f"must be 'auto', 'native' or 'separate', got {n_mode!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ParameterError("concurrency", f"must be an integer >= 1, got {concurrency!r}")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ParameterError("timeout", f"must be > 0 seconds, got {timeout!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ParameterError("max_retries", f"must be an integer >= 0, got {max_retries!r}")
        if isinstance(top_logprobs, bool) or not isinstance(top_logprobs, int) or top_logprobs < 1:
            raise ParameterError("top_logprobs", f"must be an integer >= 1, got {top_logprobs!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = backoff if backoff is not None else Backoff()
        self.n_mode = n_mode
        self.top_logprobs = top_logprobs
        self.extra_body = dict(extra_body or {})
        self.headers = dict(headers or {})
        self.trust_env = trust_env
        self.transport = transport
        # None = unknown; False once the server answered n>1 with fewer choices (auto mode)
        self.server_honours_n: bool | None = None
        self._client: Any = None
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._rng = random.Random()

    @property
    def seed_per_sample(self) -> bool:  # type: ignore[override]
        """True when each sample gets its own request with seed ``seed + i`` (n_mode 'separate', or
        'auto' once the server was seen to ignore ``n``); a native ``n`` request draws all from one seed."""
        return self.n_mode == "separate" or (self.n_mode == "auto" and self.server_honours_n is False)

    # ------------------------------------------------------------------ plumbing
    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.endpoint == 'chat' else 'completions'}"

    def _bind(self) -> tuple[Any, asyncio.Semaphore]:
        """The httpx client and slot semaphore of the running event loop (recreated for a new loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._client is None or self._client.is_closed:
            headers = {"Content-Type": "application/json", **self.headers}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._client = make_client(
                timeout=self.timeout,
                headers=headers,
                max_keepalive=self.concurrency,
                trust_env=self.trust_env,
                transport=self.transport,
            )
            if self._loop is not loop or self._slots is None:
                self._slots = asyncio.Semaphore(self.concurrency)
            self._loop = loop
        assert self._slots is not None
        return self._client, self._slots

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            try:
                await client.aclose()
            except RuntimeError:  # created on an event loop that is closed now
                pass

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` with retries (:mod:`optscale.online.http`); the parsed JSON answer."""
        client, slots = self._bind()
        url = self.url
        try:
            resp, attempts = await post_with_retries(
                client,
                url,
                body,
                max_retries=self.max_retries,
                backoff=self.backoff,
                timeout=self.timeout,
                slots=slots,
                rng=self._rng,
                on_retry=lambda: self.usage.add(retries=1),
            )
        except HTTPFailure as e:
            self.usage.add(failures=1)
            n = e.attempts
            raise GenerationError(
                f"POST {url} failed after {n} attempt{'s' if n > 1 else ''}: {e.detail}",
                url=url,
                status=e.status,
                attempts=n,
            ) from None
        status = resp.status_code
        if status != 200:
            self.usage.add(failures=1)
            hint = ""
            if status == 404:
                hint = " (is base_url the API root including '/v1', and is the endpoint/model right?)"
            raise GenerationError(
                f"POST {url} failed (not retried): HTTP {status}: {resp.text[:300].strip()}{hint}",
                url=url,
                status=status,
                attempts=attempts,
            )
        try:
            data = resp.json()
        except ValueError as e:
            self.usage.add(failures=1)
            raise GenerationError(
                f"POST {url}: HTTP 200 with a body that is not JSON ({e}): {resp.text[:200]!r}",
                url=url,
                status=status,
                attempts=attempts,
            ) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            self.usage.add(failures=1)
            raise GenerationError(
                f"POST {url}: answer has no 'choices' list: {str(data)[:200]}",
                url=url,
                status=status,
                attempts=attempts,
            )
        return data

    # ------------------------------------------------------------------ request / response
    def _body(
        self,
        prompt: Prompt,
        n: int,
        seed: int | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        logprobs: bool,
        stop: list[str] | None,
        extra_body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if self.endpoint == "chat":
            body["messages"] = as_messages(prompt)
            if logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = self.top_logprobs
        else:
            body["prompt"] = prompt
            if logprobs:
                body["logprobs"] = self.top_logprobs
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        body.update(self.extra_body)
        if extra_body:
            body.update(extra_body)
        return body

    def _parse(self, data: dict[str, Any], want_logprobs: bool) -> list[Completion]:
        """Completions of one answer, in ``index`` order. A reply that does not follow the OpenAI schema is
        one :class:`GenerationError` naming the field (never a traceback); ``content`` given as a list of
        parts (valid OpenAI) is accepted: its text parts are joined."""
        url = self.url

        def bad(where: str, what: str, value: Any) -> GenerationError:
            self.usage.add(failures=1)
            return GenerationError(
                f"POST {url}: malformed answer: {where} {what}, got {_short(value)}",
                url=url,
                status=200,
                attempts=1,
            )

        choices = data["choices"]
        if not choices:
            raise bad("'choices'", "has no usable choices (empty list)", choices)
        order: list[tuple[int, dict]] = []
        for k, ch in enumerate(choices):
            if not isinstance(ch, dict):
                raise bad(f"choices[{k}]", "must be an object", ch)
            idx = ch.get("index", k)
            if not _is_count(idx):
                raise bad(f"choices[{k}].index", "must be an integer >= 0", idx)
            order.append((idx, ch))
        if len({i for i, _ in order}) != len(order):
            raise bad("'choices'", "repeat an index", [i for i, _ in order])
        order.sort(key=lambda t: t[0])
        usage = data.get("usage")
        if usage is None:
            usage = {}
        if not isinstance(usage, dict):
            raise bad("'usage'", "must be an object", usage)
        for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
            if usage.get(key) is not None and not _is_count(usage[key]):
                raise bad(f"usage.{key}", "must be an integer >= 0", usage[key])
        prompt_tokens = usage.get("prompt_tokens")
        total_completion = usage.get("completion_tokens")
        out: list[Completion] = []
        for k, (_, ch) in enumerate(order):
            where = f"choices[{k}]"
            if self.endpoint == "chat":
                msg = ch.get("message")
                if msg is None:
                    msg = {}
                if not isinstance(msg, dict):
                    raise bad(f"{where}.message", "must be an object", msg)
                text = _content_text(msg.get("content"), f"{where}.message.content", bad)
                lp, top = (
                    _chat_logprobs(ch.get("logprobs"), f"{where}.logprobs", bad)
                    if want_logprobs
                    else (None, None)
                )
            else:
                text = ch.get("text")
                if text is None:
                    text = ""
                if not isinstance(text, str):
                    raise bad(f"{where}.text", "must be a string", text)
                lp, top = (
                    _completion_logprobs(ch.get("logprobs"), f"{where}.logprobs", bad)
                    if want_logprobs
                    else (None, None)
                )
            finish = ch.get("finish_reason")
            if finish is not None and not isinstance(finish, str):
                raise bad(f"{where}.finish_reason", "must be a string or null", finish)
            if want_logprobs and lp is None:
                self.usage.add(failures=1)
                raise GenerationError(
                    f"POST {url}: logprobs=True was requested but the server returned none "
                    f"(does it support logprobs on the {self.endpoint} endpoint?)",
                    url=url,
                    status=200,
                    attempts=1,
                )
            out.append(
                Completion(
                    text=text,
                    tokens=0,
                    logprobs=lp,
                    top_logprobs=top,
                    finish_reason=finish,
                    prompt_tokens=prompt_tokens,
                    raw=ch,
                )
            )
        if total_completion is None and not all(c.logprobs is not None for c in out):
            raise bad("'usage.completion_tokens'", "is needed to count tokens (no logprobs)", usage or None)
        _assign_tokens(out, total_completion)
        completion_tokens = sum(c.tokens for c in out)
        reported = total_completion if total_completion is not None else completion_tokens
        out[0].usage = {
            "prompt_tokens": int(prompt_tokens or 0),
            "completion_tokens": int(reported),
            "total_tokens": int(prompt_tokens or 0) + int(reported),
        }
        self.usage.add(
            requests=1,
            samples=len(out),
            prompt_tokens=prompt_tokens or 0,
            completion_tokens=completion_tokens,
        )
        return out

    async def _request(
        self, prompt: Prompt, n: int, seed: int | None, kw: dict[str, Any]
    ) -> list[Completion]:
        data = await self._post(self._body(prompt, n, seed, **kw))
        out = self._parse(data, kw["logprobs"])
        record_usage(out[0].usage)
        return out

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
        check_generate_args(n, max_tokens, temperature, top_p)
        if extra_body is not None and not isinstance(extra_body, dict):
            raise ParameterError("extra_body", f"must be a dict, got {type(extra_body).__name__}")
        if self.endpoint == "completions" and not isinstance(prompt, str):
            raise ParameterError(
                "prompt", "the completions endpoint takes a text prompt; use endpoint='chat' for messages"
            )
        if self.endpoint == "chat":
            as_messages(prompt)  # validate before any request
        kw = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            logprobs=logprobs,
            stop=stop,
            extra_body=extra_body,
        )

        def seed_of(i: int) -> int | None:
            return None if seed is None else seed + i

        separate = self.n_mode == "separate" or (self.n_mode == "auto" and self.server_honours_n is False)
        if n == 1 or separate:
            return await _gather([self._request(prompt, 1, seed_of(i), kw) for i in range(n)])
        try:
            got = (await self._request(prompt, n, seed, kw))[:n]
        except GenerationError as e:
            # llama.cpp's server rejects n != 1 (HTTP 400); while it is unknown whether this upstream
            # honours n, such a refusal switches this generator to one request per sample for good
            if not (self.n_mode == "auto" and self.server_honours_n is None and e.status in N_REFUSED):
                raise
            self.server_honours_n = False
            logger.info("%s refused n=%d (HTTP %s); sending one request per sample from now on", self.url, n,
                        e.status)  # fmt: skip
            return await _gather([self._request(prompt, 1, seed_of(i), kw) for i in range(n)])
        if len(got) == n:
            if self.n_mode == "auto":
                self.server_honours_n = True
            return got
        if self.n_mode == "native":
            raise GenerationError(
                f"POST {self.url}: asked for n={n} choices, the server returned {len(got)} "
                "(use n_mode='auto' or 'separate' for servers that ignore n)",
                url=self.url,
                status=200,
                attempts=1,
            )
        self.server_honours_n = False
        rest = await _gather([self._request(prompt, 1, seed_of(i), kw) for i in range(len(got), n)])
        return got + rest


async def _gather(coros: list) -> list[Completion]:
    """Run request coroutines concurrently; the first failure cancels the others; results in order."""
    if len(coros) == 1:
        return await coros[0]
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(c) for c in coros]
    except BaseExceptionGroup as group:  # surface the request's own error, not an ExceptionGroup
        errors = list(_leaves(group))
        raise next((e for e in errors if isinstance(e, GenerationError)), errors[0]) from None
    return [c for t in tasks for c in t.result()]


def _leaves(group: BaseExceptionGroup):
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e


def _short(value: Any, n: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _logprob(x: Any, where: str, bad, *, allow_null: bool = False) -> float:
    """A log-probability: a number <= 0 (JSON has no -inf; ``null`` only where the schema allows it)."""
    if x is None and allow_null:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, int | float) or x != x or x > 1e-6:
        raise bad(where, "must be a number <= 0", x)
    return float(x)


def _content_text(content: Any, where: str, bad) -> str:
    """The text of a chat message ``content``: a string, null (e.g. tool calls only) or a list of content
    parts, whose ``text`` parts are joined (other part types, e.g. refusals or images, add no text)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
                continue
            if not isinstance(part, dict):
                raise bad(f"{where}[{j}]", "must be a content part object", part)
            if part.get("type", "text") == "text":
                t = part.get("text")
                if not isinstance(t, str):
                    raise bad(f"{where}[{j}].text", "must be a string", t)
                texts.append(t)
        return "".join(texts)
    raise bad(where, "must be a string, null or a list of content parts", content)


def _chat_logprobs(obj: Any, where: str, bad) -> tuple[list[float] | None, list[dict[str, float]] | None]:
    if obj is None:
        return None, None
    if not isinstance(obj, dict):
        raise bad(where, "must be an object", obj)
    items = obj.get("content")
    if items is None:
        return None, None
    if not isinstance(items, list):
        raise bad(f"{where}.content", "must be a list", items)
    lps, tops = [], []
    for j, item in enumerate(items):
        w = f"{where}.content[{j}]"
        if not isinstance(item, dict):
            raise bad(w, "must be an object", item)
        lps.append(_logprob(item.get("logprob"), f"{w}.logprob", bad))
        alts = item.get("top_logprobs")
        if alts is None:
            alts = []
        if not isinstance(alts, list):
            raise bad(f"{w}.top_logprobs", "must be a list", alts)
        top: dict[str, float] = {}
        for m, alt in enumerate(alts):
            if not isinstance(alt, dict) or not isinstance(alt.get("token"), str):
                raise bad(f"{w}.top_logprobs[{m}]", "must be an object with a string 'token'", alt)
            top[alt["token"]] = _logprob(alt.get("logprob"), f"{w}.top_logprobs[{m}].logprob", bad)
        tops.append(top)
    return lps, tops


def _completion_logprobs(
    obj: Any, where: str, bad
) -> tuple[list[float] | None, list[dict[str, float]] | None]:
    if obj is None:
        return None, None
    if not isinstance(obj, dict):
        raise bad(where, "must be an object", obj)
    raw = obj.get("token_logprobs")
    if raw is None:
        return None, None
    if not isinstance(raw, list):
        raise bad(f"{where}.token_logprobs", "must be a list", raw)
    # null is valid for the first token of an echoed prompt
    lps = [_logprob(x, f"{where}.token_logprobs[{j}]", bad, allow_null=True) for j, x in enumerate(raw)]
    raw_top = obj.get("top_logprobs")
    tops = None
    if raw_top is not None:
        if not isinstance(raw_top, list):
            raise bad(f"{where}.top_logprobs", "must be a list", raw_top)
        tops = []
        for j, d in enumerate(raw_top):
            if d is None:
                tops.append({})
                continue
            if not isinstance(d, dict):
                raise bad(f"{where}.top_logprobs[{j}]", "must be an object", d)
            tops.append({str(k): _logprob(v, f"{where}.top_logprobs[{j}][{k!r}]", bad) for k, v in d.items()})
    return lps, tops


def _assign_tokens(out: list[Completion], total: int | None) -> None:
    """Set ``tokens`` of each completion: the logprob count when available, else the usage total (one choice),
    else the usage total split in proportion to text length (a server reports usage per request only)."""
    if not out:
        return
    if all(c.logprobs is not None for c in out):
        for c in out:
            c.tokens = len(c.logprobs or [])
        return
    if total is None:  # pragma: no cover - _parse checks this first
        raise GenerationError("the server reported no usage.completion_tokens; cannot count tokens")
    if len(out) == 1:
        out[0].tokens = int(total)
        return
    lengths = [max(len(c.text), 1) for c in out]
    scale = total / sum(lengths)
    shares = [int(round(x * scale)) for x in lengths]
    shares[-1] += int(total) - sum(shares)
    for c, k in zip(out, shares, strict=True):
        c.tokens = max(k, 0)
