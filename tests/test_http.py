"""One HTTP retry policy (optscale.online.http) shared by the OpenAI-compatible generator and the reward
endpoint scorer, exercised in process through an injected httpx.MockTransport."""

from __future__ import annotations

import asyncio
import email.utils
import json
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest

from optscale.errors import ParameterError
from optscale.online.generators import Completion, GenerationError
from optscale.online.http import Backoff, is_retryable, parse_retry_after
from optscale.online.openai_compat import OpenAICompatGenerator
from optscale.online.scorers import RewardEndpointScorer, ScoringError

pytestmark = pytest.mark.timeout(60)

CHAT_OK = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
}
POOL_OK = {"data": [{"index": 0, "data": [0.2, 0.8]}]}


@dataclass(frozen=True)
class Recording(Backoff):
    """Backoff that records (attempt, retry_after) of each delay and never waits."""

    calls: list = field(default_factory=list, compare=False)

    def delay(self, attempt, retry_after=None, rng=None):
        self.calls.append((attempt, retry_after))
        return 0.0


def transport(answers):
    """A MockTransport answering the scripted (status, json, headers) in order; records request bodies."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        status, body, headers = answers[min(len(seen) - 1, len(answers) - 1)]
        return httpx.Response(status, json=body, headers=headers or {})

    return httpx.MockTransport(handler), seen


def generator(answers, backoff, **kw):
    t, seen = transport(answers)
    return OpenAICompatGenerator("http://up.test/v1", "m", backoff=backoff, transport=t, **kw), seen


def scorer(answers, backoff, **kw):
    t, seen = transport(answers)
    return RewardEndpointScorer("http://rm.test", backoff=backoff, transport=t, **kw), seen


@pytest.mark.parametrize("status", [408, 409, 425, 429, 500, 503])
def test_generator_and_scorer_retry_the_same_statuses_and_honour_retry_after(status):
    def script(ok):
        return [(status, {"error": "busy"}, {"Retry-After": "7"}), (status, {}, None), (200, ok, None)]

    gb, sb = Recording(), Recording()
    g, gseen = generator(script(CHAT_OK), gb, max_retries=3)
    s, sseen = scorer(script(POOL_OK), sb, max_retries=3)

    async def main():
        out = await g.generate("hi", 1, max_tokens=4, temperature=0)
        await g.aclose()
        return out, await s.ascore("q", [Completion(text="a", tokens=1)])

    out, scores = asyncio.run(main())
    assert out[0].text == "x" and scores == [0.8]
    assert len(gseen) == len(sseen) == 3
    assert gb.calls == sb.calls == [(0, 7.0), (1, None)]
    assert g.usage.retries == 2


def test_retries_exhausted_and_non_retryable_errors_are_reported_alike():
    g, gseen = generator([(502, {"error": "down"}, None)], Recording(), max_retries=2)
    s, sseen = scorer([(502, {"error": "down"}, None)], Recording(), max_retries=2)
    with pytest.raises(GenerationError, match="after 3 attempts: HTTP 502") as ge:
        asyncio.run(g.generate("hi", 1, max_tokens=4, temperature=0))
    with pytest.raises(ScoringError, match=r"after 3 attempt\(s\): HTTP 502"):
        asyncio.run(s.ascore("q", [Completion(text="a", tokens=1)]))
    assert ge.value.attempts == 3 and ge.value.status == 502 and len(gseen) == len(sseen) == 3
    g, gseen = generator([(401, {"error": "key"}, None)], Recording(), max_retries=2)
    s, sseen = scorer([(401, {"error": "key"}, None)], Recording(), max_retries=2)
    with pytest.raises(GenerationError, match="not retried.*HTTP 401"):
        asyncio.run(g.generate("hi", 1, max_tokens=4, temperature=0))
    with pytest.raises(ScoringError, match="HTTP 401"):
        asyncio.run(s.ascore("q", [Completion(text="a", tokens=1)]))
    assert len(gseen) == len(sseen) == 1


def test_one_backoff_schedule_and_cap():
    b = Backoff(base=0.5, factor=2, max=8, jitter=0.25, max_retry_after=60)

    class Fixed:
        def __init__(self, u):
            self.u = u

        def random(self):
            return self.u

    assert [b.delay(k, None, Fixed(0.0)) for k in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.delay(2, None, Fixed(1.0)) == pytest.approx(1.5)  # jitter takes at most 25% off
    assert b.delay(0, 1000.0) == 60.0 and b.delay(0, 3.0) == 3.0
    # the scorer's `backoff=<seconds>` is the base delay of the same policy (its cap was 30 s before)
    s = RewardEndpointScorer("http://rm.test", backoff=0.25)
    assert s.backoff_policy == Backoff(base=0.25) and s.backoff_policy.delay(0, 45.0) == 45.0
    with pytest.raises(ParameterError, match="backoff"):
        RewardEndpointScorer("http://rm.test", backoff=-1)
    with pytest.raises(ParameterError, match="backoff"):
        Backoff(jitter=2)
    assert all(is_retryable(x) for x in (408, 409, 425, 429, 500, 599))
    assert not any(is_retryable(x) for x in (200, 400, 401, 404, 422))


def test_retry_after_forms():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert (
        parse_retry_after("5") == 5.0 and parse_retry_after(" 2.5 ") == 2.5 and parse_retry_after("-3") == 0.0
    )
    for bad in (None, "", "soon", "nan", "inf", "Wed, 99 Foo 2015"):
        assert parse_retry_after(bad) is None


def test_post_json_sends_what_client_post_sends_and_keeps_cookies():
    """post_json (the fast path of every HTTP edge) puts the same request on the wire as client.post and
    returns the same read response; cookies an upstream sets are stored and sent back (via client.post)."""
    from optscale.online.http import make_client, post_json

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"set-cookie": "affinity=w3; Path=/"} if len(seen) == 3 else {}
        return httpx.Response(200, json={"echo": json.loads(request.content)}, headers=headers)

    body = {"model": "m", "messages": [{"role": "user", "content": "é ∑ \\boxed{1}"}], "n": 4, "seed": None}

    async def go():
        client = make_client(timeout=7.0, headers={"Authorization": "Bearer k", "Content-Type": "application/json"},
                             max_keepalive=4, transport=httpx.MockTransport(handler))
        async with client:
            a = await client.post("http://up.test/v1/chat/completions", json=body)
            client.post = None  # the fast path never calls it
            b = await post_json(client, "http://up.test/v1/chat/completions", body)
            c = await post_json(client, "http://up.test/v1/chat/completions", body)  # sets a cookie
            del client.post  # with a cookie to send, post_json goes through client.post
            d = await post_json(client, "http://up.test/v1/chat/completions", body)
            return a, b, c, d, dict(client.cookies)

    a, b, c, d, jar = asyncio.run(go())
    ra, rb = seen[0], seen[1]
    assert (ra.method, ra.url, ra.content) == (rb.method, rb.url, rb.content)
    assert ra.headers.multi_items() == rb.headers.multi_items()
    assert ra.extensions["timeout"] == rb.extensions["timeout"] == httpx.Timeout(7.0).as_dict()
    assert (a.status_code, a.json(), a.headers.multi_items()) == (b.status_code, b.json(), b.headers.multi_items())
    assert b.request is not None and b.is_closed and c.is_closed
    assert jar == {"affinity": "w3"} and "cookie" not in seen[2].headers
    assert seen[3].headers["cookie"] == "affinity=w3" and d.json() == a.json()


@pytest.mark.parametrize("activation", ["none", "sigmoid", "softmax"])
@pytest.mark.parametrize("aggregation", ["mean", "min", "last", "product"])
@pytest.mark.parametrize("positive_index", [None, 0, 1])
def test_reward_endpoint_bare_number_scores_as_the_one_by_one_matrix(activation, aggregation, positive_index):
    """A bare number in 'data' (the fast path) gives exactly the score, or the same error, as [[number]]."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    s = RewardEndpointScorer("http://rm.test/pooling", activation=activation, aggregation=aggregation,
                             positive_index=positive_index)

    def outcome(item):
        try:
            return s.parse_item(item, 3)
        except ScoringError as e:
            return ("error", str(e))

    @settings(max_examples=150, deadline=None)
    @given(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                     st.floats(-1e-5, 1 + 1e-5), st.sampled_from([0, 1, 0.5, -1e-6, 1 + 1e-6, -800.0, 800.0])))
    def check(x):
        with np.errstate(over="ignore"):
            assert outcome({"data": x}) == outcome({"data": [[x]]})

    check()
