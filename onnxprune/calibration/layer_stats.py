"""Second-order statistics of one consumer (G = Xa^T Xa, C = Xa^T Y, ||Y||^2, N): all that leaves a calibration batch."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerStats:
    """Second-order statistics of one consumer: G = Xa^T Xa (p x p), C = Xa^T Y (p x m),
    yy = sum(Y^2) per output (m), rows = N. Statistics of batches merge by ``+``, and only so."""

    gram: np.ndarray
    cross: np.ndarray
    yy: np.ndarray
    rows: int
    drawn: int | None = None  # rows actually read when they were sampled (calibration/sampling.py)

    def __add__(self, other: LayerStats) -> LayerStats:
        drawn = None if self.drawn is None and other.drawn is None else self.used + other.used
        return LayerStats(self.gram + other.gram, self.cross + other.cross, self.yy + other.yy, self.rows + other.rows,
                          drawn)

    @property
    def used(self) -> int:
        """Rows read: all ``rows``, or those drawn."""
        return self.rows if self.drawn is None else self.drawn

    def outputs(self, kept: np.ndarray) -> LayerStats:
        """The statistics of some of the outputs (columns of Y) only."""
        return LayerStats(self.gram, self.cross[:, kept], self.yy[kept], self.rows, self.drawn)

    def permuted(self, rows: np.ndarray) -> LayerStats:
        """The statistics with the columns of Xa reordered: column i of the result is ``rows[i]``."""
        return LayerStats(self.gram[np.ix_(rows, rows)], self.cross[rows], self.yy, self.rows, self.drawn)

    @property
    def energy(self) -> float:
        """||Y||^2 over all outputs."""
        return float(np.sum(self.yy))


def stats_from_data(x: np.ndarray, y: np.ndarray) -> LayerStats:
    """Statistics of patches x (N x nK) and targets y (N x m): Xa = [x 1], G = Xa^T Xa, C = Xa^T y."""
    xa = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    y = np.asarray(y, dtype=np.float64)
    return LayerStats(xa.T @ xa, xa.T @ y, np.sum(y**2, axis=0), len(x))




def weighted_stats(x: np.ndarray, y: np.ndarray, weight: float = 1.0) -> LayerStats:
    """Statistics of rows x (r x q) and targets y (r x m), every row of weight w (sampling.py):
    G = w Xa^T Xa, C = w Xa^T Y with Xa = [x 1], yy = w sum(Y^2), rows = w r.

    The two products run in the rows' precision (float32: twice the speed of float64) on rows
    shifted by their means, X = Xc + 1 mu^T and Y = Yc + 1 nu^T (mu, nu rounded to that
    precision, so the shift is exact), and the means' terms are added in float64:

        X^T X = Xc^T Xc + sx mu^T + mu sx^T + r mu mu^T,   X^T 1 = sx + r mu,   sx = 1^T Xc,
        X^T Y = Xc^T Yc + sx nu^T + mu (1^T Y)^T,

    so the rounding error is relative to the rows' spread, not to their size (post-ReLU
    activations are far from zero-mean)."""
    r, q = x.shape
    mu = x.mean(axis=0, dtype=np.float64).astype(x.dtype)
    nu = y.mean(axis=0, dtype=np.float64).astype(y.dtype)
    xc, yc = x - mu, y - nu
    mu64, nu64 = mu.astype(np.float64), nu.astype(np.float64)
    sx, sy = xc.sum(axis=0, dtype=np.float64), y.sum(axis=0, dtype=np.float64)
    gram = np.empty((q + 1, q + 1))
    xx = gram[:q, :q]
    xx[...] = xc.T @ xc  # a plain GEMM: faster here than syrk on half the matrix
    xx += np.outer(sx, mu64)
    xx += np.outer(mu64, sx)
    xx += r * np.outer(mu64, mu64)
    gram[:q, q] = gram[q, :q] = sx + r * mu64
    gram[q, q] = r
    cross = np.empty((q + 1, y.shape[1]))
    cross[:q] = xc.T @ yc
    cross[:q] += np.outer(sx, nu64) + np.outer(mu64, sy)
    cross[q] = sy
    yy = np.einsum("ij,ij->j", y, y, dtype=np.float64)
    if weight != 1.0:
        gram *= weight
        cross *= weight
        yy *= weight
    return LayerStats(gram, cross, yy, int(round(weight * r)), r if weight != 1.0 else None)
