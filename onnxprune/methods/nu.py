"""NU (Neuro-Unification, Kamma and Wada): a removed channel's behaviour is taken over by its most similar channel.

Each removal unifies a channel j into a stand-in i, a_j ~ alpha a_i + beta (an affine
least-squares fit of the activations), and folds j's consumer weights into i's and the
bias: cheaper than REAP, no least squares over the consumers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..calibration.layer_stats import LayerStats
from .base import DataMethod, register
from .least_squares import SINGULAR, ConsumerFit, Problem, removals


@register
class NeuroUnification(DataMethod):
    name = "nu"
    summary = "Neuro-Unification: each removed channel folded into its most similar one (no least squares)"

    def plan(self, problems: Sequence[Problem], n: int, target: int = 1) -> NUPlan:
        return nu_plan(problems, n, target=target)

    def rebuild(self, plan: NUPlan, consumer: ConsumerFit, kept: np.ndarray, n: int) -> tuple[np.ndarray, float]:
        return nu_apply(consumer.theta0, plan, consumer.taps, n - len(kept)), 0.0


@dataclass(frozen=True)
class NUPlan:
    """Neuro-Unification: step k removes channel order[k], emulated as
    a_order[k] ~ alpha[k] * a_stand_in[k] + beta[k]; errors: cumulative added output error."""

    order: np.ndarray
    stand_in: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray
    errors: np.ndarray


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


def nu_plan(consumers: Sequence[Problem], n: int, target: int = 1) -> NUPlan:
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
    for _ in range(removals(n, target)):
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
