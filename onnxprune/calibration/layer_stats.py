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
        """The statistics with the columns of Xa reordered: column i of the result is ``rows[i]``
        (negative: from the end). The identity (a consumer that reads only the group being pruned)
        is these statistics themselves, not a copy of a Gram that may be hundreds of MB."""
        p = len(self.gram)
        if len(rows) == p and np.array_equal(np.where(rows < 0, rows + p, rows), np.arange(p)):
            return self
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


class RunningSums:
    """The statistics of rows that arrive in parts (chunks of a batch, slices, batches), summed
    as they come: G = w Xa^T Xa, C = w Xa^T Y, yy = w sum(Y^2), rows = w r (``LayerStats``).

    The products run in the rows' precision (float32: twice the speed of float64) on rows
    shifted by one fixed shift, that of the first part's means, X = Xc + 1 mu^T and Y = Yc + 1 nu^T
    (mu, nu rounded to that precision, so the shift is exact), and are added up in float64
    with the shift's terms added once at the end, with a = sx + r mu / 2:

        X^T X = Xc^T Xc + a mu^T + mu a^T,   X^T 1 = sx + r mu,   sx = 1^T Xc,
        X^T Y = Xc^T Yc + sx nu^T + mu (1^T Y)^T,

    so the rounding error is relative to the rows' spread, not to their size (post-ReLU
    activations are far from zero-mean), and a part costs its products and one addition of
    each: a wide consumer read in many small parts (a batch run in slices) spends its time in
    the products, not in p x p corrections. The sums are the result's own arrays, finished in
    place by ``stats`` (no second p x p copy: freed copies of tens of MB stay in the process's
    heap). Every part of a consumer has the same weight (sampling.py: P / s); one of another
    weight is rescaled to the first's."""

    def __init__(self, width: int, outputs: int):
        """Sums for rows of ``width`` values (the ones column comes in ``stats``) and ``outputs`` targets."""
        self.width, self.outputs = width, outputs
        self.weight: float | None = None
        self.rows = 0.0  # in units of the first part's weight
        self.read = 0  # rows actually read
        self.done = False

    def add(self, x: np.ndarray, y: np.ndarray, weight: float = 1.0) -> None:
        if self.done:
            raise ValueError("these sums were finished by stats()")
        r = x.shape[0]
        if r == 0:
            return
        if self.weight is None:
            self.weight = weight
            self.mu = x.mean(axis=0, dtype=np.float64).astype(x.dtype)
            self.nu = y.mean(axis=0, dtype=np.float64).astype(y.dtype)
            q, m = self.width, self.outputs
            self.gram, self.cross = np.zeros((q + 1, q + 1)), np.zeros((q + 1, m))
            self.sx, self.sy, self.yy = np.zeros(q), np.zeros(m), np.zeros(m)
        scale = weight / self.weight
        xc, yc = x - self.mu, y - self.nu
        xx, xy = xc.T @ xc, xc.T @ yc  # plain GEMMs: faster here than syrk on half the matrix
        if scale != 1.0:
            xx, xy = xx * scale, xy * scale
        q = self.width
        self.gram[:q, :q] += xx
        self.cross[:q] += xy
        self.sx += scale * xc.sum(axis=0, dtype=np.float64)
        self.sy += scale * y.sum(axis=0, dtype=np.float64)
        self.yy += scale * np.einsum("ij,ij->j", y, y, dtype=np.float64)
        self.rows += r * scale
        self.read += r

    def stats(self, block: int = 256) -> LayerStats:
        """The sums as ``LayerStats`` (zeros where no row came: a batch of padding only), finished
        in place, ``block`` rows of the p x p corrections at a time (no p x p temporaries)."""
        if self.weight is None:
            q, m = self.width + 1, self.outputs
            return LayerStats(np.zeros((q, q)), np.zeros((q, m)), np.zeros(m), 0)
        if self.done:
            raise ValueError("these sums were finished by stats()")
        self.done = True
        q, r, weight = self.width, self.rows, self.weight
        mu, nu = self.mu.astype(np.float64), self.nu.astype(np.float64)
        gram, cross = self.gram, self.cross
        a = self.sx + (r / 2) * mu
        for i in range(0, q, block):
            rows = slice(i, min(q, i + block))
            gram[rows, :q] += np.outer(a[rows], mu)
            gram[rows, :q] += np.outer(mu[rows], a)
            cross[rows] += np.outer(self.sx[rows], nu)
            cross[rows] += np.outer(mu[rows], self.sy)
        gram[:q, q] = gram[q, :q] = self.sx + r * mu
        gram[q, q] = r
        cross[q] = self.sy
        yy = self.yy
        if weight != 1.0:
            gram *= weight
            cross *= weight
            yy *= weight
        weighted = weight != 1.0 or r != self.read
        return LayerStats(gram, cross, yy, int(round(weight * r)), self.read if weighted else None)
