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
from .least_squares import SINGULAR, ConsumerFit, Parts, Problem, owned_columns, removals, unpack


@register
class NeuroUnification(DataMethod):
    name = "nu"
    summary = "Neuro-Unification: each removed channel folded into its most similar one (no least squares)"

    def plan(self, problems: Sequence[Problem], n: int, target: int = 1, parts: Parts | None = None) -> NUPlan:
        return nu_plan(problems, n, target=target, parts=parts)

    def rebuild(self, plan: NUPlan, consumer: ConsumerFit, kept: np.ndarray, n: int,
                alpha: float | None = None) -> tuple[np.ndarray, float]:
        return nu_apply(consumer.theta0, plan, consumer.taps, n - len(kept), consumer.copies), 0.0


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


def _unify_owned(theta: np.ndarray, oj: np.ndarray, oi: np.ndarray, alpha: float, beta: float, bias: int) -> None:
    """_unify for channels owning the columns ``oj`` and ``oi`` (equally many: copy by copy, tap
    by tap); ``bias``: the bias row."""
    theta[oi] += alpha * theta[oj]
    theta[bias] += beta * theta[oj].sum(axis=0)
    theta[oj] = 0


class _Unifier:
    """One consumer in NU: the invariants of its statistics and its current (virtual) weights.

    With ``copies`` (channel c owns copies[c] K-blocks, possibly none) the columns of each channel
    it reads (``read``) are padded to the widest with column p, a zero row and column appended to
    G and theta, so the formulas below apply unchanged on those channels; a channel it does not
    read adds nothing here (zero weights), so its rows and columns of the results are 0. Only
    channels owning equally many columns in every consumer are unified (nu_plan), copy by copy
    and tap by tap."""

    def __init__(self, stats: LayerStats, K: int, theta0: np.ndarray, n: int, copies: np.ndarray | None = None):
        self.K, self.rows, self.n = K, stats.rows, n
        self.padded = copies is not None
        if not self.padded:
            self.gram = stats.gram
            self.taps = np.arange(n)[:, None] * K + np.arange(K)  # (n, K): the candidates' columns
            self.theta = theta0.copy()
            self.bias = -1
        else:
            p = len(stats.gram)
            self.gram = np.zeros((p + 1, p + 1))
            self.gram[:p, :p] = stats.gram
            self.theta = np.vstack([theta0, np.zeros((1, theta0.shape[1]))])
            self.bias = p - 1
            owned = owned_columns(copies[:n], K)
            self.width = np.array([len(o) for o in owned])
            self.read = np.flatnonzero(self.width)
            self.local = np.full(n, -1, dtype=np.intp)  # channel -> its row of taps, -1 if unread
            self.local[self.read] = np.arange(len(self.read))
            self.taps = np.full((len(self.read), max(1, self.width.max(initial=0))), p, dtype=np.intp)
            for a, c in enumerate(self.read):
                self.taps[a, :self.width[c]] = owned[c]
        self.blocks = self.gram[self.taps[:, :, None], self.taps[:, None, :]]  # G_aa (channels read, K, K)
        self.sums = self.gram[self.taps, self.bias]  # s_a = X_a^T 1 (channels read, K)

    def unify(self, j: int, i: int, alpha: float, beta: float) -> None:
        if not self.padded:
            return _unify(self.theta, self.K, j, i, alpha, beta)
        width = self.width[j]
        if width:
            _unify_owned(self.theta, self.taps[self.local[j], :width], self.taps[self.local[i], :width], alpha, beta,
                         self.bias)

    def tap_sums(self) -> tuple[np.ndarray, np.ndarray, int | np.ndarray]:
        """S_ab = sum_t G[(a,t), (b,t)], s_a = sum_t X_(a,t)^T 1, and the count N K: the
        channels' activations pooled over samples, positions and taps (with copies, the count
        per channel: N times its columns)."""
        pair = self.gram[self.taps[:, None, :], self.taps[None, :, :]].sum(axis=2)
        if not self.padded:
            return pair, self.sums.sum(axis=1), self.rows * self.K
        full, sums = np.zeros((self.n, self.n)), np.zeros(self.n)
        full[np.ix_(self.read, self.read)] = pair
        sums[self.read] = self.sums.sum(axis=1)
        return full, sums, self.rows * self.width

    def costs(self, js: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Added output error e[j, i] of unifying j -> i, for the channels js (rows) and every i
        (0 where this consumer does not read both: pairs it reads unlike are never unified)."""
        if not self.padded:
            return self._costs(js, alpha[js], beta[js])
        out = np.zeros((len(js), self.n))
        rows = self.local[js]
        mine = rows >= 0
        if mine.any():
            read = self.read
            out[np.ix_(mine, read)] = self._costs(rows[mine], alpha[np.ix_(js[mine], read)],
                                                  beta[np.ix_(js[mine], read)])
        return out

    def _costs(self, js: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """e[j, i] for rows js of ``taps`` and every row i, alpha ``a`` and beta ``b`` [j, i]: with
        R = X_j - a X_i - b (N x K patches), M_j = W_j W_j^T, t_j = W_j^T 1, v_j = W_j t_j,

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
        return (g_ii[own][:, None] - 2 * a * g_ij + a**2 * g_ii
                - 2 * b * s_v[own][:, None] + 2 * a * b * s_v + b**2 * self.rows * np.sum(t**2, axis=1)[:, None])


def _nu_fits(unifiers: Sequence[_Unifier]) -> tuple[np.ndarray, np.ndarray]:
    """alpha[j, i], beta[j, i] of the least-squares fit a_j ~ alpha a_i + beta over all samples,
    positions, taps and consumers: with S, s, T summed over the consumers' tap_sums,
    cov = S - s s^T / T, alpha = cov_ij / cov_ii (0 for a constant a_i), beta = (s_j - alpha s_i) / T."""
    pair, sums, count = (sum(x) for x in zip(*(u.tap_sums() for u in unifiers)))
    if np.ndim(count):  # per channel (copies): pairs are only of channels with equal counts
        count = np.maximum(count, 1)[:, None]
    cov = pair - np.outer(sums, sums) / count
    var = np.diag(cov)
    alpha = np.divide(cov, var, out=np.zeros_like(cov), where=var > SINGULAR * np.diag(pair))
    return alpha, (sums[:, None] - alpha * sums) / count


def nu_plan(consumers: Sequence[Problem], n: int, target: int = 1, parts: Parts | None = None) -> NUPlan:
    """Neuro-Unification: greedily unify the pair j -> i (a_j ~ alpha a_i + beta, see _nu_fits)
    whose added output error, summed over the consumers, is smallest; fold it into the virtual
    weights (_unify) and go on. A stand-in may later be removed too, its weights moving on.
    O(n^2 K^2 (K + m)) to start, O(n K^2 (K + m) + n^2) per step.

    With copies (repeated or partial reads), j unifies only into an i read as often as j by every
    consumer (so their copies fold one onto the other); with ``parts``, j is a candidate only
    while its part has removals left. The order stops early if no pair is left."""
    unpacked = [unpack(p) for p in consumers]
    unifiers = [_Unifier(stats, K, theta0, n, copies) for stats, K, theta0, copies in unpacked]
    alpha, beta = _nu_fits(unifiers)
    everyone = np.arange(n)
    cost = sum(u.costs(everyone, alpha, beta) for u in unifiers)
    np.fill_diagonal(cost, np.inf)
    reads = np.array([np.ones(n, np.intp) if copies is None else copies[:n] for *_, copies in unpacked]).T
    unlike = (reads[:, None, :] != reads[None, :, :]).any(axis=2)  # [j, i]: different copy counts
    cost[unlike] = np.inf
    removed = np.zeros(n, dtype=bool)
    done = None if parts is None else np.zeros(len(parts.removals), dtype=np.intp)
    order, stand_in, alphas, betas, errors, total = [], [], [], [], [], 0.0
    for _ in range(removals(n, target)):
        candidates = cost if parts is None else np.where(parts.exhausted(done)[:, None], np.inf, cost)
        j, i = np.unravel_index(np.argmin(candidates), cost.shape)
        if not np.isfinite(candidates[j, i]):
            break
        if parts is not None:
            done[parts.part[j]] += 1
        total += cost[j, i]
        for u in unifiers:
            u.unify(j, i, alpha[j, i], beta[j, i])
        removed[j] = True
        row = sum(u.costs(np.array([i]), alpha, beta) for u in unifiers)[0]
        row[removed | (everyone == i) | unlike[i]] = np.inf
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


def nu_apply(theta0: np.ndarray, plan: NUPlan, K: int, steps: int | None = None,
             copies: np.ndarray | None = None) -> np.ndarray:
    """One consumer's weights after the first ``steps`` unifications of ``plan`` (all by default),
    zeros on the removed channels. Call once per consumer for several consumers."""
    theta = theta0.astype(np.float64, copy=True)
    owned = None if copies is None else owned_columns(copies, K)
    for j, i, alpha, beta in list(zip(plan.order, plan.stand_in, plan.alpha, plan.beta))[:steps]:
        if owned is None:
            _unify(theta, K, j, i, alpha, beta)
        else:
            _unify_owned(theta, owned[j], owned[i], alpha, beta, len(theta) - 1)
    return theta
