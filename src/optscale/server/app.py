"""The ``optscale serve`` application: an OpenAI-compatible proxy that answers each request with adaptive
Best-of-N (:class:`optscale.online.loop.AdaptiveLoop`) over an upstream server or the embedded model.

``create_app(config)`` returns a FastAPI app; everything is per app (generators, scorer, metrics
registry, admission control), so several apps can live in one process. Flow of one request:

1. authenticate (``Authorization: Bearer <key>`` when ``api_keys`` are configured), parse and validate
   the body into a :class:`~optscale.server.protocol.RequestPlan` (400/404 name the parameter);
2. admission: at most ``max_concurrent_requests`` requests are solved at once and at most ``max_queue``
   wait for a slot; beyond that the answer is 429 with ``Retry-After`` (nothing is queued unboundedly);
3. ``AdaptiveLoop.solve`` runs as a task. A watcher reads the ASGI ``receive`` channel; when the client
   disconnects, the task is cancelled, which cancels every in-flight upstream and scorer call;
4. the answer: the selected sample as an ordinary completion (the top-``n`` of the loop's ranking for
   ``n > 1``), ``usage`` = the exact sum of what the upstream reported over all samples drawn, and an
   ``optscale`` object mirrored in ``x-optscale-*`` headers; or, with ``stream: true``, SSE keep-alive
   comments while sampling, then the chosen answer in chunks, then the usage chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import time
import uuid
from typing import Any

from fastapi import Request  # module level: route signatures are resolved from these globals

from optscale.server.config import ServerConfig
from optscale.server.errors import APIError, bad_request, error_body, from_exception
from optscale.server.protocol import RequestPlan, alias_names, parse_request

__all__ = ["create_app"]

log = logging.getLogger("optscale.server")

#: how long a listing of the upstream's models is reused
MODELS_TTL_S = 30.0
#: least time between two listings forced by an unknown model name
MODELS_REFRESH_S = 5.0


# ------------------------------------------------------------------------------------------------------
# per-app state
# ------------------------------------------------------------------------------------------------------
class _Admission:
    """At most ``slots`` requests solved at once, at most ``queue`` waiting; else :class:`APIError` 429."""

    def __init__(self, slots: int, queue: int, retry_after: int, metrics: Any) -> None:
        self.slots, self.queue, self.retry_after, self.metrics = slots, queue, retry_after, metrics
        self.active = 0
        self.waiting = 0
        self._cond: asyncio.Condition | None = None

    async def acquire(self) -> None:
        if self._cond is None:
            self._cond = asyncio.Condition()
        if self.active >= self.slots:
            if self.waiting >= self.queue:
                raise APIError(
                    429,
                    f"the server is at capacity ({self.slots} requests in progress, {self.waiting} queued); "
                    f"retry after {self.retry_after} s",
                    code="server_overloaded",
                    headers={"Retry-After": str(self.retry_after)},
                    kind="overload",
                )
            self.waiting += 1
            self.metrics.queue_depth.set(self.waiting)
            try:
                async with self._cond:
                    await self._cond.wait_for(lambda: self.active < self.slots)
                    self.active += 1
            finally:
                self.waiting -= 1
                self.metrics.queue_depth.set(self.waiting)
        else:
            self.active += 1
        self.metrics.inflight.set(self.active)

    async def release(self) -> None:
        self.active -= 1
        self.metrics.inflight.set(self.active)
        if self._cond is not None:
            async with self._cond:
                self._cond.notify(1)


class _TimedScorer:
    """Delegates to a scorer and observes the latency of each ``ascore`` call (``optscale_scorer_seconds``);
    every other attribute is the wrapped scorer's."""

    def __init__(self, inner: Any, histogram: Any) -> None:
        self._inner = inner
        self._hist = histogram

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def ascore(self, question: str, completions: Any) -> list[float]:
        t0 = time.perf_counter()
        try:
            return await self._inner.ascore(question, completions)
        finally:
            self._hist.observe(time.perf_counter() - t0)

    def score(self, question: str, completions: Any) -> list[float]:
        t0 = time.perf_counter()
        try:
            return self._inner.score(question, completions)
        finally:
            self._hist.observe(time.perf_counter() - t0)


class _NoGenerator:
    """Placeholder generator for warming up a policy (never called)."""

    seed_per_sample = False

    async def generate(self, *a: Any, **k: Any) -> list:  # pragma: no cover - never called
        raise RuntimeError("warm-up only")


class ServerState:
    """Generators (one per upstream model and endpoint), the scorer, metrics and admission of one app."""

    def __init__(self, config: ServerConfig, *, scorer: Any = None, generator_factory: Any = None) -> None:
        from optscale.server.metrics import Metrics

        self.config = config
        self.metrics = Metrics()
        self.admission = _Admission(config.max_concurrent_requests, config.max_queue, config.retry_after_s,
                                    self.metrics)
        self._scorer_given = scorer
        self.scorer: Any = None
        self._generators: dict[tuple[str, str], Any] = {}
        self._generator_factory = generator_factory
        self._models: tuple[float, list[str]] | None = None
        self._prior_fn: Any = None
        self._prior_lock: asyncio.Lock | None = None
        self.started = time.time()

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Build the scorer (and load the embedded model) — errors surface before the port is bound."""
        from optscale.server.metrics import Metrics  # noqa: F401  (prometheus_client present)

        scorer = self._scorer_given
        if scorer is None and self.config.scorer.strip().lower() not in ("none", "off"):
            from optscale.online.scorers import make_scorer

            scorer = make_scorer(self.config.scorer)
        self.scorer = _TimedScorer(scorer, self.metrics.scorer_seconds) if scorer is not None else None
        if self.config.embedded:
            self.generator(self.config.served_model, "chat").load()
        self.warm_up()

    def warm_up(self) -> None:
        """Pay one-time costs (lazy imports of the answer parser, scipy, the policy's estimators) at
        start-up instead of in the first request."""
        from optscale.answers import extract_answer, get_equivalence
        from optscale.online.loop import AdaptiveLoop, SamplingConfig
        from optscale.policies import make_policy

        eq = get_equivalence(self.config.equiv)
        eq(extract_answer("so \\boxed{\\frac{1}{2}}") or "", extract_answer("the answer is 0.5") or "")
        default = make_policy(self.config.default_method())
        if getattr(default, "needs_prior", False):
            self._prior_fn = self._load_prior_fn(default)
        for spec in {self.config.default_method(), "optscale0", "bon"}:
            policy = make_policy(spec)
            if getattr(policy, "needs_scores", False) and self.scorer is None:
                continue
            with contextlib.suppress(Exception):
                AdaptiveLoop(_NoGenerator(), self.scorer, policy,
                             SamplingConfig(n_max=self.config.default_n_max())).warm_up()

    async def aclose(self) -> None:
        for gen in list(self._generators.values()):
            with contextlib.suppress(Exception):
                await gen.aclose()
        self._generators.clear()
        if self.scorer is not None:
            with contextlib.suppress(Exception):
                await self.scorer.aclose()

    # ---------------------------------------------------------------- pieces
    @property
    def batch_samples(self) -> bool | None:
        """Ask the upstream for a whole wave with ``n`` (it may fan out itself when the upstream ignores
        ``n``); the loop's default otherwise."""
        if self._generator_factory is None and not self.config.embedded and self.config.n_mode != "separate":
            return True
        return None

    @property
    def needs_logprobs(self) -> bool:
        return bool(self.scorer is not None and getattr(self.scorer, "needs_logprobs", False))

    def generator(self, model: str, endpoint: str) -> Any:
        """The generator for (model, endpoint), created once and reused, so that what it learns about the
        upstream (whether it honours ``n``) is remembered."""
        key = (model, endpoint)
        gen = self._generators.get(key)
        if gen is None:
            top = max(1, int(getattr(self.scorer, "top_logprobs", 0) or 0))
            cfg = self.config
            if self._generator_factory is not None:
                gen = self._generator_factory(model, endpoint)
            elif cfg.embedded:
                from optscale.online.local import LlamaCppGenerator

                gen = LlamaCppGenerator(model_path=cfg.model_path, top_logprobs=top, chat=endpoint == "chat")
            else:
                from optscale.online.openai_compat import OpenAICompatGenerator

                gen = OpenAICompatGenerator(
                    cfg.upstream, model, cfg.upstream_api_key, endpoint=endpoint,
                    concurrency=cfg.upstream_concurrency, timeout=cfg.upstream_timeout,
                    max_retries=cfg.upstream_max_retries, n_mode=cfg.n_mode, top_logprobs=top,
                    trust_env=False,
                )  # fmt: skip
            self._generators[key] = gen
        return gen

    async def upstream_models(self, *, fresh: bool = False) -> list[str]:
        """Model ids the upstream serves (GET {upstream}/models), reused for ``MODELS_TTL_S`` (``fresh``: at
        most once per ``MODELS_REFRESH_S``, for a model name not seen yet); the configured model is always
        included. A failed listing is cached like a successful one, so a down or stalled upstream costs one
        probe per period, not one per request."""
        cfg = self.config
        if cfg.embedded:
            return [cfg.served_model]
        now = time.monotonic()
        if self._models is not None:
            age = now - self._models[0]
            if age < (MODELS_REFRESH_S if fresh else MODELS_TTL_S):
                return self._models[1]
        ids = [cfg.served_model]
        try:
            data = await self._get_upstream("/models", timeout=min(5.0, cfg.upstream_timeout))
            for m in data.get("data") or []:
                if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"] not in ids:
                    ids.append(m["id"])
        except Exception as e:  # the listing is advisory: serve the configured model regardless
            log.warning("optscale serve: cannot list the upstream's models: %s", e)
            if self._models is not None:
                ids = self._models[1]
        self._models = (now, ids)
        return ids

    async def _get_upstream(self, path: str, timeout: float) -> dict:
        import httpx

        headers = {"Authorization": f"Bearer {self.config.upstream_api_key}"} if self.config.upstream_api_key else {}
        async with httpx.AsyncClient(timeout=timeout, trust_env=False) as client:
            r = await client.get(self.config.upstream.rstrip("/") + path, headers=headers)
            r.raise_for_status()
            return r.json()

    async def prior_for(self, policy: Any, question: str) -> Any:
        """OptScale^t's per-problem prior from the shipped predictor (as ``optscale run``), computed in a
        worker thread, one at a time (the predictor is loaded once, at start-up when the default method
        needs it, else on first use)."""
        if not getattr(policy, "needs_prior", False):
            return None
        if self._prior_lock is None:
            self._prior_lock = asyncio.Lock()
        async with self._prior_lock:
            if self._prior_fn is None:
                self._prior_fn = await asyncio.to_thread(self._load_prior_fn, policy)
            return await asyncio.to_thread(self._prior_fn, question)

    @staticmethod
    def _load_prior_fn(policy: Any) -> Any:
        """question -> (mu0, sigma0, sd_mu, sd_sigma) from the bundled predictor (as ``optscale run``)."""
        from optscale.predictor import load_default

        predictor = load_default()

        def fn(question: str) -> tuple[float, ...]:
            return tuple(float(x) for x in predictor.priors_for([question])[0])

        fn("What is 1 + 1?")  # loads the predictor's encoder now, not in a request
        return fn


# ------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------
def _finite(x: Any) -> Any:
    """``x`` with non-finite floats as None and numpy scalars as Python numbers (JSON-safe)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, str | int | bool) or x is None:
        return x
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    item = getattr(x, "item", None)  # numpy scalars
    return _finite(item()) if callable(item) and getattr(x, "ndim", None) == 0 else x


def _dumps(obj: Any) -> str:
    """Compact JSON; the (rare) non-finite values become null."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(_finite(obj), separators=(",", ":"), allow_nan=False, default=str)


async def _wait_disconnect(receive: Any) -> None:
    """Return when the ASGI server reports that the client went away."""
    while True:
        msg = await receive()
        if msg.get("type") == "http.disconnect":
            return


def _usage(result: Any) -> dict[str, int]:
    u = dict(result.usage or {})
    p, c = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": int(u.get("total_tokens") or p + c)}


def _optscale_info(plan: RequestPlan, result: Any, request_id: str) -> dict[str, Any]:
    info = dict(result.info or {})
    samples = result.samples or []
    out: dict[str, Any] = {
        "request_id": request_id,
        "method": plan.method,
        "n_max": plan.n_max,
        "samples": len(samples),
        "waves": list(result.waves or []),
        "stop_reason": result.stop_reason,
        "chosen": result.selected,
        "ranking": list(result.ranking or []),
        "scores": [s.get("score") for s in samples],
        "seed": plan.seed,
        "mu": info.get("mu"),
        "sigma": info.get("sigma"),
        "n_star": info.get("n_star"),
        "info": info,
        "scorer_usage": result.scorer_usage,
        "partial": bool(result.partial),
        "degraded": bool(result.degraded),
        "error": result.error,
        "sources": plan.sources,
    }
    if plan.return_samples:
        out["sample_details"] = [
            {k: s.get(k) for k in ("index", "answer", "class", "score", "tokens", "finish_reason", "seed", "text")}
            for s in samples
        ]
    return out


def _headers(meta: dict[str, Any]) -> dict[str, str]:
    h = {
        "x-optscale-request-id": meta["request_id"],
        "x-optscale-method": str(meta["method"]),
        "x-optscale-n-max": str(meta["n_max"]),
        "x-optscale-samples": str(meta["samples"]),
        "x-optscale-stop-reason": str(meta["stop_reason"]),
        "x-optscale-chosen": str(meta["chosen"]),
        "x-optscale-seed": str(meta["seed"]),
        "x-optscale-partial": "true" if meta["partial"] else "false",
        "x-optscale-degraded": "true" if meta["degraded"] else "false",
    }
    if meta.get("n_star") is not None:
        h["x-optscale-n-star"] = str(meta["n_star"])
    return h


def _choice_message(plan: RequestPlan, result: Any, idx: int, want_logprobs: bool) -> dict[str, Any]:
    """The chat message / completion text of sample ``idx``: the upstream's own choice object (tool calls,
    refusal, ... kept) when the generator kept it, else built from the sample text."""
    sample = result.samples[idx]
    comp = result.completions[idx] if result.completions and idx < len(result.completions) else None
    raw = getattr(comp, "raw", None) if comp is not None else None
    raw = raw if isinstance(raw, dict) else {}
    if plan.endpoint == "chat":
        msg = raw.get("message") if isinstance(raw.get("message"), dict) else None
        msg = dict(msg) if msg else {"role": "assistant", "content": sample.get("text") or ""}
        msg.setdefault("role", "assistant")
        choice = {"message": msg}
    else:
        choice = {"text": raw.get("text", sample.get("text") or "")}
    choice["finish_reason"] = raw.get("finish_reason", sample.get("finish_reason")) or "stop"
    choice["logprobs"] = raw.get("logprobs") if want_logprobs else None
    return choice


def _chosen(plan: RequestPlan, result: Any) -> list[int]:
    ranking = [i for i in (result.ranking or []) if 0 <= i < len(result.samples)]
    if not ranking and result.selected is not None and result.selected >= 0:
        ranking = [result.selected]
    if result.selected is not None and result.selected >= 0 and ranking and ranking[0] != result.selected:
        ranking = [result.selected] + [i for i in ranking if i != result.selected]
    return ranking[: plan.n]


def _split(text: str, size: int) -> list[str]:
    """Pieces of about ``size`` characters, cut after whitespace where possible."""
    if not text:
        return []
    out, i = [], 0
    while i < len(text):
        j = min(len(text), i + size)
        if j < len(text):
            k = text.rfind(" ", i + 1, j + 1)
            if k > i:
                j = k + 1
        out.append(text[i:j])
        i = j
    return out


# ------------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------------
def create_app(config: ServerConfig | None = None, *, scorer: Any = None, generator_factory: Any = None) -> Any:
    """The FastAPI application of ``optscale serve``.

    Args:
        config: settings (default ``ServerConfig()``: embedded SmolLM2 + self-certainty).
        scorer: a ready :class:`~optscale.online.scorers.Scorer` instead of ``config.scorer`` (library use).
        generator_factory: ``(model, endpoint) -> Generator`` instead of the configured upstream (library use).
    """
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    class _Stream(StreamingResponse):
        """A streaming response that always runs ``on_close`` (cancel the loop if still running, release the
        admission slot), also when the client is gone before the first byte."""

        on_close: Any = None

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                if self.on_close is not None:
                    await self.on_close()

    config = config or ServerConfig()
    state = ServerState(config, scorer=scorer, generator_factory=generator_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        await asyncio.to_thread(state.start)
        try:
            yield
        finally:
            await state.aclose()

    app = FastAPI(title="optscale serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.optscale = state
    m = state.metrics

    def error_response(err: APIError, endpoint: str | None = None) -> Any:
        m.errors.labels(err.kind).inc()
        if endpoint:
            m.requests.labels(endpoint, str(err.status)).inc()
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = "not_found" if exc.status_code == 404 else "method_not_allowed" if exc.status_code == 405 else None
        msg = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(error_body(msg, "invalid_request_error", None, code), status_code=exc.status_code)

    def authenticate(request: Request) -> None:
        if not config.api_keys:
            return
        auth = request.headers.get("authorization") or ""
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key",
                           kind="auth")
        token = token.strip().encode()
        if not any(hmac.compare_digest(token, k.encode()) for k in config.api_keys):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key", kind="auth")

    # ---------------------------------------------------------------- health, metrics, models
    @app.get("/health/live")
    async def live():
        return {"status": "ok"}

    @app.get("/health/ready")
    async def ready():
        checks: dict[str, Any] = {}
        ok = True
        if config.embedded:
            gen = state._generators.get((config.served_model, "chat"))
            loaded = gen is not None and getattr(gen, "_llm", None) is not None
            checks["upstream"] = {"ok": loaded, "detail": "embedded model loaded" if loaded else "not loaded"}
            ok &= loaded
        else:
            try:
                ids = (await state._get_upstream("/models", timeout=3.0)).get("data") or []
                checks["upstream"] = {"ok": True, "models": len(ids)}
            except Exception as e:
                checks["upstream"] = {"ok": False, "detail": f"{type(e).__name__}: {e}"}
                ok = False
        checks["scorer"] = await _scorer_ready(state.scorer)
        ok &= checks["scorer"]["ok"]
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                            status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics():
        body, ctype = m.render()
        return Response(body, media_type=ctype)

    @app.get("/v1/models")
    async def models(request: Request):
        authenticate(request)
        ids = await state.upstream_models()
        data = []
        for mid in ids:
            data.append({"id": mid, "object": "model", "created": int(state.started), "owned_by": "upstream"})
            for alias in alias_names(mid):
                data.append({"id": alias, "object": "model", "created": int(state.started), "owned_by": "optscale"})
        return {"object": "list", "data": data}

    # ---------------------------------------------------------------- completions
    # plain Starlette routes: the handler reads the raw request itself, so FastAPI's per-request dependency
    # resolution has nothing to do (and costs CPU on the hot path)
    async def chat(request: Request):
        return await handle(request, "chat")

    async def completions(request: Request):
        return await handle(request, "completions")

    app.add_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])

    async def handle(request: Request, endpoint: str):
        t0 = time.perf_counter()
        ep = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        request_id = uuid.uuid4().hex
        try:
            authenticate(request)
            raw = await request.body()
            try:
                body = json.loads(raw) if raw else None
            except (ValueError, UnicodeDecodeError) as e:
                raise bad_request(f"the request body is not valid JSON: {e}", None, code="invalid_json") from None
            if body is None:
                raise bad_request("the request body is empty; send a JSON object", None, code="invalid_body")
            models_known = set(await state.upstream_models())
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                from optscale.server.protocol import parse_alias

                if parse_alias(body["model"])[0] not in models_known and not config.embedded:
                    models_known = set(await state.upstream_models(fresh=True))
            headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-optscale-")}
            plan = parse_request(body, headers, endpoint, config, models_known.__contains__,
                                 needs_logprobs=state.needs_logprobs, has_scorer=state.scorer is not None)
            if config.embedded and plan.extra_body:
                name = sorted(plan.extra_body)[0]
                raise bad_request(f"{name!r} cannot be forwarded: the embedded model has no upstream to pass it to "
                                  "(start optscale serve with --upstream to forward fields)", name,
                                  code="unsupported_parameter")
            want_logprobs = bool(body.get("logprobs"))
            await state.admission.acquire()
        except APIError as err:
            return error_response(err, ep)
        # from here on the admission slot is held and must be released exactly once
        released = False

        async def release() -> None:
            nonlocal released
            if not released:
                released = True
                await state.admission.release()

        try:
            task = asyncio.create_task(solve(plan))
            watcher = asyncio.create_task(_wait_disconnect(request.receive))
        except BaseException:
            await release()
            raise
        streaming = False
        try:
            if not plan.stream:
                done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if task not in done:
                    return await cancelled(task, ep, t0)
                return finish_json(plan, task, ep, t0, request_id, want_logprobs)
            # streaming: wait up to keepalive_s before committing the 200 header, so that early failures
            # keep their HTTP status
            done, _ = await asyncio.wait({task, watcher}, timeout=config.keepalive_s,
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher in done and task not in done:
                return await cancelled(task, ep, t0)
            if task in done and task.exception() is not None:
                return finish_json(plan, task, ep, t0, request_id, want_logprobs)

            async def on_close() -> None:
                watcher.cancel()
                if not task.done():
                    await cancelled(task, ep, t0)
                await release()

            response = _Stream(stream_body(plan, task, watcher, ep, t0, request_id, want_logprobs),
                               media_type="text/event-stream",
                               headers={"cache-control": "no-cache", "x-optscale-request-id": request_id})
            response.on_close = on_close
            streaming = True
            return response
        finally:
            if not streaming:
                watcher.cancel()
                if not task.done():
                    task.cancel()
                await release()

    async def solve(plan: RequestPlan) -> Any:
        from optscale.online.loop import AdaptiveLoop, SamplingConfig

        cfg = SamplingConfig(
            n_max=plan.n_max, max_tokens=plan.max_tokens, temperature=plan.temperature, top_p=plan.top_p,
            seed=plan.seed, equiv=config.equiv, scorer_failure=config.scorer_failure,
            batch_samples=state.batch_samples,
        )  # fmt: skip
        gen = state.generator(plan.model, plan.endpoint)
        loop = AdaptiveLoop(gen, state.scorer, plan.policy, cfg)
        prior = await state.prior_for(plan.policy, plan.question)
        deadline = time.monotonic() + plan.deadline_s if plan.deadline_s else None
        return await loop.solve(plan.prompt, plan.question, key="", prior=prior,
                                extra_body=plan.extra_body or None, deadline=deadline, allow_partial=True)

    async def cancelled(task: asyncio.Task, ep: str, t0: float) -> Any:
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(_drain(task)), timeout=5.0)
        m.cancellations.labels("client_disconnect").inc()
        m.stop_reason.labels("cancelled").inc()
        m.requests.labels(ep, "499").inc()
        m.request_seconds.labels(ep).observe(time.perf_counter() - t0)
        return Response(status_code=499)

    async def _drain(task: asyncio.Task) -> None:
        with contextlib.suppress(BaseException):
            await task

    def outcome(plan: RequestPlan, task: asyncio.Task, request_id: str) -> tuple[Any, APIError | None]:
        """The loop's result, or the client-facing error when it failed before any usable sample."""
        exc = task.exception()
        if exc is not None:
            return None, from_exception(exc)
        result = task.result()
        if not result.samples or result.selected is None or result.selected < 0:
            if result.stop_reason == "deadline":
                return result, APIError(504, f"the deadline of {plan.deadline_s:g} s passed before any sample was "
                                        "drawn", param="optscale.deadline", code="deadline_exceeded",
                                        kind="deadline")
            why = result.error or "no sample could be drawn"
            return result, APIError(502, f"no answer: {why}", code="no_sample", kind="no_sample")
        return result, None

    def record(plan: RequestPlan, result: Any) -> None:
        drawn = len(result.samples)
        m.samples_drawn.inc(drawn)
        m.samples_saved.inc(max(0, plan.n_max - drawn))
        m.samples_per_request.observe(drawn)
        m.stop_reason.labels(str(result.stop_reason)).inc()
        u = _usage(result)
        m.upstream_tokens.labels("prompt").inc(u["prompt_tokens"])
        m.upstream_tokens.labels("completion").inc(u["completion_tokens"])
        if result.partial:
            m.errors.labels("partial").inc()
        if result.degraded:
            m.errors.labels("degraded").inc()

    def finish_json(plan, task, ep, t0, request_id, want_logprobs) -> Any:
        result, err = outcome(plan, task, request_id)
        if err is not None:
            if result is not None:
                record(plan, result)
            m.request_seconds.labels(ep).observe(time.perf_counter() - t0)
            return error_response(err, ep)
        record(plan, result)
        meta = _optscale_info(plan, result, request_id)
        choices = []
        for j, idx in enumerate(_chosen(plan, result)):
            c = _choice_message(plan, result, idx, want_logprobs)
            choices.append({"index": j, **c})
        body = {
            "id": f"{'chatcmpl' if plan.endpoint == 'chat' else 'cmpl'}-{request_id}",
            "object": "chat.completion" if plan.endpoint == "chat" else "text_completion",
            "created": int(time.time()),
            "model": plan.requested_model,
            "choices": choices,
            "usage": _usage(result),
            "optscale": meta,
        }
        m.requests.labels(ep, "200").inc()
        m.request_seconds.labels(ep).observe(time.perf_counter() - t0)
        return Response(_dumps(body), media_type="application/json", headers=_headers(meta))

    async def stream_body(plan, task, watcher, ep, t0, request_id, want_logprobs):
        """SSE: keep-alive comments while sampling, then the chosen answer in chunks, then usage, [DONE]."""
        try:
            while not task.done():
                done, _ = await asyncio.wait({task, watcher}, timeout=config.keepalive_s,
                                             return_when=asyncio.FIRST_COMPLETED)
                if watcher in done and task not in done:
                    await cancelled(task, ep, t0)
                    return
                if task not in done:
                    yield ": keep-alive\n\n"
            watcher.cancel()
            result, err = outcome(plan, task, request_id)
            if err is not None:
                if result is not None:
                    record(plan, result)
                m.errors.labels(err.kind).inc()
                m.requests.labels(ep, str(err.status)).inc()
                yield f"data: {_dumps(err.body())}\n\n"
                return
            record(plan, result)
            meta = _optscale_info(plan, result, request_id)
            created = int(time.time())
            cid = f"{'chatcmpl' if plan.endpoint == 'chat' else 'cmpl'}-{request_id}"
            obj = "chat.completion.chunk" if plan.endpoint == "chat" else "text_completion"

            def chunk(choices: list, **extra: Any) -> str:
                c = {"id": cid, "object": obj, "created": created, "model": plan.requested_model,
                     "choices": choices, **extra}
                return f"data: {_dumps(c)}\n\n"

            chosen = _chosen(plan, result)
            last = len(chosen) - 1
            for j, idx in enumerate(chosen):
                c = _choice_message(plan, result, idx, want_logprobs)
                if plan.endpoint == "chat":
                    msg = c["message"]
                    yield chunk([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}])
                    for piece in _split(msg.get("content") or "", config.stream_chunk_chars):
                        yield chunk([{"index": j, "delta": {"content": piece}, "logprobs": None,
                                      "finish_reason": None}])
                    rest = {k: v for k, v in msg.items() if k not in ("role", "content") and v is not None}
                    if rest.get("tool_calls"):
                        rest["tool_calls"] = [{"index": t, **tc} for t, tc in enumerate(rest["tool_calls"])]
                    if rest:
                        yield chunk([{"index": j, "delta": rest, "logprobs": None, "finish_reason": None}])
                    final = [{"index": j, "delta": {}, "logprobs": c.get("logprobs"),
                              "finish_reason": c["finish_reason"]}]
                else:
                    for piece in _split(c["text"], config.stream_chunk_chars):
                        yield chunk([{"index": j, "text": piece, "logprobs": None, "finish_reason": None}])
                    final = [{"index": j, "text": "", "logprobs": c.get("logprobs"),
                              "finish_reason": c["finish_reason"]}]
                if j == last and not plan.include_usage:
                    yield chunk(final, optscale=meta)
                else:
                    yield chunk(final)
            if plan.include_usage:
                yield chunk([], usage=_usage(result), optscale=meta)
            yield "data: [DONE]\n\n"
            m.requests.labels(ep, "200").inc()
            m.request_seconds.labels(ep).observe(time.perf_counter() - t0)
        finally:
            watcher.cancel()

    return app


async def _scorer_ready(scorer: Any) -> dict[str, Any]:
    """Readiness of the scorer: in-process scorers are ready once built; an HTTP scorer (reward endpoint,
    judge) must answer its host (any HTTP status below 500)."""
    if scorer is None:
        return {"ok": True, "detail": "no scorer"}
    inner = getattr(scorer, "_inner", scorer)
    url = getattr(inner, "url", None)
    gen = getattr(inner, "generator", None)
    if url is None and gen is not None and getattr(gen, "base_url", None):
        url = gen.base_url.rstrip("/") + "/models"
    if not url:
        return {"ok": True, "detail": f"{getattr(inner, 'name', type(inner).__name__)} (in-process)"}
    import httpx

    try:
        async with httpx.AsyncClient(timeout=3.0, trust_env=False) as client:
            r = await client.get(url)
        ok = r.status_code < 500
        return {"ok": ok, "detail": f"{url}: HTTP {r.status_code}"}
    except Exception as e:
        return {"ok": False, "detail": f"{url}: {type(e).__name__}: {e}"}


def app_from_env() -> Any:
    """App factory for ``uvicorn --workers N`` (``optscale serve --workers N``): the settings come from
    ``$OPTSCALE_SERVE_CONFIG_JSON``, written by the parent process after validation."""
    import os

    d = json.loads(os.environ["OPTSCALE_SERVE_CONFIG_JSON"])
    d["api_keys"] = tuple(d.get("api_keys") or ())
    return create_app(ServerConfig(**d))
