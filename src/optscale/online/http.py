"""One HTTP retry policy for every HTTP edge: the OpenAI-compatible generator (and the LLM judge built on it)
and the reward-endpoint scorer.

* Retried: HTTP 408, 409, 425, 429 and every 5xx answer, connection errors and timeouts (each attempt has a
  total deadline of ``timeout`` seconds: connect + send + the full answer). Other answers are returned to
  the caller, which decides (a 4xx is an error at once).
* Delay before retry ``k`` (0-based): the server's ``Retry-After`` when given (delta-seconds or an HTTP
  date, capped at ``Backoff.max_retry_after``), else ``min(max, base * factor**k)`` times a random factor in
  ``[1 - jitter, 1]``.
* ``httpx`` is imported when the first client is made; :func:`make_client` takes an optional ``transport``
  (e.g. ``httpx.MockTransport``) so tests can answer requests in process.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optscale.errors import ParameterError

__all__ = ["Backoff", "HTTPFailure", "RETRY_STATUSES", "is_retryable", "make_client", "parse_retry_after",
           "post_json", "post_with_retries"]  # fmt: skip

RETRY_STATUSES = frozenset({408, 409, 425, 429})
"""Retried besides every 5xx status."""


def is_retryable(status: int) -> bool:
    """Whether an HTTP status is retried (408/409/425/429 and every 5xx)."""
    return status in RETRY_STATUSES or status >= 500


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: retry ``k`` (0-based) waits ``min(max, base * factor**k)`` seconds, times a
    random factor in ``[1 - jitter, 1]``. A server's ``Retry-After`` replaces that delay (capped at
    ``max_retry_after``)."""

    base: float = 0.5
    factor: float = 2.0
    max: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (
            self.base, self.factor, self.max, self.jitter, self.max_retry_after))  # fmt: skip
        if not (
            ok
            and self.base >= 0
            and self.factor >= 1
            and self.max >= 0
            and 0 <= self.jitter <= 1
            and self.max_retry_after >= 0
        ):
            raise ParameterError(
                "backoff",
                f"needs base >= 0, factor >= 1, max >= 0, 0 <= jitter <= 1, max_retry_after >= 0: {self}",
            )

    def delay(
        self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait before retry ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        d = min(self.max, self.base * self.factor**attempt)
        u = (rng or random).random()
        return d * (1.0 - self.jitter * u)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date); None if absent/invalid.

    Negative or past values give 0; ``now`` (a ``time.time()`` instant) is for tests."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, secs) if secs == secs and secs != float("inf") else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # pragma: no cover - older Pythons
        return None
    if when.tzinfo is None:  # an HTTP date is GMT
        import datetime

        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HTTPFailure(Exception):
    """A request failed for good: retries exhausted on a retryable status, a connection error or a timeout.

    ``detail`` says what happened on the last attempt, ``status`` is its HTTP status (None for a connection
    error or timeout), ``attempts`` the number of requests made. Edges turn it into their own error
    (GenerationError, ScoringError)."""

    def __init__(self, detail: str, *, status: int | None, attempts: int):
        self.detail, self.status, self.attempts = detail, status, attempts
        super().__init__(detail)


def make_client(
    *,
    timeout: float,
    headers: dict[str, str] | None = None,
    max_keepalive: int | None = None,
    trust_env: bool = True,
    transport: Any = None,
) -> Any:
    """An ``httpx.AsyncClient`` with these settings (``transport``: an ``httpx.AsyncBaseTransport`` to
    answer requests without a network, for tests)."""
    import httpx

    kw: dict[str, Any] = {}
    if transport is not None:
        kw["transport"] = transport
    return httpx.AsyncClient(
        headers=headers or {},
        timeout=httpx.Timeout(timeout),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=max_keepalive),
        trust_env=trust_env,
        **kw,
    )


_URLS: dict[str, Any] = {}


async def post_json(client: Any, url: str, body: Any) -> Any:
    """``await client.post(url, json=body)``: the same request on the wire (the same ``httpx.Request``: client
    headers, JSON encoding, timeouts) and the same read response, sent straight to the client's transport.

    This skips httpx's per-request client layer -- URL merging, auth, redirect and cookie handling, event
    hooks -- which costs about a quarter of the CPU of a small request on loopback and has nothing to do for
    these clients; a client that has any of it to do (base_url, params, auth, event hooks, redirects,
    cookies) goes through ``client.post`` unchanged. Set-Cookie answers still fill the client's jar."""
    import httpx

    transport_for = getattr(client, "_transport_for_url", None)
    if (
        transport_for is None
        or client.cookies
        or client.auth is not None
        or client.follow_redirects
        or client.params
        or str(client.base_url)
        or any(client.event_hooks.values())
    ):
        return await client.post(url, json=body)
    parsed = _URLS.get(url)
    if parsed is None:  # httpx.URL is immutable; parsing the same few URLs on every request is a visible cost
        if len(_URLS) >= 256:
            _URLS.clear()
        parsed = _URLS[url] = httpx.URL(url)
    req = httpx.Request("POST", parsed, headers=client.headers, json=body,
                        extensions={"timeout": client.timeout.as_dict()})
    resp = await transport_for(req.url).handle_async_request(req)
    resp.request = req
    try:
        await resp.aread()
    except BaseException:
        await resp.aclose()
        raise
    if "set-cookie" in resp.headers:
        client.cookies.extract_cookies(resp)
    return resp


async def post_with_retries(
    client: Any,
    url: str,
    body: Any,
    *,
    max_retries: int,
    backoff: Backoff,
    timeout: float,
    slots: asyncio.Semaphore | None = None,
    rng: random.Random | None = None,
    on_retry: Callable[[], None] | None = None,
) -> tuple[Any, int]:
    """POST ``body`` as JSON; retry as the module docstring says; return ``(response, attempts)`` for the
    first answer that is not retried (any status: the caller checks it). Raises :class:`HTTPFailure`
    after ``max_retries + 1`` attempts. ``slots`` (a semaphore) is held only during an attempt, never while
    waiting to retry, and is released on cancellation; cancelling the caller closes the request."""
    import httpx

    attempts = 0
    while True:
        attempts += 1
        status: int | None = None
        retry_after: float | None = None
        try:
            if slots is not None:
                async with slots:
                    async with asyncio.timeout(timeout):
                        resp = await post_json(client, url, body)
            else:
                async with asyncio.timeout(timeout):
                    resp = await post_json(client, url, body)
            status = resp.status_code
            if not is_retryable(status):
                return resp, attempts
            detail = f"HTTP {status}: {resp.text[:300].strip()}"
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
        except (TimeoutError, httpx.TimeoutException):
            detail = f"no complete answer within timeout={timeout:g} s"
        except httpx.TransportError as e:
            detail = f"connection error: {type(e).__name__}: {e}".rstrip(": ")
        if attempts > max_retries:
            raise HTTPFailure(detail, status=status, attempts=attempts)
        if on_retry is not None:
            on_retry()
        await asyncio.sleep(backoff.delay(attempts - 1, retry_after, rng))
