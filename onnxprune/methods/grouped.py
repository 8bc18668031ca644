"""Grouped convolutions in the data methods: a grouped consumer is one problem per block, and a group cut in blocks loses channels in rounds.

A consumer's selection problem (least_squares: the group's n channels first, then the other
channels it reads) is one *piece* for a Conv with group 1, a Gemm or a MatMul. A Conv with g
groups computes output block j from input block j only, so it is g independent pieces, piece j
with block j's statistics (calibration.grouped), the weights of its outputs, and ``copies`` 1 for
the block's channels and 0 for the others: a channel the piece does not read costs nothing there
and is never refitted into it (NU never folds a channel into one of another block). The methods
sum the pieces like any consumers; each piece is reconstructed on its own (its own ridge).

Its theta is compact, (C_in K / g + 1) x C_out, as the weight (C_out, C_in / g, kh, kw) is: the
rows of output column o are the weights over o's input block. Piece j holds the rows of block j's
channels (in the group's channel order) and the columns of output block j.

A group that grouped convs cut in blocks (analysis.grouped: cells that must lose equally many
channels) is selected in rounds (``Rounds``): each round removes one channel from every block,
whichever block's cheapest removal is cheapest going first, so any whole number of rounds keeps
the blocks equal and every such prefix of a removal order is allowed (PRO reads counts off it).
Within a grouped consumer the blocks are independent, so each block's sequence is its own greedy
elimination; where a dense consumer also reads the group (or the group is the grouped conv's
output, read by dense layers), its costs couple the blocks and count too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..analysis.consumers import Consumer
from ..analysis.groups import Analysis
from ..calibration.grouped import BlockStats
from ..calibration.layer_stats import LayerStats
from .least_squares import ConsumerFit, Parts, Problem, columns, error


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


@dataclass(frozen=True)
class Piece:
    """One least-squares problem of a consumer: statistics with the group's n channels first (then
    the other channels it reads, ``channels`` in all), original weights theta0, ``copies`` (None:
    one K-block per channel), and where it sits in the consumer's theta: its columns are the
    theta rows ``rows`` (bias: -1) and it fits the output columns ``outputs``."""

    fit: LayerStats
    holdout: LayerStats | None
    taps: int
    theta0: np.ndarray
    channels: int
    copies: np.ndarray | None
    rows: np.ndarray
    outputs: np.ndarray

    @property
    def total(self) -> LayerStats:
        return self.fit if self.holdout is None else self.fit + self.holdout

    def problem(self) -> Problem:
        return (self.total, self.taps, self.theta0) + (() if self.copies is None else (self.copies,))

    def consumer_fit(self) -> ConsumerFit:
        return ConsumerFit(self.fit, self.holdout, self.taps, self.theta0, self.channels, self.copies)


def pieces(analysis: Analysis, c: Consumer, problem: Consumer, read_rows: np.ndarray, rows: np.ndarray,
           copies: np.ndarray | None, fit: LayerStats | BlockStats, holdout: LayerStats | BlockStats | None,
           theta: np.ndarray, cols: np.ndarray) -> list[Piece]:
    """Consumer ``c``'s problems for its group: ``problem``, ``read_rows``, ``rows`` and ``copies``
    as sequential.group_first lays it out (used for a dense consumer), the statistics collected for
    it, and its theta for the output columns ``cols`` (original output indices)."""
    if c.groups == 1:
        return [Piece(fit.permuted(read_rows).outputs(cols),
                      None if holdout is None else holdout.permuted(read_rows).outputs(cols),
                      c.taps, theta[rows], problem.channels, copies, rows, np.arange(len(cols)))]
    # A grouped conv reads only its group (analysis.grouped), all of whose channels it still has.
    channel = analysis.class_index[analysis.atom_class[analysis.layouts[c.input].atoms]]  # per input position
    a, b = len(channel) // c.groups, fit.blocks[0].cross.shape[1]
    result = []
    for j in range(c.groups):
        positions = j * a + np.argsort(channel[j * a:(j + 1) * a], kind="stable")  # in channel order
        block_rows = columns(positions - j * a, c.taps)
        outputs = np.flatnonzero(cols // b == j)
        local = cols[outputs] - j * b
        reads = np.zeros(len(channel), dtype=np.intp)
        reads[channel[positions]] = 1
        result.append(Piece(fit.blocks[j].permuted(block_rows).outputs(local),
                            None if holdout is None else holdout.blocks[j].permuted(block_rows).outputs(local),
                            c.taps, theta[np.ix_(block_rows, outputs)], len(channel), reads, block_rows, outputs))
    return result


def join(c: Consumer, parts: list[Piece], thetas: list[np.ndarray], outputs: int) -> np.ndarray:
    """The consumer's theta (c.columns x ``outputs``) from its pieces' thetas, zero elsewhere."""
    theta = np.zeros((c.columns, outputs))
    for piece, t in zip(parts, thetas, strict=True):
        theta[np.ix_(piece.rows, piece.outputs)] = t
    return theta


def relative_error(parts: list[Piece], thetas: list[np.ndarray]) -> float:
    """||Y - Xa theta||^2 / ||Y||^2 over all of a consumer's pieces (calibration data)."""
    return (sum(error(p.total, t) for p, t in zip(parts, thetas, strict=True))
            / max(sum(p.total.energy for p in parts), 1e-300))


def restrict(c: Consumer, theta: np.ndarray, present: np.ndarray, in_channels: int) -> np.ndarray:
    """Rows of ``theta`` (rows as c reads all ``in_channels`` input channels; a column per output)
    for the input channels at ``present``: ``columns(present)`` for a dense consumer; for a grouped
    conv, each output column keeps its own block's (equally many in every block)."""
    if c.groups == 1:
        return theta[columns(present, c.taps)]
    a, b = in_channels // c.groups, theta.shape[1] // c.groups
    return np.concatenate([theta[np.ix_(columns(present[present // a == j] - j * a, c.taps),
                                        np.arange(j * b, (j + 1) * b))] for j in range(c.groups)], axis=1)
