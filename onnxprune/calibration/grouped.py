"""Statistics of a grouped conv consumer, block by block.

A Conv with g groups computes output block j (C_out / g channels) from input block j
(C_in / g channels) only: g independent least-squares problems. Its statistics are those
of each block as a Conv of its own, G_j = Xa_j^T Xa_j and C_j = Xa_j^T Y_j with
Xa_j = [im2col(input block j) 1] and Y_j = output block j: g Grams of (C_in K / g + 1)^2
instead of one of (C_in K + 1)^2 (32 times smaller for ResNeXt's 32 groups), and no cross
terms between blocks, which no weight uses.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from collections.abc import Iterator

import numpy as np

from ..analysis.consumers import Consumer
from .layer_stats import LayerStats


@dataclass(frozen=True)
class BlockStats:
    """One LayerStats per block of a grouped conv (columns: the block's channels * K + tap, then
    the bias; outputs: the block's). Statistics of batches merge by ``+``, block by block."""

    blocks: tuple[LayerStats, ...]

    def __add__(self, other: BlockStats) -> BlockStats:
        return BlockStats(tuple(a + b for a, b in zip(self.blocks, other.blocks, strict=True)))

    @property
    def rows(self) -> int:
        return self.blocks[0].rows


def blocks_of(x: np.ndarray, y: np.ndarray, c: Consumer) -> Iterator[tuple[np.ndarray, np.ndarray, Consumer]]:
    """The grouped consumer ``c``'s input x and target y block by block, each block's consumer a
    Conv with group 1 reading C_in / g channels: (x_j, y_j, c_j) for j < g."""
    a, b = x.shape[1] // c.groups, y.shape[1] // c.groups
    one = replace(c, channels=a, groups=1)
    for j in range(c.groups):
        yield np.ascontiguousarray(x[:, j * a:(j + 1) * a]), np.ascontiguousarray(y[:, j * b:(j + 1) * b]), one
