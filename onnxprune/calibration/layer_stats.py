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


def stats_from_data(x: np.ndarray, y: np.ndarray) -> LayerStats:
    """Statistics of patches x (N x nK) and targets y (N x m): Xa = [x 1], G = Xa^T Xa, C = Xa^T y."""
    xa = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    y = np.asarray(y, dtype=np.float64)
    return LayerStats(xa.T @ xa, xa.T @ y, np.sum(y**2, axis=0), len(x))


