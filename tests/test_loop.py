"""The one adaptive loop (optscale.online.loop.AdaptiveLoop): usage summed exactly, cancellation that
really closes in-flight HTTP requests, partial / degraded results, deadline, stop_early, n refusal
remembered, seeded repeatability, checkpoint reuse and ranking.

Scripted generators decide per sample index (not by timing) which calls finish, fail or never finish,
so every outcome below is deterministic; the HTTP tests run the real OpenAICompatGenerator against the
loopback fake server.
"""

from __future__ import annotations

import asyncio
import math
import re
import time

import numpy as np
import pytest
from fakeserver import FakeServer

from optscale.errors import OptScaleError, ParameterError
from optscale.online.generators import Completion, GenerationError, Generator
from optscale.online.loop import AdaptiveLoop, LoopResult, SamplingConfig, sample_seed
from optscale.online.openai_compat import Backoff, OpenAICompatGenerator
from optscale.online.scorers import Scorer, ScoringError

pytestmark = pytest.mark.timeout(120)

KEY = "p1"
PROMPT = [{"role": "user", "content": "What is 1 + 1?"}]


def index_of(seed: int, key: str = KEY) -> int:
    return seed - sample_seed(0, key, 0)


class Scripted(Generator):
    """Sample ``i`` answers ``answers[i]`` with score ``scores[i]`` (written into the text for
    TextScorer). ``hold``: indices that never finish (until cancelled); ``fail``: indices that raise
    GenerationError; ``delay``: seconds before index ``i`` finishes."""

    name = "scripted"
    model = "scripted-1"

    def __init__(self, answers, scores=None, *, hold=(), fail=(), delay=None):
        super().__init__()
        self.answers = list(answers)
        self.scores = list(scores) if scores is not None else [0.5] * len(self.answers)
        self.hold, self.fail, self.delay = set(hold), set(fail), dict(delay or {})
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.bodies: list[dict | None] = []
        self.stops: list = []

    async def generate(
        self, prompt, n, *, seed=None, max_tokens, temperature, top_p=1.0, logprobs=False, stop=None,
        extra_body=None,
    ):  # fmt: skip
        self.bodies.append(extra_body)
        self.stops.append(stop)
        out = []
        for j in range(n):
            i = index_of(seed) + j
            self.started.append(i)
            try:
                if i in self.hold:
                    await asyncio.Event().wait()
                await asyncio.sleep(self.delay.get(i, 0))
            except asyncio.CancelledError:
                self.cancelled.append(i)
                raise
            if i in self.fail:
                raise GenerationError(f"sample {i} failed upstream", url="scripted://", status=500)
            tokens = 10 + i
            out.append(
                Completion(
                    text=f"sample {i} seed {seed + j} score={self.scores[i]} \\boxed{{{self.answers[i]}}}",
                    tokens=tokens,
                    finish_reason="stop",
                    usage={"prompt_tokens": 7, "completion_tokens": tokens, "total_tokens": 7 + tokens},
                )
            )
        return out


class TextScorer(Scorer):
    """The score written in the text; raises ScoringError for texts containing ``fail_on``."""

    name = "text-scorer"

    def __init__(self, fail_on: str | None = None):
        self.fail_on = fail_on
        self.calls = 0

    def score(self, question, completions):
        self.calls += 1
        out = []
        for i, c in enumerate(completions):
            if self.fail_on is not None and self.fail_on in c.text:
                raise ScoringError(i, "reward model unreachable", self.name)
            out.append(float(re.search(r"score=([0-9.]+)", c.text).group(1)))
        return out


class Waves:
    """Draw the given wave sizes, then stop; select the best score (first on ties), or the first sample
    without scores."""

    name = "waves"

    def __init__(self, *waves: int, needs_scores: bool = True):
        self.waves = waves
        self.needs_scores = needs_scores

    def next_wave(self, obs, n_max):
        done = len(obs)
        total = 0
        for w in self.waves:
            total += w
            if done < total:
                return total - done
        return 0

    def select(self, obs):
        if not len(obs):
            return -1
        s = np.where(np.isnan(obs.scores), -np.inf, obs.scores)
        return int(np.argmax(s))


class Target(Waves):
    """Waves plus the stop_early hook: stop once a drawn score reaches ``target``."""

    def __init__(self, *waves: int, target: float):
        super().__init__(*waves)
        self.target = target
        self.stop_calls: list[int] = []

    def stop_early(self, obs) -> bool:
        self.stop_calls.append(len(obs))
        return bool(np.any(obs.scores >= self.target))


def solve(gen, scorer, policy, n_max=16, *, config=None, **kw) -> LoopResult:
    cfg = config or SamplingConfig(n_max=n_max, equiv="exact")
    loop = AdaptiveLoop(gen, scorer, policy, cfg)
    return asyncio.run(loop.solve(PROMPT, "What is 1 + 1?", key=KEY, **kw))


def http_gen(srv: FakeServer, **kw) -> OpenAICompatGenerator:
    kw.setdefault("backoff", Backoff(base=0.01, max=0.05))
    kw.setdefault("trust_env", False)
    return OpenAICompatGenerator(srv.base_url, "fake", **kw)


def summed(usages) -> dict:
    p = sum(u["prompt_tokens"] for u in usages)
    c = sum(u["completion_tokens"] for u in usages)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


# ---------------------------------------------------------------------------------------------------
# usage, extra_body, raw, n refusal
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_choices,batch", [(None, False), (None, True), (1, True)])
def test_usage_is_the_exact_sum_of_what_the_upstream_reported(max_choices, batch):
    """Every request's reported usage counted once: one request per sample, native n, and a server
    that ignores n (the missing samples come from extra requests)."""
    with FakeServer(max_choices=max_choices) as srv:

        async def main():
            async with http_gen(srv) as g:
                cfg = SamplingConfig(n_max=8, equiv="exact", batch_samples=batch)
                loop = AdaptiveLoop(g, None, Waves(3, 2, needs_scores=False), cfg)
                return await loop.solve(PROMPT, "q", key=KEY, extra_body={"top_k": 7, "foo": {"bar": [1]}})

        res = asyncio.run(main())
    assert len(res.samples) == 5 and res.waves == [3, 2] and res.stop_reason == "policy"
    assert res.usage == summed(srv.usage)
    requests = len(srv.requests)
    assert res.usage["prompt_tokens"] == 5 * requests and res.usage["completion_tokens"] == 3 * 5
    if not batch:
        assert requests == 5
    elif max_choices is None:
        assert requests == 2  # one native n=3 and one n=2 request
    # extra_body forwarded unchanged in every request; raw keeps the upstream choice
    assert all(r["body"]["top_k"] == 7 and r["body"]["foo"] == {"bar": [1]} for r in srv.requests)
    for s, c in zip(res.samples, res.completions, strict=True):
        assert c.raw["message"]["content"] == s["text"] and c.raw["finish_reason"] == "stop"


def test_n_refusal_is_remembered_per_generator():
    """llama.cpp's server answers 400 to n != 1: the first such refusal switches the generator to one
    request per sample for good; usage stays exact."""

    def script(i, body):
        if body.get("n", 1) != 1:
            return ("reply", 400, {"error": {"message": "only n = 1 is supported"}})
        return ("ok",)

    with FakeServer(script) as srv:

        async def main():
            async with http_gen(srv) as g:
                assert g.server_honours_n is None
                loop = AdaptiveLoop(g, None, Waves(3, 2, needs_scores=False),
                                    SamplingConfig(n_max=8, equiv="exact", batch_samples=True))  # fmt: skip
                res = await loop.solve(PROMPT, "q", key=KEY)
                return g, res

        g, res = asyncio.run(main())
    assert g.server_honours_n is False and g.seed_per_sample is True
    assert [r["body"]["n"] for r in srv.requests].count(3) == 1  # probed once
    assert sum(r["body"]["n"] != 1 for r in srv.requests) == 1  # the n=2 wave went straight to n=1
    assert len(res.samples) == 5 and res.usage == summed(srv.usage)
    # the samples are those of one request per sample (seed + i)
    seeds = [int(c.text.split()[0][1:]) for c in res.completions]
    assert seeds == [sample_seed(0, KEY, i) for i in range(5)]


# ---------------------------------------------------------------------------------------------------
# cancellation
# ---------------------------------------------------------------------------------------------------


def test_cancelling_solve_closes_every_in_flight_request():
    def script(i, body):
        return ("hold",) if body["messages"][0]["content"] == "hold" else ("ok",)

    with FakeServer(script, stall_limit=30) as srv:

        async def main():
            async with http_gen(srv, concurrency=4, timeout=60) as g:
                loop = AdaptiveLoop(g, None, Waves(4, needs_scores=False), SamplingConfig(n_max=4))
                task = asyncio.create_task(loop.solve("hold", "q", key=KEY))
                for _ in range(200):
                    if srv.active_holds == 4:
                        break
                    await asyncio.sleep(0.025)
                assert srv.active_holds == 4
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
                # the server sees the 4 connections closed (not merely abandoned)
                for _ in range(200):
                    if srv.disconnects == 4:
                        break
                    await asyncio.sleep(0.025)
                # all 4 concurrency slots are free again: 4 fresh requests run at once
                fresh = await asyncio.wait_for(
                    g.generate("fresh", 4, seed=1, max_tokens=4, temperature=0), 10
                )
                return fresh

        fresh = asyncio.run(main())
    assert srv.disconnects == 4 and srv.active_holds == 0
    assert len(fresh) == 4


def test_cancelling_solve_cancels_scripted_calls_and_leaves_no_task():
    gen = Scripted([2] * 4, hold={1, 2, 3})

    async def main():
        loop = AdaptiveLoop(gen, None, Waves(4, needs_scores=False), SamplingConfig(n_max=4))
        task = asyncio.create_task(loop.solve(PROMPT, "q", key=KEY))
        while len(gen.started) < 4:
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

    assert asyncio.run(main()) == []
    assert sorted(gen.cancelled) == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------
# failures: siblings cancelled, partial, degraded
# ---------------------------------------------------------------------------------------------------


def test_generator_failure_cancels_siblings_and_raises():
    gen = Scripted([2] * 4, fail={1}, hold={2, 3}, delay={1: 0.01})
    with pytest.raises(GenerationError, match="sample 1 failed"):
        solve(gen, TextScorer(), Waves(4))
    assert sorted(gen.cancelled) == [2, 3]


def test_allow_partial_returns_the_best_so_far():
    gen = Scripted([2, 3, 2, 2], [0.4, 0.9, 0.5, 0.5], fail={2}, hold={3}, delay={2: 0.05})
    res = solve(gen, TextScorer(), Waves(4), allow_partial=True)
    assert res.partial and res.stop_reason == "error" and "sample 2 failed" in res.error
    assert [s["index"] for s in res.samples] == [0, 1] and res.waves == [2]
    assert res.selected == 1 and res.answer == "3" and res.ranking == [1, 0]
    assert gen.cancelled == [3]
    # a gap: sample 0 never finished, samples 1 and 3 did; index is the draw index
    gen = Scripted([2, 3, 2, 2], [0.4, 0.9, 0.5, 0.5], fail={2}, hold={0}, delay={2: 0.05})
    res = solve(gen, TextScorer(), Waves(4), allow_partial=True)
    assert (
        [s["index"] for s in res.samples] == [1, 3] and res.selected == 0 and res.samples[0]["answer"] == "3"
    )
    # a failure before any sample: nothing to return, the error is raised
    with pytest.raises(GenerationError):
        solve(Scripted([2] * 4, fail={0, 1, 2, 3}), TextScorer(), Waves(4), allow_partial=True)


def test_scorer_failure_vote_degrades_instead_of_failing():
    answers = [5, 7, 7, 9]
    cfg = SamplingConfig(n_max=8, equiv="exact", scorer_failure="vote")
    gen = Scripted(answers + [1] * 4, [0.9, 0.1, 0.2, 0.3] + [0.5] * 4)
    res = solve(gen, TextScorer(fail_on="sample 3 "), Waves(4, 4), config=cfg)
    assert res.degraded and not res.partial and res.stop_reason == "error"
    assert "reward model unreachable" in res.error
    assert len(res.samples) == 4 and res.waves == [4]  # no wave after the scorer failed
    assert res.answer == "7" and res.selected == 1  # majority vote, not the best score (sample 0)
    assert res.ranking[:3] == [1, 2, 0]
    assert res.samples[3]["score"] is None and res.info is None
    assert sorted(set(gen.started)) == [0, 1, 2, 3]
    with pytest.raises(ScoringError, match="unreachable"):
        solve(Scripted(answers), TextScorer(fail_on="sample 3 "), Waves(4))


def test_invalid_score_is_an_error_naming_the_sample():
    class Bad(TextScorer):
        def score(self, question, completions):
            return [math.nan for _ in completions]

    with pytest.raises(OptScaleError, match=r"sample \d the score nan"):
        solve(Scripted([1, 1]), Bad(), Waves(2))


# ---------------------------------------------------------------------------------------------------
# deadline, stop_early
# ---------------------------------------------------------------------------------------------------


def test_deadline_returns_what_arrived_and_cancels_the_rest():
    gen = Scripted([4, 4, 6, 6], [0.3, 0.6, 0.9, 0.9], hold={2, 3})
    t0 = time.monotonic()
    res = solve(gen, TextScorer(), Waves(4, 4), deadline=time.monotonic() + 0.3)
    assert time.monotonic() - t0 < 10
    assert res.stop_reason == "deadline" and not res.partial and res.error is None
    assert [s["index"] for s in res.samples] == [0, 1] and res.selected == 1 and res.waves == [2]
    assert sorted(gen.cancelled) == [2, 3]
    # a deadline already past: no sample, nothing selected
    res = solve(Scripted([4] * 4), TextScorer(), Waves(4), deadline=time.monotonic() - 1)
    assert res.stop_reason == "deadline" and res.samples == [] and res.selected == -1 and res.ranking == []


def test_stop_early_truncates_at_the_first_prefix_that_reaches_the_target():
    scores = [0.2, 0.5, 0.95, 0.1, 0.99, 0.1, 0.1, 0.1]
    # sample 2 arrives first, 0 and 1 later, 3.. never (until cancelled)
    gen = Scripted([1, 2, 3, 4, 5, 6, 7, 8], scores, hold={3, 4, 5, 6, 7}, delay={0: 0.05, 1: 0.1})
    policy = Target(8, 8, target=0.9)
    res = solve(gen, TextScorer(), policy)
    assert res.stop_reason == "target" and [s["index"] for s in res.samples] == [0, 1, 2]
    assert res.waves == [3] and res.selected == 2 and res.answer == "3"
    assert sorted(gen.cancelled) == [3, 4, 5, 6, 7]
    # evaluated on contiguous prefixes only (never on a prefix with a gap), in draw order
    assert policy.stop_calls == [1, 2, 3]
    # offline truncation: the first position whose prefix reaches the target
    assert len(res.samples) == next(i for i, s in enumerate(scores) if s >= 0.9) + 1


def test_stop_early_at_a_wave_end_skips_the_next_wave():
    gen = Scripted([1, 2, 3, 4], [0.1, 0.95, 0.2, 0.2])
    policy = Target(2, 2, target=0.9)
    res = solve(gen, TextScorer(), policy)
    assert res.stop_reason == "target" and len(res.samples) == 2 and sorted(set(gen.started)) == [0, 1]


def test_stop_reasons_policy_and_n_max():
    res = solve(Scripted([1] * 4), TextScorer(), Waves(2, 2), n_max=8)
    assert res.stop_reason == "policy" and len(res.samples) == 4
    res = solve(Scripted([1] * 4), TextScorer(), Waves(2, 2, 2), n_max=3)
    assert res.stop_reason == "n_max" and res.waves == [2, 1]


# ---------------------------------------------------------------------------------------------------
# determinism, checkpoint reuse, ranking, configuration
# ---------------------------------------------------------------------------------------------------


def test_seeded_repeatability_across_wave_shapes_and_batching():
    a = solve(Scripted([1] * 6), TextScorer(), Waves(6))
    b = solve(Scripted([1] * 6), TextScorer(), Waves(1, 2, 3))
    c = solve(Scripted([1] * 6), TextScorer(), Waves(6), config=SamplingConfig(n_max=6, batch_samples=True))
    assert [s["text"] for s in a.samples] == [s["text"] for s in b.samples] == [s["text"] for s in c.samples]
    assert [s["seed"] for s in a.samples] == [sample_seed(0, KEY, i) for i in range(6)]
    assert [s["index"] for s in a.samples] == list(range(6))


def test_recorded_samples_are_reused_and_new_ones_reported():
    first = solve(Scripted([3] * 4), TextScorer(), Waves(2, 2))
    recorded = {
        i: {k: first.samples[i][k] for k in ("answer", "score", "tokens", "finish_reason", "seed", "text")}
        for i in (0, 1)
    }
    gen = Scripted([3] * 4)
    seen = []

    def on_sample(i, rec):
        seen.append(i)
        return {**rec, "stored": True}

    res = solve(gen, TextScorer(), Waves(2, 2), recorded=recorded, on_sample=on_sample)
    assert sorted(gen.started) == [2, 3] and sorted(seen) == [2, 3]
    assert res.reused == 2 and res.completions[:2] == [None, None] and res.new_samples == 2
    assert [s["text"] for s in res.samples] == [s["text"] for s in first.samples]
    assert res.usage == summed([{"prompt_tokens": 7, "completion_tokens": 10 + i} for i in (2, 3)])


def test_ranking_by_score_or_by_vote():
    scores = [0.3, 0.9, 0.5, 0.9, 0.1]
    res = solve(Scripted([1, 2, 1, 3, 1], scores), TextScorer(), Waves(5))
    assert res.selected == 1 and res.ranking == [1, 3, 2, 0, 4]
    res = solve(Scripted([1, 2, 2, 3, 2], scores), None, Waves(5, needs_scores=False))
    # no scores: the selected first, then the larger answer class, classes by first appearance
    assert res.selected == 0 and res.ranking == [0, 1, 2, 4, 3]


def test_configuration_is_validated():
    for kw, name in [
        (dict(n_max=0), "n_max"),
        (dict(n_max=2, top_p=0), "top_p"),
        (dict(n_max=2, temperature=-1), "temperature"),
        (dict(n_max=2, max_tokens=0), "max_tokens"),
        (dict(n_max=2, seed=1.5), "seed"),
        (dict(n_max=2, scorer_failure="ignore"), "scorer_failure"),
        (dict(n_max=2, equiv="nope"), "equiv"),
        (dict(n_max=2, stop="\n"), "stop"),
        (dict(n_max=2, stop=["", "x"]), "stop"),
    ]:
        with pytest.raises(ParameterError, match=name):
            SamplingConfig(**kw)
    with pytest.raises(ParameterError, match="scorer"):
        AdaptiveLoop(Scripted([1]), None, Waves(1), SamplingConfig(n_max=1))
    loop = AdaptiveLoop(Scripted([1]), None, Waves(1, needs_scores=False), SamplingConfig(n_max=1))
    with pytest.raises(ParameterError, match="extra_body"):
        asyncio.run(loop.solve(PROMPT, "q", extra_body=["x"]))


def test_stop_sequences_and_extra_body_reach_every_call():
    gen = Scripted([1] * 3)
    cfg = SamplingConfig(n_max=3, stop=["\n\n", "END"])
    res = solve(gen, None, Waves(2, 1, needs_scores=False), config=cfg, extra_body={"top_k": 5})
    assert len(res.samples) == 3 and gen.stops == [["\n\n", "END"]] * 3 and gen.bodies == [{"top_k": 5}] * 3
    assert cfg.stop == ("\n\n", "END")


def test_scorer_usage_sums_an_llm_judges_requests():
    """The judge's upstream requests are summed into scorer_usage, apart from the generator's usage."""
    from optscale.online.scorers import JudgeScorer

    class JudgeServer(FakeServer):
        def answer(self, path, body, i):
            ans = super().answer(path, body, i)
            tops = [{"token": "Yes", "logprob": math.log(0.75)}, {"token": "No", "logprob": math.log(0.25)}]
            for ch in ans["choices"]:
                ch["message"]["content"] = "Yes"
                ch["logprobs"] = {
                    "content": [{"token": "Yes", "logprob": math.log(0.75), "top_logprobs": tops}]
                }
            ans["usage"] = {"prompt_tokens": 11 + i, "completion_tokens": 1, "total_tokens": 12 + i}
            return ans

    with JudgeServer() as srv:

        async def main():
            async with http_gen(srv, top_logprobs=5) as judge_gen:
                judge = JudgeScorer(judge_gen)
                loop = AdaptiveLoop(Scripted([1, 2, 1]), judge, Waves(2, 1), SamplingConfig(n_max=3))
                return await loop.solve(PROMPT, "What is 1 + 1?", key=KEY)

        res = asyncio.run(main())
    assert [s["score"] for s in res.samples] == pytest.approx([0.75] * 3)
    n = len(srv.requests)
    assert n == 3
    assert res.scorer_usage == {
        "prompt_tokens": sum(11 + i for i in range(n)),
        "completion_tokens": n,
        "total_tokens": sum(12 + i for i in range(n)),
        "requests": n,
    }
    assert res.usage == summed([{"prompt_tokens": 7, "completion_tokens": 10 + i} for i in range(3)])


def test_policies_declaring_no_replay_info_never_report_any():
    """``replay_info = False`` lets the loop skip a replay that only looks for diagnostics: it must be true of
    every such policy on random batches (and the loop's info for them is None), while a policy that does
    report diagnostics (OptScale) still gets them."""
    from optscale.online.loop import policy_info
    from optscale.policies import POLICIES, ReplayBatch, make_policy
    from optscale.policies.base import Observation

    rng = np.random.default_rng(7)
    silent = [k for k in POLICIES if getattr(make_policy(k), "replay_info", True) is False]
    assert {"bon", "sc", "wsc", "mr-thinking"} <= set(silent)
    for key in silent:
        policy = make_policy(key)
        for _ in range(20):
            n = int(rng.integers(1, 9))
            batch = ReplayBatch(answers=rng.integers(-1, 3, (5, n)), scores=rng.random((5, n)),
                                tokens=rng.integers(1, 50, (5, n)), n=rng.integers(1, n + 1, 5))
            assert not policy.replay(batch, n).info, key
        obs = Observation(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]), np.array([5, 5, 5]))
        assert policy_info(policy, obs, 3) is None
    obs = Observation(np.array([0, 1, 1, 1]), np.array([0.2, 0.9, 0.4, 0.8]), np.array([5, 5, 5, 5]))
    info = policy_info(make_policy("optscale0"), obs, 8)
    assert info is not None and info.get("mu") is not None
