"""The paper's predictor architecture (OptScale, Wang et al. 2025), for users with a GPU.

A transformers causal-LM backbone (the paper: Qwen2.5-1.5B) reads the problem; its last hidden states are
pooled by a learned attention query; two MLP heads predict the mean (sigmoid) and the std (softplus) of the
problem's verifier scores. Only the last ``trainable_layers`` transformer blocks (+ final norm), the pooling
and the heads are trained (MSE on the label moments).

Same interface as :class:`optscale.predictor.Predictor` for prediction (``predict_moments``, ``predict``,
``priors_for``), with the uncertainty (sd_mu, sd_sigma) estimated from a held-out split of the training set.

Note (docs/PREDICTOR.md): the paper's published MATH-500 predictions from this architecture carry almost no
signal (Spearman 0.06 for the mean); the CPU default of optscale is the embedding + ridge predictor.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from optscale.errors import OptScaleError, ParameterError


def _torch():
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise OptScaleError("the paper architecture needs torch + transformers (pip install 'optscale[transformers]')") from exc
    return torch


def build_model(backbone, *, head_hidden: int = 256, trainable_layers: int = 2, dropout: float = 0.1):
    """``backbone``: a model name/path (``AutoModel.from_pretrained``), a transformers config (randomly
    initialised, e.g. for tests) or a ready ``PreTrainedModel``. Returns a ``torch.nn.Module`` whose
    ``forward(input_ids, attention_mask)`` gives (mean, std) tensors of shape [B]."""
    torch = _torch()
    from torch import nn
    from transformers import AutoModel, PretrainedConfig, PreTrainedModel

    if isinstance(backbone, PreTrainedModel):
        base = backbone
    elif isinstance(backbone, PretrainedConfig):
        base = AutoModel.from_config(backbone)
    else:
        base = AutoModel.from_pretrained(backbone)
    hidden = base.config.hidden_size

    class AttentionPool(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.query = nn.Parameter(torch.randn(d) / math.sqrt(d))
            self.key = nn.Linear(d, d)

        def forward(self, h, mask):
            logits = (self.key(h) @ self.query) / math.sqrt(h.shape[-1])
            logits = logits.masked_fill(mask == 0, torch.finfo(logits.dtype).min)
            w = torch.softmax(logits, dim=-1)
            return (w.unsqueeze(-1) * h).sum(1)

    def head():
        return nn.Sequential(nn.Linear(hidden, head_hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(head_hidden, 1))

    class PaperPredictorModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = base
            self.pool = AttentionPool(hidden)
            self.mu_head = head()
            self.sigma_head = head()

        def forward(self, input_ids, attention_mask):
            out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
            h = out.last_hidden_state.float()
            z = self.pool(h, attention_mask)
            mean = torch.sigmoid(self.mu_head(z).squeeze(-1))
            std = nn.functional.softplus(self.sigma_head(z).squeeze(-1)) + 1e-4
            return mean, std

    model = PaperPredictorModel()
    _freeze(model.backbone, trainable_layers)
    return model


def _freeze(base, trainable_layers: int) -> None:
    for p in base.parameters():
        p.requires_grad_(False)
    layers = None
    for attr in ("layers", "h", "layer", "blocks"):
        obj = base
        for part in ("model", "encoder", "transformer", None):
            cand = getattr(obj, part, obj) if part else obj
            if hasattr(cand, attr):
                layers = getattr(cand, attr)
                break
        if layers is not None:
            break
    if layers is not None and trainable_layers > 0:
        for layer in list(layers)[-trainable_layers:]:
            for p in layer.parameters():
                p.requires_grad_(True)
    for name in ("norm", "ln_f", "final_layer_norm"):
        mod = getattr(base, name, None)
        if mod is not None and trainable_layers > 0:
            for p in mod.parameters():
                p.requires_grad_(True)


class PaperPredictor:
    """Fit / predict wrapper around :func:`build_model` (tokenizer + training loop)."""

    def __init__(self, backbone="Qwen/Qwen2.5-1.5B", tokenizer=None, *, head_hidden: int = 256,
                 trainable_layers: int = 2, max_length: int = 512, device: str | None = None):
        self.backbone, self.tokenizer_spec = backbone, tokenizer
        self.head_hidden, self.trainable_layers, self.max_length = head_hidden, trainable_layers, max_length
        self.device = device
        self.model = None
        self.sd_ = (0.1, 0.1)
        self.history: list[dict] = []

    def _setup(self):
        torch = _torch()
        from transformers import AutoTokenizer

        if self.device is None:
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.model is None:
            self.model = build_model(self.backbone, head_hidden=self.head_hidden,
                                     trainable_layers=self.trainable_layers).to(self.device)
        if self.tokenizer_spec is None or isinstance(self.tokenizer_spec, str):
            self.tok = AutoTokenizer.from_pretrained(self.tokenizer_spec or self.backbone)
        else:
            self.tok = self.tokenizer_spec
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        return torch

    def _batch(self, texts):
        enc = self.tok(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    def fit(self, texts: Sequence[str], means, stds, *, epochs: int = 3, lr: float = 2e-5, head_lr: float = 1e-3,
            batch_size: int = 8, val_frac: float = 0.1, seed: int = 0, log=None) -> PaperPredictor:
        torch = self._setup()
        torch.manual_seed(seed)
        texts = list(texts)
        y = np.stack([np.asarray(means, float), np.asarray(stds, float)], 1)
        if len(texts) != len(y):
            raise ParameterError("labels", f"{len(texts)} texts but {len(y)} labels")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(texts))
        n_val = int(round(val_frac * len(texts))) if len(texts) >= 10 else 0
        val, tr = order[:n_val], order[n_val:]
        backbone_params = [p for p in self.model.backbone.parameters() if p.requires_grad]
        head_params = [p for n, p in self.model.named_parameters() if not n.startswith("backbone.")]
        groups = [{"params": head_params, "lr": head_lr}]
        if backbone_params:
            groups.append({"params": backbone_params, "lr": lr})
        opt = torch.optim.AdamW(groups, weight_decay=0.01)
        yt = torch.tensor(y, dtype=torch.float32, device=self.device)
        for ep in range(epochs):
            self.model.train()
            perm = rng.permutation(tr)
            total = 0.0
            for s in range(0, len(perm), batch_size):
                idx = perm[s:s + batch_size]
                ids, mask = self._batch([texts[i] for i in idx])
                mean, std = self.model(ids, mask)
                loss = ((mean - yt[idx, 0]) ** 2).mean() + ((std - yt[idx, 1]) ** 2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            rec = {"epoch": ep + 1, "train_loss": total / max(len(tr), 1)}
            self.history.append(rec)
            if log:
                log(rec)
        if n_val:
            self._fit_uncertainty([texts[i] for i in val], y[val])
        return self

    def _fit_uncertainty(self, texts, y):
        from optscale.theory import moments_to_params

        pm = self.predict_moments(texts)
        mu_p, s_p = moments_to_params(pm[:, 0], pm[:, 1])
        mu_t, s_t = moments_to_params(y[:, 0], y[:, 1])
        self.sd_ = (max(float(np.sqrt(np.mean((mu_t - mu_p) ** 2))), 1e-3),
                    max(float(np.sqrt(np.mean((s_t - s_p) ** 2))), 1e-3))

    def predict_moments(self, texts: Sequence[str], *, batch_size: int = 16) -> np.ndarray:
        torch = self._setup()
        self.model.eval()
        out = []
        with torch.inference_mode():
            for s in range(0, len(texts), batch_size):
                ids, mask = self._batch(texts[s:s + batch_size])
                mean, std = self.model(ids, mask)
                out.append(torch.stack([mean, std], 1).float().cpu().numpy())
        pm = np.concatenate(out, 0) if out else np.zeros((0, 2))
        pm[:, 0] = np.clip(pm[:, 0], 1e-3, 1 - 1e-3)
        pm[:, 1] = np.clip(pm[:, 1], 1e-3, np.sqrt(pm[:, 0] * (1 - pm[:, 0])))
        return pm.astype(np.float64)

    def predict(self, texts: Sequence[str]):
        from optscale.predictor.base import Priors
        from optscale.theory import moments_to_params

        pm = self.predict_moments(list(texts))
        mu0, s0 = moments_to_params(pm[:, 0], pm[:, 1])
        n = len(pm)
        return Priors(np.asarray(mu0, float), np.asarray(s0, float), np.full(n, self.sd_[0]),
                      np.full(n, self.sd_[1]), pm[:, 0], pm[:, 1])

    def priors_for(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict(texts).as_array()

    def save(self, directory: str | Path) -> Path:
        """Trainable weights only (pooling, heads, unfrozen layers) + a JSON config; the frozen backbone
        is reloaded from its name."""
        torch = _torch()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.model.state_dict().items()
                 if not k.startswith("backbone.") or dict(self.model.named_parameters()).get(k) is not None
                 and dict(self.model.named_parameters())[k].requires_grad}
        torch.save(state, d / "trainable.pt")
        if not isinstance(self.backbone, str):
            raise ParameterError("backbone", "save() needs a backbone given by name/path")
        (d / "config.json").write_text(json.dumps({
            "backbone": self.backbone, "head_hidden": self.head_hidden, "trainable_layers": self.trainable_layers,
            "max_length": self.max_length, "sd": list(self.sd_)}, indent=1))
        return d

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> PaperPredictor:
        torch = _torch()
        d = Path(directory)
        from optscale.jsonio import read_json

        cfg = read_json(d / "config.json")
        obj = cls(cfg["backbone"], head_hidden=cfg["head_hidden"], trainable_layers=cfg["trainable_layers"],
                  max_length=cfg["max_length"], device=device)
        obj._setup()
        # weights_only: tensors and plain containers only; a pickled object in the file is refused, not run
        state = torch.load(d / "trainable.pt", map_location=obj.device, weights_only=True)
        obj.model.load_state_dict(state, strict=False)
        obj.sd_ = tuple(cfg["sd"])
        return obj
