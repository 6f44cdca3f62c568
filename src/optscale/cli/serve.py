"""``optscale serve``: an OpenAI-compatible endpoint (``/v1/chat/completions``, ``/v1/completions``) that
answers each request with adaptive Best-of-N over an upstream server or the embedded model.

With no arguments it serves the embedded SmolLM2-135M-Instruct with the self-certainty scorer on
http://127.0.0.1:8000/v1. ``--upstream URL --model NAME --scorer SPEC`` proxies a real deployment;
``--config FILE`` (YAML) sets everything else. Flags override the file. See docs/SERVER.md.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="OpenAI-compatible server: adaptive Best-of-N in front of an upstream model",
        description=(
            "Serve an OpenAI-compatible API (POST /v1/chat/completions and /v1/completions, GET /v1/models, "
            "/health/live, /health/ready, /metrics). Each request samples from the upstream (or the "
            "embedded model), scores the samples with --scorer, stops as early as the policy allows and "
            "returns the best answer. Clients choose the policy per request with extra_body={'optscale': "
            "{...}}, X-OptScale-* headers or a model alias 'optscale:<model>' (docs/SERVER.md)."
        ),
    )
    p.add_argument("--config", default=None, help="YAML config file (validated at start-up; secrets as "
                   "${ENV_VAR} or os.environ/ENV_VAR); the flags below override it")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.add_argument("--upstream", default=None, help="OpenAI-compatible upstream, e.g. http://127.0.0.1:8001/v1 "
                   "(vLLM, SGLang, llama.cpp server, OpenAI); default: the embedded SmolLM2 model")
    p.add_argument("--model", default=None, help="model name served by --upstream (required with it)")
    p.add_argument("--upstream-api-key", default=None,
                   help="API key for the upstream (default: $OPTSCALE_UPSTREAM_API_KEY if set)")
    p.add_argument("--model-path", default=None, help="GGUF file for the embedded model instead of SmolLM2")
    p.add_argument("--scorer", default=None, help="verifier spec as for 'optscale run' (default "
                   "self-certainty); e.g. reward-endpoint:http://127.0.0.1:8002/pooling, or none")
    p.add_argument("--scorer-failure", choices=("fail", "vote"), default=None,
                   help="when the scorer fails: fail the request (default) or select by majority vote and "
                   "mark the answer degraded")
    p.add_argument("--method", default=None, help="default policy spec (clients may override per request)")
    p.add_argument("--n-max", type=int, default=None, help="default N_max per request")
    p.add_argument("--max-concurrent-requests", type=int, default=None,
                   help="requests solved at once (default 32)")
    p.add_argument("--max-queue", type=int, default=None, help="requests waiting for a slot before 429 "
                   "(default 128)")
    p.add_argument("--api-key", action="append", default=None, dest="api_keys",
                   help="accepted client API key (repeatable; default: $OPTSCALE_API_KEYS, comma-separated; "
                   "none = no authentication)")
    p.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes (each a full, stateless server; default 1)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=main)
    return p


def build_config(args, env=None):
    """The validated ServerConfig from --config and the flags (flags win)."""
    import os

    from optscale.server.config import ServerConfig, load_config

    env = os.environ if env is None else env
    api_keys = args.api_keys
    if api_keys is None and env.get("OPTSCALE_API_KEYS"):
        api_keys = [k.strip() for k in env["OPTSCALE_API_KEYS"].split(",") if k.strip()]
    upstream_key = args.upstream_api_key if args.upstream_api_key is not None else env.get("OPTSCALE_UPSTREAM_API_KEY")
    overrides = dict(
        host=args.host, port=args.port, upstream=args.upstream, model=args.model, upstream_api_key=upstream_key,
        model_path=args.model_path, scorer=args.scorer, scorer_failure=args.scorer_failure, method=args.method,
        n_max=args.n_max, max_concurrent_requests=args.max_concurrent_requests, max_queue=args.max_queue,
        api_keys=tuple(api_keys) if api_keys is not None else None,
    )  # fmt: skip
    if args.config:
        return load_config(args.config, env=dict(env), **overrides)
    return ServerConfig(**{k: v for k, v in overrides.items() if v is not None})


def main(args) -> int:
    import importlib.util

    from optscale.errors import ParameterError

    missing = [m for m in ("fastapi", "uvicorn", "prometheus_client", "yaml") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"optscale serve: error: missing {', '.join(missing)}; install them with\n"
              "    pip install 'optscale[server]'", file=sys.stderr)
        return 2
    if args.workers < 1:
        raise ParameterError("--workers", f"must be >= 1, got {args.workers}")
    config = build_config(args)
    import uvicorn

    from optscale.server.app import create_app

    where = f"http://{config.host}:{config.port}/v1"
    what = f"{config.upstream} model {config.model}" if config.upstream else f"embedded {config.served_model}"
    print(f"optscale serve: {what}, scorer {config.scorer}, default method {config.default_method()} "
          f"(N_max={config.default_n_max()}) on {where}", file=sys.stderr)
    if args.workers > 1:
        import os

        # each worker rebuilds the app from the same validated settings (passed through the environment)
        os.environ["OPTSCALE_SERVE_CONFIG_JSON"] = _config_json(config)
        uvicorn.run("optscale.server.app:app_from_env", factory=True, host=config.host, port=config.port,
                    workers=args.workers, log_level=args.log_level, timeout_graceful_shutdown=10)
        return 0
    app = create_app(config)
    uvicorn.run(app, host=config.host, port=config.port, log_level=args.log_level, timeout_graceful_shutdown=10)
    return 0


def _config_json(config) -> str:
    import dataclasses
    import json

    d = dataclasses.asdict(config)
    d["api_keys"] = list(d["api_keys"])
    return json.dumps(d)
