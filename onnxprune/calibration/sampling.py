"""Which rows (output positions) of each calibration sample a consumer's statistics read.

A consumer with p = nK + 1 columns has a p x p Gram matrix G = Xa^T Xa, and G is well
determined by far fewer rows than all output positions of all images: neighbouring positions
of one image are nearly the same row (ThiNet fits on 10 positions per image). So, with a
budget of ``per_column`` rows per column, every sample gives

    s = clip(ceil(per_column * p / samples), 1, P)

of its P output positions, drawn uniformly without replacement, and each drawn row is
weighted w = P / s. The weighted statistics are then unbiased estimates of the full ones,

    E[sum_drawn w x_r x_r^T] = sum_all x_r x_r^T,

and they hold the full row count exactly (s rows of weight P / s per sample): errors of
consumers sampled at different rates stay comparable, and everything that reads G, C, ||Y||^2
or the row count reads them as before. With s = P (or ``per_column`` 0) nothing is drawn:
the statistics are the full ones, bit for bit.

Draws are seeded by the consumer's node name and the batch's index, so a run is reproducible,
and PRO's pass and the sequential pass read the same positions of the same batch.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

DEFAULT_ROWS_PER_COLUMN = 256  # docs/PERFORMANCE.md: 64 lost 0.2-0.3 points at a quarter of the MACs, 256 none


@dataclass(frozen=True)
class RowSampling:
    """A budget of ``per_column`` rows per column of a consumer (0: every row), spread evenly
    over the ``samples`` calibration samples; ``seed`` fixes the draws."""

    per_column: int
    samples: int
    seed: int = 0

    def per_sample(self, columns: int, positions: int) -> int:
        """s = clip(ceil(per_column * columns / samples), 1, positions): rows drawn from each sample."""
        if self.per_column <= 0:
            return positions
        return int(min(positions, max(1, -(-self.per_column * columns // max(self.samples, 1)))))

    def draw(self, node: str, batch: int, n: int, positions: int, columns: int, first: int = 0,
             total: int = 0) -> tuple[np.ndarray, float] | None:
        """For a batch of n samples with ``positions`` rows each: the flat indices (sample *
        positions + position, ascending) of the rows drawn and their weight P / s; None for all.
        With ``total``: the n samples from ``first`` on of a batch of ``total``, drawn as for the
        whole batch (a batch run in slices reads the same rows)."""
        s = self.per_sample(columns, positions)
        if s >= positions:
            return None
        rng = np.random.default_rng([self.seed, zlib.crc32(node.encode()), batch])
        scores = rng.random((total or n, positions))[first:first + n]
        picks = np.sort(np.argpartition(scores, s - 1, axis=1)[:, :s], axis=1)
        return (np.arange(n)[:, None] * positions + picks).ravel(), positions / s


ALL_ROWS = RowSampling(0, 1)
