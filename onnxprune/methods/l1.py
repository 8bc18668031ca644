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
from .base import Pruned, SelectionMethod, register
from .scores import l1_scores, removal_order, select


@register
class L1(SelectionMethod):
    name = "l1"
    summary = "filters with the largest mean absolute weight stay (no data, no reconstruction)"

    def prune(self, normalized: onnx.ModelProto, analysis: Analysis, counts: dict[int, int],
              calibration: Calibration | None, progress: Progress) -> Pruned:
        keep = select(analysis, l1_scores(analysis), counts)
        return Pruned(prune_channels(normalized, analysis, keep), keep)

    def orders(self, analysis: Analysis, groups) -> dict[int, np.ndarray]:
        """Each group's removal order: the lowest score first (in rounds over the blocks of a group
        that grouped convs cut, so every count PRO steps through keeps them equal)."""
        scores = l1_scores(analysis)
        return {g: removal_order(analysis, scores, g) for g in groups}
