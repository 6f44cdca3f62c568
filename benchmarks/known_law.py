"""The known-law allocation: the best any fixed-N-per-problem Best-of-N rule can do, knowing each problem's
exact accuracy curve (a reference beside the clairvoyant oracle in ``bench_rules.py``).

The clairvoyant oracle (``optscale.evaluate.oracle_costs``) sees the draws: per (problem, ordering) it stops
at the first prefix whose BoN pick is as correct as BoN@N_max. No rule can do that. The known-law
allocation does not see the draws; it knows, per problem p,

* ``acc_p(n)`` = P(BoN over n samples is correct), the exact expectation over uniformly random orderings
  of the problem's m_p pool samples (a random ordering's first n draws are a uniformly random n-subset),
  under the ``bon`` policy's selection rule (:func:`optscale.policies._vec.best_score`);
* ``tok_p(n)`` = E[tokens of n draws] = min(n, m_p) * mean tokens of the problem's samples,

and chooses one n_p per problem to reach a mean accuracy goal at the fewest expected tokens. So it says
what a fixed-per-problem-N rule can at best do even with perfect difficulty knowledge; what the oracle
saves beyond it is only reachable by looking at the draws (adaptive stopping).

Exact ``acc_p(n)`` (rank combinatorics). The ``bon`` pick is the first drawn sample of the best tier
present: tier 0 = parsable answer with a score (higher score first), tier 1 = parsable with a NaN score,
tier 2 = unparsable (answer -1) with a score (higher first), tier 3 = unparsable with a NaN score; samples
of one tier with equal scores (any NaN of tiers 1/3) are tied, and among ties the first drawn wins, i.e. a
uniformly random one of those in the subset. For sample j with b_j samples strictly ahead of it and g_j
samples in its tie group (itself included), P(the pick of a random n-subset is j) is

    P(no sample ahead, at least one of the group) / g_j = [C(m - b_j, n) - C(m - b_j - g_j, n)] / (g_j C(m, n)),

(for untied j: C(m - 1 - r_j, n - 1) / C(m, n), r_j = b_j its rank) and acc_p(n) = sum_j correct_j of that.

Allocation (multiple-choice knapsack): minimise sum_p tok_p(n_p) s.t. mean_p acc_p(n_p) >= goal. The
Lagrangian relaxation (each problem maximises lambda * acc - tok at an exchange rate lambda, bisection on
lambda) selects vertices of each problem's upper concave hull of (tok, acc); equivalently and exactly,
start every problem at its cheapest point and take hull segments in decreasing order of slope
d acc / d tok until the goal is met: the rate of the segment that crosses the goal is lambda*. Taking that
segment with a fraction gives the LP optimum (``lp_tokens``): a lower bound on every allocation, and the
exact optimum of allocations that may randomise n on one problem. Fix-up to one integer n per problem:
from the greedy state before the crossing, the cheapest single-problem move (to any point, hull or not)
that reaches the goal -- taking the crossing segment whole is one such move -- then a local search (the
most token-saving feasible move of one problem to any point, or of two problems between hull vertices
near their current cost, until none saves). The result is feasible and at most one crossing segment
above ``lp_tokens`` (both are printed: the integer gap); on random 3-problem x 4-point instances it equals
the brute-force optimum in 189 of 200 (tests/test_bench_rules_known_law.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Allocation", "allocate", "bon_accuracy_curve", "expected_tokens_curve", "upper_hull"]


def _tiers(scores: np.ndarray, answers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tier int[P, M], score key float[P, M]) of the bon selection order (see module docstring)."""
    nan = np.isnan(scores)
    tier = np.where(answers >= 0, 0, 2) + nan.astype(np.int64)
    key = np.where(nan, 0.0, scores)  # ties inside a NaN tier
    return tier, key


def bon_accuracy_curve(scores, answers, correct, n, n_max: int) -> np.ndarray:
    """float64[P, n_max]: column n-1 = acc_p(n), the exact P(BoN over n uniformly random draws of the
    problem's samples picks a correct one), n = 1..n_max (n > m_p: acc_p(m_p)). ``scores`` float[P, M],
    ``answers`` int[P, M] (-1 unparsable), ``correct`` bool[P, M] (per sample, as the engine scores it),
    ``n`` int[P] (samples available; columns past it are ignored). A problem without samples has 0."""
    scores = np.asarray(scores, dtype=np.float64)
    answers = np.asarray(answers, dtype=np.int64)
    correct = np.asarray(correct, dtype=bool)
    m = np.asarray(n, dtype=np.int64)
    P, M = scores.shape
    valid = np.arange(M)[None, :] < m[:, None]
    tier, key = _tiers(scores, answers)
    ti, tj = tier[:, :, None], tier[:, None, :]  # [P, i, j]: is i ahead of / tied with j
    ki, kj = key[:, :, None], key[:, None, :]
    ahead = (ti < tj) | ((ti == tj) & (ki > kj))
    tied = (ti == tj) & (ki == kj)
    vi = valid[:, :, None]
    b = (ahead & vi).sum(axis=1)  # [P, M]: valid samples strictly ahead of j
    g = (tied & vi).sum(axis=1)  # [P, M]: valid samples tied with j (itself included)
    # ratio[p, a, k] = C(a, k) / C(m_p, k) = prod_{i<k} (a - i) / (m_p - i), k = 1..n_max (0 when a < k)
    K = int(n_max)
    a = np.arange(M + 1, dtype=np.float64)[None, :, None]
    i = np.arange(K, dtype=np.float64)[None, None, :]
    mp = m.astype(np.float64)[:, None, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(i < mp, np.clip(a - i, 0.0, None) / (mp - i), 0.0)
    ratio = np.cumprod(f, axis=2)  # [P, M + 1, K]
    rows = np.arange(P)[:, None]
    hi = ratio[rows, np.clip(m[:, None] - b, 0, M)]  # [P, M, K]: C(m - b, k) / C(m, k)
    lo = ratio[rows, np.clip(m[:, None] - b - g, 0, M)]
    w = np.where(valid & correct, 1.0 / np.maximum(g, 1), 0.0)
    acc = np.einsum("pj,pjk->pk", w, hi - lo)
    # n > m_p: the whole pool is drawn
    k = np.arange(1, K + 1)[None, :]
    last = acc[np.arange(P), np.clip(m, 1, K) - 1]
    acc = np.where(k > m[:, None], last[:, None], acc)
    return np.where(m[:, None] > 0, acc, 0.0)


def expected_tokens_curve(tokens, n, n_max: int) -> np.ndarray:
    """float64[P, n_max]: E[tokens of n uniformly random draws] = min(n, m_p) * mean tokens of the
    problem's m_p samples (NaN counts 0, as in the engine), n = 1..n_max."""
    tokens = np.nan_to_num(np.asarray(tokens, dtype=np.float64), nan=0.0)
    m = np.asarray(n, dtype=np.int64)
    valid = np.arange(tokens.shape[1])[None, :] < m[:, None]
    mean = np.where(valid, tokens, 0.0).sum(axis=1) / np.maximum(m, 1)
    return np.minimum(np.arange(1, int(n_max) + 1)[None, :], m[:, None]) * mean[:, None]


def upper_hull(tok: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the vertices of the upper concave hull of the points (tok, acc), from the cheapest
    point (the most accurate among the cheapest) to the most accurate (the cheapest among those), with
    strictly increasing tok and acc and strictly decreasing slopes."""
    order = np.lexsort((-acc, tok))
    hull: list[int] = []
    for j in order:
        if hull and acc[j] <= acc[hull[-1]]:
            continue  # dominated (no more accurate than a point at most as costly)
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # b is not a vertex when it lies on or below the chord a -> j
            if (acc[b] - acc[a]) * (tok[j] - tok[a]) <= (acc[j] - acc[a]) * (tok[b] - tok[a]):
                hull.pop()
            else:
                break
        hull.append(int(j))
    return np.asarray(hull, dtype=np.int64)


@dataclass
class Allocation:
    """A fixed n per problem reaching a mean accuracy goal (see :func:`allocate`)."""

    n: np.ndarray  # int64[P]: the chosen sample count per problem (1-based)
    accuracy: float  # mean acc_p(n_p)
    tokens: float  # mean tok_p(n_p)
    lp_tokens: float  # the LP (one randomised problem) optimum: a lower bound on ``tokens``
    rate: float  # lambda*: accuracy per token of the crossing segment (inf when the cheapest points do)


def allocate(acc: np.ndarray, tok: np.ndarray, goal: float) -> Allocation:
    """Fewest mean expected tokens with mean accuracy >= ``goal`` (module docstring: greedy over hull
    segments = Lagrangian with the exact exchange rate, then the integer fix-up). ``acc``, ``tok``:
    float[P, K], column k = n = k + 1. Raises ValueError when even the most accurate points miss ``goal``."""
    acc = np.asarray(acc, dtype=np.float64)
    tok = np.asarray(tok, dtype=np.float64)
    P, K = acc.shape
    need = goal * P - 1e-12 * max(P, 1)  # total accuracy needed (tolerance for summation order)
    if acc.max(axis=1).sum() < need:
        raise ValueError(f"goal {goal} is above the most accurate allocation ({acc.max(axis=1).mean()})")
    hulls = [upper_hull(tok[p], acc[p]) for p in range(P)]
    cur = np.array([h[0] for h in hulls], dtype=np.int64)
    total_acc = acc[np.arange(P), cur].sum()
    total_tok = tok[np.arange(P), cur].sum()
    if total_acc >= need:
        return Allocation(cur + 1, total_acc / P, total_tok / P, total_tok / P, float("inf"))
    # every hull segment (problem, from, to), by decreasing slope (within a problem, slopes decrease)
    seg_p, seg_a, seg_b = [], [], []
    for p, h in enumerate(hulls):
        seg_p += [p] * (len(h) - 1)
        seg_a += list(h[:-1])
        seg_b += list(h[1:])
    sp, sa, sb = (np.asarray(x, dtype=np.int64) for x in (seg_p, seg_a, seg_b))
    dacc = acc[sp, sb] - acc[sp, sa]
    dtok = tok[sp, sb] - tok[sp, sa]
    slope = np.where(dtok > 0, dacc / np.where(dtok > 0, dtok, 1.0), np.inf)
    order = np.lexsort((sb, -slope))  # ties: a problem's earlier segment first
    cum = total_acc + np.cumsum(dacc[order])
    t = int(np.searchsorted(cum, need))  # the crossing segment: cum[t] >= need
    t = min(t, order.shape[0] - 1)
    taken = order[:t]
    base = cur.copy()
    base[sp[taken]] = sb[taken]  # the greedy state before the crossing segment
    s = order[t]
    acc_before = acc[np.arange(P), base].sum()
    tok_before = tok[np.arange(P), base].sum()
    frac = (need - acc_before) / dacc[s] if dacc[s] > 0 else 1.0
    lp = tok_before + min(max(frac, 0.0), 1.0) * dtok[s]
    # fix-up: the cheapest single-problem completion from the greedy state (the crossing segment is one)
    short = need - acc_before
    gain = acc - acc[np.arange(P), base][:, None]  # [P, K] accuracy change of moving problem p to n
    cost = tok - tok[np.arange(P), base][:, None]
    cost = np.where(gain >= short, cost, np.inf)
    p_best, k_best = np.unravel_index(np.argmin(cost), cost.shape)
    final = base.copy()
    final[p_best] = k_best
    final = _improve(acc, tok, need, final, hulls)
    return Allocation(final + 1, acc[np.arange(P), final].sum() / P, tok[np.arange(P), final].sum() / P,
                      lp / P, float(slope[s]))


def _improve(acc: np.ndarray, tok: np.ndarray, need: float, cur: np.ndarray, hulls, rounds: int = 100,
             width: int = 3):
    """Local search from a feasible integer allocation: repeatedly apply the most token-saving move that
    stays feasible, among moving one problem to any of its points and moving two problems (one down, one
    up) between their hull vertices near their current cost; stops when no move saves tokens."""
    P, K = acc.shape
    ar = np.arange(P)
    for _ in range(rounds):
        a0, t0 = acc[ar, cur], tok[ar, cur]
        # per problem the `width` hull vertices nearest below and above its current cost (memory: pairs of
        # P * 2 * width candidates, not of every vertex)
        near = []
        for p, h in enumerate(hulls):
            pos = int(np.searchsorted(tok[p, h], t0[p]))
            near.append(h[max(pos - width, 0):pos + width])
        hp = np.concatenate([np.full(len(h), p) for p, h in enumerate(near)])
        hk = np.concatenate(near)
        slack = acc[ar, cur].sum() - need
        # one problem
        da, dt = acc - a0[:, None], tok - t0[:, None]
        single = np.where(da >= -slack, dt, np.inf)
        p1, k1 = np.unravel_index(np.argmin(single), single.shape)
        best1 = single[p1, k1]
        # two problems over hull vertices: (p -> k) and (q -> l), p != q
        ha, ht = acc[hp, hk] - a0[hp], tok[hp, hk] - t0[hp]
        ok = (ha[:, None] + ha[None, :] >= -slack) & (hp[:, None] != hp[None, :])
        pair = np.where(ok, ht[:, None] + ht[None, :], np.inf)
        i, j = np.unravel_index(np.argmin(pair), pair.shape)
        best2 = pair[i, j]
        if min(best1, best2) >= -1e-9 * max(1.0, abs(t0.sum())):
            return cur
        cur = cur.copy()
        if best1 <= best2:
            cur[p1] = k1
        else:
            cur[hp[i]], cur[hp[j]] = hk[i], hk[j]
    return cur
