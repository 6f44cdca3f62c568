"""``optscale serve``: an OpenAI-compatible endpoint that answers with adaptive Best-of-N.

Point an OpenAI client at it; it samples from the real upstream (vLLM, SGLang, llama.cpp server, OpenAI)
or the embedded SmolLM2 model, scores the samples with the configured verifier, stops as early as the
policy allows and returns the best answer. See docs/SERVER.md.

Nothing heavy is imported here: ``create_app`` / ``ServerConfig`` / ``load_config`` load FastAPI,
prometheus_client and PyYAML on first use (``pip install 'optscale[server]'``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServerConfig", "create_app", "load_config"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from optscale.server.app import create_app

        return create_app
    if name in ("ServerConfig", "load_config"):
        from optscale.server import config

        return getattr(config, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
