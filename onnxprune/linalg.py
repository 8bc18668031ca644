"""Channel selection and weight reconstruction from second-order statistics.

Pure linear algebra: no ONNX, no graphs. Notation as in the design notes (METHODS.md):

- A consumer (a Conv with K = kh*kw taps, or a Gemm after Flatten with K = H*W) reads the
  n channels being pruned and writes m outputs. X (N x nK) holds its input patches, column
  c*K + tap (the order of ``W.reshape(m, n*K)``); Xa = [X 1] adds the bias column, p = nK + 1.
  Weights theta (p x m) = [W.reshape(m, n*K).T ; b], so the output is Xa theta.
- Statistics, float64 and summed over batches: G = Xa^T Xa, C = Xa^T Y, yy = ||Y||^2, N rows.
- Reconstruction is ridge TOWARD THE ORIGINAL WEIGHTS theta0, the bias unregularised:

      J(theta) = ||Y - Xa theta||^2 + lam ||I'(theta - theta0)||^2,   lam = alpha * mean diag G

  (I': identity with 0 at the bias, mean over the channel columns). J is plain least squares
  on Xa and Y extended by the rows sqrt(lam) I' and sqrt(lam) I' theta0, so on any kept
  column set S its minimiser is theta_S = (G_SS + lam I')^-1 (C_S + lam I' theta0_S). That is
  why REAP's inverse downdates stay exact with the ridge: they act on the extended G' = G + lam I'
  and C' = C + lam I' theta0, and a removed channel's extra rows only add the constant
  lam ||theta0_c||^2 to J (its weights are 0).

A consumer is given as ``(stats, K, theta0)``; several consumers share the same n channels,
which are each consumer's FIRST n channels: a consumer may read more (a Concat of several
groups), and those channels after the first n are always kept, never candidates.
Every selection returns the full removal order (down to ``target`` kept channels), so any
channel count can be read off it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg as sla

SINGULAR = 1e-12  # a Cholesky pivot L_ii^2 below SINGULAR * a_ii: column i depends on the others
JITTER = 1e-10  # ridge (relative to mean diag) added to the channels of a singular Gram matrix


@dataclass(frozen=True)
class LayerStats:
    """Second-order statistics of one consumer: G = Xa^T Xa (p x p), C = Xa^T Y (p x m),
    yy = sum(Y^2) per output (m), rows = N. Statistics of batches merge by ``+``, and only so."""

    gram: np.ndarray
    cross: np.ndarray
    yy: np.ndarray
    rows: int

    def __add__(self, other: LayerStats) -> LayerStats:
        return LayerStats(self.gram + other.gram, self.cross + other.cross, self.yy + other.yy, self.rows + other.rows)

    def outputs(self, kept: np.ndarray) -> LayerStats:
        """The statistics of some of the outputs (columns of Y) only."""
        return LayerStats(self.gram, self.cross[:, kept], self.yy[kept], self.rows)

    def permuted(self, rows: np.ndarray) -> LayerStats:
        """The statistics with the columns of Xa reordered: column i of the result is ``rows[i]``."""
        return LayerStats(self.gram[np.ix_(rows, rows)], self.cross[rows], self.yy, self.rows)

    @property
    def energy(self) -> float:
        """||Y||^2 over all outputs."""
        return float(np.sum(self.yy))


Consumer = tuple[LayerStats, int, np.ndarray]  # (stats, K, theta0)
Channels = Sequence[int] | np.ndarray


@dataclass(frozen=True)
class Elimination:
    """Channels in removal order; errors[k]: the method's error after removing order[:k+1]."""

    order: np.ndarray
    errors: np.ndarray


@dataclass(frozen=True)
class NUPlan:
    """Neuro-Unification: step k removes channel order[k], emulated as
    a_order[k] ~ alpha[k] * a_stand_in[k] + beta[k]; errors: cumulative added output error."""

    order: np.ndarray
    stand_in: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    errors: np.ndarray


def stats_from_data(x: np.ndarray, y: np.ndarray) -> LayerStats:
    """Statistics of patches x (N x nK) and targets y (N x m): Xa = [x 1], G = Xa^T Xa, C = Xa^T y."""
    xa = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    y = np.asarray(y, dtype=np.float64)
    return LayerStats(xa.T @ xa, xa.T @ y, np.sum(y**2, axis=0), len(x))


def error(stats: LayerStats, theta: np.ndarray) -> float:
    """Reconstruction error ||Y - Xa theta||^2 = yy - 2 tr(theta^T C) + tr(theta^T G theta)."""
    return float(stats.energy - 2 * np.sum(theta * stats.cross) + np.sum(theta * (stats.gram @ theta)))


def ridge_lambda(stats: LayerStats, alpha: float) -> float:
    """lam = alpha * mean(diag G) over all n*K channel columns (the bias column excluded)."""
    return alpha * float(np.mean(np.diag(stats.gram)[:-1]))


def objective(stats: LayerStats, theta: np.ndarray, theta0: np.ndarray, alpha: float) -> float:
    """REAP's criterion J = ||Y - Xa theta||^2 + lam ||I'(theta - theta0)||^2 (all channel rows, no bias)."""
    return error(stats, theta) + ridge_lambda(stats, alpha) * float(np.sum((theta - theta0)[:-1] ** 2))


def columns(channels: Channels, K: int) -> np.ndarray:
    """Columns c*K + tap of ``channels`` (in the given order), then the bias column as -1 (the last)."""
    channels = np.asarray(channels, dtype=np.intp)
    return np.append((channels[:, None] * K + np.arange(K)).ravel(), -1)


def _ridge_diag(p: int, lam: float) -> np.ndarray:
    """diag(lam I'): lam on the p - 1 channel columns, 0 on the bias."""
    return np.append(np.full(p - 1, lam), 0.0)


def _cholesky(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """``cho_factor`` of a Gram matrix a (bias last). If a is numerically singular (a pivot
    L_ii^2 < SINGULAR * a_ii, e.g. a dead ReLU channel or a channel that is a combination of
    others), factor a + JITTER * mean(diag a) I' instead (the bias is never regularised)."""
    try:
        low, _ = sla.cho_factor(a, lower=True)
        if np.all(np.diag(low) ** 2 >= SINGULAR * np.diag(a)):
            return low, True
    except np.linalg.LinAlgError:
        pass
    scale = float(np.mean(np.diag(a)[:-1])) or 1.0  # 1.0: every channel is dead
    return sla.cho_factor(a + np.diag(_ridge_diag(len(a), JITTER * scale)), lower=True)


def _removals(n: int, target: int) -> int:
    if not 1 <= target <= n:
        raise ValueError(f"target must be between 1 and n = {n} kept channels, got {target}")
    return n - target


def ridge_solve(stats: LayerStats, keep: Channels, K: int, theta0: np.ndarray, alpha: float) -> np.ndarray:
    """Ridge reconstruction on the kept channels S (their columns and the bias):

        theta_S = (G_SS + lam I')^-1 (C_S + lam I' theta0_S),   lam = ridge_lambda(stats, alpha),

    with zeros on the removed channels' rows (p x m). alpha = 0 is plain least squares."""
    cols = columns(keep, K)
    lam = _ridge_diag(len(cols), ridge_lambda(stats, alpha))
    gram = stats.gram[np.ix_(cols, cols)] + np.diag(lam)
    rhs = stats.cross[cols] + lam[:, None] * theta0[cols]
    theta = np.zeros_like(stats.cross)
    theta[cols] = sla.cho_solve(_cholesky(gram), rhs)
    return theta


def choose_alpha(fit: LayerStats, holdout: LayerStats, keep: Channels, K: int, theta0: np.ndarray,
                 grid: Sequence[float] = (0, 1e-4, 1e-3, 1e-2, 1e-1, 1)) -> float:
    """argmin over the grid of error(holdout, ridge_solve(fit, keep, K, theta0, alpha)): with few
    rows per column plain least squares interpolates ``fit`` and generalises worse than the ridge."""
    errors = [error(holdout, ridge_solve(fit, keep, K, theta0, alpha)) for alpha in grid]
    return float(grid[int(np.argmin(errors))])


class _Downdater:
    """One consumer in REAP's fast elimination. With G' = G + lam I', C' = C + lam I' theta0 and S
    the kept columns, H = (G'_SS)^-1 (zero elsewhere) and theta = H C' is the ridge fit on S.

    Removing channel c, with H_cc = L L^T and Z = H_:c L^-T (so Z Z^T = H_:c H_cc^-1 H_c:):
        theta -= Z L^-1 theta_c,    H -= Z Z^T.
    H is never rewritten: it stays H0 - U U^T with U = [Z_1 Z_2 ...]. A step needs only the
    diagonal blocks H_aa (kept up to date in O(n K^3)) and the column block H_:c = H0_:c - U U_c:^T,
    so it reads O(p * removed K) numbers instead of rewriting p^2; H0 - U U^T is symmetric by
    construction. Rows of removed channels are exactly zero in Z and theta."""

    def __init__(self, stats: LayerStats, K: int, theta0: np.ndarray, alpha: float, removals: int):
        p = len(stats.gram)
        lam = _ridge_diag(p, ridge_lambda(stats, alpha))
        factor = _cholesky(stats.gram + np.diag(lam))
        h0 = sla.cho_solve(factor, np.eye(p))
        self.h0 = (h0 + h0.T) / 2
        # C order, so that each channel's rows of theta are a view (costs)
        self.theta = np.ascontiguousarray(sla.cho_solve(factor, stats.cross + lam[:, None] * theta0))
        self.stats, self.theta0, self.lam = stats, theta0, lam[0]
        self.taps = np.arange((p - 1) // K)[:, None] * K + np.arange(K)  # (n, K): columns of each channel
        self.blocks = self.h0[self.taps[:, :, None], self.taps[:, None, :]]  # H_aa (n, K, K)
        self.u = np.zeros((p, removals * K))
        self.used = 0
        self.gone = np.zeros(p, dtype=bool)
        self.step = np.empty_like(self.theta)  # theta's downdate, one buffer for every step

    def costs(self, remaining: np.ndarray) -> np.ndarray:
        """Increase of J when removing each remaining channel c:
        dE_c = tr(theta_c^T H_cc^-1 theta_c) = tr(H_cc^-1 theta_c theta_c^T), K x K per channel
        (theta_c is K x m: m-wide copies of it cost O(n K m) memory traffic per step)."""
        body = self.theta[:-1].reshape(len(self.taps), -1, self.theta.shape[1])  # (n, K, m), a view
        outer = np.matmul(body, body.transpose(0, 2, 1))[remaining]
        return np.einsum("akk->a", np.linalg.solve(self.blocks[remaining], outer))

    def remove(self, c: int) -> None:
        """Downdate theta, U and the diagonal blocks for the removal of channel c."""
        idx = self.taps[c]
        u = self.u[:, :self.used]
        low = np.linalg.cholesky(self.blocks[c])
        z = sla.solve_triangular(low, (self.h0[:, idx] - u @ u[idx].T).T, lower=True).T
        z[self.gone] = 0
        self.theta -= np.matmul(z, sla.solve_triangular(low, self.theta[idx], lower=True), out=self.step)
        self.u[:, self.used:self.used + len(idx)] = z
        self.used += len(idx)
        self.blocks -= np.einsum("akj,alj->akl", z[self.taps], z[self.taps])  # exactly symmetric
        self.gone[idx] = True
        self.theta[idx] = 0

    def error(self) -> float:
        """||Y - Xa theta||^2 = yy - tr(theta^T C) + lam tr(theta^T I'(theta0 - theta)), from the
        normal equations G'_SS theta_S = C'_S (O(p m) instead of O(p^2 m))."""
        stats, theta = self.stats, self.theta
        shrink = _inner(theta[:-1], self.theta0[:-1]) - _inner(theta[:-1], theta[:-1])
        return float(stats.energy - _inner(theta, stats.cross) + self.lam * shrink)


def _inner(a: np.ndarray, b: np.ndarray) -> float:
    """tr(a^T b) = sum(a * b) without a temporary the size of a (einsum: np.vdot would wake
    BLAS threads, slower than the sum itself on small layers)."""
    return np.einsum("ij,ij->", a, b)


def reap_steps(consumers: Sequence[Consumer], n: int, alpha: float | Sequence[float] = 0.0,
               target: int = 1) -> Iterator[tuple[int, float, list[np.ndarray]]]:
    """REAP's greedy backward elimination with inverse-Gram downdates. Each step removes
    argmin_c sum_consumers dE_c (dE_c = tr(theta_c^T H_cc^-1 theta_c): the increase of J after
    re-fitting without c) and yields (c, sum of ||Y - Xa theta||^2, the consumers' new thetas;
    these are updated in place by the next step: copy them to keep them).

    alpha: one value or one per consumer. Per consumer: one O((nK)^3) inversion, then
    O(nK * removed K * K) per step, O((nK)^3 K) for the whole elimination (vs O(n^5 K^3) naive).
    The bias is never removed."""
    alphas = np.broadcast_to(alpha, len(consumers))
    removals = _removals(n, target)
    states = [_Downdater(stats, K, theta0, a, removals) for (stats, K, theta0), a in zip(consumers, alphas)]
    remaining = np.arange(n)
    for _ in range(removals):
        c = int(remaining[np.argmin(sum(s.costs(remaining) for s in states))])
        for s in states:
            s.remove(c)
        remaining = remaining[remaining != c]
        yield c, sum(s.error() for s in states), [s.theta for s in states]


def reap_order(consumers: Sequence[Consumer], n: int, alpha: float | Sequence[float] = 0.0,
               target: int = 1) -> Elimination:
    """REAP's removal order and the reconstruction error sum ||Y - Xa theta_S||^2 after each removal."""
    steps = [(c, e) for c, e, _ in reap_steps(consumers, n, alpha, target)]
    return Elimination(np.array([c for c, _ in steps], dtype=np.intp), np.array([e for _, e in steps]))


def reap_order_naive(consumers: Sequence[Consumer], n: int, alpha: float | Sequence[float] = 0.0,
                     target: int = 1) -> Elimination:
    """REAP by brute force: every step, every candidate c, a fresh ridge_solve on S \\ c;
    remove argmin_c sum_consumers J(S \\ c). O(n^5 K^3): for tests and benchmarks only."""
    alphas = np.broadcast_to(alpha, len(consumers))

    def fits(keep: list[int]) -> list[np.ndarray]:
        return [ridge_solve(stats, keep + list(range(n, (len(stats.gram) - 1) // K)), K, theta0, a)
                for (stats, K, theta0), a in zip(consumers, alphas)]

    def cost(keep: list[int]) -> float:
        return sum(objective(stats, theta, theta0, a)
                   for (stats, _, theta0), a, theta in zip(consumers, alphas, fits(keep)))

    remaining, order, errors = list(range(n)), [], []
    for _ in range(_removals(n, target)):
        c = min(remaining, key=lambda c: cost([r for r in remaining if r != c]))
        remaining.remove(c)
        order.append(c)
        errors.append(sum(error(stats, theta) for (stats, _, _), theta in zip(consumers, fits(remaining))))
    return Elimination(np.array(order, dtype=np.intp), np.array(errors))


def _pair_products(stats: LayerStats, K: int, theta0: np.ndarray, n: int) -> np.ndarray:
    """P_ab = <G_ab, W_a W_b^T> for the first n channels (n x n; W_a: the K x m rows of
    channel a in theta0)."""
    w = theta0[:n * K]
    return ((w @ w.T) * stats.gram[:n * K, :n * K]).reshape(n, K, n, K).sum(axis=(1, 3))


def thinet_order(consumers: Sequence[Consumer], n: int, target: int = 1) -> Elimination:
    """ThiNet's greedy selection (Luo et al. 2017): add to the removed set R the channel that
    changes the consumers' outputs least WITHOUT reconstruction:

        E(R) = sum_consumers tr(W_R^T G_RR W_R) = sum_{a,b in R} P_ab,  P = sum_consumers P(consumer)
        E(R + c) = E(R) + P_cc + 2 sum_{r in R} P_rc

    with W = theta0 (no bias). errors: E(R) after each removal. O(n^2 K^2 m) for P, O(n^2) after."""
    pairs = sum(_pair_products(stats, K, theta0, n) for stats, K, theta0 in consumers)
    with_removed = np.zeros(n)  # sum_{r in R} P_rc
    removed = np.zeros(n, dtype=bool)
    order, errors, total = [], [], 0.0
    for _ in range(_removals(n, target)):
        increase = np.where(removed, np.inf, np.diag(pairs) + 2 * with_removed)
        c = int(np.argmin(increase))
        total += increase[c]
        with_removed += pairs[c]
        removed[c] = True
        order.append(c)
        errors.append(total)
    return Elimination(np.array(order, dtype=np.intp), np.array(errors))


def _unify(theta: np.ndarray, K: int, j: int, i: int, alpha: float, beta: float) -> None:
    """Fold channel j into i in place: W_i += alpha W_j (per tap), b += beta * sum_taps W_j, W_j = 0."""
    w = theta[:-1].reshape(-1, K, theta.shape[1])
    w[i] += alpha * w[j]
    theta[-1] += beta * w[j].sum(axis=0)
    w[j] = 0


class _Unifier:
    """One consumer in NU: the invariants of its statistics and its current (virtual) weights."""

    def __init__(self, stats: LayerStats, K: int, theta0: np.ndarray, n: int):
        self.gram, self.K, self.rows = stats.gram, K, stats.rows
        self.taps = np.arange(n)[:, None] * K + np.arange(K)  # (n, K): the candidates' columns
        self.blocks = stats.gram[self.taps[:, :, None], self.taps[:, None, :]]  # G_aa (n, K, K)
        self.sums = stats.gram[self.taps, -1]  # s_a = X_a^T 1 (n, K)
        self.theta = theta0.copy()

    def tap_sums(self) -> tuple[np.ndarray, np.ndarray, int]:
        """S_ab = sum_t G[(a,t), (b,t)], s_a = sum_t X_(a,t)^T 1, and the count N K: the
        channels' activations pooled over samples, positions and taps."""
        pair = self.gram[self.taps[:, None, :], self.taps[None, :, :]].sum(axis=2)
        return pair, self.sums.sum(axis=1), self.rows * self.K

    def costs(self, js: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Added output error e[j, i] of unifying j -> i, for the channels js (rows) and every i:
        with R = X_j - alpha X_i - beta (N x K patches), M_j = W_j W_j^T, t_j = W_j^T 1, v_j = W_j t_j,

            e = <R^T R, M_j> = <G_jj,M_j> - 2a <G_ij,M_j> + a^2 <G_ii,M_j>
                               - 2b s_j.v_j + 2ab s_i.v_j + b^2 N |t_j|^2."""
        w = self.theta[self.taps[js]]  # (J, K, m)
        m_j = w @ w.transpose(0, 2, 1)
        t = w.sum(axis=1)
        v = np.einsum("jko,jo->jk", w, t)
        g_ii = (self.blocks.reshape(len(self.taps), -1) @ m_j.reshape(len(js), -1).T).T  # [j, i]
        g_ij = np.einsum("ikjl,jkl->ji", self.gram[self.taps[:, :, None, None], self.taps[js][None, None]], m_j)
        s_v = v @ self.sums.T  # [j, i] = s_i . v_j
        own = np.arange(len(js)), js
        a, b = alpha[js], beta[js]
        return (g_ii[own][:, None] - 2 * a * g_ij + a**2 * g_ii
                - 2 * b * s_v[own][:, None] + 2 * a * b * s_v + b**2 * self.rows * np.sum(t**2, axis=1)[:, None])


def _nu_fits(unifiers: Sequence[_Unifier]) -> tuple[np.ndarray, np.ndarray]:
    """alpha[j, i], beta[j, i] of the least-squares fit a_j ~ alpha a_i + beta over all samples,
    positions, taps and consumers: with S, s, T summed over the consumers' tap_sums,
    cov = S - s s^T / T, alpha = cov_ij / cov_ii (0 for a constant a_i), beta = (s_j - alpha s_i) / T."""
    pair, sums, count = (sum(x) for x in zip(*(u.tap_sums() for u in unifiers)))
    cov = pair - np.outer(sums, sums) / count
    var = np.diag(cov)
    alpha = np.divide(cov, var, out=np.zeros_like(cov), where=var > SINGULAR * np.diag(pair))
    return alpha, (sums[:, None] - alpha * sums) / count


def nu_plan(consumers: Sequence[Consumer], n: int, target: int = 1) -> NUPlan:
    """Neuro-Unification: greedily unify the pair j -> i (a_j ~ alpha a_i + beta, see _nu_fits)
    whose added output error, summed over the consumers, is smallest; fold it into the virtual
    weights (_unify) and go on. A stand-in may later be removed too, its weights moving on.
    O(n^2 K^2 (K + m)) to start, O(n K^2 (K + m) + n^2) per step."""
    unifiers = [_Unifier(stats, K, theta0, n) for stats, K, theta0 in consumers]
    alpha, beta = _nu_fits(unifiers)
    everyone = np.arange(n)
    cost = sum(u.costs(everyone, alpha, beta) for u in unifiers)
    np.fill_diagonal(cost, np.inf)
    removed = np.zeros(n, dtype=bool)
    order, stand_in, alphas, betas, errors, total = [], [], [], [], [], 0.0
    for _ in range(_removals(n, target)):
        j, i = np.unravel_index(np.argmin(cost), cost.shape)
        total += cost[j, i]
        for u in unifiers:
            _unify(u.theta, u.K, j, i, alpha[j, i], beta[j, i])
        removed[j] = True
        row = sum(u.costs(np.array([i]), alpha, beta) for u in unifiers)[0]
        row[removed | (everyone == i)] = np.inf
        cost[i] = row
        cost[j] = np.inf
        cost[:, j] = np.inf
        order.append(j)
        stand_in.append(i)
        alphas.append(alpha[j, i])
        betas.append(beta[j, i])
        errors.append(total)
    return NUPlan(np.array(order, dtype=np.intp), np.array(stand_in, dtype=np.intp),
                  np.array(alphas), np.array(betas), np.array(errors))


def nu_apply(theta0: np.ndarray, plan: NUPlan, K: int, steps: int | None = None) -> np.ndarray:
    """One consumer's weights after the first ``steps`` unifications of ``plan`` (all by default),
    zeros on the removed channels. Call once per consumer for several consumers."""
    theta = theta0.astype(np.float64, copy=True)
    for j, i, alpha, beta in list(zip(plan.order, plan.stand_in, plan.alpha, plan.beta))[:steps]:
        _unify(theta, K, j, i, alpha, beta)
    return theta
