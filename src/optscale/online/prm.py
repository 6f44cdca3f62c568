"""Process reward models (PRMs) run locally through transformers (torch / transformers imported lazily).

A PRM scores every reasoning step of a solution; the steps' scores p_1..p_K are combined into the sample's
score by ``aggregation`` (``mean`` -- the OptScale paper --, ``min``, ``last`` or ``product``; see
:func:`optscale.online.scorers.aggregate`). Steps are the blank-line-separated (``"\\n\\n"``) pieces of the
completion, stripped, empty ones dropped.

Two input layouts:

:class:`QwenPRMScorer` -- Qwen2.5-Math-PRM (the paper's verifier)
    The steps are joined with the separator token ``<extra_0>`` after each step, and the conversation
    ``[system, user: question, assistant: step_1<extra_0>step_2<extra_0>...]`` is rendered with the
    tokenizer's chat template (a plain ``System:/User:/Assistant:`` template when it has none). The model has
    a 2-class head on every token; the score of step k is the softmax probability of the positive class
    (index 1) at the k-th separator: p_k = softmax(z_k)[1].

:class:`CausalPRMScorer` -- Math-Shepherd and RLHFlow layouts (a causal LM)
    The score of a step is read from the next-token logits z at the step's tag position, restricted to a
    "good" and a "bad" token (``"+"`` and ``"-"``): p_k = e^{z_good} / (e^{z_good} + e^{z_bad}), i.e.
    P(good) / (P(good) + P(bad)).

    * ``layout="shepherd"`` (peiyi9979/math-shepherd-mistral-7b-prm): plain text
      ``"{question} {step_1} ки\\n{step_2} ки\\n...{step_K} ки"``; the logits are read at each ``ки`` tag.
    * ``layout="rlhflow"`` (RLHFlow/Llama3.1-8B-PRM-*): a chat where each step is a user turn (the first one
      prefixed by the question and a space) answered by the assistant with ``"+"``; the logits are read at the
      position that predicts each assistant ``"+"`` (the last token of the assistant header).

Batching pads on the right with an attention mask (causal attention makes right padding exact), sorted by
length. Every sample is checked: the tag/separator positions found must equal its number of steps, the
input must fit ``max_length``; otherwise :class:`~optscale.online.scorers.ScoringError` names the sample.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from optscale.errors import ParameterError
from optscale.online.scorers import (
    Scorer,
    ScoringError,
    aggregate,
    check_aggregation,
    check_score,
    split_steps,
)

if TYPE_CHECKING:  # pragma: no cover
    from optscale.online.generators import Completion

__all__ = ["QWEN_PRM_SYSTEM", "CausalPRMScorer", "QwenPRMScorer"]

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
PLAIN_TEMPLATE = "System: {system}\nUser: {question}\nAssistant: {response}"

_DTYPES = ("auto", "float32", "float16", "bfloat16")


def _import_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ParameterError(
            "scorer",
            f"process reward models need torch and transformers ({e}); "
            "install them with: pip install 'optscale[transformers]'",
        ) from None
    return torch, transformers


class _TransformersPRM(Scorer):
    """Shared machinery: loading, device/dtype, batching, step extraction and aggregation.

    Common parameters: ``model`` (name, path or loaded module) and ``tokenizer`` (name, path or object;
    defaults to ``model`` when that is a name); ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``dtype``
    (``"auto"``: the checkpoint's dtype on GPU, float32 on CPU; or ``"float32"``, ``"bfloat16"``,
    ``"float16"``, a torch.dtype); ``aggregation`` (``mean``, ``min``, ``last``, ``product``);
    ``batch_size`` (samples per forward pass); ``step_split`` (``"\\n\\n"``); ``max_length`` (longest input
    in tokens, default the model's ``max_position_embeddings``; longer samples raise ScoringError rather than
    being truncated); ``on_empty`` (``"error"``: a completion without steps raises ScoringError; ``"zero"``:
    it scores 0.0 with no step scores); ``trust_remote_code``; ``name``.
    Use :meth:`step_scores` for the per-step scores and :meth:`score` for the aggregated ones.
    """

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        device: str = "cpu",
        dtype: Any = "auto",
        aggregation: str = "mean",
        batch_size: int = 8,
        step_split: str = "\n\n",
        max_length: int | None = None,
        on_empty: str = "error",
        trust_remote_code: bool = False,
        name: str | None = None,
    ):
        torch, _ = _import_torch()
        self.aggregation = check_aggregation(aggregation)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ParameterError("batch_size", f"must be an integer >= 1, got {batch_size!r}")
        if not step_split:
            raise ParameterError("step_split", "must be a non-empty string")
        if on_empty not in ("error", "zero"):
            raise ParameterError("on_empty", f"must be 'error' or 'zero', got {on_empty!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ParameterError("max_length", f"must be a positive integer or None, got {max_length!r}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as e:
            raise ParameterError("device", f"invalid device {device!r}: {e}") from None
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ParameterError("device", f"{device!r} requested but CUDA is not available")
        if isinstance(dtype, str):
            if dtype not in _DTYPES:
                raise ParameterError("dtype", f"unknown dtype {dtype!r}; choose one of {_DTYPES}")
            torch_dtype = None if dtype == "auto" else getattr(torch, dtype)
        elif isinstance(dtype, torch.dtype) or dtype is None:
            torch_dtype = dtype
        else:
            raise ParameterError("dtype", f"expected a dtype name or torch.dtype, got {dtype!r}")
        if torch_dtype is None and self.device.type == "cpu":
            torch_dtype = torch.float32  # half precision on CPU is slow and often unsupported

        self.batch_size, self.step_split, self.on_empty = batch_size, step_split, on_empty
        if isinstance(model, str):
            self.model_name = model
            self.model = self._load_model(model, torch_dtype, trust_remote_code)
        else:
            self.model_name = (
                getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
            )
            self.model = model if torch_dtype is None else model.to(dtype=torch_dtype)
        self.model = self.model.to(self.device)
        self.model.eval()
        if tokenizer is None:
            if not isinstance(model, str):
                raise ParameterError(
                    "tokenizer", "a tokenizer is required when the model is passed as an object"
                )
            tokenizer = model
        if isinstance(tokenizer, str):
            from transformers import AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=trust_remote_code)
            except (OSError, ValueError) as e:
                raise ParameterError("tokenizer", f"cannot load tokenizer {tokenizer!r}: {e}") from None
        self.tokenizer = tokenizer
        if max_length is None:
            max_length = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        self.max_length = max_length
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.name = name or f"{self.kind}:{self.model_name}"
        self._lock = threading.Lock()

    kind = "prm"

    # -- hooks -------------------------------------------------------------------------------------------
    def _load_model(self, name: str, torch_dtype: Any, trust_remote_code: bool) -> Any:
        raise NotImplementedError

    def encode(self, question: str, steps: Sequence[str], index: int = 0) -> tuple[list[int], list[int]]:
        """Token ids of one sample and the positions whose outputs score its steps (one per step)."""
        raise NotImplementedError

    def _forward_at(self, input_ids: Any, attention_mask: Any, rows: Any, cols: Any) -> Any:
        """Model outputs at (rows[i], cols[i]) -> probabilities of a good step, shape [len(rows)]."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------------
    @staticmethod
    def _from_pretrained(loader: Any, name: str, torch_dtype: Any, trust_remote_code: bool) -> Any:
        import transformers

        # transformers >= 4.56 names the argument ``dtype``; older versions ``torch_dtype``
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        key = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        kwargs: dict[str, Any] = {
            "trust_remote_code": trust_remote_code,
            key: torch_dtype if torch_dtype is not None else "auto",
        }
        try:
            return loader.from_pretrained(name, **kwargs)
        except (OSError, ValueError) as e:
            raise ParameterError("model", f"cannot load {name!r}: {e}{_remote_code_hint(e, trust_remote_code)}") from None

    def steps(self, text: str) -> list[str]:
        """The steps of a completion (see :func:`~optscale.online.scorers.split_steps`)."""
        return split_steps(text, self.step_split)

    def step_scores(self, question: str, completions: Sequence[Completion]) -> list[list[float]]:
        """Per-step scores, each in [0, 1], one list per completion (empty for a completion without steps
        when ``on_empty="zero"``; otherwise such a completion raises :class:`ScoringError`)."""
        torch, _ = _import_torch()
        encoded: list[tuple[int, list[int], list[int]]] = []
        result: list[list[float]] = [[] for _ in completions]
        for i, c in enumerate(completions):
            steps = self.steps(c.text)
            if not steps:
                if self.on_empty == "error":
                    raise ScoringError(
                        i, "the completion has no steps (empty or whitespace-only text)", self.name
                    )
                continue
            ids, pos = self.encode(question, steps, i)
            if len(pos) != len(steps):
                raise ScoringError(
                    i,
                    f"found {len(pos)} step positions for {len(steps)} steps; the step "
                    "text likely contains a separator/tag token",
                    self.name,
                )
            if self.max_length is not None and len(ids) > self.max_length:
                raise ScoringError(
                    i, f"input is {len(ids)} tokens, longer than max_length={self.max_length}", self.name
                )
            encoded.append((i, ids, pos))
        encoded.sort(key=lambda e: -len(e[1]))
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(ids) for _, ids, _ in batch)
            input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            rows, cols = [], []
            for b, (_, ids, pos) in enumerate(batch):
                input_ids[b, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[b, : len(ids)] = 1
                rows += [b] * len(pos)
                cols += pos
            with self._lock, torch.inference_mode():
                probs = self._forward_at(
                    input_ids.to(self.device),
                    mask.to(self.device),
                    torch.tensor(rows, device=self.device),
                    torch.tensor(cols, device=self.device),
                )
            probs = probs.float().cpu().tolist()
            k = 0
            for i, _, pos in batch:
                result[i] = [check_score(p, i, self.name) for p in probs[k : k + len(pos)]]
                k += len(pos)
        return result

    def score(self, question: str, completions: Sequence[Completion]) -> list[float]:
        """Aggregated step scores (0.0 for a completion without steps when ``on_empty="zero"``)."""
        return [aggregate(s, self.aggregation) if s else 0.0 for s in self.step_scores(question, completions)]

    def _render_chat(self, messages: list[dict[str, str]], *, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode_text(self, text: str, special: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=special))

    def _single_token(self, param: str, token: str | int) -> int:
        """Id of a token given as an id or as text (the last id of its encoding, as the model cards do)."""
        if isinstance(token, int):
            return token
        ids = self._encode_text(token, False)
        if not ids:
            raise ParameterError(param, f"{token!r} encodes to no token with this tokenizer")
        return ids[-1]


class QwenPRMScorer(_TransformersPRM):
    """Qwen2.5-Math-PRM layout (see the module docstring).

    ``model``: a model name or path (loaded with ``AutoModel``, or ``AutoModelForTokenClassification`` when
    the checkpoint is a ``*ForTokenClassification``). ``trust_remote_code`` is False by default: a model
    directory's own Python code is not run. The Qwen2.5-Math-PRM checkpoints ship their model class as such
    code; loading them needs the explicit opt-in ``trust_remote_code=True``
    (``--scorer prm:<dir>,trust_remote_code=true``), to be given only for a directory whose code you trust.
    or a loaded module whose output ``logits`` (or first output) is ``[batch, seq, num_labels >= 2]``;
    ``tokenizer`` is then required. ``step_separator`` (``"<extra_0>"``) must be one token of the tokenizer;
    occurrences of it inside the question or the steps are removed before scoring. ``positive_index``: the
    class read as "correct" (1). ``system``: the system prompt (the model card's by default).
    """

    kind = "prm"

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        step_separator: str = "<extra_0>",
        system: str | None = QWEN_PRM_SYSTEM,
        positive_index: int = 1,
        trust_remote_code: bool = False,
        **kw: Any,
    ):
        super().__init__(model, tokenizer=tokenizer, trust_remote_code=trust_remote_code, **kw)
        if not isinstance(positive_index, int) or positive_index < 0:
            raise ParameterError("positive_index", f"must be a non-negative integer, got {positive_index!r}")
        self.step_separator, self.system, self.positive_index = step_separator, system, positive_index
        ids = self._encode_text(step_separator, False)
        if len(ids) != 1:
            raise ParameterError(
                "step_separator",
                f"{step_separator!r} is not a single token of the tokenizer "
                f"(it encodes to {len(ids)} tokens); add it as a special token",
            )
        self.sep_id = ids[0]

    def _load_model(self, name: str, torch_dtype: Any, trust_remote_code: bool) -> Any:
        from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification

        try:
            config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ParameterError("model", f"cannot load {name!r}: {e}{_remote_code_hint(e, trust_remote_code)}") from None
        archs = getattr(config, "architectures", None) or []
        loader = (
            AutoModelForTokenClassification
            if any("ForTokenClassification" in a for a in archs)
            else AutoModel
        )
        return self._from_pretrained(loader, name, torch_dtype, trust_remote_code)

    def render(self, question: str, steps: Sequence[str]) -> str:
        """The PRM input text for one sample (chat template, or the plain fallback template)."""
        sep = self.step_separator
        response = "".join(s.replace(sep, "") + sep for s in steps)
        question = question.replace(sep, "")
        if getattr(self.tokenizer, "chat_template", None):
            msgs = [] if self.system is None else [{"role": "system", "content": self.system}]
            msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": response}]
            return self._render_chat(msgs)
        return PLAIN_TEMPLATE.format(system=self.system or "", question=question, response=response)

    def encode(self, question: str, steps: Sequence[str], index: int = 0) -> tuple[list[int], list[int]]:
        templated = bool(getattr(self.tokenizer, "chat_template", None))
        ids = self._encode_text(self.render(question, steps), special=not templated)
        return ids, [j for j, t in enumerate(ids) if t == self.sep_id]

    def _forward_at(self, input_ids: Any, attention_mask: Any, rows: Any, cols: Any) -> Any:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        logits = out.logits if hasattr(out, "logits") else out[0]
        if logits.dim() != 3 or logits.shape[-1] <= self.positive_index or logits.shape[-1] < 2:
            raise ScoringError(
                None,
                f"the model's output has shape {tuple(logits.shape)}; expected "
                f"[batch, seq, num_labels >= 2] from a token-classification head",
                self.name,
            )
        return logits[rows, cols].float().softmax(dim=-1)[:, self.positive_index]


class CausalPRMScorer(_TransformersPRM):
    """Math-Shepherd / RLHFlow layout on a causal LM (see the module docstring).

    ``layout``: ``"shepherd"`` or ``"rlhflow"``. ``step_tag`` (``"ки"``, shepherd layout): the tag after each
    step, removed from the step texts beforehand. ``good_token`` / ``bad_token`` (``"+"`` / ``"-"``): text (the
    last token of its encoding is used, as in the model cards) or a token id. ``fast_head`` computes the LM
    head only at the scored positions (exact for models without final-logit scaling; turned off automatically
    for models that have it).
    """

    kind = "prm-causal"
    LAYOUTS = ("shepherd", "rlhflow")

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        layout: str = "shepherd",
        step_tag: str = "ки",
        good_token: str | int = "+",
        bad_token: str | int = "-",
        fast_head: bool = True,
        **kw: Any,
    ):
        if layout not in self.LAYOUTS:
            raise ParameterError("layout", f"unknown PRM layout {layout!r}; choose one of {self.LAYOUTS}")
        self.layout = layout
        self.kind = f"prm-{layout}"
        super().__init__(model, tokenizer=tokenizer, **kw)
        self.step_tag = step_tag
        self.good_id = self._single_token("good_token", good_token)
        self.bad_id = self._single_token("bad_token", bad_token)
        if self.good_id == self.bad_id:
            raise ParameterError("bad_token", "the good and bad tokens map to the same token id")
        if layout == "shepherd":
            if not step_tag:
                raise ParameterError("step_tag", "must be a non-empty string")
            self.tag_id = self._encode_text(f"a {step_tag}", False)[-1]
        elif not getattr(self.tokenizer, "chat_template", None):
            raise ParameterError("tokenizer", "the 'rlhflow' layout needs a tokenizer with a chat template")
        cfg = getattr(self.model, "config", None)
        scaled = any(
            getattr(cfg, a, None) not in (None, 1, 1.0) for a in ("final_logit_softcapping", "logit_scale")
        )
        self.fast_head = bool(fast_head) and not scaled and self._split_model() is not None

    def _load_model(self, name: str, torch_dtype: Any, trust_remote_code: bool) -> Any:
        from transformers import AutoModelForCausalLM

        return self._from_pretrained(AutoModelForCausalLM, name, torch_dtype, trust_remote_code)

    def _split_model(self) -> tuple[Any, Any] | None:
        base = getattr(self.model, getattr(self.model, "base_model_prefix", "model"), None)
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        return (base, head) if base is not None and head is not None and base is not self.model else None

    def encode(self, question: str, steps: Sequence[str], index: int = 0) -> tuple[list[int], list[int]]:
        if self.layout == "shepherd":
            tag = self.step_tag
            body = "\n".join(f"{s.replace(tag, '').strip()} {tag}" for s in steps)
            ids = self._encode_text(f"{question.replace(tag, '')} {body}", True)
            return ids, [j for j, t in enumerate(ids) if t == self.tag_id]
        conv: list[dict[str, str]] = []
        positions: list[int] = []
        good = self.tokenizer.decode([self.good_id]).strip() or "+"
        full_ids: list[int] | None = None
        prefixes = []
        for k, step in enumerate(steps):
            conv.append({"role": "user", "content": f"{question} {step}" if k == 0 else step})
            prefixes.append(self._encode_text(self._render_chat(conv, add_generation_prompt=True), False))
            conv.append({"role": "assistant", "content": good})
        full_ids = self._encode_text(self._render_chat(conv), False)
        for k, prefix in enumerate(prefixes):
            n = len(prefix)
            if full_ids[:n] != prefix or n >= len(full_ids) or full_ids[n] != self.good_id:
                raise ScoringError(
                    index,
                    f"cannot locate the assistant's {good!r} of step {k + 1} in the chat "
                    "template's tokens (the template is not prefix-stable)",
                    self.name,
                )
            positions.append(n - 1)
        return full_ids, positions

    def _forward_at(self, input_ids: Any, attention_mask: Any, rows: Any, cols: Any) -> Any:
        torch, _ = _import_torch()
        cand = torch.tensor([self.good_id, self.bad_id], device=input_ids.device)
        if self.fast_head:
            base, head = self._split_model()  # type: ignore[misc]
            hidden = base(input_ids=input_ids, attention_mask=attention_mask)
            hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
            logits = head(hidden[rows, cols])
        else:
            out = self.model(input_ids=input_ids, attention_mask=attention_mask)
            logits = (out.logits if hasattr(out, "logits") else out[0])[rows, cols]
        return logits[:, cand].float().softmax(dim=-1)[:, 0]


def _remote_code_hint(error: Exception, trusted: bool) -> str:
    """How to opt in when loading failed because the model needs its own code (not run by default)."""
    if trusted or "trust_remote_code" not in str(error):
        return ""
    return ("; this model ships its own Python code, which optscale does not run unless you opt in: "
            "'prm:<model>,trust_remote_code=true' (only for a model directory whose code you trust)")
