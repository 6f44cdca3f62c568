"""Process reward models on tiny randomly initialised transformers models and an offline-built tokenizer.

Each layout is checked against an independent re-implementation of its model card's usage snippet.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from optscale.errors import ParameterError  # noqa: E402
from optscale.online.generators import Completion  # noqa: E402
from optscale.online.prm import CausalPRMScorer, QwenPRMScorer  # noqa: E402
from optscale.online.scorers import ScoringError, aggregate, make_scorer  # noqa: E402

pytestmark = pytest.mark.transformers

CORPUS = [
    "what is two plus two ? the answer is four .",
    "first we add the numbers . then we multiply by three + - = 4 12",
    "step one compute the sum step two check the result the final answer is 12",
    "please reason step by step and put your final answer within boxed",
    "system user assistant question solution",
]
SPECIALS = ["<unk>", "<pad>", "<bos>", "<eot>", "<|system|>", "<|user|>", "<|assistant|>", "<extra_0>", "ки"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <eot> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)
QUESTION = "what is two plus two ?"
SOLUTIONS = [
    "first we add the numbers .\n\nthen we multiply by three .\n\nthe answer is four .",
    "the answer is 12",
    "step one compute the sum\n\n\n\nstep two check the result\n\n",
    "first we add the numbers . then we multiply by three\n\nthe final answer is 4",
]


def make_tokenizer(chat_template: str | None = CHAT_TEMPLATE, bos: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIALS))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eot>",
        additional_special_tokens=SPECIALS[4:],
    )
    fast.chat_template = chat_template
    return fast


def comps(texts):
    return [Completion(text=t, tokens=len(t.split()), logprobs=None, top_logprobs=None) for t in texts]


@pytest.fixture(scope="module")
def qwen_parts():
    from transformers import Qwen2Config, Qwen2ForTokenClassification

    torch.manual_seed(0)
    tok = make_tokenizer()
    cfg = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=2,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForTokenClassification(cfg).eval()
    # a larger head scale spreads the probabilities away from 0.5, so the checks are not trivial
    with torch.no_grad():
        model.score.weight.mul_(20.0)
    return model, tok


@pytest.fixture(scope="module")
def llama_parts():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    tok = make_tokenizer(bos=True)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    return model, tok


# ---------------------------------------------------------------------------------------------- Qwen layout
def card_qwen_step_rewards(model, tok, question, steps, system):
    """The Qwen2.5-Math-PRM model card's recipe, one sample at a time."""
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": question},
        {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
    ]
    conversation = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    input_ids = torch.tensor([tok.encode(conversation)])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits
    step_sep_id = tok.encode("<extra_0>")[0]
    probs = torch.softmax(logits, dim=-1) * (input_ids == step_sep_id).unsqueeze(-1)
    sample = probs[0]
    return sample[sample != 0].view(-1, 2)[:, 1].tolist()


def test_qwen_matches_model_card_and_counts_steps(qwen_parts):
    model, tok = qwen_parts
    s = QwenPRMScorer(model, tokenizer=tok, batch_size=3)
    per_step = s.step_scores(QUESTION, comps(SOLUTIONS))
    for text, got in zip(SOLUTIONS, per_step, strict=True):
        steps = s.steps(text)
        assert len(got) == len(steps) >= 1
        ids, pos = s.encode(QUESTION, steps)
        assert len(pos) == len(steps) and all(ids[p] == tok.convert_tokens_to_ids("<extra_0>") for p in pos)
        assert all(0.0 <= p <= 1.0 for p in got)
        assert got == pytest.approx(card_qwen_step_rewards(model, tok, QUESTION, steps, s.system), abs=1e-5)
    assert len(per_step[2]) == 2  # runs of blank lines and trailing blank lines make no empty steps
    # the probabilities differ between steps (the comparison would be vacuous if all were equal)
    flat = [p for row in per_step for p in row]
    assert max(flat) - min(flat) > 0.02


@pytest.mark.parametrize("how", ["mean", "min", "last", "product"])
def test_qwen_aggregation(qwen_parts, how):
    model, tok = qwen_parts
    s = QwenPRMScorer(model, tokenizer=tok, aggregation=how)
    per_step = s.step_scores(QUESTION, comps(SOLUTIONS))
    scores = s.score(QUESTION, comps(SOLUTIONS))
    assert scores == pytest.approx([aggregate(p, how) for p in per_step])
    expected_first = {
        "mean": sum(per_step[0]) / 3,
        "min": min(per_step[0]),
        "last": per_step[0][-1],
        "product": math.prod(per_step[0]),
    }[how]
    assert scores[0] == pytest.approx(expected_first)


def test_qwen_batch_equals_one_at_a_time(qwen_parts):
    model, tok = qwen_parts
    batched = QwenPRMScorer(model, tokenizer=tok, batch_size=4).step_scores(QUESTION, comps(SOLUTIONS))
    single = QwenPRMScorer(model, tokenizer=tok, batch_size=1)
    one = [single.step_scores(QUESTION, comps([t]))[0] for t in SOLUTIONS]
    for a, b in zip(batched, one, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_qwen_empty_completion(qwen_parts):
    model, tok = qwen_parts
    s = QwenPRMScorer(model, tokenizer=tok)
    with pytest.raises(ScoringError, match="no steps") as ei:
        s.score(QUESTION, comps([SOLUTIONS[0], "  \n\n  "]))
    assert ei.value.index == 1
    z = QwenPRMScorer(model, tokenizer=tok, on_empty="zero")
    steps = z.step_scores(QUESTION, comps(["", SOLUTIONS[1]]))
    assert steps[0] == [] and len(steps[1]) == 1
    assert z.score(QUESTION, comps(["", SOLUTIONS[1]]))[0] == 0.0


def test_qwen_separator_in_text_is_removed(qwen_parts):
    model, tok = qwen_parts
    s = QwenPRMScorer(model, tokenizer=tok)
    clean = s.step_scores(QUESTION, comps(["the answer is four .\n\nthe answer is 12"]))
    dirty = s.step_scores(
        QUESTION + " <extra_0>", comps(["the answer <extra_0> is four .\n\nthe answer is 12"])
    )
    assert len(dirty[0]) == 2
    assert dirty[0] == pytest.approx(clean[0], abs=1e-5)


def test_qwen_plain_template_fallback(qwen_parts):
    model, _ = qwen_parts
    tok = make_tokenizer(chat_template=None)
    s = QwenPRMScorer(model, tokenizer=tok)
    assert s.render("q ?", ["a", "b"]).startswith("System: ")
    got = s.step_scores(QUESTION, comps(SOLUTIONS[:2]))
    assert [len(g) for g in got] == [3, 1]


def test_qwen_errors(qwen_parts):
    model, tok = qwen_parts
    with pytest.raises(ParameterError, match="step_separator"):
        QwenPRMScorer(model, tokenizer=tok, step_separator="two words")
    with pytest.raises(ParameterError, match="aggregation"):
        QwenPRMScorer(model, tokenizer=tok, aggregation="median")
    with pytest.raises(ParameterError, match="tokenizer"):
        QwenPRMScorer(model)
    with pytest.raises(ParameterError, match="dtype"):
        QwenPRMScorer(model, tokenizer=tok, dtype="int8")
    s = QwenPRMScorer(model, tokenizer=tok, max_length=40)
    with pytest.raises(ScoringError, match="longer than max_length=40") as ei:
        s.score(QUESTION, comps([SOLUTIONS[1], SOLUTIONS[0]]))
    assert ei.value.index == 1


def test_qwen_from_saved_checkpoint_via_registry(qwen_parts, tmp_path):
    model, tok = qwen_parts
    # the tokenizer goes to its own folder: next to a qwen2 config.json, AutoTokenizer would rebuild it as a
    # Qwen2 BPE tokenizer, which this test's word-level vocabulary is not
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "tok")
    s = make_scorer(
        f"prm:{tmp_path / 'model'},aggregation=min,batch_size=2,tokenizer={tmp_path / 'tok'}", device="cpu"
    )
    assert isinstance(s, QwenPRMScorer) and s.aggregation == "min" and s.name == f"prm:{tmp_path / 'model'}"
    ref = QwenPRMScorer(model, tokenizer=tok, aggregation="min")
    assert s.score(QUESTION, comps(SOLUTIONS)) == pytest.approx(
        ref.score(QUESTION, comps(SOLUTIONS)), abs=1e-5
    )
    import asyncio

    assert asyncio.run(s.ascore(QUESTION, comps(SOLUTIONS[:1]))) == pytest.approx(
        ref.score(QUESTION, comps(SOLUTIONS[:1])), abs=1e-5
    )


# ---------------------------------------------------------------------------------------------- Math-Shepherd
def card_shepherd_step_scores(model, tok, question, steps):
    """The Math-Shepherd model card's recipe: logits at each 'ки' restricted to ['+', '-']."""
    candidate_tokens = [
        tok.encode("+", add_special_tokens=False)[-1],
        tok.encode("-", add_special_tokens=False)[-1],
    ]
    step_tag_id = tok.encode("ки", add_special_tokens=False)[-1]
    output = "\n".join(f"{s} ки" for s in steps)
    input_id = torch.tensor([tok.encode(f"{question} {output}")])
    with torch.no_grad():
        logits = model(input_id).logits[:, :, candidate_tokens]
        scores = logits.softmax(dim=-1)[:, :, 0]
    return scores[input_id == step_tag_id].tolist()


def test_shepherd_matches_model_card(llama_parts):
    model, tok = llama_parts
    s = CausalPRMScorer(model, tokenizer=tok, layout="shepherd", batch_size=2)
    assert s.fast_head
    per_step = s.step_scores(QUESTION, comps(SOLUTIONS))
    for text, got in zip(SOLUTIONS, per_step, strict=True):
        steps = s.steps(text)
        ids, pos = s.encode(QUESTION, steps)
        assert ids[0] == tok.bos_token_id and len(pos) == len(steps) == len(got)
        assert all(0.0 <= p <= 1.0 for p in got)
        assert got == pytest.approx(card_shepherd_step_scores(model, tok, QUESTION, steps), abs=1e-5)
    flat = [p for row in per_step for p in row]
    assert max(flat) - min(flat) > 0.02


def test_shepherd_fast_head_equals_full_forward_and_batching(llama_parts):
    model, tok = llama_parts
    fast = CausalPRMScorer(model, tokenizer=tok, batch_size=4).step_scores(QUESTION, comps(SOLUTIONS))
    slow_scorer = CausalPRMScorer(model, tokenizer=tok, batch_size=1, fast_head=False)
    assert not slow_scorer.fast_head
    slow = [slow_scorer.step_scores(QUESTION, comps([t]))[0] for t in SOLUTIONS]
    for a, b in zip(fast, slow, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_shepherd_tag_in_text_is_removed_and_token_ids(llama_parts):
    model, tok = llama_parts
    s = CausalPRMScorer(model, tokenizer=tok)
    assert s.good_id == tok.convert_tokens_to_ids("+") and s.bad_id == tok.convert_tokens_to_ids("-")
    assert s.tag_id == tok.convert_tokens_to_ids("ки")
    got = s.step_scores(QUESTION, comps(["the answer ки is four\n\nthe answer is 12 ки"]))
    ref = s.step_scores(QUESTION, comps(["the answer is four\n\nthe answer is 12"]))
    assert got[0] == pytest.approx(ref[0], abs=1e-5) and len(got[0]) == 2
    swapped = CausalPRMScorer(model, tokenizer=tok, good_token="-", bad_token="+")
    inv = swapped.step_scores(QUESTION, comps(["the answer is four\n\nthe answer is 12"]))
    assert inv[0] == pytest.approx([1 - p for p in ref[0]], abs=1e-5)
    with pytest.raises(ParameterError, match="same token"):
        CausalPRMScorer(model, tokenizer=tok, good_token="+", bad_token="+")
    with pytest.raises(ParameterError, match="layout"):
        CausalPRMScorer(model, tokenizer=tok, layout="orm")


# ---------------------------------------------------------------------------------------------- RLHFlow
def card_rlhflow_step_scores(model, tok, question, steps):
    """RLHFlow's recipe: grow the conversation step by step and read logits[:, -3, ['+', '-']]."""
    plus, minus = tok.encode("+", add_special_tokens=False)[-1], tok.encode("-", add_special_tokens=False)[-1]
    conversation, out = [], []
    for k, step in enumerate(steps):
        conversation.append({"content": question + " " + step if k == 0 else step, "role": "user"})
        conversation.append({"content": "+", "role": "assistant"})
        text = tok.apply_chat_template(conversation, tokenize=False)
        input_ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            logits = model(input_ids).logits[:, -3, [plus, minus]]
        out.append(logits.softmax(dim=-1)[0, 0].item())
    return out


def test_rlhflow_matches_recipe_batched(llama_parts):
    model, tok = llama_parts
    s = CausalPRMScorer(model, tokenizer=tok, layout="rlhflow", batch_size=3)
    per_step = s.step_scores(QUESTION, comps(SOLUTIONS))
    for text, got in zip(SOLUTIONS, per_step, strict=True):
        steps = s.steps(text)
        ids, pos = s.encode(QUESTION, steps)
        assert len(pos) == len(steps) == len(got)
        assert all(ids[p + 1] == s.good_id for p in pos)
        assert got == pytest.approx(card_rlhflow_step_scores(model, tok, QUESTION, steps), abs=1e-5)
    single = [s.step_scores(QUESTION, comps([t]))[0] for t in SOLUTIONS]
    for a, b in zip(per_step, single, strict=True):
        assert a == pytest.approx(b, abs=1e-5)


def test_rlhflow_needs_chat_template(llama_parts):
    model, _ = llama_parts
    with pytest.raises(ParameterError, match="chat template"):
        CausalPRMScorer(model, tokenizer=make_tokenizer(chat_template=None), layout="rlhflow")


def test_causal_registry_from_checkpoint(llama_parts, tmp_path):
    model, tok = llama_parts
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "tok")
    sh = make_scorer(f"prm-shepherd:{tmp_path / 'model'}", tokenizer=str(tmp_path / "tok"))
    rl = make_scorer(f"prm-rlhflow:{tmp_path / 'model'},aggregation=last,tokenizer={tmp_path / 'tok'}")
    assert isinstance(sh, CausalPRMScorer) and sh.layout == "shepherd" and sh.name.startswith("prm-shepherd:")
    assert rl.layout == "rlhflow" and rl.aggregation == "last"
    ref = CausalPRMScorer(model, tokenizer=tok, layout="rlhflow", aggregation="last")
    assert rl.score(QUESTION, comps(SOLUTIONS)) == pytest.approx(
        ref.score(QUESTION, comps(SOLUTIONS)), abs=1e-5
    )


def test_device_and_dtype(qwen_parts):
    model, tok = qwen_parts
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="CUDA is not available"):
            QwenPRMScorer(model, tokenizer=tok, device="cuda")
    with pytest.raises(ParameterError, match="device"):
        QwenPRMScorer(model, tokenizer=tok, device="toaster")
    import copy

    ref = QwenPRMScorer(model, tokenizer=tok).step_scores(QUESTION, comps(SOLUTIONS[:2]))
    half = QwenPRMScorer(copy.deepcopy(model), tokenizer=tok, dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    got = half.step_scores(QUESTION, comps(SOLUTIONS[:2]))
    for a, b in zip(got, ref, strict=True):
        assert a == pytest.approx(b, abs=0.05)
