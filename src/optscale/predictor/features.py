"""Non-LM text features and the ridge regression used by every block of the predictor.

* :class:`Tfidf` — word + bigram TF-IDF (sublinear tf, L2-normalised rows), numpy/scipy only, serialisable
  to plain arrays.
* :func:`surface_features` — a few hand-made features of the problem text (``[asy]`` diagram, length, ...).
* :class:`Ridge` — ridge regression (primal for dense features, dual for 10⁴ sparse TF-IDF columns), with the
  penalty chosen per target by exact leave-one-out cross-validation on the training set; returns the
  leave-one-out predictions (for stacking and for the residual model) and primal weights (so that the saved
  model does not contain the training set).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z]+|\d+|\\[a-z]+|[^\sa-z\d]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers, LaTeX commands and single symbols, plus adjacent-pair bigrams."""
    w = _TOKEN.findall(text.lower())
    return w + [a + " " + b for a, b in zip(w, w[1:], strict=False)]


class Tfidf:
    def __init__(self, min_df: int = 3):
        self.min_df = int(min_df)
        self.vocab: dict[str, int] = {}
        self.idf = np.zeros(0)

    def fit(self, texts: Sequence[str]) -> Tfidf:
        df: Counter = Counter()
        for t in texts:
            df.update(set(tokenize(t)))
        words = sorted(w for w, c in df.items() if c >= self.min_df)
        self.vocab = {w: i for i, w in enumerate(words)}
        n = len(texts)
        self.idf = np.log((1 + n) / (1 + np.array([df[w] for w in words], float))) + 1.0
        return self

    def transform(self, texts: Sequence[str]):
        import scipy.sparse as sp

        rows, cols, vals = [], [], []
        for r, t in enumerate(texts):
            c = Counter(w for w in tokenize(t) if w in self.vocab)
            for w, k in c.items():
                j = self.vocab[w]
                rows.append(r)
                cols.append(j)
                vals.append((1.0 + math.log(k)) * self.idf[j])
        X = sp.csr_matrix((vals, (rows, cols)), shape=(len(texts), len(self.vocab)), dtype=np.float64)
        norm = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        norm[norm == 0] = 1.0
        return sp.diags(1.0 / norm) @ X

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        words = sorted(self.vocab, key=self.vocab.get)
        return {f"{prefix}vocab": np.array("\n".join(words)), f"{prefix}idf": self.idf.astype(np.float32),
                f"{prefix}min_df": np.array(self.min_df)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> Tfidf:
        obj = cls(int(arrays[f"{prefix}min_df"]))
        words = str(arrays[f"{prefix}vocab"]).split("\n")
        obj.vocab = {w: i for i, w in enumerate(words)}
        obj.idf = np.asarray(arrays[f"{prefix}idf"], np.float64)
        return obj


SURFACE_NAMES = ("asy", "log_chars", "log_dollars", "n_lines", "has_table", "digits_frac", "has_choices")


def surface_features(texts: Sequence[str]) -> np.ndarray:
    """float64 [n, len(SURFACE_NAMES)] hand-made features (no MATH level/subject metadata)."""
    out = np.zeros((len(texts), len(SURFACE_NAMES)))
    for i, t in enumerate(texts):
        out[i] = (
            float("[asy]" in t),
            math.log1p(len(t)),
            math.log1p(t.count("$")),
            math.log1p(t.count("\n")),
            float("\\begin{tabular}" in t or "\\begin{array}" in t),
            sum(ch.isdigit() for ch in t) / max(len(t), 1),
            float(bool(re.search(r"\(A\)|\\textbf\{\(A\)", t))),
        )
    return out


def _is_sparse(X) -> bool:
    return hasattr(X, "tocsr")


def _gram(A, B):
    G = A @ B.T
    return G.toarray() if hasattr(G, "toarray") else np.asarray(G)


class Ridge:
    """Multi-target ridge regression (with intercept), the penalty chosen per target by exact
    leave-one-out cross-validation (one eigendecomposition serves every penalty and every row).

    ``fit`` stores primal weights ``coef_`` [d, k] and ``intercept_`` [k] and the leave-one-out predictions
    ``oof_`` [n, k]. Dense inputs are standardised (``center``/``scale`` stored); sparse ones are used as is.
    Dense inputs with fewer columns than rows are solved in the primal (d x d), others in the dual (n x n).
    """

    def __init__(self, alphas: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100, 300, 1000),
                 standardize: bool = True):
        self.alphas = tuple(float(a) for a in alphas)
        self.standardize = standardize

    def _prep(self, X):
        if _is_sparse(X) or not self.standardize:
            return X
        return (np.asarray(X, np.float64) - self.center_) / self.scale_

    def fit(self, X, Y) -> Ridge:
        Y = np.asarray(Y, np.float64)
        Y2 = Y[:, None] if Y.ndim == 1 else Y
        n, k = Y2.shape
        if not _is_sparse(X) and self.standardize:
            X = np.asarray(X, np.float64)
            self.center_ = X.mean(0)
            self.scale_ = X.std(0) * math.sqrt(X.shape[1])  # unit total variance: alphas comparable across blocks
            self.scale_[self.scale_ == 0] = 1.0
        Z = self._prep(X)
        m = Y2.mean(0)
        Yc = Y2 - m
        zmean = np.asarray(Z.mean(0)).ravel()
        primal = not _is_sparse(Z) and Z.shape[1] < n
        if primal:  # eigen-decompose Zcᵀ Zc (d x d)
            Zc = np.asarray(Z) - zmean
            s, V = np.linalg.eigh(Zc.T @ Zc)
            B = Zc @ V  # [n, d]: fitted = B diag(1/(s+lam)) Bᵀ Yc
            proj = B.T @ Yc
            lev_base = B**2
        else:  # eigen-decompose the centred kernel (n x n)
            K = _gram(Z, Z)
            r = K.mean(0)
            Kc = K - r[None, :] - r[:, None] + r.mean()
            del K
            s, U = np.linalg.eigh(Kc)
            del Kc
            proj = U.T @ Yc
            lev_base = U**2
        s = np.clip(s, 0, None)
        err = np.zeros((len(self.alphas), k))
        loo = np.zeros((len(self.alphas), n, k))
        for a, lam in enumerate(self.alphas):
            if primal:
                w = 1.0 / (s + lam)
                fitted = B @ (proj * w[:, None])
            else:
                w = s / (s + lam)
                fitted = U @ (proj * w[:, None])
            h = lev_base @ w + 1.0 / n  # leverage (the intercept adds 1/n)
            resid = (Yc - fitted) / np.clip(1.0 - h, 1e-6, None)[:, None]
            loo[a] = Y2 - resid
            err[a] = (resid**2).mean(0)
        best = err.argmin(0)
        self.alpha_ = np.array([self.alphas[b] for b in best])
        self.cv_mse_ = err[best, np.arange(k)]
        self.oof_ = np.stack([loo[best[j], :, j] for j in range(k)], 1)
        if primal:
            coef = np.stack([V @ (proj[:, j] / (s + self.alpha_[j])) for j in range(k)], 1)
        else:
            safe = np.where(s > 1e-10 * max(s.max(), 1e-300), s, np.inf)
            dual = np.stack([U @ (proj[:, j] / (safe + self.alpha_[j])) for j in range(k)], 1)
            coef = np.asarray(Z.T @ dual)  # (Z - 1 zmeanᵀ)ᵀ dual = Zᵀ dual since 1ᵀ dual = 0
        self.coef_ = np.asarray(coef)
        self.intercept_ = m - zmean @ self.coef_
        if Y.ndim == 1:
            self.oof_ = self.oof_[:, 0]
        self._ndim = Y.ndim
        return self

    def predict(self, X) -> np.ndarray:
        Z = self._prep(X)
        P = np.asarray(Z @ self.coef_) + self.intercept_
        return P[:, 0] if self._ndim == 1 else P

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        d = {f"{prefix}coef": self.coef_.astype(np.float32), f"{prefix}intercept": self.intercept_,
             f"{prefix}alpha": self.alpha_, f"{prefix}ndim": np.array(self._ndim)}
        if hasattr(self, "center_"):
            d[f"{prefix}center"] = self.center_.astype(np.float32)
            d[f"{prefix}scale"] = self.scale_.astype(np.float32)
        return d

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> Ridge:
        obj = cls(standardize=f"{prefix}center" in arrays)
        obj.coef_ = np.asarray(arrays[f"{prefix}coef"], np.float64)
        obj.intercept_ = np.asarray(arrays[f"{prefix}intercept"], np.float64)
        obj.alpha_ = np.asarray(arrays[f"{prefix}alpha"], np.float64)
        obj._ndim = int(arrays[f"{prefix}ndim"])
        if obj.standardize:
            obj.center_ = np.asarray(arrays[f"{prefix}center"], np.float64)
            obj.scale_ = np.asarray(arrays[f"{prefix}scale"], np.float64)
        return obj


class Knn:
    """Similarity-weighted nearest-neighbour regression on (embedding) vectors.

    The training vectors are centred, projected on their first ``dim`` principal axes, L2-normalised and
    stored as int8 (row-scaled), so that a shipped model stays small. Prediction: cosine similarity to every
    training problem, the ``k`` most similar weighted by softmax(similarity / ``temp``), average of their
    labels. ``oof_`` holds the leave-one-out predictions (self excluded).
    """

    def __init__(self, dim: int = 128, k: int = 50, temp: float = 0.05):
        self.dim, self.k, self.temp = int(dim), int(k), float(temp)

    def reduce(self, X) -> np.ndarray:
        Z = (np.asarray(X, np.float64) - self.center_) @ self.proj_
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)

    def train_vectors(self) -> np.ndarray:
        R = self.q_.astype(np.float64) * self.qscale_[:, None]
        return R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-12)

    def _predict_sim(self, S) -> np.ndarray:
        k = min(self.k, S.shape[1] - 1) if S.shape[1] > 1 else 1
        idx = np.argpartition(-S, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(S, idx, 1)
        w = np.exp((s - s.max(1, keepdims=True)) / self.temp)
        w /= w.sum(1, keepdims=True)
        return np.einsum("nk,nkj->nj", w, self.y_[idx])

    def fit(self, X, Y) -> Knn:
        X = np.asarray(X, np.float64)
        Y = np.asarray(Y, np.float64)
        self._ndim = Y.ndim
        self.y_ = (Y[:, None] if Y.ndim == 1 else Y).astype(np.float32).astype(np.float64)
        self.center_ = X.mean(0)
        _, _, Vt = np.linalg.svd(X - self.center_, full_matrices=False)
        self.proj_ = Vt[: min(self.dim, Vt.shape[0])].T.astype(np.float32).astype(np.float64)
        R = self.reduce(X)
        self.qscale_ = np.maximum(np.abs(R).max(1), 1e-12) / 127.0
        self.q_ = np.round(R / self.qscale_[:, None]).astype(np.int8)
        return self._leave_one_out()

    def _sims(self, R, T, s: int) -> np.ndarray:
        """Cosine similarities of rows ``s:s+2048`` of ``R`` to every training vector."""
        return R[s:s + 2048] @ T.T

    def _leave_one_out(self):
        """``oof_``: each training problem predicted from the others (its own similarity set to -inf)."""
        T = self.train_vectors()
        out = []
        for s in range(0, T.shape[0], 2048):
            S = self._sims(T, T, s)
            S[np.arange(S.shape[0]), np.arange(s, s + S.shape[0])] = -np.inf
            out.append(self._predict_sim(S))
        self.oof_ = np.concatenate(out, 0)
        if self._ndim == 1:
            self.oof_ = self.oof_[:, 0]
        return self

    def predict(self, X) -> np.ndarray:
        T = self.train_vectors()
        R = self.reduce(X)
        P = np.concatenate([self._predict_sim(self._sims(R, T, s)) for s in range(0, R.shape[0], 2048)], 0) \
            if R.shape[0] else np.zeros((0, self.y_.shape[1]))
        return P[:, 0] if self._ndim == 1 else P

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}center": self.center_.astype(np.float32), f"{prefix}proj": self.proj_.astype(np.float32),
                f"{prefix}q": self.q_, f"{prefix}qscale": self.qscale_.astype(np.float32),
                f"{prefix}y": self.y_.astype(np.float32),
                f"{prefix}params": np.array([self.dim, self.k, self.temp, self._ndim], np.float64)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> Knn:
        dim, k, temp, ndim = arrays[f"{prefix}params"]
        obj = cls(int(dim), int(k), float(temp))
        obj._ndim = int(ndim)
        obj.center_ = np.asarray(arrays[f"{prefix}center"], np.float64)
        obj.proj_ = np.asarray(arrays[f"{prefix}proj"], np.float64)
        obj.q_ = np.asarray(arrays[f"{prefix}q"])
        obj.qscale_ = np.asarray(arrays[f"{prefix}qscale"], np.float64)
        obj.y_ = np.asarray(arrays[f"{prefix}y"], np.float64)
        return obj


class SparseKnn(Knn):
    """:class:`Knn` on sparse, L2-normalised rows (TF-IDF): cosine similarity to every training problem's
    TF-IDF row, ``k`` most similar weighted by softmax(similarity / ``temp``). The training rows are stored
    sparse (uint16/int32 column indices, float16 values), so the shipped model stays small."""

    def __init__(self, k: int = 50, temp: float = 0.05):
        super().__init__(dim=0, k=k, temp=temp)

    def reduce(self, X):
        import scipy.sparse as sp

        X = sp.csr_matrix(X, dtype=np.float64)
        norm = np.sqrt(np.asarray(X.multiply(X).sum(1)).ravel())
        norm[norm == 0] = 1.0
        return sp.diags(1.0 / norm) @ X

    def train_vectors(self):
        import scipy.sparse as sp

        return sp.csr_matrix((self.data_.astype(np.float64), self.indices_.astype(np.int64), self.indptr_),
                             shape=(len(self.indptr_) - 1, int(self.ncols_)))

    def _sims(self, R, T, s: int) -> np.ndarray:
        return _gram(R[s:s + 2048], T)

    def fit(self, X, Y) -> SparseKnn:
        Y = np.asarray(Y, np.float64)
        self._ndim = Y.ndim
        self.y_ = (Y[:, None] if Y.ndim == 1 else Y).astype(np.float32).astype(np.float64)
        R = self.reduce(X).tocsr()
        R.sort_indices()
        self.ncols_ = R.shape[1]
        self.indptr_ = R.indptr.astype(np.int64)
        self.indices_ = R.indices.astype(np.uint16 if R.shape[1] < 65536 else np.int32)
        self.data_ = R.data.astype(np.float16)
        return self._leave_one_out()

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}indptr": self.indptr_.astype(np.int32), f"{prefix}indices": self.indices_,
                f"{prefix}data": self.data_, f"{prefix}y": self.y_.astype(np.float32),
                f"{prefix}params": np.array([self.k, self.temp, self._ndim, self.ncols_], np.float64)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> SparseKnn:
        k, temp, ndim, ncols = arrays[f"{prefix}params"]
        obj = cls(int(k), float(temp))
        obj._ndim, obj.ncols_ = int(ndim), int(ncols)
        obj.indptr_ = np.asarray(arrays[f"{prefix}indptr"], np.int64)
        obj.indices_ = np.asarray(arrays[f"{prefix}indices"])
        obj.data_ = np.asarray(arrays[f"{prefix}data"])
        obj.y_ = np.asarray(arrays[f"{prefix}y"], np.float64)
        return obj


class KernelRidge:
    """Kernel ridge regression (with intercept) with the RBF kernel of unit vectors,
    k(a, b) = exp((a·b − 1) / ``temp``) = exp(−|a − b|² / (2 ``temp``)), the penalty chosen per target by exact
    leave-one-out CV (one eigendecomposition of the centred kernel). It uses the training vectors of a
    :class:`Knn` block (``vectors`` at fit and predict time: PCA-reduced int8 embeddings), so it only stores
    its dual weights. ``oof_`` holds the leave-one-out predictions."""

    def __init__(self, temp: float = 0.3, alphas: Sequence[float] = (0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30)):
        self.temp = float(temp)
        self.alphas = tuple(float(a) for a in alphas)

    def _kernel(self, A, B) -> np.ndarray:
        return np.exp((A @ B.T - 1.0) / self.temp)

    def fit(self, V, Y) -> KernelRidge:
        Y = np.asarray(Y, np.float64)
        Y2 = Y[:, None] if Y.ndim == 1 else Y
        n, k = Y2.shape
        K = self._kernel(V, V)
        r = K.mean(0)
        Kc = K - r[None, :] - r[:, None] + r.mean()
        del K
        s, U = np.linalg.eigh(Kc)
        del Kc
        s = np.clip(s, 0, None)
        m = Y2.mean(0)
        proj = U.T @ (Y2 - m)
        lev = U**2
        err = np.full(k, np.inf)
        self.alpha_ = np.zeros(k)
        self.oof_ = np.zeros((n, k))
        for lam in self.alphas:
            w = s / (s + lam)
            fitted = U @ (proj * w[:, None])
            h = lev @ w + 1.0 / n
            resid = (Y2 - m - fitted) / np.clip(1.0 - h, 1e-6, None)[:, None]
            e = (resid**2).mean(0)
            for j in np.flatnonzero(e < err):
                err[j], self.alpha_[j], self.oof_[:, j] = e[j], lam, (Y2 - resid)[:, j]
        self.cv_mse_ = err
        # prediction: k(x)ᵀ dual + offset (the centring terms are constant in x since 1ᵀ dual = 0)
        safe = np.where(s > 1e-10 * max(s.max(), 1e-300), s, np.inf)
        self.dual_ = np.stack([U @ (proj[:, j] / (safe + self.alpha_[j])) for j in range(k)], 1)
        self.dual_ -= self.dual_.mean(0)
        self.offset_ = m - r @ self.dual_
        self._ndim = Y.ndim
        if Y.ndim == 1:
            self.oof_ = self.oof_[:, 0]
        return self

    def predict(self, Vq, V) -> np.ndarray:
        P = np.concatenate([self._kernel(Vq[s:s + 2048], V) @ self.dual_ for s in range(0, len(Vq), 2048)], 0) \
            if len(Vq) else np.zeros((0, self.dual_.shape[1]))
        P = P + self.offset_
        return P[:, 0] if self._ndim == 1 else P

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}dual": self.dual_, f"{prefix}offset": self.offset_,
                f"{prefix}alpha": self.alpha_, f"{prefix}params": np.array([self.temp, self._ndim], np.float64)}

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> KernelRidge:
        temp, ndim = arrays[f"{prefix}params"]
        obj = cls(float(temp))
        obj._ndim = int(ndim)
        obj.dual_ = np.asarray(arrays[f"{prefix}dual"], np.float64)
        obj.offset_ = np.asarray(arrays[f"{prefix}offset"], np.float64)
        obj.alpha_ = np.asarray(arrays[f"{prefix}alpha"], np.float64)
        return obj
