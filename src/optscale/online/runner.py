"""Online adaptive Best-of-N: draw samples in waves decided by a policy, score them, pick the answer.

For each problem the runner loops::

    k = policy.next_wave(obs, n_max)          # 0 = stop
    draw samples n .. n+k-1 (concurrently), extract and cluster their answers, score them
    obs = Observation(answers, scores, tokens, prior)

then ``policy.select(obs)`` picks the answer, and one JSON line per problem is appended to the results
file. Problems run concurrently (``concurrency`` at a time); the samples of a wave run concurrently too.

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
import hashlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from optscale.errors import InputError, OptScaleError, ParameterError

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE",
    "RunSummary",
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


def _first_error(exc: BaseException) -> BaseException:
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


def _describe(obj: Any) -> dict | None:
    if obj is None:
        return None
    d = {"class": type(obj).__name__}
    for attr in ("name", "model", "spec"):
        v = getattr(obj, attr, None)
        if isinstance(v, str | int | float) and v != "":
            d[attr] = v
    return d


def _policy_info(policy: Any, obs: Any, n_max: int) -> dict | None:
    """Fitted parameters / diagnostics the policy reports for the final observation of a problem.

    Uses ``policy.info(obs)`` when the policy has one, else replays the policy on a one-row batch
    holding ``obs`` (``ReplayResult.info``: e.g. the fitted ``mu``/``sigma`` and ``n_star`` of
    OptScale). Returns a JSON-able dict, or None when the policy reports nothing."""
    import numpy as np

    info = None
    fn = getattr(policy, "info", None)
    if callable(fn):
        info = fn(obs)
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
        except Exception:  # diagnostics only: never fail a run over them
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


def _stats(r: dict) -> tuple[int, int, bool | None]:
    """(samples, tokens, correct) of a result record, or of a pool record (written by ``generate``:
    its correctness is that of its first sample, i.e. one-sample accuracy)."""
    samples = r.get("samples") or []
    if "n_samples" in r:
        c = r.get("correct")
        return int(r["n_samples"]), int(r.get("tokens") or 0), None if c is None else bool(c)
    c = samples[0].get("correct") if samples else None
    return len(samples), int(sum(s.get("tokens") or 0 for s in samples)), None if c is None else bool(c)


def _batches_by_seed(generator) -> bool:
    """Whether one ``generate(n=m, seed=s)`` call of ``generator`` yields exactly the samples of ``m``
    calls ``generate(n=1, seed=s+i)`` (then the runner draws each run of consecutive samples in one
    call). True for the embedded llama.cpp generator (batched decoding, one RNG per sample seeded
    ``seed + i``), or when the generator sets ``seed_per_sample = True``; OpenAI-compatible servers
    with native ``n`` draw all samples of a request from one seed, so they get one call per sample."""
    flag = getattr(generator, "seed_per_sample", None)
    if flag is not None:
        return bool(flag)
    try:
        from optscale.online.local import LlamaCppGenerator
    except ImportError:  # pragma: no cover
        return False
    return isinstance(generator, LlamaCppGenerator)


def _checked_score(x, index: int, scorer) -> float:
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


def _check_args(n_max, max_tokens, temperature, concurrency) -> None:
    if isinstance(n_max, bool) or not isinstance(n_max, int) or n_max < 1:
        raise ParameterError("n_max", f"must be an integer >= 1, got {n_max!r}")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ParameterError("max_tokens", f"must be an integer >= 1, got {max_tokens!r}")
    if not isinstance(temperature, int | float) or temperature < 0:
        raise ParameterError("temperature", f"must be a number >= 0, got {temperature!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ParameterError("concurrency", f"must be an integer >= 1, got {concurrency!r}")


# --------------------------------------------------------------------------------------------------
# the runner
# --------------------------------------------------------------------------------------------------


class _Runner:
    def __init__(
        self,
        problems,
        generator,
        scorer,
        policy,
        n_max: int,
        *,
        kind: str,
        prompt_template: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        concurrency: int,
        equiv,
        grade_kind: str,
        results_path,
        resume: bool,
        progress: bool | None,
        save_texts: bool,
        prior_fn,
        record_fn,
        batch_samples: bool | None = None,
    ):
        from optscale.answers import extract_answer, get_equivalence, grade

        _check_args(n_max, max_tokens, temperature, concurrency)
        build_prompt(prompt_template, "")  # validates the template
        self.problems = list(problems)
        ids = [str(p.id) for p in self.problems]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ParameterError(
                "problems", f"duplicate problem id {dup!r} (ids key the results and checkpoints)"
            )
        if getattr(policy, "batch_only", False):
            raise ParameterError(
                "policy",
                f"{getattr(policy, 'name', policy)!r} decides over a whole problem set at once and cannot run "
                "online; replay it offline (optscale eval) instead",
            )
        if getattr(policy, "needs_prior", False) and prior_fn is None:
            raise ParameterError(
                "prior_fn", f"policy {getattr(policy, 'name', policy)!r} needs per-problem priors"
            )
        if getattr(policy, "needs_scores", False) and scorer is None:
            raise ParameterError(
                "scorer", f"policy {getattr(policy, 'name', policy)!r} needs scores; give a scorer"
            )
        self.generator, self.scorer, self.policy, self.n_max = generator, scorer, policy, n_max
        self.kind = kind
        self.template, self.max_tokens, self.temperature, self.top_p = (
            prompt_template,
            max_tokens,
            temperature,
            top_p,
        )
        self.seed, self.concurrency = seed, concurrency
        self.equiv_name = equiv if isinstance(equiv, str) else getattr(equiv, "__name__", "custom")
        self.equiv = get_equivalence(equiv)
        self.grade_kind = grade_kind
        self._extract, self._grade = extract_answer, grade
        self.results_path = Path(results_path) if results_path is not None else None
        self.resume, self.progress, self.save_texts = resume, progress, save_texts
        self.prior_fn, self.record_fn = prior_fn, record_fn
        self.batch_samples = _batches_by_seed(generator) if batch_samples is None else bool(batch_samples)
        self.want_logprobs = scorer is not None and getattr(scorer, "needs_logprobs", True)
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

    # -- configuration recorded in the checkpoint header ------------------------------------------
    def config(self) -> dict:
        return {
            "kind": self.kind,
            "generator": _describe(self.generator),
            "scorer": _describe(self.scorer),
            "prompt_template": self.template,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "method": getattr(self.policy, "name", type(self.policy).__name__),
            "n_max": self.n_max,
            "equiv": self.equiv_name,
        }

    def _open_files(self):
        from optscale.online.checkpoint import JsonlAppender, SampleCheckpoint, checkpoint_path, recover_jsonl

        self.ckpt = None
        self.out = None
        if self.results_path is None:
            return
        ck_path = checkpoint_path(self.results_path)
        if self.resume:
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
            records, torn = recover_jsonl(self.results_path)
            if torn:
                print(
                    f"optscale: warning: {self.results_path}: discarded a torn last line (killed mid-write)",
                    file=sys.stderr,
                )
            wanted = {str(p.id) for p in self.problems}
            for lineno, rec in enumerate(records, 1):
                if "id" not in rec:
                    raise InputError(str(self.results_path), lineno, "id", "result line without an id")
                pid = str(rec["id"])
                if pid in wanted:
                    self.results[pid] = rec
                    self.resumed_ids.add(pid)
        else:
            self.results_path.parent.mkdir(parents=True, exist_ok=True)
            self.results_path.write_bytes(b"")
            self.ckpt = SampleCheckpoint(ck_path, self.config(), resume=False)
        self.out = JsonlAppender(self.results_path)

    # -- samples ----------------------------------------------------------------------------------
    async def _draw(self, problem, messages, start: int, count: int, loop, pool) -> dict[int, dict]:
        """Generate, score and checkpoint samples ``start .. start+count-1`` of ``problem`` with one
        generator call (``count`` > 1 only for generators that seed sample ``i`` of a call with
        ``seed + i``, so the texts equal those of one call per sample)."""
        pid = str(problem.id)
        s = sample_seed(self.seed, pid, start)
        comps = await self.generator.generate(
            messages,
            count,
            seed=s,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            logprobs=self.want_logprobs,
        )
        if len(comps) != count:
            raise OptScaleError(
                f"generator {self.generator!r} returned {len(comps)} completions for n={count}"
            )
        scores: list[float | None] = [None] * count
        if self.scorer is not None:
            got = await loop.run_in_executor(pool, self.scorer.score, problem.question, list(comps))
            if len(got) != count:
                raise OptScaleError(
                    f"scorer {type(self.scorer).__name__} returned {len(got)} scores for {count} samples"
                )
            scores = [_checked_score(x, i, self.scorer) for i, x in enumerate(got)]
        out = {}
        for j, (c, score) in enumerate(zip(comps, scores, strict=True)):
            t0 = time.perf_counter()
            answer = self._extract(c.text)
            self.answer_s += time.perf_counter() - t0
            rec = {
                "answer": answer,
                "score": score,
                "tokens": int(c.tokens),
                "finish_reason": c.finish_reason,
                "seed": sample_seed(self.seed, pid, start + j),
                "text": c.text,
            }
            self.new_samples += 1
            self.new_tokens += int(c.tokens)
            if self.ckpt is not None:
                rec = self.ckpt.add(pid, start + j, rec)
            out[start + j] = rec
        return out

    def _calls(self, missing: list[int]) -> list[tuple[int, int]]:
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

    # -- one problem --------------------------------------------------------------------------------
    async def _solve(self, problem, loop, pool) -> dict:
        import numpy as np

        from optscale.policies import Observation

        t_start = time.perf_counter()
        pid = str(problem.id)
        messages = build_prompt(self.template, problem.question)
        recorded = dict(self.ckpt.recorded(pid)) if self.ckpt is not None else {}
        prior = self.prior_fn(problem.question) if self.prior_fn is not None else None
        clus = _Clusterer(self.equiv)
        samples: list[dict] = []
        ids: list[int] = []
        waves: list[int] = []
        reused = 0
        ctrl = 0.0

        def obs():
            return Observation(
                answers=np.asarray(ids, dtype=np.int64),
                scores=np.asarray(
                    [np.nan if s["score"] is None else s["score"] for s in samples], dtype=np.float64
                ),
                tokens=np.asarray([s["tokens"] for s in samples], dtype=np.float64),
                prior=prior,
            )

        o = obs()
        while True:
            t0 = time.perf_counter()
            k = self.policy.next_wave(o, self.n_max)
            dt = time.perf_counter() - t0
            ctrl += dt
            self.decisions += 1
            k = int(k)
            n = len(samples)
            k = min(k, self.n_max - n)
            if k <= 0:
                break
            idxs = list(range(n, n + k))
            missing = [i for i in idxs if i not in recorded]
            new: dict[int, dict] = {}
            if missing:
                try:
                    async with asyncio.TaskGroup() as tg:
                        tasks = [
                            tg.create_task(self._draw(problem, messages, a, m, loop, pool))
                            for a, m in self._calls(missing)
                        ]
                except BaseExceptionGroup as eg:
                    raise _first_error(eg) from None
                for t in tasks:
                    new.update(t.result())
            for i in idxs:
                rec = new.get(i)
                if rec is None:
                    rec = recorded[i]
                    reused += 1
                samples.append(rec)
                t0 = time.perf_counter()
                ids.append(clus.add(rec.get("answer")))
                self.answer_s += time.perf_counter() - t0
                self.answered += 1
            waves.append(k)
            o = obs()
        t0 = time.perf_counter()
        sel = int(self.policy.select(o)) if samples else -1
        dt = time.perf_counter() - t0
        ctrl += dt
        self.decisions += 1
        self.controller_s += ctrl
        self.reused += reused
        if not (-1 <= sel < len(samples)):
            raise OptScaleError(f"policy {self.policy_name} selected sample {sel} of {len(samples)}")
        answer = samples[sel]["answer"] if sel >= 0 else None
        gold = getattr(problem, "gold", None)
        out_samples = []
        for i, (s, cid) in enumerate(zip(samples, ids, strict=True)):
            d = {
                "index": i,
                "answer": s.get("answer"),
                "class": cid,
                "score": s.get("score"),
                "tokens": s.get("tokens"),
                "correct": self._grade(s.get("answer"), gold, self.grade_kind) if gold is not None else None,
                "finish_reason": s.get("finish_reason"),
            }
            if self.save_texts:
                d["text"] = s.get("text")
            out_samples.append(d)
        correct = None
        if gold is not None:
            correct = out_samples[sel]["correct"] if sel >= 0 else False
        record = {
            "id": pid,
            "question": problem.question,
            "gold": gold,
            "answer": answer,
            "selected_index": sel,
            "correct": correct,
            "n_samples": len(samples),
            "tokens": int(sum(s.get("tokens") or 0 for s in samples)),
            "waves": waves,
            "method": self.policy_name,
            "n_max": self.n_max,
            "fit": _policy_info(self.policy, o, self.n_max),
            "reused_samples": reused,
            "controller_ms": ctrl * 1e3,
            "wall_s": time.perf_counter() - t_start,
            "samples": out_samples,
        }
        if self.record_fn is not None:
            record = self.record_fn(problem, record)
        return record

    @property
    def policy_name(self) -> str:
        return getattr(self.policy, "name", type(self.policy).__name__)

    # -- all problems -------------------------------------------------------------------------------
    async def run(self) -> RunSummary:
        from tqdm.auto import tqdm

        self._warm_up()
        t_start = time.perf_counter()
        self._open_files()
        todo = [p for p in self.problems if str(p.id) not in self.results]
        bar = tqdm(
            total=len(self.problems),
            initial=len(self.problems) - len(todo),
            desc=self.policy_name,
            unit="problem",
            file=sys.stderr,
            disable=(None if self.progress is None else not self.progress),
            dynamic_ncols=True,
        )
        self._update_bar(bar)
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="optscale-scorer")
        queue: asyncio.Queue = asyncio.Queue()
        for p in todo:
            queue.put_nowait(p)

        async def worker():
            while True:
                try:
                    p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                rec = await self._solve(p, loop, pool)
                self.results[str(p.id)] = rec
                if self.out is not None:
                    self.out.append(rec)
                bar.update(1)
                self._update_bar(bar)

        try:
            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.concurrency, len(todo))):
                        tg.create_task(worker())
            except BaseExceptionGroup as eg:
                raise _first_error(eg) from None
        finally:
            bar.close()
            pool.shutdown(wait=False, cancel_futures=True)
            if self.out is not None:
                self.out.close()
            if self.ckpt is not None:
                self.ckpt.close()
        return self._summary(time.perf_counter() - t_start)

    def _warm_up(self) -> None:
        """Call the policy once on a synthetic observation so that one-time costs (lazy imports of
        scipy and the estimators) are not counted as controller time. Policies are pure, so this
        changes nothing; errors are ignored here (they surface in the real calls)."""
        import numpy as np

        from optscale.policies import Observation

        n = self.n_max
        prior = (0.5, 0.2, 0.1, 0.1) if getattr(self.policy, "needs_prior", False) else None
        obs = Observation(
            answers=np.arange(n, dtype=np.int64) % 3,
            scores=np.linspace(0.2, 0.8, n),
            tokens=np.ones(n),
            prior=prior,
        )
        try:
            for m in sorted({1, min(4, n), n}):
                self.policy.next_wave(obs.head(m) if hasattr(obs, "head") else obs, n)
            self.policy.select(obs)
        except Exception:
            pass

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


async def arun(
    problems: Sequence[Any],
    generator,
    scorer,
    policy,
    n_max: int,
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    max_tokens: int = 1024,
    temperature: float = 0.7,
    top_p: float = 1.0,
    seed: int | None = 0,
    concurrency: int = 4,
    equiv: str | Callable[[str, str], bool] = "math",
    grade_kind: str = "auto",
    results_path: str | Path | None = None,
    resume: bool = True,
    progress: bool | None = True,
    save_texts: bool = True,
    prior_fn: Callable[[str], tuple[float, float, float, float] | None] | None = None,
    batch_samples: bool | None = None,
) -> RunSummary:
    """Run ``policy`` online on ``problems`` (objects with ``id``, ``question``, ``gold``); see the
    module docstring.

    ``generator``: an :class:`optscale.online.generators.Generator`; ``scorer``: an
    :class:`optscale.online.scorers.Scorer` or None (only for policies that do not need scores);
    ``policy``: an :class:`optscale.policies.Policy` (or a spec for ``make_policy``); ``n_max``: the
    most samples per problem. ``prompt_template`` contains ``{question}``. ``seed``: run seed, from which
    each sample's seed is derived (None: unseeded, resume still loses nothing). ``concurrency``: problems
    in flight. ``equiv``: answer equivalence for clustering (``"math"``, ``"exact"``, ...);
    ``grade_kind``: how answers are compared with gold answers. ``results_path``: JSONL results file
    (one line per problem; with ``<results_path>.samples.jsonl`` as the per-sample checkpoint), None to
    keep results in memory only. ``resume``: continue from those files (False: overwrite them).
    ``progress``: tqdm bar on stderr (None: only on a terminal). ``save_texts``: keep completion texts in
    the results. ``prior_fn(question) -> (mu0, sigma0, sd_mu, sd_sigma)`` supplies priors (OptScale^t).
    ``batch_samples``: draw each run of consecutive samples of a wave in one generator call (only
    valid for generators that seed sample ``i`` of a call with ``seed + i``; None: decided by
    :func:`_batches_by_seed`); otherwise each sample is its own call (all of a wave in flight at once).

    Returns a :class:`RunSummary` whose ``results`` hold the per-problem records. The generator is not
    closed. Raises ParameterError / InputError / GenerationError / ScoringError; samples and finished
    problems recorded before an error are kept in the files for a resumed run.
    """
    if isinstance(policy, str):
        from optscale.policies import make_policy

        policy = make_policy(policy)
    runner = _Runner(
        problems,
        generator,
        scorer,
        policy,
        n_max,
        kind="run",
        prompt_template=prompt_template,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        concurrency=concurrency,
        equiv=equiv,
        grade_kind=grade_kind,
        results_path=results_path,
        resume=resume,
        progress=progress,
        save_texts=save_texts,
        prior_fn=prior_fn,
        record_fn=None,
        batch_samples=batch_samples,
    )
    return await runner.run()


def run(problems, generator, scorer, policy, n_max: int, **kwargs) -> RunSummary:
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
    k: int,
    *,
    out_path: str | Path,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    max_tokens: int = 1024,
    temperature: float = 0.7,
    top_p: float = 1.0,
    seed: int | None = 0,
    concurrency: int = 4,
    grade_kind: str = "auto",
    resume: bool = True,
    progress: bool | None = True,
    save_texts: bool = True,
    batch_samples: bool | None = None,
) -> RunSummary:
    """Draw ``k`` samples per problem, score them (``scorer`` may be None: scores null) and write a
    sample pool to ``out_path`` (JSON Lines, ``optscale.pool`` schema, one problem per line, appended
    as problems finish, with the same checkpoint/resume as :func:`arun`). Sample ``i`` of a problem
    gets the same seed as in :func:`arun`, so with the same model and arguments the pool holds the
    very samples an online run would draw."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ParameterError("k", f"must be an integer >= 1, got {k!r}")
    runner = _Runner(
        problems,
        generator,
        scorer,
        _FixedN(k),
        k,
        kind="generate",
        prompt_template=prompt_template,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        concurrency=concurrency,
        equiv="exact",
        grade_kind=grade_kind,
        results_path=out_path,
        resume=resume,
        progress=progress,
        save_texts=save_texts,
        prior_fn=None,
        record_fn=_pool_record,
        batch_samples=batch_samples,
    )
    summary = await runner.run()
    summary.method = "generate"
    return summary


def generate(problems, generator, scorer, k: int, **kwargs) -> RunSummary:
    """Synchronous wrapper of :func:`agenerate` (closes the generator at the end)."""

    async def main():
        try:
            return await agenerate(problems, generator, scorer, k, **kwargs)
        finally:
            await generator.aclose()

    return asyncio.run(main())
