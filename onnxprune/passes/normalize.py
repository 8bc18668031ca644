"""Normalise a model before analysis; every step is exact.

- Constant / ConstantOfShape nodes and constant subgraphs -> initializers
  (graphsurgeon's constant folding, which runs them in onnxruntime).
- Identity nodes removed.
- ``BatchNormalization(Conv(x)) -> Conv(x)`` (also ConvTranspose and Gemm):
  with s = gamma / sqrt(var + eps),  W' = s * W (per output channel),
  b' = s * (b - mean) + beta. A BatchNormalization with nothing foldable before
  it stays, as a channel-wise op.
- Every Conv, ConvTranspose and Gemm gets an explicit bias vector (zeros where it
  had none; a Gemm's C broadcast to [M] and beta folded in), so reconstruction
  can always write one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.convert import set_constant_input, to_graph, to_model, unique_name


@dataclass(frozen=True)
class NormalizeReport:
    folded_batchnorms: int
    removed_identities: int
    constants_folded: int


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, NormalizeReport]:
    """Return the normalised model and what was done; ``model`` is not modified."""
    graph = to_graph(model)
    constants_before = _count_nodes(graph, ("Constant", "ConstantOfShape"))
    graph.fold_constants(error_ok=True, recurse_subgraphs=False)
    graph.cleanup(remove_unused_graph_inputs=False)
    constants_folded = constants_before - _count_nodes(graph, ("Constant", "ConstantOfShape"))
    identities = remove_identities(graph)
    folded = fold_batchnorms(graph)
    explicit_biases(graph)
    report = NormalizeReport(folded, identities, constants_folded)
    return to_model(graph, model), report


def remove_identities(graph: gs.Graph) -> int:
    """Bypass Identity nodes; an Identity between a graph input and output stays."""
    removed = 0
    for node in list(graph.nodes):
        if node.op != "Identity":
            continue
        src, dst = node.inputs[0], node.outputs[0]
        if dst in graph.outputs:
            # Keep the output's name: the Identity's producer writes it directly.
            if not isinstance(src, gs.Variable) or not src.inputs or src in graph.outputs:
                continue
            producer = src.inputs[0]
            for reader in list(src.outputs):
                if reader is not node:
                    reader.inputs[reader.inputs.index(src)] = dst
            producer.outputs[producer.outputs.index(src)] = dst
        else:
            for reader in list(dst.outputs):
                for i, t in enumerate(reader.inputs):
                    if t is dst:
                        reader.inputs[i] = src
        node.inputs.clear()
        node.outputs.clear()
        removed += 1
    graph.cleanup(remove_unused_graph_inputs=False)
    return removed


def batchnorm_scale_shift(bn: gs.Node) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t) with BN(y) = s * y + t per channel, in float64, or None if not constant."""
    params = bn.inputs[1:5]
    if len(params) != 4 or not all(isinstance(p, gs.Constant) for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p.values, dtype=np.float64) for p in params)
    eps = float(bn.attrs.get("epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    return s, beta - s * mean


def fold_batchnorms(graph: gs.Graph) -> int:
    """Fold every BatchNormalization whose input comes only from a Conv, ConvTranspose or Gemm."""
    folded = 0
    for bn in list(graph.nodes):
        if bn.op != "BatchNormalization" or not _foldable_bn(bn):
            continue
        y = bn.inputs[0]
        if not y.inputs or len(y.outputs) != 1 or y in graph.outputs:
            continue
        producer = y.inputs[0]
        affine = batchnorm_scale_shift(bn)
        if affine is None or not _fold_into(graph, producer, *affine):
            continue
        producer.outputs[0] = bn.outputs[0]
        bn.inputs.clear()
        bn.outputs.clear()
        folded += 1
    graph.cleanup(remove_unused_graph_inputs=False)
    return folded


def explicit_biases(graph: gs.Graph) -> None:
    """Give Conv/ConvTranspose/Gemm nodes with constant weights a bias vector of their output width."""
    for node in graph.nodes:
        if node.op not in ("Conv", "ConvTranspose", "Gemm") or not isinstance(node.inputs[1], gs.Constant):
            continue
        w = node.inputs[1].values
        if node.op == "Conv":
            m = w.shape[0]
        elif node.op == "ConvTranspose":
            m = w.shape[1] * int(node.attrs.get("group", 1))
        else:
            if w.ndim != 2 or node.attrs.get("transA", 0):
                continue
            m = w.shape[0] if int(node.attrs.get("transB", 0)) else w.shape[1]
        bias = _bias(node, 2, m)
        if bias is None:
            continue
        if node.op == "Gemm":
            bias = bias * float(node.attrs.get("beta", 1.0))
            node.attrs["beta"] = 1.0
        values = bias.astype(w.dtype)
        if len(node.inputs) > 2 and node.inputs[2].name:
            if node.inputs[2].values.shape != (m,) or node.op == "Gemm":
                set_constant_input(graph, node, 2, values)
        else:
            while len(node.inputs) < 2:
                node.inputs.append(gs.Variable.empty())
            if len(node.inputs) == 2:
                node.inputs.append(gs.Constant(unique_name(graph, f"{node.name}.bias"), values))
            else:
                node.inputs[2] = gs.Constant(unique_name(graph, f"{node.name}.bias"), values)


def _foldable_bn(bn: gs.Node) -> bool:
    extra_outputs_used = any(o.outputs for o in bn.outputs[1:])
    training = bool(bn.attrs.get("training_mode", 0))
    per_channel = int(bn.attrs.get("spatial", 1)) == 1
    return not extra_outputs_used and not training and per_channel


def _fold_into(graph: gs.Graph, node: gs.Node, s: np.ndarray, t: np.ndarray) -> bool:
    """Scale ``node``'s output channels by s and add t; False where that is not possible."""
    if node.op not in ("Conv", "ConvTranspose", "Gemm") or len(node.outputs) != 1:
        return False
    weight = node.inputs[1]
    if not isinstance(weight, gs.Constant):
        return False
    w = np.asarray(weight.values)
    if node.op == "Conv":
        if w.shape[0] != s.size:
            return False
        new_w = w * s.reshape(-1, *[1] * (w.ndim - 1))
        bias_index = 2
    elif node.op == "ConvTranspose":
        g = int(node.attrs.get("group", 1))
        if w.shape[1] * g != s.size:
            return False
        scale = s.reshape(g, 1, -1, *[1] * (w.ndim - 2))
        new_w = (w.reshape(g, w.shape[0] // g, *w.shape[1:]) * scale).reshape(w.shape)
        bias_index = 2
    else:  # Gemm: y = alpha * A' B' + beta * C
        if node.attrs.get("transA", 0) or w.ndim != 2:
            return False
        trans_b = int(node.attrs.get("transB", 0))
        m = w.shape[0] if trans_b else w.shape[1]
        if m != s.size:
            return False
        new_w = w * (s[:, None] if trans_b else s[None, :])
        bias_index = 2
    old_bias = _bias(node, bias_index, s.size)
    if old_bias is None:
        return False
    if node.op == "Gemm":
        old_bias = old_bias * float(node.attrs.get("beta", 1.0))
        node.attrs["beta"] = 1.0
    dtype = w.dtype
    set_constant_input(graph, node, 1, new_w.astype(dtype))
    new_bias = (s * old_bias + t).astype(dtype)
    if len(node.inputs) > bias_index:
        set_constant_input(graph, node, bias_index, new_bias)
    else:
        node.inputs.append(gs.Constant(unique_name(graph, f"{node.name or 'node'}.bias"), new_bias))
    return True


def _bias(node: gs.Node, index: int, n: int) -> np.ndarray | None:
    """The node's bias as a float64 vector of n, zeros if absent, None if not a constant vector."""
    if len(node.inputs) <= index or (isinstance(node.inputs[index], gs.Variable) and not node.inputs[index].name):
        return np.zeros(n)
    bias = node.inputs[index]
    if not isinstance(bias, gs.Constant):
        return None
    b = np.asarray(bias.values, dtype=np.float64)
    if b.size == 1:
        return np.full(n, b.reshape(()).item())
    if b.size != n:
        return None
    return b.reshape(n)


def _count_nodes(graph: gs.Graph, ops: tuple[str, ...]) -> int:
    return sum(1 for n in graph.nodes if n.op in ops)
