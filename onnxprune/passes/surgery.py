"""Cut channels out of a model, consistently across every member of their groups.

The analysis (``groups.analyze``) recorded each rewrite as an ``Edit``; surgery
replays them for the channels kept: producer weights and biases, channel-wise
parameters, depthwise ``group`` attributes, Split sizes, Slice bounds, Resize
sizes, flattening Reshapes, the head counts of attention's Reshapes and the
consumers' input slices (H*W rows per channel after a Flatten, d per attention
head; block by block for a grouped conv).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis.groups import Analysis, Edit, EditKind
from ..errors import OnnxPruneError
from ..graph.convert import set_constant_input, to_graph, to_model, unique_name
from ..graph.io import default_opset


def prune_channels(model: onnx.ModelProto, analysis: Analysis, keep: dict[int, np.ndarray]) -> onnx.ModelProto:
    """A new model keeping, for each group id in ``keep``, the listed channel indices.

    ``model`` must be the (normalised) model that ``analysis`` was made from.
    """
    for gid, kept in keep.items():
        group = analysis.groups[gid]
        kept = np.asarray(kept)
        if len(kept) < group.channels and not group.prunable:
            raise OnnxPruneError(f"group {gid} is frozen ({group.reason}) and cannot be pruned")
        if len(kept) == 0:
            raise OnnxPruneError(f"group {gid} would lose all of its {group.channels} channels")
        if kept.min() < 0 or kept.max() >= group.channels or len(np.unique(kept)) != len(kept):
            raise OnnxPruneError(f"group {gid}: kept channel indices must be distinct, in 0..{group.channels - 1}")
        if gid in analysis.cells and len(set(np.bincount(analysis.cells[gid][kept], minlength=group.blocks))) > 1:
            raise OnnxPruneError(f"group {gid} must keep as many channels in each of its {group.blocks} blocks "
                                 f"(grouped Conv {', '.join(group.grouped_by)})")
    removed = analysis.removed_mask(keep)
    for name in analysis.layouts:
        if analysis.channel_count(name, removed) == 0:
            raise OnnxPruneError(f"pruning would leave tensor '{name}' with no channels")
    graph = to_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    opset = default_opset(model)
    for edit in analysis.edits:
        positions = analysis.kept_positions(edit.tensor, removed)
        if positions is not None:
            _apply(graph, nodes[edit.node], edit, positions, analysis, removed, opset)
    return to_model(graph, model)


def _apply(graph: gs.Graph, node: gs.Node, edit: Edit, positions: np.ndarray,
           analysis: Analysis, removed: np.ndarray, opset: int) -> None:
    if edit.kind is EditKind.SLICE_CONST:
        values = np.asarray(node.inputs[edit.index].values)
        set_constant_input(graph, node, edit.index, np.take(values, positions, axis=edit.axis))
    elif edit.kind is EditKind.SLICE_GROUPED:
        weight = np.asarray(node.inputs[edit.index].values)
        groups = int(node.attrs["group"])
        set_constant_input(graph, node, edit.index,
                           grouped_input(weight, positions, groups, analysis.channel_count(edit.tensor)))
    elif edit.kind is EditKind.SET_GROUP:
        node.attrs["group"] = len(positions)
    elif edit.kind is EditKind.SPLIT_SIZES:
        sizes = [analysis.channel_count(o.name, removed) for o in node.outputs]
        _set_split_sizes(graph, node, sizes, opset)
    elif edit.kind is EditKind.SLICE_RANGE:
        start = int((positions < edit.start).sum())
        stop = start + int(((positions >= edit.start) & (positions < edit.stop)).sum())
        _set_slice_bounds(graph, node, edit.index, start, stop, opset)
    elif edit.kind is EditKind.RESIZE_SIZES:
        sizes = np.array(node.inputs[edit.index].values, dtype=np.int64)
        sizes[1] = len(positions)
        set_constant_input(graph, node, edit.index, sizes)
    elif edit.kind is EditKind.SHAPE_ENTRY:  # an attention's head count H (or width H*d), a token Reshape's C
        shape = np.array(node.inputs[edit.index].values)  # int64, or int32 where tf2onnx Casts the shape
        shape.reshape(-1)[edit.axis] = len(positions)
        set_constant_input(graph, node, edit.index, shape)
    elif edit.kind is EditKind.RESHAPE_FEATURES:
        shape = np.array(node.inputs[1].values, dtype=np.int64)
        if shape[1] != -1:
            shape[1] = len(positions)
            set_constant_input(graph, node, 1, shape)
    else:  # pragma: no cover - every kind is handled above
        raise AssertionError(edit.kind)


def grouped_input(weight: np.ndarray, positions: np.ndarray, groups: int, channels: int) -> np.ndarray:
    """A grouped Conv's weight (rows x a x ...) keeping its input channels at ``positions`` (of
    ``channels`` = groups * a): the rows of output block j (rows / groups of them) read input block
    j, so they keep the columns positions[j] - j * a. Every block must keep as many."""
    a, rows = channels // groups, weight.shape[0] // groups
    per_block = [positions[(positions >= j * a) & (positions < (j + 1) * a)] - j * a for j in range(groups)]
    if len({len(p) for p in per_block}) != 1:
        raise OnnxPruneError(f"a grouped Conv (group={groups}) would keep unequal input widths per group: "
                             f"{[len(p) for p in per_block]}")
    return np.concatenate([weight[j * rows:(j + 1) * rows][:, p] for j, p in enumerate(per_block)])


def _set_split_sizes(graph: gs.Graph, node: gs.Node, sizes: list[int], opset: int) -> None:
    values = np.array(sizes, dtype=np.int64)
    if "split" in node.attrs:
        node.attrs["split"] = sizes
    elif len(node.inputs) > 1 and node.inputs[1].name:
        set_constant_input(graph, node, 1, values)
    elif opset >= 13:
        node.attrs.pop("num_outputs", None)
        node.inputs.append(gs.Constant(unique_name(graph, f"{node.name}.split"), values))
    else:
        node.attrs["split"] = sizes


def _set_slice_bounds(graph: gs.Graph, node: gs.Node, k: int, start: int, stop: int, opset: int) -> None:
    if opset < 10:
        starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
        starts[k], ends[k] = start, stop
        node.attrs["starts"], node.attrs["ends"] = starts, ends
        return
    for index, value in ((1, start), (2, stop)):
        values = np.array(node.inputs[index].values).copy()
        values[k] = value
        set_constant_input(graph, node, index, values)
