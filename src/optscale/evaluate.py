"""Offline evaluation engine: replay policies x budgets over a sample pool.

Protocol
--------
* Rows of a :class:`~optscale.policies.ReplayBatch` are problems x orderings. Ordering 0 is the pool's own
  order (the paper's protocol: sample i is the i-th drawn); orderings 1..R are seeded random permutations
  of each problem's available samples (``ordering_mode="random"``) or cyclic rotations
  (``ordering_mode="cyclic"``: ordering r starts at sample r mod n). Padding always stays at the end.
* Each policy is replayed once per budget ``N_max`` (``policy.replay(batch, n_max)``). A row is correct iff
  the answer class of the selected sample is correct (selected = -1 or an unparsable answer is wrong); its
  cost is the tokens of the first ``n_drawn`` samples (every drawn sample counts, warm-up included).
* Per problem, correctness / tokens / samples are averaged over orderings; the report gives their means
  over problems with seeded bootstrap 95% intervals over problems (the same resamples for every row of a
  split, so that rows are compared on paired resamples).
* Oracle lower bound (per budget): per row, the fewest tokens of a clairvoyant stop, i.e. the smallest
  prefix whose reference pick (BoN, or self-consistency on a pool without scores) has the same
  correctness as the reference at N_max (a correct pick when the reference at N_max is correct).
* Hyper-parameters (target s*, alpha, warm-up k for OptScale; window/threshold for ESC/ASC) are tuned on a
  seeded calibration split of problems (``calib_frac``), or the given one (``calib_problems``), and
  reported on the rest (split ``"test"``); :func:`cross_fit_splits` gives K such splits that hold each
  problem out once.
  Selection rule (``select="match"``, default): per budget, the grid point with the fewest calibration
  tokens that matches the method's fixed-budget counterpart (BoN for OptScale, self-consistency for the SC
  family) at that budget with a safety margin: with d_p = (point correct - counterpart correct) on
  calibration problem p (each averaged over the orderings; the same rows, so the difference is paired),
  the point is accepted iff ``mean(d) - margin_z * SE(d) >= -tolerance`` (SE(d) = sd(d) / sqrt(P_cal);
  ``tolerance`` 0.5 pt, ``margin_z`` 1.0; :func:`paired_lower`); if none is, the most accurate point
  (fewest tokens among ties). Without the margin (``margin_z=0``: accuracy within ``tolerance``) the
  cheapest accepted point is the one whose calibration accuracy was luckiest, and on the held-out split
  every tuned rule lands ~1 point below the counterpart (winner's curse); the margin asks a cheaper point
  to be within tolerance by more than its noise. ``select="penalty"``: maximise
  ``accuracy - token_penalty * tokens / counterpart_tokens`` (no margin).
* Learned parts are tuned out of fold (``tune_folds``, default 5): a rule whose decisions come from a model
  learned on the calibration split (the cost-aware gain model) would otherwise be tuned on the very rows
  it was fitted to, where its tables look better than they are, and the held-out rule misses the
  counterpart's accuracy (measured, benchmarks/bench_tune_folds.py: 0.9-2.0 points below BoN in 3 of 5
  seeds on the SmolLM2 pool; 5 of 13 runs over three pools miss by more than 0.5 point, 1 out of fold).
  So its calibration metrics are cross-fitted: the calibration problems are split into ``tune_folds``
  seeded folds and each fold is replayed with a model fitted on the other folds; the chosen grid point is then reported with
  the model fitted on the whole calibration split. ``tune_folds=1``: in-sample, as before.
* :func:`sweep` evaluates a full grid over every problem (split ``"all (not held-out)"``) for plots; its
  numbers are not held-out. One-shot OptScale grids take a fast path (one fit per variant, warm-up size
  and row; N* for every (s*, alpha, budget) vectorized), checked to equal ``policy.replay``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from optscale.errors import InputError, OptScaleError, ParameterError
from optscale.report import (
    KIND_ADAPTIVE,
    KIND_FIXED,
    KIND_ORACLE,
    KIND_SWEEP,
    SPLIT_ALL,
    SPLIT_CALIB,
    SPLIT_SWEEP,
    SPLIT_TEST,
    EvalReport,
    EvalRow,
    pareto_frontier,
    plot_accuracy_vs_tokens,
)

__all__ = [
    "EvalConfig",
    "EvalReport",
    "EvalRow",
    "evaluate",
    "sweep",
    "build_batch",
    "bootstrap_ci",
    "split_problems",
    "cross_fit_splits",
    "load_priors",
    "load_calib_ids",
    "expand_priors",
    "difficulty_proxy",
    "oracle_costs",
    "pareto_frontier",
    "plot_accuracy_vs_tokens",
    "DEFAULT_GRIDS",
    "SWEEP_TARGETS",
    "SWEEP_ALPHAS",
    "FIXED_METHODS",
]

#: policies that always draw N_max samples
FIXED_METHODS = frozenset({"bon", "sc", "wsc", "maj", "majority"})
#: default (s*, alpha) grid of sweeps: 6 x 8 = 48 pairs
SWEEP_TARGETS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
SWEEP_ALPHAS: tuple[float, ...] = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
#: default prior spreads when priors come as [mu0, sigma0] only (those of theory.fit_map)
DEFAULT_SD_MU = 0.1
DEFAULT_SD_SIGMA = 0.1

#: warm-up sizes k tried when tuning OptScale (a k above a budget is dropped at that budget)
TUNE_WARMUPS = (2, 4, 8)

#: exchange rates (tokens one accuracy point is worth) tried when tuning ``costaware``
COSTAWARE_RATES: tuple[float, ...] = tuple(float(f"{x:.3g}") for x in np.geomspace(3.0, 3e5, 31))

#: default tuning grids per policy name (parameter name -> candidate values; the grid is their product)
DEFAULT_GRIDS: dict[str, dict[str, tuple]] = {
    "optscale0": {"target": SWEEP_TARGETS, "alpha": SWEEP_ALPHAS, "k": TUNE_WARMUPS},
    "optscalet": {"target": SWEEP_TARGETS, "alpha": SWEEP_ALPHAS, "k": TUNE_WARMUPS},
    "optscale0-seq": {"target": (0.7, 0.8, 0.9), "alpha": (0.05, 0.1, 0.3, 0.5), "k": TUNE_WARMUPS},
    "optscalet-seq": {"target": (0.7, 0.8, 0.9), "alpha": (0.05, 0.1, 0.3, 0.5), "k": TUNE_WARMUPS},
    # issue #8 rules
    "optscale-post": {"target": (0.7, 0.8, 0.9), "alpha": (0.05, 0.1, 0.3, 0.5), "k": (2, 4)},
    "optscale-post-seq": {"target": (0.7, 0.8, 0.9), "alpha": (0.05, 0.1, 0.3, 0.5), "k": (2, 4)},
    # six rates per decade (3 significant digits) from 3 to 3e5: the cheapest rate passing the margin is a
    # knife edge, and with 1-3-10 steps (11 rates) the tuner overshot it by up to 3.3x; measured with
    # benchmarks/bench_tune_folds.py (out-of-fold, 9 held-out runs): fewer tokens in 6, the same in 3, never
    # more (Beta seed 1: 44,232 -> 33,561), each within 0.5 point of BoN; ~2x the tuning time
    "costaware": {"tokens_per_point": COSTAWARE_RATES, "k": (1, 2)},
    "wvote": {"threshold": (0.8, 0.9, 0.95, 0.99), "power": (0.5, 1.0, 2.0, 4.0)},
}

#: (s*, alpha) grid of the reliability check (promised 1 - alpha vs achieved coverage): s* at these
#: quantiles of the calibration problems' scores (the pool's own scale; RELIABILITY_TARGETS if degenerate)
RELIABILITY_QUANTILES: tuple[float, ...] = (0.5, 0.75, 0.9, 0.95, 0.99)
RELIABILITY_TARGETS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)
RELIABILITY_ALPHAS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)
#: policies whose decisions need a learned gain model (fitted on the calibration split when not given)
GAIN_METHODS = frozenset({"costaware", "budget-alloc"})
#: policies whose score model is chosen by held-out likelihood on the calibration split when not given
POSTERIOR_METHODS = frozenset({"optscale-post", "optscale-post-seq"})

#: fixed-budget counterpart of each adaptive method (reference of the "match" selection rule)
_COUNTERPART = {
    "optscale0": "bon",
    "optscale0-seq": "bon",
    "optscalet": "bon",
    "optscalet-seq": "bon",
    "mr-thinking": "bon",
    "esc": "sc",
    "asc": "sc",
    "dsc": "sc",
    "sc": "sc",
    "wsc": "wsc",
    "bon": "bon",
    "optscale-post": "bon",
    "optscale-post-seq": "bon",
    "costaware": "bon",
    "budget-alloc": "bon",
    "wvote": "sc",
}



# ================================================================================================ config
def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(name, f"must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: Any, *, lo: float, hi: float | None = None, lo_open: bool = False,
                 hi_open: bool = False, none_ok: bool = False) -> float | None:
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ParameterError(name, f"must be a number, got {value!r}")
    v = float(value)
    bad = not math.isfinite(v) or v < lo or (lo_open and v == lo)
    if hi is not None:
        bad = bad or v > hi or (hi_open and v == hi)
    if bad:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}" if hi is not None else (
            f"{'>' if lo_open else '>='} {lo}")
        raise ParameterError(name, f"must be a finite number {'in ' if hi is not None else ''}{rng}, got {value!r}")
    return v


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of :func:`evaluate` / :func:`sweep` in one validated object (issue #9).

    ``budgets``: the N_max values (None = :func:`default_budgets` of the pool's sample count; checked
    against the pool when evaluating). ``orderings``/``ordering_mode``/``seed``: the replay protocol (see
    the module docstring). ``calib_frac``/``tune``/``grids``/``select``/``tolerance``/``token_penalty``:
    hyper-parameter tuning on the calibration split (``calib_problems``: its problem indices, instead of the
    seeded ``calib_frac`` split; it also makes evaluate fit learned models there when nothing is tuned);
    ``margin_z`` (>= 0): the safety margin of
    ``select="match"`` in standard errors of the paired per-problem difference to the counterpart (0 = plain
    ``tolerance`` match; see the module docstring). ``tune_folds`` (>= 1): rules with a model learned on the
    calibration split are tuned on cross-fitted calibration metrics (1 = in-sample; module docstring).
    ``oracle``: add the clairvoyant lower bound. ``n_boot``/``level``: bootstrap intervals. ``include_calib``: also report tuned rows on the
    calibration split. ``fast``: the vectorized OptScale grid path (equal to ``policy.replay``).
    ``coverage``: also measure the guarantee of every rule that claims one over the reliability grid
    (``meta["reliability"]``; per reported row it is always in ``meta["coverage"]``).
    Each field is validated on construction; an invalid value raises :class:`ParameterError` naming it.
    """

    budgets: tuple[int, ...] | None = (8, 16, 32, 64)
    orderings: int = 10
    seed: int = 0
    calib_frac: float = 0.3
    calib_problems: tuple[int, ...] | None = None
    tune: bool = True
    grids: Mapping[str, Mapping[str, Iterable]] | None = None
    select: str = "match"
    tolerance: float = 0.005
    margin_z: float = 1.0
    tune_folds: int = 5
    token_penalty: float = 0.01
    oracle: bool = True
    ordering_mode: str = "random"
    n_boot: int = 1000
    level: float = 0.95
    include_calib: bool = False
    fast: bool = True
    coverage: bool = True

    def __post_init__(self) -> None:
        if self.budgets is not None:
            if isinstance(self.budgets, (str, bytes)) or not isinstance(self.budgets, Iterable):
                raise ParameterError("budgets", f"must be a sequence of integers >= 1, got {self.budgets!r}")
            b = tuple(self.budgets)
            for x in b:
                _check_int("budgets", x, 1)
            if not b:
                raise ParameterError("budgets", "no budget given")
            object.__setattr__(self, "budgets", tuple(int(x) for x in b))
        object.__setattr__(self, "orderings", _check_int("orderings", self.orderings, 0))
        object.__setattr__(self, "seed", _check_int("seed", self.seed, 0))
        object.__setattr__(self, "n_boot", _check_int("n_boot", self.n_boot, 1))
        object.__setattr__(self, "tune_folds", _check_int("tune_folds", self.tune_folds, 1))
        # 0 = no calibration split: allowed while nothing is tuned (split_problems refuses it otherwise)
        _check_float("calib_frac", self.calib_frac, lo=0.0, hi=1.0, hi_open=True)
        if self.calib_problems is not None:
            cp = self.calib_problems
            if isinstance(cp, (str, bytes)) or not isinstance(cp, Iterable):
                raise ParameterError("calib_problems", f"must be a sequence of problem indices, got {cp!r}")
            idx = tuple(_check_int("calib_problems", x, 0) for x in cp)
            if not idx or len(set(idx)) != len(idx):
                raise ParameterError("calib_problems", f"must be distinct problem indices, at least one, got {cp!r}")
            object.__setattr__(self, "calib_problems", tuple(sorted(idx)))
        _check_float("tolerance", self.tolerance, lo=0.0)
        _check_float("margin_z", self.margin_z, lo=0.0)
        _check_float("token_penalty", self.token_penalty, lo=0.0)
        _check_float("level", self.level, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        for name in ("tune", "oracle", "include_calib", "fast", "coverage"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ParameterError(name, f"must be True or False, got {getattr(self, name)!r}")
        if self.select not in ("match", "penalty"):
            raise ParameterError("select", f"must be 'match' or 'penalty', got {self.select!r}")
        if self.ordering_mode not in ("random", "cyclic"):
            raise ParameterError("ordering_mode", f"must be 'random' or 'cyclic', got {self.ordering_mode!r}")
        if self.grids is not None:
            if not isinstance(self.grids, Mapping):
                raise ParameterError("grids", f"must map method names to {{parameter: values}}, got {self.grids!r}")
            for k, g in self.grids.items():
                if not isinstance(g, Mapping):
                    raise ParameterError("grids", f"grid of {k!r} must map parameter names to values, got {g!r}")

    def replace(self, **changes: Any) -> EvalConfig:
        """A copy with ``changes`` applied (validated; an unknown name raises ParameterError)."""
        return _config(self, changes)


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(EvalConfig))


def _config(config: EvalConfig | None, changes: Mapping[str, Any]) -> EvalConfig:
    """``config`` (default EvalConfig()) with keyword overrides (the keyword path of evaluate/sweep)."""
    if config is not None and not isinstance(config, EvalConfig):
        raise ParameterError("config", f"must be an EvalConfig, got {type(config).__name__}")
    unknown = sorted(set(changes) - _CONFIG_FIELDS)
    if unknown:
        raise ParameterError(unknown[0], f"unknown setting; valid: {', '.join(sorted(_CONFIG_FIELDS))}")
    base = config if config is not None else EvalConfig()
    return dataclasses.replace(base, **changes) if changes else base


# ================================================================================================ batches
def _policies():
    import optscale.policies as pol

    return pol


@dataclass
class Prepared:
    """A replay batch over all problems x orderings plus what scoring needs.

    Rows are ordering-major: row ``o * P + p`` is problem ``p`` in ordering ``o``. Only the per-problem
    arrays and the draw order of every row (``perm``, one byte per draw) are kept; a row block's
    :class:`~optscale.policies.ReplayBatch` is gathered on demand (:meth:`sub`), so that memory grows with
    the pool plus one block, not with problems x orderings x float64 (issue #9). ``batch`` and ``cumtok``
    build the whole thing (for tests and small pools; the engine never calls them).
    """

    perm: np.ndarray  # uint[B, M], pool sample index of each draw position
    sample_correct: np.ndarray  # bool[B, M], correctness of each sample (by answer class) in draw order
    n_problems: int
    n_orderings: int
    has_scores: bool
    answers_p: np.ndarray  # int64[P, M] pool order
    scores_p: np.ndarray  # float64[P, M]
    tokens_p: np.ndarray  # float64[P, M] (NaN -> 0)
    n_p: np.ndarray  # int64[P]
    priors_p: np.ndarray | None = None  # float64[P, 4]
    difficulty_p: np.ndarray | None = None  # float64[P]

    def rows_of(self, problems: np.ndarray | None) -> np.ndarray:
        """Row indices (ordering-major, problems in the given order) of a subset of problems."""
        if problems is None:
            return np.arange(self.n_rows)
        problems = np.asarray(problems, dtype=np.int64)
        return (np.arange(self.n_orderings)[:, None] * self.n_problems + problems[None, :]).ravel()

    @property
    def n_rows(self) -> int:
        return int(self.perm.shape[0])

    def problem_of(self, rows: np.ndarray) -> np.ndarray:
        """int64[R]: problem index of each row (rows are ordering-major: ``row % P``)."""
        return np.asarray(rows, dtype=np.int64) % self.n_problems

    def ordering_of(self, rows: np.ndarray) -> np.ndarray:
        """int64[R]: ordering id of each row (0 = pool order; ``row // P``)."""
        return np.asarray(rows, dtype=np.int64) // self.n_problems

    @property
    def problem(self) -> np.ndarray:
        """int64[B]: problem index of every row (built on access)."""
        return self.problem_of(np.arange(self.n_rows))

    @property
    def ordering(self) -> np.ndarray:
        """int64[B]: ordering id of every row (built on access)."""
        return self.ordering_of(np.arange(self.n_rows))

    @property
    def max_samples(self) -> int:
        return int(self.answers_p.shape[1])

    @property
    def has_priors(self) -> bool:
        return self.priors_p is not None

    def n_of(self, rows: np.ndarray) -> np.ndarray:
        """int64[R]: samples available in each row."""
        return self.n_p[self.problem_of(rows)]

    def _take(self, a: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return a[self.problem_of(rows)[:, None], self.perm[rows]]

    def scores_of(self, rows: np.ndarray) -> np.ndarray:
        """float64[R, M]: scores of ``rows`` in draw order."""
        return self._take(self.scores_p, rows)

    def tokens_of(self, rows: np.ndarray) -> np.ndarray:
        """float64[R, M]: tokens of ``rows`` in draw order (0 past n and where missing)."""
        tok = self._take(self.tokens_p, rows)
        valid = np.arange(self.max_samples)[None, :] < self.n_of(rows)[:, None]
        return np.where(valid, tok, 0.0)

    def cumtok_of(self, rows: np.ndarray) -> np.ndarray:
        """float64[R, M + 1]: cumulative tokens of ``rows`` in draw order (column 0 = 0)."""
        out = np.zeros((rows.shape[0], self.max_samples + 1), dtype=np.float64)
        np.cumsum(self.tokens_of(rows), axis=1, out=out[:, 1:])
        return out

    def tokens_at(self, rows: np.ndarray, n_drawn: np.ndarray) -> np.ndarray:
        """float64[R]: tokens of the first ``n_drawn`` draws of each row (cumulative, as ``cumtok``)."""
        rows = np.asarray(rows, dtype=np.int64)
        n_drawn = np.asarray(n_drawn)
        out = np.empty(rows.shape[0], dtype=np.float64)
        for s in range(0, rows.shape[0], _ROW_CHUNK):
            r = rows[s:s + _ROW_CHUNK]
            out[s:s + _ROW_CHUNK] = self.cumtok_of(r)[np.arange(r.shape[0]), n_drawn[s:s + _ROW_CHUNK]]
        return out

    def sub(self, rows: np.ndarray):
        """The ReplayBatch of ``rows`` (draw order), gathered from the per-problem arrays."""
        rows = np.asarray(rows, dtype=np.int64)
        pr = self.problem_of(rows)
        return _policies().ReplayBatch(
            answers=self._take(self.answers_p, rows), scores=self.scores_of(rows), tokens=self.tokens_of(rows),
            n=self.n_p[pr], priors=None if self.priors_p is None else self.priors_p[pr],
            difficulty=None if self.difficulty_p is None else self.difficulty_p[pr],
            group=self.ordering_of(rows),
        )

    @property
    def batch(self):
        """The whole ReplayBatch (every row; built on each access, not kept)."""
        return self.sub(np.arange(self.n_rows))

    @property
    def cumtok(self) -> np.ndarray:
        """float64[B, M + 1]: cumulative tokens of every row (built on each access, not kept)."""
        return self.cumtok_of(np.arange(self.n_rows))


def _class_correct_matrix(arrays) -> np.ndarray | None:
    cc = getattr(arrays, "class_correct", None)
    if cc is None:
        return None
    if isinstance(cc, np.ndarray) and cc.ndim == 2:
        return cc.astype(bool)
    P = len(cc)
    C = max([len(np.atleast_1d(c)) for c in cc] + [1])
    out = np.zeros((P, C), dtype=bool)
    for i, c in enumerate(cc):
        c = np.atleast_1d(np.asarray(c, dtype=bool))
        out[i, : c.size] = c
    return out


def _permutations(n: np.ndarray, M: int, orderings: int, seed: int, mode: str) -> np.ndarray:
    """int64[n_ord, P, M]: pool sample index at each draw position; ordering 0 is the identity."""
    P = n.shape[0]
    n_ord = 1 + orderings
    ar = np.arange(M)
    perm = np.empty((n_ord, P, M), dtype=np.int64)
    perm[0] = ar[None, :]
    if orderings == 0:
        return perm
    valid = ar[None, :] < n[:, None]  # [P, M]
    if mode == "random":
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED]))
        keys = rng.random((orderings, P, M))
        keys = np.where(valid[None], keys, 2.0 + ar[None, None, :])  # padding last, in place
        perm[1:] = np.argsort(keys, axis=2, kind="stable")
    elif mode == "cyclic":
        r = np.arange(1, n_ord)[:, None, None]
        nn = np.maximum(n, 1)[None, :, None]
        rot = (ar[None, None, :] + r) % nn
        perm[1:] = np.where(valid[None], rot, ar[None, None, :])
    else:
        raise ParameterError("ordering_mode", f"must be 'random' or 'cyclic', got {mode!r}")
    return perm


def build_batch(
    arrays,
    *,
    orderings: int = 0,
    seed: int = 0,
    ordering_mode: str = "random",
    priors: np.ndarray | None = None,
    difficulty: np.ndarray | None = None,
) -> Prepared:
    """Build the replay batch of every problem x (1 + ``orderings``) orderings of a :class:`PoolArrays`.

    ``priors``: float[P, 2] (mu0, sigma0) or [P, 4] (mu0, sigma0, sd_mu, sd_sigma); ``difficulty``: float[P].
    Deterministic given ``seed``; the permutation of a problem does not depend on other problems' splits.
    """
    if not isinstance(orderings, (int, np.integer)) or orderings < 0:
        raise ParameterError("orderings", f"must be an integer >= 0 (random orderings besides the pool's), got {orderings!r}")
    scores = np.asarray(arrays.scores, dtype=np.float64)
    tokens = np.asarray(arrays.tokens, dtype=np.float64)
    answers = np.asarray(arrays.answers, dtype=np.int64)
    n = np.asarray(arrays.n, dtype=np.int64)
    P, M = answers.shape
    if P == 0:
        raise ParameterError("pool", "has no problems")
    n_ord = 1 + int(orderings)
    perm3 = _permutations(n, M, int(orderings), seed, ordering_mode)  # [n_ord, P, M]
    perm = perm3.reshape(n_ord * P, M).astype(np.min_scalar_type(M))  # indices < M: the smallest type
    del perm3
    problem = np.tile(np.arange(P, dtype=np.int64), n_ord)
    ordering = np.repeat(np.arange(n_ord, dtype=np.int64), P)

    valid = np.arange(M)[None, :] < n[problem][:, None]
    ans_b = answers[problem[:, None], perm]
    cc = _class_correct_matrix(arrays)
    if cc is not None and cc.shape[1] > 0:
        cls = np.clip(ans_b, 0, cc.shape[1] - 1)
        sample_correct = (ans_b >= 0) & cc[problem[:, None], cls] & valid
    else:
        corr = getattr(arrays, "correct", None)
        if corr is None:
            raise ParameterError("pool", "has no correctness information (gold answers or per-sample 'correct')")
        sample_correct = np.asarray(corr, dtype=bool)[problem[:, None], perm] & valid & (ans_b >= 0)
    del ans_b, valid

    pri_p = None
    if priors is not None:
        pri_p = expand_priors(priors, P)
    diff_p = None
    if difficulty is not None:
        diff_p = np.asarray(difficulty, dtype=np.float64).reshape(-1)
        if diff_p.shape[0] != P:
            raise ParameterError("difficulty", f"has {diff_p.shape[0]} values for {P} problems")
        diff_p = diff_p.copy()

    valid_scores = np.where(np.arange(M)[None, :] < n[:, None], ~np.isnan(scores), True)
    has_scores = bool(valid_scores.all()) and bool((n > 0).any())

    del problem, ordering
    return Prepared(perm=perm, sample_correct=sample_correct,
                    n_problems=P, n_orderings=n_ord, has_scores=has_scores, answers_p=answers, scores_p=scores,
                    tokens_p=np.nan_to_num(tokens, nan=0.0), n_p=n, priors_p=pri_p, difficulty_p=diff_p)


def _subset_batch(batch, rows: np.ndarray):
    """The ReplayBatch restricted to ``rows`` (every array field with a leading row axis is sliced)."""
    B = batch.n.shape[0]
    kw = {}
    for f in dataclasses.fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == B:
            v = v[rows]
        kw[f.name] = v
    return type(batch)(**kw)


def difficulty_proxy(arrays) -> np.ndarray:
    """float64[P] difficulty from the pool itself: 1 - the share of the most frequent answer among ALL of a
    problem's samples (unparsable answers count as disagreement). A stand-in for DSC's LLM ranking when
    no difficulty is given; it looks at samples a run would not have drawn, so it is optimistic for DSC."""
    ans = np.asarray(arrays.answers, dtype=np.int64)
    n = np.maximum(np.asarray(arrays.n, dtype=np.int64), 1)
    P, M = ans.shape
    C = int(ans.max()) + 1 if ans.size and ans.max() >= 0 else 1
    rows = np.broadcast_to(np.arange(P)[:, None], (P, M))
    valid = ans >= 0
    counts = np.bincount((rows * C + np.where(valid, ans, 0))[valid], minlength=P * C).reshape(P, C)
    return 1.0 - counts.max(axis=1) / n


def _resolve_difficulty(arrays, difficulty, priors, methods) -> tuple[np.ndarray | None, str | None]:
    if difficulty is not None and not isinstance(difficulty, str):
        return np.asarray(difficulty, dtype=np.float64), "given"
    wants = any(str(m).split(":")[0].strip().lower() == "dsc" for m in methods)
    if not wants:
        return None, None
    if priors is not None:
        p = np.asarray(priors, dtype=np.float64)
        return -p[:, 0], "priors (difficulty = -mu0)"
    return difficulty_proxy(arrays), "sample-disagreement proxy (uses all pool samples: optimistic for DSC)"


def expand_priors(priors, n_problems: int) -> np.ndarray:
    """float64[P, 4] (mu0, sigma0, sd_mu, sd_sigma) from [P, 2] or [P, 4] priors."""
    p = np.asarray(priors, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] not in (2, 4):
        raise ParameterError("priors", f"must have shape [P, 2] or [P, 4], got {p.shape}")
    if p.shape[0] != n_problems:
        raise ParameterError("priors", f"has {p.shape[0]} rows for {n_problems} problems")
    if p.shape[1] == 2:
        p = np.concatenate([p, np.tile([DEFAULT_SD_MU, DEFAULT_SD_SIGMA], (p.shape[0], 1))], axis=1)
    if not np.isfinite(p).all():
        bad = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
        raise ParameterError("priors", f"row {bad} is not finite: {p[bad].tolist()}")
    if (p[:, 1:] <= 0).any():
        bad = int(np.flatnonzero((p[:, 1:] <= 0).any(axis=1))[0])
        raise ParameterError("priors", f"row {bad}: sigma0, sd_mu, sd_sigma must be > 0, got {p[bad].tolist()}")
    return p


def load_calib_ids(path: str | Path, ids: Sequence[str]) -> list[int]:
    """The calibration split from a JSON file: a list of problem ids (strings, each a problem of the pool,
    none twice). Returns their problem indices (for ``EvalConfig.calib_problems``), sorted."""
    from optscale.jsonio import read_json

    path = Path(path)
    data = read_json(path)  # the one reader: missing, directory, binary, gzip, syntax: one error with the line
    if not isinstance(data, list) or not data:
        raise InputError(str(path), None, None, "must be a non-empty JSON list of problem ids")
    index = {str(i): k for k, i in enumerate(ids)}
    seen: set[str] = set()
    out = []
    for j, x in enumerate(data):
        if not isinstance(x, str):
            raise InputError(str(path), None, f"[{j}]", f"a problem id must be a string, got {x!r}")
        if x not in index:
            raise InputError(str(path), None, f"[{j}]", f"no problem {x!r} in the pool")
        if x in seen:
            raise InputError(str(path), None, f"[{j}]", f"problem {x!r} given twice")
        seen.add(x)
        out.append(index[x])
    if len(out) >= len(index):
        raise InputError(str(path), None, None, f"names all {len(index)} problems: none is left to report on")
    return sorted(out)


def load_priors(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """Priors from a JSON file: a list of [mu0, sigma0] (or 4 values) aligned with the problems, or an
    object {problem id: [mu0, sigma0]} covering every problem. Returns float64[P, 2 or 4]."""
    from optscale.jsonio import read_json

    path = Path(path)
    data = read_json(path)  # the one reader: missing, directory, binary, gzip, syntax: one error with the line
    ids = [str(i) for i in ids]
    if isinstance(data, dict):
        missing = [i for i in ids if i not in data]
        if missing:
            raise InputError(str(path), None, missing[0], f"no prior for problem {missing[0]!r} "
                             f"({len(missing)} of {len(ids)} problems missing)")
        rows = [data[i] for i in ids]
    elif isinstance(data, list):
        if len(data) != len(ids):
            raise InputError(str(path), None, None, f"has {len(data)} priors for {len(ids)} problems")
        rows = data
    else:
        raise InputError(str(path), None, None, "must be a JSON list of [mu0, sigma0] or an object {id: [mu0, sigma0]}")
    width = None
    for i, r in enumerate(rows):
        if isinstance(r, dict):
            r = [r.get("mu0", r.get("mu")), r.get("sigma0", r.get("sigma"))]
            rows[i] = r
        if not isinstance(r, (list, tuple)) or len(r) not in (2, 4) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in r
        ):
            raise InputError(str(path), None, ids[i], f"prior must be [mu0, sigma0] or 4 numbers, got {r!r}")
        if width is None:
            width = len(r)
        elif len(r) != width:
            raise InputError(str(path), None, ids[i], "all priors must have the same length")
    arr = np.asarray(rows, dtype=np.float64)
    try:
        return expand_priors(arr, len(ids))[:, : arr.shape[1]]
    except ParameterError as exc:
        raise InputError(str(path), None, None, str(exc)) from None


# ================================================================================================ scoring
@dataclass
class RowMetrics:
    """Per-row outcome of one replay."""

    correct: np.ndarray  # bool[B]
    tokens: np.ndarray  # float64[B]
    samples: np.ndarray  # int64[B]


def _check_result(name: str, result, batch) -> tuple[np.ndarray, np.ndarray]:
    nd = np.asarray(result.n_drawn, dtype=np.int64)
    sel = np.asarray(result.selected, dtype=np.int64)
    B = batch.n.shape[0]
    if nd.shape != (B,) or sel.shape != (B,):
        raise OptScaleError(f"policy {name!r} returned arrays of shape {nd.shape}/{sel.shape} for {B} rows")
    bad = (nd < 0) | (nd > batch.n)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise OptScaleError(f"policy {name!r} drew {nd[r]} samples in row {r} with {batch.n[r]} available")
    bad = (sel >= nd) | (sel < -1)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise OptScaleError(f"policy {name!r} selected sample {sel[r]} in row {r} after drawing {nd[r]}")
    return nd, sel


def _metrics(prep: Prepared, rows: np.ndarray, n_drawn: np.ndarray, selected: np.ndarray) -> RowMetrics:
    sc = prep.sample_correct[rows]
    ok = selected >= 0
    corr = np.zeros(rows.shape[0], dtype=bool)
    corr[ok] = sc[np.flatnonzero(ok), selected[ok]]
    tok = prep.tokens_at(rows, n_drawn)
    return RowMetrics(correct=corr, tokens=tok, samples=n_drawn)


def _per_problem(m: RowMetrics, n_orderings: int) -> np.ndarray:
    """float64[3, P']: per-problem mean (over orderings) of correctness, tokens, samples."""
    stack = np.stack([m.correct.astype(np.float64), m.tokens, m.samples.astype(np.float64)])
    return stack.reshape(3, n_orderings, -1).mean(axis=1)


#: elements of one chunk of bootstrap draws (about 8 MB of int64): weights are drawn and applied in
#: chunks of resamples so that memory stays linear in the problems, not n_boot times them
_BOOT_CHUNK = 1 << 20


def _weight_chunks(n_problems: int, n_boot: int, seed: int):
    """Yield (first resample, int64 counts [c, P]) chunk by chunk: how often each problem is drawn in each
    bootstrap resample (seeded; the random stream, hence every weight, is that of one
    ``integers(0, P, size=(n_boot, P))`` draw)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB007]))
    step = max(1, _BOOT_CHUNK // max(n_problems, 1))
    for s in range(0, n_boot, step):
        c = min(step, n_boot - s)
        idx = rng.integers(0, n_problems, size=(c, n_problems))
        idx += (np.arange(c, dtype=np.int64) * n_problems)[:, None]
        yield s, np.bincount(idx.ravel(), minlength=c * n_problems).reshape(c, n_problems)


class LazyBootstrapWeights:
    """The weights of :func:`bootstrap_weights` without storing them: :func:`bootstrap_ci` draws them again,
    chunk by chunk, on each use (same numbers; memory of one chunk instead of n_boot x P)."""

    def __init__(self, n_problems: int, n_boot: int = 1000, seed: int = 0):
        self.shape = (int(n_boot), int(n_problems))
        self.seed = int(seed)

    def chunks(self):
        return _weight_chunks(self.shape[1], self.shape[0], self.seed)

    def __array__(self, dtype=None, copy=None):
        return bootstrap_weights(self.shape[1], self.shape[0], self.seed).astype(dtype or np.uint8)


def bootstrap_weights(n_problems: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """uint8[n_boot, P] (uint16 if some count exceeds 255): how often each problem is drawn in each
    bootstrap resample (seeded). Drawn in chunks of resamples; the random stream, hence every weight, is
    the same as one ``integers(0, P, size=(n_boot, P))`` draw."""
    out = np.zeros((n_boot, n_problems), dtype=np.uint8)
    for s, counts in _weight_chunks(n_problems, n_boot, seed):
        if counts.size and counts.max() > np.iinfo(out.dtype).max:
            out = out.astype(np.uint16)
        out[s:s + counts.shape[0]] = counts
    return out


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over problems (last axis of ``values``), vectorized.

    Returns (mean, low, high) with the leading shape of ``values``. ``weights`` (from
    :func:`bootstrap_weights`) lets several statistics share the same resamples.
    """
    v = np.asarray(values, dtype=np.float64)
    P = v.shape[-1]
    if P == 0:
        nan = np.full(v.shape[:-1], np.nan)
        return nan, nan, nan
    W = bootstrap_weights(P, n_boot, seed) if weights is None else weights
    flat = v.reshape(-1, P)
    means = np.empty((flat.shape[0], W.shape[0]))  # [K, n_boot], in chunks of resamples
    if isinstance(W, LazyBootstrapWeights):
        for s, counts in W.chunks():
            means[:, s:s + counts.shape[0]] = flat @ counts.T.astype(np.float64)
    else:
        step = max(1, _BOOT_CHUNK // P)
        for s in range(0, W.shape[0], step):
            means[:, s:s + step] = flat @ W[s:s + step].T.astype(np.float64)
    means /= P
    q = (1.0 - level) / 2.0
    low, high = np.quantile(means, [q, 1.0 - q], axis=1)
    shape = v.shape[:-1]
    return v.mean(axis=-1), low.reshape(shape), high.reshape(shape)


# ================================================================================================ splits
def cross_fit_splits(n_problems: int, folds: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K seeded (calib, test) splits whose test parts partition the problems (each sorted): run
    :func:`evaluate` once per split (``calib_problems=calib``) and every problem is held out exactly once,
    tuned on the other K - 1 folds; a mean over all problems is then the fold-size-weighted mean of the
    folds' test means."""
    K = _check_int("folds", folds, 2)
    if n_problems < K:
        raise ParameterError("folds", f"{K} folds need at least {K} problems, the pool has {n_problems}")
    return _folds(n_problems, K, seed, 0xC5F1)


def _folds(n: int, K: int, seed: int, salt: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(the other positions, fold f's positions)] for K seeded folds of range(n) (a permutation seeded by
    ``seed`` and ``salt``, dealt round-robin), each sorted."""
    perm = np.random.default_rng(np.random.SeedSequence([int(seed), salt])).permutation(n)
    parts = [np.sort(perm[f::K]) for f in range(K)]
    return [(np.setdiff1d(np.arange(n), part), part) for part in parts]


def split_problems(n_problems: int, calib_frac: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seeded disjoint (calib, test) problem indices, each sorted; ``round(calib_frac * P)`` calibration
    problems, at least one in each split."""
    if not (0.0 < calib_frac < 1.0):
        raise ParameterError("calib_frac", f"must be in (0, 1), got {calib_frac!r}")
    if n_problems < 2:
        raise ParameterError("calib_frac", f"a calibration split needs >= 2 problems, the pool has {n_problems}")
    n_cal = int(min(max(round(calib_frac * n_problems), 1), n_problems - 1))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xCA1B]))
    p = rng.permutation(n_problems)
    return np.sort(p[:n_cal]), np.sort(p[n_cal:])


# ================================================================================================ policies
def _parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name:key=val,..."`` -> (name, params), with the policies' own parser."""
    return _policies().parse_spec(spec)


def _make(name: str, params: Mapping[str, Any]):
    try:
        return _policies().make_policy(name, **dict(params))
    except OptScaleError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ParameterError("methods", f"cannot build method {name!r} with {dict(params)}: {exc}") from None


def _needs_prior(policy, name: str) -> bool:
    v = getattr(policy, "needs_prior", None)
    if v is None:
        v = getattr(policy, "needs_priors", None)
    if v is None:
        v = name.startswith("optscalet")
    return bool(v)


def _policy_params(pol, given: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters defining a policy (its ``params()``, None values dropped), else those given."""
    try:
        return {k: v for k, v in pol.params().items() if v is not None}
    except Exception:  # a duck-typed policy without params()
        return dict(given)


def _kind(name: str) -> str:
    return KIND_FIXED if name in FIXED_METHODS else KIND_ADAPTIVE


#: rows per replay block (whole orderings): a replay's temporaries grow with the block, not the batch
_ROW_CHUNK = 1 << 15


def _row_blocks(prep: Prepared, rows: np.ndarray) -> list[np.ndarray]:
    """``rows`` cut into consecutive blocks of whole orderings (each block at least ``_ROW_CHUNK`` rows but
    the last), so that replaying block by block equals one replay (policies are row-independent except
    DSC, which works per ordering group); one block when the rows are few or an ordering is not one run."""
    if rows.shape[0] <= _ROW_CHUNK:
        return [rows]
    g = prep.ordering_of(rows)
    cuts = np.flatnonzero(g[1:] != g[:-1]) + 1
    if np.unique(g).size != cuts.size + 1:
        return [rows]
    blocks, start = [], 0
    for c in cuts:
        if c - start >= _ROW_CHUNK:
            blocks.append(rows[start:c])
            start = int(c)
    blocks.append(rows[start:])
    return blocks


def _concat_metrics(parts: list[RowMetrics]) -> RowMetrics:
    if len(parts) == 1:
        return parts[0]
    return RowMetrics(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("correct", "tokens", "samples")))


def _replay(prep: Prepared, rows: np.ndarray, policy, name: str, n_max: int, _cache: dict | None = None):
    parts = []
    for blk in _row_blocks(prep, rows):
        sub = prep.sub(blk)
        res = policy.replay(sub, int(n_max))
        nd, sel = _check_result(name, res, sub)
        parts.append(_metrics(prep, blk, nd, sel))
    return _concat_metrics(parts)


# ================================================================================================ oracle
def oracle_costs(prep: Prepared, rows: np.ndarray, budgets: Sequence[int], reference) -> dict[int, RowMetrics]:
    """Clairvoyant lower bound per budget: per row, the smallest prefix n <= N_max whose ``reference``
    pick has the same correctness as the reference at N_max; its tokens and n (accuracy = reference's)."""
    budgets = sorted({int(b) for b in budgets})
    top = budgets[-1]
    corr = np.zeros((top, rows.shape[0]), dtype=bool)
    drawn = np.zeros((top, rows.shape[0]), dtype=np.int64)
    for n in range(1, top + 1):
        m = _replay(prep, rows, reference, getattr(reference, "name", "reference"), n)  # in row blocks
        corr[n - 1] = m.correct
        drawn[n - 1] = m.samples
    out = {}
    for b in budgets:
        target = corr[b - 1]
        first = np.argmax(corr[:b] == target[None, :], axis=0)  # always found: prefix b matches itself
        nd = drawn[first, np.arange(rows.shape[0])]
        out[b] = RowMetrics(correct=target.copy(), tokens=prep.tokens_at(rows, nd), samples=nd)
    return out


# ================================================================================================ engine
class _RowSink:
    """Collects rows and computes their bootstrap intervals at the end, in one matrix product per set of
    bootstrap weights (one small product per row costs far more than one large one)."""

    def __init__(self) -> None:
        self._pending: list[tuple[dict[str, Any], np.ndarray, np.ndarray, float]] = []

    def add(self, method, label, params, budget, split, kind, pp: np.ndarray, W: np.ndarray, n_orderings: int,
            level: float) -> None:
        meta = dict(method=method, label=label, params=dict(params), budget=int(budget), split=split, kind=kind,
                    n_problems=int(pp.shape[1]), n_orderings=int(n_orderings))
        self._pending.append((meta, pp, W, level))

    def finish(self) -> list[EvalRow]:
        out: list[EvalRow | None] = [None] * len(self._pending)
        groups: dict[tuple[int, float], list[int]] = {}
        for i, (_, _, W, level) in enumerate(self._pending):
            groups.setdefault((id(W), level), []).append(i)
        for (_, level), idx in groups.items():
            W = self._pending[idx[0]][2]
            stack = np.stack([self._pending[i][1] for i in idx])  # [K, 3, P]
            mean, low, high = bootstrap_ci(stack, weights=W, level=level)
            for j, i in enumerate(idx):
                meta = self._pending[i][0]
                out[i] = EvalRow(
                    **{k: meta[k] for k in ("method", "label", "params", "budget", "split", "kind")},
                    accuracy=float(mean[j, 0]), acc_ci_low=float(low[j, 0]), acc_ci_high=float(high[j, 0]),
                    tokens=float(mean[j, 1]), tok_ci_low=float(low[j, 1]), tok_ci_high=float(high[j, 1]),
                    samples=float(mean[j, 2]), samples_ci_low=float(low[j, 2]), samples_ci_high=float(high[j, 2]),
                    n_problems=meta["n_problems"], n_orderings=meta["n_orderings"],
                )
        self._pending = []
        return [r for r in out if r is not None]


def _grid(grid: Mapping[str, Iterable]) -> list[dict[str, Any]]:
    keys = list(grid)
    vals = [list(grid[k]) for k in keys]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*vals)]


def paired_lower(correct: Iterable[Any], ref_correct: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray]:
    """(mean, lower) of the paired per-problem difference to the reference, one value per grid point.

    ``correct``: per grid point, the per-problem correctness ([P] floats, each averaged over the orderings;
    any iterable, consumed one point at a time, e.g. a generator over the compact tuning table);
    ``ref_correct``: the reference's ([P], the same problems and orderings). With d_p = correct_p -
    ref_correct_p, ``mean`` = mean(d) and ``lower`` = mean(d) - z * SE(d), SE(d) = sd(d) / sqrt(P) (sd with
    ddof = 1; 0 for P = 1). Pairing removes the problems' shared difficulty from the error: SE(d) is the
    uncertainty of the rule's accuracy *relative to* the reference. Vectorized over problems, one grid
    point at a time (no grid x problems float64 table besides the tuning table itself)."""
    r = np.asarray(ref_correct, dtype=np.float64)
    P = r.shape[0]
    means, sds = [], []
    for c in correct:
        d = np.asarray(c, dtype=np.float64) - r
        means.append(d.mean() if P else 0.0)
        sds.append(d.std(ddof=1) if P > 1 else 0.0)
    mean, sd = np.asarray(means, dtype=np.float64), np.asarray(sds, dtype=np.float64)
    return mean, mean - float(z) * sd / math.sqrt(max(P, 1))


def _choose(acc: np.ndarray, tok: np.ndarray, ref_acc: float, ref_tok: float, select: str,
            tolerance: float, token_penalty: float, lower: np.ndarray | None = None) -> int:
    """Index of the chosen grid point (see module docstring for the rules). ``lower``: the paired lower
    bound of each point's accuracy minus the reference's (:func:`paired_lower`); None = acc - ref_acc."""
    if select == "match":
        ok = (acc - ref_acc if lower is None else lower) >= -tolerance - 1e-12
        if ok.any():
            cand = np.flatnonzero(ok)
            return int(cand[np.lexsort((-acc[cand], tok[cand]))[0]])
        return int(np.lexsort((tok, -acc))[0])
    if select == "penalty":
        score = acc - token_penalty * tok / max(ref_tok, 1e-12)
        return int(np.lexsort((tok, -score))[0])
    raise ParameterError("select", f"must be 'match' or 'penalty', got {select!r}")


def _out_of_fold_gain_models(prep: Prepared, calib: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, Any]]:
    """[(positions in ``calib`` of one fold, GainModel fitted on the other folds' rows)], ``folds`` seeded
    folds of the calibration problems; [] when ``folds`` < 2 or a fold's complement would be too small to
    learn from (fewer than 2 problems)."""
    Pc = calib.shape[0]
    K = min(int(folds), Pc)
    if K < 2 or Pc - (-(-Pc // K)) < 2:
        return []
    out = []
    for rest, pos in _folds(Pc, K, seed, 0xF01D):
        rows = prep.rows_of(calib[rest])
        out.append((pos, _policies().GainModel.fit(prep.sub(rows), prep.sample_correct[rows])))
    return out


def _out_of_fold_metrics(prep: Prepared, calib: np.ndarray, oof_models: list[tuple[np.ndarray, Any]], name: str,
                         grid: list[dict[str, Any]], budgets: Sequence[int], fast: bool, n_ord: int) -> dict:
    """The tuning table of :func:`_grid_metrics` (``reduce=n_ord``: per-problem [3, Pc] in ``calib``'s order)
    with each calibration fold replayed under the gain model fitted without it (cross-fitting)."""
    out: dict = {}
    for pos, model in oof_models:
        part = _grid_metrics(prep, prep.rows_of(calib[pos]), name, [{**g, "model": model} for g in grid], budgets,
                             fast=fast, reduce=n_ord)
        for key, v in part.items():
            if key not in out:
                out[key] = np.zeros((3, calib.shape[0]))
            out[key][:, pos] = np.asarray(v, dtype=np.float64)
    return out


def default_budgets(max_samples: int) -> list[int]:
    """Powers of two from 8 below ``max_samples``, then ``max_samples`` itself."""
    out = [b for b in (8, 16, 32, 64, 128, 256, 512) if b < max_samples]
    return out + [int(max_samples)]


def evaluate(
    arrays,
    methods: Sequence[str],
    budgets: Sequence[int] | None = None,
    *,
    config: EvalConfig | None = None,
    priors: np.ndarray | None = None,
    difficulty: np.ndarray | None = None,
    progress: Callable[[str, int], None] | None = None,
    **settings: Any,
) -> EvalReport:
    """Replay ``methods`` x budgets over ``arrays`` (a :class:`~optscale.pool.PoolArrays`) under ``config``.

    ``config``: an :class:`EvalConfig` (default ``EvalConfig()``); keyword ``settings`` (any EvalConfig
    field, e.g. ``orderings=3, tune=False``) and a positional ``budgets`` override it (the keyword path).
    ``methods``: policy specs for :func:`optscale.policies.make_policy` (``"optscale0"``,
    ``"esc:window=4"``, ...). A method given without explicit parameters that has a tuning grid
    (``config.grids``, default :data:`DEFAULT_GRIDS`) is tuned per budget on the calibration split when
    ``config.tune`` is true, and every row is then reported on the held-out split. ``priors``: float[P, 2|4]
    for OptScale^t (e.g. from :func:`load_priors` or ``optscale.predictor``); ``difficulty``: float[P]
    (higher = harder) for DSC; when DSC is asked for without it, -mu0 of the priors is used, else
    :func:`difficulty_proxy` (noted in ``meta["difficulty"]``).
    ``progress(method, budget)`` is called after each (method, budget). Returns an :class:`EvalReport`.
    """
    if budgets is not None:
        settings["budgets"] = budgets
    cfg = _config(config, settings)
    P, M = np.asarray(arrays.answers).shape
    budgets = _check_budgets(default_budgets(M) if cfg.budgets is None else cfg.budgets, M)
    if not methods:
        raise ParameterError("methods", "no method given")
    orderings, seed, calib_frac, tune = cfg.orderings, cfg.seed, cfg.calib_frac, cfg.tune
    select, tolerance, token_penalty, margin_z = cfg.select, cfg.tolerance, cfg.token_penalty, cfg.margin_z
    oracle, ordering_mode, n_boot, level = cfg.oracle, cfg.ordering_mode, cfg.n_boot, cfg.level
    include_calib, fast, grids = cfg.include_calib, cfg.fast, cfg.grids
    grids = dict(DEFAULT_GRIDS if grids is None else grids)
    arrays, cost_unit = _cost_arrays(arrays)

    difficulty, difficulty_source = _resolve_difficulty(arrays, difficulty, priors, methods)
    prep = build_batch(arrays, orderings=orderings, seed=seed, ordering_mode=ordering_mode, priors=priors,
                       difficulty=difficulty)
    specs = [_parse_spec(m) if isinstance(m, str) else (getattr(m, "name", "policy"), {}) for m in methods]

    def tunable_spec(name: str, params: Mapping[str, Any]) -> bool:
        """Tuned: a method with a grid none of whose keys is given (other given parameters stay fixed)."""
        return tune and name in grids and not set(params) & set(grids[name])

    tuned_any = any(tunable_spec(name, params) for name, params in specs)
    if cfg.calib_problems is not None:
        calib = np.asarray(cfg.calib_problems, dtype=np.int64)
        if calib[-1] >= P or calib.size >= P:
            raise ParameterError("calib_problems", f"must be indices below the pool's {P} problems and leave at "
                                                   f"least one for the test split, got {calib.size} up to {calib[-1]}")
        test = np.setdiff1d(np.arange(P), calib)
        report_split, report_problems = SPLIT_TEST, test
    elif tuned_any:
        calib, test = split_problems(P, calib_frac, seed)
        report_split, report_problems = SPLIT_TEST, test
    else:
        calib, test = None, None
        report_split, report_problems = SPLIT_ALL, np.arange(P)
    rows_rep = prep.rows_of(report_problems)
    W_rep = LazyBootstrapWeights(report_problems.shape[0], n_boot, seed)
    rows_cal = prep.rows_of(calib) if calib is not None else None
    W_cal = LazyBootstrapWeights(calib.shape[0], n_boot, seed) if calib is not None else None
    n_ord = prep.n_orderings

    # learned parts of the issue-#8 rules, from the calibration split (all problems when untuned: noted)
    learn_rows = rows_cal if rows_cal is not None else prep.rows_of(None)
    learn_note = "calibration split" if rows_cal is not None else "all problems (no calibration split: not held-out)"
    extras_meta: dict[str, Any] = {}
    gain_model = None
    oof_models: list[tuple[np.ndarray, Any]] | None = None  # (calibration positions, model fitted without them)

    def fits_gain(name: str, params: Mapping[str, Any]) -> bool:
        """A gain rule without a given model: evaluate fits its gain model on the calibration split."""
        return name in GAIN_METHODS and "model" not in params

    if prep.has_scores and any(fits_gain(name, params) for name, params in specs):
        gain_model = _policies().GainModel.fit(prep.sub(learn_rows), prep.sample_correct[learn_rows])
        extras_meta["gain_model"] = {"tag": gain_model.tag, "fitted_on": learn_note, **gain_model.meta}
        if calib is not None and any(fits_gain(name, params) and tunable_spec(name, params) for name, params in specs):
            oof_models = _out_of_fold_gain_models(prep, calib, cfg.tune_folds, seed)
            extras_meta["gain_model"]["tuning"] = (
                f"out of fold ({len(oof_models)} folds of the calibration split)" if oof_models else
                "in-sample (tune_folds = 1 or too few calibration problems)")
    chosen_model = None
    if prep.has_scores and any(name in POSTERIOR_METHODS and params.get("model", "auto") == "auto"
                               for name, params in specs):
        learn_p = calib if calib is not None else np.arange(P)
        chosen_model, extras_meta["score_models"] = choose_score_model(
            arrays, learn_p, priors=None, note=learn_note)

    def with_extras(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(params)
        if fits_gain(name, out):
            out["model"] = gain_model
        if name in POSTERIOR_METHODS and out.get("model", "auto") == "auto":
            out["model"] = chosen_model
        return out

    policies = {}
    for m, (name, params) in zip(methods, specs, strict=True):
        pol = _make(name, with_extras(name, params)) if isinstance(m, str) else m
        _check_method(prep, pol, name, priors)
        policies[m if isinstance(m, str) else id(m)] = pol

    report = EvalReport(meta={
        "cost": cost_unit,
        "problems": int(P), "max_samples": int(M), "orderings": int(n_ord), "ordering_mode": ordering_mode,
        "seed": int(seed), "budgets": list(budgets), "methods": [str(m) for m in methods],
        "split": report_split,
        "calib_frac": calib_frac if tuned_any and cfg.calib_problems is None else None,
        "calib_problems": calib.tolist() if calib is not None else None,
        "test_problems": test.tolist() if test is not None else None,
        "selection": (f"{select} (tolerance {tolerance}, margin_z {margin_z})" if select == "match" else
                      f"{select} (token_penalty {token_penalty})") if tuned_any else None,
        "n_boot": n_boot, "level": level, "tuned": {}, "difficulty": difficulty_source,
        "coverage": [], **extras_meta,
    })
    cov_claims: dict[str, tuple[str, dict[str, Any]]] = {}  # label -> (name, params) for the reliability grid

    sink = _RowSink()
    ref_cache: dict[tuple[str, str, int], RowMetrics] = {}

    def reference(name: str, split_rows: np.ndarray, tag: str, b: int) -> RowMetrics:
        key = (name, tag, b)
        if key not in ref_cache:
            ref_cache[key] = _replay(prep, split_rows, _make(name, {}), name, b)
        return ref_cache[key]

    prep_pool_order = None
    for m, (name, params) in zip(methods, specs, strict=True):
        pol = policies[m if isinstance(m, str) else id(m)]
        display = getattr(pol, "display", name) + (" seq" if getattr(pol, "mode", None) == "sequential" else "")
        label = str(m) if (params or not isinstance(m, str)) else display
        tunable = tunable_spec(name, params)
        if tunable:
            fixed = with_extras(name, params)
            grid = [{**g, **fixed} for g in _grid(grids[name])]
            # {(gi, b): per-problem [3, Pc]}, reduced as computed (memory: grid x problems, not x rows)
            if oof_models and fits_gain(name, params):
                cal = _out_of_fold_metrics(prep, calib, oof_models, name, grid, budgets, fast, n_ord)
            else:
                cal = _grid_metrics(prep, rows_cal, name, grid, budgets, fast=fast, reduce=n_ord)
            cp = _COUNTERPART.get(name, "bon" if prep.has_scores else "sc")
            for b in budgets:
                pps = [cal[(gi, b)] for gi in range(len(grid))]  # G x [3, Pc] (or compact _ProblemSums)
                acc = np.array([pp[0].mean() for pp in pps])
                tok = np.array([pp[1].mean() for pp in pps])
                ref = _per_problem(reference(cp, rows_cal, "calib", b), n_ord)
                _, lower = paired_lower((pp[0] for pp in pps), ref[0], margin_z)  # one point at a time
                gi = _choose(acc, tok, float(ref[0].mean()), float(ref[1].mean()), select, tolerance,
                             token_penalty, lower=lower)
                chosen = grid[gi]
                report.meta["tuned"].setdefault(str(m) if isinstance(m, str) else label, {})[str(b)] = {
                    "params": {k: getattr(v, "tag", v) for k, v in chosen.items()}, "calib_accuracy": float(acc[gi]), "calib_tokens": float(tok[gi]),
                    "calib_lower": float(lower[gi]),
                    "reference": cp, "reference_calib_accuracy": float(ref[0].mean()),
                    "reference_calib_tokens": float(ref[1].mean()), "grid_size": len(grid),
                }
                if include_calib:
                    sink.add(name, f"{label} (tuned)", chosen, b, SPLIT_CALIB, KIND_ADAPTIVE, np.asarray(pps[gi]), W_cal,
                             n_ord, level)
                pol_b = _make(name, chosen)
                mt = _replay(prep, rows_rep, pol_b, name, b)
                sink.add(name, f"{label} (tuned)", _policy_params(pol_b, chosen), b, report_split, KIND_ADAPTIVE,
                         _per_problem(mt, n_ord), W_rep, n_ord, level)
                if _claims_guarantee(pol_b):
                    report.meta["coverage"].append(_coverage(prep, rows_rep, pol_b, f"{label} (tuned)", b, mt,
                                                             report_split))
                    cov_claims[f"{label} (tuned)"] = (name, {k: v for k, v in chosen.items()
                                                             if k not in ("target", "alpha")})
                if progress:
                    progress(label, b)
            del cal, pps  # the grid x problems table is not needed past tuning
        elif name in POOL_ORDER_ONLY:
            # sequential rounds: only the pool's own order is meaningful (a permutation scrambles the rounds)
            if prep_pool_order is None:
                prep_pool_order = build_batch(arrays, orderings=0, seed=seed, ordering_mode=ordering_mode,
                                              priors=priors, difficulty=difficulty)
            rows0 = prep_pool_order.rows_of(report_problems)
            for b in budgets:
                mt = _replay(prep_pool_order, rows0, pol, name, b)
                sink.add(name, label, _policy_params(pol, params), b, report_split, _kind(name),
                         _per_problem(mt, 1), W_rep, 1, level)
                if progress:
                    progress(label, b)
        else:
            for b in budgets:
                mt = _replay(prep, rows_rep, pol, name, b)
                sink.add(name, label, _policy_params(pol, params), b, report_split, _kind(name),
                         _per_problem(mt, n_ord), W_rep, n_ord, level)
                if _claims_guarantee(pol):
                    report.meta["coverage"].append(_coverage(prep, rows_rep, pol, label, b, mt, report_split))
                    cov_claims[label] = (name, {k: v for k, v in with_extras(name, params).items()
                                                if k not in ("target", "alpha")})
                if progress:
                    progress(label, b)

    if oracle:
        ref_name = "bon" if prep.has_scores else "sc"
        orc = oracle_costs(prep, rows_rep, budgets, _make(ref_name, {}))
        for b in budgets:
            sink.add("oracle", f"oracle ({ref_name}, clairvoyant stop)", {"reference": ref_name},
                     b, report_split, KIND_ORACLE, _per_problem(orc[b], n_ord), W_rep, n_ord, level)
        if progress:
            progress("oracle", budgets[-1])
    if cfg.coverage and cov_claims and prep.has_scores:
        # s* on the pool's own scale: quantiles of the calibration problems' scores (all problems untuned)
        learn_scores = np.asarray(arrays.scores, dtype=np.float64)[calib if calib is not None else np.arange(P)]
        learn_scores = learn_scores[~np.isnan(learn_scores)]
        rel_targets = tuple(sorted({round(float(t), 4) for t in np.quantile(learn_scores, RELIABILITY_QUANTILES)
                                    if 0.0 < round(float(t), 4) < 1.0})) or RELIABILITY_TARGETS
        report.meta["reliability"] = {
            lab: reliability_grid(prep, rows_rep, name, fixed, budgets[-1], targets=rel_targets, fast=fast)
            for lab, (name, fixed) in cov_claims.items()}
        report.meta["reliability_budget"] = budgets[-1]
        report.meta["reliability_targets"] = list(rel_targets)
    if cov_claims:  # one verdict per claiming rule: its reported rows + the reliability grid (when measured)
        rel = report.meta.get("reliability") or {}
        report.meta["guarantees"] = {}
        for lab in cov_claims:
            rows_c = [c for c in report.meta["coverage"] if c["label"] == lab]
            v = guarantee_verdict(rows_c + list(rel.get(lab, [])))
            report.meta["guarantees"][lab] = {
                "guarantee": rows_c[0]["guarantee"], "method": rows_c[0]["method"], **v,
                "basis": "reported rows" + (f" + reliability grid at N_max = {budgets[-1]}" if lab in rel else "")}
    report.rows.extend(sink.finish())
    report.mark_pareto()
    report.gain_model = gain_model  # type: ignore[attr-defined]  # the fitted GainModel (CLI saves it)
    return report


# ================================================================================================ coverage
#: a promise is kept at a point iff achieved >= promised - GUARANTEE_SLACK (issue #8's criterion)
GUARANTEE_SLACK = 0.02
#: what each kind of guarantee means (coverage.md, the CLI, the plot)
GUARANTEE_MEANING = {
    "plug-in": "the paper's claim: holds only if the law fitted to the warm-up scores were exact",
    "posterior": "optscale's guarantee: under the posterior predictive given the warm-up scores",
}


def guarantee_of(pol) -> str:
    """The policy's declared ``guarantee`` (:data:`optscale.policies.GUARANTEES`; "none" for a duck-typed
    policy without one). A claiming rule must have ``target`` and ``alpha``."""
    from optscale.policies import GUARANTEES

    kind = getattr(pol, "guarantee", "none")
    if kind not in GUARANTEES:
        raise ParameterError("methods", f"policy {getattr(pol, 'name', pol)!r} declares guarantee {kind!r}; "
                                        f"valid: {', '.join(GUARANTEES)}")
    if kind != "none" and not all(hasattr(pol, a) for a in ("target", "alpha")):
        raise ParameterError("methods", f"policy {getattr(pol, 'name', pol)!r} claims a {kind} guarantee but "
                                        "has no target/alpha")
    return kind


def _claims_guarantee(pol) -> bool:
    """Rules declaring a guarantee (plug-in or posterior) promise P(best of N >= s*) >= 1 - alpha."""
    return guarantee_of(pol) != "none"


def guarantee_verdict(points: Iterable[Mapping[str, Any]], slack: float = GUARANTEE_SLACK) -> dict[str, Any]:
    """Whether a rule kept its promise over ``points`` (dicts with ``promised`` = 1 - alpha and ``achieved``
    coverage, as :func:`coverage_of` / :func:`reliability_grid` give; ``target``/``alpha`` when known).

    A point is checked when some run stopped early (``achieved`` finite: a run that went to N_max promised
    nothing) and missed iff ``achieved < promised - slack``. Returns ``verdict`` ("kept": no checked point
    missed; "missed"; "unchecked": no point checked), ``checked``, ``missed``, ``points``, ``min_margin``
    (smallest achieved - promised) and ``worst`` (that point), ``slack``."""
    pts = list(points)
    checked = [p for p in pts if p["achieved"] is not None and math.isfinite(float(p["achieved"]))]  # None: NaN in JSON
    margins = np.array([float(p["achieved"]) - float(p["promised"]) for p in checked])
    missed = int(np.count_nonzero(margins < -slack - 1e-12))
    worst = None
    if checked:
        w = checked[int(np.argmin(margins))]
        worst = {k: float(w[k]) for k in ("target", "alpha", "promised", "achieved") if k in w}
    return {"verdict": "unchecked" if not checked else "missed" if missed else "kept", "checked": len(checked),
            "missed": missed, "points": len(pts), "min_margin": float(margins.min()) if checked else float("nan"),
            "worst": worst, "slack": float(slack)}


def guarantee_lines(report: EvalReport) -> list[str]:
    """One line per rule claiming the guarantee: its kind and whether it kept its promise
    (``meta["guarantees"]``)."""
    out = []
    for lab, g in (report.meta.get("guarantees") or {}).items():
        head = f"{lab}: {g['guarantee']} guarantee ({GUARANTEE_MEANING.get(g['guarantee'], '')})"
        w = g.get("worst") or {}
        at = (f"s* = {w['target']:g}, alpha = {w['alpha']:g}: " if "target" in w and "alpha" in w else "")
        if g["verdict"] == "kept":
            out.append(f"{head}: KEPT at all {g['checked']} checked points (achieved >= 1 - alpha - "
                       f"{g['slack']:g}; smallest margin {g['min_margin']:+.3f})")
        elif g["verdict"] == "missed":
            out.append(f"{head}: MISSED at {g['missed']} of {g['checked']} checked points (worst: {at}"
                       f"{w['achieved']:.3f} achieved for {w['promised']:.3f} promised)")
        else:
            out.append(f"{head}: unchecked (no run stopped before N_max)")
    return out


def _best_drawn(prep: Prepared, rows: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """float64[R]: the best score among the first ``samples[i]`` draws of row ``rows[i]`` (-inf for none
    drawn or all unscored), in chunks of rows (no [B, M + 1] prefix table is kept)."""
    rows = np.asarray(rows, dtype=np.int64)
    samples = np.asarray(samples, dtype=np.int64)
    out = np.full(rows.shape[0], -np.inf)
    M = prep.max_samples
    if M == 0:
        return out
    ar = np.arange(M)
    for s in range(0, rows.shape[0], _ROW_CHUNK):
        sc = prep.scores_of(rows[s:s + _ROW_CHUNK])
        drawn = (ar[None, :] < samples[s:s + _ROW_CHUNK, None]) & ~np.isnan(sc)
        out[s:s + _ROW_CHUNK] = np.where(drawn, sc, -np.inf).max(axis=1)
    return out


def coverage_of(prep: Prepared, rows: np.ndarray, target: float, budget: int, samples: np.ndarray) -> dict[str, float]:
    """Coverage of the guarantee on ``rows`` given each run's draws: among the runs that stopped before
    their budget min(N_max, n) (the rule's own decision, not the cap), the share whose best drawn score is
    >= s*; ``stopped`` = the share of runs that stopped before the budget (the runs the promise is about);
    ``reached`` = the share of ALL runs whose best drawn score is >= s*."""
    samples = np.asarray(samples, dtype=np.int64)
    cap = np.minimum(prep.n_of(rows), int(budget))
    best = _best_drawn(prep, rows, samples)
    hit = best >= target
    stopped = samples < cap
    return {"achieved": float(hit[stopped].mean()) if stopped.any() else float("nan"),
            "stopped": float(stopped.mean()), "reached": float(hit.mean()), "runs": int(rows.shape[0])}


def _coverage(prep: Prepared, rows: np.ndarray, pol, label: str, budget: int, mt: RowMetrics,
              split: str) -> dict[str, Any]:
    c = coverage_of(prep, rows, float(pol.target), budget, mt.samples)
    promised = 1.0 - float(pol.alpha)
    v = guarantee_verdict([{"promised": promised, "achieved": c["achieved"]}])  # the one kept/missed rule
    kept = None if v["verdict"] == "unchecked" else v["verdict"] == "kept"
    return {"label": label, "method": getattr(pol, "key", ""), "guarantee": guarantee_of(pol), "budget": int(budget),
            "split": split, "target": float(pol.target), "alpha": float(pol.alpha), "promised": promised, **c,
            "kept": kept}


def reliability_grid(prep: Prepared, rows: np.ndarray, name: str, fixed: Mapping[str, Any], budget: int, *,
                     targets: Sequence[float] = RELIABILITY_TARGETS, alphas: Sequence[float] = RELIABILITY_ALPHAS,
                     fast: bool = True) -> list[dict[str, float]]:
    """Promised 1 - alpha vs achieved coverage (:func:`coverage_of`) of one rule over an (s*, alpha) grid at
    one budget on ``rows`` (other parameters ``fixed``)."""
    grid = [{**fixed, "target": t, "alpha": a} for t in targets for a in alphas]
    # block by block (whole orderings, as one replay): only the counts behind each share are kept, so memory
    # grows with one block x grid, not all rows x grid (the shares equal coverage_of's on all rows at once)
    counts = np.zeros((len(grid), 3), dtype=np.int64)  # (hit and stopped, stopped, hit)
    for blk in _row_blocks(prep, rows):
        res = _grid_metrics(prep, blk, name, grid, [int(budget)], fast=fast)
        for gi, g in enumerate(grid):
            samples = np.asarray(res.pop((gi, int(budget))).samples, dtype=np.int64)
            cap = np.minimum(prep.n_of(blk), int(budget))
            hit = _best_drawn(prep, blk, samples) >= g["target"]
            stopped = samples < cap
            counts[gi] += (int(np.count_nonzero(hit & stopped)), int(np.count_nonzero(stopped)),
                           int(np.count_nonzero(hit)))
        del res
    runs = int(rows.shape[0])
    out = []
    for gi, g in enumerate(grid):
        hs, st, ht = (int(x) for x in counts[gi])
        c = {"achieved": hs / st if st else float("nan"), "stopped": st / runs, "reached": ht / runs, "runs": runs}
        out.append({"target": float(g["target"]), "alpha": float(g["alpha"]), "promised": 1.0 - float(g["alpha"]),
                    **c})
    return out


def choose_score_model(arrays, problems: np.ndarray, *, k: int = 16, targets: Sequence[float] | None = None,
                       priors=None, note: str = "") -> tuple[str, dict[str, Any]]:
    """The score model for ``optscale-post*`` from held-out likelihood on ``problems``
    (:func:`optscale.theory_models.heldout_log_score`: fitted on each problem's first ``k`` scores, scored
    on its others). The density models (tn, beta) are compared by held-out log predictive density; the
    better one is then compared with the model-free exceedance model by the held-out log score of the
    event score >= s* (the only thing the bound uses; averaged over ``targets``, default the 50/75/90%
    quantiles of the problems' scores: s* on the pool's own scale). ``k`` is capped at half
    the pool's samples: the choice is about the law family, so it uses more scores than one warm-up."""
    from optscale import theory_models as tm

    scores = np.asarray(arrays.scores, dtype=np.float64)[np.asarray(problems)]
    k = int(min(k, max(1, int(np.asarray(arrays.n).max(initial=2)) // 2)))  # leave scores to hold out
    if targets is None:
        seen = scores[~np.isnan(scores)]
        targets = [float(t) for t in np.quantile(seen, (0.5, 0.75, 0.9))] if seen.size else [0.5]
    res = tm.heldout_log_score(scores, None, k=k, targets=targets, priors=priors)
    dens = max((m for m in res if "density" in res[m]), key=lambda m: res[m]["density"])
    chosen = dens if res[dens]["event"] >= res.get("exc", {"event": -np.inf})["event"] else "exc"
    return chosen, {"heldout": res, "chosen": chosen, "k": k, "targets": list(targets), "fitted_on": note,
                    "criterion": "tn vs beta: held-out log predictive density per score; the better vs exc: "
                                 "held-out log P(1[score >= s*]) per score (higher is better)"}


def coverage_markdown(report: EvalReport) -> str:
    """Markdown tables of the coverage of every rule that claims the guarantee, the reliability grid and
    the score-model choice (empty string when there is nothing to show)."""
    out = []
    cov = report.meta.get("coverage") or []
    if cov:
        out += ["### Coverage of P(best of N >= s*) >= 1 - alpha (runs that stopped before N_max)", "",
                "Guarantee kinds: plug-in = " + GUARANTEE_MEANING["plug-in"] + "; posterior = "
                + GUARANTEE_MEANING["posterior"] + f". Kept at a point: achieved >= promised - {GUARANTEE_SLACK:g}.",
                "", "| method | guarantee | N_max | split | s* | promised | achieved | kept | stopped early | "
                "best >= s* (all runs) |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in cov:
            kept = {True: "yes", False: "**no**", None: "n/a"}[c.get("kept")]
            out.append(f"| {c['label']} | {c.get('guarantee', '')} | {c['budget']} | {c['split']} | {c['target']:g} | "
                       f"{c['promised']:.3f} | {c['achieved']:.3f} | {kept} | {c['stopped']:.3f} | {c['reached']:.3f} |")
        out.append("")
    rel = report.meta.get("reliability") or {}
    for lab, pts in rel.items():
        v = guarantee_verdict(pts)
        out.append(f"Reliability of {lab} at N_max = {report.meta.get('reliability_budget')}: "
                   f"{v['checked']} (s*, alpha) points with early stops, {v['missed']} below promised - "
                   f"{GUARANTEE_SLACK:g}.")
    if rel:
        out.append("")
    lines = guarantee_lines(report)
    if lines:
        out += ["### Verdict per rule (reported rows and reliability grid)", ""] + [f"- {t}" for t in lines] + [""]
    sm = report.meta.get("score_models")
    if sm:
        out += [f"### Score models (held-out, {sm['fitted_on']}; chosen: {sm['chosen']})", "",
                "| model | event log score | density log-lik |", "|---|---|---|"]
        for m, v in sm["heldout"].items():
            d = v.get("density")
            out.append(f"| {m} | {v['event']:.4f} | {'' if d is None else f'{d:.4f}'} |")
        out.append("")
    return "\n".join(out)


def plot_reliability(report: EvalReport, path: str | Path, *, title: str | None = None) -> Path:
    """PNG: promised 1 - alpha vs achieved coverage over the reliability grid, one marker set per rule."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="promised = achieved")
    ax.plot([0, 1], [-GUARANTEE_SLACK, 1 - GUARANTEE_SLACK], color="grey", lw=0.8, ls=":",
            label=f"promised - {GUARANTEE_SLACK:g} (kept above)")
    verdicts = report.meta.get("guarantees") or {}
    for lab, pts in (report.meta.get("reliability") or {}).items():
        x = [p["promised"] for p in pts if np.isfinite(p["achieved"])]
        y = [p["achieved"] for p in pts if np.isfinite(p["achieved"])]
        g = verdicts.get(lab) or {"guarantee": "", **guarantee_verdict(pts)}
        tag = ("kept" if g["verdict"] == "kept" else f"missed {g['missed']}/{g['checked']}"
               if g["verdict"] == "missed" else "unchecked")
        ax.scatter(x, y, s=18, alpha=0.75, marker="x" if g["guarantee"] == "plug-in" else "o",
                   label=f"{lab} [{g['guarantee']}: {tag}]".replace("[: ", "["))
    ax.set_xlabel("promised 1 - alpha")
    ax.set_ylabel("achieved P(best >= s*) among early stops")
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title or f"reliability at N_max = {report.meta.get('reliability_budget')}")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


#: policies whose samples are sequential rounds: replayed in the pool's own order only
POOL_ORDER_ONLY = frozenset({"mr-thinking"})


def _cost_arrays(arrays):
    """``(arrays, cost unit)``. A pool without any token counts is costed in samples (each drawn sample
    costs 1, reported in the tokens columns and named in ``meta["cost"]``); a pool where only some samples
    have token counts cannot be costed and raises :class:`ParameterError`."""
    if getattr(arrays, "has_tokens", True):
        return arrays, "tokens"
    tokens = np.asarray(arrays.tokens, dtype=np.float64)
    n = np.asarray(arrays.n, dtype=np.int64)
    valid = np.arange(tokens.shape[1])[None, :] < n[:, None]
    if np.any(np.nan_to_num(tokens)[valid] != 0):
        raise ParameterError(
            "pool", "some samples have token counts and others have none: the cost of a policy would be "
            "wrong; give every sample a token count (or none, to count cost in samples)")
    return dataclasses.replace(arrays, tokens=valid.astype(np.float64)), "samples"


def _check_budgets(budgets: Sequence[int], M: int) -> list[int]:
    out = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1:
            raise ParameterError("budgets", f"each budget must be an integer >= 1, got {b!r}")
        if b > M:
            raise ParameterError("budgets", f"budget {b} exceeds the {M} samples per problem of the pool")
        out.append(int(b))
    if not out:
        raise ParameterError("budgets", "no budget given")
    return sorted(set(out))


def _check_method(prep: Prepared, pol, name: str, priors) -> None:
    if getattr(pol, "needs_scores", False) and not prep.has_scores:
        raise ParameterError("methods", f"method {name!r} needs verifier scores, but the pool has samples "
                                        "without a score")
    if _needs_prior(pol, name) and not prep.has_priors and getattr(pol, "prior", None) is None:
        raise ParameterError("methods", f"method {name!r} needs priors (mu0, sigma0) per problem: pass "
                                        "--priors FILE, put meta.prior in the pool, or use a predictor")


# ================================================================================================ grids
def _grid_metrics(prep: Prepared, rows: np.ndarray, name: str, grid: list[dict[str, Any]],
                  budgets: Sequence[int], *, fast: bool = True, reduce: int | None = None) -> dict:
    """RowMetrics of every (grid point, budget) on ``rows``: fast path for one-shot OptScale, else replay.
    With ``reduce`` (the number of orderings) each value is its ``_per_problem`` [3, P'] array instead,
    reduced as soon as it is computed, so that memory grows with grid x problems, not grid x rows."""
    if fast:
        blocks = _row_blocks(prep, rows)
        if len(blocks) == 1:
            res = _fast_optscale(prep, rows, name, grid, budgets, reduce=reduce)
        else:  # block by block (whole orderings): per-problem sums over orderings, or rows concatenated
            res, acc = None, None
            for blk in blocks:
                part = _fast_optscale(prep, blk, name, grid, budgets, reduce=-1 if reduce else None,
                                      into=acc if reduce else None, n_ord_total=reduce)  # sums added in place
                if part is None:
                    break
                if reduce:
                    acc = part
                elif acc is None:
                    acc = {k: [v] for k, v in part.items()}
                else:
                    for k, v in part.items():
                        acc[k].append(v)
            else:
                if reduce is None:
                    res = {k: _concat_metrics(v) for k, v in acc.items()}
                else:
                    for v in acc.values():
                        v.divisor = reduce  # read as means: one compact grid x problems table
                    res = acc
        if res is not None:
            return res
    out = {}
    for gi, params in enumerate(grid):
        pol = _make(name, params)
        for b in budgets:
            m = _replay(prep, rows, pol, name, b)
            out[(gi, b)] = m if reduce is None else _per_problem(m, reduce)
    return out


class _ProblemSums:
    """Per-problem sums over orderings of (correct, tokens, samples) for one grid point, compactly: the
    counts of correct runs and of samples are integers (exact in the smallest unsigned type holding
    ``n_orderings x max``), the tokens float64 (11 bytes per problem instead of 24). Read as the float64
    [3, P'] means (``np.asarray``, ``[i]``): the sums divided by ``divisor``, the same numbers as dividing
    float64 sums."""

    def __init__(self, n: int, n_orderings: int, n_max: int) -> None:
        self.correct = np.zeros(n, dtype=np.min_scalar_type(max(int(n_orderings), 1)))
        self.tokens = np.zeros(n, dtype=np.float64)
        self.samples = np.zeros(n, dtype=np.min_scalar_type(max(int(n_orderings) * int(n_max), 1)))
        self.divisor = 1
        self._started = False

    def add(self, sums: np.ndarray) -> None:
        """Add float64 [3, P'] sums (integer-valued correct and sample counts)."""
        if self._started:
            self.tokens += sums[1]
        else:
            self.tokens[:] = sums[1]
            self._started = True
        self.correct += sums[0].astype(self.correct.dtype)
        self.samples += sums[2].astype(self.samples.dtype)

    def __getitem__(self, i: int) -> np.ndarray:
        v = (self.correct, self.tokens, self.samples)[i]
        return v.astype(np.float64) / self.divisor

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.stack([self[i] for i in range(3)])
        return out if dtype is None else out.astype(dtype)


def best_picks(prep: Prepared) -> np.ndarray:
    """int[B, M + 1] (the smallest signed type holding -1..M-1): the Best-of-N pick after each prefix length n (column n; -1 for n = 0), computed
    once per batch with the policies' own selection rule (``policies.best_score``, every prefix at once by
    ``prefix_best_score``) so that a replay's ``selected`` equals ``picks[row, n_drawn]`` for every
    score-based Best-of-N selection."""
    cached = getattr(prep, "_best_picks", None)
    if cached is not None:
        return cached
    from optscale.policies import prefix_best_score

    B, M = prep.n_rows, prep.max_samples
    picks = np.full((B, M + 1), -1, dtype=np.int8 if M < 128 else np.int16 if M < 32768 else np.int64)  # -1..M-1
    for s in range(0, B, _ROW_CHUNK):  # row chunks of the batch, gathered on demand
        r = np.arange(s, min(s + _ROW_CHUNK, B))
        picks[r, 1:] = prefix_best_score(prep._take(prep.answers_p, r), prep.scores_of(r))
    prep._best_picks = picks  # type: ignore[attr-defined]
    return picks


_FAST_KEYS = {"target", "alpha", "k"}  # parameters a fast-path grid may vary
#: most elements of one [grid points, rows] array of the fast path (memory stays linear in the rows)
_GRID_CHUNK = 1 << 19


def _fast_optscale(prep: Prepared, rows: np.ndarray, name: str, grid: list[dict[str, Any]],
                   budgets: Sequence[int], *, reduce: int | None = None, into: dict | None = None,
                   n_ord_total: int | None = None) -> dict | None:
    """Grid x budgets of an OptScale policy (one-shot or sequential) in one pass, or None if the grid is
    not such a policy with only (target, alpha, k) varying.

    A fit on the first ``c`` scores of a row does not depend on (s*, alpha, N_max): the policy's own
    estimator (``_fit``) runs once per checkpoint ``c`` (one-shot: ``c = k' = min(k, N_max)``; sequential:
    every checkpoint ``k', k' + wave, ...``) over the rows having ``c`` samples, log F(s*) once per target;
    N* then follows for every (s*, alpha, N_max) at once, the draw counts follow the policy's rules exactly
    (``policy.replay``), and the selection is read from the precomputed Best-of-N prefix picks. Fits are
    row-independent, so the numbers equal ``policy.replay``'s (a test checks it).
    """
    from optscale import theory

    if not grid or not name.startswith("optscale"):
        return None
    others = [{k: v for k, v in p.items() if k not in _FAST_KEYS} for p in grid]
    if any(o != others[0] for o in others):
        return None
    pols = [_make(name, params) for params in grid]
    base = pols[0]
    if not all(hasattr(base, a) for a in ("fit_scores", "batch_priors", "mode", "target", "alpha", "k", "wave")):
        return None
    mode = base.mode
    if mode not in ("one-shot", "sequential") or any(
        type(p) is not type(base) or p.mode != mode or p.wave != base.wave for p in pols
    ):
        return None
    sub = prep.sub(rows)
    priors = base.batch_priors(sub)
    picks = best_picks(prep)[rows]
    sc_rows = prep.sample_correct[rows]
    cum = prep.cumtok_of(rows)
    R = rows.shape[0]
    ar = np.arange(R)
    k_ord = int(np.unique(prep.ordering_of(rows)).size) if reduce == -1 else 0
    targets = np.array([p.target for p in pols])
    alphas = np.array([p.alpha for p in pols])
    ks = np.array([p.k for p in pols])
    u_targets, t_index = np.unique(targets, return_inverse=True)
    fits: dict[int, tuple[np.ndarray, Any]] = {}
    posterior = hasattr(base, "posterior_state")  # PosteriorOptScale: N from a posterior state per target

    def fit_at(c: int) -> tuple[np.ndarray, Any]:
        """(rows with a finite fit on their first c scores, log F(s*) [T, those rows]); rows with fewer
        than c samples are never fitted at c by the policy (their budget is below c). Posterior rules:
        (rows with c samples, the policy's per-target state on their first c scores)."""
        if c not in fits and posterior:
            fit_rows = np.flatnonzero(sub.n >= c)
            fits[c] = (fit_rows, base.posterior_state(sub.scores[fit_rows, :c], None if priors is None else priors[fit_rows],
                                             u_targets) if fit_rows.size else None)
        if c not in fits:
            fit_rows = np.flatnonzero(sub.n >= c)
            good = np.zeros(0, dtype=np.int64)
            log_f = np.zeros((u_targets.size, 0))
            if fit_rows.size:
                scores = sub.scores[fit_rows, :c]
                mask = ~np.isnan(scores)
                mu, sigma = base.fit_scores(np.where(mask, scores, 0.0), mask, None if priors is None else priors[fit_rows])
                ok = np.isfinite(mu) & np.isfinite(sigma)
                good = fit_rows[ok]
                mu_ok, sg_ok = mu[ok], sigma[ok]
                step = max(1, _GRID_CHUNK // max(u_targets.size, 1))  # log-CDF temporaries stay small
                log_f = np.concatenate(
                    [theory.logcdf(u_targets[:, None], mu_ok[None, s:s + step], sg_ok[None, s:s + step])
                     for s in range(0, mu_ok.size, step)] or [np.zeros((u_targets.size, 0))], axis=1)
            fits[c] = (good, log_f)
        return fits[c]

    def n_star_at(c: int, gi: np.ndarray, b: int) -> np.ndarray:
        good, log_f = fit_at(c)
        ns = np.full((gi.size, R), b, dtype=np.int64)  # no finite fit: N* = N_max (as the policy)
        if posterior:
            if good.size:
                for j, g in enumerate(gi):
                    ns[j, good] = base.n_from_state(log_f[t_index[g]], float(alphas[g]), b)
            return ns
        if good.size:
            ns[:, good] = theory.n_star_from_logcdf(log_f[t_index[gi]], alphas[gi][:, None], b).n
        return ns

    out: dict[tuple[int, int], Any] = {} if into is None else into
    hits = None
    for b in budgets:
        b = int(b)
        budget = np.minimum(sub.n, b)
        kb = np.minimum(ks, b)
        step = max(1, _GRID_CHUNK // max(R, 1))  # grid points per pass: [G', R] arrays stay small
        for kk in np.unique(kb):
            kk = int(kk)
            for gi in np.array_split(np.flatnonzero(kb == kk), -(-int((kb == kk).sum()) // step)):
                nd = np.broadcast_to(budget, (gi.size, R)).copy()
                if mode == "one-shot":
                    fitted = budget >= kk  # <=> n >= k' (as N_max >= k')
                    ns = n_star_at(kk, gi, b)
                    nd = np.where(fitted[None, :], np.minimum(np.minimum(np.maximum(ns, kk), b), budget[None, :]),
                                  nd)
                else:
                    active = np.broadcast_to(budget >= kk, (gi.size, R)).copy()
                    c = kk
                    while active.any():
                        at_c = active & (budget >= c)[None, :]
                        if at_c.any():
                            stop = at_c & ((c >= n_star_at(c, gi, b)) | (c >= b))
                            nd[stop] = c
                            active &= ~stop
                        active &= (budget > c)[None, :]
                        if c >= b:
                            break
                        c = min(c + base.wave, b)
                if getattr(base, "early_stop", False):  # target reached = stop (same truncation as the policy)
                    if hits is None:
                        hits = _target_hits(sub, u_targets, sub.n)
                    nd = np.minimum(nd, np.minimum(hits[t_index[gi]] + 1, budget[None, :]))
                sel = picks[ar[None, :], nd]  # [G', R]
                ok_sel = sel >= 0
                corr = np.zeros(nd.shape, dtype=bool)
                corr[ok_sel] = sc_rows[np.broadcast_to(ar, nd.shape)[ok_sel], sel[ok_sel]]
                tok = cum[ar[None, :], nd]
                for j, g in enumerate(gi):
                    m = RowMetrics(correct=corr[j], tokens=tok[j], samples=nd[j])
                    if reduce is None:
                        out[(int(g), b)] = m
                    elif reduce == -1:  # per-problem sums over the block's orderings (rows are ordering-major)
                        sums = np.stack([m.correct.astype(np.float64), m.tokens,
                                         m.samples.astype(np.float64)]).reshape(3, k_ord, -1).sum(axis=1)
                        if (int(g), b) not in out:
                            out[(int(g), b)] = _ProblemSums(sums.shape[1], n_ord_total or k_ord, int(b))
                        out[(int(g), b)].add(sums)
                    else:
                        out[(int(g), b)] = _per_problem(m, reduce)
    return out


def _target_hits(batch, targets: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """int64[T, B]: first draw position with score >= each target within ``budget`` (large if none)."""
    from optscale.policies.optscale import target_hit

    return target_hit(batch, np.asarray(targets, dtype=np.float64)[:, None], budget)


def sweep(
    arrays,
    methods: Sequence[str] = ("optscale0", "optscalet"),
    budgets: Sequence[int] | None = None,
    *,
    config: EvalConfig | None = None,
    targets: Sequence[float] = SWEEP_TARGETS,
    alphas: Sequence[float] = SWEEP_ALPHAS,
    extra: Mapping[str, Iterable] | None = None,
    priors: np.ndarray | None = None,
    baselines: Sequence[str] = ("bon",),
    progress: Callable[[str, int], None] | None = None,
    **settings: Any,
) -> EvalReport:
    """Every (target s*, alpha) pair (x ``extra`` grid) x budget of each method over ALL problems, like
    the paper's grid. Rows have split ``"all (not held-out)"`` and kind ``"sweep"``: for plots only, as no
    point is held-out. ``baselines`` (fixed-budget methods) are added as split-``"all"`` rows.
    ``config`` / keyword ``settings``: as :func:`evaluate` (budgets, orderings, seed, ordering_mode,
    n_boot, level, fast are used; tuning settings do not apply)."""
    if budgets is not None:
        settings["budgets"] = budgets
    cfg = _config(config, settings)
    orderings, seed, ordering_mode, n_boot, level, fast = (
        cfg.orderings, cfg.seed, cfg.ordering_mode, cfg.n_boot, cfg.level, cfg.fast)
    P, M = np.asarray(arrays.answers).shape
    budgets = _check_budgets(default_budgets(M) if cfg.budgets is None else cfg.budgets, M)
    arrays, cost_unit = _cost_arrays(arrays)
    prep = build_batch(arrays, orderings=orderings, seed=seed, ordering_mode=ordering_mode, priors=priors)
    rows = prep.rows_of(None)
    W = LazyBootstrapWeights(P, n_boot, seed)
    n_ord = prep.n_orderings
    report = EvalReport(meta={"cost": cost_unit, "problems": int(P), "orderings": int(n_ord), "seed": int(seed),
                              "budgets": list(budgets), "split": SPLIT_SWEEP,
                              "note": "grid sweep over all problems: not held-out, for plots only"})
    sink = _RowSink()
    g: dict[str, Iterable] = {"target": list(targets), "alpha": list(alphas)}
    if extra:
        g.update(extra)
    grid = _grid(g)
    for spec in methods:
        name, params = _parse_spec(spec)
        _check_method(prep, _make(name, params), name, priors)
        full = [{**params, **p} for p in grid]
        res = _grid_metrics(prep, rows, name, full, budgets, fast=fast, reduce=n_ord)
        for gi, p in enumerate(full):
            for b in budgets:
                sink.add(name, f"{spec} sweep", p, b, SPLIT_SWEEP, KIND_SWEEP,
                         res[(gi, b)], W, n_ord, level)
        if progress:
            progress(spec, budgets[-1])
    for spec in baselines:
        name, params = _parse_spec(spec)
        pol = _make(name, params)
        _check_method(prep, pol, name, priors)
        for b in budgets:
            m = _replay(prep, rows, pol, name, b)
            sink.add(name, spec, params, b, SPLIT_ALL, _kind(name), _per_problem(m, n_ord), W, n_ord, level)
    report.rows.extend(sink.finish())
    report.mark_pareto()
    return report


def _isfinite(x: float) -> bool:
    return math.isfinite(x)
