"""L1 scores of each group's channels, and the best-scoring channels at given counts (l1's choice and every method's cost proxy).

``select`` never empties a tensor. prune.proxy_choice predicts every method's cost with it, and
sequential.part_quotas gives each part of a group read in parts the count it predicted with.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..analysis.grouped import in_rounds, round_up
from ..analysis.groups import Analysis

Keep = dict[int, np.ndarray]  # group id -> the kept channels' indices, sorted


def l1_scores(analysis: Analysis) -> list[np.ndarray]:
    """Score of every channel of every group (index: group id, then channel index)."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    class_score = np.zeros(len(analysis.class_group))
    for source in analysis.sources:
        weight = nodes[source.node].inputs[source.weight_index] if source.node is not None else None
        if not isinstance(weight, gs.Constant):  # channels of unknown origin, or a dequantized layer's: frozen
            continue
        w = np.moveaxis(np.asarray(weight.values), source.weight_axis, 0)
        # a channel owns w.shape[0] / count of the rows (an attention head: its d columns of Wq, Wk, Wv)
        per_channel = np.abs(w.reshape(source.count, -1)).mean(axis=1, dtype=np.float64)
        atoms = np.arange(source.start, source.start + source.count)
        np.add.at(class_score, analysis.atom_class[atoms], per_channel)
    return [class_score[classes] for classes in analysis.group_classes]


def removal_order(analysis: Analysis, scores: list[np.ndarray], gid: int) -> np.ndarray:
    """Group ``gid``'s channels, lowest score first; for a group that grouped convs cut in blocks,
    in rounds (grouped.in_rounds), so that any count of whole rounds removes equally from each."""
    if gid in analysis.cells:
        return in_rounds(scores[gid], analysis.cells[gid])
    return np.argsort(scores[gid], kind="stable")


def select(analysis: Analysis, scores: list[np.ndarray], counts: dict[int, int]) -> Keep:
    """Keep the ``counts[g]`` best-scoring channels of each group, never emptying a tensor; a
    group cut in blocks keeps its best ones in each block, its count rounded up to whole rounds."""
    keep = {}
    for gid, k in counts.items():
        group = analysis.groups[gid]
        if gid in analysis.cells:
            k = round_up(k, group.channels, group.blocks)
            keep[gid] = np.sort(removal_order(analysis, scores, gid)[group.channels - k:])
            continue
        order = np.argsort(-scores[gid], kind="stable")
        keep[gid] = np.sort(order[:k])
    return keep_every_tensor(analysis, scores, keep)


def keep_every_tensor(analysis: Analysis, scores: list[np.ndarray], keep: Keep) -> Keep:
    """``keep`` with the best-scoring channel of each Split/Slice part that it would leave with no
    channels kept too (a tensor may not lose all of its channels)."""
    keep = dict(keep)
    removed = analysis.removed_mask(keep)
    for name in analysis.layouts:
        if analysis.channel_count(name, removed) == 0:
            # A Split/Slice part whose channels all lost: keep its best channel.
            classes = analysis.atom_class[analysis.layouts[name].atoms]
            gid = int(analysis.class_group[classes[0]])
            idx = analysis.class_index[classes]
            best = idx[np.argmax(scores[gid][idx])]
            keep[gid] = np.union1d(keep[gid], [best])
            removed = analysis.removed_mask(keep)
    return keep

