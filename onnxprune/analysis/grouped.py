"""Groups constrained by grouped convolutions: the blocks of channels that must keep equal counts.

A Conv with group g > 1 that is not depthwise (ResNeXt, RegNet) reads its input as g blocks of
C_in / g channels and writes g blocks of C_out / g, output block j reading input block j only
(weight: C_out x C_in / g x kh x kw). It stays a grouped conv after pruning only if every block
of its input keeps as many channels as every other, and so does every block of its output: a
channel group that a grouped conv reads or produces is therefore cut *in blocks*, each block
losing the same number of channels (never a whole block: the scheme is "the same number per
block" on both sides, so the group attribute never changes).

Several grouped convs on one group (its reader and its producer, or two readers) each cut it
into blocks; the channels with the same block under every conv form a *cell*. Equal removal
from every cell meets every conv's constraint when the cells are equally large (each conv's
blocks are then unions of equally many cells); otherwise the group stays whole.
"""

from __future__ import annotations

import numpy as np


def block_of(positions: np.ndarray, channels: int, groups: int) -> np.ndarray:
    """The conv group (block) of each position of a tensor of ``channels`` channels read or
    written by a conv with ``groups`` groups: position p is in block p // (channels / groups)."""
    return np.asarray(positions) // (channels // groups)


def cells(blockings: list[np.ndarray]) -> np.ndarray | None:
    """The cell of each channel: channels in the same block under every blocking (one block id
    per channel each). None when the cells are not all equally large (no equal removal from
    every cell would then keep every conv's blocks equal)."""
    _, cell = np.unique(np.stack(blockings, axis=1), axis=0, return_inverse=True)
    cell = cell.ravel()
    sizes = np.bincount(cell)
    return cell if np.all(sizes == sizes[0]) else None


def in_rounds(scores: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """Channels in removal order, lowest score first, in rounds: round r removes the r-th lowest
    scoring channel of every cell (lower scores first within the round), so the first
    r * (number of cells) channels of the order are r from each cell."""
    rank = np.empty(len(scores), dtype=np.intp)  # a channel's place in its cell, lowest score first
    for c in np.unique(cell):
        members = np.flatnonzero(cell == c)
        rank[members[np.argsort(scores[members], kind="stable")]] = np.arange(len(members))
    return np.lexsort((scores, rank))


def round_up(k: int, n: int, blocks: int) -> int:
    """The allowed count nearest above k for a group of n channels in ``blocks`` equal cells: a
    multiple of ``blocks`` (at least one per cell), at most n."""
    return min(n, max(blocks, -(-k // blocks) * blocks))
