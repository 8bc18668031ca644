"""L1-norm filter pruning (Li et al., 2017): keep the filters with the largest weights.

A channel's score is the mean absolute weight of the filter that produces it,
summed over every producer in its group (coupled producers of a residual Add,
an SE gate, ...). Using the mean rather than the sum makes producers with
different fan-ins comparable. No data, no reconstruction: the plain baseline.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..analysis.groups import Analysis
from ..calibration.statistics import Calibration
from ..passes.surgery import prune_channels
from ..progress import Progress
from .base import Keep, Pruned, SelectionMethod, register


@register
class L1(SelectionMethod):
    name = "l1"
    summary = "filters with the largest mean absolute weight stay (no data, no reconstruction)"

    def prune(self, normalized: onnx.ModelProto, analysis: Analysis, counts: dict[int, int],
              calibration: Calibration | None, progress: Progress) -> Pruned:
        keep = select(analysis, l1_scores(analysis), counts)
        return Pruned(prune_channels(normalized, analysis, keep), keep)

    def orders(self, analysis: Analysis, groups) -> dict[int, np.ndarray]:
        """Each group's removal order: the lowest score first."""
        scores = l1_scores(analysis)
        return {g: np.argsort(scores[g], kind="stable") for g in groups}


def l1_scores(analysis: Analysis) -> list[np.ndarray]:
    """Score of every channel of every group (index: group id, then channel index)."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    class_score = np.zeros(len(analysis.class_group))
    for source in analysis.sources:
        if source.node is None:
            continue
        w = np.moveaxis(np.asarray(nodes[source.node].inputs[source.weight_index].values), source.weight_axis, 0)
        per_channel = np.abs(w.reshape(w.shape[0], -1)).mean(axis=1, dtype=np.float64)
        atoms = np.arange(source.start, source.start + source.count)
        np.add.at(class_score, analysis.atom_class[atoms], per_channel)
    return [class_score[classes] for classes in analysis.group_classes]


def select(analysis: Analysis, scores: list[np.ndarray], counts: dict[int, int]) -> Keep:
    """Keep the ``counts[g]`` best-scoring channels of each group, never emptying a tensor."""
    keep = {}
    for gid, k in counts.items():
        order = np.argsort(-scores[gid], kind="stable")
        keep[gid] = np.sort(order[:k])
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

