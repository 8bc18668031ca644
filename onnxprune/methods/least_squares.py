"""Ridge least squares on second-order statistics: the reconstruction every data method shares.

Pure linear algebra: no ONNX, no graphs. Notation (docs/METHODS.md):

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

A selection problem (``Problem``) is one consumer as ``(stats, K, theta0)``; several consumers
share the same n channels, which are each consumer's FIRST n channels: a consumer may read more
(a Concat of several groups), and those channels after the first n are always kept, never
candidates. Every selection returns the full removal order (down to ``target`` kept channels),
so any channel count can be read off it.

A consumer may read a channel of the group several times (SPPF's Concat of x and its pooled
copies) or not at all (a Split part it does not read): then the problem is
``(stats, K, theta0, copies)``, channel c owning ``copies[c]`` consecutive K-column blocks (all
its copies, removed together; none for a channel it does not read), the channels after the
group's n one block each. Without ``copies`` every channel owns one block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg as sla

from ..calibration.layer_stats import LayerStats

SINGULAR = 1e-12  # a Cholesky pivot L_ii^2 below SINGULAR * a_ii: column i depends on the others
# Ridges (relative to mean diag) tried in turn on the channels of a singular Gram matrix: the
# smallest that factors. float32 statistics can leave a singular one slightly indefinite, by about
# float32's rounding of its LARGEST eigenvalue, which a far-from-centred direction makes hundreds of
# times the mean diagonal (a flattened Gemm's 193 columns from 48 rows: -4e-5 against a mean
# diagonal of 39, largest eigenvalue 2,641): hence the last rung, the smallest nonzero ridge
# that reconstruction chooses among (ALPHA_GRID), tried only where the others fail.
JITTERS = (1e-10, 1e-8, 1e-6, 1e-4)
# Ridge used while selecting channels (relative to mean(diag G)); reconstruction picks its own.
SELECTION_ALPHA = 1e-3
ALPHA_GRID = (0.0, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

Problem = tuple  # one consumer in a selection: (stats, K, theta0) or (stats, K, theta0, copies)
Channels = Sequence[int] | np.ndarray


def unpack(problem: Problem) -> tuple[LayerStats, int, np.ndarray, np.ndarray | None]:
    """(stats, K, theta0, copies) of a problem; copies None: one K-block per channel."""
    stats, K, theta0, *rest = problem
    return stats, K, theta0, (rest[0] if rest else None)


def owned_columns(copies: np.ndarray, K: int) -> list[np.ndarray]:
    """The columns each channel owns when channel c holds ``copies[c]`` consecutive K-blocks."""
    sizes = np.asarray(copies, dtype=np.intp) * K
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    return [np.arange(a, a + b, dtype=np.intp) for a, b in zip(starts, sizes)]


@dataclass(frozen=True)
class Parts:
    """A group read in parts (Split/Slice): ``part[c]`` is channel c's part and ``removals[q]``
    how many channels part q gives up. The greedy selections remove a channel only from a part
    with removals left, so every part keeps the count the budget was fitted with."""

    part: np.ndarray
    removals: np.ndarray

    def exhausted(self, done: np.ndarray) -> np.ndarray:
        """Per channel: True where its part has no removals left, given ``done`` per part."""
        return (self.removals - done)[self.part] <= 0


def error(stats: LayerStats, theta: np.ndarray) -> float:
    """Reconstruction error ||Y - Xa theta||^2 = yy - 2 tr(theta^T C) + tr(theta^T G theta)."""
    return float(stats.energy - 2 * np.sum(theta * stats.cross) + np.sum(theta * (stats.gram @ theta)))


def ridge_lambda(stats: LayerStats, alpha: float) -> float:
    """lam = alpha * mean(diag G) over all n*K channel columns (the bias column excluded)."""
    return alpha * float(np.mean(np.diag(stats.gram)[:-1]))


def objective(stats: LayerStats, theta: np.ndarray, theta0: np.ndarray, alpha: float) -> float:
    """REAP's criterion J = ||Y - Xa theta||^2 + lam ||I'(theta - theta0)||^2 (all channel rows, no bias)."""
    return error(stats, theta) + ridge_lambda(stats, alpha) * float(np.sum((theta - theta0)[:-1] ** 2))


def columns(channels: Channels, K: int, copies: np.ndarray | None = None) -> np.ndarray:
    """Columns c*K + tap of ``channels`` (in the given order), then the bias column as -1 (the last).
    With ``copies`` (per channel, how many K-blocks it owns) the blocks of each channel in turn."""
    channels = np.asarray(channels, dtype=np.intp)
    if copies is None:
        return np.append((channels[:, None] * K + np.arange(K)).ravel(), -1)
    owned = owned_columns(copies, K)
    return np.append(np.concatenate([owned[c] for c in channels] + [np.zeros(0, np.intp)]), -1)


def ridge_diag(p: int, lam: float) -> np.ndarray:
    """diag(lam I'): lam on the p - 1 channel columns, 0 on the bias."""
    return np.append(np.full(p - 1, lam), 0.0)


def cholesky(a: np.ndarray) -> tuple[np.ndarray, bool]:
    """``cho_factor`` of a Gram matrix a (bias last). If a is numerically singular (a pivot
    L_ii^2 < SINGULAR * a_ii, e.g. a dead ReLU channel or a channel that is a combination of
    others), factor a + j * mean(diag a) I' instead with the smallest j of JITTERS that factors
    (the bias is never regularised)."""
    try:
        low, _ = sla.cho_factor(a, lower=True)
        if np.all(np.diag(low) ** 2 >= SINGULAR * np.diag(a)):
            return low, True
    except np.linalg.LinAlgError:
        pass
    scale = float(np.mean(np.diag(a)[:-1])) or 1.0  # 1.0: every channel is dead
    for jitter in JITTERS[:-1]:
        try:
            return sla.cho_factor(a + np.diag(ridge_diag(len(a), jitter * scale)), lower=True)
        except np.linalg.LinAlgError:
            pass
    return sla.cho_factor(a + np.diag(ridge_diag(len(a), JITTERS[-1] * scale)), lower=True)


def removals(n: int, target: int) -> int:
    """How many channels a selection of n removes to keep ``target`` (1 <= target <= n)."""
    if not 1 <= target <= n:
        raise ValueError(f"target must be between 1 and n = {n} kept channels, got {target}")
    return n - target


def ridge_solve(stats: LayerStats, keep: Channels, K: int, theta0: np.ndarray, alpha: float,
                copies: np.ndarray | None = None) -> np.ndarray:
    """Ridge reconstruction on the kept channels S (their columns and the bias):

        theta_S = (G_SS + lam I')^-1 (C_S + lam I' theta0_S),   lam = ridge_lambda(stats, alpha),

    with zeros on the removed channels' rows (p x m). alpha = 0 is plain least squares."""
    cols = columns(keep, K, copies)
    lam = ridge_diag(len(cols), ridge_lambda(stats, alpha))
    gram = stats.gram[np.ix_(cols, cols)]
    gram.flat[::len(cols) + 1] += lam  # no p x p diag(lam) and sum beside it
    rhs = stats.cross[cols] + lam[:, None] * theta0[cols]
    theta = np.zeros_like(stats.cross)
    theta[cols] = sla.cho_solve(cholesky(gram), rhs)
    return theta


def choose_alpha(fit: LayerStats, holdout: LayerStats, keep: Channels, K: int, theta0: np.ndarray,
                 grid: Sequence[float] = (0, 1e-4, 1e-3, 1e-2, 1e-1, 1), copies: np.ndarray | None = None) -> float:
    """argmin over the grid of error(holdout, ridge_solve(fit, keep, K, theta0, alpha)): with few
    rows per column plain least squares interpolates ``fit`` and generalises worse than the ridge."""
    errors = [error(holdout, ridge_solve(fit, keep, K, theta0, alpha, copies)) for alpha in grid]
    return float(grid[int(np.argmin(errors))])


def refit(fit: LayerStats, holdout: LayerStats | None, keep: np.ndarray, taps: int,
          theta0: np.ndarray, copies: np.ndarray | None = None, alpha: float | None = None,
          ) -> tuple[np.ndarray, float]:
    """A consumer's weights on the channels ``keep``: ridge least squares on fit + holdout, the
    ridge ``alpha`` if given, else chosen on the holdout (SELECTION_ALPHA without one). Returns
    them and the alpha."""
    if alpha is None:
        alpha = (choose_alpha(fit, holdout, keep, taps, theta0, ALPHA_GRID, copies) if holdout is not None
                 else SELECTION_ALPHA)
    total = fit if holdout is None else fit + holdout
    return ridge_solve(total, keep, taps, theta0, alpha, copies), alpha


@dataclass(frozen=True)
class Elimination:
    """Channels in removal order; errors[k]: the method's error after removing order[:k+1]
    (None where the method was not asked for them)."""

    order: np.ndarray
    errors: np.ndarray | None


@dataclass(frozen=True)
class ConsumerFit:
    """One consumer of the group being pruned: statistics whose first n channels are the
    group's (then the other channels it reads, which stay), taps, original weights theta0
    (rows as the statistics' columns), how many channels it reads in all, and how many K-blocks
    each owns (``copies``; None: one each)."""

    fit: LayerStats
    holdout: LayerStats | None
    taps: int
    theta0: np.ndarray
    channels: int
    copies: np.ndarray | None = None
