"""optscale serve with real models: the official openai client against the server whose upstream is a
real ``python -m llama_cpp.server`` with the embedded SmolLM2 GGUF (which ignores ``n``, so the server
fans out), and against the default server (no arguments: embedded model + self-certainty scorer).
Short generations, for small shared CPUs."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")

import openai  # noqa: E402
from serve_util import running  # noqa: E402
from test_generators_local import llama_server, smol_gguf  # noqa: E402,F401

from optscale.server import ServerConfig, create_app  # noqa: E402

pytestmark = [pytest.mark.local_model, pytest.mark.slow, pytest.mark.timeout(300)]

MSG = [{"role": "user", "content": "What is 3 + 4? Answer with a number."}]
OPT = {"method": "optscale0:target=0.6,alpha=0.1", "k": 2, "n_max": 3, "return_samples": True}


@pytest.fixture(scope="module")
def proxied(llama_server):  # noqa: F811
    with urllib.request.urlopen(f"{llama_server}/models", timeout=5) as r:
        model = json.load(r)["data"][0]["id"]
    cfg = ServerConfig(upstream=llama_server, model=model, scorer="self-certainty", max_tokens=16, keepalive_s=0.5)
    with running(create_app(cfg)) as url:
        yield url, model


def check_usage(r, calls_per: str = "sample") -> None:
    meta = r.model_extra["optscale"]
    toks = [s["tokens"] for s in meta["sample_details"]]
    assert r.usage.completion_tokens == sum(toks) and r.usage.total_tokens == r.usage.prompt_tokens + sum(toks)
    # llama_cpp.server answers n with one choice: one request per sample, each reporting the prompt; the
    # embedded model decodes a wave from one prompt evaluation
    calls = meta["samples"] if calls_per == "sample" else len(meta["waves"])
    assert r.usage.prompt_tokens > 0 and r.usage.prompt_tokens % calls == 0


def test_sync_client_with_raw_response_against_llama_server(proxied):
    url, model = proxied
    c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=240)
    raw = c.chat.completions.with_raw_response.create(model=model, messages=MSG, seed=1, extra_body={"optscale": OPT})
    r = raw.parse()
    meta = r.model_extra["optscale"]
    assert 2 <= meta["samples"] <= 3 and raw.headers["x-optscale-samples"] == str(meta["samples"])
    assert r.choices[0].message.content == meta["sample_details"][meta["chosen"]]["text"]
    assert all(0 <= s <= 1 for s in meta["scores"])
    check_usage(r)
    # seeded requests repeat
    again = c.chat.completions.create(model=model, messages=MSG, seed=1, extra_body={"optscale": OPT})
    assert again.choices[0].message.content == r.choices[0].message.content
    assert again.model_extra["optscale"]["scores"] == meta["scores"]


def test_async_streaming_client_against_llama_server(proxied):
    url, model = proxied

    async def go():
        ac = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=240)
        stream = await ac.chat.completions.create(model=f"optscale:{model}", messages=MSG, seed=2, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"optscale": OPT})
        chunks = [ch async for ch in stream]
        full = await ac.chat.completions.create(model=model, messages=MSG, seed=2, extra_body={"optscale": OPT})
        await ac.close()
        return chunks, full

    chunks, full = asyncio.run(go())
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens
    check_usage(full)


def test_default_server_is_the_embedded_model(smol_gguf):  # noqa: F811
    cfg = ServerConfig(max_tokens=16)  # everything else as `optscale serve` with no arguments
    assert cfg.embedded and cfg.scorer == "self-certainty"
    with running(create_app(cfg)) as url:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=240)
        ids = [m.id for m in c.models.list().data]
        assert ids[0] == "smollm2-135m-instruct" and "optscale:smollm2-135m-instruct" in ids
        r = c.chat.completions.create(model=ids[0], messages=MSG, seed=3, extra_body={"optscale": OPT})
        meta = r.model_extra["optscale"]
        assert 2 <= meta["samples"] <= 3 and r.choices[0].message.content
        check_usage(r, calls_per="wave")
        chunks = list(c.chat.completions.create(model=ids[0], messages=MSG, seed=3, stream=True,
                                                extra_body={"optscale": OPT}))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content
        with pytest.raises(openai.BadRequestError) as e:  # nothing silently dropped: no upstream to forward to
            c.chat.completions.create(model=ids[0], messages=MSG, extra_body={"top_k": 5})
        assert e.value.param == "top_k"
