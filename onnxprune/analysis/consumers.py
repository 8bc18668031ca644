"""Consumers: the layers that read a group's channels into their weights, described in im2col terms, and which groups the data methods can reconstruct.

A ConvTranspose consumer is described by its own attributes, its pads made explicit
(auto_pad and output_shape resolved as onnxruntime does); calibration/transposed.py turns it
into the equivalent direct convolution."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx_graphsurgeon as gs

from .groups import Analysis
from .tokens import token_reader, token_source


@dataclass(frozen=True)
class Consumer:
    """A layer that reads a group's channels into its weights, in im2col terms."""

    node: str
    op: str  # Conv, ConvTranspose, Gemm or MatMul
    input: str
    output: str
    channels: int  # n: input channels
    taps: int  # K
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()  # begin..., end... (ConvTranspose: end less output_padding, may be < 0)
    dilations: tuple[int, ...] = ()
    groups: int = 1  # a grouped Conv: output block j reads input block j only (its weights per output: a block's)

    @property
    def columns(self) -> int:
        """Rows of its theta: weights per output, and the bias."""
        return self.channels // self.groups * self.taps + 1


def consumer_of(node: gs.Node, analysis: Analysis) -> Consumer | str:
    """The im2col description of a consumer node, or the reason it cannot be reconstructed."""
    x, y = node.inputs[0], node.outputs[0]
    layout = analysis.layouts.get(x.name)
    in_shape = analysis.shapes.get(x.name)
    if layout is None or in_shape is None or None in in_shape:
        return f"{node.op} node '{node.name}': input shape unknown"
    if node.op == "Conv":
        if len(in_shape) != 4:
            return f"Conv node '{node.name}': only 2-D convolutions are reconstructed"
        w = node.inputs[1].values
        kernel = tuple(int(k) for k in w.shape[2:])
        strides = tuple(node.attrs.get("strides", (1, 1)))
        dilations = tuple(node.attrs.get("dilations", (1, 1)))
        pads = _conv_pads(node, in_shape[2:], kernel, strides, dilations)
        return Consumer(node.name, "Conv", x.name, y.name, in_shape[1], int(np.prod(kernel)),
                        kernel, strides, pads, dilations, int(node.attrs.get("group", 1)))
    if node.op == "ConvTranspose":
        return _conv_transpose(node, in_shape, analysis.shapes.get(y.name))
    if node.op in ("Gemm", "MatMul"):
        # A MatMul reads its input's last axis: a transformer's [batch, sequence, features] are
        # rows of tokens (calibration.statistics.token_rows); an attention head is d of them (taps).
        if len(in_shape) != 2 and node.op == "Gemm":
            return f"{node.op} node '{node.name}': input is not 2-D"
        return Consumer(node.name, node.op, x.name, y.name, len(layout.atoms), layout.block)
    return f"{node.op} node '{node.name}': weights of this op are not reconstructed"


def _conv_pads(node: gs.Node, spatial, kernel, strides, dilations) -> tuple[int, ...]:
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", ""):
        return tuple(node.attrs.get("pads", (0,) * 2 * len(kernel)))
    if auto == "VALID":
        return (0,) * 2 * len(kernel)
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return tuple(begin + end)


def _conv_transpose(node: gs.Node, in_shape, out_shape) -> Consumer | str:
    x, y = node.inputs[0], node.outputs[0]
    if int(node.attrs.get("group", 1)) != 1 or len(in_shape) != 4:
        return f"ConvTranspose node '{node.name}': only 2-D transposed convolutions with group=1 are reconstructed"
    kernel = tuple(int(k) for k in node.inputs[1].values.shape[2:])
    strides = tuple(int(s) for s in node.attrs.get("strides", (1, 1)))
    dilations = tuple(int(d) for d in node.attrs.get("dilations", (1, 1)))
    pads = _transposed_pads(node, in_shape[2:], kernel, strides, dilations)
    size = tuple(s * (n - 1) + (k - 1) * d + 1 - b - e
                 for n, k, s, d, b, e in zip(in_shape[2:], kernel, strides, dilations, pads[:2], pads[2:]))
    if out_shape is None or tuple(out_shape[2:]) != size:  # a resolution onnxruntime does not share
        return f"ConvTranspose node '{node.name}': output size {out_shape} is not the {size} its attributes give"
    return Consumer(node.name, "ConvTranspose", x.name, y.name, in_shape[1], int(np.prod(kernel)),
                    kernel, strides, pads, dilations)


def _transposed_pads(node: gs.Node, spatial, kernel, strides, dilations) -> tuple[int, ...]:
    """A ConvTranspose's begin pads, then its end pads less output_padding, so that its output
    size is s*(L-1) + (k-1)*d + 1 - begin - end. With output_shape (out) or auto_pad SAME the
    total padding is t = s*(L-1) + output_padding + (k-1)*d + 1 - out, as onnxruntime takes it
    (tests/test_conv_transpose.py checks it against onnxruntime): SAME takes out = L*s and
    t >= 0; the begin pad is t//2 for SAME_UPPER, else t - t//2, 0 where t < 0 (an
    output_shape beyond the unpadded output extends its end)."""
    n = len(kernel)
    extra = tuple(node.attrs.get("output_padding", (0,) * n))
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    shape = node.attrs.get("output_shape")
    if shape is None and auto not in ("SAME_UPPER", "SAME_LOWER"):
        pads = (0,) * 2 * n if auto == "VALID" else tuple(node.attrs.get("pads", (0,) * 2 * n))
        begin, end = pads[:n], pads[n:]
    else:
        outs = tuple(shape)[-n:] if shape is not None else tuple(size * s for size, s in zip(spatial, strides))
        total = [s * (size - 1) + o + (k - 1) * d + 1 - out
                 for size, k, s, d, o, out in zip(spatial, kernel, strides, dilations, extra, outs)]
        total = total if shape is not None else [max(t, 0) for t in total]
        begin = tuple(max(t, 0) // 2 if auto == "SAME_UPPER" else max(t, 0) - max(t, 0) // 2 for t in total)
        end = tuple(t - b for t, b in zip(total, begin))
    return tuple(int(b) for b in begin) + tuple(int(e - o) for e, o in zip(end, extra))


def reconstructable(analysis: Analysis) -> tuple[dict[int, tuple[Consumer, ...]], dict[int, str]]:
    """Consumers of each group that data methods can prune, and reasons for the others."""
    nodes = {n.name: n for n in analysis.graph.nodes}
    by_group: dict[int, list[Consumer]] = {}
    reasons: dict[int, str] = {}
    for node_name, tensor in analysis.consumer_inputs.items():
        classes = analysis.atom_class[analysis.layouts[tensor].atoms]
        owners = analysis.class_group[classes]
        for gid in set(owners.tolist()):
            if gid < 0:
                continue
            # A consumer may read several groups (a Concat), a part of one (after a Split or Slice)
            # or some of its channels several times (SPPF): sequential.group_first lays that out.
            consumer = _consumer(nodes[node_name], analysis)
            if isinstance(consumer, str):
                reasons.setdefault(gid, consumer)
            else:
                by_group.setdefault(gid, []).append(consumer)
    result = {}
    for g in analysis.groups:
        if g.prunable and g.id not in reasons:
            if g.id in by_group:
                result[g.id] = tuple(by_group[g.id])
            else:
                reasons[g.id] = "no consumer reads these channels into weights"
    return result, {gid: why for gid, why in reasons.items() if analysis.groups[gid].prunable}


def _consumer(node: gs.Node, analysis: Analysis) -> Consumer | str:
    if node.op == "Gemm" and len(node.inputs) < 3:
        return f"Gemm node '{node.name}' has no bias"
    consumer = consumer_of(node, analysis)
    if node.op != "MatMul" or isinstance(consumer, str):
        return consumer
    add = bias_add(node, analysis.shapes)
    if add is None:
        return f"MatMul node '{node.name}' has no bias Add after it to take the reconstructed bias"
    # The target includes the bias. Behind TF's Tensordot Reshapes (tokens.py) the rows are the same
    # tokens in [batch, sequence, C] (so padding is known) as in the 2-D MatMul's [tokens, C].
    x = token_source(node.inputs[0], analysis.shapes)
    return replace(consumer, input=x.name, output=add.outputs[0].name)


def bias_add(node: gs.Node, shapes: dict[str, tuple] | None = None) -> gs.Node | None:
    """The Add of a constant bias vector right after a MatMul, if it is its only reader, or after
    a Reshape that regroups its tokens (tokens.py; checked where ``shapes`` are given)."""
    reshape = token_reader(node.outputs[0], shapes)
    readers = (reshape or node).outputs[0].outputs
    if len(readers) != 1 or readers[0].op != "Add":
        return None
    add = readers[0]
    const = [t for t in add.inputs if isinstance(t, gs.Constant)]
    if len(const) != 1 or const[0].values.size != node.inputs[1].values.shape[1]:
        return None
    return add


def touched_nodes(analysis: Analysis, gid: int) -> set[str]:
    """Nodes that write or read a tensor carrying channels of group ``gid``."""
    tensors = analysis.graph.tensors()
    names: set[str] = set()
    for name, layout in analysis.layouts.items():
        if name in tensors and np.any(analysis.class_group[analysis.atom_class[layout.atoms]] == gid):
            names.update(n.name for n in tensors[name].inputs)
            names.update(n.name for n in tensors[name].outputs)
    return names


def kept_outputs(analysis: Analysis, c: Consumer, removed: np.ndarray) -> np.ndarray:
    """The consumer's outputs (channels of its output's axis 1, a Gemm's or MatMul's last) that ``removed`` keeps."""
    positions = analysis.kept_positions(c.output, removed)
    if positions is not None:
        return positions
    shape = analysis.shapes[c.output]
    return np.arange(shape[1] if c.op in ("Conv", "ConvTranspose") else shape[-1])
