"""Scorers without torch: aggregation, self-certainty, LLM-as-judge, reward endpoint (local HTTP server), registry."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading

import pytest
from fakeserver import FakeServer

from optscale.errors import OptScaleError, ParameterError
from optscale.online.generators import Completion, Generator
from optscale.online.scorers import (
    JudgeScorer,
    RewardEndpointScorer,
    Scorer,
    ScoringError,
    SelfCertaintyScorer,
    aggregate,
    make_scorer,
    split_steps,
)


def comp(text: str = "x", logprobs=None, top=None) -> Completion:
    return Completion(text=text, tokens=len(logprobs or []), logprobs=logprobs, top_logprobs=top)


# ---------------------------------------------------------------------------------------------- aggregation
def test_aggregate_math():
    p = [0.9, 0.5, 0.8]
    assert aggregate(p, "mean") == pytest.approx(sum(p) / 3)
    assert aggregate(p, "min") == 0.5
    assert aggregate(p, "last") == 0.8
    assert aggregate(p, "product") == pytest.approx(0.9 * 0.5 * 0.8)
    assert aggregate([0.3, 0.0], "product") == 0.0
    with pytest.raises(ParameterError, match="aggregation"):
        aggregate(p, "max")
    with pytest.raises(ValueError):
        aggregate([], "mean")


def test_split_steps():
    assert split_steps("a\n\nb\n\n\n\n c \n\n") == ["a", "b", "c"]
    assert split_steps("   \n\n ") == []
    assert split_steps("one step") == ["one step"]


def test_scoring_error_names_sample():
    e = ScoringError(3, "boom", "judge")
    assert isinstance(e, OptScaleError)
    assert e.index == 3 and "sample 3" in str(e) and "boom" in str(e) and "judge" in str(e)


# ---------------------------------------------------------------------------------------------- self-certainty
def test_mean_logprob_formula():
    s = SelfCertaintyScorer()
    assert s.needs_logprobs and s.top_logprobs == 0 and s.method == "mean-logprob"
    lps = [[-0.1, -0.2, -0.3], [0.0, 0.0], [-5.0, -float("inf")], [-2.0, 1e-6]]
    out = s.score("q", [comp(logprobs=lp) for lp in lps])
    assert out[0] == pytest.approx(math.exp(-0.2))
    assert out[1] == 1.0
    assert out[2] == 0.0
    assert out[3] == pytest.approx(math.exp(-1.0))
    assert all(0.0 <= v <= 1.0 for v in out)


@pytest.mark.parametrize(
    ("lp", "msg"),
    [(None, "no token logprobs"), ([], "no tokens"), ([-0.1, float("nan")], "NaN"), ([-0.1, 0.5], "> 0")],
)
def test_mean_logprob_errors_name_the_sample(lp, msg):
    s = SelfCertaintyScorer()
    with pytest.raises(ScoringError, match=msg) as ei:
        s.score("q", [comp(logprobs=[-0.1]), comp(logprobs=lp)])
    assert ei.value.index == 1


def test_kl_self_certainty_formula():
    s = SelfCertaintyScorer("kl", top_k=3)
    assert s.top_logprobs == 3 and s.needs_logprobs
    flat = {"a": math.log(1 / 3), "b": math.log(1 / 3), "c": math.log(1 / 3)}
    assert s.score("q", [comp(top=[flat, flat])]) == [pytest.approx(0.0, abs=1e-12)]
    # peaked distribution -> close to 1; matches 1 - exp(-mean_t KL(U || q_t))
    probs = [[0.9, 0.05, 0.05], [0.5, 0.3, 0.2]]
    top = [{str(j): math.log(p) for j, p in enumerate(row)} for row in probs]
    kl = [-math.log(3) - sum(math.log(p) for p in row) / 3 for row in probs]
    expected = 1 - math.exp(-sum(kl) / 2)
    (got,) = s.score("q", [comp(top=top)])
    assert got == pytest.approx(expected)
    # top_k truncation keeps the k largest, renormalised (a 4th tiny alternative is ignored)
    top4 = [dict(t, z=math.log(1e-9)) for t in top]
    assert s.score("q", [comp(top=top4)]) == [pytest.approx(expected)]
    # unnormalised top-k logprobs (only the top of a larger vocabulary) are renormalised
    scaled = [{k: v - 1.0 for k, v in t.items()} for t in top]
    assert s.score("q", [comp(top=scaled)]) == [pytest.approx(expected)]


def test_kl_errors():
    s = SelfCertaintyScorer("kl")
    with pytest.raises(ScoringError, match="no top_logprobs") as ei:
        s.score("q", [comp(top=[{"a": -0.1, "b": -3}]), comp(top=None)])
    assert ei.value.index == 1
    with pytest.raises(ScoringError, match="token 1 has 1 top logprob"):
        s.score("q", [comp(top=[{"a": -0.1, "b": -3}, {"a": -0.01}])])
    with pytest.raises(ParameterError, match="method"):
        SelfCertaintyScorer("entropy")
    with pytest.raises(ParameterError, match="top_k"):
        SelfCertaintyScorer("kl", top_k=1)


def test_ascore_runs_in_thread_and_score_refuses_inside_loop():
    s = SelfCertaintyScorer()
    cs = [comp(logprobs=[-0.5])]

    async def main():
        got = await s.ascore("q", cs)
        with pytest.raises(RuntimeError, match="ascore"):
            # a sync-over-async scorer called from a running loop must say what to do
            JudgeScorer(FakeJudge({})).score("q", cs)
        return got

    assert asyncio.run(main()) == [pytest.approx(math.exp(-0.5))]


def test_base_scorer_without_implementation():
    with pytest.raises(NotImplementedError):
        Scorer().score("q", [])


# ---------------------------------------------------------------------------------------------- judge
class FakeJudge(Generator):
    """Returns, for each solution text, the first-token alternatives registered for it."""

    def __init__(self, table: dict[str, dict[str, float] | None], top_logprobs: int = 5):
        super().__init__()
        self.table, self.top_logprobs, self.calls = table, top_logprobs, []

    async def generate(
        self, prompt, n, *, seed=None, max_tokens, temperature, top_p=1.0, logprobs=False, stop=None
    ):
        self.calls.append(
            dict(prompt=prompt, n=n, max_tokens=max_tokens, temperature=temperature, logprobs=logprobs)
        )
        await asyncio.sleep(0)
        text = prompt[-1]["content"]
        key = next(k for k in self.table if f"Solution:\n{k}\n" in text)
        top = self.table[key]
        return [
            Completion(text="yes", tokens=1, logprobs=[-0.1], top_logprobs=None if top is None else [top])
        ]


def test_judge_probability():
    gen = FakeJudge(
        {
            "good": {
                "Yes": math.log(0.6),
                " yes": math.log(0.2),
                "No": math.log(0.1),
                "maybe": math.log(0.05),
            },
            "bad": {"no": math.log(0.7), "\u0120NO": math.log(0.1), "YES.": math.log(0.1)},
            "only-yes": {"yes": math.log(0.9), "hmm": math.log(0.05)},
        }
    )
    j = JudgeScorer(gen, system="You grade math.")
    out = j.score("What is 2+2?", [comp("good"), comp("bad"), comp("only-yes")])
    assert out[0] == pytest.approx(0.8 / 0.9)
    assert out[1] == pytest.approx(0.1 / 0.9)
    assert out[2] == 1.0
    call = gen.calls[0]
    assert (
        call["n"] == 1 and call["max_tokens"] == 1 and call["temperature"] == 0 and call["logprobs"] is True
    )
    assert call["prompt"][0] == {"role": "system", "content": "You grade math."}
    assert (
        "What is 2+2?" in call["prompt"][1]["content"] and "Answer yes or no." in call["prompt"][1]["content"]
    )


def test_judge_errors():
    gen = FakeJudge({"a": {"yes": -0.1, "no": -3.0}, "b": {"maybe": -0.1, "perhaps": -2.0}, "c": None})
    j = JudgeScorer(gen)
    with pytest.raises(ScoringError, match="neither 'yes' nor 'no'") as ei:
        j.score("q", [comp("a"), comp("b")])
    assert ei.value.index == 1
    with pytest.raises(ScoringError, match="no top_logprobs") as ei:
        j.score("q", [comp("c")])
    assert ei.value.index == 0
    with pytest.raises(ParameterError, match="prompt"):
        JudgeScorer(gen, prompt="no placeholder")
    with pytest.raises(ParameterError, match="top_logprobs=1"):
        JudgeScorer(FakeJudge({}, top_logprobs=1))


# ---------------------------------------------------------------------------------------------- reward endpoint
class Server(FakeServer):
    """The shared loopback fake server answering like a vLLM pooling API (or any other): ``respond(path,
    body, n)`` gives ``(status, payload, headers)`` for request ``n`` (1-based); ``requests`` are
    ``(path, body)`` pairs."""

    def __init__(self, respond):
        super().__init__()
        self.respond = respond
        self.url = self.base_url.removesuffix("/v1")

    def dispatch(self, path, body, i):
        status, payload, headers = self.respond(path, body, i + 1)
        return ("reply", status, payload, headers)

    @property
    def pairs(self) -> list[tuple[str, dict]]:
        return [(r["path"], r["body"]) for r in self.requests]


def pooling_ok(step_probs_by_text):
    """Respond like vLLM's /pooling with a STEP pooler: per-step [p_neg, p_pos] rows."""

    def respond(path, body, n):
        if "messages" in body:
            texts = [body["messages"][-1]["content"]]
        else:
            texts = body["input"]
        data = [{"index": i, "object": "pooling", "data": step_probs_by_text(t)} for i, t in enumerate(texts)]
        return (
            200,
            {
                "id": "pool-1",
                "object": "list",
                "created": 0,
                "model": "m",
                "data": data[::-1],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            },
            None,
        )

    return respond


def test_endpoint_pooling_messages_per_step():
    def probs(text):
        return [[1 - p, p] for p in [0.9, 0.5] if text] if "good" in text else [[0.8, 0.2]]

    with Server(pooling_ok(probs)) as srv:
        s = RewardEndpointScorer(
            srv.url, model="prm", system="sys", step_separator="<extra_0>", aggregation="mean"
        )
        assert s.url.endswith("/pooling") and s.api == "pooling"
        out = s.score("Q?", [comp("good step\n\nsecond"), comp("bad")])
        s.close()
    assert out == [pytest.approx(0.7), pytest.approx(0.2)]
    path, body = srv.pairs[0]
    assert path == "/pooling" and body["model"] == "prm"
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant"]
    assert body["messages"][1]["content"] == "Q?"
    contents = sorted(b["messages"][2]["content"] for _, b in srv.pairs)
    assert contents == ["bad<extra_0>", "good step<extra_0>second<extra_0>"]


def test_endpoint_classify_and_text_batch():
    def respond(path, body, n):
        assert path == "/classify"
        data = [
            {"index": i, "label": "x", "probs": [0.25, 0.75] if "A" in t else [0.9, 0.1], "num_classes": 2}
            for i, t in enumerate(body["input"])
        ]
        return 200, {"object": "list", "data": data}, None

    with Server(respond) as srv:
        s = RewardEndpointScorer(srv.url + "/classify", input_format="text", template="{question}|{response}")
        assert s.score("q", [comp("A"), comp("B"), comp("A")]) == [0.75, 0.1, 0.75]
        s.close()
    assert len(srv.requests) == 1 and srv.pairs[0][1]["input"] == ["q|A", "q|B", "q|A"]


def test_endpoint_activations():
    with Server(lambda p, b, n: (200, {"data": [{"index": 0, "data": 2.0}]}, None)) as srv:
        s = RewardEndpointScorer(srv.url, activation="sigmoid")
        assert s.score("q", [comp("a")]) == [pytest.approx(1 / (1 + math.exp(-2.0)))]
        s.close()
        raw = RewardEndpointScorer(srv.url)  # activation "none" but a logit > 1 -> clear error
        with pytest.raises(ScoringError, match="activation"):
            raw.score("q", [comp("a")])
        raw.close()
    with Server(
        lambda p, b, n: (200, {"data": [{"index": 0, "data": [[0.0, 1.0], [2.0, 0.0]]}]}, None)
    ) as srv:
        s = RewardEndpointScorer(srv.url, activation="softmax", aggregation="min")
        sm = [math.exp(1) / (1 + math.exp(1)), 1 / (1 + math.exp(2))]
        assert s.score("q", [comp("a")]) == [pytest.approx(min(sm))]
        s.close()


def test_endpoint_retries_then_succeeds():
    def respond(path, body, n):
        if n == 1:
            return 503, {"error": "loading"}, None
        if n == 2:
            return 429, {"error": "slow down"}, {"Retry-After": "0"}
        return 200, {"data": [{"index": 0, "data": [0.3, 0.6]}]}, None

    with Server(respond) as srv:
        s = RewardEndpointScorer(srv.url, backoff=0.0, max_retries=3)
        assert s.score("q", [comp("a")]) == [0.6]
        s.close()
    assert len(srv.requests) == 3


@pytest.mark.parametrize(
    ("status", "payload", "msg"),
    [
        (500, {"error": "x"}, "failed after 3 attempt.*HTTP 500"),
        (400, {"error": "bad request"}, "HTTP 400"),
        (200, b"not json", "invalid JSON"),
        (200, {"result": 1}, "no 'data' list"),
        (200, {"data": [{"index": 0, "data": [[0.1], [0.2, 0.3]]}]}, "malformed 'data'"),
        (200, {"data": [{"index": 0, "data": "high"}]}, "malformed 'data'"),
        (200, {"data": [{"index": 0, "embedding": [0.1]}]}, "expected an object with 'data'"),
        (200, {"data": []}, "0 entries"),
        (200, {"data": [{"index": 0, "data": []}]}, "empty 'data'"),
    ],
)
def test_endpoint_failures_raise_scoring_error(status, payload, msg):
    with Server(lambda p, b, n: (status, payload, None)) as srv:
        s = RewardEndpointScorer(srv.url, backoff=0.0, max_retries=2)
        with pytest.raises(ScoringError, match=msg) as ei:
            s.score("q", [comp("a")])
        s.close()
    assert ei.value.index == 0
    assert len(srv.requests) == (3 if status == 500 else 1)


def test_endpoint_unreachable():
    s = RewardEndpointScorer("http://127.0.0.1:9", max_retries=1, backoff=0.0, timeout=2.0)
    with pytest.raises(ScoringError, match="failed after 2 attempt"):
        s.score("q", [comp("a")])
    s.close()


def test_endpoint_parameters():
    with pytest.raises(ParameterError, match="url"):
        RewardEndpointScorer("localhost:8000")
    with pytest.raises(ParameterError, match="api"):
        RewardEndpointScorer("http://h/classify", api="pooling")
    with pytest.raises(ParameterError, match="activation"):
        RewardEndpointScorer("http://h", activation="relu")
    with pytest.raises(ParameterError, match="aggregation"):
        RewardEndpointScorer("http://h", aggregation="median")
    assert RewardEndpointScorer("http://h:1/", api="classify").url == "http://h:1/classify"


# ---------------------------------------------------------------------------------------------- registry
def test_make_scorer_registry():
    s = make_scorer("self-certainty")
    assert isinstance(s, SelfCertaintyScorer) and s.method == "mean-logprob" and s.name == "self-certainty"
    assert make_scorer("mean-logprob").method == "mean-logprob"
    k = make_scorer("self-certainty:method=kl,top_k=4")
    assert k.method == "kl" and k.top_logprobs == 4
    e = make_scorer("reward-endpoint:http://127.0.0.1:8000/classify,aggregation=last,max_retries=0")
    assert isinstance(e, RewardEndpointScorer) and e.api == "classify" and e.aggregation == "last"
    assert e.max_retries == 0
    j = make_scorer("judge", generator=FakeJudge({}))
    assert isinstance(j, JudgeScorer)
    for bad, match in [
        ("nope", "unknown scorer"),
        ("judge", "generator"),
        ("prm", "needs model"),
        ("reward-endpoint:", "needs url"),
        ("self-certainty:kl", "key=value"),
        ("self-certainty:colour=red", "bad option"),
        ("", "scorer"),
    ]:
        with pytest.raises(ParameterError, match=match):
            make_scorer(bad)


def test_import_stays_light():
    code = (
        "import sys, optscale.online.scorers as s; s.make_scorer('self-certainty'); "
        "print(sorted(m for m in ('httpx', 'torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_endpoint_client_survives_event_loops_and_threads():
    with Server(lambda p, b, n: (200, {"data": [{"index": 0, "data": [0.3, 0.6]}]}, None)) as srv:
        s = RewardEndpointScorer(srv.url)
        # sync calls each run their own event loop (as the runner does from a worker thread)
        assert s.score("q", [comp("a")]) == [0.6]
        assert s.score("q", [comp("a")]) == [0.6]
        box = []
        t = threading.Thread(target=lambda: box.append(s.score("q", [comp("a"), comp("b")])))
        t.start()
        t.join()
        assert box == [[0.6, 0.6]]

        async def twice():
            a = await s.ascore("q", [comp("a")])
            client = s._client
            b = await s.ascore("q", [comp("b")])
            assert s._client is client  # one client per loop, reused
            await s.aclose()
            return a + b

        assert asyncio.run(twice()) == [0.6, 0.6]
        assert asyncio.run(twice()) == [0.6, 0.6]


def test_judge_spec_on_openai_compatible_server():
    def respond(path, body, n):
        assert path == "/v1/chat/completions" and body["model"] == "judge-model"
        assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 7
        good = "Solution:\ngood\n" in body["messages"][-1]["content"]
        tops = [("Yes", math.log(0.7)), ("No", math.log(0.2)), ("I", math.log(0.1))]
        if not good:
            tops = [("No", math.log(0.6)), ("yes", math.log(0.3)), ("I", math.log(0.1))]
        content = [
            {
                "token": tops[0][0],
                "logprob": tops[0][1],
                "top_logprobs": [{"token": t, "logprob": lp} for t, lp in tops],
            }
        ]
        return (
            200,
            {
                "id": "c",
                "object": "chat.completion",
                "model": "judge-model",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": tops[0][0]},
                        "logprobs": {"content": content},
                        "finish_reason": "length",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
            },
            None,
        )

    with Server(respond) as srv:
        j = make_scorer(f"judge:{srv.url}/v1,model=judge-model,top_k=7,api_key=k")
        assert j.generator.top_logprobs == 7
        got = j.score("q", [comp("good"), comp("bad")])
        j.close()
    assert got == [pytest.approx(0.7 / 0.9), pytest.approx(0.3 / 0.9)]
    with pytest.raises(ParameterError, match="model"):
        make_scorer("judge:http://127.0.0.1:1/v1")
