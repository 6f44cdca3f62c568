"""The prior predictor of OptScale^t: problem text -> prior (mu0, sigma0) of its score distribution, with an
uncertainty for each (used as the MAP prior's standard deviations).

Model (see docs/PREDICTOR.md):

* Targets: the label moments (mean, std) of the problem's verifier scores.
* Blocks: ``emb`` (ridge on a language-model embedding; by default all-MiniLM-L6-v2's 6 layers, mean-pooled
  and concatenated), ``knn`` (similarity-weighted nearest neighbours in the last layer's sentence
  embedding), ``krr`` (RBF kernel ridge on the ``knn`` block's stored vectors), ``tfidf`` (ridge on word +
  bigram TF-IDF), ``tknn`` (nearest neighbours in TF-IDF), ``surface`` (ridge on a few hand-made text
  features); penalties chosen by leave-one-out CV on the training set. A non-negative linear stacker
  combines the blocks' leave-one-out predictions.
* Conversion: predicted (mean, std) -> truncated-normal (mu0, sigma0) by moment matching
  (:func:`optscale.theory.moments_to_params`).
* Uncertainty: the leave-one-out predictions are converted the same way and compared with the
  moment-matched labels; the residual scale of mu and sigma is modelled as a function of the predicted
  mean (quantile bins, robust scale, interpolated) -> heteroscedastic (sd_mu, sd_sigma) per problem; one
  factor on both is then calibrated by simulating MAP warm-ups on the training problems
  (:func:`calibrate_spread`, error of N*).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from optscale.errors import InputError, ParameterError

FORMAT_VERSION = 1
BLOCKS = ("emb", "knn", "krr", "tfidf", "tknn", "surface")
DEFAULT_BLOCKS = BLOCKS
#: blocks that need the language-model embedding; ``krr`` also needs ``knn`` (it uses its stored vectors)
LM_BLOCKS = ("emb", "knn", "krr")
STD_MIN = 1e-3  # predicted std is kept >= this (a truncated normal needs some spread)


@dataclass
class Priors:
    """Per-problem priors; every field is float64 [P]."""

    mu0: np.ndarray
    sigma0: np.ndarray
    sd_mu: np.ndarray
    sd_sigma: np.ndarray
    mean: np.ndarray  # predicted mean of the scores
    std: np.ndarray  # predicted std of the scores

    def as_array(self) -> np.ndarray:
        """float64 [P, 4]: (mu0, sigma0, sd_mu, sd_sigma), the layout of ``ReplayBatch.priors``."""
        return np.stack([self.mu0, self.sigma0, self.sd_mu, self.sd_sigma], 1).astype(np.float64)

    def to_records(self) -> list[dict]:
        return [
            {"mu0": float(a), "sigma0": float(b), "sd_mu": float(c), "sd_sigma": float(d),
             "mean": float(e), "std": float(f)}
            for a, b, c, d, e, f in zip(self.mu0, self.sigma0, self.sd_mu, self.sd_sigma, self.mean, self.std,
                                        strict=True)
        ]


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.all(a == a[0]) or np.all(b == b[0]):
        return float("nan")
    return float(spearmanr(a, b)[0])


def metrics(pred_mean, pred_std, true_mean, true_std, const_mean: float, const_std: float) -> dict:
    """Errors of predicted label moments vs the labels, beside a constant predictor.

    ``mu`` refers to the score mean (the labels' first column), ``sigma`` to the score std, as in the
    paper's label files."""
    pm, ps, tm, ts = (np.asarray(x, float) for x in (pred_mean, pred_std, true_mean, true_std))
    out = {"n": int(len(tm))}
    for key, p, t, c in (("mu", pm, tm, const_mean), ("sigma", ps, ts, const_std)):
        mse = float(np.mean((p - t) ** 2))
        mse_c = float(np.mean((c - t) ** 2))
        out[f"mse_{key}"] = mse
        out[f"mse_{key}_const"] = mse_c
        out[f"mse_{key}_reduction"] = 1.0 - mse / mse_c if mse_c > 0 else float("nan")
        out[f"spearman_{key}"] = spearman(p, t)
        out[f"pearson_{key}"] = float(np.corrcoef(p, t)[0, 1]) if np.std(p) > 0 and np.std(t) > 0 else float("nan")
    return out


def _check_labels(texts, means, stds):
    texts = list(texts)
    means = np.asarray(means, float).reshape(-1)
    stds = np.asarray(stds, float).reshape(-1)
    if not (len(texts) == len(means) == len(stds)):
        raise ParameterError("labels", f"{len(texts)} texts but {len(means)} means and {len(stds)} stds")
    if len(texts) < 10:
        raise ParameterError("texts", f"need at least 10 labelled problems to fit, got {len(texts)}")
    if not (np.all(np.isfinite(means)) and np.all((means >= 0) & (means <= 1))):
        raise ParameterError("means", "label means must be finite and in [0, 1]")
    if not (np.all(np.isfinite(stds)) and np.all(stds >= 0)):
        raise ParameterError("stds", "label stds must be finite and >= 0")
    return texts, means, stds


class _ScaleModel:
    """Residual scale as a piecewise-linear function of a covariate: quantile bins, robust scale
    (1.4826 x median absolute deviation) per bin, interpolated between bin medians, times ``factor``."""

    def __init__(self, bins: int = 8, floor: float = 1e-3):
        self.bins, self.floor = bins, floor
        self.factor = 1.0

    def fit(self, x, resid) -> _ScaleModel:
        x, r = np.asarray(x, float), np.asarray(resid, float)
        edges = np.quantile(x, np.linspace(0, 1, self.bins + 1))
        idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, self.bins - 1)
        xs, ss = [], []
        for b in range(self.bins):
            m = idx == b
            if m.sum() < 5:
                continue
            xs.append(np.median(x[m]))
            ss.append(1.4826 * np.median(np.abs(r[m] - np.median(r[m]))))
        if not xs:
            xs, ss = [0.0], [1.4826 * np.median(np.abs(r - np.median(r)))]
        self.x_ = np.array(xs)
        self.s_ = np.maximum(np.array(ss), self.floor)
        return self

    def __call__(self, x) -> np.ndarray:
        return self.factor * np.interp(np.asarray(x, float), self.x_, self.s_)


#: the N* setting the prior spread is calibrated for (the paper's MATH setting)
CALIBRATION = {"target": 0.95, "alpha": 0.05, "n_max": 64, "k": (3, 5, 10), "factors":
               (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0), "problems": 1500, "seeds": 3}


def calibrate_spread(pred_moments, true_moments, sd_mu, sd_sigma, *, seed: int = 0, **kw) -> dict:
    """Choose one factor for the prior spreads (sd_mu, sd_sigma) by simulation on labelled (training)
    problems: truth = moment-matched labels, prior = moment-matched (held-out) predictions; k warm-up scores
    from the truth, MAP fit, error of N* vs the truth's N*. Returns {"factor", "table"}."""
    from optscale import theory

    cfg = dict(CALIBRATION, **kw)
    pm, tm = np.asarray(pred_moments, float), np.asarray(true_moments, float)
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(pm))[: cfg["problems"]]
    mu_t, s_t = theory.moments_to_params(tm[idx, 0], tm[idx, 1])
    mu_p, s_p = theory.moments_to_params(pm[idx, 0], pm[idx, 1])
    R = cfg["seeds"]
    n_true = np.repeat(theory.n_star(mu_t, s_t, cfg["target"], cfg["alpha"], cfg["n_max"]).n, R)
    rows = {}
    samples = {k: theory.sample(np.repeat(mu_t, R)[:, None], np.repeat(s_t, R)[:, None], (len(idx) * R, k), rng)
               for k in cfg["k"]}
    for f in cfg["factors"]:
        errs = []
        for k in cfg["k"]:
            fit = theory.fit_map(samples[k], mu0=np.repeat(mu_p, R), sigma0=np.repeat(s_p, R),
                                 sd_mu=f * np.repeat(np.asarray(sd_mu, float)[idx], R),
                                 sd_sigma=f * np.repeat(np.asarray(sd_sigma, float)[idx], R))
            n_hat = theory.n_star(fit.mu, fit.sigma, cfg["target"], cfg["alpha"], cfg["n_max"]).n
            errs.append(float(np.mean(np.abs(n_hat - n_true))))
        rows[f] = errs
    best = min(rows, key=lambda f: np.mean(rows[f]))
    return {"factor": float(best), "table": {str(f): v for f, v in rows.items()}, "k": list(cfg["k"])}


class Predictor:
    """Text -> prior (mu0, sigma0, sd_mu, sd_sigma) for OptScale^t.

    Parameters
    ----------
    embedder: ``"minilm-layers"`` (default), ``"minilm"``, ``"smollm2"`` or ``None`` (no language-model blocks).
    blocks: which feature blocks to use (subset of :data:`BLOCKS`; ``krr`` needs ``knn``).
    cache: cache LM embeddings on disk (True: ``~/.cache/optscale``; a path; False).
    prior_samples: the most observations a prior may be worth (default 5): each prior sd is raised to at
        least 1 / sqrt(prior_samples * I), I the per-sample Fisher information of the truncated normal at
        (mu0, sigma0) (``theory.fisher_information``). Without it a prior on the family's boundary
        (mu0 = 100, where the parametrisation is flat) would pin mu however far the scores are; None: no cap.

    Penalties, stacker and residual model are fitted on exact leave-one-out predictions of the training set.
    """

    def __init__(self, embedder: str | dict | None = "minilm-layers", blocks: Sequence[str] = BLOCKS, *,
                 cache: bool | str = True, calibrate: bool = True, prior_samples: float | None = 5.0):
        if prior_samples is not None and not (np.isfinite(prior_samples) and prior_samples > 0):
            raise ParameterError("prior_samples", f"must be a positive number or None, got {prior_samples!r}")
        self.prior_samples = prior_samples
        blocks = tuple(blocks)
        for b in blocks:
            if b not in BLOCKS:
                raise ParameterError("blocks", f"unknown block {b!r} (choose from {', '.join(BLOCKS)})")
        if embedder is None:
            blocks = tuple(b for b in blocks if b not in LM_BLOCKS)
        if "krr" in blocks and "knn" not in blocks:
            raise ParameterError("blocks", "block 'krr' needs block 'knn' (it uses the kNN's stored vectors)")
        if not blocks:
            raise ParameterError("blocks", "no feature block left")
        self.blocks = blocks
        self.embedder_config = ({"kind": embedder} if isinstance(embedder, str) else embedder) if embedder else None
        self.cache = cache
        self.calibrate = calibrate
        self.calibration_: dict | None = None
        self._embedder = None
        self.info: dict = {}
        self.fitted = False

    # ------------------------------------------------------------------ features
    @property
    def embedder(self):
        if self._embedder is None and self.embedder_config is not None:
            from optscale.predictor.embedders import make_embedder

            self._embedder = make_embedder(self.embedder_config)
        return self._embedder

    def _embed(self, texts, embeddings=None, progress=False):
        if embeddings is not None:
            emb = np.asarray(embeddings, np.float64)
            if emb.shape[0] != len(texts):
                raise ParameterError("embeddings", f"{emb.shape[0]} rows for {len(texts)} texts")
            return emb
        from optscale.predictor.embedders import embed_cached

        return np.asarray(embed_cached(self.embedder, texts, cache=self.cache, progress=progress), np.float64)

    def _features(self, texts, embeddings=None, progress=False) -> dict:
        from optscale.predictor.features import surface_features

        feats = {}
        if any(b in self.blocks for b in LM_BLOCKS):
            feats["emb"] = self._embed(texts, embeddings, progress)
            # with several hidden layers concatenated, the neighbour blocks use the last layer's part
            n_layers = len((self.embedder_config or {}).get("layers", ())) or (
                6 if (self.embedder_config or {}).get("kind") == "minilm-layers" else 1)
            width = feats["emb"].shape[1] // n_layers
            feats["knn"] = feats["emb"][:, feats["emb"].shape[1] - width:]
        if "tfidf" in self.blocks or "tknn" in self.blocks:
            feats["tfidf"] = feats["tknn"] = self.tfidf_.transform(texts)
        if "surface" in self.blocks:
            feats["surface"] = surface_features(texts)
        return feats

    # ------------------------------------------------------------------ fit / predict
    def fit(self, texts: Sequence[str], means, stds, *, embeddings=None, progress: bool = False) -> Predictor:
        """Fit on labelled problems: ``means``/``stds`` are the mean and std of each problem's verifier
        scores (moments of raw scores). ``embeddings`` may pass precomputed LM embeddings of ``texts``."""
        from scipy.optimize import nnls

        from optscale.predictor.features import KernelRidge, Knn, Ridge, SparseKnn, Tfidf

        texts, means, stds = _check_labels(texts, means, stds)
        Y = np.stack([means, stds], 1)
        if "tfidf" in self.blocks or "tknn" in self.blocks:
            self.tfidf_ = Tfidf(min_df=3 if len(texts) >= 200 else 1).fit(texts)
        feats = self._features(texts, embeddings, progress)
        self.ridges_ = {}
        oof = {}
        for name in self.blocks:
            if name == "krr":
                continue
            r = {"knn": Knn, "tknn": SparseKnn}.get(name, Ridge)().fit(feats[name], Y)
            self.ridges_[name] = r
            oof[name] = r.oof_
        if "krr" in self.blocks:
            self.ridges_["krr"] = KernelRidge().fit(self.ridges_["knn"].train_vectors(), Y)
            oof["krr"] = self.ridges_["krr"].oof_
        # stacker: per target, non-negative least squares on the blocks' out-of-fold predictions (+ intercept)
        self.stack_ = np.zeros((len(self.blocks) + 1, 2))
        for j in range(2):
            Z = np.column_stack([oof[b][:, j] for b in self.blocks])
            zm, ym = Z.mean(0), Y[:, j].mean()
            w = nnls(Z - zm, Y[:, j] - ym)[0]
            self.stack_[:, j] = np.r_[ym - zm @ w, w]
        # stacked leave-one-out predictions (the stacker has <= 4 parameters per target: negligible overfit)
        pred = self._combine(oof)
        self.loo_ = pred  # diagnostics (not saved)
        self.const_ = Y.mean(0)
        self._fit_uncertainty(pred, Y)
        self.info = {
            "n_train": len(texts),
            "blocks": list(self.blocks),
            "embedder": self.embedder_config,
            "alphas": {b: self.ridges_[b].alpha_.tolist() for b in self.blocks if b not in ("knn", "tknn")},
            "stack": self.stack_.tolist(),
            "spread_calibration": self.calibration_,
            "cv": metrics(pred[:, 0], pred[:, 1], means, stds, *self.const_),
            "cv_blocks": {b: metrics(oof[b][:, 0], oof[b][:, 1], means, stds, *self.const_) for b in self.blocks},
        }
        self.fitted = True
        return self

    def _combine(self, block_preds: dict) -> np.ndarray:
        n = len(next(iter(block_preds.values())))
        out = np.zeros((n, 2))
        for j in range(2):
            Z = np.column_stack([np.ones(n)] + [block_preds[b][:, j] for b in self.blocks])
            out[:, j] = Z @ self.stack_[:, j]
        out[:, 0] = np.clip(out[:, 0], 1e-3, 1 - 1e-3)
        # the std of a [0, 1] variable with mean m is at most sqrt(m (1 - m))
        out[:, 1] = np.clip(out[:, 1], STD_MIN, np.sqrt(out[:, 0] * (1 - out[:, 0])))
        return out

    def _fit_uncertainty(self, pred, Y):
        from optscale.theory import moments_to_params

        mu_p, sg_p = moments_to_params(pred[:, 0], pred[:, 1])
        mu_t, sg_t = moments_to_params(Y[:, 0], np.maximum(Y[:, 1], 0.0))
        self.sd_mu_ = _ScaleModel().fit(pred[:, 0], mu_t - mu_p)
        self.sd_sigma_ = _ScaleModel().fit(pred[:, 0], sg_t - sg_p)
        if self.calibrate:
            cal = calibrate_spread(pred, Y, self.sd_mu_(pred[:, 0]), self.sd_sigma_(pred[:, 0]))
            self.sd_mu_.factor = self.sd_sigma_.factor = cal["factor"]
            self.calibration_ = cal

    def predict_moments(self, texts: Sequence[str], *, embeddings=None, progress: bool = False) -> np.ndarray:
        """float64 [P, 2]: predicted (mean, std) of each problem's verifier scores."""
        self._require_fitted()
        texts = list(texts)
        if not texts:
            return np.zeros((0, 2))
        feats = self._features(texts, embeddings, progress)
        preds = {}
        for b in self.blocks:
            if b == "krr":
                knn = self.ridges_["knn"]
                preds[b] = self.ridges_[b].predict(knn.reduce(feats["knn"]), knn.train_vectors())
            else:
                preds[b] = self.ridges_[b].predict(feats[b])
        return self._combine(preds)

    def predict(self, texts: Sequence[str], *, embeddings=None, progress: bool = False) -> Priors:
        from optscale.theory import moments_to_params

        pm = self.predict_moments(texts, embeddings=embeddings, progress=progress)
        if len(pm) == 0:
            z = np.zeros(0)
            return Priors(z, z, z, z, z, z)
        mu0, sigma0 = moments_to_params(pm[:, 0], pm[:, 1])
        mu0, sigma0 = np.asarray(mu0, float), np.asarray(sigma0, float)
        sd_mu, sd_sigma = np.asarray(self.sd_mu_(pm[:, 0]), float), np.asarray(self.sd_sigma_(pm[:, 0]), float)
        if getattr(self, "prior_samples", None) is not None:
            from optscale.theory import fisher_information

            i_mu, i_sigma = fisher_information(mu0, sigma0)
            k0 = float(self.prior_samples)
            sd_mu = np.maximum(sd_mu, 1.0 / np.sqrt(k0 * np.maximum(i_mu, 1e-300)))
            sd_sigma = np.maximum(sd_sigma, 1.0 / np.sqrt(k0 * np.maximum(i_sigma, 1e-300)))
        return Priors(mu0, sigma0, sd_mu, sd_sigma, pm[:, 0], pm[:, 1])

    def priors_for(self, texts: Sequence[str], **kw) -> np.ndarray:
        """float64 [P, 4]: (mu0, sigma0, sd_mu, sd_sigma) per text, for ``ReplayBatch.priors`` / the
        ``optscalet`` policy."""
        return self.predict(texts, **kw).as_array()

    def evaluate(self, texts, means, stds, *, embeddings=None, progress: bool = False) -> dict:
        """Metrics on labelled problems vs the constant predictor (the training-label mean)."""
        self._require_fitted()
        texts, means, stds = list(texts), np.asarray(means, float), np.asarray(stds, float)
        pm = self.predict_moments(texts, embeddings=embeddings, progress=progress)
        return metrics(pm[:, 0], pm[:, 1], means, stds, *self.const_)

    def _require_fitted(self):
        if not self.fitted:
            raise ParameterError("predictor", "not fitted: call fit() or Predictor.load()")

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write a single ``.npz`` (no pickle): ridge weights, TF-IDF vocabulary, stacker, residual model."""
        self._require_fitted()
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        meta = {"format": FORMAT_VERSION, "blocks": list(self.blocks), "embedder": self.embedder_config,
                "info": self.info}
        arrays["meta"] = np.array(json.dumps(meta, default=float))
        for b in self.blocks:
            arrays.update(self.ridges_[b].to_arrays(f"ridge_{b}_"))
        if "tfidf" in self.blocks or "tknn" in self.blocks:
            arrays.update(self.tfidf_.to_arrays("tfidf_"))
        arrays["stack"] = self.stack_
        arrays["const"] = self.const_
        for key, sm in (("sd_mu", self.sd_mu_), ("sd_sigma", self.sd_sigma_)):
            arrays[f"{key}_x"] = sm.x_
            arrays[f"{key}_s"] = sm.s_
            arrays[f"{key}_factor"] = np.array(sm.factor)
        from optscale.jsonio import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb", compress=False) as fh:  # a temporary file renamed into place
            np.savez_compressed(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Predictor:
        """Read a predictor file written by :meth:`save` (``.npz``, read without pickle).

        Anything else raises :class:`InputError` naming the file and, where it applies, the array: not an
        ``.npz`` archive, a truncated or corrupt archive, a missing array, an array of the wrong shape or
        with non-finite values, unsupported metadata."""
        path = Path(path)
        arrays = _read_npz(path)
        file = str(path)
        try:
            meta = json.loads(str(arrays["meta"]))
            if not isinstance(meta, dict) or not isinstance(meta.get("blocks"), list):
                raise ValueError("not an object with 'blocks'")
        except (KeyError, ValueError) as exc:
            raise InputError(file, None, "meta", f"missing or invalid predictor metadata ({exc})") from None
        if meta.get("format") != FORMAT_VERSION:
            raise InputError(file, None, "format", f"unsupported predictor format {meta.get('format')!r}")
        blocks = meta["blocks"]
        _check_arrays(file, arrays, blocks)
        try:
            obj = cls(meta.get("embedder"), blocks)
            obj._load_arrays(arrays)
        except KeyError as exc:
            raise InputError(file, None, str(exc.args[0]), "missing array: not a complete predictor file") from None
        except (ValueError, TypeError, IndexError) as exc:
            raise InputError(file, None, None, f"malformed predictor file ({exc})") from None
        obj.info = meta.get("info", {})
        obj.fitted = True
        return obj

    def _load_arrays(self, arrays: dict) -> None:
        from optscale.predictor.features import KernelRidge, Knn, Ridge, SparseKnn, Tfidf

        kinds = {"knn": Knn, "tknn": SparseKnn, "krr": KernelRidge}
        self.ridges_ = {b: kinds.get(b, Ridge).from_arrays(arrays, f"ridge_{b}_") for b in self.blocks}
        if "tfidf" in self.blocks or "tknn" in self.blocks:
            self.tfidf_ = Tfidf.from_arrays(arrays, "tfidf_")
        self.stack_ = arrays["stack"]
        self.const_ = arrays["const"]
        for key in ("sd_mu", "sd_sigma"):
            sm = _ScaleModel()
            sm.x_, sm.s_ = arrays[f"{key}_x"], arrays[f"{key}_s"]
            sm.factor = float(arrays[f"{key}_factor"])
            setattr(self, f"{key}_", sm)


_NPZ_MAGIC = b"PK\x03\x04"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, without pickle; InputError naming the file (and array) otherwise."""
    import zipfile
    import zlib

    file = str(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError:
        raise InputError(file, None, None, "no such file (not found)") from None
    except IsADirectoryError:
        raise InputError(file, None, None, "is a directory, not a predictor file") from None
    except OSError as exc:
        raise InputError(file, None, None, f"cannot read: {exc.strerror or exc}") from None
    if magic != _NPZ_MAGIC:
        raise InputError(file, None, None, "not a predictor file: expected an .npz archive written by "
                                           "'optscale predictor train' (Predictor.save)")
    arrays: dict[str, np.ndarray] = {}
    name = None
    try:
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                arrays[name] = z[name]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        if isinstance(exc, ValueError) and "pickle" in str(exc):
            what = "holds pickled (object) data, which is never loaded"
        else:
            what = "truncated or corrupt .npz archive"
        raise InputError(file, None, name, f"{what}: not a valid predictor file") from None
    return arrays


def _check_arrays(file: str, arrays: dict[str, np.ndarray], blocks: list) -> None:
    """Shapes of the arrays this module owns and finiteness of every numeric array."""
    def need(name: str) -> np.ndarray:
        if name not in arrays:
            raise InputError(file, None, name, "missing array: not a complete predictor file")
        return arrays[name]

    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.all(np.isfinite(a)):
            raise InputError(file, None, name, "non-finite values (nan or inf)")
    shapes = {"stack": (len(blocks) + 1, 2), "const": (2,), "sd_mu_factor": (), "sd_sigma_factor": ()}
    for name, shape in shapes.items():
        a = need(name)
        if a.shape != shape or a.dtype.kind not in "fiu":
            raise InputError(file, None, name, f"wrong shape {a.shape} (expected {shape}, numeric)")
    for key in ("sd_mu", "sd_sigma"):
        x, s = need(f"{key}_x"), need(f"{key}_s")
        if x.ndim != 1 or x.shape != s.shape or x.size == 0:
            raise InputError(file, None, f"{key}_s", f"wrong shape {s.shape} (expected {x.shape}, 1-D like {key}_x)")


DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "default.npz"


def load_default() -> Predictor:
    """The predictor shipped with optscale (trained on the paper's 4501 MATH labels)."""
    if not DEFAULT_WEIGHTS.exists():
        raise InputError(str(DEFAULT_WEIGHTS), None, None,
                         "the shipped predictor weights are missing (reinstall optscale or run "
                         "`optscale predictor train`)")
    return Predictor.load(DEFAULT_WEIGHTS)
