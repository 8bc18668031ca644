"""SRN (Serialized Residual Network): residual blocks become equivalent serial conv chains.

    Relu(Add(conv2(relu(conv1 x)), S(x)))  ->  Relu(conv2'(relu(conv1' x)))

S is the identity or a 1x1 projection conv. Every conv of the branch gets C_in extra channels
that carry a copy of x: conv1' = [W1 ; Dirac] (the copy, same stride, bias 0), each middle conv
passes it on with a Dirac kernel, and the last conv adds it in: conv2' = [W2 | D], D the Dirac
kernel or the projection at the kernel's Dirac tap (its bias added to conv2's). A Dirac at tap
pad // dilation samples x exactly like a 1x1 conv with the same stride. The activations between
the convs pass the copy unchanged: as they are where x >= 0 is proved from the graph (Relu,
LeakyRelu), otherwise as a PRelu with slope 1 on the carried channels (Relu: 0 on the own ones).
A branch whose first conv reads a channel-wise function of x (pre-activation blocks,
conv1(relu(bn x))) gets x through a Concat: conv1'(Concat(relu(bn x), x)). Everything else
(clipping activations such as ReLU6 between the convs, grouped convs, paddings where a Dirac is
not exact, ...) is left as it is, with the reason. The result is exactly equivalent but wider.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..graph.convert import set_constant_input, to_graph, to_model, unique_name
from ..graph.shapes import infer_shapes
from .normalize import fold_batchnorms

# Activations that are the identity on v >= 0: they carry a copy of x >= 0 as they are.
CARRYING = frozenset({"Relu", "LeakyRelu", "PRelu"})
# Single-input channel-wise activations (input 0); the others cannot carry a copy exactly.
ACTIVATIONS = CARRYING | frozenset(
    """Clip HardSwish HardSigmoid Sigmoid Tanh Elu Selu Celu Softplus Softsign Gelu Mish
    ThresholdedRelu""".split()
)
# Channel-wise ops a pre-activation block may apply to x before its first conv.
PREFIX_OPS = ACTIVATIONS | {"BatchNormalization"}
# Ops whose output is >= 0 when their input is.
NONNEGATIVE_PRESERVING = frozenset({"MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool", "Pad"})


@dataclass(frozen=True)
class SkippedBlock:
    node: str  # the residual Add (or Sum)
    reason: str


@dataclass(frozen=True)
class SrnReport:
    blocks_serialized: int
    blocks_skipped: tuple[SkippedBlock, ...]

    def to_json(self, macs_before: int, macs_after: int) -> dict:
        return {
            "blocks_serialized": self.blocks_serialized,
            "blocks_skipped": [{"node": s.node, "reason": s.reason} for s in self.blocks_skipped],
            "macs_before": macs_before,
            "macs_after": macs_after,
        }


@dataclass(frozen=True)
class _Block:
    add: gs.Node
    convs: list[gs.Node]  # the branch, first to last
    acts: list[gs.Node | None]  # acts[i] between convs[i] and convs[i + 1]
    taps: list[tuple[int, ...]]  # each conv's Dirac tap
    x: gs.Variable  # what the block adds, directly or through the projection
    projection: gs.Node | None
    concat: bool  # the first conv reads a channel-wise function of x, not x


@dataclass(frozen=True)
class _Failure:
    convs: int  # how many convs of the branch matched: the deeper failure is the one reported
    reason: str


def serialize_residuals(
    model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[onnx.ModelProto, SrnReport]:
    """The serialised model and what was done; ``model`` is not modified.

    Contract: ``model`` is normalised (passes.normalize: BatchNorm folded, constants as
    initializers), as the pipeline's models are. ``input_shapes`` fixes dynamic input dims
    (spatial sizes decide some Dirac checks)."""
    graph = to_graph(model)
    shapes = infer_shapes(model, input_shapes)
    serialized, skipped = 0, []
    for node in list(graph.nodes):
        if not _is_residual(node):
            continue
        block = _match(graph, node, shapes)
        if isinstance(block, _Failure):
            skipped.append(SkippedBlock(node.name, block.reason))
        else:
            _serialize(graph, block)
            serialized += 1
    fold_batchnorms(graph)  # a pre-activation BN whose input now has one reader
    return to_model(graph, model), SrnReport(serialized, tuple(skipped))


# -- matching ------------------------------------------------------------------------


def _is_residual(node: gs.Node) -> bool:
    """An Add or Sum of tensors computed by the graph (a bias Add has a constant input)."""
    return node.op in ("Add", "Sum") and len(node.inputs) >= 2 and all(
        isinstance(t, gs.Variable) for t in node.inputs
    )


def _match(graph: gs.Graph, add: gs.Node, shapes: dict) -> _Block | _Failure:
    """The block the residual ``add`` closes, trying both operands as the branch."""
    if len(add.inputs) != 2:
        return _Failure(0, f"{add.op} of {len(add.inputs)} inputs")
    a, b = add.inputs
    if _broadcasts(shapes.get(a.name), shapes.get(b.name)):
        return _Failure(0, f"{add.op} broadcasts {shapes[a.name]} and {shapes[b.name]}")
    if not any(_made_by(t) == "Conv" for t in (a, b)):
        return _Failure(0, f"neither input is made by a Conv ({_made_by(a)}, {_made_by(b)})")
    attempts = [_match_order(graph, add, f, s, shapes) for f, s in ((a, b), (b, a))]
    blocks = [m for m in attempts if isinstance(m, _Block)]
    return blocks[0] if blocks else max(attempts, key=lambda m: m.convs)


def _match_order(graph: gs.Graph, add: gs.Node, f: gs.Variable, s: gs.Variable,
                 shapes: dict) -> _Block | _Failure:
    """The block with branch output ``f`` and shortcut ``s``."""
    projection = _projection(graph, s, add)
    x = projection.inputs[0] if projection is not None else s
    if _made_by(f) != "Conv":
        return _Failure(0, f"the branch '{f.name}' is made by {_made_by(f)}, not a Conv")
    if all(reader is add or reader is projection for reader in x.outputs):
        return _Failure(0, f"'{x.name}' feeds only the shortcut, not a branch")
    if not _read_only_by(graph, f, add):
        return _Failure(0, f"the branch output '{f.name}' is also read elsewhere")
    convs, acts = [_producer(f)], []
    while True:
        failure = _conv_problem(convs[0], len(convs), shapes)
        if failure is not None:
            return failure
        u = convs[0].inputs[0]
        if u is x:
            return _checked(add, convs, acts, x, projection, shapes, concat=False)
        act = _producer(u)
        v = _activation_input(act) if act is not None else None
        if v is None:
            act, v = None, u
        before = _producer(v)
        if v is x or before is None or before.op != "Conv":
            if not _channelwise_of(u, x):
                return _Failure(len(convs), f"the branch input '{u.name}' (made by {_made_by(u)}) is "
                                f"neither the shortcut '{x.name}' nor a channel-wise function of it")
            return _checked(add, convs, acts, x, projection, shapes, concat=True)
        failure = _link_problem(graph, before, act, convs[0], u, v, len(convs))
        if failure is not None:
            return failure
        convs.insert(0, before)
        acts.insert(0, act)


def _checked(add, convs, acts, x, projection, shapes, concat) -> _Block | _Failure:
    """The block, once the shortcut fits the branch: channels and overall stride."""
    n = len(convs)
    carried = convs[0].inputs[1].shape[1]
    out = convs[-1].inputs[1].shape[0]
    stride = tuple(int(s) for s in np.prod([_ints(c, "strides", 1) for c in convs], axis=0))
    if projection is None:
        if carried != out:
            return _Failure(n, f"identity shortcut of {carried} channels onto {out}")
        if any(s != 1 for s in stride):
            return _Failure(n, f"identity shortcut, but the branch has stride {stride}")
    else:
        p = projection.inputs[1].shape
        p_stride = tuple(_ints(projection, "strides", 1))
        if (p[0], p[1]) != (out, carried):
            return _Failure(n, f"projection '{projection.name}' maps {p[1]} channels to {p[0]}, "
                            f"the branch {carried} to {out}")
        if p_stride != stride:
            return _Failure(n, f"projection '{projection.name}' has stride {p_stride}, the branch {stride}")
    taps = [_dirac_tap(c, shapes) for c in convs]
    return _Block(add, convs, acts, taps, x, projection, concat)


def _projection(graph: gs.Graph, s: gs.Variable, add: gs.Node) -> gs.Node | None:
    """The 1x1 conv (no padding, no groups) that makes ``s``, if only the Add reads it."""
    conv = _producer(s)
    if conv is None or conv.op != "Conv" or not _read_only_by(graph, s, add) or not _constant_weights(conv):
        return None
    w = conv.inputs[1].values
    plain = int(conv.attrs.get("group", 1)) == 1 and _auto_pad(conv) == "NOTSET"
    return conv if plain and all(k == 1 for k in w.shape[2:]) and not any(_ints(conv, "pads", 0)) else None


def _conv_problem(conv: gs.Node, matched: int, shapes: dict) -> _Failure | None:
    """Why ``conv`` cannot carry a Dirac copy, or None."""
    def fail(why):
        return _Failure(matched, f"conv '{conv.name}' {why}")

    if not _constant_weights(conv):
        return fail("has a non-constant weight or bias")
    group = int(conv.attrs.get("group", 1))
    if group != 1:
        kind = "depthwise" if group == conv.inputs[1].shape[0] and conv.inputs[1].shape[1] == 1 else "grouped"
        return fail(f"is a {kind} convolution (group={group})")
    if _auto_pad(conv) != "NOTSET":
        return fail(f"uses auto_pad={_auto_pad(conv)}")
    if _dirac_tap(conv, shapes) is None:
        return fail("has a padding and dilation where a Dirac kernel does not sample like a 1x1 conv")
    return None


def _dirac_tap(conv: gs.Node, shapes: dict) -> tuple[int, ...] | None:
    """The kernel tap at which a Dirac kernel reads input position o*stride for output o.

    Exact where the begin pad is a multiple of the dilation inside the kernel and the conv has
    exactly the output positions of a 1x1 conv with its stride (all its reads inside the input).
    """
    kernel = conv.inputs[1].shape[2:]
    nd = len(kernel)
    strides, dilations = _ints(conv, "strides", 1), _ints(conv, "dilations", 1)
    pads = _ints(conv, "pads", 0, per_dim=2)
    x, y = shapes.get(conv.inputs[0].name), shapes.get(conv.outputs[0].name)
    tap = []
    for i, (k, s, d) in enumerate(zip(kernel, strides, dilations)):
        begin, end = pads[i], pads[i + nd]
        j, rest = divmod(begin, d)
        known = x is not None and y is not None and x[2 + i] is not None and y[2 + i] is not None
        same_positions = y[2 + i] == (x[2 + i] - 1) // s + 1 if known else begin + end == d * (k - 1)
        if rest or j >= k or not same_positions:
            return None
        tap.append(j)
    return tuple(tap)


def _link_problem(graph, before: gs.Node, act: gs.Node | None, after: gs.Node, u, v,
                  matched: int) -> _Failure | None:
    """Why the copy cannot pass from conv ``before`` through ``act`` (v -> u) into conv ``after``."""
    for t, reader in ((v, act or after), (u, after)):
        if not _read_only_by(graph, t, reader):
            return _Failure(matched, f"tensor '{t.name}' inside the branch is also read outside it")
    if act is None:
        return None
    between = f"{act.op} node '{act.name}' between convs '{before.name}' and '{after.name}'"
    if act.op not in CARRYING:
        clips = " (it clips at a max, e.g. ReLU6)" if act.op == "Clip" else ""
        return _Failure(matched, f"{between} cannot pass the shortcut unchanged{clips}")
    weight = before.inputs[1]  # a non-constant one is reported when the walk reaches its conv
    if act.op != "PRelu" or not isinstance(weight, gs.Constant):
        return None
    if _prelu_slope(act, weight.shape[0], weight.values.ndim) is None:
        return _Failure(matched, f"{between} has a slope that is not per channel")
    return None


def _activation_input(node: gs.Node) -> gs.Variable | None:
    """v for a channel-wise activation of v (SiLU's v * Sigmoid(v) included), else None."""
    if node.op in ACTIVATIONS:
        return node.inputs[0]
    if node.op == "Mul" and len(node.inputs) == 2:
        for v, gate in (node.inputs, node.inputs[::-1]):
            g = _producer(gate)
            if g is not None and g.op == "Sigmoid" and g.inputs[0] is v:
                return v
    return None


def _channelwise_of(u: gs.Tensor, x: gs.Tensor) -> bool:
    """``u`` is ``x`` after a chain of shape-preserving channel-wise ops (as in bn-relu)."""
    while u is not x:
        node = _producer(u)
        if node is None or node.op not in PREFIX_OPS:
            return False
        u = node.inputs[0]
    return True


def _nonnegative(t: gs.Tensor) -> bool:
    """``t >= 0`` everywhere, as proved from the graph."""
    node = _producer(t)
    if node is None:
        return False
    if node.op == "Relu":
        return True
    if node.op == "Clip":
        low = _clip_min(node)
        return low is not None and low >= 0
    if node.op == "Pad" and not _pads_nonnegative(node):
        return False
    if node.op in NONNEGATIVE_PRESERVING:
        return _nonnegative(node.inputs[0])
    return node.op == "Concat" and all(_nonnegative(i) for i in node.inputs)


# -- rewriting -----------------------------------------------------------------------


def _serialize(graph: gs.Graph, block: _Block) -> None:
    first, last = block.convs[0], block.convs[-1]
    carried = first.inputs[1].shape[1]
    if block.concat:
        joined = gs.Variable(unique_name(graph, f"{first.name}_srn_input"), dtype=block.x.dtype)
        graph.nodes.append(gs.Node("Concat", unique_name(graph, f"{first.name}_srn_concat"), {"axis": 1},
                                   [first.inputs[0], block.x], [joined]))
        first.inputs[0] = joined
    keeps_sign = _nonnegative(block.x)
    for i, conv in enumerate(block.convs):
        own = conv.inputs[1].shape[0]
        if conv is last:
            shortcut, shortcut_bias = _shortcut(block.projection, carried)
        else:
            shortcut, shortcut_bias = np.eye(carried), None
        _widen(graph, conv, block.taps[i], shortcut, shortcut_bias,
               new_input=i > 0 or block.concat, new_output=conv is not last)
        act = block.acts[i] if conv is not last else None
        if act is not None and (act.op == "PRelu" or not keeps_sign):
            _carry_as_prelu(graph, act, own, carried, conv.inputs[1].values)
    y = block.add.outputs[0]
    block.add.inputs.clear()
    block.add.outputs.clear()
    last.outputs[0] = y


def _shortcut(projection: gs.Node | None, carried: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The shortcut as a [out, carried] matrix, and its bias (None for the identity)."""
    if projection is None:
        return np.eye(carried), None
    w = projection.inputs[1].values
    return w.reshape(w.shape[0], carried), _bias(projection)


def _widen(graph, conv, tap, shortcut, shortcut_bias, new_input: bool, new_output: bool) -> None:
    """Give ``conv`` the carried channels: read them as extra inputs (or from its own input, the
    copy of x itself) and either pass them on as extra outputs or add them to its outputs."""
    w = conv.inputs[1].values
    out, inp = w.shape[:2]
    carried = shortcut.shape[1]
    bias = _bias(conv)
    if new_output:
        bias = np.concatenate([bias, np.zeros(carried)])
    elif shortcut_bias is not None:
        bias = bias + shortcut_bias
    new = np.zeros((out + carried * new_output, inp + carried * new_input, *w.shape[2:]), w.dtype)
    new[:out, :inp] = w
    rows = slice(out, out + carried) if new_output else slice(0, out)
    cols = slice(inp, inp + carried) if new_input else slice(0, carried)
    new[(rows, cols, *tap)] += shortcut
    set_constant_input(graph, conv, 1, new)
    if len(conv.inputs) > 2 and conv.inputs[2].name:
        set_constant_input(graph, conv, 2, bias.astype(w.dtype))
    elif shortcut_bias is not None:
        _set_input(conv, 2, gs.Constant(unique_name(graph, f"{conv.name}.bias"), bias.astype(w.dtype)))


def _carry_as_prelu(graph, act: gs.Node, own: int, carried: int, weight: np.ndarray) -> None:
    """Turn ``act`` (after a conv with this weight) into a PRelu with its own slope on its
    channels and slope 1 on the carried ones."""
    if act.op == "PRelu":
        own_slope = _prelu_slope(act, own, weight.ndim)
    else:
        own_slope = np.full(own, act.attrs.get("alpha", 0.01) if act.op == "LeakyRelu" else 0.0)
    slope = np.concatenate([own_slope, np.ones(carried)]).reshape(own + carried, *[1] * (weight.ndim - 2))
    _set_input(act, 1, gs.Constant(unique_name(graph, f"{act.name}.slope"), slope.astype(weight.dtype)))
    act.op = "PRelu"
    act.attrs.clear()


# -- small helpers -------------------------------------------------------------------


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None


def _broadcasts(a: tuple | None, b: tuple | None) -> bool:
    """Whether shapes a and b are known to differ (unknown dims match anything)."""
    if a is None or b is None:
        return False
    return len(a) != len(b) or any(p is not None and q is not None and p != q for p, q in zip(a, b))


def _made_by(t: gs.Tensor) -> str:
    node = _producer(t)
    return node.op if node is not None else "no node"


def _read_only_by(graph: gs.Graph, t: gs.Tensor, node: gs.Node) -> bool:
    return all(reader is node for reader in t.outputs) and t not in graph.outputs


def _constant_weights(conv: gs.Node) -> bool:
    bias_ok = len(conv.inputs) < 3 or not conv.inputs[2].name or isinstance(conv.inputs[2], gs.Constant)
    return isinstance(conv.inputs[1], gs.Constant) and bias_ok


def _bias(conv: gs.Node) -> np.ndarray:
    out = conv.inputs[1].shape[0]
    if len(conv.inputs) < 3 or not conv.inputs[2].name:
        return np.zeros(out)
    return np.broadcast_to(np.asarray(conv.inputs[2].values, dtype=np.float64), (out,))


def _auto_pad(conv: gs.Node) -> str:
    pad = conv.attrs.get("auto_pad", "NOTSET")
    return pad.decode() if isinstance(pad, bytes) else pad


def _ints(conv: gs.Node, attr: str, default: int, per_dim: int = 1) -> list[int]:
    """A conv's per-spatial-dim attribute (strides, dilations, pads) with its default filled in."""
    nd = len(conv.inputs[1].shape) - 2
    return list(conv.attrs.get(attr, [default] * nd * per_dim))


def _prelu_slope(prelu: gs.Node, channels: int, rank: int) -> np.ndarray | None:
    """The slope per channel of a rank-``rank`` input, None if not constant or not per channel."""
    slope = prelu.inputs[1]
    if not isinstance(slope, gs.Constant) or slope.values.ndim > rank:
        return None
    values = np.asarray(slope.values, dtype=np.float64)
    values = values.reshape((1,) * (rank - values.ndim) + values.shape)
    if values.shape[0] != 1 or values.shape[1] not in (1, channels) or any(d != 1 for d in values.shape[2:]):
        return None
    return np.broadcast_to(values.reshape(-1), (channels,))


def _set_input(node: gs.Node, index: int, tensor: gs.Tensor) -> None:
    """Set input ``index``, which may be absent (then it is the next one)."""
    if len(node.inputs) > index:
        node.inputs[index] = tensor
    else:
        node.inputs.append(tensor)


def _clip_min(clip: gs.Node) -> float | None:
    if len(clip.inputs) > 1 and clip.inputs[1].name:
        low = clip.inputs[1]
        return float(np.asarray(low.values).reshape(())) if isinstance(low, gs.Constant) else None
    return clip.attrs.get("min")


def _pads_nonnegative(pad: gs.Node) -> bool:
    """Whether a Pad adds only values >= 0 (edge and reflect modes copy its input's)."""
    if pad.attrs.get("mode", "constant") != "constant":
        return True
    if len(pad.inputs) > 2 and pad.inputs[2].name:
        value = pad.inputs[2]
        return isinstance(value, gs.Constant) and float(np.asarray(value.values).reshape(())) >= 0
    return pad.attrs.get("value", 0.0) >= 0
