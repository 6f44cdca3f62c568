"""Text features and the regressors of the predictor's blocks, on scikit-learn.

* :class:`Tfidf` — word + bigram TF-IDF (sublinear tf, smooth idf, L2-normalised rows):
  ``sklearn.feature_extraction.text.TfidfVectorizer`` with this module's tokenizer, serialisable to plain
  arrays (vocabulary + idf; no pickle).
* :func:`surface_features` — a few hand-made features of the problem text (``[asy]`` diagram, length, ...).
* :class:`Ridge` — ridge regression with the penalty chosen per target by exact leave-one-out
  cross-validation: ``sklearn.linear_model.RidgeCV`` (efficient LOO, SVD for dense features, the Gram
  eigendecomposition for 10⁴ sparse TF-IDF columns); keeps the leave-one-out predictions (for stacking and
  for the residual model) and primal weights (so that the saved model does not contain the training set).
* :class:`Knn` / :class:`SparseKnn` — similarity-weighted nearest neighbours: ``sklearn.decomposition.PCA``
  and ``sklearn.neighbors.NearestNeighbors`` (cosine, brute force; its leave-one-out query excludes each
  point itself), softmax weights over the k most similar.
* :class:`KernelRidge` — RBF kernel ridge with exact leave-one-out (scikit-learn's KernelRidge has no
  leave-one-out path, so this one stays ours).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z]+|\d+|\\[a-z]+|[^\sa-z\d]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers, LaTeX commands and single symbols, plus adjacent-pair bigrams."""
    w = _TOKEN.findall(text.lower())
    return w + [a + " " + b for a, b in zip(w, w[1:], strict=False)]


class Tfidf:
    """Word + bigram TF-IDF of :func:`tokenize`: scikit-learn's TfidfVectorizer (idf = ln((1 + n) / (1 + df)) + 1,
    tf = 1 + ln(count), rows L2-normalised; terms in fewer than ``min_df`` texts dropped)."""

    def __init__(self, min_df: int = 3):
        self.min_df = int(min_df)
        self.vocab: dict[str, int] = {}
        self.idf = np.zeros(0)
        self._vec = None

    def _vectorizer(self, **kw):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(analyzer=tokenize, sublinear_tf=True, smooth_idf=True, norm="l2",
                               dtype=np.float64, **kw)

    def fit(self, texts: Sequence[str]) -> Tfidf:
        self._vec = self._vectorizer(min_df=self.min_df).fit(list(texts))
        self.vocab = {w: int(i) for w, i in self._vec.vocabulary_.items()}
        self.idf = np.asarray(self._vec.idf_, np.float64)
        return self

    def transform(self, texts: Sequence[str]):
        texts = list(texts)
        if not texts:
            import scipy.sparse as sp

            return sp.csr_matrix((0, len(self.vocab)), dtype=np.float64)
        if self._vec is None:   # loaded from arrays: a vectorizer with the stored vocabulary and idf
            words = sorted(self.vocab, key=self.vocab.get)
            self._vec = self._vectorizer(vocabulary=words)
            self._vec.idf_ = self.idf
        return self._vec.transform(texts).tocsr()

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


class Ridge:
    """Multi-target ridge regression (with intercept), the penalty chosen per target by exact
    leave-one-out cross-validation: ``sklearn.linear_model.RidgeCV`` (``alpha_per_target``; one SVD or Gram
    eigendecomposition serves every penalty and every row).

    ``fit`` stores primal weights ``coef_`` [d, k] and ``intercept_`` [k] and the leave-one-out predictions
    ``oof_`` [n, k]. Dense inputs are standardised (``center``/``scale`` stored; each column scaled to
    std / sqrt(d), unit total variance, so that penalties are comparable across blocks); sparse ones are
    used as is.
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
        from sklearn.linear_model import RidgeCV

        Y = np.asarray(Y, np.float64)
        Y2 = Y[:, None] if Y.ndim == 1 else Y
        k = Y2.shape[1]
        if not _is_sparse(X) and self.standardize:
            X = np.asarray(X, np.float64)
            self.center_ = X.mean(0)
            self.scale_ = X.std(0) * math.sqrt(X.shape[1])  # unit total variance: alphas comparable across blocks
            self.scale_[self.scale_ == 0] = 1.0
        Z = self._prep(X)
        # scoring given: cv_results_ holds the leave-one-out predictions (not squared errors); the penalty
        # per target maximises -MSE of those, i.e. minimises the leave-one-out error
        cv = RidgeCV(alphas=np.array(self.alphas), fit_intercept=True, alpha_per_target=k > 1, store_cv_results=True,
                     scoring="neg_mean_squared_error").fit(Z, Y2)
        alpha = np.atleast_1d(np.asarray(cv.alpha_, np.float64))
        if alpha.size == 1 and k > 1:
            alpha = np.full(k, alpha[0])
        loo = np.asarray(cv.cv_results_).reshape(Y2.shape[0], k, len(self.alphas))
        best = [self.alphas.index(float(a)) for a in alpha]
        self.alpha_ = alpha
        self.oof_ = np.stack([loo[:, j, best[j]] for j in range(k)], 1)
        self.cv_mse_ = ((self.oof_ - Y2) ** 2).mean(0)
        self.coef_ = np.asarray(cv.coef_, np.float64).reshape(k, -1).T
        self.intercept_ = np.atleast_1d(np.asarray(cv.intercept_, np.float64))
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

    The training vectors are centred and projected on their first ``dim`` principal axes
    (``sklearn.decomposition.PCA``), L2-normalised and stored as int8 (row-scaled), so that a shipped model
    stays small. Prediction: the ``k`` most cosine-similar training problems
    (``sklearn.neighbors.NearestNeighbors``, brute force), weighted by softmax(similarity / ``temp``),
    average of their labels. ``oof_`` holds the leave-one-out predictions (each point's query excludes
    itself).
    """

    def __init__(self, dim: int = 128, k: int = 50, temp: float = 0.05):
        self.dim, self.k, self.temp = int(dim), int(k), float(temp)
        self._nn = None

    def reduce(self, X) -> np.ndarray:
        Z = (np.asarray(X, np.float64) - self.center_) @ self.proj_
        return Z / np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)

    def train_vectors(self) -> np.ndarray:
        R = self.q_.astype(np.float64) * self.qscale_[:, None]
        return R / np.maximum(np.linalg.norm(R, axis=1, keepdims=True), 1e-12)

    def _index(self):
        if self._nn is None:
            from sklearn.neighbors import NearestNeighbors

            self._nn = NearestNeighbors(metric="cosine", algorithm="brute").fit(self.train_vectors())
        return self._nn

    def _n_neighbors(self) -> int:
        return max(1, min(self.k, self.y_.shape[0] - 1))

    def _average(self, dist: np.ndarray, idx: np.ndarray) -> np.ndarray:
        s = 1.0 - dist   # cosine similarity
        w = np.exp((s - s.max(1, keepdims=True)) / self.temp)
        w /= w.sum(1, keepdims=True)
        return np.einsum("nk,nkj->nj", w, self.y_[idx])

    def fit(self, X, Y) -> Knn:
        from sklearn.decomposition import PCA

        X = np.asarray(X, np.float64)
        Y = np.asarray(Y, np.float64)
        self._ndim = Y.ndim
        self.y_ = (Y[:, None] if Y.ndim == 1 else Y).astype(np.float32).astype(np.float64)
        pca = PCA(n_components=min(self.dim, *X.shape), svd_solver="full").fit(X)
        self.center_ = pca.mean_
        self.proj_ = pca.components_.T.astype(np.float32).astype(np.float64)
        R = self.reduce(X)
        self.qscale_ = np.maximum(np.abs(R).max(1), 1e-12) / 127.0
        self.q_ = np.round(R / self.qscale_[:, None]).astype(np.int8)
        return self._leave_one_out()

    def _leave_one_out(self):
        """``oof_``: each training problem predicted from the others."""
        self._nn = None
        dist, idx = self._index().kneighbors(n_neighbors=self._n_neighbors())   # no query: self excluded
        self.oof_ = self._average(dist, idx)
        if self._ndim == 1:
            self.oof_ = self.oof_[:, 0]
        return self

    def predict(self, X) -> np.ndarray:
        R = self.reduce(X)
        if R.shape[0]:
            P = self._average(*self._index().kneighbors(R, n_neighbors=self._n_neighbors()))
        else:
            P = np.zeros((0, self.y_.shape[1]))
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
    """:class:`Knn` on sparse, L2-normalised rows (TF-IDF): the ``k`` most cosine-similar training problems'
    TF-IDF rows, weighted by softmax(similarity / ``temp``). The training rows are stored sparse
    (uint16/int32 column indices, float16 values), so the shipped model stays small."""

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
