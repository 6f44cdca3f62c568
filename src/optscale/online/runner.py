"""The batch engine of online adaptive Best-of-N (``optscale run`` / ``optscale generate``).

Each problem is solved by the one per-problem loop, :class:`optscale.online.loop.AdaptiveLoop` (waves
decided by the policy, samples drawn concurrently, answers extracted, clustered and scored, then
``policy.select``); this module adds what a batch needs: a queue of problems worked ``concurrency`` at a
time, the results file (one JSON line per problem), the per-sample checkpoint and resume, grading against
gold answers, a progress bar and the :class:`RunSummary`. Its configuration is one :class:`RunConfig`
(holding the loop's :class:`~optscale.online.loop.SamplingConfig`).

Determinism and resume. Sample ``i`` of problem ``p`` is generated with its own seed, derived from
(``seed``, ``p``, ``i``) — see :func:`sample_seed` — so a sample's text does not depend on how the
policy grouped samples into waves, on concurrency, or on interruptions. Every generated and scored
sample is appended (fsynced) to ``<results>.samples.jsonl`` as it arrives, and every finished problem
to the results file. A killed run, started again with the same arguments, skips finished problems,
replays the policy over the recorded samples of unfinished ones (the policy is deterministic, so it
asks for the same waves) and generates only the samples that were not recorded: no sample is lost or
drawn twice. A torn last line (the run was killed mid-write) is detected and discarded.

:func:`generate` draws a fixed ``k`` samples per problem with the same machinery (same seeds, same
checkpointing) and writes a sample pool (``optscale.pool`` schema) for offline replay.
"""

from __future__ import annotations

import asyncio
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from optscale.answers import GRADE_KINDS
from optscale.errors import InputError, ParameterError
from optscale.online.checkpoint import question_fingerprint
from optscale.online.loop import AdaptiveLoop, SamplingConfig, first_error, sample_seed

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "RunConfig",
    "RunSummary",
    "SamplingConfig",
    "agenerate",
    "arun",
    "build_prompt",
    "generate",
    "run",
    "sample_seed",
]

#: default prompt for math problems; ``{question}`` is replaced by the question text
DEFAULT_PROMPT_TEMPLATE = (
    "Solve the following math problem. Reason step by step, then give the final answer "
    "in \\boxed{{}}.\n\n{question}"
)


def build_prompt(template: str, question: str) -> list[dict]:
    """Chat messages for one question: ``template`` with ``{question}`` replaced (and ``{{``/``}}``
    unescaped to braces), as a single user message."""
    if "{question}" not in template:
        raise ParameterError("prompt_template", "must contain the placeholder {question}")
    head, _, tail = template.partition("{question}")
    text = head.replace("{{", "{").replace("}}", "}") + question + tail.replace("{{", "{").replace("}}", "}")
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What a run did. Token and sample means are per problem, over the problems of this call that
    have a result (including results found in the file from an earlier, resumed run).

    ``bon_tokens_est``: estimated mean tokens of fixed Best-of-``n_max`` (each problem's mean tokens
    per sample × ``n_max``); ``savings_est``: 1 − mean_tokens / bon_tokens_est. Controller time is the
    time spent in ``policy.next_wave`` and ``policy.select`` during this call; ``controller_share`` is
    its fraction of ``wall_s``. ``new_samples`` / ``new_tokens`` were generated in this call (the others
    were reused from the checkpoint); ``tokens_per_s`` = new_tokens / wall_s.
    """

    method: str
    n_max: int
    problems: int
    completed: int
    resumed_problems: int = 0
    reused_samples: int = 0
    graded: int = 0
    correct: int = 0
    accuracy: float | None = None
    mean_samples: float = 0.0
    mean_tokens: float = 0.0
    bon_tokens_est: float = 0.0
    savings_est: float | None = None
    decisions: int = 0
    controller_s: float = 0.0
    controller_ms_per_decision: float | None = None
    controller_share: float | None = None
    answer_ms_per_sample: float | None = None
    new_samples: int = 0
    new_tokens: int = 0
    wall_s: float = 0.0
    tokens_per_s: float | None = None
    results_path: str | None = None
    kind: str = "run"
    results: list[dict] = field(default_factory=list, repr=False)

    def to_dict(self, *, with_results: bool = False) -> dict:
        d = asdict(self)
        if not with_results:
            d.pop("results")
        return d

    def to_table(self) -> str:
        """A small human-readable table."""

        def f(x, fmt="{:.3f}"):
            return "-" if x is None else fmt.format(x)

        if self.kind == "generate":
            rows = [
                ("samples per problem", str(self.n_max)),
                (
                    "problems",
                    f"{self.completed}/{self.problems} done ({self.resumed_problems} from an earlier run)",
                ),
                (
                    "sample accuracy",
                    f"{f(self.accuracy, '{:.1%}')} ({self.correct}/{self.graded} samples graded)",
                ),
                ("mean tokens / problem", f"{self.mean_tokens:.1f}"),
                (
                    "new samples / tokens",
                    f"{self.new_samples} / {self.new_tokens} (reused {self.reused_samples})",
                ),
                ("wall time", f"{self.wall_s:.1f} s"),
                ("throughput", f"{f(self.tokens_per_s, '{:.1f}')} tokens/s"),
                ("pool", str(self.results_path)),
            ]
            w = max(len(k) for k, _ in rows)
            return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)
        rows = [
            ("method", f"{self.method} (N_max={self.n_max})"),
            (
                "problems",
                f"{self.completed}/{self.problems} done ({self.resumed_problems} from an earlier run)",
            ),
            ("accuracy", f"{f(self.accuracy, '{:.1%}')} ({self.correct}/{self.graded} graded)"),
            ("mean samples / problem", f"{self.mean_samples:.2f}"),
            ("mean tokens / problem", f"{self.mean_tokens:.1f}"),
            ("est. BoN@N_max tokens", f"{self.bon_tokens_est:.1f}"),
            ("est. token savings", f(self.savings_est, "{:.1%}")),
            (
                "controller ms / decision",
                f"{f(self.controller_ms_per_decision, '{:.4f}')} ({self.decisions} decisions)",
            ),
            ("controller share of wall", f(self.controller_share, "{:.4%}")),
            ("answer extraction+clustering ms / sample", f(self.answer_ms_per_sample, "{:.3f}")),
            (
                "new samples / tokens",
                f"{self.new_samples} / {self.new_tokens} (reused {self.reused_samples})",
            ),
            ("wall time", f"{self.wall_s:.1f} s"),
            ("throughput", f"{f(self.tokens_per_s, '{:.1f}')} tokens/s"),
        ]
        if self.results_path:
            rows.append(("results", self.results_path))
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


# --------------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------------

#: keyword arguments of run/generate that go to the SamplingConfig (the others go to RunConfig)
SAMPLING_KEYS = frozenset(f.name for f in fields(SamplingConfig))


@dataclass(frozen=True)
class RunConfig:
    """Configuration of a batch run (:func:`run` / :func:`generate`): the per-problem
    :class:`~optscale.online.loop.SamplingConfig` plus what only the batch engine uses. Validated on
    construction (ParameterError naming the field); nothing touches the disk before that.

    ``prompt_template`` contains ``{question}``; ``concurrency``: problems in flight; ``grade_kind``: how
    answers are compared with gold answers; ``results_path``: JSONL results file (one line per problem;
    ``<results_path>.samples.jsonl`` is the per-sample checkpoint), None to keep results in memory only;
    ``resume``: continue from those files (False: overwrite them); ``progress``: tqdm bar on stderr (None:
    only on a terminal); ``save_texts``: keep completion texts in the results; ``prior_fn(question) ->
    (mu0, sigma0, sd_mu, sd_sigma)`` supplies priors (OptScale^t).
    """

    sampling: SamplingConfig
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    concurrency: int = 4
    grade_kind: str = "auto"
    results_path: str | Path | None = None
    resume: bool = True
    progress: bool | None = True
    save_texts: bool = True
    prior_fn: Callable[[str], tuple[float, float, float, float] | None] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.sampling, SamplingConfig):
            raise ParameterError("sampling", f"must be a SamplingConfig, got {type(self.sampling).__name__}")
        if not isinstance(self.prompt_template, str):
            raise ParameterError("prompt_template", f"must be a string, got {self.prompt_template!r}")
        build_prompt(self.prompt_template, "")  # validates the template
        c = self.concurrency
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ParameterError("concurrency", f"must be an integer >= 1, got {c!r}")
        if self.grade_kind not in GRADE_KINDS:
            raise ParameterError("grade_kind", f"must be one of {GRADE_KINDS}, got {self.grade_kind!r}")
        if self.results_path is not None and not isinstance(self.results_path, str | Path):
            raise ParameterError("results_path", f"must be a path or None, got {self.results_path!r}")
        if self.results_path is not None and str(self.results_path) == "":
            raise ParameterError("results_path", "must not be empty")
        for name in ("resume", "save_texts"):
            if not isinstance(getattr(self, name), bool):
                raise ParameterError(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise ParameterError("progress", f"must be True, False or None, got {self.progress!r}")
        if self.prior_fn is not None and not callable(self.prior_fn):
            raise ParameterError("prior_fn", f"must be callable, got {self.prior_fn!r}")

    @classmethod
    def from_kwargs(cls, n_max: int, **kwargs: Any) -> RunConfig:
        """The configuration for the keyword arguments of :func:`arun` (``n_max``, ``max_tokens``,
        ``temperature``, ... go to the SamplingConfig, the others to RunConfig). Unknown keywords raise
        TypeError as for any function."""
        names = {f.name for f in fields(cls)} - {"sampling"}
        unknown = sorted(set(kwargs) - names - SAMPLING_KEYS)
        if unknown or "n_max" in kwargs:
            bad = unknown[0] if unknown else "n_max"
            raise TypeError(f"unexpected keyword argument {bad!r}")
        sampling = SamplingConfig(n_max=n_max, **{k: v for k, v in kwargs.items() if k in SAMPLING_KEYS})
        return cls(sampling=sampling, **{k: v for k, v in kwargs.items() if k in names})


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


class _FixedN:
    """Draw exactly ``k`` samples in one wave and select the first (used by :func:`generate`)."""

    needs_scores = False

    def __init__(self, k: int):
        self.k = k
        self.name = f"fixed:{k}"

    def next_wave(self, obs, n_max: int) -> int:
        return max(0, min(self.k, n_max) - len(obs.answers))

    def select(self, obs) -> int:
        return 0 if len(obs.answers) else -1


def _describe(obj: Any) -> dict | None:
    if obj is None:
        return None
    d = {"class": type(obj).__name__}
    for attr in ("name", "model", "spec"):
        v = getattr(obj, attr, None)
        if isinstance(v, str | int | float) and v != "":
            d[attr] = v
    return d


def _collision(path, line, field, pid, question, recorded) -> InputError:
    what = f" ({recorded[:60]!r})" if isinstance(recorded, str) else ""
    return InputError(
        str(path),
        line,
        field,
        f"problem id {pid!r} was recorded for another question{what} than this problem set's "
        f"({question[:60]!r}); problems without ids are numbered 0, 1, ... in every file, so their ids "
        "collide: use another output file or start over (resume=False / --no-resume)",
    )


def _stats(r: dict) -> tuple[int, int, bool | None]:
    """(samples, tokens, correct) of a result record, or of a pool record (written by ``generate``:
    its correctness is that of its first sample, i.e. one-sample accuracy)."""
    samples = r.get("samples") or []
    if "n_samples" in r:
        c = r.get("correct")
        return int(r["n_samples"]), int(r.get("tokens") or 0), None if c is None else bool(c)
    c = samples[0].get("correct") if samples else None
    return len(samples), int(sum(s.get("tokens") or 0 for s in samples)), None if c is None else bool(c)


# --------------------------------------------------------------------------------------------------
# the batch engine
# --------------------------------------------------------------------------------------------------


class _BatchEngine:
    """Many problems through one :class:`~optscale.online.loop.AdaptiveLoop`: a queue worked by
    ``concurrency`` tasks, checkpoint/resume, the results file, a progress bar and the summary."""

    def __init__(self, problems, generator, scorer, policy, config: RunConfig, *, kind: str, record_fn=None):
        from optscale.answers import grade

        if not isinstance(config, RunConfig):
            raise ParameterError("config", f"must be a RunConfig, got {type(config).__name__}")
        self.problems = list(problems)
        ids = [str(p.id) for p in self.problems]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ParameterError(
                "problems", f"duplicate problem id {dup!r} (ids key the results and checkpoints)"
            )
        if getattr(policy, "needs_prior", False) and config.prior_fn is None:
            raise ParameterError(
                "prior_fn", f"policy {getattr(policy, 'name', policy)!r} needs per-problem priors"
            )
        self.loop = AdaptiveLoop(generator, scorer, policy, config.sampling)
        self.generator, self.scorer, self.policy = generator, scorer, self.loop.policy
        self.cfg = config
        self.n_max = config.sampling.n_max
        self.kind = kind
        self.record_fn = record_fn
        self._grade = grade
        self.results_path = Path(config.results_path) if config.results_path is not None else None
        # statistics of this call
        self.decisions = 0
        self.controller_s = 0.0
        self.answer_s = 0.0
        self.answered = 0
        self.new_samples = 0
        self.new_tokens = 0
        self.reused = 0
        self.results: dict[str, dict] = {}
        self.resumed_ids: set[str] = set()
        self.ckpt = None
        self.out = None
        self.lock = None
        self.fp = {str(p.id): question_fingerprint(p.question) for p in self.problems}

    # -- configuration recorded in the checkpoint header ------------------------------------------
    def config(self) -> dict:
        s = self.cfg.sampling
        return {
            "kind": self.kind,
            "generator": _describe(self.generator),
            "scorer": _describe(self.scorer),
            "prompt_template": self.cfg.prompt_template,
            "max_tokens": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "seed": s.seed,
            "method": self.policy_name,
            "n_max": self.n_max,
            "equiv": s.equiv_name,
            **({"stop": list(s.stop)} if s.stop else {}),
        }

    def _open_files(self):
        """Lock the output, then open (resume) or create the results file and its checkpoint. Every input
        is validated before this runs, so a rejected run creates no file."""
        from optscale.online.checkpoint import OutputLock

        if self.results_path is None:
            return
        self.lock = OutputLock(self.results_path)
        try:
            self._open_locked()
        except BaseException:
            self._close_files()
            raise

    def _open_locked(self):
        from optscale.online.checkpoint import JsonlAppender, SampleCheckpoint, checkpoint_path, recover_jsonl

        assert self.results_path is not None
        ck_path = checkpoint_path(self.results_path)
        if self.cfg.resume:
            if self.results_path.exists() and self.results_path.stat().st_size > 0 and not ck_path.exists():
                raise InputError(
                    str(self.results_path),
                    None,
                    None,
                    f"exists without its checkpoint {ck_path.name}, so it cannot be resumed safely; "
                    "use another output file or start over (resume=False / --no-resume)",
                )
            # checkpoint first: it validates the configuration before anything is reused
            self.ckpt = SampleCheckpoint(ck_path, self.config(), resume=True)
            by_id = {str(p.id): p for p in self.problems}
            records, torn = recover_jsonl(self.results_path)
            if torn:
                warnings.warn(
                    f"{self.results_path}: discarded a torn last line (the previous run was killed mid-write)",
                    stacklevel=2,
                )
            for lineno, rec in enumerate(records, 1):
                if "id" not in rec:
                    raise InputError(str(self.results_path), lineno, "id", "result line without an id")
                pid = str(rec["id"])
                p = by_id.get(pid)
                if p is None:
                    continue
                if rec.get("question") != p.question:
                    raise _collision(self.results_path, lineno, "question", pid, p.question, rec.get("question"))
                self.results[pid] = rec
                self.resumed_ids.add(pid)
            for pid, recorded in self.ckpt.samples.items():
                p = by_id.get(pid)
                for idx, rec in recorded.items():
                    if p is not None and rec.get("fp", self.fp[pid]) != self.fp[pid]:
                        raise _collision(ck_path, self.ckpt.lines.get((pid, idx)), "fp", pid, p.question, None)
        else:
            self.results_path.parent.mkdir(parents=True, exist_ok=True)
            self.results_path.write_bytes(b"")
            self.ckpt = SampleCheckpoint(ck_path, self.config(), resume=False)
        self.out = JsonlAppender(self.results_path)

    def _close_files(self) -> None:
        if self.out is not None:
            self.out.close()
        if self.ckpt is not None:
            self.ckpt.close()
        if self.lock is not None:
            self.lock.release()

    # -- one problem --------------------------------------------------------------------------------
    async def _solve(self, problem) -> dict:
        t_start = time.perf_counter()
        pid = str(problem.id)
        messages = build_prompt(self.cfg.prompt_template, problem.question)
        recorded = dict(self.ckpt.recorded(pid)) if self.ckpt is not None else {}
        prior = self.cfg.prior_fn(problem.question) if self.cfg.prior_fn is not None else None
        ckpt = self.ckpt
        fp = self.fp[pid]
        on_sample = None if ckpt is None else (lambda i, rec: ckpt.add(pid, i, {**rec, "fp": fp}))
        r = await self.loop.solve(
            messages, problem.question, key=pid, prior=prior, recorded=recorded, on_sample=on_sample
        )
        self.decisions += r.decisions
        self.controller_s += r.controller_s
        self.answer_s += r.answer_s
        self.answered += len(r.samples)
        self.reused += r.reused
        self.new_samples += r.new_samples
        self.new_tokens += r.new_tokens
        sel = r.selected
        gold = getattr(problem, "gold", None)
        grade_kind = self.cfg.grade_kind
        out_samples = []
        for s in r.samples:
            d = {k: s[k] for k in ("index", "answer", "class", "score", "tokens")}
            d["correct"] = self._grade(s["answer"], gold, grade_kind) if gold is not None else None
            d["finish_reason"] = s["finish_reason"]
            if self.cfg.save_texts:
                d["text"] = s["text"]
            out_samples.append(d)
        correct = None
        if gold is not None:
            correct = out_samples[sel]["correct"] if sel >= 0 else False
        record = {
            "id": pid,
            "question": problem.question,
            "gold": gold,
            "answer": r.answer,
            "selected_index": sel,
            "correct": correct,
            "n_samples": len(r.samples),
            "tokens": int(sum(s["tokens"] or 0 for s in r.samples)),
            "waves": r.waves,
            "stop_reason": r.stop_reason,
            "method": self.policy_name,
            "n_max": self.n_max,
            "fit": r.info,
            "reused_samples": r.reused,
            "usage": r.usage,
            "controller_ms": r.controller_s * 1e3,
            "wall_s": time.perf_counter() - t_start,
            "samples": out_samples,
        }
        if self.record_fn is not None:
            record = self.record_fn(problem, record)
        return record

    @property
    def policy_name(self) -> str:
        return self.loop.policy_name

    # -- all problems -------------------------------------------------------------------------------
    async def run(self) -> RunSummary:
        from tqdm.auto import tqdm

        self.loop.warm_up()
        t_start = time.perf_counter()
        prepare = getattr(self.generator, "prepare", None)
        if prepare is not None:
            await prepare()  # e.g. load a local model: a bad model fails before any file is created
        self._open_files()
        todo = [p for p in self.problems if str(p.id) not in self.results]
        progress = self.cfg.progress
        bar = tqdm(
            total=len(self.problems),
            initial=len(self.problems) - len(todo),
            desc=self.policy_name,
            unit="problem",
            file=sys.stderr,
            disable=(None if progress is None else not progress),
            dynamic_ncols=True,
        )
        self._update_bar(bar)
        # scorer calls that run in a thread run one at a time (a local PRM model is not shared)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optscale-scorer")
        self.loop.executor = pool
        queue: asyncio.Queue = asyncio.Queue()
        for p in todo:
            queue.put_nowait(p)

        async def worker():
            while True:
                try:
                    p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec = await self._solve(p)
                self.results[str(p.id)] = rec
                if self.out is not None:
                    self.out.append(rec)
                bar.update(1)
                self._update_bar(bar)

        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.cfg.concurrency, len(todo))):
                        tg.create_task(worker())
            except BaseExceptionGroup as eg:
                raise first_error(eg) from None
        finally:
            bar.close()
            pool.shutdown(wait=False, cancel_futures=True)
            self.loop.executor = None
            self._close_files()
        return self._summary(time.perf_counter() - t_start)

    def _done_records(self) -> list[dict]:
        return [self.results[str(p.id)] for p in self.problems if str(p.id) in self.results]

    def _savings(self, recs) -> tuple[float, float, float | None]:
        used = bon = 0.0
        for r in recs:
            n, tokens, _ = _stats(r)
            if n:
                used += tokens
                bon += tokens / n * self.n_max
        m = max(len(recs), 1)
        return used / m, bon / m, (1 - used / bon) if bon > 0 else None

    def _update_bar(self, bar) -> None:
        if bar.disable:
            return
        recs = self._done_records()
        graded = [c for c in (_stats(r)[2] for r in recs) if c is not None]
        post = {}
        if graded:
            post["acc"] = f"{sum(graded) / len(graded):.1%}"
        _, _, saved = self._savings(recs)
        if saved is not None:
            post["saved"] = f"{saved:.0%}"
        if recs:
            post["samples"] = f"{sum(_stats(r)[0] for r in recs) / len(recs):.1f}"
        bar.set_postfix(post, refresh=True)

    def _summary(self, wall: float) -> RunSummary:
        recs = self._done_records()
        if self.kind == "generate":  # accuracy of single samples (pass@1 estimate)
            graded = [
                s["correct"] for r in recs for s in r.get("samples", []) if s.get("correct") is not None
            ]
        else:
            graded = [c for c in (_stats(r)[2] for r in recs) if c is not None]
        correct = sum(graded)
        mean_tokens, bon, saved = self._savings(recs)
        return RunSummary(
            method=self.policy_name,
            n_max=self.n_max,
            problems=len(self.problems),
            completed=len(recs),
            resumed_problems=len(self.resumed_ids),
            reused_samples=self.reused,
            graded=len(graded),
            correct=correct,
            accuracy=correct / len(graded) if graded else None,
            mean_samples=(sum(_stats(r)[0] for r in recs) / len(recs)) if recs else 0.0,
            mean_tokens=mean_tokens,
            bon_tokens_est=bon,
            savings_est=saved,
            decisions=self.decisions,
            controller_s=self.controller_s,
            controller_ms_per_decision=(self.controller_s / self.decisions * 1e3) if self.decisions else None,
            controller_share=(self.controller_s / wall) if wall > 0 and self.decisions else None,
            answer_ms_per_sample=(self.answer_s / self.answered * 1e3) if self.answered else None,
            new_samples=self.new_samples,
            new_tokens=self.new_tokens,
            wall_s=wall,
            tokens_per_s=(self.new_tokens / wall) if wall > 0 else None,
            results_path=str(self.results_path) if self.results_path is not None else None,
            kind=self.kind,
            results=recs,
        )


# --------------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------------


def _config(n_max, config: RunConfig | None, kwargs: dict, what: str) -> RunConfig:
    if config is None:
        if n_max is None:
            raise ParameterError("n_max" if what == "run" else "k", "is required (or give config=RunConfig)")
        return RunConfig.from_kwargs(n_max, **kwargs)
    if kwargs:
        raise ParameterError(
            next(iter(kwargs)), "give either config=RunConfig(...) or keyword arguments, not both"
        )
    if not isinstance(config, RunConfig):
        raise ParameterError("config", f"must be a RunConfig, got {type(config).__name__}")
    if n_max is not None and n_max != config.sampling.n_max:
        raise ParameterError(
            "n_max" if what == "run" else "k", f"{n_max!r} differs from config.sampling.n_max"
        )
    return config


async def arun(
    problems: Sequence[Any],
    generator,
    scorer,
    policy,
    n_max: int | None = None,
    *,
    config: RunConfig | None = None,
    **kwargs: Any,
) -> RunSummary:
    """Run ``policy`` online on ``problems`` (objects with ``id``, ``question``, ``gold``); see the
    module docstring.

    ``generator``: an :class:`optscale.online.generators.Generator`; ``scorer``: an
    :class:`optscale.online.scorers.Scorer` or None (only for policies that do not need scores);
    ``policy``: an :class:`optscale.policies.Policy` (or a spec for ``make_policy``). The configuration
    is either ``config`` (a :class:`RunConfig`) or ``n_max`` plus keyword arguments, mapped by
    :meth:`RunConfig.from_kwargs`: the fields of :class:`~optscale.online.loop.SamplingConfig`
    (``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``equiv``, ``batch_samples``, ...) and of
    :class:`RunConfig` (``prompt_template``, ``concurrency``, ``grade_kind``, ``results_path``, ``resume``,
    ``progress``, ``save_texts``, ``prior_fn``).

    Returns a :class:`RunSummary` whose ``results`` hold the per-problem records. The generator is not
    closed. Raises ParameterError / InputError / GenerationError / ScoringError; samples and finished
    problems recorded before an error are kept in the files for a resumed run.
    """
    cfg = _config(n_max, config, kwargs, "run")
    if isinstance(policy, str):
        from optscale.policies import make_policy

        policy = make_policy(policy)
    return await _BatchEngine(problems, generator, scorer, policy, cfg, kind="run").run()


def run(problems, generator, scorer, policy, n_max: int | None = None, **kwargs) -> RunSummary:
    """Synchronous wrapper of :func:`arun` (runs its own event loop; closes the generator at the end)."""

    async def main():
        try:
            return await arun(problems, generator, scorer, policy, n_max, **kwargs)
        finally:
            await generator.aclose()

    return asyncio.run(main())


def _pool_record(problem, record: dict) -> dict:
    """A result record rewritten as one problem of a sample pool (``optscale.pool`` schema, validated)."""
    from optscale.pool import Problem, Sample, problem_from_dict, problem_to_dict

    samples = [
        Sample(
            answer=s["answer"], score=s["score"], tokens=s["tokens"], text=s.get("text"), correct=s["correct"]
        )
        for s in record["samples"]
    ]
    meta = {k: v for k, v in (getattr(problem, "meta", None) or {}).items() if _jsonable(v)}
    meta["finish_reasons"] = [s.get("finish_reason") for s in record["samples"]]
    gold = record["gold"]
    p = Problem(id=record["id"], question=record["question"], gold=gold, samples=samples, meta=meta)
    d = problem_to_dict(p)
    problem_from_dict(d, "<generated pool record>", None)  # a bug here must not write an unreadable pool
    return d


def _jsonable(v) -> bool:
    return isinstance(v, str | int | float | bool | type(None) | list | dict)


async def agenerate(
    problems: Sequence[Any],
    generator,
    scorer,
    k: int | None = None,
    *,
    out_path: str | Path | None = None,
    config: RunConfig | None = None,
    **kwargs: Any,
) -> RunSummary:
    """Draw ``k`` samples per problem, score them (``scorer`` may be None: scores null) and write a
    sample pool to ``out_path`` (JSON Lines, ``optscale.pool`` schema, one problem per line, appended
    as problems finish, with the same checkpoint/resume as :func:`arun`). Sample ``i`` of a problem
    gets the same seed as in :func:`arun`, so with the same model and arguments the pool holds the
    very samples an online run would draw.

    The configuration is ``config`` (a :class:`RunConfig` whose ``sampling.n_max`` is ``k`` and whose
    ``results_path`` is the pool) or ``k``, ``out_path`` and the keyword arguments of :func:`arun`
    (answers are clustered with ``equiv="exact"``; ``prior_fn`` does not apply)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ParameterError("k", f"must be an integer >= 1, got {k!r}")
    if config is None:
        for bad in ("equiv", "prior_fn", "results_path"):
            if bad in kwargs:
                raise TypeError(f"unexpected keyword argument {bad!r}")
        if out_path is None:
            raise ParameterError("out_path", "is required: the pool file to write")
        kwargs = {**kwargs, "equiv": "exact", "results_path": out_path}
    elif out_path is not None:
        raise ParameterError("out_path", "give either config=RunConfig(...) or out_path, not both")
    cfg = _config(k, config, kwargs, "generate")
    if cfg.results_path is None:
        raise ParameterError("results_path", "generate writes a pool: config.results_path is required")
    runner = _BatchEngine(problems, generator, scorer, _FixedN(cfg.sampling.n_max), cfg, kind="generate",
                          record_fn=_pool_record)  # fmt: skip
    summary = await runner.run()
    summary.method = "generate"
    return summary


def generate(problems, generator, scorer, k: int | None = None, **kwargs) -> RunSummary:
    """Synchronous wrapper of :func:`agenerate` (closes the generator at the end)."""

    async def main():
        try:
            return await agenerate(problems, generator, scorer, k, **kwargs)
        finally:
            await generator.aclose()

    return asyncio.run(main())
