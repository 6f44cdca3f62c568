"""The adaptive loop: one problem, samples drawn in waves decided by a policy (engine core).

:class:`AdaptiveLoop` is THE per-problem loop of optscale; the batch engine
(:mod:`optscale.online.runner`: ``optscale run`` / ``generate``) and the OpenAI-compatible server both
drive it, so online decisions are the same everywhere and equal the offline replay
(:meth:`optscale.policies.Policy.replay`). For one problem it loops::

    k = policy.next_wave(obs, n_max)            # 0 = stop; capped at n_max - n
    draw samples n .. n+k-1 concurrently       # sample i is seeded sample_seed(seed, key, i)
    extract + cluster their answers, score them
    obs = Observation(answers, scores, tokens, prior)

then ``policy.select(obs)`` picks the answer. Optional policy hook ``stop_early(obs) -> bool``: evaluated
on every contiguous completed prefix inside a wave (in draw order, i.e. after sample ``m`` arrives and all
samples before it have too); True cancels the rest of the wave and stops with the samples up to ``m``
(``stop_reason="target"``), which is the truncation the offline replay applies.

Failures. The first generator or scorer failure of a wave cancels its sibling calls. Then the error is
raised, or, with ``allow_partial=True`` and at least one sample drawn, a partial result (best so far) is
returned. With ``SamplingConfig.scorer_failure="vote"`` a scorer failure is not fatal: the samples keep
their generated texts, scoring stops for the problem, no further wave is drawn and the answer is chosen
by majority vote (``degraded=True``). A ``deadline`` (``time.monotonic()`` instant) stops drawing and
returns the best of the samples that arrived. Cancelling the task running :meth:`AdaptiveLoop.solve`
cancels every in-flight generator call (HTTP requests are closed) and awaited scorer call.

This module imports theory / policies / answers and the Generator / Scorer interfaces only, never an
edge (a concrete backend, the CLI or the server).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from optscale.errors import OptScaleError, ParameterError
from optscale.online.generators import usage_sink

__all__ = ["AdaptiveLoop", "LoopResult", "SamplingConfig", "sample_seed", "first_error"]

SCORER_FAILURE_MODES = ("fail", "vote")
STOP_REASONS = ("policy", "n_max", "target", "deadline", "error")


def sample_seed(seed: int | None, problem_id: str, index: int) -> int | None:
    """Seed of sample ``index`` of problem ``problem_id`` under run seed ``seed`` (None -> None, i.e.
    unseeded): ``base + index`` where ``base`` < 2**30 comes from SHA-256 of (seed, problem id), stable
    across processes and platforms. Consecutive samples get consecutive seeds, matching the generators'
    convention that sample ``i`` of a multi-sample call uses ``seed + i``."""
    if seed is None:
        return None
    h = hashlib.sha256(f"{seed}\x1f{problem_id}".encode()).digest()
    return (int.from_bytes(h[:4], "big") & 0x3FFFFFFF) + int(index)


# --------------------------------------------------------------------------------------------------
# configuration and result
# --------------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingConfig:
    """How the loop samples one problem (validated on construction: ParameterError naming the field).

    ``n_max``: most samples per problem; ``max_tokens``, ``temperature``, ``top_p``: per sample;
    ``seed``: run seed, sample ``i`` of problem ``key`` is seeded :func:`sample_seed` (seed, key, i)
    (None: unseeded); ``equiv``: answer equivalence for clustering (``"math"``, ``"exact"``, ``"number"``,
    ``"choice"`` or a callable ``(a, b) -> bool``); ``scorer_failure``: ``"fail"`` (raise) or ``"vote"``
    (continue without scores, majority vote, ``degraded=True``); ``batch_samples``: draw each run of
    consecutive samples of a wave in one generator call (only valid for generators with
    ``seed_per_sample``; None: decided by the generator's ``seed_per_sample``), else one call per sample;
    ``stop``: stop sequences passed to every generator call (None: none).
    """

    n_max: int
    max_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = 0
    equiv: str | Callable[[str, str], bool] = "math"
    scorer_failure: str = "fail"
    batch_samples: bool | None = None
    stop: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.n_max) or self.n_max < 1:
            raise ParameterError("n_max", f"must be an integer >= 1, got {self.n_max!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ParameterError("max_tokens", f"must be an integer >= 1, got {self.max_tokens!r}")
        if not _is_num(self.temperature) or self.temperature < 0:
            raise ParameterError("temperature", f"must be a finite number >= 0, got {self.temperature!r}")
        if not _is_num(self.top_p) or not (0 < self.top_p <= 1):
            raise ParameterError("top_p", f"must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise ParameterError("seed", f"must be an integer or None, got {self.seed!r}")
        if isinstance(self.equiv, str):
            from optscale.answers import get_equivalence

            try:
                get_equivalence(self.equiv)
            except (KeyError, ValueError) as e:
                raise ParameterError("equiv", str(e)) from None
        elif not callable(self.equiv):
            raise ParameterError("equiv", f"must be a name or a callable, got {self.equiv!r}")
        if self.scorer_failure not in SCORER_FAILURE_MODES:
            raise ParameterError(
                "scorer_failure", f"must be one of {SCORER_FAILURE_MODES}, got {self.scorer_failure!r}"
            )
        if self.stop is not None:
            if isinstance(self.stop, str) or not all(isinstance(x, str) and x for x in self.stop):
                raise ParameterError("stop", f"must be a sequence of non-empty strings, got {self.stop!r}")
            object.__setattr__(self, "stop", tuple(self.stop))
        if self.batch_samples is not None and not isinstance(self.batch_samples, bool):
            raise ParameterError("batch_samples", f"must be True, False or None, got {self.batch_samples!r}")

    @property
    def equiv_name(self) -> str:
        return self.equiv if isinstance(self.equiv, str) else getattr(self.equiv, "__name__", "custom")


def _zero_usage() -> dict:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@dataclass
class LoopResult:
    """What :meth:`AdaptiveLoop.solve` did for one problem.

    ``samples`` in draw order, each ``{"index", "answer", "class", "score", "tokens", "finish_reason",
    "seed", "text"}`` (``index`` is the draw index that seeds the sample; it equals the list position
    except after a deadline / partial failure, when samples that did not arrive leave gaps);
    ``completions``: the :class:`~optscale.online.generators.Completion` of each sample (None for samples
    reused from ``recorded``); ``selected``: list position of the chosen sample (-1: none); ``ranking``:
    list positions best first (``selected`` first, then by score for score-based policies, by vote
    otherwise); ``waves``: samples kept per wave; ``stop_reason``: ``"policy"`` | ``"n_max"`` | ``"target"``
    | ``"deadline"`` | ``"error"``; ``info``: the policy's diagnostics for the final observation (fitted
    mu/sigma, n_star, ...) or None; ``usage``: exact sum of the upstream-reported usage of every generator
    call made for this problem (calls whose samples were discarded included); ``scorer_usage``: the same
    for the upstream requests the scorer made (an LLM judge), with their count in ``"requests"``; None when
    the scorer made none (local scorers); ``partial``: a failure after
    >= 1 sample, ``error`` says why; ``degraded``: the scorer failed and the answer was chosen by vote;
    ``controller_s``: time in policy decisions.

    Beyond the contract, for the engines' statistics: ``decisions`` (policy calls), ``answer_s`` (answer
    extraction + clustering time), ``reused`` (samples taken from ``recorded``), ``new_samples`` /
    ``new_tokens`` (generated in this call, discarded ones included).
    """

    samples: list[dict] = field(default_factory=list)
    completions: list = field(default_factory=list)
    selected: int = -1
    ranking: list[int] = field(default_factory=list)
    waves: list[int] = field(default_factory=list)
    stop_reason: str = "policy"
    info: dict | None = None
    usage: dict = field(default_factory=_zero_usage)
    scorer_usage: dict | None = None
    partial: bool = False
    degraded: bool = False
    error: str | None = None
    controller_s: float = 0.0
    decisions: int = 0
    answer_s: float = 0.0
    reused: int = 0
    new_samples: int = 0
    new_tokens: int = 0

    @property
    def answer(self) -> str | None:
        """The selected sample's answer (None if none)."""
        return self.samples[self.selected]["answer"] if self.selected >= 0 else None


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


class _Clusterer:
    """Incremental answer clustering, same semantics as :func:`optscale.answers.cluster_answers`: an
    answer joins the first class whose representative is equivalent; ids in order of first appearance."""

    def __init__(self, equiv: Callable[[str, str], bool]):
        from optscale.answers import normalize_answer

        self._norm = normalize_answer
        self._eq = equiv
        self._by_norm: dict[str, int] = {}
        self.reps: list[str] = []

    def add(self, ans: str | None) -> int:
        norm = self._norm(ans) if isinstance(ans, str) else None
        if norm is None:
            return -1
        cid = self._by_norm.get(norm)
        if cid is None:
            cid = next((c for c, rep in enumerate(self.reps) if self._eq(rep, ans)), -1)
            if cid < 0:
                cid = len(self.reps)
                self.reps.append(ans)
            self._by_norm[norm] = cid
        return cid


def first_error(exc: BaseException) -> BaseException:
    """The first leaf exception of a (nested) ExceptionGroup; user-facing errors first."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = []

        def walk(e):
            if isinstance(e, BaseExceptionGroup):
                for sub in e.exceptions:
                    walk(sub)
            else:
                leaves.append(e)

        walk(exc)
        for e in leaves:
            if isinstance(e, OptScaleError):
                return e
        for e in leaves:
            if not isinstance(e, asyncio.CancelledError):
                return e
        return leaves[0] if leaves else exc
    return exc


def policy_info(policy: Any, obs: Any, n_max: int) -> dict | None:
    """Fitted parameters / diagnostics the policy reports for the final observation of a problem.

    Uses ``policy.info(obs)`` when the policy has one, else replays the policy on a one-row batch
    holding ``obs`` (``ReplayResult.info``: e.g. the fitted ``mu``/``sigma`` and ``n_star`` of
    OptScale). Returns a JSON-able dict, or None when the policy reports nothing."""
    import numpy as np

    info = None
    fn = getattr(policy, "info", None)
    if callable(fn):
        info = fn(obs)
    elif getattr(policy, "replay_info", True) is False:
        return None  # its replay never reports any (fixed-N policies): skip the replay
    elif callable(getattr(policy, "replay", None)) and len(obs.answers):
        from optscale.policies import ReplayBatch

        prior = None if obs.prior is None else np.asarray(obs.prior, dtype=np.float64)[None, :]
        batch = ReplayBatch(
            answers=obs.answers[None, :],
            scores=obs.scores[None, :],
            tokens=obs.tokens[None, :],
            n=np.asarray([len(obs.answers)]),
            priors=prior,
        )
        try:
            res = policy.replay(batch, n_max)
        except Exception:  # diagnostics only: never fail a problem over them
            return None
        info = {k: v[0] for k, v in (res.info or {}).items() if np.ndim(v) >= 1 and len(v) == 1}
    if not isinstance(info, dict) or not info:
        return None
    out = {}
    for k, v in info.items():
        if isinstance(v, np.ndarray):
            v = v.tolist() if v.ndim else v.item()
        elif isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[str(k)] = v
    return out


def checked_score(x: Any, index: int, scorer: Any) -> float:
    """A scorer's score for sample ``index``: a finite number in [0, 1], else an error naming the sample
    (a missing or invalid score is never replaced by a default)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isfinite(v) and 0.0 <= v <= 1.0):
        raise OptScaleError(
            f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} gave sample {index} the score {x!r}; "
            "scores must be finite numbers in [0, 1]"
        )
    return v


def call_usage(comps: list) -> dict:
    """Upstream usage of one generator call: the sum of ``Completion.usage`` (set by the generators on the
    first completion of each upstream request) when any is set; otherwise the completions' token counts
    and the (one) request's ``prompt_tokens`` (0 where not reported)."""
    reported = [c.usage for c in comps if getattr(c, "usage", None) is not None]
    if reported:
        p = sum(int(u.get("prompt_tokens") or 0) for u in reported)
        c = sum(int(u.get("completion_tokens") or 0) for u in reported)
    else:
        p = max((int(getattr(x, "prompt_tokens", None) or 0) for x in comps), default=0)
        c = sum(int(x.tokens or 0) for x in comps)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _add_usage(total: dict, u: dict) -> None:
    for k in ("prompt_tokens", "completion_tokens", "total_tokens"):
        total[k] += int(u.get(k) or 0)


def _overrides_ascore(scorer: Any) -> bool:
    """Whether ``scorer`` has its own coroutine (I/O-bound scorers: judge, reward endpoint); those run on
    the event loop (cancellable), the others' ``score`` in a worker thread."""
    from optscale.online.scorers import Scorer

    fn = getattr(type(scorer), "ascore", None)
    return fn is not None and fn is not Scorer.ascore


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------


class _Problem:
    """The state of one :meth:`AdaptiveLoop.solve` call."""

    def __init__(self, loop: AdaptiveLoop, prompt, question, key, prior, recorded, on_sample, extra_body):
        self.loop, self.prompt, self.question, self.key = loop, prompt, question, key
        self.prior, self.recorded, self.on_sample, self.extra_body = prior, recorded, on_sample, extra_body
        self.res = LoopResult()
        self.clus = _Clusterer(loop.equiv)
        self.samples: list[dict] = []
        self.comps: list = []
        self.ids: list[int] = []
        self.usage = _zero_usage()
        self.scorer_usage: dict = {}
        self.error: BaseException | None = None  # a failed call (generator, or scorer with "fail")
        self.degraded_error: BaseException | None = None  # a scorer failure under scorer_failure="vote"

    def obs(self):
        import numpy as np

        from optscale.policies import Observation

        return Observation(
            answers=np.asarray(self.ids, dtype=np.int64),
            scores=np.asarray(
                [np.nan if s["score"] is None else s["score"] for s in self.samples], dtype=np.float64
            ),
            tokens=np.asarray([s["tokens"] for s in self.samples], dtype=np.float64),
            prior=self.prior,
        )

    def timed(self, fn, *args):
        """A policy decision, timed as controller time."""
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.res.controller_s += time.perf_counter() - t0
            self.res.decisions += 1

    def append(self, i: int, rec: dict, comp, reused: bool) -> None:
        t0 = time.perf_counter()
        cid = self.clus.add(rec.get("answer"))
        self.res.answer_s += time.perf_counter() - t0
        self.ids.append(cid)
        self.samples.append(
            {
                "index": i,
                "answer": rec.get("answer"),
                "class": cid,
                "score": rec.get("score"),
                "tokens": rec.get("tokens"),
                "finish_reason": rec.get("finish_reason"),
                "seed": rec.get("seed"),
                "text": rec.get("text"),
            }
        )
        self.comps.append(comp)
        self.res.reused += bool(reused)

    async def wave(self, idxs: list[int], deadline: float | None) -> str | None:
        """Draw samples ``idxs`` (reusing recorded ones); None, or the stop reason ("target", "deadline",
        "error")."""
        loop = self.loop
        arrived: dict[int, tuple[dict, Any]] = {
            i: (self.recorded[i], None) for i in idxs if i in self.recorded
        }
        reused = set(arrived)
        missing = [i for i in idxs if i not in reused]
        pending: set[asyncio.Task] = {asyncio.ensure_future(self.draw(a, m)) for a, m in loop.calls(missing)}
        pos = 0  # next position of the wave to append (all before it are appended)
        reason: str | None = None

        def advance() -> bool:
            """Append the contiguous arrived prefix; True when ``stop_early`` fired inside the wave."""
            nonlocal pos
            while pos < len(idxs) and idxs[pos] in arrived:
                i = idxs[pos]
                self.append(i, *arrived[i], i in reused)
                pos += 1
                if (
                    loop._stop_early is not None
                    and pos < len(idxs)
                    and self.timed(loop._stop_early, self.obs())
                ):
                    return True
            return False

        try:
            if advance():
                reason = "target"
            while pending and reason is None:
                timeout = None if deadline is None else deadline - time.monotonic()
                if timeout is not None and timeout <= 0:
                    reason = "deadline"
                    break
                # stop_early looks at every completed prefix; otherwise only a failure interrupts the wave
                when = asyncio.FIRST_COMPLETED if loop._stop_early is not None else asyncio.FIRST_EXCEPTION
                done, pending = await asyncio.wait(pending, timeout=timeout, return_when=when)
                if not done:
                    reason = "deadline"
                    break
                for t in done:
                    exc = (
                        asyncio.CancelledError("a sample call was cancelled")
                        if t.cancelled()
                        else t.exception()
                    )
                    if exc is None:
                        arrived.update(t.result())
                    elif self.error is None:
                        self.error = exc
                if self.error is not None:
                    reason = "error"
                elif advance():
                    reason = "target"
        finally:
            for t in pending:  # the first failure, a deadline, a target or our own cancellation
                t.cancel()
            if pending:
                await asyncio.wait(pending)
                for t in pending:  # retrieve, so that nothing is logged as "never retrieved"
                    if not t.cancelled():
                        t.exception()
        kept = pos
        if reason in ("deadline", "error"):  # keep every sample that arrived, in draw order
            for i in idxs[pos:]:
                if i in arrived:
                    self.append(i, *arrived[i], i in reused)
                    kept += 1
        if kept:
            self.res.waves.append(kept)
        return reason

    async def draw(self, start: int, count: int) -> dict[int, tuple[dict, Any]]:
        """Generate, score and record samples ``start .. start+count-1`` with one generator call."""
        loop, cfg = self.loop, self.loop.config
        kw: dict[str, Any] = dict(
            seed=sample_seed(cfg.seed, self.key, start),
            max_tokens=cfg.max_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            logprobs=loop.want_logprobs,
        )
        if cfg.stop:
            kw["stop"] = list(cfg.stop)
        if self.extra_body:
            kw["extra_body"] = self.extra_body
        comps = await loop.generator.generate(self.prompt, count, **kw)
        if not isinstance(comps, list | tuple) or len(comps) != count:
            got = len(comps) if isinstance(comps, list | tuple) else type(comps).__name__
            raise OptScaleError(f"generator {loop.generator!r} returned {got} completions for n={count}")
        comps = list(comps)
        _add_usage(self.usage, call_usage(comps))
        self.res.new_samples += count
        self.res.new_tokens += sum(int(c.tokens) for c in comps)
        scores: list[float | None] = [None] * count
        if loop.scorer is not None and self.degraded_error is None:
            token = usage_sink.set(self.scorer_usage)  # an LLM judge's requests add their usage here
            try:
                got = await loop.score(self.question, comps)
                scores = [checked_score(x, start + j, loop.scorer) for j, x in enumerate(got)]
            except Exception as e:  # re-raised unless scorer_failure="vote"
                if cfg.scorer_failure != "vote":
                    raise
                if self.degraded_error is None:
                    self.degraded_error = e
                scores = [None] * count
            finally:
                usage_sink.reset(token)
        out = {}
        for j, (c, score) in enumerate(zip(comps, scores, strict=True)):
            rec = {
                "answer": loop.extract(c.text),
                "score": score,
                "tokens": int(c.tokens),
                "finish_reason": c.finish_reason,
                "seed": sample_seed(cfg.seed, self.key, start + j),
                "text": c.text,
            }
            if self.on_sample is not None:
                stored = self.on_sample(start + j, rec)
                if stored is not None:
                    rec = stored
            out[start + j] = (rec, c)
        return out

    def result(self, stop_reason: str) -> LoopResult:
        loop, res = self.loop, self.res
        o = self.obs()
        degraded = self.degraded_error is not None
        if not self.samples:
            sel = -1
        elif degraded:
            from optscale.policies.consistency import majority

            sel = int(majority(o))
        else:
            sel = int(self.timed(loop.policy.select, o))
        if not (-1 <= sel < len(self.samples)):
            raise OptScaleError(f"policy {loop.policy_name} selected sample {sel} of {len(self.samples)}")
        res.samples, res.completions, res.selected = self.samples, self.comps, sel
        res.stop_reason = stop_reason
        res.ranking = loop._ranking(o, sel, degraded=degraded)
        res.info = policy_info(loop.policy, o, loop.config.n_max) if self.samples and not degraded else None
        res.usage = self.usage
        if self.scorer_usage:
            res.scorer_usage = {k: self.scorer_usage.get(k, 0) for k in (*_zero_usage(), "requests")}
        res.partial = self.error is not None
        res.degraded = degraded
        errs = [e for e in (self.error, self.degraded_error) if e is not None]
        res.error = "; ".join(str(e) or type(e).__name__ for e in errs) or None
        return res


class AdaptiveLoop:
    """The per-problem adaptive Best-of-N loop (see the module docstring).

    ``generator``: an :class:`optscale.online.generators.Generator`; ``scorer``: an
    :class:`optscale.online.scorers.Scorer` or None (only for policies that do not need scores);
    ``policy``: an :class:`optscale.policies.Policy` (or a spec for ``make_policy``); ``config``: a
    :class:`SamplingConfig`. ``executor``: a ``concurrent.futures.Executor`` in which a synchronous
    scorer's ``score`` runs (e.g. one thread, so that a local PRM model is used by one call at a time);
    None: ``asyncio.to_thread``. Scorers with their own ``ascore`` (HTTP judges, reward endpoints) run on
    the event loop. One instance may solve many problems concurrently; it holds no per-problem state.
    """

    def __init__(self, generator, scorer, policy, config: SamplingConfig, *, executor=None):
        from optscale.answers import extract_answer, get_equivalence

        if not isinstance(config, SamplingConfig):
            raise ParameterError("config", f"must be a SamplingConfig, got {type(config).__name__}")
        if isinstance(policy, str):
            from optscale.policies import make_policy

            policy = make_policy(policy)
        pname = getattr(policy, "name", type(policy).__name__)
        if getattr(policy, "batch_only", False):
            raise ParameterError(
                "policy",
                f"{pname!r} decides over a whole problem set at once and cannot run online; replay it "
                "offline (optscale eval) instead",
            )
        if getattr(policy, "needs_scores", False) and scorer is None:
            raise ParameterError("scorer", f"policy {pname!r} needs scores; give a scorer")
        self.generator, self.scorer, self.policy, self.config = generator, scorer, policy, config
        self.executor = executor
        self.equiv = get_equivalence(config.equiv)
        self.extract = extract_answer
        if config.batch_samples is None:
            self.batch_samples = bool(getattr(generator, "seed_per_sample", False))
        else:
            self.batch_samples = config.batch_samples
        self.want_logprobs = scorer is not None and bool(getattr(scorer, "needs_logprobs", True))
        self._scorer_async = scorer is not None and _overrides_ascore(scorer)
        self._stop_early = getattr(policy, "stop_early", None)
        if not callable(self._stop_early):
            self._stop_early = None

    @property
    def policy_name(self) -> str:
        return getattr(self.policy, "name", type(self.policy).__name__)

    def warm_up(self) -> None:
        """Call the policy once on a synthetic observation so that one-time costs (lazy imports of scipy
        and the estimators) are not counted as controller time. Policies are pure, so this changes
        nothing; errors are ignored here (they surface in the real calls)."""
        import numpy as np

        from optscale.policies import Observation

        n = self.config.n_max
        prior = (0.5, 0.2, 0.1, 0.1) if getattr(self.policy, "needs_prior", False) else None
        obs = Observation(
            answers=np.arange(n, dtype=np.int64) % 3,
            scores=np.linspace(0.2, 0.8, n),
            tokens=np.ones(n),
            prior=prior,
        )
        try:
            for m in sorted({1, min(4, n), n}):
                self.policy.next_wave(obs.head(m), n)
            if self._stop_early is not None:
                self._stop_early(obs)
            self.policy.select(obs)
        except Exception:
            pass

    # -- one generator call -----------------------------------------------------------------------
    def calls(self, missing: list[int]) -> list[tuple[int, int]]:
        """(start, count) of the generator calls that draw the ``missing`` sample indices."""
        if not self.batch_samples:
            return [(i, 1) for i in missing]
        runs: list[tuple[int, int]] = []
        for i in missing:
            if runs and runs[-1][0] + runs[-1][1] == i:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((i, 1))
        return runs

    async def score(self, question: str, comps: list) -> list:
        """The scorer's scores of ``comps`` (on the event loop, in ``executor`` or in a thread)."""
        scorer = self.scorer
        if self._scorer_async:
            got = await scorer.ascore(question, list(comps))
        elif self.executor is not None:
            got = await asyncio.get_running_loop().run_in_executor(
                self.executor, scorer.score, question, list(comps)
            )
        else:
            got = await asyncio.to_thread(scorer.score, question, list(comps))
        if got is None or len(got) != len(comps):
            raise OptScaleError(
                f"scorer {getattr(scorer, 'name', type(scorer).__name__)!r} returned "
                f"{'no' if got is None else len(got)} scores for {len(comps)} samples"
            )
        return got

    # -- one problem --------------------------------------------------------------------------------
    async def solve(
        self,
        prompt: list[dict] | str,
        question: str,
        *,
        key: str = "",
        prior=None,
        recorded: dict[int, dict] | None = None,
        on_sample: Callable[[int, dict], dict] | None = None,
        extra_body: dict | None = None,
        deadline: float | None = None,
        allow_partial: bool = False,
    ) -> LoopResult:
        """Solve one problem (see the module docstring).

        ``prompt``: what the generator gets (chat messages or text); ``question``: the text the scorer
        judges; ``key``: the problem's id, which derives the sample seeds; ``prior``: ``(mu0, sigma0,
        sd_mu, sd_sigma)`` for policies that need one; ``recorded``: {index: sample record} checkpointed
        by an earlier run, reused instead of generated (``completions`` holds None for them);
        ``on_sample(index, record) -> record``: called for every new sample as it arrives (the batch
        engine's checkpoint; its return value, if not None, replaces the record); ``extra_body``: extra
        request fields forwarded unchanged to the generator; ``deadline``: a ``time.monotonic()`` instant
        after which no more samples are awaited; ``allow_partial``: return a partial result instead of
        raising when a call fails after at least one sample arrived.
        """
        if extra_body is not None and not isinstance(extra_body, dict):
            raise ParameterError("extra_body", f"must be a dict, got {type(extra_body).__name__}")
        if deadline is not None and not _is_num(deadline):
            raise ParameterError("deadline", f"must be a time.monotonic() instant, got {deadline!r}")
        if getattr(self.policy, "needs_prior", False) and prior is None:
            raise ParameterError("prior", f"policy {self.policy_name!r} needs a per-problem prior")
        if prior is not None:
            prior = tuple(float(x) for x in prior)
        p = _Problem(self, prompt, question, key, prior, dict(recorded or {}), on_sample, extra_body)
        n_max = self.config.n_max
        stop_reason = None
        while stop_reason is None:
            k = int(p.timed(self.policy.next_wave, p.obs(), n_max))
            n = len(p.samples)
            if k <= 0:
                stop_reason = "policy"
            elif n >= n_max:
                stop_reason = "n_max"
            elif deadline is not None and time.monotonic() >= deadline:
                stop_reason = "deadline"
            else:
                start = p.samples[-1]["index"] + 1 if p.samples else 0
                stop_reason = await p.wave(list(range(start, start + min(k, n_max - n))), deadline)
                if stop_reason is None and p.degraded_error is not None:
                    stop_reason = "error"  # the scorer failed: no more waves, vote below
                if (
                    stop_reason is None
                    and self._stop_early is not None
                    and p.timed(self._stop_early, p.obs())
                ):
                    stop_reason = "target"
        if p.error is not None and not (allow_partial and p.samples):
            raise p.error
        return p.result(stop_reason)

    def _ranking(self, o, sel: int, *, degraded: bool) -> list[int]:
        """Sample positions best first: ``sel`` first; then ``policy.rank(obs)`` when the policy has one,
        else by score (descending, NaN last) for score-based policies, else by vote (larger answer class
        first, classes in order of first appearance, unparsable answers last); ties by draw order."""
        import numpy as np

        n = len(o.answers)
        if n == 0:
            return []
        order: list[int] | None = None
        rank = getattr(self.policy, "rank", None)
        if callable(rank) and not degraded:
            order = [int(i) for i in rank(o)]
        elif getattr(self.policy, "needs_scores", False) and not degraded:
            s = np.where(np.isnan(o.scores), -np.inf, o.scores)
            order = sorted(range(n), key=lambda i: (-s[i], i))
        if order is None:
            counts: dict[int, int] = {}
            first: dict[int, int] = {}
            for i, a in enumerate(o.answers.tolist()):
                if a >= 0:
                    counts[a] = counts.get(a, 0) + 1
                    first.setdefault(a, i)

            def vote_key(i: int):
                a = int(o.answers[i])
                if a < 0:
                    return (1, 0, 0, i)
                return (0, -counts[a], first[a], i)

            order = sorted(range(n), key=vote_key)
        if 0 <= sel < n:
            order = [sel] + [i for i in order if i != sel]
        return order
