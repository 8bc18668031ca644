"""Groups that grouped convolutions cut in blocks lose channels in rounds, in every data method.

A group that grouped convs cut in blocks (analysis.grouped: cells that must lose equally many
channels) is selected in rounds (``Rounds``): each round removes one channel from every block,
whichever block's cheapest removal is cheapest going first, so any whole number of rounds keeps
the blocks equal and every such prefix of a removal order is allowed (PRO reads counts off it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.groups import Analysis
from .least_squares import Parts


@dataclass(frozen=True)
class Rounds(Parts):
    """Parts that are the blocks of a group cut by grouped convs (``part[c]``: channel c's cell),
    each to give up ``removals[q]``, the same for all: a channel is a candidate only while its
    block has lost no more than every other block, so the greedy selections remove in rounds."""

    def exhausted(self, done: np.ndarray) -> np.ndarray:
        return super().exhausted(done) | (done > done.min())[self.part]


def rounds(analysis: Analysis, gid: int, kept: int) -> Rounds | None:
    """Group ``gid`` kept at ``kept`` channels in rounds over its blocks; None for a group that no
    grouped conv cuts. ``kept`` must be a multiple of the number of blocks."""
    cell = analysis.cells.get(gid)
    if cell is None:
        return None
    blocks = int(cell.max()) + 1
    if kept % blocks:
        raise ValueError(f"group {gid} is cut in {blocks} blocks: it cannot keep {kept} channels")
    return Rounds(cell, np.full(blocks, (len(cell) - kept) // blocks))
