"""Parsing a client request of ``optscale serve`` into a :class:`RequestPlan`.

Per-request policy parameters (the ``optscale`` keys) come from four places; for each key the first
source that sets it wins:

1. the body field ``"optscale": {...}`` (``extra_body={"optscale": {...}}`` in the openai client);
2. ``X-OptScale-<Key>`` request headers (``X-OptScale-N-Max: 8``), for gateways that add headers;
3. the model alias: ``optscale:<model>`` (the server's default method) or ``optscale-<method>:<model>``
   (e.g. ``optscale-bon:my-model``), for clients that can send neither;
4. the server's defaults (config file / command line).

Keys: ``method`` (policy spec for :func:`optscale.policies.make_policy`, e.g. ``"optscale0"`` or
``"esc:window=4"``), ``n_max``, ``target``, ``alpha``, ``k`` (overrides of the policy's own parameters,
applied as ``make_policy(method, target=..., alpha=..., k=...)``), ``deadline`` (seconds; then the best
answer so far is returned), ``return_samples`` (include every sample in the ``optscale`` object) and
``seed`` (run seed; sample ``i`` uses ``sample_seed(seed, "", i)``; default: the request's ``seed`` field,
else a fresh random seed, reported back). Unknown keys are a 400 naming the parameter.

The optscale fields and the fields the server itself implements (``n``, ``stream``, ``stream_options``,
``max_tokens``/``max_completion_tokens``, ``temperature``, ``top_p``, ``seed``, and ``logprobs``/
``top_logprobs`` when the scorer needs log-probabilities) are taken out; every other field (``tools``,
``response_format``, ``top_k``, ``stop``, ``chat_template_kwargs``, ...) is forwarded to the upstream
unchanged.
"""

from __future__ import annotations

import functools
import inspect
import math
import secrets
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from optscale.errors import ParameterError
from optscale.server.errors import APIError, bad_request

__all__ = ["OPTSCALE_KEYS", "RequestPlan", "parse_alias", "parse_request"]

OPTSCALE_KEYS = ("method", "n_max", "target", "alpha", "k", "deadline", "return_samples", "seed")
HEADER_PREFIX = "x-optscale-"
#: request headers named X-OptScale-* that are not policy parameters
_OTHER_HEADERS = {"x-optscale-request-id"}
ALIAS_PREFIX = "optscale"
#: body fields the server implements itself (not forwarded)
_HANDLED_CHAT = {"model", "messages", "n", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                 "temperature", "top_p", "seed", "optscale"}
_HANDLED_COMPLETIONS = {"model", "prompt", "n", "stream", "stream_options", "max_tokens", "temperature",
                        "top_p", "seed", "optscale"}
_LOGPROB_FIELDS = {"logprobs", "top_logprobs"}
_POLICY_OVERRIDES = ("target", "alpha", "k")


@dataclass
class RequestPlan:
    """Everything the server needs to answer one request."""

    endpoint: str  # "chat" | "completions"
    requested_model: str  # as the client wrote it (echoed in the answer)
    model: str  # the upstream model
    prompt: Any  # chat messages or a text prompt
    question: str  # text the scorer sees as the question
    n: int
    stream: bool
    include_usage: bool
    method: str  # the policy spec as given
    policy: Any
    n_max: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    deadline_s: float | None
    return_samples: bool
    extra_body: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)  # optscale key -> body | header | alias | default


def parse_alias(name: str) -> tuple[str, str | None]:
    """``"optscale:m"`` -> ``("m", None)``; ``"optscale-bon:m"`` -> ``("m", "bon")``; else ``(name, None)``."""
    if name.startswith(ALIAS_PREFIX + ":"):
        return name[len(ALIAS_PREFIX) + 1:], None
    if name.startswith(ALIAS_PREFIX + "-") and ":" in name:
        method, _, model = name[len(ALIAS_PREFIX) + 1:].partition(":")
        if method and model:
            return model, method
    return name, None


def alias_names(model: str) -> list[str]:
    """The adaptive aliases listed by ``GET /v1/models`` for an upstream model."""
    from optscale.policies.registry import POLICIES

    online = [k for k, f in POLICIES.items() if not getattr(_factory_class(f), "batch_only", False)]
    return [f"{ALIAS_PREFIX}:{model}"] + [f"{ALIAS_PREFIX}-{m}:{model}" for m in online]


def _factory_class(f: Any) -> Any:
    return f.func if isinstance(f, partial) else f


# ------------------------------------------------------------------------------------------------------
# value parsing
# ------------------------------------------------------------------------------------------------------
def _int(v: Any, param: str, lo: int, hi: int | None = None, allow_none: bool = False) -> int | None:
    if v is None and allow_none:
        return None
    if isinstance(v, str):
        try:
            v = int(v.strip())
        except ValueError:
            raise bad_request(f"{param} must be an integer, got {v!r}", param) from None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise bad_request(f"{param} must be an integer, got {v!r}", param)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise bad_request(f"{param} must be {rng}, got {v}", param)
    return v


def _float(v: Any, param: str, lo: float, hi: float | None = None, *, lo_open: bool = False,
           hi_open: bool = False) -> float:
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            raise bad_request(f"{param} must be a number, got {v!r}", param) from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise bad_request(f"{param} must be a finite number, got {v!r}", param)
    v = float(v)
    bad = v < lo or (lo_open and v == lo) or (hi is not None and (v > hi or (hi_open and v == hi)))
    if bad:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise bad_request(f"{param} must be in {lb}{lo:g}, {'inf' if hi is None else f'{hi:g}'}{rb}, got {v:g}",
                          param)
    return v


def _bool(v: Any, param: str) -> bool:
    if isinstance(v, str):
        low = v.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
    if isinstance(v, bool):
        return v
    raise bad_request(f"{param} must be true or false, got {v!r}", param)


def _header_key(h: str) -> str:
    return h[len(HEADER_PREFIX):].replace("-", "_")


def _text_of(content: Any) -> str:
    """Text of a message content: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


# ------------------------------------------------------------------------------------------------------
# the parser
# ------------------------------------------------------------------------------------------------------
def parse_request(
    body: Any,
    headers: dict[str, str],
    endpoint: str,
    config: Any,
    known_model: Any,
    *,
    needs_logprobs: bool = False,
    has_scorer: bool = True,
) -> RequestPlan:
    """Validate ``body`` (parsed JSON) and the ``X-OptScale-*`` ``headers`` (lower-case names) into a plan.

    ``known_model(name) -> bool`` says whether the upstream serves ``name`` (404 otherwise). Raises
    :class:`~optscale.server.errors.APIError` (400/404) naming the offending parameter.
    """
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object", None, code="invalid_body")
    # --- model and alias
    requested = body.get("model")
    if not isinstance(requested, str) or not requested:
        raise bad_request("model is required (a model name from GET /v1/models)", "model")
    model, alias_method = parse_alias(requested)
    if not known_model(model):
        raise APIError(404, f"The model {requested!r} does not exist; see GET /v1/models for the served models "
                       "and their optscale aliases", param="model", code="model_not_found", kind="unknown_model")
    # --- prompt
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise bad_request("messages must be a non-empty list of {role, content} objects", "messages")
        prompt = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                raise bad_request(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
            if "content" not in m:
                if m.get("role") == "assistant" and m.get("tool_calls"):
                    m = {**m, "content": None}
                else:
                    raise bad_request(f"messages[{i}] has no 'content'", f"messages[{i}].content")
            prompt.append(m)
        users = [m for m in prompt if m["role"] == "user"]
        question = _text_of(users[-1]["content"]) if users else _text_of(prompt[-1].get("content"))
        handled = _HANDLED_CHAT
    else:
        p = body.get("prompt")
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
            p = p[0]
        if not isinstance(p, str):
            raise bad_request("prompt must be one string (a batch of prompts is not supported: send one "
                              "request per prompt)", "prompt")
        prompt = question = p
        handled = _HANDLED_COMPLETIONS
    # --- optscale parameters from body > headers > alias > defaults
    given: dict[str, tuple[Any, str, str]] = {}  # key -> (raw value, source, param name for errors)
    opt = body.get("optscale")
    if opt is not None:
        if not isinstance(opt, dict):
            raise bad_request("optscale must be an object of optscale parameters", "optscale")
        for key, value in opt.items():
            if key not in OPTSCALE_KEYS:
                raise bad_request(f"unknown optscale parameter {key!r}; valid: {', '.join(OPTSCALE_KEYS)}",
                                  f"optscale.{key}", code="unknown_parameter")
            given[key] = (value, "body", f"optscale.{key}")
    for h, value in headers.items():
        if not h.startswith(HEADER_PREFIX) or h in _OTHER_HEADERS:
            continue
        key = _header_key(h)
        if key not in OPTSCALE_KEYS:
            valid = ", ".join("X-OptScale-" + "-".join(w.capitalize() for w in k.split("_")) for k in OPTSCALE_KEYS)
            raise bad_request(f"unknown optscale header {h!r}; valid: {valid}", h, code="unknown_parameter")
        given.setdefault(key, (value, "header", h))
    if alias_method is not None:
        given.setdefault("method", (alias_method, "alias", "model"))
    sources = {k: src for k, (_, src, _) in given.items()}

    def get(key: str) -> tuple[Any, str] | None:
        if key in given:
            return given[key][0], given[key][2]
        return None

    # method -> policy
    if "method" in given:
        method, mparam = given["method"][0], given["method"][2]
        if not isinstance(method, str) or not method.strip():
            raise bad_request(f"{mparam} must be a policy spec such as 'optscale0' or 'esc:window=4'", mparam)
    else:
        method, mparam = config.default_method(), "method"
        sources["method"] = "default"
    overrides: dict[str, Any] = {}
    for key in _POLICY_OVERRIDES:
        got = get(key)
        if got is None:
            continue
        value, param = got
        if key == "k":
            overrides[key] = _int(value, param, 1)
        else:
            overrides[key] = _float(value, param, 0.0, 1.0, lo_open=True, hi_open=key == "alpha")
    policy = _make_policy(method, mparam, overrides, given)
    if getattr(policy, "needs_scores", False) and not has_scorer:
        raise bad_request(f"method {method!r} needs scores, but this server has no scorer (scorer: none)", mparam)
    # n_max, k
    got = get("n_max")
    n_max = _int(got[0], got[1], 1, config.max_n_max) if got else config.default_n_max()
    if got is None:
        sources["n_max"] = "default"
    k = getattr(policy, "k", None)
    if isinstance(k, int) and k > n_max:
        raise bad_request(f"the policy's first wave k={k} exceeds n_max={n_max}",
                          given["k"][2] if "k" in given else "optscale.n_max")
    # n (top-n choices)
    n = _int(body.get("n", 1), "n", 1, n_max) if body.get("n") is not None else 1
    # deadline
    got = get("deadline")
    deadline_s = None
    if got is not None and got[0] is not None:
        deadline_s = _float(got[0], got[1], 0.0, config.max_deadline_s, lo_open=True)
    # return_samples
    got = get("return_samples")
    return_samples = _bool(got[0], got[1]) if got is not None else False
    # seed: optscale.seed > X-OptScale-Seed > body seed > fresh random seed
    got = get("seed")
    if got is None and body.get("seed") is not None:
        got = (body["seed"], "seed")
        sources["seed"] = "request seed"
    if got is not None and got[0] is not None:
        seed = _int(got[0], got[1], 0)
    else:
        seed = secrets.randbits(30)
        sources["seed"] = "random"
    # sampling
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    mt_param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    max_tokens = _int(mt, mt_param, 1) if mt is not None else config.default_max_tokens()
    temperature = (_float(body["temperature"], "temperature", 0.0, 2.0) if body.get("temperature") is not None
                   else float(config.temperature))
    top_p = (_float(body["top_p"], "top_p", 0.0, 1.0, lo_open=True) if body.get("top_p") is not None
             else float(config.top_p))
    stream = _bool(body.get("stream", False), "stream") if body.get("stream") is not None else False
    so = body.get("stream_options")
    if so is not None and not isinstance(so, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    include_usage = bool(so and so.get("include_usage"))
    # passthrough
    extra = {k: v for k, v in body.items() if k not in handled}
    if needs_logprobs:
        for key in _LOGPROB_FIELDS:
            extra.pop(key, None)
    return RequestPlan(
        endpoint=endpoint, requested_model=requested, model=model, prompt=prompt, question=question, n=n,
        stream=stream, include_usage=include_usage, method=method, policy=policy, n_max=n_max,
        max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, deadline_s=deadline_s,
        return_samples=return_samples, extra_body=extra, sources=sources,
    )  # fmt: skip


@functools.lru_cache(maxsize=64)
def _policy_keys(name: str) -> tuple[str, ...]:
    from optscale.policies.registry import POLICIES

    return tuple(p for p in inspect.signature(_factory_class(POLICIES[name])).parameters if p != "self")


@functools.lru_cache(maxsize=256)
def _cached_policy(method: str, overrides: tuple) -> Any:
    """Policies are pure (no per-problem state), so one instance per spec serves every request."""
    from optscale.policies import make_policy

    return make_policy(method, **dict(overrides))


def _make_policy(method: str, mparam: str, overrides: dict[str, Any], given: dict) -> Any:
    from optscale.policies.registry import POLICIES, parse_spec

    try:
        name, _ = parse_spec(method)
    except ParameterError as e:
        raise bad_request(f"bad method spec {method!r}: {e}", mparam) from None
    factory = POLICIES.get(name)
    if factory is None:
        raise bad_request(f"unknown method {name!r}; valid: {', '.join(POLICIES)}", mparam)
    cls = _factory_class(factory)
    if getattr(cls, "batch_only", False):
        raise bad_request(f"method {name!r} is a batch policy (it ranks a whole problem set); it cannot serve "
                          "single requests", mparam)
    valid = _policy_keys(name)
    for key in overrides:
        if key not in valid:
            raise bad_request(f"method {name!r} has no parameter {key!r} (its parameters: "
                              f"{', '.join(valid) or 'none'})", given[key][2])
    try:
        return _cached_policy(method, tuple(sorted(overrides.items())))
    except ParameterError as e:
        pname = getattr(e, "name", None)
        param = given[pname][2] if pname in given else mparam
        raise bad_request(f"invalid policy parameters for {method!r}: {e}", param) from None
