"""MACs and parameters, per node and in total.

Conventions (also in docs/GUIDE.md):
- MACs are multiply-accumulates of Conv, ConvTranspose, Gemm and MatMul only,
  per sample (a dynamic batch dim counts as 1):
  Conv          N * C_out * prod(out_spatial) * (C_in / group) * prod(kernel)
  ConvTranspose N * C_in * prod(in_spatial) * (C_out / group) * prod(kernel)
  Gemm / MatMul prod(output shape) * K
  Bias adds, activations, pooling and normalisation are not counted.
- Parameters are the elements of floating-point initializers (weights, biases,
  BatchNorm and other per-channel constants), each counted once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import OnnxPruneError
from ..graph.convert import to_graph
from ..graph.shapes import infer_shapes, unknown_after
from .groups import Analysis, EditKind

COSTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class NodeCost:
    node: str
    op: str
    macs: int
    params: int


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int
    nodes: tuple[NodeCost, ...]
    # nodes whose MACs are not in ``macs`` (partial counts only): node -> the op onnx does not know before it
    not_counted: dict[str, str] = field(default_factory=dict)


def node_macs(node: gs.Node, shapes: dict[str, tuple], unknown_after: dict[str, str] | None = None,
              inputs_fixed: bool = False) -> int:
    """MACs of one node from the shapes of its tensors (0 for ops that are not counted); an error
    naming the cause where a shape it needs is unknown (``unknown_after``: see shapes.unknown_after;
    ``inputs_fixed``: every graph input's dims are known, so fixing them is not the remedy)."""
    if node.op not in COSTED_OPS:
        return 0

    def dims(tensor, what: str) -> tuple[int, ...]:
        shape = tuple(tensor.shape) if isinstance(tensor, gs.Constant) else shapes.get(tensor.name)
        if shape is None or any(d is None for d in shape):
            where = f"cannot count MACs of {node.op} node '{node.name}': the shape of its {what} '{tensor.name}'"
            after = (unknown_after or {}).get(tensor.name)
            if inputs_fixed:  # onnxruntime was asked for the shapes inference could not give
                cause = f"after {after}, an op onnx does not know" if after else "to onnx shape inference"
                raise OnnxPruneError(f"{where} is unknown {cause}, and onnxruntime could not run the model on "
                                     "random inputs to measure it (every input dim is fixed)")
            if after is not None:
                raise OnnxPruneError(
                    f"{where} is unknown after {after}, an op onnx does not know (onnxruntime works such "
                    f"shapes out when it can run the model and every input dim is fixed: --input-shape NAME=d0,d1,...)"
                )
            raise OnnxPruneError(f"{where} is unknown; fix dynamic input dims with --input-shape NAME=d0,d1,... "
                                 "(prune takes them from --calib data when given)")
        return shape

    w = dims(node.inputs[1], "weight")
    if node.op == "Conv":
        out = dims(node.outputs[0], "output")
        return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if node.op == "ConvTranspose":
        x = dims(node.inputs[0], "input")
        return int(np.prod(x, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    out = dims(node.outputs[0], "output")
    if node.op == "Gemm":
        k = w[1] if int(node.attrs.get("transB", 0)) else w[0]  # B is [M, K] or [K, M]
        return int(np.prod(out, dtype=np.int64) * k)
    x = dims(node.inputs[0], "input")
    return int(np.prod(out, dtype=np.int64) * x[-1])


def node_params(node: gs.Node) -> int:
    return int(sum(t.values.size for t in node.inputs if _is_float_constant(t)))


def model_cost(graph: gs.Graph, shapes: dict[str, tuple], unknown_after: dict[str, str] | None = None,
               partial: bool = False) -> Cost:
    """MACs and parameters of a graph, per node and in total. ``partial``: the layers whose
    shapes are unknown behind an op onnx does not know (``unknown_after``) are left out of the
    MACs and listed in ``not_counted`` instead of being an error (for ``inspect``)."""
    unknown_after = unknown_after or {}
    nodes = []
    not_counted = {}
    counted: set[str] = set()
    params = 0
    inputs_fixed = all(None not in shapes.get(t.name, (None,)) for t in graph.inputs)
    for node in graph.nodes:
        for t in node.inputs:
            if _is_float_constant(t) and t.name not in counted:
                counted.add(t.name)
                params += t.values.size
        try:
            macs = node_macs(node, shapes, unknown_after, inputs_fixed)
        except OnnxPruneError:
            after = next((unknown_after[t.name] for t in [*node.inputs, *node.outputs] if t.name in unknown_after), None)
            if not partial or after is None:
                raise
            not_counted[node.name] = after
            continue
        if macs or node.op in COSTED_OPS:
            nodes.append(NodeCost(node.name, node.op, macs, node_params(node)))
    return Cost(sum(n.macs for n in nodes), int(params), tuple(nodes), not_counted)


def cost_of(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Cost:
    """MACs and parameters of a model (shapes from onnx shape inference, or onnxruntime)."""
    shapes = infer_shapes(model, input_shapes)
    return model_cost(to_graph(model), shapes, unknown_after(model, shapes))


class MacPredictor:
    """MACs after removing channels, without rewriting the model.

    A layer that reads channels into its weights (a consumer: dense, or grouped, whose
    C_in / group shrinks with C_in) scales with (kept inputs / inputs) * (kept outputs /
    outputs); a depthwise conv, whose input channels are its output channels, with its kept
    outputs only (as does a layer whose inputs are frozen).
    """

    def __init__(self, analysis: Analysis, cost: Cost):
        self.analysis = analysis
        nodes = {n.name: n for n in analysis.graph.nodes}
        self.terms = []
        for nc in cost.nodes:
            node = nodes[nc.node]
            reads = nc.node in analysis.consumer_inputs
            self.terms.append((nc.macs, node.inputs[0].name if reads else None, node.outputs[0].name))

    def macs(self, removed: np.ndarray) -> int:
        a = self.analysis
        total = 0
        for macs, x, y in self.terms:
            scale = 1.0
            for t in (x, y):
                if t is not None and t in a.layouts:
                    scale *= a.channel_count(t, removed) / a.channel_count(t)
            total += macs * scale
        return int(round(total))


class ParamPredictor:
    """Parameters after removing channels: each constant shrinks along the axes that
    the analysis slices (by the kept fraction of the tensor that drives the slice)."""

    def __init__(self, analysis: Analysis):
        self.analysis = analysis
        slices: dict[tuple[str, int], list[str]] = {}
        for e in analysis.edits:
            if e.kind in (EditKind.SLICE_CONST, EditKind.SLICE_GROUPED):
                slices.setdefault((e.node, e.index), []).append(e.tensor)
        self.terms = []  # (size, tensors whose kept fraction scales it)
        counted: set[str] = set()
        for node in analysis.graph.nodes:
            for i, t in enumerate(node.inputs):
                if _is_float_constant(t) and t.name not in counted:
                    counted.add(t.name)
                    self.terms.append((t.values.size, slices.get((node.name, i), [])))

    def params(self, removed: np.ndarray) -> int:
        a = self.analysis
        total = 0.0
        for size, tensors in self.terms:
            scale = 1.0
            for t in tensors:
                scale *= a.channel_count(t, removed) / a.channel_count(t)
            total += size * scale
        return int(round(total))


def _is_float_constant(t) -> bool:
    return isinstance(t, gs.Constant) and np.issubdtype(t.values.dtype, np.floating)
