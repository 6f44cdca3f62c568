"""optscale serve over HTTP: the official openai client against the server, whose upstream is a fast
loopback fake (tests/fake_upstream.py, which records every request and every client disconnect) and whose
scorer is the fake's vLLM-style /pooling endpoint. Faults: upstream killed / stalled / failing, scorer down
or returning NaN, client disconnect, overload, malformed bodies, wrong keys."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("openai")
pytest.importorskip("prometheus_client")

import httpx  # noqa: E402
import openai  # noqa: E402
from fake_upstream import TOKENS, FakeUpstream  # noqa: E402
from serve_util import running  # noqa: E402

from optscale.server import ServerConfig, create_app  # noqa: E402

pytestmark = pytest.mark.timeout(120)

KEY = "test-key"
MSG = [{"role": "user", "content": "What is 1 + 1? Put the answer in \\boxed{}."}]


def config(fake: FakeUpstream, **kw) -> ServerConfig:
    base = dict(upstream=fake.url, model="fake", scorer=f"reward-endpoint:http://127.0.0.1:{fake.port}/pooling,"
                "max_retries=0,timeout=5", upstream_max_retries=0, upstream_timeout=10, api_keys=(KEY,),
                keepalive_s=0.2, method="optscale0", n_max=8)  # fmt: skip
    base.update(kw)
    return ServerConfig(**base)


@pytest.fixture
def fake():
    with FakeUpstream() as f:
        yield f


@pytest.fixture
def server(fake):
    """(fake upstream, API root of optscale serve in front of it)."""
    with running(create_app(config(fake))) as url:
        yield fake, url


def client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=60, **kw)


def upstream_usage(fake: FakeUpstream, path: str = "/v1/chat/completions") -> tuple[int, int]:
    """Sum of the usage the fake reported over every completion request it answered (recomputed from the
    recorded bodies with the fake's own rule)."""
    from fake_upstream import TOKENS

    p = c = 0
    for r in fake.requests:
        b = r["body"]
        if not r["path"].endswith(path):
            continue
        n = int(b.get("n") or 1) if fake.mode["n"] == "honour" else 1
        text = b["messages"][-1]["content"] if "messages" in b else b["prompt"]
        p += 5 + len(text) // 8
        c += TOKENS * n
    return p, c


# ------------------------------------------------------------------------------------------------ basics
def test_chat_completion_usage_metadata_and_headers(server):
    fake, url = server
    raw = client(url).chat.completions.with_raw_response.create(
        model="fake", messages=MSG, extra_body={"optscale": {"n_max": 6, "k": 2, "seed": 3, "return_samples": True}})
    r = raw.parse()
    meta = r.model_extra["optscale"]
    # samples stay within [k, n_max]; the answer is one ordinary choice
    assert 2 <= meta["samples"] <= 6 and len(r.choices) == 1
    assert r.choices[0].message.role == "assistant" and "\\boxed{" in r.choices[0].message.content
    chosen = meta["sample_details"][meta["chosen"]]
    assert r.choices[0].message.content == chosen["text"]
    assert meta["scores"][meta["chosen"]] == max(meta["scores"])  # best-of by score
    # usage is the exact sum of what the upstream reported for every sample drawn
    p, c = upstream_usage(fake)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (p, c, p + c)
    assert sum(len(w) if isinstance(w, list) else w for w in meta["waves"]) == meta["samples"]
    # headers mirror the optscale object
    h = raw.headers
    assert h["x-optscale-samples"] == str(meta["samples"]) and h["x-optscale-stop-reason"] == meta["stop_reason"]
    assert h["x-optscale-chosen"] == str(meta["chosen"]) and h["x-optscale-seed"] == "3"
    assert h["x-optscale-partial"] == "false" and meta["partial"] is False and meta["degraded"] is False
    assert meta["mu"] is not None and meta["sigma"] is not None  # OptScale's fitted parameters
    # the optscale fields never reach the upstream
    assert all("optscale" not in q["body"] for q in fake.requests)
    assert all(q["body"]["model"] == "fake" for q in fake.requests)


def test_judge_scorer_usage_is_the_exact_sum_of_the_judge_requests(fake):
    """An LLM judge's own upstream requests are reported in ``optscale.scorer_usage`` (not in ``usage``)."""
    fake.configure(judge=True)
    cfg = config(fake, scorer=f"judge:{fake.url},model=fake,top_k=5", method="bon")
    with running(create_app(cfg)) as url:
        r = client(url).chat.completions.create(model="fake", messages=MSG,
                                                extra_body={"optscale": {"n_max": 3, "seed": 1}})
    meta = r.model_extra["optscale"]
    assert meta["samples"] == 3 and all(0.0 < s < 1.0 for s in meta["scores"])
    judge = [q for q in fake.requests if q["body"].get("max_tokens") == 1]
    assert len(judge) == 3  # one judge call per sample
    p = sum(5 + len(q["body"]["messages"][-1]["content"]) // 8 for q in judge)
    c = sum(TOKENS for _ in judge)
    assert meta["scorer_usage"] == {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                                    "requests": 3}
    # the answer's usage is the policy samples' only
    sp, sc = upstream_usage(fake)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (sp - p, sc - c)


def test_seeded_requests_repeat_and_top_n(server):
    fake, url = server
    c = client(url)
    kw = dict(model="fake", messages=MSG, n=3, seed=42, extra_body={"optscale": {"n_max": 6, "method": "bon"}})
    a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    assert [ch.message.content for ch in a.choices] == [ch.message.content for ch in b.choices]
    assert a.model_extra["optscale"]["scores"] == b.model_extra["optscale"]["scores"]
    assert a.model_extra["optscale"]["samples"] == 6 and len(a.choices) == 3
    scores = a.model_extra["optscale"]["scores"]
    ranked = [scores[i] for i in a.model_extra["optscale"]["ranking"]]
    assert ranked == sorted(ranked, reverse=True)  # top-n by score
    assert [ch.index for ch in a.choices] == [0, 1, 2]


def test_alias_and_headers_choose_the_policy(server):
    fake, url = server
    c = client(url)
    r = c.chat.completions.create(model="optscale-bon:fake", messages=MSG, extra_headers={"X-OptScale-N-Max": "3"})
    assert r.model == "optscale-bon:fake"
    meta = r.model_extra["optscale"]
    assert meta["method"] == "bon" and meta["samples"] == 3 and meta["sources"] == {
        "method": "alias", "n_max": "header", "seed": "random"}
    ids = [m.id for m in c.models.list().data]
    assert {"fake", "fake-2", "optscale:fake", "optscale-bon:fake", "optscale-optscale0:fake-2"} <= set(ids)


def test_passthrough_fields_reach_the_upstream_unchanged_and_tool_calls_come_back(server):
    fake, url = server
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    r = client(url).chat.completions.create(
        model="fake", messages=MSG, tools=tools, tool_choice="auto", response_format={"type": "text"}, stop=["\n\n"],
        extra_body={"top_k": 20, "chat_template_kwargs": {"enable_thinking": False},
                    "optscale": {"method": "bon", "n_max": 2}})  # fmt: skip
    for q in fake.requests:
        b = q["body"]
        assert b["tools"] == tools and b["tool_choice"] == "auto" and b["top_k"] == 20 and b["stop"] == ["\n\n"]
        assert b["response_format"] == {"type": "text"} and b["chat_template_kwargs"] == {"enable_thinking": False}
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"x": 1}


def test_streaming_matches_the_non_streamed_answer(server):
    fake, url = server
    c = client(url)
    kw = dict(model="fake", messages=MSG, seed=5, extra_body={"optscale": {"n_max": 4, "method": "bon"}})
    full = c.chat.completions.create(**kw)
    fake.reset()
    chunks = list(c.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content and len(chunks) >= 4
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    last = chunks[-1]
    assert last.choices == [] and last.usage.total_tokens == full.usage.total_tokens
    p, cc = upstream_usage(fake)
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (p, cc)
    assert last.model_extra["optscale"]["samples"] == 4


def test_streaming_sends_keepalive_comments_while_sampling(fake):
    fake.configure(delay=0.25)
    with running(create_app(config(fake, keepalive_s=0.1))) as url:
        with httpx.stream("POST", f"{url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json={"model": "fake", "messages": MSG, "stream": True,
                                "optscale": {"method": "bon", "n_max": 2}}, timeout=30) as r:
            lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert lines.count(": keep-alive") >= 1 and lines[-1] == "data: [DONE]"
    assert lines.index(": keep-alive") < min(i for i, x in enumerate(lines) if x.startswith("data:"))


def test_streaming_failure_after_the_header_is_an_error_event(fake):
    fake.configure(stall=True)  # the 200 header goes out after keepalive_s; then the upstream times out
    with running(create_app(config(fake, keepalive_s=0.1, upstream_timeout=0.6))) as url:
        with client(url) as c, pytest.raises(openai.APIError) as e:
            list(c.chat.completions.create(model="fake", messages=MSG, stream=True))
        assert "did not answer in time" in e.value.message
        m = httpx.get(url.replace("/v1", "/metrics")).text
        assert 'optscale_errors_total{kind="upstream_timeout"} 1.0' in m


def test_async_client_concurrent_requests(server):
    fake, url = server

    async def go():
        ac = openai.AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0)
        rs = await asyncio.gather(*(ac.chat.completions.create(
            model="fake", messages=MSG, seed=i, extra_body={"optscale": {"method": "bon", "n_max": 3}})
            for i in range(5)))  # fmt: skip
        await ac.close()
        return rs

    rs = asyncio.run(go())
    assert all(r.model_extra["optscale"]["samples"] == 3 for r in rs)
    assert sum(r.usage.total_tokens for r in rs) == sum(upstream_usage(fake))


def test_completions_endpoint(server):
    fake, url = server
    r = client(url).completions.create(model="fake", prompt="1+1=", max_tokens=8,
                                       extra_body={"optscale": {"method": "bon", "n_max": 2}})
    assert r.object == "text_completion" and "\\boxed{" in r.choices[0].text
    assert all(q["path"] == "/v1/completions" and q["body"]["prompt"] == "1+1=" for q in fake.requests)
    assert r.usage.total_tokens == sum(upstream_usage(fake, "/v1/completions"))
    chunks = list(client(url).completions.create(model="fake", prompt="1+1=", max_tokens=8, stream=True, seed=4,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"optscale": {"method": "bon", "n_max": 2}}))
    full = client(url).completions.create(model="fake", prompt="1+1=", max_tokens=8, seed=4,
                                          extra_body={"optscale": {"method": "bon", "n_max": 2}})
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert chunks[-1].usage.total_tokens == full.usage.total_tokens


# ------------------------------------------------------------------------------------------------ upstream n
@pytest.mark.parametrize("behaviour", ["ignore", "reject"])
def test_upstream_without_n_gets_a_fan_out_with_distinct_seeds(fake, behaviour):
    fake.configure(n=behaviour)
    with running(create_app(config(fake))) as url:
        c = client(url)
        for seed in (1, 2):
            r = c.chat.completions.create(model="fake", messages=MSG, seed=seed,
                                          extra_body={"optscale": {"method": "bon", "n_max": 4}})
            assert r.model_extra["optscale"]["samples"] == 4
    bodies = [q["body"] for q in fake.requests]
    later = [b for b in bodies if int(b.get("n") or 1) == 1]
    # the second request goes straight to n=1 requests (remembered per upstream), with distinct seeds
    assert [int(b.get("n") or 1) for b in bodies[-4:]] == [1, 1, 1, 1]
    assert len({b["seed"] for b in bodies[-4:]}) == 4
    assert len(later) >= 7


def test_upstream_honouring_n_gets_one_request_per_wave(server):
    fake, url = server
    client(url).chat.completions.create(model="fake", messages=MSG,
                                        extra_body={"optscale": {"method": "bon", "n_max": 4}})
    assert [int(q["body"].get("n") or 1) for q in fake.requests] == [4]


# ------------------------------------------------------------------------------------------------ errors
def test_auth_errors(server):
    fake, url = server
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).chat.completions.create(model="fake", messages=MSG)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    r = httpx.post(f"{url}/chat/completions", json={"model": "fake", "messages": MSG})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert fake.requests == []
    assert httpx.get(url.replace("/v1", "/health/live")).status_code == 200  # health needs no key


def test_malformed_and_unknown(server):
    fake, url = server
    h = {"Authorization": f"Bearer {KEY}", "content-type": "application/json"}
    r = httpx.post(f"{url}/chat/completions", content=b"{not json", headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(f"{url}/chat/completions", content=b"[]", headers=h)
    assert r.status_code == 400
    with pytest.raises(openai.NotFoundError) as e:
        client(url).chat.completions.create(model="nosuch", messages=MSG)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client(url).chat.completions.create(model="fake", messages=MSG, extra_body={"optscale": {"budget": 4}})
    assert e.value.param == "optscale.budget" and "budget" in e.value.message
    r = httpx.get(f"{url}/nosuch", headers=h)
    assert r.status_code == 404 and "error" in r.json()
    assert fake.requests == []  # nothing reached the upstream


def test_upstream_killed_is_503_and_not_ready(fake):
    with running(create_app(config(fake))) as url:
        assert httpx.get(url.replace("/v1", "/health/ready")).status_code == 200
        fake.close()
        with pytest.raises(openai.InternalServerError) as e:
            client(url).chat.completions.create(model="fake", messages=MSG)
        assert e.value.status_code == 503 and e.value.code == "upstream_unavailable"
        r = httpx.get(url.replace("/v1", "/health/ready"))
        assert r.status_code == 503 and r.json()["checks"]["upstream"]["ok"] is False


def test_upstream_stalled_is_504(fake):
    fake.configure(stall=True)
    with running(create_app(config(fake, upstream_timeout=0.5))) as url:
        with pytest.raises(openai.APIStatusError) as e:
            client(url).chat.completions.create(model="fake", messages=MSG)
        assert e.value.status_code == 504 and e.value.code == "upstream_timeout"


def test_upstream_error_is_502_and_its_4xx_is_forwarded(fake):
    fake.configure(status=500)
    with running(create_app(config(fake))) as url:
        with pytest.raises(openai.InternalServerError) as e:
            client(url).chat.completions.create(model="fake", messages=MSG)
        assert e.value.status_code == 502
        fake.configure(status=400)
        with pytest.raises(openai.BadRequestError) as e:
            client(url).chat.completions.create(model="fake", messages=MSG)
        assert "fake upstream error 400" in e.value.message


def test_failure_after_some_samples_returns_the_best_so_far_as_partial(fake):
    fake.configure(fail_after=1)  # the first wave (one request with n=k) succeeds, the next one fails
    with running(create_app(config(fake))) as url:
        r = client(url).chat.completions.with_raw_response.create(
            model="fake", messages=MSG, extra_body={"optscale": {"method": "optscale0", "k": 2, "n_max": 8}})
        meta = r.parse().model_extra["optscale"]
    assert meta["partial"] is True and meta["error"] and meta["samples"] == 2 and len(fake.requests) == 2
    assert r.headers["x-optscale-partial"] == "true" and "fake upstream failure" in meta["error"]
    assert r.parse().usage.completion_tokens == 2 * 8  # the answered request only


@pytest.mark.parametrize("fault", [{"score_status": 500}, {"score": "nan"}])
def test_scorer_failure_fails_or_degrades_to_majority_vote(fake, fault):
    fake.configure(**fault)
    with running(create_app(config(fake))) as url:
        with pytest.raises(openai.APIStatusError) as e:
            client(url).chat.completions.create(model="fake", messages=MSG)
        assert e.value.status_code == 502 and "scor" in e.value.message
    with running(create_app(config(fake, scorer_failure="vote"))) as url:
        raw = client(url).chat.completions.with_raw_response.create(model="fake", messages=MSG)
        meta = raw.parse().model_extra["optscale"]
        assert meta["degraded"] is True and raw.headers["x-optscale-degraded"] == "true" and meta["error"]
        m = httpx.get(url.replace("/v1", "/metrics")).text
        assert 'optscale_errors_total{kind="degraded"} 1.0' in m


def test_scorer_down_makes_ready_fail(fake):
    cfg = config(fake, scorer="reward-endpoint:http://127.0.0.1:9/pooling,max_retries=0")
    with running(create_app(cfg)) as url:
        r = httpx.get(url.replace("/v1", "/health/ready"))
        assert r.status_code == 503 and r.json()["checks"]["scorer"]["ok"] is False
        assert r.json()["checks"]["upstream"]["ok"] is True


# ------------------------------------------------------------------------------------------------ cancellation
@pytest.mark.parametrize("stream", [False, True])
def test_client_disconnect_cancels_the_upstream_request(fake, stream):
    fake.configure(stall=True)
    with running(create_app(config(fake, keepalive_s=0.2))) as url:
        body = {"model": "fake", "messages": MSG, "stream": stream, "optscale": {"method": "bon", "n_max": 4}}
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(timeout=httpx.Timeout(1.0)) as c:
            if stream:  # read the first keep-alive comment, then hang up
                with c.stream("POST", f"{url}/chat/completions", json=body, headers=headers) as r:
                    assert r.status_code == 200
                    first = next(r.iter_lines())
                    assert first == ": keep-alive"
                t_close = time.monotonic()
            else:
                with pytest.raises(httpx.ReadTimeout):
                    c.post(f"{url}/chat/completions", json=body, headers=headers)
                t_close = time.monotonic()
        deadline = time.monotonic() + 5
        while len(fake.disconnects) < len(fake.requests) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.requests and len(fake.disconnects) == len(fake.requests)  # every upstream call cancelled
        lag = max(d["t"] for d in fake.disconnects) - t_close
        assert lag < 1.0, lag
        m = httpx.get(url.replace("/v1", "/metrics")).text
        assert 'optscale_cancellations_total{reason="client_disconnect"} 1.0' in m
        assert "optscale_inflight_requests 0.0" in m


def test_client_disconnect_cancels_the_scorer_call(fake):
    fake.configure(score_delay=30)  # samples arrive at once; the reward endpoint stalls
    with running(create_app(config(fake))) as url:
        body = {"model": "fake", "messages": MSG, "optscale": {"method": "bon", "n_max": 2}}
        with httpx.Client(timeout=httpx.Timeout(1.0)) as c, pytest.raises(httpx.ReadTimeout):
            c.post(f"{url}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
        t_close = time.monotonic()
        deadline = time.monotonic() + 5
        while len(fake.disconnects) < fake.score_requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert fake.score_requests >= 1 and len(fake.disconnects) == fake.score_requests
        assert all(d["path"] == "/pooling" and d["t"] - t_close < 1.0 for d in fake.disconnects)


def test_upstream_killed_mid_request_is_503(fake):
    fake.configure(stall=True)
    with running(create_app(config(fake))) as url:
        threading.Timer(0.5, fake.close).start()
        with pytest.raises(openai.APIStatusError) as e:
            client(url).chat.completions.create(model="fake", messages=MSG)
        assert e.value.status_code == 503 and e.value.code == "upstream_unavailable"


# ------------------------------------------------------------------------------------------------ overload
def test_overload_is_429_with_retry_after_and_nothing_is_lost(fake):
    fake.configure(delay=0.4)
    cfg = config(fake, max_concurrent_requests=2, max_queue=2, retry_after_s=3)
    with running(create_app(cfg)) as url:
        results: list = [None] * 10

        def one(i: int) -> None:
            r = httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=30,
                           json={"model": "fake", "messages": MSG, "seed": i, "optscale": {"method": "bon", "n_max": 1}})
            results[i] = r

        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 4 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        for r in results:
            if r.status_code == 429:
                assert r.headers["retry-after"] == "3" and r.json()["error"]["code"] == "server_overloaded"
        # every accepted request was answered exactly once, with its own upstream request
        assert len(fake.requests) == codes.count(200)
        from optscale.online.loop import sample_seed

        accepted = [json.loads(r.request.content)["seed"] for r in results if r.status_code == 200]
        assert sorted(q["body"]["seed"] for q in fake.requests) == sorted(sample_seed(s, "", 0) for s in accepted)
        m = httpx.get(url.replace("/v1", "/metrics")).text
        assert f'optscale_errors_total{{kind="overload"}} {codes.count(429)}.0' in m


def test_deadline_returns_the_best_so_far_and_cancels_the_rest(fake):
    fake.configure(delay=0.3)  # wave 1 (n=2) arrives after 0.3 s, wave 2 would arrive after 0.6 s
    with running(create_app(config(fake))) as url:
        c = client(url)
        r = c.chat.completions.create(
            model="fake", messages=MSG, extra_body={"optscale": {"method": "optscale0", "k": 2, "n_max": 8,
                                                                 "deadline": 0.5}})
        meta = r.model_extra["optscale"]
        assert meta["stop_reason"] == "deadline" and meta["samples"] == 2 and len(fake.requests) == 2
        time.sleep(0.3)
        assert len(fake.disconnects) == 1  # the second wave's request was cancelled
        with pytest.raises(openai.APIStatusError) as e:  # nothing arrived in time
            c.chat.completions.create(model="fake", messages=MSG,
                                      extra_body={"optscale": {"method": "bon", "n_max": 2, "deadline": 0.1}})
        assert e.value.status_code == 504 and e.value.code == "deadline_exceeded"


def test_metrics_count_samples_and_savings(server):
    fake, url = server
    c = client(url)
    for s in range(2):
        c.chat.completions.create(model="fake", messages=MSG, seed=s, extra_body={"optscale": {"method": "bon", "n_max": 3}})
    m = httpx.get(url.replace("/v1", "/metrics")).text
    assert "optscale_samples_drawn_total 6.0" in m and "optscale_samples_saved_total 0.0" in m
    assert 'optscale_requests_total{endpoint="/v1/chat/completions",status="200"} 2.0' in m
    assert "optscale_scorer_seconds_count 2.0" in m and 'optscale_stop_reason_total{reason="policy"} 2.0' in m


# ------------------------------------------------------------------------------------------------ the command
def test_optscale_serve_command_serves_and_validates_its_config(fake, tmp_path):
    import os
    import subprocess
    import sys

    from serve_util import free_port

    from optscale.cli import main

    bad = tmp_path / "serve.yaml"
    bad.write_text("upstream:\n  url: http://127.0.0.1:1/v1\n  model: m\nlimits:\n  max_queue: -1\n")
    assert main(["serve", "--config", str(bad)]) == 2  # one clear error, nothing bound
    assert main(["serve", "--upstream", fake.url]) == 2  # --model is required with --upstream
    port = free_port()
    args = ["serve", "--upstream", fake.url, "--model", "fake", "--scorer", "none", "--method", "sc", "--n-max", "2",
            "--port", str(port), "--api-key", KEY, "--log-level", "warning"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", f"import sys; from optscale.cli import main; sys.exit(main({args!r}))"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "optscale serve did not become ready"
            time.sleep(0.1)
        r = client(f"http://127.0.0.1:{port}/v1").chat.completions.create(model="fake", messages=MSG)
        assert r.model_extra["optscale"]["method"] == "sc" and r.model_extra["optscale"]["samples"] == 2
    finally:
        proc.terminate()
        proc.wait(15)
