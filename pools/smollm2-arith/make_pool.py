"""Regenerate the SmolLM2 arithmetic sample pools (``selfcert.jsonl`` and ``judge.jsonl``), pool v2, end to end.

Pool v2 keeps v1's generator, prompt and sampling settings but chooses its problems by a pilot measurement
of their solve rate, then draws fresh samples for them. Stages (each resumable; run them in order, or
``all``):

``measure``     v1's task search pilot: a few problems per level x a few samples, per-level solve rate and
                seconds per sample (used once to choose the level mix; the numbers are in README.md);
``candidates``  new problems from the same generator (levels ``mul_s``/``mul``, the v1 streams continued, no
                v1 question) to ``<work>/candidates.jsonl``;
``pilot``       ``PILOT_K`` samples per candidate at run seed ``PILOT_SEED`` (same prompt, temperature,
                max_tokens and code path as the final samples), in candidate order, ``MAX_PILOT`` at most,
                to ``<work>/pilot_texts.jsonl``; re-selects after every chunk and stops when the selection is
                complete. The v1 problems' pilot is the v1 pool (32 samples, run seed ``V1_SEED``), read from
                ``--v1-pool`` (not regenerated);
``select``      (also run by ``pilot``) the rule of :func:`select` -> ``<work>/selection.json`` (ids and
                pilot counts, no texts; committed beside this script) and ``<work>/problems.jsonl``;
``generate``    ``K`` fresh samples per selected problem at run seed ``SEED`` (never a pilot's seed) with the
                self-certainty scorer (``optscale.online.runner.generate``, the code path of
                ``optscale generate``), texts kept, to ``<work>/selfcert_texts.jsonl`` (a second worker,
                ``--reverse``, to ``selfcert_texts_b.jsonl``); follows the selection while the pilot runs;
``judge``       re-score the very same samples with the LLM-judge P(yes) scorer (``JudgeScorer`` over the
                embedded model) to ``<work>/judge_texts.jsonl`` (checkpointed per problem; ``--follow``
                follows the generation);
``finalize``    write the committed pools without texts (``selfcert.jsonl``, ``judge.jsonl``, one seeded
                order) and ``selection.json`` next to this script and print the sanity numbers of README.md.

Usage (from the repository root; the v1 pool is in git history, see README)::

    git show e6092ac:pools/smollm2-arith/selfcert.jsonl > /work/scratch/pool9/v1_selfcert.jsonl
    PYTHONPATH=$PWD/src python3 pools/smollm2-arith/make_pool.py all --work /work/scratch/pool9

The work directory holds the texts (not committed); the committed pools are written beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: problem-set seed and size
PROBLEM_SEED = 20261201
#: generation settings (also written to README.md)
K = 32
#: run seeds: v1 pool (its 32 samples are the pilot of the v1 problems), the pilot of the new candidates, and
#: the final v2 samples (never a pilot's seed: the final samples are fresh draws)
V1_SEED = 0
PILOT_SEED = 1
SEED = 2
#: pool v2: problems chosen by a pilot measurement of their solve rate
TARGET = 200
PILOT_K = 8
V1_BAND = (7, 25)  # correct of the v1 pool's 32 samples: solve rate in [0.22, 0.78]
NEW_BAND = (2, 6)  # correct of 8 pilot samples: solve rate in [0.25, 0.75]
MAX_PILOT = 240  # candidates piloted at most (set by the CPU time available, see README)
CAND_PER_LEVEL = 300  # new candidates per level (continuing the v1 streams)
SHUFFLE_SEED = 20261202  # order of the final pool
TEMPERATURE = 0.4
TOP_P = 1.0
MAX_TOKENS = 24
#: two-/three-shot prompt: the model copies the "... The answer is N." form that optscale's answer extraction
#: reads (zero-shot instructions are mostly ignored by SmolLM2-135M; see README)
PROMPT_TEMPLATE = (
    'Answer with one sentence that ends with "The answer is N."\n\n'
    "Example: Ann has 4 cups. Bo gives Ann 9 more cups. How many cups does Ann have now?\n"
    "Reply: Ann has 4 + 9 = 13 cups. The answer is 13.\n\n"
    "Example: Cy has 15 pens. Cy gives 6 pens to Di. How many pens does Cy have left?\n"
    "Reply: Cy has 15 - 6 = 9 pens. The answer is 9.\n\n"
    "Example: Bo has 6 boxes. Each box holds 3 hats. How many hats does Bo have in all?\n"
    "Reply: Bo has 6 x 3 = 18 hats. The answer is 18.\n\n{question}"
)
JUDGE_PROMPT = None  # None = the repo's DEFAULT_JUDGE_PROMPT
JUDGE_TOP_K = 20

NAMES = ["Mira", "Tom", "Ava", "Ben", "Lily", "Sam", "Nora", "Leo", "Zoe", "Max", "Ella", "Omar", "Ivy", "Jack",
         "Rosa", "Finn", "Maya", "Eli", "Ruby", "Noah"]
THINGS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "coins", "shells", "cards", "balloons",
          "stamps", "oranges", "toy cars", "beads", "flowers"]
CONTAINERS = [("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"), ("shelf", "shelves"),
              ("tray", "trays")]


def _pick(rng: random.Random, seq):
    return seq[rng.randrange(len(seq))]


def make_problem(rng: random.Random, level: str) -> tuple[str, int]:
    """One word problem of ``level`` and its integer answer."""
    n = _pick(rng, NAMES)
    m = _pick(rng, [x for x in NAMES if x != n])
    t = _pick(rng, THINGS)
    c, cs = _pick(rng, CONTAINERS)
    if level in ("add", "add_s"):  # one step
        hi = 20 if level == "add" else 9
        a, b = rng.randint(2, hi), rng.randint(2, hi)
        q = f"{n} has {a} {t}. {m} gives {n} {b} more {t}. How many {t} does {n} have now?"
        return q, a + b
    if level in ("sub", "sub_s"):
        a = rng.randint(10, 40) if level == "sub" else rng.randint(5, 15)
        b = rng.randint(2, a - 2)
        q = f"{n} has {a} {t}. {n} gives {b} {t} to {m}. How many {t} does {n} have left?"
        return q, a - b
    if level in ("mul", "mul_s"):
        hi = 9 if level == "mul" else 5
        a, b = rng.randint(2, hi), rng.randint(2, hi)
        q = f"{n} has {a} {cs}. Each {c} holds {b} {t}. How many {t} does {n} have in all?"
        return q, a * b
    if level == "add2":  # two steps: add then subtract
        a, b = rng.randint(5, 30), rng.randint(2, 20)
        d = rng.randint(2, a + b - 2)
        q = (f"{n} has {a} {t}. {n} buys {b} more {t}, then gives {d} {t} to {m}. "
             f"How many {t} does {n} have now?")
        return q, a + b - d
    if level == "muladd":  # two steps: multiply then add
        a, b, d = rng.randint(2, 6), rng.randint(2, 9), rng.randint(2, 15)
        q = (f"{n} has {a} {cs} with {b} {t} in each {c}, and {d} more {t} on the table. "
             f"How many {t} does {n} have in all?")
        return q, a * b + d
    raise ValueError(f"unknown level {level!r}")


LEVELS = ("add_s", "add", "sub_s", "sub", "mul_s", "mul", "add2", "muladd")


def make_problems(mix: dict[str, int], seed: int = PROBLEM_SEED) -> list[dict]:
    """``mix[level]`` problems per level, interleaved, ids ``<level>-<i>``; deterministic in ``seed``."""
    out = []
    for level in LEVELS:
        rng = random.Random(f"{seed}/{level}")
        seen = set()
        i = 0
        while i < mix.get(level, 0):
            q, a = make_problem(rng, level)
            if q in seen:
                continue
            seen.add(q)
            out.append({"id": f"{level}-{i:03d}", "question": q, "answer": str(a), "level": level})
            i += 1
    rng = random.Random(seed)
    rng.shuffle(out)
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(path)


# ------------------------------------------------------------------------------------------------ stages
MIX = {"mul_s": 100, "mul": 100}  # chosen from the pilots (README)


def _generator(**kw):
    from optscale.online.local import LlamaCppGenerator

    return LlamaCppGenerator(**kw)


def stage_generate(work: Path, problems_path: Path, out: Path, k: int = K, concurrency: int = 4,
                   template: str = PROMPT_TEMPLATE, seed: int = SEED) -> float:
    from optscale.online.data import load_problems
    from optscale.online.runner import generate
    from optscale.online.scorers import make_scorer

    problems = load_problems(problems_path)
    t0 = time.time()
    summary = generate(problems, _generator(max_parallel=64, n_ctx=8192), make_scorer("self-certainty"), k,
                       out_path=str(out), prompt_template=template, max_tokens=MAX_TOKENS,
                       temperature=TEMPERATURE, top_p=TOP_P, seed=seed, concurrency=concurrency,
                       progress=False, save_texts=True)
    dt = time.time() - t0
    print(f"generate: {summary.problems} problems x {k} in {dt:.0f} s -> {out}")
    return dt


# ------------------------------------------------------------------------------------- pool v2: selection
def make_candidates(per_level: int = CAND_PER_LEVEL, seed: int = PROBLEM_SEED) -> list[dict]:
    """New candidate problems: the same generator and levels as the v1 set, the per-level streams continued
    past the v1 problems (ids ``<level>-100`` on), without any question of the v1 set or a question already
    drawn at another level; shuffled by a seeded ``random.Random``. Deterministic in ``seed``."""
    v1 = make_problems(MIX, seed)
    seen = {r["question"] for r in v1}
    longer = make_problems({lv: n + per_level for lv, n in MIX.items()}, seed)
    out = []
    for r in sorted(longer, key=lambda r: r["id"]):
        if int(r["id"].rsplit("-", 1)[1]) >= MIX[r["level"]] and r["question"] not in seen:
            seen.add(r["question"])
            out.append(r)
    random.Random(f"{seed}/candidates").shuffle(out)
    return out


def stage_candidates(work: Path) -> Path:
    path = work / "candidates.jsonl"
    rows = make_candidates()
    write_jsonl(path, rows)
    print(f"candidates: {len(rows)} -> {path}")
    return path


def _ids_of(path: Path) -> set[str]:
    return {p.id for p in _read_finished(path)}


def _claims(path: Path) -> set[str]:
    c = path.with_name(path.name + ".claims")
    return set(c.read_text(encoding="utf-8").split()) if c.exists() else set()


def run_worker(problems_path: Path, out: Path, *, seed: int, k: int, concurrency: int, reverse: bool = False,
               others: tuple[Path, ...] = (), stop=None, follow=None, poll: float = 30.0) -> float:
    """A generation worker: repeatedly takes the next ``concurrency`` problems of ``problems_path`` (re-read
    each time: it may grow) from the front (or the end, ``reverse``) that no worker has finished or claimed,
    claims them in ``<out>.claims`` and draws their ``k`` samples with :func:`stage_generate` (the runner's
    resume appends them to ``out``). Samples depend only on (run seed, problem id, index), so which worker
    draws a problem does not matter (up to llama.cpp's batch-composition effect, see README). Stops when
    ``stop()`` is true, or when nothing is left and ``follow()`` (problems may still be added) is not."""
    t0 = time.time()
    claims = out.with_name(out.name + ".claims")
    claims.unlink(missing_ok=True)  # claims of an earlier (killed) run of this worker: resume them
    while True:
        if stop is not None and stop():
            break
        rows = [json.loads(ln) for ln in problems_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        taken = _ids_of(out) | _claims(out)
        for o in others:
            taken |= _ids_of(o) | _claims(o)
        todo = [r for r in (rows[::-1] if reverse else rows) if r["id"] not in taken][:concurrency]
        if not todo:
            if follow is not None and follow():
                time.sleep(poll)
                continue
            break
        with claims.open("a", encoding="utf-8") as fh:
            fh.write(" ".join(r["id"] for r in todo) + "\n")
        chunk = out.with_name(out.name + ".chunk.jsonl")
        write_jsonl(chunk, todo)
        stage_generate(out.parent, chunk, out, k=k, concurrency=concurrency, seed=seed)
    return time.time() - t0


def _pilot_counts(path: Path) -> dict[str, tuple[int, int]]:
    """(correct, samples) per problem id of a pool file (finished problems only)."""
    return {p.id: (sum(bool(s.correct) for s in p.samples), len(p.samples)) for p in _read_finished(path)}


def select(work: Path, v1_pool: Path) -> dict:
    """The v2 problem set from the pilots; writes ``<work>/selection.json`` and ``<work>/problems.jsonl``.

    Rule: first every v1 problem whose v1-pool solve count (of 32, run seed 0) is in ``V1_BAND``, in v1 order
    (their pilot is the more precise one); then the new candidates whose pilot count (of ``PILOT_K``, run seed
    ``PILOT_SEED``) is in ``NEW_BAND``, in candidate order, until ``TARGET`` problems. Candidates are piloted
    in candidate order (the first ``MAX_PILOT`` at most), so a selection made while the pilot still runs is a
    prefix of the final one (the generation can start on it). ``complete`` once ``TARGET`` is reached or
    ``MAX_PILOT`` candidates are piloted."""
    v1 = [json.loads(ln) for ln in (v1_pool).read_text(encoding="utf-8").splitlines() if ln.strip()]
    v1_rows = {r["id"]: r for r in make_problems(MIX)}
    cands = [json.loads(ln) for ln in (work / "candidates.jsonl").read_text(encoding="utf-8").splitlines()]
    cands = cands[:MAX_PILOT]
    pilot = _pilot_counts(work / "pilot_texts.jsonl")
    entries, chosen = [], []
    for d in v1:
        c = sum(bool(s["correct"]) for s in d["samples"])
        r = v1_rows[d["id"]]
        if d["question"] != r["question"] or d["gold"] != r["answer"]:
            raise SystemExit(f"{v1_pool}: problem {d['id']} is not the v1 generator's")
        ok = V1_BAND[0] <= c <= V1_BAND[1] and len(d["samples"]) == K
        entries.append({"id": d["id"], "source": "v1", "correct": c, "samples": len(d["samples"]), "selected": ok})
        if ok:
            chosen.append(r)
    n_v1 = len(chosen)
    piloted = passed = 0
    for r in cands:
        if r["id"] not in pilot:
            break
        piloted += 1
        c, n = pilot[r["id"]]
        ok = NEW_BAND[0] <= c <= NEW_BAND[1] and n == PILOT_K
        passed += ok
        take = ok and len(chosen) < TARGET
        e = {"id": r["id"], "source": "new", "correct": c, "samples": n, "selected": take}
        entries.append(e)
        if take:
            chosen.append(r)
        if len(chosen) >= TARGET:
            break
    complete = len(chosen) >= TARGET or piloted == len(cands)
    sel = {
        "rule": "v1 problems with v1-pool correct count (of 32) in v1_band, in v1 order; then new candidates "
                "with pilot correct count (of pilot_k) in new_band, in candidate order (max_pilot at most), until "
                "target",
        "target": TARGET, "v1_seed": V1_SEED, "v1_band": list(V1_BAND), "v1_problems": len(v1),
        "v1_selected": n_v1, "pilot_seed": PILOT_SEED, "pilot_k": PILOT_K, "new_band": list(NEW_BAND),
        "max_pilot": MAX_PILOT,
        "candidates": len(make_candidates()), "candidates_piloted": piloted, "candidates_passed": passed,
        "new_selected": len(chosen) - n_v1,
        "selected": len(chosen), "complete": complete,
        "pilot": entries,
    }
    write_jsonl(work / "problems.jsonl", chosen)
    tmp = work / "selection.tmp"
    tmp.write_text(json.dumps(sel, indent=0) + "\n", encoding="utf-8")
    tmp.replace(work / "selection.json")
    return sel


def _selection_done(work: Path) -> bool:
    p = work / "selection.json"
    return p.exists() and json.loads(p.read_text(encoding="utf-8"))["complete"]


def stage_pilot(work: Path, v1_pool: Path, concurrency: int = 8) -> float:
    """``PILOT_K`` samples (run seed ``PILOT_SEED``) per new candidate (the first ``MAX_PILOT``), in candidate
    order, ``concurrency`` problems at a time, re-selecting after each chunk; stops as soon as the selection
    is complete."""

    def stop():
        sel = select(work, v1_pool)
        print(f"select: {sel['selected']} selected ({sel['v1_selected']} v1, {sel['new_selected']} new of "
              f"{sel['candidates_piloted']} piloted, {sel['candidates_passed']} passed)", flush=True)
        return sel["complete"]

    first = work / "pilot_candidates.jsonl"
    write_jsonl(first, [json.loads(ln) for ln in (work / "candidates.jsonl").read_text().splitlines()][:MAX_PILOT])
    dt = run_worker(first, work / "pilot_texts.jsonl", seed=PILOT_SEED, k=PILOT_K, concurrency=concurrency,
                    stop=stop)
    print(f"pilot: done in {dt:.0f} s")
    return dt


PILOT_LEVELS = ("add_s", "add", "sub_s", "sub", "mul_s", "mul")


def stage_measure(work: Path, per_level: int = 8, k: int = 8) -> None:
    """Pilot: per-level solve rates (fraction of correct samples) and seconds per sample."""
    import numpy as np

    from optscale.pool import load_pool

    path = work / "pilot_problems.jsonl"
    write_jsonl(path, make_problems({lv: per_level for lv in PILOT_LEVELS}, seed=PROBLEM_SEED + 1))
    out = work / "pilot.jsonl"
    dt = stage_generate(work, path, out, k=k, concurrency=8)
    pool = load_pool(out)
    by = {}
    for p in pool.problems:
        rate = np.mean([bool(s.correct) for s in p.samples])
        by.setdefault(p.meta["level"], []).append(rate)
    toks = [s.tokens for p in pool.problems for s in p.samples]
    print(f"pilot: {len(pool.problems)} problems x {k}: {dt / (len(pool.problems) * k):.3f} s/sample, "
          f"mean tokens {np.mean(toks):.1f}")
    for lv, rates in by.items():
        r = np.array(rates)
        print(f"  {lv:7s} mean solve {r.mean():.2f}  in [0.2,0.8]: {np.mean((r >= 0.2) & (r <= 0.8)):.2f}  "
              f"rates {np.round(np.sort(r), 2).tolist()}")


class PrefixReuseJudgeGenerator:
    """The embedded SmolLM2 as a one-token greedy judge that reuses the KV cache of the problem's shared
    prompt prefix.

    All judge prompts of one problem share everything up to the solution text (chat template, instructions,
    the question): that part is decoded once per problem (see :meth:`set_anchor`) and only the solution and
    the closing question are decoded per sample, about 4x fewer tokens than decoding each judge prompt from
    scratch, which is what made judging 6400 samples feasible on 2 shared cores. Prompts are tokenized exactly as :class:`~optscale.online.local.LlamaCppGenerator` does
    (same chat template) and the first-token alternatives are computed by its ``_sample`` (temperature 0,
    log-softmax of the raw logits), so the judge scores equal LlamaCppGenerator's up to llama.cpp's float
    differences between batch shapes (checked in README: max |diff| on the pilot). Used by the repo's
    :class:`~optscale.online.scorers.JudgeScorer` (it only needs ``generate``).
    """

    name = "llama-cpp-prefix-reuse"
    seed_per_sample = True

    def __init__(self, top_logprobs: int = JUDGE_TOP_K, n_ctx: int = 2048):
        import threading

        import llama_cpp

        from optscale.online.generators import Usage
        from optscale.online.local import LlamaCppGenerator

        self.usage = Usage()
        self.top_logprobs = top_logprobs
        self._ref = LlamaCppGenerator(top_logprobs=top_logprobs, n_ctx=256, max_parallel=1, prompt_cache_mb=0,
                                      n_threads=1)
        self._ref.load()
        self.model = self._ref.model
        self._llm = llama_cpp.Llama(model_path=str(self._ref.model_path), n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                                    n_threads=1, n_threads_batch=1, flash_attn=False, verbose=False)
        self._lock = threading.Lock()
        self.decoded = 0  # tokens actually decoded (after prefix reuse)
        self.prompt_tokens = 0  # tokens the prompts had
        self._anchor: list[int] = []

    def set_anchor(self, prompt) -> None:
        """The judge prompt of the next problem with an empty solution: every prompt is decoded as two batches,
        the tokens it shares with this anchor (decoded once per problem, from an empty cache) and the rest,
        so a score depends only on its own prompt, never on the order or on what was judged before."""
        self._anchor = self._ref._prompt_tokens(prompt)

    def _one(self, prompt):
        import numpy as np

        from optscale.online.generators import Completion

        toks = self._ref._prompt_tokens(prompt)
        llm = self._llm
        with self._lock:
            a = 0
            lim = min(len(self._anchor), len(toks) - 1)
            while a < lim and self._anchor[a] == toks[a]:
                a += 1
            if llm.n_tokens < a or list(llm.input_ids[:a]) != toks[:a]:
                llm.n_tokens = 0
                llm.eval(toks[:a])
                self.decoded += a
            llm.n_tokens = a
            llm.eval(toks[a:])
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()
            self.decoded += len(toks) - a
            self.prompt_tokens += len(toks)
        tok, lp, top = self._ref._sample(logits, None, 0.0, 1.0, True)
        text = self._ref._piece(tok).decode("utf-8", errors="replace")
        return Completion(text=text, tokens=1, logprobs=[lp], top_logprobs=[top], finish_reason="length",
                          prompt_tokens=len(toks))

    async def generate(self, prompt, n, *, seed=None, max_tokens, temperature, top_p=1.0, logprobs=False,
                       stop=None):
        if n != 1 or max_tokens != 1 or temperature != 0:
            raise ValueError("PrefixReuseJudgeGenerator only serves greedy one-token judge calls")
        return [await asyncio.to_thread(self._one, prompt)]

    async def aclose(self):
        await self._ref.aclose()
        self._llm.close()


def _read_finished(path: Path) -> list:
    """Complete problems of a pool file that may still be growing (a torn last line is ignored)."""
    from optscale.pool import problem_from_dict

    out = []
    if not path.exists():
        return out
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            break
        out.append(problem_from_dict(d, str(path), i))
    return out


def stage_judge(work: Path, srcs: list[Path], out: Path, follow: bool = False, poll: float = 30.0,
                reverse: bool = False, others: tuple[Path, ...] = ()) -> float:
    """Score every sample of the pools ``srcs`` (with texts) with the repo's JudgeScorer over the embedded model
    and append one pool line per problem to ``out``; resumes (problems already in ``out`` are skipped) and,
    with ``follow``, follows ``srcs`` that are still being generated until the selection is complete and
    every problem of it is judged.
    Identical texts of one problem are judged once (the judge is deterministic: greedy, fixed prompt).
    A second worker (``reverse``) takes the problems from the end and skips those in ``others`` (the other
    worker's output), so two processes can share the work; finalize merges the files."""
    from optscale.online.generators import Completion
    from optscale.online.scorers import DEFAULT_JUDGE_PROMPT, JudgeScorer
    from optscale.pool import problem_to_dict

    done = {p.id for p in _read_finished(out)}
    if out.exists():  # drop a torn last line
        keep = [ln for ln in out.read_text(encoding="utf-8").splitlines() if _ok(ln)]
        out.write_text("".join(ln + "\n" for ln in keep), encoding="utf-8")
    gen = PrefixReuseJudgeGenerator()
    judge = JudgeScorer(gen, prompt=JUDGE_PROMPT or DEFAULT_JUDGE_PROMPT, top_k=JUDGE_TOP_K, concurrency=1)
    t0 = time.time()
    judged = unique = 0

    async def main():
        nonlocal judged, unique
        with out.open("a", encoding="utf-8") as fh:
            while True:
                skip = done | {p.id for o in others for p in _read_finished(o)}
                # re-read: the problem set may still be growing (pool v2: the selection follows the pilot)
                order = [json.loads(ln)["id"] for ln in (work / "problems.jsonl").read_text().splitlines()]
                if follow and _selection_done(work) and set(order) <= skip:
                    break
                ready = {p.id: p for src in srcs for p in _read_finished(src)}
                todo = [ready[i] for i in (order[::-1] if reverse else order) if i in ready and i not in skip]
                for p in todo[:1]:
                    texts = sorted({s.text or "" for s in p.samples})
                    gen.set_anchor(judge.messages(p.question, ""))
                    scores = await judge.ascore(p.question, [Completion(text=t, tokens=0) for t in texts])
                    by_text = dict(zip(texts, scores, strict=True))
                    d = problem_to_dict(p)
                    for s in d["samples"]:
                        s["score"] = by_text[s.get("text") or ""]
                    fh.write(json.dumps(d) + "\n")
                    fh.flush()
                    done.add(p.id)
                    judged += len(p.samples)
                    unique += len(texts)
                    print(f"judge: {len(done)} problems, {judged} samples ({unique} distinct texts), "
                          f"{time.time() - t0:.0f} s, decoded {gen.decoded}/{gen.prompt_tokens} prompt tokens",
                          flush=True)
                if not follow and not todo:
                    break
                if not todo:
                    await asyncio.sleep(poll)
        await gen.aclose()

    asyncio.run(main())
    dt = time.time() - t0
    print(f"judge: done in {dt:.0f} s -> {out}")
    return dt


def _ok(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except json.JSONDecodeError:
        return False


def strip_texts(src: Path, dst: Path) -> None:
    from optscale.pool import load_pool, problem_to_dict

    rows = []
    for p in load_pool(src).problems:
        d = problem_to_dict(p)
        for s in d["samples"]:
            s.pop("text", None)
        rows.append(d)
    write_jsonl(dst, rows)


def sanity(path: Path) -> dict:
    """Single-sample accuracy, majority@K, BoN@K, oracle@K and the solve-rate distribution of a pool."""
    import numpy as np

    from optscale.policies import Observation, make_policy
    from optscale.pool import load_pool, to_arrays

    arr = to_arrays(load_pool(path), equiv="number")
    c = arr.correct
    rate = c.mean(axis=1)
    sc, bon = make_policy("sc"), make_policy("bon")
    maj = best = 0
    for i in range(len(arr.ids)):
        n = arr.n[i]
        obs = Observation(answers=arr.answers[i, :n], scores=arr.scores[i, :n], tokens=arr.tokens[i, :n])
        maj += bool(c[i, sc.select(obs)])
        best += bool(c[i, bon.select(obs)])
    P = len(arr.ids)
    return {
        "problems": P,
        "samples": int(arr.n.sum()),
        "single_sample_acc": float(c.mean()),
        "majority_acc": maj / P,
        "bon_acc": best / P,
        "oracle_acc": float(c.any(axis=1).mean()),
        "frac_solve_rate_in_0.2_0.8": float(np.mean((rate >= 0.2) & (rate <= 0.8))),
        "mean_tokens": float(arr.tokens.sum() / arr.n.sum()),
        "mean_score": float(np.nanmean(arr.scores)),
    }


def _versions(paths: list[Path]) -> dict[str, list[dict]]:
    from optscale.pool import problem_to_dict

    out: dict[str, list[dict]] = {}
    for src in paths:
        for p in _read_finished(src):
            out.setdefault(p.id, []).append(problem_to_dict(p))
    return out


def _key(d: dict) -> list:
    return [(s.get("text"), s.get("answer"), s.get("tokens"), s.get("correct")) for s in d["samples"]]


def merge_parts(work: Path) -> tuple[list[dict], list[dict], dict]:
    """The self-certainty and judge pools, in the order of problems.jsonl, from the workers' files.

    A problem that two generation workers both finished is NOT always identical in both: LlamaCppGenerator's
    logits depend slightly on what else is in the decode batch, so scores differ in the 3rd decimal and
    now and then a sampled token (hence the text) differs. For each problem the judged version is kept
    (the judge record carries the texts it judged) together with the generated version whose texts,
    answers, token counts and correctness flags equal it, so both pools hold exactly the same samples."""
    gen = _versions([work / f"selfcert_texts{x}.jsonl" for x in ("", "_b")])
    jud = _versions([work / f"judge_texts{x}.jsonl" for x in ("", "_b")])
    order = [json.loads(ln)["id"] for ln in (work / "problems.jsonl").read_text().splitlines()]
    sc, jd = [], []
    stats = {"generated_twice": 0, "generated_twice_differing": 0}
    for pid in order:
        if pid not in gen or pid not in jud:
            raise SystemExit(f"problem {pid} not generated or not judged yet")
        if len(gen[pid]) > 1:
            stats["generated_twice"] += 1
            stats["generated_twice_differing"] += any(v != gen[pid][0] for v in gen[pid][1:])
        pair = next(((g, j) for j in jud[pid] for g in gen[pid] if _key(g) == _key(j)), None)
        if pair is None:
            raise SystemExit(f"problem {pid}: no generated version matches the judged one")
        sc.append(pair[0])
        jd.append(pair[1])
    return sc, jd, stats


def _check_seeds(work: Path) -> None:
    """Every generation file was drawn at the final run seed ``SEED`` with the documented settings (the
    checkpoint header records the run's configuration): the pool's samples are fresh, not the pilot's."""
    for x in ("", "_b"):
        ck = work / f"selfcert_texts{x}.jsonl.samples.jsonl"
        if not ck.exists():
            continue
        cfg = json.loads(ck.open(encoding="utf-8").readline())["config"]
        want = {"seed": SEED, "n_max": K, "temperature": TEMPERATURE, "top_p": TOP_P, "max_tokens": MAX_TOKENS,
                "prompt_template": PROMPT_TEMPLATE}
        bad = {k: cfg.get(k) for k, v in want.items() if cfg.get(k) != v}
        if bad:
            raise SystemExit(f"{ck}: generated with {bad}, not the final settings")


def breakdown(path: Path, selection: dict) -> dict:
    """Fraction of problems with a solve rate (over the pool's fresh samples) in [0.2, 0.8], per selection
    group: v1 problems, new candidates by pilot count (of ``PILOT_K``)."""
    import numpy as np

    from optscale.pool import load_pool, to_arrays

    arr = to_arrays(load_pool(path), equiv="number")
    rate = dict(zip(arr.ids, arr.correct.mean(axis=1), strict=True))
    out = {}
    groups = [("v1", "v1", None)] + [(f"new_pilot_{c}", "new", c) for c in range(NEW_BAND[0], NEW_BAND[1] + 1)]
    for name, src, c in groups:
        r = np.array([rate[e["id"]] for e in selection["pilot"]
                      if e["selected"] and e["source"] == src and (c is None or e["correct"] == c)])
        out[name] = {"problems": int(r.size),
                     "frac_in_0.2_0.8": float(np.mean((r >= 0.2) & (r <= 0.8))) if r.size else None}
    return out


def stage_finalize(work: Path) -> None:
    _check_seeds(work)
    sel = json.loads((work / "selection.json").read_text(encoding="utf-8"))
    if not sel["complete"]:
        raise SystemExit("the selection is not complete (pilot still running)")
    sc, jd, stats = merge_parts(work)
    want = sorted(e["id"] for e in sel["pilot"] if e["selected"])
    if sorted(d["id"] for d in sc) != want:
        raise SystemExit("the generated problems are not the selection's")
    order = list(range(len(sc)))  # one seeded order mixing v1 and new problems
    random.Random(SHUFFLE_SEED).shuffle(order)
    sc, jd = [sc[i] for i in order], [jd[i] for i in order]
    print(json.dumps(stats))
    write_jsonl(work / "selfcert_merged.jsonl", sc)
    write_jsonl(work / "judge_merged.jsonl", jd)
    strip_texts(work / "selfcert_merged.jsonl", HERE / "selfcert.jsonl")
    strip_texts(work / "judge_merged.jsonl", HERE / "judge.jsonl")
    (HERE / "selection.json").write_text(json.dumps(sel, indent=0) + "\n", encoding="utf-8")
    for name in ("selfcert.jsonl", "judge.jsonl"):
        print(name, json.dumps(sanity(HERE / name)))
    print("breakdown", json.dumps(breakdown(HERE / "selfcert.jsonl", sel)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("measure", "candidates", "pilot", "select", "generate", "judge", "finalize",
                                      "all"))
    ap.add_argument("--work", default="/work/scratch/pool9", help="scratch directory for texts and checkpoints")
    ap.add_argument("--v1-pool", default=None,
                    help="the v1 pool (its samples are the v1 problems' pilot; default <work>/v1_selfcert.jsonl, "
                         "see README for how to get it from git)")
    ap.add_argument("--concurrency", type=int, default=8, help="problems in flight during generation")
    ap.add_argument("--reverse", action="store_true",
                    help="generate/judge: a second worker taking the problems from the end (to use 2 cores)")
    ap.add_argument("--follow", action="store_true",
                    help="judge: follow a generation still running until all problems are judged")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    v1_pool = Path(a.v1_pool) if a.v1_pool else work / "v1_selfcert.jsonl"
    if a.stage == "measure":
        stage_measure(work)
        return 0
    if a.stage in ("candidates", "all"):
        stage_candidates(work)
    if a.stage in ("pilot", "all"):
        stage_pilot(work, v1_pool, concurrency=a.concurrency)
    if a.stage == "select":
        sel = select(work, v1_pool)
        print(json.dumps({k: v for k, v in sel.items() if k != "pilot"}))
    if a.stage in ("generate", "all"):
        outs = (work / "selfcert_texts.jsonl", work / "selfcert_texts_b.jsonl")
        if a.reverse:  # a second worker from the other end of the selection; finalize merges the files
            outs = outs[::-1]
        dt = run_worker(work / "problems.jsonl", outs[0], seed=SEED, k=K, concurrency=a.concurrency,
                        reverse=a.reverse, others=outs[1:], follow=lambda: not _selection_done(work))
        print(f"generate: worker done in {dt:.0f} s")
    if a.stage in ("judge", "all"):
        srcs = [work / "selfcert_texts.jsonl", work / "selfcert_texts_b.jsonl"]
        outs = (work / "judge_texts.jsonl", work / "judge_texts_b.jsonl")
        if a.reverse:
            outs = outs[::-1]
        stage_judge(work, [p for p in srcs if p.exists() or a.follow], outs[0], follow=a.follow, reverse=a.reverse,
                    others=outs[1:])
    if a.stage in ("finalize", "all"):
        stage_finalize(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
