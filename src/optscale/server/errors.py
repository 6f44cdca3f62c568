"""OpenAI-shaped errors of ``optscale serve``: ``{"error": {"message", "type", "param", "code"}}``.

The official ``openai`` client maps the HTTP status to its exception classes (400 ``BadRequestError``,
401 ``AuthenticationError``, 404 ``NotFoundError``, 429 ``RateLimitError``, 5xx ``InternalServerError``)
and exposes ``body["error"]`` fields as ``e.param`` / ``e.code``. Statuses used:

====  ==========================  ==========================================================
400   ``invalid_request_error``   malformed JSON / body, bad or unknown (optscale) parameter
401   ``authentication_error``    missing or wrong API key
404   ``invalid_request_error``   unknown model (code ``model_not_found``)
429   ``rate_limit_error``        server full (bounded queue); ``Retry-After`` header
502   ``upstream_error``          the upstream or scorer answered with an error before any sample
503   ``service_unavailable``     the upstream or scorer cannot be reached
504   ``timeout_error``           the upstream did not answer in time before any sample
====  ==========================  ==========================================================
"""

from __future__ import annotations

from typing import Any

__all__ = ["APIError", "error_body", "from_exception"]


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.type = type or _default_type(self.status)
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        #: label of the ``optscale_errors_total{kind=...}`` metric
        self.kind = kind or code or self.type

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def __repr__(self) -> str:
        return f"APIError({self.status}, {self.message!r}, param={self.param!r}, code={self.code!r})"


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    if status == 503:
        return "service_unavailable"
    if status == 504:
        return "timeout_error"
    if status >= 500:
        return "upstream_error"
    return "invalid_request_error"


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str = "invalid_parameter") -> APIError:
    return APIError(400, message, param=param, code=code, kind="bad_request")


def from_exception(exc: BaseException, where: str = "upstream") -> APIError:
    """The client-facing error for a failure that happened before any sample was drawn.

    ``ParameterError`` -> 400 naming the parameter; ``GenerationError`` -> the upstream's own 4xx (its
    message forwarded), 429 (with ``Retry-After``), 504 on a timeout, 503 when it cannot be reached, 502
    otherwise; ``ScoringError`` -> 502 (503 when the scorer cannot be reached).
    """
    from optscale.errors import ParameterError
    from optscale.online.generators import GenerationError

    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ParameterError):
        return bad_request(str(exc), param=getattr(exc, "name", None))
    text = str(exc) or type(exc).__name__
    if isinstance(exc, GenerationError):
        status = exc.status
        if status is not None and 400 <= status < 500 and status not in (408, 409, 425, 429):
            code = "model_not_found" if status == 404 else "upstream_rejected"
            return APIError(status, f"the upstream rejected the request: {text}", code=code,
                            kind="upstream_4xx")
        if status == 429:
            return APIError(429, f"the upstream is overloaded: {text}", code="upstream_overloaded",
                            headers={"Retry-After": "1"}, kind="upstream_429")
        if status is None and "timeout" in text:
            return APIError(504, f"the upstream did not answer in time: {text}", code="upstream_timeout",
                            kind="upstream_timeout")
        if status is None:
            return APIError(503, f"the upstream cannot be reached: {text}", code="upstream_unavailable",
                            kind="upstream_unavailable")
        return APIError(502, f"the upstream failed: {text}", code="upstream_error", kind="upstream_error")
    from optscale.online.scorers import ScoringError

    if isinstance(exc, ScoringError):
        low = text.lower()
        if "connect" in low or "unreachable" in low:
            return APIError(503, f"the scorer cannot be reached: {text}", code="scorer_unavailable",
                            kind="scorer_unavailable")
        if "timeout" in low or "timed out" in low:
            return APIError(504, f"the scorer did not answer in time: {text}", code="scorer_timeout",
                            kind="scorer_timeout")
        return APIError(502, f"the scorer failed: {text}", code="scorer_error", kind="scorer_error")
    return APIError(500, f"internal error ({type(exc).__name__}): {text}", type="server_error",
                    code="internal_error", kind="internal")
