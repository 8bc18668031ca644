"""A consumer's weights and bias as one matrix theta, read from and written back into the graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..analysis.consumers import Consumer, bias_add
from ..graph.convert import set_constant_input, to_graph, to_model


def theta_of(node: gs.Node, c: Consumer) -> np.ndarray:
    """A consumer's weights and bias as a (n*K + 1) x m matrix (rows channel*K + tap, bias last)."""
    w = np.asarray(node.inputs[1].values, dtype=np.float64)
    if c.op == "Conv":
        weights = w.reshape(w.shape[0], -1).T
        bias = np.asarray(node.inputs[2].values, dtype=np.float64)
    elif c.op == "ConvTranspose":  # W (n, m, kh, kw): row c*K + t, column o is W[c, o, t]
        weights = w.reshape(w.shape[0], w.shape[1], -1).transpose(0, 2, 1).reshape(-1, w.shape[1])
        bias = np.asarray(node.inputs[2].values, dtype=np.float64)
    elif c.op == "Gemm":
        alpha = float(node.attrs.get("alpha", 1.0))
        weights = alpha * (w.T if int(node.attrs.get("transB", 0)) else w)
        bias = np.asarray(node.inputs[2].values, dtype=np.float64).reshape(-1)
    else:
        weights = w
        add = bias_add(node)
        bias = next(np.asarray(t.values, dtype=np.float64) for t in add.inputs if isinstance(t, gs.Constant))
    return np.vstack([weights, np.broadcast_to(bias.reshape(-1), (weights.shape[1],))[None, :]])


def param_slots(node: gs.Node, c: Consumer) -> list[tuple[gs.Node, int]]:
    """Where a consumer's weight and bias live: (node, input index) of each.
    A MatMul's bias is the constant of the Add after it."""
    if c.op == "MatMul":
        add = bias_add(node)
        return [(node, 1), (add, next(i for i, t in enumerate(add.inputs) if isinstance(t, gs.Constant)))]
    return [(node, 1), (node, 2)]


def theta_params(c: Consumer, theta: np.ndarray, outputs: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                 trans_b: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the consumer's ``weight`` and ``bias`` (original shapes, a Gemm's alpha
    already applied) with the columns ``outputs`` taken from ``theta`` (rows channel*K + tap,
    bias last)."""
    w, b = np.array(weight), np.array(bias)
    body, last = theta[:-1], theta[-1]
    if c.op == "Conv":
        w[outputs] = body.T.reshape(len(outputs), *w.shape[1:])
    elif c.op == "ConvTranspose":  # back from rows c*K + t to W[c, o, t]
        w[:, outputs] = body.reshape(w.shape[0], -1, len(outputs)).transpose(0, 2, 1).reshape(
            w.shape[0], len(outputs), *w.shape[2:])
    elif trans_b:
        w[outputs] = body.T
    else:
        w[:, outputs] = body
    flat = b.reshape(-1)  # a view: a MatMul's bias may be (1, m)
    flat[outputs] = last
    return w, b


def stored(node: gs.Node, c: Consumer, theta: np.ndarray) -> np.ndarray:
    """``theta`` in float32 where the consumer's weight and bias are float32 (what ``theta_params``
    writes them as: the same numbers, half the memory), else as it is (a float64 -> float16 write
    rounds once, through float32 twice)."""
    dtypes = {np.asarray(holder.inputs[i].values).dtype for holder, i in param_slots(node, c)}
    return theta.astype(np.float32) if dtypes == {np.dtype(np.float32)} else theta


def fold_alpha(node: gs.Node, weight: np.ndarray) -> np.ndarray:
    """A Gemm's ``weight`` times its alpha; the node's alpha becomes 1 (theta has no alpha)."""
    alpha = float(node.attrs.get("alpha", 1.0))
    node.attrs["alpha"] = 1.0
    return weight * np.asarray(alpha, dtype=weight.dtype)


def write_theta(graph: gs.Graph, node: gs.Node, c: Consumer, theta: np.ndarray, outputs: np.ndarray) -> None:
    """Write ``theta`` (columns: the kept ``outputs``) into the node's original-shape weights."""
    (wn, wi), (bn, bi) = param_slots(node, c)
    weight, bias = np.asarray(wn.inputs[wi].values), np.asarray(bn.inputs[bi].values)
    if c.op == "Gemm":
        weight = fold_alpha(node, weight)
    weight, bias = theta_params(c, theta, outputs, weight, bias, bool(node.attrs.get("transB", 0)))
    set_constant_input(graph, bn, bi, bias)
    set_constant_input(graph, wn, wi, weight)


def overlay_weights(normalized: onnx.ModelProto, thetas: dict[str, tuple[Consumer, np.ndarray, np.ndarray]],
                    ) -> onnx.ModelProto:
    """``normalized`` with the given consumers' reconstructed weights written in (original shapes)."""
    graph = to_graph(normalized)
    nodes = {n.name: n for n in graph.nodes}
    for name, (c, theta, outputs) in thetas.items():
        write_theta(graph, nodes[name], c, theta, outputs)
    return to_model(graph, normalized)
