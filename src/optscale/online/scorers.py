"""Verifiers: turn a sampled completion into a score in [0, 1].

Every scorer implements :class:`Scorer`::

    scorer.score(question, completions) -> list[float]          # one score in [0, 1] per completion
    await scorer.ascore(question, completions) -> list[float]   # same, for the async runner

A scorer never substitutes a default score: when it cannot score a sample it raises :class:`ScoringError`,
which names the sample index and the cause.

Scorers
-------
=========================  ============================================================================
``SelfCertaintyScorer``    verifier-free confidence from the generator's own token logprobs (default)
``JudgeScorer``            LLM-as-judge: P(yes) / (P(yes) + P(no)) of a judge model's first token
``RewardEndpointScorer``   a reward model served over HTTP (vLLM ``/pooling`` or ``/classify`` API)
``QwenPRMScorer``          process reward model, Qwen2.5-Math-PRM layout (transformers; ``optscale.online.prm``)
``CausalPRMScorer``        process reward model, Math-Shepherd / RLHFlow layout (``optscale.online.prm``)
=========================  ============================================================================

:func:`make_scorer` builds one from a spec string (``"self-certainty"``, ``"prm:<model>"``, ...).

Only the standard library and numpy are imported at module level; httpx, torch and transformers are imported
inside the functions that use them.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from optscale.errors import OptScaleError, ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from optscale.online.generators import Completion, Generator

__all__ = [
    "AGGREGATIONS",
    "JudgeScorer",
    "RewardEndpointScorer",
    "Scorer",
    "ScoringError",
    "SelfCertaintyScorer",
    "aggregate",
    "make_scorer",
    "split_steps",
]

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------
# errors, base class, helpers
# ----------------------------------------------------------------------------------------------------------
class ScoringError(OptScaleError):
    """A scorer could not score a sample.

    ``index`` is the position of the sample in the ``completions`` list passed to ``score`` (``None`` when
    the failure concerns the whole call, e.g. an unreachable endpoint); ``cause`` is a short explanation.
    """

    def __init__(self, index: int | None, cause: str, scorer: str | None = None):
        self.index, self.cause, self.scorer = index, cause, scorer
        where = f"sample {index}" if index is not None else "all samples"
        prefix = f"scorer {scorer!r}: " if scorer else ""
        super().__init__(f"{prefix}{where}: {cause}")


class Scorer:
    """A verifier: ``score(question, completions)`` returns one score in [0, 1] per completion.

    Attributes the runner reads:

    * ``name`` -- short identifier written into pools and reports;
    * ``needs_logprobs`` -- the generator must return per-token logprobs (``Completion.logprobs``);
    * ``top_logprobs`` -- how many alternatives per position the generator must return in
      ``Completion.top_logprobs`` (0 = none needed).

    Subclasses implement :meth:`score` (compute-bound scorers; :meth:`ascore` then runs it in a worker thread)
    or :meth:`ascore` (I/O-bound scorers; :meth:`score` then runs the coroutine to completion).
    """

    name: str = "scorer"
    needs_logprobs: bool = False
    top_logprobs: int = 0

    def score(self, question: str, completions: Sequence[Completion]) -> list[float]:
        """Scores in [0, 1], one per completion; raises :class:`ScoringError`."""
        if type(self).ascore is Scorer.ascore:  # neither method overridden
            raise NotImplementedError(f"{type(self).__name__} implements neither score nor ascore")
        return _run_sync(self.ascore(question, completions), self.name)

    async def ascore(self, question: str, completions: Sequence[Completion]) -> list[float]:
        """Async form of :meth:`score`."""
        if type(self).score is Scorer.score:
            raise NotImplementedError(f"{type(self).__name__} implements neither score nor ascore")
        return await asyncio.to_thread(self.score, question, list(completions))

    async def aclose(self) -> None:
        """Release network clients / models; the scorer must not be used afterwards."""

    def close(self) -> None:
        """Synchronous form of :meth:`aclose`."""
        _run_sync(self.aclose(), self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _run_sync(coro: Awaitable[T], name: str) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    if inspect.iscoroutine(coro):
        coro.close()
    raise RuntimeError(
        f"scorer {name!r}: score() was called from inside a running event loop; use 'await scorer.ascore(...)'"
    )


def _check_score(value: float, index: int, scorer: str, tol: float = 1e-6) -> float:
    """Validate a final score: finite and in [0, 1] (values within ``tol`` outside are clipped)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScoringError(index, f"score {value!r} is not a number", scorer) from None
    if not math.isfinite(v) or v < -tol or v > 1 + tol:
        raise ScoringError(index, f"score {v!r} is not in [0, 1]", scorer)
    return min(1.0, max(0.0, v))


check_score = _check_score   # public name for scorers in other modules (online.prm)


AGGREGATIONS = ("mean", "min", "last", "product")


def aggregate(step_scores: Sequence[float], how: str = "mean") -> float:
    """Combine per-step scores p_1..p_K (each in [0, 1]) into one score in [0, 1].

    * ``mean``    -- (1/K) sum_k p_k (the OptScale paper's choice);
    * ``min``     -- min_k p_k (a solution is as good as its weakest step);
    * ``last``    -- p_K (the PRM's judgement after the final step);
    * ``product`` -- prod_k p_k (probability that every step is correct, if independent).

    Raises ``ValueError`` on an empty sequence and :class:`ParameterError` on an unknown ``how``.
    """
    if how not in AGGREGATIONS:
        raise ParameterError(
            "aggregation", f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    if len(step_scores) == 0:
        raise ValueError("no step scores to aggregate")
    p = np.asarray(step_scores, dtype=np.float64)
    if how == "mean":
        return float(p.mean())
    if how == "min":
        return float(p.min())
    if how == "last":
        return float(p[-1])
    return float(np.exp(np.sum(np.log(np.clip(p, 0.0, 1.0))))) if np.all(p > 0) else 0.0


def split_steps(text: str, separator: str = "\n\n") -> list[str]:
    """Split a solution into reasoning steps on ``separator`` (blank lines by default).

    Leading/trailing whitespace of each step is stripped and empty steps are dropped, so an empty or
    whitespace-only text has no steps.
    """
    if not separator:
        raise ParameterError("step_split", "the step separator must be a non-empty string")
    return [s.strip() for s in text.split(separator) if s.strip()]


def _check_aggregation(how: str) -> str:
    if how not in AGGREGATIONS:
        raise ParameterError(
            "aggregation", f"unknown aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}"
        )
    return how


check_aggregation = _check_aggregation   # public name for scorers in other modules (online.prm)


# ----------------------------------------------------------------------------------------------------------
# self-certainty (verifier-free)
# ----------------------------------------------------------------------------------------------------------
class SelfCertaintyScorer(Scorer):
    r"""Verifier-free confidence computed from the generator's own token logprobs.

    Two formulas (``method``):

    ``"mean-logprob"`` (the default; needs ``Completion.logprobs`` only)
        The geometric-mean probability of the sampled tokens,

        .. math::  s = \exp\Big(\frac{1}{T}\sum_{t=1}^{T} \log p(y_t \mid y_{<t})\Big).

        Each logprob is <= 0, so the mean is <= 0 and ``s`` lies in (0, 1] (0 only for a token of probability
        0); ``s = 1`` means the model was certain of every token. Logprobs slightly above 0 (float rounding in
        servers, up to 1e-4) are clipped to 0.

    ``"kl"`` -- self-certainty of Kang et al. (2025), needs ``Completion.top_logprobs``
        At each position t the top-k alternatives' probabilities are renormalised, q_t = p_t / sum(p_t), and
        the token self-certainty is the KL divergence from the uniform distribution U_k to q_t,

        .. math::  SC_t = KL(U_k \,\|\, q_t) = -\log k - \frac{1}{k}\sum_{j=1}^{k} \log q_{t,j}  \;\in [0, \infty),

        averaged over tokens, :math:`SC = \frac{1}{T}\sum_t SC_t`. It is mapped monotonically into [0, 1) by

        .. math::  s = 1 - e^{-SC}.

        Since :math:`e^{-SC_t} = k\,(\prod_j q_{t,j})^{1/k}` is the ratio of the geometric to the arithmetic mean
        of q_t (<= 1 by the AM-GM inequality, = 1 iff q_t is uniform), ``s`` is 1 minus the geometric mean over
        tokens of that ratio: 0 for a maximally uncertain (flat) distribution at every token, -> 1 as the mass
        concentrates on one token. The ranking of samples is exactly Kang et al.'s. Positions with fewer than
        2 alternatives carry no information and are an error.

    Missing, empty or non-finite logprobs raise :class:`ScoringError` naming the sample.
    """

    METHODS = ("mean-logprob", "kl")

    def __init__(self, method: str = "mean-logprob", *, top_k: int = 5):
        if method not in self.METHODS:
            raise ParameterError(
                "method", f"unknown self-certainty method {method!r}; choose one of {self.METHODS}"
            )
        if not isinstance(top_k, int) or top_k < 2:
            raise ParameterError("top_k", f"must be an integer >= 2, got {top_k!r}")
        self.method = method
        self.top_k = top_k
        self.needs_logprobs = True
        self.top_logprobs = top_k if method == "kl" else 0
        self.name = "self-certainty" if method == "mean-logprob" else "self-certainty-kl"

    def score(self, question: str, completions: Sequence[Completion]) -> list[float]:
        fn = self._mean_logprob if self.method == "mean-logprob" else self._kl
        return [_check_score(fn(i, c), i, self.name) for i, c in enumerate(completions)]

    def _mean_logprob(self, i: int, c: Completion) -> float:
        lp = getattr(c, "logprobs", None)
        if lp is None:
            raise ScoringError(
                i, "the completion has no token logprobs (request logprobs from the generator)", self.name
            )
        if len(lp) == 0:
            raise ScoringError(i, "the completion has no tokens, so no logprobs to score", self.name)
        a = np.asarray(lp, dtype=np.float64)
        if np.any(np.isnan(a)) or np.any(a == np.inf):
            raise ScoringError(i, "token logprobs contain NaN or +inf", self.name)
        if np.any(a > 1e-4):
            raise ScoringError(i, f"token logprob {float(a.max())!r} > 0 is not a log-probability", self.name)
        return float(np.exp(np.mean(np.minimum(a, 0.0))))

    def _kl(self, i: int, c: Completion) -> float:
        top = getattr(c, "top_logprobs", None)
        if top is None:
            raise ScoringError(
                i, "the completion has no top_logprobs (request top logprobs from the generator)", self.name
            )
        if len(top) == 0:
            raise ScoringError(i, "the completion has no tokens, so no top_logprobs to score", self.name)
        sc = np.empty(len(top))
        for t, alts in enumerate(top):
            vals = np.fromiter((float(v) for v in (alts or {}).values()), dtype=np.float64)
            vals = np.sort(vals)[::-1][: self.top_k]
            if vals.size < 2:
                raise ScoringError(
                    i, f"token {t} has {vals.size} top logprob(s); self-certainty needs >= 2", self.name
                )
            if np.any(np.isnan(vals)) or np.any(vals == np.inf) or not np.isfinite(vals[0]):
                raise ScoringError(i, f"token {t} has non-finite top logprobs", self.name)
            # log q_j = lp_j - logsumexp(lp); -inf entries (q_j = 0) make SC_t infinite (s -> 1)
            m = vals[0]
            log_q = vals - (m + np.log(np.sum(np.exp(vals - m))))
            sc[t] = -np.log(vals.size) - np.mean(log_q)
        sc_mean = float(np.mean(np.maximum(sc, 0.0)))
        return 1.0 - math.exp(-sc_mean) if math.isfinite(sc_mean) else 1.0


# ----------------------------------------------------------------------------------------------------------
# LLM-as-judge
# ----------------------------------------------------------------------------------------------------------
DEFAULT_JUDGE_PROMPT = (
    "Here is a problem and a proposed solution.\n\n"
    "Problem:\n{question}\n\n"
    "Solution:\n{solution}\n\n"
    "Is this solution correct? Answer yes or no."
)


def _norm_token(tok: str) -> str:
    # tokenizer space markers (GPT-2 'Ġ', SentencePiece '▁') and surrounding whitespace / punctuation
    return tok.replace("\u0120", " ").replace("\u2581", " ").strip().strip(".,:!\"'").lower()


class JudgeScorer(Scorer):
    r"""LLM-as-judge: ask a judge model whether the solution is correct and read its first-token distribution.

    The judge (any :class:`~optscale.online.generators.Generator`) gets ``prompt`` (with ``{question}`` and
    ``{solution}`` filled in) as a user message, optionally after a system message, and is asked for one token
    at temperature 0 with logprobs. From the first token's ``top_logprobs`` (token -> logprob),

    .. math::  P(\text{yes}) = \sum_{v \in \text{yes-variants}} e^{\ell_v}, \quad
               P(\text{no}) = \sum_{v \in \text{no-variants}} e^{\ell_v}, \quad
               s = \frac{P(\text{yes})}{P(\text{yes}) + P(\text{no})} \in [0, 1],

    where the variants are the alternatives equal to ``yes`` / ``no`` after lower-casing and stripping spaces,
    tokenizer space markers and punctuation (``"Yes"``, ``" yes"``, ``"YES"``, ``"Ġyes"`` ...). When neither
    appears among the alternatives, :class:`ScoringError` is raised (ask the generator for more alternatives,
    e.g. ``OpenAICompatGenerator(..., top_logprobs=20)``, or change the prompt). A generator whose
    ``top_logprobs`` attribute is below 2 is refused. ``top_k`` is passed to ``generate`` only when its
    signature takes a ``top_logprobs`` argument.
    Completions are judged concurrently, at most ``concurrency`` at a time.
    """

    def __init__(
        self,
        generator: Generator,
        *,
        prompt: str = DEFAULT_JUDGE_PROMPT,
        system: str | None = None,
        top_k: int = 20,
        concurrency: int = 8,
        yes: Sequence[str] = ("yes",),
        no: Sequence[str] = ("no",),
        name: str = "judge",
    ):
        if "{solution}" not in prompt:
            raise ParameterError("prompt", "the judge prompt must contain the '{solution}' placeholder")
        if not isinstance(top_k, int) or top_k < 2:
            raise ParameterError("top_k", f"must be an integer >= 2, got {top_k!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ParameterError("concurrency", f"must be an integer >= 1, got {concurrency!r}")
        k = getattr(generator, "top_logprobs", None)
        if isinstance(k, int) and not isinstance(k, bool) and k < 2:
            raise ParameterError(
                "generator",
                f"the judge generator returns top_logprobs={k} alternative(s) per token; create it with "
                "top_logprobs >= 5 so that both 'yes' and 'no' can be seen (with 1 the score is 0 or 1)",
            )
        self.generator = generator
        self.prompt, self.system, self.top_k, self.concurrency = prompt, system, top_k, concurrency
        self.yes = {_norm_token(y) for y in yes}
        self.no = {_norm_token(n) for n in no}
        self.name = name

    def messages(self, question: str, solution: str) -> list[dict[str, str]]:
        """The chat messages sent to the judge for one solution."""
        msgs = [] if self.system is None else [{"role": "system", "content": self.system}]
        msgs.append({"role": "user", "content": self.prompt.format(question=question, solution=solution)})
        return msgs

    def probability(self, top_logprobs: dict[str, float], index: int = 0) -> float:
        """P(yes) / (P(yes) + P(no)) from one position's alternatives (token -> logprob)."""
        p_yes = p_no = 0.0
        for tok, lp in top_logprobs.items():
            key = _norm_token(tok)
            if key in self.yes:
                p_yes += math.exp(float(lp))
            elif key in self.no:
                p_no += math.exp(float(lp))
        if not (math.isfinite(p_yes) and math.isfinite(p_no)):
            raise ScoringError(index, "judge returned non-finite logprobs", self.name)
        if p_yes + p_no <= 0.0:
            shown = ", ".join(repr(t) for t in list(top_logprobs)[:10])
            raise ScoringError(
                index,
                f"neither 'yes' nor 'no' is among the judge's first-token alternatives ({shown})",
                self.name,
            )
        return p_yes / (p_yes + p_no)

    async def ascore(self, question: str, completions: Sequence[Completion]) -> list[float]:
        sem = asyncio.Semaphore(self.concurrency)
        gen_params = inspect.signature(self.generator.generate).parameters
        extra: dict[str, Any] = {}
        if "top_logprobs" in gen_params:
            extra["top_logprobs"] = self.top_k
        if "seed" in gen_params:
            extra["seed"] = None

        async def one(i: int, c: Completion) -> float:
            async with sem:
                try:
                    outs = await self.generator.generate(
                        self.messages(question, c.text),
                        n=1,
                        max_tokens=1,
                        logprobs=True,
                        temperature=0.0,
                        **extra,
                    )
                except OptScaleError as e:
                    raise ScoringError(i, f"judge generation failed: {e}", self.name) from e
            if not outs:
                raise ScoringError(i, "the judge returned no completion", self.name)
            top = getattr(outs[0], "top_logprobs", None)
            if not top or not top[0]:
                raise ScoringError(
                    i, "the judge's completion has no top_logprobs for its first token", self.name
                )
            return _check_score(self.probability(top[0], i), i, self.name)

        return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(completions))))

    async def aclose(self) -> None:
        close = getattr(self.generator, "aclose", None)
        if close is not None:
            await close()


# ----------------------------------------------------------------------------------------------------------
# reward-model HTTP endpoint (vLLM pooling / classify API)
# ----------------------------------------------------------------------------------------------------------
class RewardEndpointScorer(Scorer):
    r"""A reward model behind an HTTP endpoint speaking vLLM's pooling-model API.

    ``url`` is either the full endpoint (``http://host:8000/pooling`` or ``.../classify``; ``api`` is taken
    from the path) or the server root (``http://host:8000``; ``api`` then picks the path).

    Request (one per completion, at most ``concurrency`` in flight), ``input_format="messages"`` (default)::

        POST {url}   {"model": model, "messages": [{"role": "system", ...}?, {"role": "user", "content": question},
                                                   {"role": "assistant", "content": response}]}

    where ``response`` is the completion text, or, with ``step_separator`` set (e.g. ``"<extra_0>"`` for
    Qwen2.5-Math-PRM), its blank-line-separated steps each followed by the separator. With
    ``input_format="text"`` all completions go in one request, ``{"model": model, "input": [text, ...]}``, each
    ``text = template.format(question=..., response=...)``.

    Response (both APIs): ``{"data": [{"index": i, ...}, ...], ...}`` with, per input, ``"data"`` (``/pooling``:
    a number, a vector or a matrix of floats) or ``"probs"`` (``/classify``: a vector). The payload is read as
    rows of class values -- a number is one row of one class, a vector one row, a matrix one row per step (or
    token) -- and turned into probabilities by ``activation``:

    * ``"none"``    -- values are already probabilities (vLLM's ``/classify`` and the STEP pooler apply softmax);
    * ``"sigmoid"`` -- ``1 / (1 + exp(-x))`` elementwise (one-logit reward heads);
    * ``"softmax"`` -- softmax across each row's classes.

    The row score is the probability of class ``positive_index`` (default: 1 when rows have >= 2 classes,
    else 0) and rows are combined by ``aggregation`` (see :func:`aggregate`; ``"last"`` for per-token output of
    an outcome reward model, ``"mean"`` for per-step output of a PRM).

    Retries follow the one policy of every HTTP edge (:mod:`optscale.online.http`): HTTP 408/409/425/429 and
    5xx answers, connection errors and timeouts are retried ``max_retries`` times; ``backoff`` is the base
    delay in seconds of its exponential backoff (or a :class:`~optscale.online.http.Backoff`); ``Retry-After``
    is honoured. Other errors, and malformed responses, raise :class:`ScoringError`. ``transport``: an
    ``httpx.AsyncBaseTransport`` instead of the network (tests).
    """

    APIS = ("pooling", "classify")
    ACTIVATIONS = ("none", "sigmoid", "softmax")

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api: str | None = None,
        input_format: str = "messages",
        system: str | None = None,
        step_separator: str | None = None,
        step_split: str = "\n\n",
        template: str = "{question}\n\n{response}",
        activation: str = "none",
        positive_index: int | None = None,
        aggregation: str = "mean",
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: Any = 0.5,
        concurrency: int = 8,
        api_key: str | None = None,
        headers: dict[str, str] | None = None,
        name: str | None = None,
        transport: Any = None,
    ):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ParameterError("url", f"must be an http(s) URL, got {url!r}")
        url = url.rstrip("/")
        last = url.rsplit("/", 1)[-1]
        if last in self.APIS:
            if api is not None and api != last:
                raise ParameterError("api", f"{api!r} conflicts with the URL path {url!r}")
            api = last
        else:
            api = api or "pooling"
            if api not in self.APIS:
                raise ParameterError("api", f"unknown API {api!r}; choose one of {self.APIS}")
            url = f"{url}/{api}"
        if input_format not in ("messages", "text"):
            raise ParameterError("input_format", f"must be 'messages' or 'text', got {input_format!r}")
        if activation not in self.ACTIVATIONS:
            raise ParameterError(
                "activation", f"unknown activation {activation!r}; choose one of {self.ACTIVATIONS}"
            )
        if positive_index is not None and (not isinstance(positive_index, int) or positive_index < 0):
            raise ParameterError("positive_index", f"must be a non-negative integer, got {positive_index!r}")
        if timeout <= 0:
            raise ParameterError("timeout", f"must be > 0, got {timeout!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise ParameterError("max_retries", f"must be an integer >= 0, got {max_retries!r}")
        from optscale.online.http import Backoff

        if isinstance(backoff, Backoff):
            self.backoff_policy = backoff
        elif isinstance(backoff, int | float) and not isinstance(backoff, bool) and backoff >= 0:
            self.backoff_policy = Backoff(base=float(backoff))
        else:
            raise ParameterError("backoff", f"must be a base delay >= 0 (seconds) or a Backoff, got {backoff!r}")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise ParameterError("concurrency", f"must be an integer >= 1, got {concurrency!r}")
        if input_format == "text" and ("{response}" not in template):
            raise ParameterError("template", "the text template must contain the '{response}' placeholder")
        self.url, self.api, self.model = url, api, model
        self.input_format, self.system, self.step_separator = input_format, system, step_separator
        self.step_split, self.template = step_split, template
        self.activation, self.positive_index = activation, positive_index
        self.aggregation = _check_aggregation(aggregation)
        self.timeout, self.max_retries, self.backoff, self.concurrency = (
            timeout,
            max_retries,
            backoff,
            concurrency,
        )
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.name = name or "reward-endpoint"
        self.transport = transport
        self._client: Any = None
        self._client_loop: Any = None

    # -- request building --------------------------------------------------------------------------------
    def response_text(self, text: str) -> str:
        """The assistant response sent for a completion (steps joined with ``step_separator`` if set)."""
        if self.step_separator is None:
            return text
        steps = split_steps(text.replace(self.step_separator, ""), self.step_split)
        return "".join(s + self.step_separator for s in steps)

    def payload(self, question: str, texts: Sequence[str]) -> dict[str, Any]:
        """The JSON body for one request (``messages`` format: exactly one text)."""
        body: dict[str, Any] = {} if self.model is None else {"model": self.model}
        if self.input_format == "messages":
            (text,) = texts
            msgs = [] if self.system is None else [{"role": "system", "content": self.system}]
            msgs += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": self.response_text(text)},
            ]
            body["messages"] = msgs
        else:
            body["input"] = [
                self.template.format(question=question, response=self.response_text(t)) for t in texts
            ]
        return body

    # -- response parsing --------------------------------------------------------------------------------
    def parse_item(self, item: Any, index: int) -> float:
        """Score of one ``data`` entry of the response (see the class docstring)."""
        key = "probs" if self.api == "classify" else "data"
        if not isinstance(item, dict) or key not in item:
            raise ScoringError(
                index,
                f"malformed response entry: expected an object with {key!r}, got {_short(item)}",
                self.name,
            )
        raw = item[key]
        if isinstance(raw, int | float) and not isinstance(raw, bool) and self.aggregation != "product":
            return self._parse_number(float(raw), key, index)
        rows = _as_rows(raw)
        if rows is None:
            raise ScoringError(
                index,
                f"malformed {key!r}: expected a number, a list of numbers or a list of "
                f"equal-length lists of numbers, got {_short(item[key])}",
                self.name,
            )
        if rows.size == 0:
            raise ScoringError(index, f"empty {key!r} in the response", self.name)
        if not np.all(np.isfinite(rows)):
            raise ScoringError(index, f"non-finite values in {key!r}", self.name)
        if self.activation == "sigmoid":
            probs = 1.0 / (1.0 + np.exp(-rows))
        elif self.activation == "softmax":
            e = np.exp(rows - rows.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        else:
            probs = rows
        pos = self.positive_index if self.positive_index is not None else (1 if rows.shape[1] >= 2 else 0)
        if pos >= rows.shape[1]:
            raise ScoringError(
                index, f"positive_index {pos} but the response has {rows.shape[1]} class(es)", self.name
            )
        col = probs[:, pos]
        if np.any(col < -1e-6) or np.any(col > 1 + 1e-6):
            raise ScoringError(
                index,
                f"value {float(col[(col < 0) | (col > 1)][0])!r} is not a probability; "
                "set activation='sigmoid' or 'softmax' for logits",
                self.name,
            )
        return _check_score(aggregate(np.clip(col, 0.0, 1.0), self.aggregation), index, self.name)

    def _parse_number(self, x: float, key: str, index: int) -> float:
        """:meth:`parse_item` for a bare number (one row of one class: a reward head's usual answer) without
        building arrays: the same score and the same errors, at a fraction of the CPU. (Not used with
        ``aggregation="product"``, whose exp(log(p)) may differ from p in the last bit.)"""
        if not math.isfinite(x):
            raise ScoringError(index, f"non-finite values in {key!r}", self.name)
        if self.activation == "sigmoid":
            p = float(1.0 / (1.0 + np.exp(-np.float64(x))))
        elif self.activation == "softmax":
            p = 1.0  # a softmax over one class
        else:
            p = x
        pos = self.positive_index if self.positive_index is not None else 0
        if pos >= 1:
            raise ScoringError(index, f"positive_index {pos} but the response has 1 class(es)", self.name)
        if p < -1e-6 or p > 1 + 1e-6:
            raise ScoringError(
                index,
                f"value {p!r} is not a probability; set activation='sigmoid' or 'softmax' for logits",
                self.name,
            )
        return _check_score(min(1.0, max(0.0, p)), index, self.name)

    # -- HTTP ----------------------------------------------------------------------------------------------
    def _get_client(self) -> Any:
        # An httpx.AsyncClient belongs to the event loop that created it; score() runs each call in a fresh
        # loop (asyncio.run), so a client from another loop is dropped and a new one made.
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            from optscale.online.http import make_client

            self._client = make_client(timeout=self.timeout, headers=self.headers, transport=self.transport)
            self._client_loop = loop
        return self._client

    async def _post(self, body: dict[str, Any], index: int | None) -> Any:
        """POST with the retry policy of every HTTP edge (:mod:`optscale.online.http`)."""
        from optscale.online.http import HTTPFailure, post_with_retries

        try:
            r, attempts = await post_with_retries(
                self._get_client(),
                self.url,
                body,
                max_retries=self.max_retries,
                backoff=self.backoff_policy,
                timeout=self.timeout,
            )
        except HTTPFailure as e:
            raise ScoringError(
                index, f"request to {self.url} failed after {e.attempts} attempt(s): {e.detail}", self.name
            ) from None
        if r.status_code >= 400:
            raise ScoringError(index, f"{self.url} answered HTTP {r.status_code}: {r.text[:300]}", self.name)
        try:
            return r.json()
        except ValueError:
            raise ScoringError(index, f"{self.url} returned invalid JSON: {r.text[:200]!r}", self.name) from None

    def _data(self, resp: Any, expected: int, index: int | None) -> list[Any]:
        data = resp.get("data") if isinstance(resp, dict) else None
        if not isinstance(data, list):
            raise ScoringError(index, f"malformed response: no 'data' list in {_short(resp)}", self.name)
        if len(data) != expected:
            raise ScoringError(
                index, f"malformed response: {len(data)} entries in 'data' for {expected} input(s)", self.name
            )
        if all(isinstance(d, dict) and isinstance(d.get("index"), int) for d in data):
            data = sorted(data, key=lambda d: d["index"])
        return data

    async def ascore(self, question: str, completions: Sequence[Completion]) -> list[float]:
        texts = [c.text for c in completions]
        if not texts:
            return []
        if self.input_format == "text":
            resp = await self._post(self.payload(question, texts), None)
            data = self._data(resp, len(texts), None)
            return [self.parse_item(item, i) for i, item in enumerate(data)]
        sem = asyncio.Semaphore(self.concurrency)

        async def one(i: int, text: str) -> float:
            async with sem:
                resp = await self._post(self.payload(question, [text]), i)
            (item,) = self._data(resp, 1, i)
            return self.parse_item(item, i)

        return list(await asyncio.gather(*(one(i, t) for i, t in enumerate(texts))))

    def score(self, question: str, completions: Sequence[Completion]) -> list[float]:
        """Synchronous :meth:`ascore` (in its own event loop, whose HTTP client is closed at the end)."""

        async def once() -> list[float]:
            try:
                return await self.ascore(question, completions)
            finally:
                await self.aclose()

        return _run_sync(once(), self.name)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()
        self._client_loop = None


def _short(obj: Any, n: int = 120) -> str:
    s = repr(obj)
    return s if len(s) <= n else s[: n - 3] + "..."


def _as_rows(x: Any) -> np.ndarray | None:
    """number -> [[x]], list of numbers -> [list], list of equal lists -> matrix; anything else -> None."""

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if is_num(x):
        return np.array([[float(x)]])
    if not isinstance(x, list):
        return None
    if all(is_num(v) for v in x):
        return np.array([x], dtype=np.float64).reshape(1, -1) if x else np.zeros((0, 0))
    if all(isinstance(r, list) and r and all(is_num(v) for v in r) for r in x):
        if len({len(r) for r in x}) != 1:
            return None
        return np.array(x, dtype=np.float64)
    return None


# ----------------------------------------------------------------------------------------------------------
# registry
# ----------------------------------------------------------------------------------------------------------
SCORER_NAMES = (
    "self-certainty",
    "mean-logprob",
    "prm",
    "prm-shepherd",
    "prm-rlhflow",
    "reward-endpoint",
    "judge",
)


def _parse_value(v: str) -> Any:
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def _parse_options(parts: Sequence[str], spec: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for p in parts:
        if not p:
            continue
        if "=" not in p:
            raise ParameterError("scorer", f"bad option {p!r} in {spec!r}: expected key=value")
        k, v = p.split("=", 1)
        opts[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return opts


def _judge_generator(base_url: str, opts: dict[str, Any]) -> Generator:
    """An OpenAI-compatible judge generator built from make_scorer options (pops its own keys)."""
    import os

    from optscale.online.openai_compat import OpenAICompatGenerator

    model = opts.pop("model", None)
    if not model:
        raise ParameterError(
            "model", "the judge needs the served model's name: 'judge:<base_url>,model=<name>'"
        )
    api_key = opts.pop("api_key", None) or os.environ.get("OPENAI_API_KEY")
    return OpenAICompatGenerator(base_url, str(model), api_key, top_logprobs=int(opts.get("top_k", 20)))


def make_scorer(spec: str, **kw: Any) -> Scorer:
    """Build a scorer from a spec string; keyword arguments override options given in the spec.

    ==================================  =====================================================================
    ``self-certainty[:method=kl,..]``   :class:`SelfCertaintyScorer` (default method ``mean-logprob``)
    ``mean-logprob``                    :class:`SelfCertaintyScorer` with ``method="mean-logprob"``
    ``prm:<model>[,key=val..]``         :class:`~optscale.online.prm.QwenPRMScorer` (Qwen2.5-Math-PRM layout)
    ``prm-shepherd:<model>[,..]``       :class:`~optscale.online.prm.CausalPRMScorer`, Math-Shepherd layout
    ``prm-rlhflow:<model>[,..]``        :class:`~optscale.online.prm.CausalPRMScorer`, RLHFlow layout
    ``reward-endpoint:<url>[,..]``      :class:`RewardEndpointScorer`
    ``judge:<base_url>,model=<name>``   :class:`JudgeScorer` on an OpenAI-compatible server (``api_key=`` or
                                        ``$OPENAI_API_KEY``; top_logprobs = ``top_k``, 20 by default)
    ``judge[:key=val,..]``              :class:`JudgeScorer` with ``generator=`` given as a keyword argument
    ==================================  =====================================================================

    ``<model>`` is a Hugging Face model name or a local path; options are ``key=value`` pairs separated by
    commas (``prm:Qwen/Qwen2.5-Math-PRM-7B,device=cuda,aggregation=min``). Unknown names or options raise
    :class:`ParameterError`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ParameterError("scorer", f"expected a scorer spec such as 'self-certainty', got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    parts = rest.split(",") if rest else []

    def with_target(what: str) -> tuple[str, dict[str, Any]]:
        first = parts[0].strip() if parts else ""
        if not first or ("=" in first and not first.startswith(("http", "/", "."))):
            raise ParameterError("scorer", f"{name!r} needs {what}: '{name}:<{what}>'")
        return first, {**_parse_options(parts[1:], spec), **kw}

    try:
        if name in ("self-certainty", "mean-logprob"):
            opts = {**_parse_options(parts, spec), **kw}
            if name == "mean-logprob":
                opts.setdefault("method", "mean-logprob")
            return SelfCertaintyScorer(**opts)
        if name == "judge":
            first = parts[0].strip() if parts else ""
            url_given = first.startswith(("http://", "https://"))
            opts = {**_parse_options(parts[1:] if url_given else parts, spec), **kw}
            if "generator" not in opts:
                base_url = first if url_given else opts.pop("base_url", None)
                if base_url is None:
                    raise ParameterError(
                        "generator",
                        "the 'judge' scorer needs a judge model: 'judge:<base_url>,model=<name>' (an "
                        "OpenAI-compatible server) or make_scorer('judge', generator=...)",
                    )
                opts["generator"] = _judge_generator(base_url, opts)
            return JudgeScorer(**opts)
        if name == "reward-endpoint":
            url, opts = with_target("url")
            return RewardEndpointScorer(url, **opts)
        if name in ("prm", "prm-shepherd", "prm-rlhflow"):
            model, opts = with_target("model")
            from optscale.online import prm

            if name == "prm":
                return prm.QwenPRMScorer(model, **opts)
            return prm.CausalPRMScorer(model, layout=name.removeprefix("prm-"), **opts)
    except TypeError as e:  # unknown keyword
        raise ParameterError("scorer", f"bad option for {name!r}: {e}") from None
    raise ParameterError("scorer", f"unknown scorer {name!r}; choose one of {', '.join(SCORER_NAMES)}")
