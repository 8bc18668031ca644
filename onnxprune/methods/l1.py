"""L1-norm filter pruning (Li et al., 2017): keep the filters with the largest weights.

A channel's score is the mean absolute weight of the filter that produces it,
summed over every producer in its group (coupled producers of a residual Add,
an SE gate, ...). Using the mean rather than the sum makes producers with
different fan-ins comparable. No data, no reconstruction: the plain baseline.
"""

from __future__ import annotations

import numpy as np

from ..groups import Analysis


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
