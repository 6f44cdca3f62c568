"""Runner logic with a fast deterministic test generator (the real model is covered in test_runner_local.py).

Covers: waves and stopping, determinism across concurrency, results-file contents, summary numbers,
crash + resume (no lost or duplicated sample, same texts as an uninterrupted run), torn last lines,
configuration mismatch, cancellation of sibling tasks, and ``generate`` writing a valid pool.
"""

from __future__ import annotations

import asyncio
import json
import random

import numpy as np
import pytest

from optscale.errors import InputError, OptScaleError, ParameterError
from optscale.online.checkpoint import checkpoint_path, recover_jsonl
from optscale.online.data import Question
from optscale.online.generators import Completion, GenerationError, Generator
from optscale.online.runner import (
    agenerate,
    arun,
    build_prompt,
    generate,
    run,
    sample_seed,
)
from optscale.online.scorers import Scorer

PROBLEMS = [Question(id=f"q{i}", question=f"What is {i} + {i}?", gold=str(2 * i)) for i in range(6)]


class FakeGenerator(Generator):
    """Deterministic in the seed: the answer is right with probability 0.6, tokens in [5, 40].

    ``fail_after``: raise GenerationError on the call after that many successful calls.
    ``delay``: max random sleep per call (scrambles completion order across tasks)."""

    name = "fake"

    def __init__(
        self,
        *,
        fail_after: int | None = None,
        delay: float = 0.002,
        model: str = "fake-1",
        batched: bool = False,
    ):
        super().__init__()
        self.model = model
        self.seed_per_sample = batched  # sample i of a call uses seed + i: the runner may batch calls
        self.calls = 0
        self.samples = 0
        self.fail_after = fail_after
        self.delay = delay
        self.cancelled = 0
        self.in_flight = 0

    async def generate(
        self, prompt, n, *, seed=None, max_tokens, temperature, top_p=1.0, logprobs=False, stop=None
    ):
        content = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        q = content.rsplit("What is ", 1)[-1]
        a = int(q.split(" + ")[0])
        out = []
        self.in_flight += 1
        try:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise GenerationError("fake server went away", url="fake://", status=503)
            self.calls += 1
            self.samples += n
            for i in range(n):
                rng = random.Random(None if seed is None else seed + i)
                await asyncio.sleep(rng.random() * self.delay)
                ans = 2 * a if rng.random() < 0.6 else rng.randint(0, 20)
                tokens = rng.randint(5, min(40, max_tokens))
                lp = [-rng.random() * 2 for _ in range(tokens)]
                text = f"Adding {a} and {a} carefully (draw {rng.random():.6f}). \\boxed{{{ans}}}"
                out.append(
                    Completion(
                        text=text, tokens=tokens, logprobs=lp if logprobs else None, finish_reason="stop"
                    )
                )
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.in_flight -= 1
        return out


class FakeScorer(Scorer):
    """exp(mean logprob), like self-certainty."""

    name = "fake-scorer"
    needs_logprobs = True

    def score(self, question, completions):
        return [float(np.exp(np.mean(c.logprobs))) for c in completions]


class WavePolicy:
    """Waves of ``wave`` samples until the top answer class has ``agree`` votes; selects the first
    sample of the largest class (a tiny self-consistency, enough to exercise the runner)."""

    name = "test-wave"
    needs_scores = False

    def __init__(self, wave=3, agree=3):
        self.wave, self.agree = wave, agree

    def next_wave(self, obs, n_max):
        a = obs.answers[obs.answers >= 0]
        if len(a) and np.bincount(a).max() >= self.agree:
            return 0
        return min(self.wave, n_max - len(obs.answers))

    def select(self, obs):
        a = obs.answers
        if not (a >= 0).any():
            return 0
        top = np.bincount(a[a >= 0]).argmax()
        return int(np.flatnonzero(a == top)[0])


def _run(tmp_path=None, name="res.jsonl", **kw):
    kw.setdefault("progress", False)
    gen = kw.pop("generator", None) or FakeGenerator()
    policy = kw.pop("policy", None) or WavePolicy()
    problems = kw.pop("problems", PROBLEMS)
    path = None if tmp_path is None else tmp_path / name
    summary = run(
        problems, gen, FakeScorer(), policy, kw.pop("n_max", 10), results_path=path, equiv="exact", **kw
    )
    return summary, gen, path


def _by_id(records):
    return {r["id"]: r for r in records}


def test_prompt_and_seed():
    msgs = build_prompt("Q: {question}\nAnswer in \\boxed{{}}.", "1+1?")
    assert msgs == [{"role": "user", "content": "Q: 1+1?\nAnswer in \\boxed{}."}]
    with pytest.raises(ParameterError, match="question"):
        build_prompt("no placeholder", "x")
    assert sample_seed(0, "a", 1) == sample_seed(0, "a", 1)
    assert len({sample_seed(0, "a", i) for i in range(100)}) == 100
    assert sample_seed(0, "a", 5) == sample_seed(0, "a", 0) + 5  # generators' "seed + i" convention
    assert sample_seed(0, "a", 0) != sample_seed(0, "b", 0)
    assert sample_seed(0, "a", 1) != sample_seed(1, "a", 1)
    assert sample_seed(None, "a", 1) is None
    assert 0 <= sample_seed(123, "x", 5) < 2**31


def test_run_waves_stop_and_results_file(tmp_path):
    summary, gen, path = _run(tmp_path, n_max=10)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == [p.id for p in PROBLEMS]
    for r in lines:
        assert 1 <= r["n_samples"] <= 10
        assert sum(r["waves"]) == r["n_samples"] == len(r["samples"])
        assert all(w <= 3 for w in r["waves"])
        assert r["tokens"] == sum(s["tokens"] for s in r["samples"])
        assert [s["index"] for s in r["samples"]] == list(range(r["n_samples"]))
        assert all(0 <= s["score"] <= 1 for s in r["samples"])
        assert all(s["text"] and "\\boxed" in s["text"] for s in r["samples"])
        sel = r["samples"][r["selected_index"]]
        assert r["answer"] == sel["answer"] and r["correct"] == sel["correct"]
        assert r["correct"] == (r["answer"] == r["gold"])
        # the policy stopped because 3 agreed, or because it hit n_max
        counts = np.bincount([s["class"] for s in r["samples"] if s["class"] >= 0])
        assert counts.max() >= 3 or r["n_samples"] == 10
    assert summary.completed == summary.problems == len(PROBLEMS)
    assert summary.accuracy == pytest.approx(np.mean([r["correct"] for r in lines]))
    assert summary.mean_samples == pytest.approx(np.mean([r["n_samples"] for r in lines]))
    assert summary.new_samples == sum(r["n_samples"] for r in lines) == gen.calls
    assert summary.decisions == sum(len(r["waves"]) + 2 for r in lines)
    assert 0 <= summary.savings_est < 1
    assert summary.controller_ms_per_decision > 0 and 0 < summary.controller_share < 1
    # checkpoint holds exactly the drawn samples
    ck, torn = recover_jsonl(checkpoint_path(path))
    assert not torn and ck[0]["type"] == "header"
    assert len(ck) - 1 == summary.new_samples
    assert "accuracy" in summary.to_table() and json.dumps(summary.to_dict())


def test_deterministic_across_concurrency_and_in_memory(tmp_path):
    s1, _, _ = _run(tmp_path, "a.jsonl", concurrency=1)
    s2, _, _ = _run(None, concurrency=6)
    a, b = _by_id(s1.results), _by_id(s2.results)
    for pid in a:
        assert [x["text"] for x in a[pid]["samples"]] == [x["text"] for x in b[pid]["samples"]]
        assert a[pid]["answer"] == b[pid]["answer"]
    s3, _, _ = _run(None, seed=7)
    assert any(
        [x["text"] for x in s3.results[i]["samples"]] != [x["text"] for x in s2.results[i]["samples"]]
        for i in range(len(PROBLEMS))
    )


def test_batched_calls_give_the_same_samples(tmp_path):
    s1, g1, _ = _run(None)
    s2, g2, _ = _run(None, generator=FakeGenerator(batched=True))
    assert [[x["text"] for x in r["samples"]] for r in s1.results] == [
        [x["text"] for x in r["samples"]] for r in s2.results
    ]
    assert g1.calls == g1.samples == g2.samples and g2.calls < g1.calls
    # crash mid-run with batching, resume without: still the same samples
    with pytest.raises(GenerationError):
        _run(tmp_path, generator=FakeGenerator(batched=True, fail_after=5), concurrency=2)
    s3, g3, _ = _run(tmp_path, generator=FakeGenerator(batched=True))
    assert [[x["text"] for x in r["samples"]] for r in s3.results] == [
        [x["text"] for x in r["samples"]] for r in s1.results
    ]


def test_n_max_caps_the_policy():
    class Greedy(WavePolicy):
        def next_wave(self, obs, n_max):
            return 100  # asks for more than allowed

    s, _, _ = _run(None, policy=Greedy(), n_max=5)
    assert all(r["n_samples"] == 5 and r["waves"] == [5] for r in s.results)


def _crash_then_resume(tmp_path, fail_after, *, tear=False):
    """Run with a generator that dies after ``fail_after`` calls, optionally tear the files' last
    lines, resume, and compare with an uninterrupted run."""
    ref, _, _ = _run(tmp_path, "ref.jsonl", concurrency=3)
    path = tmp_path / "res.jsonl"
    with pytest.raises(GenerationError, match="went away"):
        _run(tmp_path, generator=FakeGenerator(fail_after=fail_after), concurrency=3)
    ck = checkpoint_path(path)
    recorded = len(ck.read_text().splitlines()) - 1
    assert 0 < recorded <= fail_after  # samples that arrived before the crash were checkpointed
    finished = {json.loads(x)["id"]: json.loads(x)["n_samples"] for x in path.read_text().splitlines()}
    if tear:
        with open(ck, "ab") as fh:
            fh.write(b'{"type": "sample", "problem": "q0", "ind')
        with open(path, "ab") as fh:
            fh.write(b'{"id": "q5", "answ')
    gen2 = FakeGenerator()
    res, _, _ = _run(tmp_path, generator=gen2, concurrency=3)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == len(PROBLEMS) and len({r["id"] for r in lines}) == len(PROBLEMS)
    a, b = _by_id(ref.results), _by_id(lines)
    for pid in a:
        assert [x["text"] for x in a[pid]["samples"]] == [x["text"] for x in b[pid]["samples"]], pid
        assert a[pid]["waves"] == b[pid]["waves"]
        assert a[pid]["answer"] == b[pid]["answer"]
    total = sum(r["n_samples"] for r in lines)
    # nothing generated twice: the resumed run generated exactly what was not recorded
    assert gen2.calls + recorded == total
    assert res.new_samples == gen2.calls
    records, torn = recover_jsonl(ck)
    assert not torn
    keys = [(r["problem"], r["index"]) for r in records[1:]]
    assert len(keys) == len(set(keys)) == total  # every drawn sample exactly once
    return res, recorded, gen2, finished


def test_crash_and_resume_loses_and_duplicates_nothing(tmp_path):
    res, recorded, gen2, finished = _crash_then_resume(tmp_path, fail_after=11)
    # problems finished before the crash are taken from the results file; every other recorded sample is
    # reused exactly once (the deterministic policy asks for the same waves again)
    assert res.resumed_problems == len(finished)
    assert res.reused_samples == recorded - sum(finished.values()) > 0
    assert sum(r["reused_samples"] for r in res.results if r["id"] not in finished) == res.reused_samples
    assert res.new_samples + recorded == sum(r["n_samples"] for r in res.results)


def test_torn_last_lines_are_discarded(tmp_path):
    with pytest.warns(UserWarning, match="torn") as record:
        res, recorded, gen2, finished = _crash_then_resume(tmp_path, fail_after=14, tear=True)
    # both files had a torn tail (checkpoint and results), each reported once
    assert sum("torn" in str(w.message) for w in record) == 2


def test_resume_of_finished_run_generates_nothing(tmp_path):
    s1, _, path = _run(tmp_path)
    before = path.read_bytes()
    s2, gen, _ = _run(tmp_path)
    assert gen.calls == 0 and s2.resumed_problems == len(PROBLEMS) and s2.new_samples == 0
    assert path.read_bytes() == before
    assert s2.accuracy == s1.accuracy and s2.mean_tokens == s1.mean_tokens
    # a larger problem set continues with the new problems only
    more = PROBLEMS + [Question(id="q9", question="What is 9 + 9?", gold="18")]
    s3, gen3, _ = _run(tmp_path, problems=more)
    assert s3.completed == 7 and gen3.calls == s3.results[-1]["n_samples"]


def test_config_mismatch_and_missing_checkpoint(tmp_path):
    _, _, path = _run(tmp_path)
    with pytest.raises(InputError, match="max_tokens"):
        _run(tmp_path, max_tokens=77)
    with pytest.raises(InputError, match="model"):
        _run(tmp_path, generator=FakeGenerator(model="other"))
    s, gen, _ = _run(tmp_path, max_tokens=77, resume=False)  # start over
    assert gen.calls == s.new_samples > 0 and s.resumed_problems == 0
    assert len(path.read_text().splitlines()) == len(PROBLEMS)
    checkpoint_path(path).unlink()
    with pytest.raises(InputError, match="checkpoint"):
        _run(tmp_path, max_tokens=77)


def test_corrupt_middle_line_is_an_error(tmp_path):
    _, _, path = _run(tmp_path)
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:20]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match="line 2"):
        _run(tmp_path)


def test_errors_cancel_siblings_and_leave_no_tasks():
    async def main():
        gen = FakeGenerator(fail_after=4, delay=0.2)
        with pytest.raises(GenerationError):
            await arun(
                PROBLEMS,
                gen,
                FakeScorer(),
                WavePolicy(wave=4),
                8,
                concurrency=3,
                progress=False,
                equiv="exact",
            )
        await asyncio.sleep(0)
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert others == []
        assert gen.in_flight == 0 and gen.cancelled >= 1

        gen = FakeGenerator()
        await arun(PROBLEMS, gen, FakeScorer(), WavePolicy(), 8, concurrency=2, progress=False, equiv="exact")
        assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []
        assert gen.in_flight == 0

    asyncio.run(main())


def test_bad_arguments():
    dup = [PROBLEMS[0], PROBLEMS[0]]
    with pytest.raises(ParameterError, match="duplicate"):
        _run(None, problems=dup)
    with pytest.raises(ParameterError, match="n_max"):
        _run(None, n_max=0)

    class NeedsScores(WavePolicy):
        needs_scores = True

    with pytest.raises(ParameterError, match="scorer"):
        run(PROBLEMS, FakeGenerator(), None, NeedsScores(), 4, progress=False)


def test_generate_writes_a_valid_pool_sharing_seeds_with_run(tmp_path):
    from optscale.pool import load_pool

    out = tmp_path / "pool.jsonl"
    s = generate(PROBLEMS, FakeGenerator(), FakeScorer(), 5, out_path=out, progress=False, concurrency=2)
    pool = load_pool(out)
    assert [p.id for p in pool.problems] != [] and {p.id for p in pool.problems} == {p.id for p in PROBLEMS}
    for p in pool.problems:
        assert len(p.samples) == 5
        assert all(0 <= x.score <= 1 and x.tokens > 0 and x.text for x in p.samples)
        assert all(x.correct == (x.answer == p.gold) for x in p.samples)
    assert s.completed == len(PROBLEMS) and s.new_samples == 5 * len(PROBLEMS)
    # the online run's sample i is the pool's sample i (same derived seeds)
    r, _, _ = _run(None, n_max=5)
    pool_by = {p.id: p for p in pool.problems}
    for rec in r.results:
        assert [x["text"] for x in rec["samples"]] == [x.text for x in pool_by[rec["id"]].samples][
            : rec["n_samples"]
        ]


def test_generate_crash_resume(tmp_path):
    from optscale.pool import load_pool

    ref = tmp_path / "ref.jsonl"
    generate(PROBLEMS, FakeGenerator(), FakeScorer(), 4, out_path=ref, progress=False)
    out = tmp_path / "pool.jsonl"
    with pytest.raises(GenerationError):
        generate(PROBLEMS, FakeGenerator(fail_after=9), FakeScorer(), 4, out_path=out, progress=False)
    gen = FakeGenerator()

    async def main():
        return await agenerate(PROBLEMS, gen, FakeScorer(), 4, out_path=out, progress=False)

    recorded = len(checkpoint_path(out).read_text().splitlines()) - 1
    asyncio.run(main())
    a = {p.id: [x.text for x in p.samples] for p in load_pool(ref).problems}
    b = {p.id: [x.text for x in p.samples] for p in load_pool(out).problems}
    assert a == b
    assert gen.calls == 4 * len(PROBLEMS) - recorded


def test_invalid_scores_are_errors_not_defaults(tmp_path):
    """A scorer that returns NaN, None or a value outside [0, 1] for one sample stops the run with an error
    naming that sample; the score is never replaced by a default or dropped."""

    class BadScorer(FakeScorer):
        name = "bad-scorer"

        def __init__(self, bad):
            self.bad = bad

        def score(self, question, completions):
            out = super().score(question, completions)
            out[-1] = self.bad
            return out

    for bad in (float("nan"), None, 1.5, -0.1):
        with pytest.raises(OptScaleError, match=r"bad-scorer.*sample \d+ the score"):
            run(PROBLEMS[:1], FakeGenerator(), BadScorer(bad), WavePolicy(), 6, results_path=None,
                equiv="exact", progress=False)


def test_resume_refuses_another_problem_set_with_the_same_ids(tmp_path):
    """Two problem files without ids both number their problems 0, 1, ...: running the second one into the
    first one's output must not report the first one's results as its own (or reuse its samples)."""
    first = [Question(id=str(i), question=f"What is {i} + {i}?", gold=str(2 * i)) for i in range(3)]
    second = [Question(id=str(i), question=f"What is {i + 5} + {i + 5}?", gold=str(2 * i + 10)) for i in range(5)]
    _, _, path = _run(tmp_path, problems=first)
    before = path.read_bytes(), checkpoint_path(path).read_bytes()
    with pytest.raises(InputError, match=r"line 1, field 'question': problem id '\d' was recorded for another"):
        _run(tmp_path, problems=second)
    assert (path.read_bytes(), checkpoint_path(path).read_bytes()) == before
    # samples checkpointed for an unfinished problem are checked too (every sample records the question's
    # fingerprint)
    other = tmp_path / "other.jsonl"
    with pytest.raises(GenerationError):
        _run(tmp_path, "other.jsonl", problems=first, generator=FakeGenerator(fail_after=2), concurrency=1,
             policy=WavePolicy(wave=1))  # fmt: skip
    assert other.read_text() == ""  # no problem finished, two samples recorded
    with pytest.raises(InputError, match=r"samples\.jsonl, line 2, field 'fp': problem id '0'"):
        _run(tmp_path, "other.jsonl", problems=second, policy=WavePolicy(wave=1))
    # the same problems resume fine
    s, _, _ = _run(tmp_path, "other.jsonl", problems=first, policy=WavePolicy(wave=1))
    assert s.reused_samples == 2 and s.completed == 3


def test_checkpoint_sample_errors_name_file_line_and_field(tmp_path):
    _, _, path = _run(tmp_path, problems=PROBLEMS[:2])
    ck = checkpoint_path(path)
    lines = ck.read_text().splitlines()
    for field, value, match in [("tokens", None, "missing"), ("score", "high", "wrong type"), ("index", -1, ">= 0")]:
        rec = json.loads(lines[2])
        if value is None:
            del rec[field]
        else:
            rec[field] = value
        ck.write_text("\n".join([*lines[:2], json.dumps(rec), *lines[3:]]) + "\n")
        with pytest.raises(InputError, match=rf"samples\.jsonl, line 3, field '{field}': .*{match}"):
            _run(tmp_path, problems=PROBLEMS[:2])


class SurrogateGenerator(FakeGenerator):
    """Texts with a lone surrogate, as a byte-level decoder can produce from a cut multi-byte character."""

    async def generate(self, prompt, n, **kw):
        out = await super().generate(prompt, n, **kw)
        for c in out:
            c.text = c.text + " \ud800 tail"
        return out


def test_lone_surrogates_survive_checkpoint_and_resume(tmp_path):
    one = dict(policy=WavePolicy(wave=1), concurrency=1)  # one call at a time: the crash point is exact
    ref, _, _ = _run(None, generator=SurrogateGenerator(), **one)
    with pytest.raises(GenerationError):
        _run(tmp_path, generator=SurrogateGenerator(fail_after=7), **one)
    records, torn = recover_jsonl(checkpoint_path(tmp_path / "res.jsonl"))
    assert not torn and len(records) == 1 + 7 and all("\ud800" in r["text"] for r in records[1:])
    done = [json.loads(x) for x in (tmp_path / "res.jsonl").read_text().splitlines()]
    s, gen, path = _run(tmp_path, generator=SurrogateGenerator(), **one)
    # every recorded sample came back: finished problems from the results file, the rest reused
    assert s.resumed_problems == len(done) and s.reused_samples + sum(r["n_samples"] for r in done) == 7
    assert s.reused_samples > 0
    by_id = _by_id(json.loads(x) for x in path.read_text().splitlines())
    for r in ref.results:
        assert [x["text"] for x in by_id[r["id"]]["samples"]] == [x["text"] for x in r["samples"]]


def test_second_writer_of_the_same_output_is_refused(tmp_path):
    from optscale.online.checkpoint import OutputLock

    path = tmp_path / "res.jsonl"
    lock = OutputLock(path)
    try:
        with pytest.raises(InputError, match="another optscale process"):
            _run(tmp_path)
        assert not checkpoint_path(path).exists()
    finally:
        lock.release()
    s, _, _ = _run(tmp_path)  # released: the run proceeds
    assert s.completed == len(PROBLEMS)


def test_rejected_configuration_creates_no_file(tmp_path):
    path = tmp_path / "sub" / "res.jsonl"
    for kw in (dict(top_p=0), dict(concurrency=0), dict(prompt_template="no placeholder"), dict(seed="x"),
               dict(prior_fn=3), dict(grade_kind="fuzzy")):  # fmt: skip
        with pytest.raises(ParameterError):
            run(PROBLEMS, FakeGenerator(), FakeScorer(), WavePolicy(), 4, results_path=path, progress=False, **kw)
    assert not (tmp_path / "sub").exists()
