"""The one interface shared by every stopping/selection rule (see docs/DESIGN.md, "policies").

A :class:`Policy` is a pure, deterministic rule. Online (one problem, step by step) the runner calls
``next_wave(obs, n_max)`` to learn how many more samples to draw (0 = stop) and, at the end,
``select(obs)`` for the index of the chosen sample. Offline, ``replay(batch, n_max)`` answers the same
questions for B rows at once (problems x orderings, samples already in draw order); the default loops
``next_wave``/``select`` per row, and each policy overrides it with a vectorized numpy version that a test
checks against the loop.

Conventions shared by all policies:

* answer class ids are ``int64`` with ``-1`` meaning "no answer / unparsable";
* a row never draws more than ``min(n_max, n[b])`` samples (``n[b]`` = samples available);
* ``selected`` is an index in draw order, ``-1`` only when nothing was drawn.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optscale.errors import OptScaleError, ParameterError

__all__ = [
    "GUARANTEES",
    "GUARANTEE_NONE",
    "GUARANTEE_PLUGIN",
    "GUARANTEE_POSTERIOR",
    "BatchOnlyError",
    "Observation",
    "Policy",
    "ReplayBatch",
    "ReplayResult",
    "check_n_max",
    "effective_budget",
    "replay_loop",
]


class BatchOnlyError(OptScaleError, NotImplementedError):
    """Raised by ``next_wave`` of a policy that only makes sense over a whole problem set (DSC)."""


def check_n_max(n_max: Any) -> int:
    """Validate the per-problem sample budget ``n_max`` (an integer >= 1)."""
    if isinstance(n_max, bool) or not isinstance(n_max, int | np.integer):
        raise ParameterError("n_max", f"must be an integer >= 1, got {n_max!r}")
    if n_max < 1:
        raise ParameterError("n_max", f"must be >= 1, got {n_max}")
    return int(n_max)


def _as_1d(value: Any, dtype: Any, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim != 1:
        raise ParameterError(name, f"must be one-dimensional, got shape {arr.shape}")
    return arr


@dataclass(frozen=True)
class Observation:
    """The samples of ONE problem seen so far, in draw order.

    ``answers``: int64 [n] answer class ids (-1 = none/unparsable); ``scores``: float64 [n] verifier
    scores in [0, 1] (NaN where unknown or not needed); ``tokens``: float64 [n]; ``prior``: optional
    ``(mu0, sigma0, sd_mu, sd_sigma)`` for OptScale^t.
    """

    answers: np.ndarray
    scores: np.ndarray
    tokens: np.ndarray
    prior: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        answers = _as_1d(self.answers, np.int64, "answers")
        scores = _as_1d(self.scores, np.float64, "scores")
        tokens = _as_1d(self.tokens, np.float64, "tokens")
        if not (len(answers) == len(scores) == len(tokens)):
            raise ParameterError(
                "observation",
                f"answers, scores and tokens differ in length ({len(answers)}, {len(scores)}, {len(tokens)})",
            )
        object.__setattr__(self, "answers", answers)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "tokens", tokens)
        if self.prior is not None:
            prior = tuple(float(x) for x in self.prior)
            if len(prior) != 4:
                raise ParameterError("prior", f"must be (mu0, sigma0, sd_mu, sd_sigma), got {self.prior!r}")
            object.__setattr__(self, "prior", prior)

    def __len__(self) -> int:
        return len(self.answers)

    @classmethod
    def empty(cls, prior: tuple[float, float, float, float] | None = None) -> Observation:
        """The observation before the first draw."""
        return cls(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), prior)

    def head(self, k: int) -> Observation:
        """The first ``k`` samples (same prior)."""
        return Observation(self.answers[:k], self.scores[:k], self.tokens[:k], self.prior)


@dataclass
class ReplayBatch:
    """B rows = problems x orderings, samples already permuted into draw order.

    ``answers`` int64 [B, M] (-1 = none/unparsable or padding); ``scores`` float64 [B, M] (NaN where
    missing); ``tokens`` float64 [B, M]; ``n`` int64 [B] samples available per row (the first ``n[b]``
    columns are real); ``priors`` float64 [B, 4] ``(mu0, sigma0, sd_mu, sd_sigma)`` or None;
    ``difficulty`` float64 [B] (higher = harder) or None; ``group`` int64 [B] ordering id (DSC works per
    group); None means one group.
    """

    answers: np.ndarray
    scores: np.ndarray
    tokens: np.ndarray
    n: np.ndarray
    priors: np.ndarray | None = None
    difficulty: np.ndarray | None = None
    group: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.answers = np.asarray(self.answers, dtype=np.int64)
        if self.answers.ndim != 2:
            raise ParameterError("answers", f"must be [B, M], got shape {self.answers.shape}")
        shape = self.answers.shape
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.tokens = np.asarray(self.tokens, dtype=np.float64)
        for name in ("scores", "tokens"):
            if getattr(self, name).shape != shape:
                raise ParameterError(
                    name, f"must have the shape of answers {shape}, got {getattr(self, name).shape}"
                )
        self.n = np.asarray(self.n, dtype=np.int64)
        if self.n.shape != (shape[0],):
            raise ParameterError("n", f"must have shape ({shape[0]},), got {self.n.shape}")
        if self.n.size and (self.n.min() < 0 or self.n.max() > shape[1]):
            raise ParameterError("n", f"must lie in [0, {shape[1]}] (the number of columns)")
        if self.priors is not None:
            self.priors = np.asarray(self.priors, dtype=np.float64)
            if self.priors.shape != (shape[0], 4):
                raise ParameterError("priors", f"must have shape ({shape[0]}, 4), got {self.priors.shape}")
        if self.difficulty is not None:
            self.difficulty = np.asarray(self.difficulty, dtype=np.float64)
            if self.difficulty.shape != (shape[0],):
                raise ParameterError(
                    "difficulty", f"must have shape ({shape[0]},), got {self.difficulty.shape}"
                )
        if self.group is None:
            self.group = np.zeros(shape[0], dtype=np.int64)
        else:
            self.group = np.asarray(self.group, dtype=np.int64)
            if self.group.shape != (shape[0],):
                raise ParameterError("group", f"must have shape ({shape[0]},), got {self.group.shape}")

    @property
    def size(self) -> int:
        return self.answers.shape[0]

    def observation(self, b: int, k: int) -> Observation:
        """Row ``b``'s first ``k`` samples as an :class:`Observation` (with its prior, if any)."""
        prior = None
        if self.priors is not None and np.all(np.isfinite(self.priors[b])):
            prior = tuple(float(x) for x in self.priors[b])
        return Observation(self.answers[b, :k], self.scores[b, :k], self.tokens[b, :k], prior)


@dataclass
class ReplayResult:
    """``n_drawn`` int64 [B] samples drawn (cost = ``tokens[:n_drawn].sum()``); ``selected`` int64 [B]
    index in draw order of the chosen sample (-1 if none); ``info``: optional per-row diagnostics."""

    n_drawn: np.ndarray
    selected: np.ndarray
    info: dict[str, np.ndarray] = field(default_factory=dict)

    def token_cost(self, tokens: np.ndarray) -> np.ndarray:
        """Tokens spent per row: the sum of ``tokens[b, :n_drawn[b]]``."""
        tokens = np.asarray(tokens, dtype=np.float64)
        cols = np.arange(tokens.shape[1])
        return np.where(cols[None, :] < self.n_drawn[:, None], np.nan_to_num(tokens), 0.0).sum(axis=1)


def effective_budget(batch: ReplayBatch, n_max: int) -> np.ndarray:
    """``min(n_max, n[b])``: the most samples row ``b`` can draw."""
    return np.minimum(batch.n, check_n_max(n_max))


def replay_loop(policy: Policy, batch: ReplayBatch, n_max: int) -> ReplayResult:
    """Reference replay: run ``next_wave``/``select`` row by row, exactly as the online runner would,
    clipping each wave to the samples the row has (``n[b]``). A policy with a ``stop_early(obs)`` hook
    (e.g. "a drawn score reached s*") is asked after each sample of a wave; True ends the row there
    (the online loop cancels the rest of the wave)."""
    n_max = check_n_max(n_max)
    B = batch.size
    n_drawn = np.zeros(B, dtype=np.int64)
    selected = np.full(B, -1, dtype=np.int64)
    stop_early = getattr(policy, "stop_early", None)
    for b in range(B):
        avail = min(n_max, int(batch.n[b]))
        drawn = 0
        while True:
            wave = int(policy.next_wave(batch.observation(b, drawn), n_max))
            if wave < 0:
                raise ParameterError("wave", f"{policy.name} asked for a negative wave ({wave})")
            wave = min(wave, avail - drawn)
            if wave <= 0:
                break
            if stop_early is not None:  # the online loop checks each completed prefix inside a wave
                hit = next((d for d in range(drawn + 1, drawn + wave + 1) if stop_early(batch.observation(b, d))),
                           None)
                if hit is not None:
                    drawn = hit
                    break
            drawn += wave
        n_drawn[b] = drawn
        if drawn > 0:
            selected[b] = int(policy.select(batch.observation(b, drawn)))
    return ReplayResult(n_drawn, selected, {})


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):
        return "/".join(_fmt(v) for v in value)
    return str(value)


#: what a policy promises (its class attribute ``guarantee``; every registered policy declares it):
#: no probabilistic promise (fixed budgets, votes, cost-aware stopping)
GUARANTEE_NONE = "none"
#: P(best of N >= s*) >= 1 - alpha under the law FITTED to the warm-up scores (a point estimate plugged into
#: N* = ceil(ln alpha / ln F(s*))): the paper's claim (OptScale^0 / OptScale^t), valid only if the fitted law
#: were exact; measured to miss on real scores (README, issue #8)
GUARANTEE_PLUGIN = "plug-in"
#: P(best of N >= s*) >= 1 - alpha under the posterior predictive of the score law given the warm-up scores
#: (and the prior): the guarantee optscale claims (``optscale-post*``)
GUARANTEE_POSTERIOR = "posterior"
GUARANTEES = (GUARANTEE_NONE, GUARANTEE_PLUGIN, GUARANTEE_POSTERIOR)


class Policy(ABC):
    """A stopping + selection rule (pure and deterministic).

    Subclasses set ``key`` (registry name), ``needs_scores`` and implement ``next_wave`` and ``select``;
    they should override ``replay`` with a vectorized version. ``params()`` returns the constructor
    parameters that define the policy; ``name`` is the canonical spec string (``make_policy(p.name)``
    rebuilds an equal policy) and ``label`` a short readable form for tables.
    """

    key: str = "policy"
    display: str = "Policy"
    #: what the rule promises: one of :data:`GUARANTEES` ("none", "plug-in", "posterior"); a rule that
    #: claims one has ``target`` (s*) and ``alpha`` and is checked by ``evaluate`` (coverage, verdict)
    guarantee: str = GUARANTEE_NONE
    needs_scores: bool = False  # uses verifier scores (the online runner needs a scorer)
    needs_prior: bool = False  # uses per-problem priors (Observation.prior / ReplayBatch.priors)
    batch_only: bool = False  # no per-problem next_wave: replay() over a problem set only (DSC)
    #: parameters whose spec value is text, never parsed into numbers (paths: ``model=runs/01/02.json``)
    text_params: tuple[str, ...] = ()
    replay_info: bool = True  # False: replay() never reports diagnostics (``info`` is always empty), so the
    # online loop does not replay the policy only to look for them (a subclass that adds info sets it True)

    def params(self) -> dict[str, Any]:
        """Parameters that define this policy (in constructor order)."""
        return {}

    def _label_params(self) -> dict[str, Any]:
        return {k: v for k, v in self.params().items() if v is not None}

    @property
    def name(self) -> str:
        items = [f"{k}={_fmt(v)}" for k, v in self.params().items() if v is not None]
        return self.key + (":" + ",".join(items) if items else "")

    @property
    def label(self) -> str:
        items = [f"{k}={_fmt(v)}" for k, v in self._label_params().items()]
        return self.display + (f"({', '.join(items)})" if items else "")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.name == other.name  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.name))

    @abstractmethod
    def next_wave(self, obs: Observation, n_max: int) -> int:
        """How many MORE samples to draw for this problem; 0 = stop."""

    @abstractmethod
    def select(self, obs: Observation) -> int:
        """Index (in draw order) of the chosen sample; -1 if ``obs`` is empty."""

    # Optional hook (see docs/DESIGN.md): ``stop_early(obs) -> bool``, asked after every drawn sample,
    # also inside a wave; True stops the problem there. Policies without it never stop inside a wave.

    def replay(self, batch: ReplayBatch, n_max: int) -> ReplayResult:
        """Decisions for B rows at once; the default loops ``next_wave``/``select`` per row."""
        return replay_loop(self, batch, n_max)
