"""Channel groups: which channels of an ONNX graph must be removed together.

Every tensor's channel axis is described by a ``Layout``: one *atom* id per
channel. The channel axis is axis 1 of a CNN's maps, and the last axis of a
MatMul's output: a transformer's [batch, sequence, features] activations carry
their channels (FFN neurons, the hidden width) on axis 2. Producers (Conv,
ConvTranspose, Gemm, MatMul with a constant weight, an embedding Gather) create
fresh atoms; channel-wise ops pass their input's atoms through; Concat
concatenates them, Split/Slice take sub-ranges, Flatten keeps them with a block
of H*W features per channel. Couplers (Add/Mul/... of two non-constant tensors,
SE gates and residual streams included) unite their inputs' atoms position by
position; their channels must lie on the same axis.

Channels of unknown origin (graph inputs, outputs of unsupported ops) are frozen
and tracked on axis 1; where an op needs them on another axis (a residual Add of
a [batch, sequence, hidden] input), they are tracked there too, with the same reason.

A *channel* is a class of united atoms; a *group* is a connected set of
producers and channels (through shared atoms), pruned as one. Anything the
analysis does not understand freezes the channels it touches, with a reason,
so no unsupported pattern is ever pruned into a wrong model.

While it walks the graph the analysis records ``Edit``s: the rewrites surgery
applies when channels go (slice this constant on this axis by the kept
channels of that tensor, update this Split's sizes, ...).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..graph.convert import to_graph
from ..graph.io import default_opset
from ..graph.shapes import infer_shapes, unknown_after
from .grouped import block_of
from .grouped import cells as grouped_cells
from .einsum import Einsum
from .heads import Attention, Heads, NoMatch, find_heads, layer_name, target_entries
from .tokens import regroups_tokens


@dataclass
class Layout:
    """Channel axis of a tensor: atom id per channel, ``block`` features per channel, which
    ``axis`` they lie on, and ``origin``: why they are frozen where their origin is unknown."""

    atoms: np.ndarray
    block: int = 1
    axis: int = 1
    origin: str | None = None


class EditKind(enum.Enum):
    SLICE_CONST = "slice constant input along an axis"
    SET_GROUP = "set a depthwise Conv's group attribute"
    SLICE_GROUPED = "slice a grouped Conv's weight along its input axis, block by block"
    SPLIT_SIZES = "rewrite a channel Split's sizes"
    SLICE_RANGE = "rewrite a channel Slice's start and end"
    RESIZE_SIZES = "rewrite a Resize's output sizes"
    RESHAPE_FEATURES = "rewrite a flattening Reshape's feature count"
    SHAPE_ENTRY = "rewrite one entry of a Reshape's target shape (or of a constant its Concat reads) to a channel count"


@dataclass(frozen=True)
class Edit:
    kind: EditKind
    node: str
    tensor: str  # whose kept channel positions drive the edit
    index: int = 0  # input index (SLICE_CONST, SHAPE_ENTRY) or position in starts/ends (SLICE_RANGE)
    axis: int = 0  # SHAPE_ENTRY: the entry's position in that input
    start: int = 0  # SLICE_RANGE: the channel range [start, stop) the Slice reads
    stop: int = 0


@dataclass(frozen=True)
class Source:
    """A run of fresh atoms: a producer's output channels, or channels of unknown origin."""

    node: str | None  # producer node name; None for graph inputs and unsupported ops
    tensor: str
    start: int
    count: int
    weight_index: int = 1  # producer's weight input
    weight_axis: int = 0  # axis of the weight that indexes output channels


@dataclass(frozen=True)
class ChannelGroup:
    id: int
    channels: int
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    reason: str | None  # why it is frozen; None when prunable
    blocks: int = 1  # cells that must lose equally many channels (grouped convs: grouped.py)
    grouped_by: tuple[str, ...] = ()  # the grouped convs that read or produce it
    head_dim: int = 0  # attention heads (heads.py): the dims of each head, its columns; 0 for other groups
    attention: str = ""  # attention heads: the layer's name ('/encoder/layer.2/attention')

    @property
    def prunable(self) -> bool:
        return self.reason is None and self.channels > 1


@dataclass
class Analysis:
    """The groups of a (normalised) model and everything surgery needs to cut them."""

    graph: gs.Graph
    shapes: dict[str, tuple]
    groups: list[ChannelGroup]
    layouts: dict[str, Layout]
    edits: list[Edit]
    sources: list[Source]
    atom_class: np.ndarray  # atom -> class id
    class_group: np.ndarray  # class id -> group id, -1 for channels of no group
    class_index: np.ndarray  # class id -> channel index inside its group
    group_classes: list[np.ndarray] = field(default_factory=list)  # group -> class ids in channel order
    consumer_inputs: dict[str, str] = field(default_factory=dict)  # consumer node -> tensor it reads channels from
    # tensors of unknown shape behind an op onnx does not know -> that op (shapes.unknown_after)
    unknown_after: dict[str, str] = field(default_factory=dict)
    # group -> cell of each channel, for groups that grouped convs cut in blocks (grouped.py)
    cells: dict[int, np.ndarray] = field(default_factory=dict)

    def removed_mask(self, keep: dict[int, np.ndarray]) -> np.ndarray:
        """Boolean per class: True where ``keep`` (group id -> kept channel indices) drops it."""
        removed = np.zeros(len(self.class_group), dtype=bool)
        for gid, kept in keep.items():
            classes = self.group_classes[gid]
            drop = np.ones(len(classes), dtype=bool)
            drop[np.asarray(kept, dtype=np.int64)] = False
            removed[classes[drop]] = True
        return removed

    def kept_positions(self, tensor: str, removed: np.ndarray) -> np.ndarray | None:
        """Indices kept along the tensor's channel axis (block-expanded), None if untouched."""
        layout = self.layouts.get(tensor)
        if layout is None:
            return None
        keep = ~removed[self.atom_class[layout.atoms]]
        if keep.all():
            return None
        channels = np.flatnonzero(keep)
        if layout.block == 1:
            return channels
        return (channels[:, None] * layout.block + np.arange(layout.block)).reshape(-1)

    def channel_count(self, tensor: str, removed: np.ndarray | None = None) -> int | None:
        """Size of the tensor's channel axis (features for flattened maps) after removal."""
        layout = self.layouts.get(tensor)
        if layout is None:
            return None
        if removed is None:
            return len(layout.atoms) * layout.block
        return int((~removed[self.atom_class[layout.atoms]]).sum()) * layout.block


def analyze(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]] | None = None) -> Analysis:
    """Find the channel groups of a normalised model (see ``normalize``)."""
    shapes = infer_shapes(model, input_shapes)
    graph = to_graph(model)
    return _Analyzer(graph, shapes, default_opset(model), unknown_after(model, shapes)).run()


# Ops that act on each channel on its own: output channel c depends on input channel c only.
# Pointwise ones do so whatever axis the channels lie on; pooling only for channels on axis 1.
POINTWISE = frozenset(
    """Relu LeakyRelu Clip Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu Softplus Softsign
    ThresholdedRelu Mish Gelu Erf Abs Neg Exp Log Sqrt Reciprocal Floor Ceil Round Sign Cast
    Identity Dropout Sin Cos IsNaN IsInf""".split()
)
POOLING = frozenset("MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split())
UNARY_CHANNELWISE = POINTWISE | POOLING
# Ops that only move or cast a weight on its way from a DequantizeLinear to the layer reading it.
WEIGHT_PLUMBING = frozenset("Transpose Reshape Cast Identity Unsqueeze Squeeze".split())
ELEMENTWISE = frozenset("Add Sub Mul Div Max Min Sum Mean Pow PRelu".split())
REDUCE = frozenset(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare".split()
)


class _Analyzer:
    def __init__(self, graph: gs.Graph, shapes: dict[str, tuple], opset: int, unknown: dict[str, str] | None = None):
        self.graph = graph
        self.shapes = shapes
        self.unknown = unknown or {}
        self.opset = opset
        self.layouts: dict[str, Layout] = {}
        self.sources: list[Source] = []
        self.n_atoms = 0
        self.unions: list[tuple[np.ndarray, np.ndarray]] = []
        self.frozen: dict[int, str] = {}  # first atom of a frozen run -> reason
        self.frozen_atoms: list[tuple[np.ndarray, str]] = []
        self.edits: list[Edit] = []
        self.consumers: list[tuple[str, str]] = []  # (node, tensor) reading channels into weights
        self.groupings: list[tuple[str, str, int]] = []  # (grouped conv, tensor it reads or writes, group)
        self.elsewhere: dict[tuple[str, int], Layout | None] = {}  # (tensor, axis) -> its unknown channels there
        self.heads = Heads((), {})
        self.head_atoms: list[tuple[np.ndarray, Attention]] = []  # each projection's heads
        # a computed target shape that several Reshapes regrouping tokens read -> (its readers, those
        # visited with their channels): they keep the same channels, or they stay (_shared_shapes)
        self.shared_shapes: dict[str, tuple[tuple[gs.Node, ...], list[tuple[str, Layout]]]] = {}

    # -- building blocks -------------------------------------------------------------

    def run(self) -> Analysis:
        self.graph.toposort()
        self.heads = find_heads(self.graph, self.shapes, self.opset)
        for vi in self.graph.inputs:
            self._fresh_frozen(vi, f"comes from graph input '{vi.name}'")
        for node in self.graph.nodes:
            self._visit(node)
        self._shared_shapes()
        for out in self.graph.outputs:
            self._freeze(out, f"reaches graph output '{out.name}'")
        return self._finish()

    def _visit(self, node: gs.Node) -> None:
        einsum = self.heads.einsum_of(node.name)
        if einsum is not None:
            self._einsum(node, einsum)
        elif node.domain == "com.microsoft":
            self._opaque(node, "a fused onnxruntime op (com.microsoft), not pruned")
        elif node.domain not in ("", "ai.onnx", None):
            self._opaque(node, f"custom domain {node.domain}")
        elif any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            self._subgraph(node)
        elif node.op not in _HANDLERS:
            self._opaque(node)
        else:
            _HANDLERS[node.op](self, node)
        # Behind an op that onnx does not know, shapes are unknown: the rewrites (and the MACs)
        # cannot be worked out, so whatever a node reading such a tensor touches stays.
        after = next((self.unknown[t.name] for t in node.inputs if t.name in self.unknown), None)
        if after is not None:
            for t in [*node.inputs, *node.outputs]:
                self._freeze(t, f"shapes unknown after {after}, an op onnx does not know")

    def _lay(self, tensor) -> Layout | None:
        return self.layouts.get(tensor.name) if isinstance(tensor, gs.Variable) else None

    def _shape(self, tensor) -> tuple | None:
        if isinstance(tensor, gs.Constant):
            return tuple(tensor.shape)
        return self.shapes.get(tensor.name)

    def _rank(self, tensor) -> int | None:
        shape = self._shape(tensor)
        return None if shape is None else len(shape)

    def _new_atoms(self, n: int) -> np.ndarray:
        atoms = np.arange(self.n_atoms, self.n_atoms + n, dtype=np.int64)
        self.n_atoms += n
        return atoms

    def _produce(self, node: gs.Node, n: int, weight_index: int = 1, weight_axis: int = 0, axis: int = 1,
                 block: int = 1) -> Layout:
        out = node.outputs[0]
        layout = Layout(self._new_atoms(n), block, axis)
        self.sources.append(Source(node.name, out.name, int(layout.atoms[0]), n, weight_index, weight_axis))
        self.layouts[out.name] = layout
        return layout

    def _unknown(self, tensor, reason: str, axis: int = 1) -> Layout | None:
        """Channels of unknown origin on ``axis``: fresh atoms, frozen (they cannot be removed)."""
        shape = self._shape(tensor)
        if shape is None or len(shape) < 2 or len(shape) <= axis or shape[axis] is None:
            return None
        layout = Layout(self._new_atoms(shape[axis]), axis=axis, origin=reason)
        self.sources.append(Source(None, tensor.name, int(layout.atoms[0]), shape[axis]))
        self.frozen_atoms.append((layout.atoms, reason))
        return layout

    def _fresh_frozen(self, tensor, reason: str, axis: int = 1) -> None:
        """The tensor's channels are of unknown origin: tracked on ``axis``, frozen."""
        layout = self._unknown(tensor, reason, axis)
        if layout is not None:
            self.layouts[tensor.name] = layout

    def _at(self, node: gs.Node, tensor, axis: int, freeze: bool = True) -> Layout | None:
        """The channels of ``tensor`` that ``node`` reads on ``axis``: its layout there; for
        channels of unknown origin tracked on another axis, frozen atoms on this one (the same
        for every reader, so what they meet is frozen with their reason); None where it tracks
        none. Channels of known origin on another axis would be moved or mixed untracked: None,
        and (``freeze``) they are frozen."""
        layout = self._lay(tensor)
        if layout is None or layout.axis == axis:
            return layout
        if layout.origin is not None:
            key = (tensor.name, axis)
            if key not in self.elsewhere:
                self.elsewhere[key] = self._unknown(tensor, layout.origin, axis)
            return self.elsewhere[key]
        if freeze:
            self._freeze(tensor, f"read by {node.op} node '{node.name}' "
                                 f"(reads axis {axis}; its channels lie on axis {layout.axis})")
        return None

    def _freeze(self, tensor, reason: str) -> None:
        layout = self._lay(tensor)
        if layout is not None:
            self.frozen_atoms.append((layout.atoms, reason))

    def _unite(self, a: Layout, b: Layout) -> bool:
        if len(a.atoms) != len(b.atoms) or a.block != b.block or a.axis != b.axis:
            return False
        self.unions.append((a.atoms, b.atoms))
        return True

    def _pass(self, node: gs.Node, layout: Layout | None, out_index: int = 0) -> None:
        if layout is not None:
            self.layouts[node.outputs[out_index].name] = layout
        else:
            self._fresh_frozen(node.outputs[out_index], f"produced by {node.op} node '{node.name}' from channels of unknown origin")

    def _opaque(self, node: gs.Node, why: str = "op not supported for pruning") -> None:
        """Freeze everything the node reads; its outputs are channels of unknown origin."""
        what = f"{node.op} node '{node.name}' ({why})"
        for t in node.inputs:
            self._freeze(t, f"read by {what}")
        for t in node.outputs:
            self._fresh_frozen(t, f"produced by {what}")

    def _subgraph(self, node: gs.Node) -> None:
        """Control flow: freeze inputs and every outer tensor its bodies read."""
        self._opaque(node, "control flow")
        for body in (v for v in node.attrs.values() if isinstance(v, gs.Graph)):
            for inner in body.nodes:
                for t in inner.inputs:
                    self._freeze(t, f"read inside a subgraph of {node.op} node '{node.name}'")

    def _consume(self, node: gs.Node, tensor, weight_index: int, weight_axis: int, axis: int = 1) -> None:
        """``node`` reads the channels of ``tensor`` on ``axis`` into its weight (sliced along
        ``weight_axis`` when they go)."""
        layout = self._at(node, tensor, axis)
        if layout is not None and layout is self._lay(tensor):
            self.consumers.append((node.name, tensor.name))
            self.edits.append(Edit(EditKind.SLICE_CONST, node.name, tensor.name, weight_index, weight_axis))

    @staticmethod
    def _dequantized(weight) -> str | None:
        """Why a layer whose weight a DequantizeLinear computes (int8 weights, possibly transposed
        or reshaped on the way) is not pruned; None for any other weight."""
        t = weight
        while isinstance(t, gs.Variable) and t.inputs and t.inputs[0].op in WEIGHT_PLUMBING:
            t = t.inputs[0].inputs[0]
        if isinstance(t, gs.Variable) and t.inputs and t.inputs[0].op == "DequantizeLinear":
            return (f"its weight is dequantized by DequantizeLinear node '{t.inputs[0].name}' "
                    "(quantized weights are not pruned)")
        return None

    def _quantized(self, node: gs.Node, weight, axis: int | None) -> bool:
        """A layer whose weight a DequantizeLinear computes stays as it is: what it reads is frozen,
        and its outputs (on ``axis``) are a group of their own, frozen with the reason, so that
        ``inspect`` lists the layer. False (nothing done) for any other non-constant weight."""
        why = self._dequantized(weight)
        if why is None:
            return False
        for t in node.inputs:
            self._freeze(t, f"read by {node.op} node '{node.name}' ({why})")
        shape = self._shape(node.outputs[0])
        if axis is None or shape is None or len(shape) <= axis or shape[axis] is None:
            self._fresh_frozen(node.outputs[0], f"produced by {node.op} node '{node.name}' ({why})")
            return True
        layout = self._produce(node, shape[axis], axis=axis)
        self.frozen_atoms.append((layout.atoms, f"produced by {node.op} node '{node.name}' ({why})"))
        return True

    def _slice_out(self, node: gs.Node, index: int, axis: int, out_index: int = 0) -> None:
        if len(node.inputs) > index and isinstance(node.inputs[index], gs.Constant):
            self.edits.append(Edit(EditKind.SLICE_CONST, node.name, node.outputs[out_index].name, index, axis))

    def _const(self, node: gs.Node, index: int):
        """Values of a constant input, None when absent; raises KeyError if not constant."""
        if len(node.inputs) <= index or not node.inputs[index].name:
            return None
        t = node.inputs[index]
        if not isinstance(t, gs.Constant):
            raise KeyError(index)
        return np.asarray(t.values)

    def _extra_outputs_used(self, node: gs.Node) -> bool:
        return any(o.outputs or o in self.graph.outputs for o in node.outputs[1:])

    # -- producers ------------------------------------------------------------------

    def _conv(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        if not _constant_weight_and_bias(node):
            return self._quantized(node, w, 1) or self._opaque(node, "non-constant weight or bias")
        g = int(node.attrs.get("group", 1))
        cout, cin_per_group = w.shape[0], w.shape[1]
        if g == 1:
            self._consume(node, x, 1, 1)
            self._produce(node, cout)
            self._slice_out(node, 1, 0)
            self._slice_out(node, 2, 0)
        elif g == cout and cin_per_group == 1 and self._channels(x) == g:
            # Depthwise: output channel c reads input channel c only.
            self._pass(node, self._at(node, x, 1))
            self._slice_out(node, 1, 0)
            self._slice_out(node, 2, 0)
            self.edits.append(Edit(EditKind.SET_GROUP, node.name, node.outputs[0].name))
        else:
            # Grouped: output block j reads input block j only, so each block of the input, and
            # of the output, keeps as many channels as the others (grouped.py); group stays g.
            layout = self._at(node, x, 1)
            if layout is not None and layout is self._lay(x):
                self.consumers.append((node.name, x.name))
                self.edits.append(Edit(EditKind.SLICE_GROUPED, node.name, x.name, 1, 1))
                self.groupings.append((node.name, x.name, g))
            self._produce(node, cout)
            self._slice_out(node, 1, 0)
            self._slice_out(node, 2, 0)
            self.groupings.append((node.name, node.outputs[0].name, g))

    def _conv_transpose(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        if not _constant_weight_and_bias(node):
            return self._opaque(node, "non-constant weight or bias")
        g = int(node.attrs.get("group", 1))
        if g != 1:
            return self._opaque(node, f"grouped transposed convolution, group={g}")
        self._consume(node, x, 1, 0)
        self._produce(node, w.shape[1], weight_axis=1)
        self._slice_out(node, 1, 1)
        self._slice_out(node, 2, 0)

    def _gemm(self, node: gs.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        has_c = len(node.inputs) > 2 and bool(node.inputs[2].name)
        c = node.inputs[2] if has_c else None
        c_ok = c is None or (isinstance(c, gs.Constant) and (c.values.ndim < 2 or c.shape[0] == 1))
        if not isinstance(w, gs.Constant):
            return self._quantized(node, w, 1) or self._opaque(
                node, "needs a constant weight and bias vector, and no transA")
        if w.values.ndim != 2 or not c_ok or node.attrs.get("transA", 0):
            return self._opaque(node, "needs a constant weight and bias vector, and no transA")
        trans_b = int(node.attrs.get("transB", 0))
        k_axis, m_axis = (1, 0) if trans_b else (0, 1)
        self._consume(node, x, 1, k_axis)
        self._produce(node, w.shape[m_axis], weight_axis=m_axis)
        self._slice_out(node, 1, m_axis)
        if c is not None and c.values.ndim >= 1 and c.shape[-1] == w.shape[m_axis] > 1:
            self._slice_out(node, 2, c.values.ndim - 1)

    def _matmul(self, node: gs.Node) -> None:
        """x [..., n] times a constant W [n, m]: reads x's channels on its last axis (a CNN head's
        [N, C], a transformer's [batch, sequence, features]) and makes m on the output's."""
        x, w = node.inputs[0], node.inputs[1]
        rank = self._rank(x)
        attention = self.heads.of(node.name)
        if attention is not None and node.name in attention.moves:
            return self._attend(node)
        if not isinstance(w, gs.Constant):
            return self._quantized(node, w, None if rank is None else rank - 1) or self._opaque(
                node, "multiplies two activations (as attention does); only a constant weight matrix is pruned")
        if w.values.ndim != 2 or rank is None or rank < 2:
            return self._opaque(node, "only an input of known rank times a constant matrix is supported")
        self._consume(node, x, 1, 0, axis=rank - 1)
        if attention is None:
            self._produce(node, w.shape[1], weight_axis=1, axis=rank - 1)
        else:  # a projection into heads: head h owns columns h*d .. h*d + d-1
            layout = self._produce(node, attention.heads, weight_axis=1, axis=rank - 1, block=attention.head_dim)
            self.head_atoms.append((layout.atoms, attention))
        self._slice_out(node, 1, 1)

    def _attend(self, node: gs.Node) -> None:
        """q k or p v of a matched attention (heads.py): both inputs carry the heads on axis 1, and
        head h of one meets head h of the other only, so they are the same channels."""
        a, b = (self._lay(t) for t in node.inputs)
        if a is None or b is None or a.axis != 1 or not self._unite(a, b):
            return self._opaque(node, "its inputs do not both carry the same heads on axis 1")
        self._pass(node, a)

    def _einsum(self, node: gs.Node, einsum: Einsum) -> None:
        """A node of an Einsum in a matched attention (heads.py, einsum.py): it computes q k^T or
        p v head by head, from inputs that carry the heads on axis 2 ([B, S, H, d]) or 1 (the
        weights [B, H, S, T]) into an output that carries them on axis 1, with shapes that follow
        its inputs. So head h of one input meets head h of the other only (the same channels), and
        the nodes between carry nothing that pruning changes: only the last one passes the heads."""
        if node.name != einsum.last:
            return
        a, b = (None if lay is None or lay.axis != axis or lay.block != 1 else replace(lay, axis=1)
                for lay, axis in zip((self._lay(t) for t in einsum.tensors), einsum.axes))
        if a is None or b is None or not self._unite(a, b):
            return self._opaque(node, "its inputs do not both carry the same heads where the attention's match "
                                      "has them")
        self._pass(node, a)

    def _gather(self, node: gs.Node) -> None:
        """An embedding: rows of a constant table [V, C] picked by indices make C fresh channels on
        the output's last axis (a transformer's hidden width); any other Gather is not supported."""
        data, indices = node.inputs[0], node.inputs[1]
        rank = self._rank(node.outputs[0])
        if (not isinstance(data, gs.Constant) or data.values.ndim != 2 or int(node.attrs.get("axis", 0)) != 0
                or not isinstance(indices, gs.Variable) or rank is None or rank < 2):
            return self._opaque(node)
        self._freeze(indices, f"used as indices by Gather node '{node.name}'")
        self._produce(node, data.shape[1], weight_index=0, weight_axis=1, axis=rank - 1)
        self._slice_out(node, 0, 1)

    # -- channel-wise ops ----------------------------------------------------------

    def _channels(self, tensor) -> int | None:
        layout = self._lay(tensor)
        if layout is not None:
            return len(layout.atoms) * layout.block
        shape = self._shape(tensor)
        return None if shape is None or len(shape) < 2 else shape[1]

    def _unary(self, node: gs.Node) -> None:
        if self._extra_outputs_used(node):
            return self._opaque(node, "its second output is used")
        x = node.inputs[0]
        self._pass(node, self._lay(x) if node.op in POINTWISE else self._at(node, x, 1))

    def _normalization(self, node: gs.Node) -> None:
        """BatchNormalization / InstanceNormalization: per-channel parameters are sliced."""
        params = range(1, 5 if node.op == "BatchNormalization" else 3)
        if self._extra_outputs_used(node) or not all(
            len(node.inputs) > i and isinstance(node.inputs[i], gs.Constant) for i in params
        ):
            return self._opaque(node, "non-constant parameters or training outputs")
        self._pass(node, self._at(node, node.inputs[0], 1))
        for i in params:
            self._slice_out(node, i, 0)

    def _layer_norm(self, node: gs.Node) -> None:
        """LayerNormalization over axes axis..rank-1: every output channel there reads all of them,
        so channels on the last axis (a transformer's hidden width) are frozen and pass through
        (its per-channel scale and bias are sliced); channels on an earlier axis pass untouched."""
        x, out = node.inputs[0], node.outputs[0]
        rank, own = self._rank(x), self._lay(x)
        params = [i for i in (1, 2) if len(node.inputs) > i and node.inputs[i].name]
        constant = all(isinstance(node.inputs[i], gs.Constant) for i in params)
        if self._extra_outputs_used(node) or rank is None or not constant:
            return self._opaque(node, "non-constant scale or bias, statistics outputs used, or unknown rank")
        axis = int(node.attrs.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        if own is None:
            return self._pass(node, None)
        if own.origin is None and own.axis < axis:
            return self._pass(node, own)
        if axis != rank - 1 or own.block != 1:
            return self._opaque(node, "normalises across channels")
        layout = self._at(node, x, axis)
        if layout is None:
            return self._pass(node, None)
        self.frozen_atoms.append((layout.atoms, f"normalised across these channels by LayerNormalization node "
                                                f"'{node.name}' (a transformer's hidden width stays)"))
        self._pass(node, layout)
        for i in params:
            if node.inputs[i].values.shape == (len(layout.atoms),):
                self.edits.append(Edit(EditKind.SLICE_CONST, node.name, out.name, i, 0))

    def _elementwise(self, node: gs.Node) -> None:
        """Add/Mul/... : constants are sliced where they vary per channel; variables are united."""
        out = node.outputs[0]
        rank = self._rank(out)
        if rank is None:
            ranks = [self._rank(t) for t in node.inputs]
            rank = None if None in ranks else max(ranks)
        if rank is None or rank < 2:
            if any(self._lay(t) is not None for t in node.inputs):
                return self._opaque(node, "inputs of unknown rank")
            return
        channel_axis = self._channel_axis(node.inputs, rank)
        out_shape = self.shapes.get(out.name)
        channels = out_shape[channel_axis] if out_shape is not None else None
        spanning: list[Layout] = []
        for i, t in enumerate(node.inputs):
            shape = self._shape(t)
            if shape is None:
                return self._opaque(node, "an input of unknown shape")
            axis = channel_axis - (rank - len(shape))
            size = shape[axis] if axis >= 0 else 1
            if self._lay(t) is not None and len(shape) != rank:
                return self._opaque(node, "broadcasts channels across ranks")
            if channels is None:
                channels = size if size != 1 else channels
            if size == 1 and channels != 1:
                continue  # broadcast along the channel axis: unaffected by pruning
            if isinstance(t, gs.Constant):
                if size != channels:
                    return self._opaque(node)
                self.edits.append(Edit(EditKind.SLICE_CONST, node.name, out.name, i, axis))
                continue
            layout = self._at(node, t, channel_axis, freeze=False)
            if layout is None:
                return self._opaque(node, "combines channels with a tensor of unknown origin" if self._lay(t) is None
                                    else "combines tensors whose channels lie on different axes")
            spanning.append(layout)
        if not spanning:
            return self._pass(node, None)
        spanning.sort(key=lambda lay: lay.origin is not None)  # the output's channels: known ones where any
        for other in spanning[1:]:
            if not self._unite(spanning[0], other):
                return self._opaque(node, "combines tensors of different channel layouts")
        self._pass(node, spanning[0])

    def _channel_axis(self, tensors, rank: int | None) -> int:
        """The axis an op's channels lie on: that of its inputs' channels of known origin, else
        of any tracked ones (inputs of the op's full rank), else axis 1."""
        tracked = [lay for lay in (self._lay(t) for t in tensors if self._rank(t) == rank) if lay is not None]
        known = [lay for lay in tracked if lay.origin is None]
        return known[0].axis if known else tracked[0].axis if tracked else 1

    # -- structure: Concat, Split, Slice, Flatten, Reshape, ... ---------------------

    def _axis(self, node: gs.Node, tensor, default: int = 0) -> int | None:
        rank = self._rank(tensor)
        axis = int(node.attrs.get("axis", default))
        if axis < 0:
            if rank is None:
                return None
            axis += rank
        return axis

    def _concat(self, node: gs.Node) -> None:
        axis = self._axis(node, node.outputs[0])
        if axis is None:
            return self._opaque(node, "axis of unknown rank")
        channel_axis = self._channel_axis(node.inputs, self._rank(node.outputs[0]))
        if axis != channel_axis:
            tracked = [t for t in node.inputs if self._lay(t) is not None]
            present = [lay for lay in (self._at(node, t, channel_axis) for t in tracked) if lay is not None]
            if len(present) != len(node.inputs) and present:
                return self._opaque(node)
            present.sort(key=lambda lay: lay.origin is not None)
            for other in present[1:]:
                if not self._unite(present[0], other):
                    return self._opaque(node)
            return self._pass(node, present[0] if present else None)
        for t in node.inputs:
            if self._lay(t) is None and isinstance(t, gs.Variable):
                self._fresh_frozen(t, f"concatenated by '{node.name}' from channels of unknown origin", axis)
        layouts = [self._at(node, t, axis) for t in node.inputs]
        if any(lay is None for lay in layouts) or len({lay.block for lay in layouts}) != 1:
            return self._opaque(node, "joins channels that cannot be tracked")
        self._pass(node, Layout(np.concatenate([lay.atoms for lay in layouts]), layouts[0].block, axis))

    def _split(self, node: gs.Node) -> None:
        x = node.inputs[0]
        axis = self._axis(node, x)
        layout = self._lay(x)
        if axis is None:
            return self._opaque(node, "axis of unknown rank")
        if layout is None or axis != layout.axis:
            for i in range(len(node.outputs)):
                self._pass(node, layout, i)
            return
        sizes = self._split_sizes(node, len(layout.atoms))
        if sizes is None or layout.block != 1:
            return self._opaque(node, "split sizes not constant")
        offsets = np.cumsum([0, *sizes])
        for i, out in enumerate(node.outputs):
            self.layouts[out.name] = replace(layout, atoms=layout.atoms[offsets[i]:offsets[i + 1]])
        self.edits.append(Edit(EditKind.SPLIT_SIZES, node.name, x.name))

    def _split_sizes(self, node: gs.Node, n: int) -> list[int] | None:
        if "split" in node.attrs:
            sizes = list(node.attrs["split"])
        elif len(node.inputs) > 1 and node.inputs[1].name:
            try:
                sizes = [int(s) for s in self._const(node, 1)]
            except KeyError:
                return None
        else:
            parts = len(node.outputs)
            chunk = -(-n // parts)
            sizes = [min(chunk, n - i * chunk) for i in range(parts)]
        return sizes if sum(sizes) == n and len(sizes) == len(node.outputs) else None

    def _slice(self, node: gs.Node) -> None:
        x = node.inputs[0]
        layout = self._lay(x)
        rank = self._rank(x)
        try:
            if self.opset < 10:
                starts, ends = list(node.attrs["starts"]), list(node.attrs["ends"])
                axes = list(node.attrs.get("axes", range(len(starts))))
                steps = [1] * len(starts)
            else:
                starts, ends = list(self._const(node, 1)), list(self._const(node, 2))
                axes = self._const(node, 3)
                axes = list(range(len(starts))) if axes is None else list(axes)
                steps = self._const(node, 4)
                steps = [1] * len(starts) if steps is None else list(steps)
        except KeyError:
            return self._opaque(node, "non-constant bounds")
        if rank is None:
            return self._opaque(node)
        axes = [int(a) + rank if a < 0 else int(a) for a in axes]
        if layout is None or layout.axis not in axes:
            return self._pass(node, layout)
        k = axes.index(layout.axis)
        n = len(layout.atoms)
        if steps[k] != 1 or layout.block != 1:
            return self._opaque(node, "steps through channels")
        start, stop, _ = slice(int(starts[k]), int(ends[k])).indices(n)
        if stop <= start:
            return self._opaque(node)
        self._pass(node, replace(layout, atoms=layout.atoms[start:stop]))
        self.edits.append(Edit(EditKind.SLICE_RANGE, node.name, x.name, k, start=start, stop=stop))

    def _flatten(self, node: gs.Node) -> None:
        x = node.inputs[0]
        layout, shape = self._at(node, x, 1), self._shape(x)
        axis = int(node.attrs.get("axis", 1))
        if layout is None:
            return self._pass(node, None)
        if shape is None or axis != 1 or any(d is None for d in shape[2:]):
            return self._opaque(node, "map of unknown size, or not on axis 1")
        self._pass(node, Layout(layout.atoms, layout.block * int(np.prod(shape[2:], dtype=np.int64))))

    def _reshape(self, node: gs.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        layout, shape, out_shape = self._lay(x), self._shape(x), self.shapes.get(out.name)
        if layout is None:
            return self._pass(node, None)
        flattening = (
            layout.axis == 1 and shape is not None and out_shape is not None and len(out_shape) == 2
            and len(shape) >= 2 and shape[0] is not None and out_shape[0] == shape[0]
            and all(d is not None for d in shape[2:]) and isinstance(node.inputs[1], gs.Constant)
        )
        attention = self.heads.of(node.name)
        if attention is not None:
            return self._head_reshape(node, attention, layout)
        if shape is not None and layout.axis == len(shape) - 1 and regroups_tokens(node, self.shapes):
            return self._token_reshape(node, layout)
        if _splits_heads(shape, out_shape, layout.axis):
            return self._opaque(node, f"splits the channels into attention heads, which stay: "
                                      f"{self.heads.why_not(node)}")
        if not flattening:
            return self._opaque(node, "moves channels; only flattening [N, C, ...] -> [N, C*...] is supported")
        self._pass(node, Layout(layout.atoms, layout.block * int(np.prod(shape[2:], dtype=np.int64))))
        self.edits.append(Edit(EditKind.RESHAPE_FEATURES, node.name, out.name))

    def _head_reshape(self, node: gs.Node, attention: Attention, layout: Layout) -> None:
        """A matched attention's Reshape (heads.py): splitting, [B, S, H*d] (H channels of d
        columns) -> [B, S, H, d] (H on axis 2); merging, back to H channels of d columns on the last
        axis. The shape entries holding H (or H*d) become the kept count."""
        out = node.outputs[0]
        split = node.name in attention.splits
        if layout.block != (attention.head_dim if split else 1) or layout.axis != 2:
            return self._opaque(node, "its input does not carry the heads where the attention's match has them")
        merged = replace(layout, block=attention.head_dim, axis=(self._rank(out) or 0) - 1)
        self._pass(node, replace(layout, block=1) if split else merged)
        for e in attention.entries[node.name]:
            self.edits.append(Edit(EditKind.SHAPE_ENTRY, e.node, out.name, e.index, e.offset))

    def _token_reshape(self, node: gs.Node, layout: Layout) -> None:
        """[..., C] -> [..., C] (tokens.py: TF's Dense on a sequence): the channels pass to the
        output's last axis; the target shape's last entry, where it holds C rather than -1, becomes
        the kept count. Reshapes that read one computed target shape keep the same channels."""
        out = node.outputs[0]
        try:
            entries, shared = target_entries(node, self.shapes)
        except NoMatch as e:
            return self._opaque(node, str(e))
        count = len(layout.atoms) * layout.block
        last = entries[-1] if entries else None
        if last is None or last.value not in (count, -1):
            return self._opaque(node, f"the last entry of its target shape is not the channel count ({count}) "
                                      "or -1")
        self._pass(node, replace(layout, axis=len(self.shapes[out.name]) - 1))
        if last.value == count:
            self.edits.append(Edit(EditKind.SHAPE_ENTRY, last.node, out.name, last.index, last.offset))
        if shared:
            readers, seen = self.shared_shapes.setdefault(last.node, ((node, *shared), []))
            if seen and not self._unite(seen[0][1], layout):
                return self._opaque(node, f"reads the target shape of Reshape node '{seen[0][0]}' with other channels")
            seen.append((node.name, layout))

    def _shared_shapes(self) -> None:
        """A computed target shape whose entry is rewritten must be read only by Reshapes that
        regroup tokens of the channels united with it: else they stay."""
        for readers, seen in self.shared_shapes.values():
            names = {name for name, _ in seen}
            stray = next((r for r in readers if r.name not in names), None)
            if stray is not None:
                for name, layout in seen:
                    self.frozen_atoms.append((layout.atoms, f"the target shape of Reshape node '{name}' is also read "
                                                            f"by {stray.op} node '{stray.name}'"))

    def _squeeze(self, node: gs.Node) -> None:
        x = node.inputs[0]
        layout = self._lay(x)
        if layout is None:
            return self._pass(node, None)
        rank = self._rank(node.outputs[0] if node.op == "Unsqueeze" else x)
        try:
            axes = node.attrs["axes"] if "axes" in node.attrs else self._const(node, 1)
        except KeyError:
            axes = None
        if axes is None or rank is None:
            return self._opaque(node, "axes not constant")
        axes = [int(a) + rank if a < 0 else int(a) for a in np.atleast_1d(axes)]
        if min(axes) <= layout.axis or layout.block != 1:
            return self._opaque(node, "moves the channel axis")
        self._pass(node, layout)

    def _transpose(self, node: gs.Node) -> None:
        perm, layout = node.attrs.get("perm"), self._lay(node.inputs[0])
        if self.heads.of(node.name) is not None and layout is not None and layout.block == 1:
            # inside a matched attention the heads' axis moves: heads.py checked where to
            perm = list(perm) if perm is not None else [3, 2, 1, 0]
            return self._pass(node, replace(layout, axis=perm.index(layout.axis)))
        if perm is not None and layout is not None and perm[0] == 0 and perm[layout.axis] == layout.axis:
            return self._pass(node, layout)
        self._opaque(node, "moves the channel axis")

    def _pad(self, node: gs.Node) -> None:
        x = node.inputs[0]
        rank = self._rank(x)
        try:
            pads = node.attrs.get("pads") if self.opset < 11 else self._const(node, 1)
            axes = self._const(node, 3) if self.opset >= 18 else None
        except KeyError:
            return self._opaque(node, "non-constant pads")
        if pads is None or rank is None:
            return self._opaque(node)
        pads = [int(p) for p in pads]
        axes = list(range(rank)) if axes is None else [int(a) + rank if a < 0 else int(a) for a in axes]
        half = len(pads) // 2
        layout = self._lay(x)
        channel_axis = 1 if layout is None else layout.axis
        for k, a in enumerate(axes):
            if a in (0, channel_axis) and (pads[k] or pads[k + half]):
                return self._opaque(node, "pads the batch or channel axis")
        self._pass(node, layout)

    def _resize(self, node: gs.Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        layout = self._at(node, x, 1)
        if layout is None:
            return self._pass(node, None)
        if "axes" in node.attrs or ("scales" in node.attrs and node.attrs["scales"][1] != 1):
            return self._opaque(node, "resizes the channel axis")
        scales_index = 1 if node.op == "Upsample" or self.opset < 11 else 2
        try:
            scales = self._const(node, scales_index)
            sizes = self._const(node, 3) if node.op == "Resize" and self.opset >= 11 else None
        except KeyError:
            return self._opaque(node, "non-constant scales or sizes")
        if scales is not None and scales.size and float(scales[1]) != 1.0:
            return self._opaque(node, "resizes the channel axis")
        if sizes is not None and sizes.size:
            if int(sizes[1]) != len(layout.atoms):
                return self._opaque(node)
            self.edits.append(Edit(EditKind.RESIZE_SIZES, node.name, out.name, 3))
        self._pass(node, layout)

    def _reduce(self, node: gs.Node) -> None:
        x = node.inputs[0]
        layout, rank = self._lay(x), self._rank(x)
        if layout is None:
            return self._pass(node, None)
        try:
            axes = node.attrs["axes"] if "axes" in node.attrs else self._const(node, 1)
        except KeyError:
            axes = None
        if axes is None or rank is None or not len(axes):
            return self._opaque(node, "reduces over channels")
        axes = [int(a) + rank if a < 0 else int(a) for a in axes]
        if 0 in axes or layout.axis in axes:
            return self._opaque(node, "reduces over channels")
        kept_dims = int(node.attrs.get("keepdims", 1))  # without, the axes before the channels go
        self._pass(node, replace(layout, axis=layout.axis - (0 if kept_dims else sum(a < layout.axis for a in axes))))

    def _softmax(self, node: gs.Node) -> None:
        """Softmax over one axis (opset 13 on), or over the axes from ``axis`` on, flattened (before)."""
        layout = self._lay(node.inputs[0])
        channel_axis = 1 if layout is None else layout.axis
        axis = self._axis(node, node.inputs[0], default=-1 if self.opset >= 13 else 1)
        if axis is None or axis == 0 or (axis == channel_axis if self.opset >= 13 else axis <= channel_axis):
            return self._opaque(node, "normalises across channels")
        self._pass(node, layout)

    def _shape_op(self, node: gs.Node) -> None:
        """Shape reads the channel count; harmless only when that entry is never used."""
        x = node.inputs[0]
        layout = self._lay(x)
        if layout is None:
            return
        rank, axis = self._rank(x), layout.axis
        start = int(node.attrs.get("start", 0))
        end = node.attrs.get("end")
        if rank is not None:
            start = start + rank if start < 0 else start
            end = rank if end is None else (end + rank if end < 0 else end)
            if not start <= axis < end:
                return
        entry = axis - start
        if all(_reads_shape_entries_other_than(n, entry) for n in node.outputs[0].outputs) \
                and node.outputs[0] not in self.graph.outputs:
            return
        self._freeze(x, f"its channel count is read by Shape node '{node.name}'")

    # -- results -------------------------------------------------------------------

    def _finish(self) -> Analysis:
        n = self.n_atoms
        a = np.concatenate([u[0] for u in self.unions] + [np.zeros(0, np.int64)])
        b = np.concatenate([u[1] for u in self.unions] + [np.zeros(0, np.int64)])
        _, atom_class = connected_components(_adjacency(n, a, b), directed=False)
        # Groups: channels joined through the producers (sources) they share.
        src_a = np.concatenate([np.full(s.count - 1, s.start) for s in self.sources] + [np.zeros(0, np.int64)])
        src_b = np.concatenate([np.arange(s.start + 1, s.start + s.count) for s in self.sources] + [np.zeros(0, np.int64)])
        _, atom_group = connected_components(
            _adjacency(n, np.concatenate([a, src_a]), np.concatenate([b, src_b])), directed=False
        )
        n_classes = int(atom_class.max()) + 1 if n else 0
        # Order groups and their channels by first appearance (topological order).
        first_atom_of_class = np.full(n_classes, n, dtype=np.int64)
        np.minimum.at(first_atom_of_class, atom_class, np.arange(n))
        class_raw_group = atom_group[first_atom_of_class]

        reasons: dict[int, list[str]] = {}
        for atoms, why in self.frozen_atoms:
            for g in np.unique(atom_group[atoms]):
                lst = reasons.setdefault(int(g), [])
                if why not in lst:
                    lst.append(why)

        producers: dict[int, list[str]] = {}
        for s in self.sources:
            if s.node is not None:
                producers.setdefault(int(atom_group[s.start]), []).append(s.node)
        consumers: dict[int, list[str]] = {}
        for node, tensor in self.consumers:
            for g in np.unique(atom_group[self.layouts[tensor].atoms]):
                lst = consumers.setdefault(int(g), [])
                if node not in lst:
                    lst.append(node)

        first_atom_of_group = np.full(int(atom_group.max()) + 1 if n else 0, n, dtype=np.int64)
        np.minimum.at(first_atom_of_group, atom_group, np.arange(n))
        raw_groups = sorted(producers, key=lambda g: first_atom_of_group[g])
        group_id = {raw: i for i, raw in enumerate(raw_groups)}
        class_group = np.array([group_id.get(int(g), -1) for g in class_raw_group], dtype=np.int64)
        class_index = np.zeros(n_classes, dtype=np.int64)
        group_classes = []
        for raw in group_id:
            classes = np.flatnonzero(class_group == group_id[raw])
            classes = classes[np.argsort(first_atom_of_class[classes], kind="stable")]
            class_index[classes] = np.arange(len(classes))
            group_classes.append(classes)
        why_of = {group_id[raw]: why for raw, why in reasons.items() if raw in group_id}
        heads = {group_id[int(atom_group[atoms[0]])]: att for atoms, att in self.head_atoms}
        cells, grouped_by = self._blocks(atom_class, class_group, class_index, group_classes, why_of)
        groups = []
        for raw, gid in group_id.items():
            why = why_of.get(gid)
            groups.append(ChannelGroup(
                id=gid,
                channels=len(group_classes[gid]),
                producers=tuple(producers[raw]),
                consumers=tuple(consumers.get(raw, ())),
                reason="; ".join(why[:3]) + (f" (+{len(why) - 3} more)" if len(why) > 3 else "") if why else None,
                blocks=int(cells[gid].max()) + 1 if gid in cells else 1,
                grouped_by=tuple(grouped_by.get(gid, ())),
                head_dim=heads[gid].head_dim if gid in heads else 0,
                attention=layer_name(producers[raw] + consumers.get(raw, [])) if gid in heads else "",
            ))
        return Analysis(
            graph=self.graph, shapes=self.shapes, groups=groups, layouts=self.layouts, edits=self.edits,
            sources=self.sources, atom_class=atom_class, class_group=class_group,
            class_index=class_index, group_classes=group_classes, consumer_inputs=dict(self.consumers),
            unknown_after=self.unknown, cells=cells,
        )

    def _blocks(self, atom_class: np.ndarray, class_group: np.ndarray, class_index: np.ndarray,
                group_classes: list[np.ndarray], why: dict[int, list[str]],
                ) -> tuple[dict[int, np.ndarray], dict[int, list[str]]]:
        """The cells of each group that grouped convs cut in blocks (grouped.cells), and those
        convs. A group gets a reason (it stays whole) where a grouped conv's input or output holds
        other groups' channels, only some of its channels or some twice, where it is also read in
        parts (Split/Slice), where the convs' blocks do not line up, or where a cell has one channel."""
        blockings: dict[int, list[np.ndarray]] = {}
        grouped_by: dict[int, list[str]] = {}

        def freeze(gid: int, reason: str) -> None:
            lst = why.setdefault(int(gid), [])
            if reason not in lst:
                lst.append(reason)

        for node, tensor, g in self.groupings:
            classes = atom_class[self.layouts[tensor].atoms]
            owners = np.unique(class_group[classes])
            conv = f"grouped Conv node '{node}' (group={g})"
            if len(owners) > 1:
                for gid in owners[owners >= 0]:
                    freeze(gid, f"{conv} mixes its channels with other groups' in one tensor")
                continue
            gid = int(owners[0])
            if gid < 0:
                continue
            if len(classes) != len(group_classes[gid]) or len(np.unique(classes)) != len(classes):
                freeze(gid, f"{conv} holds only some of its channels, or some twice")
                continue
            block = np.empty(len(classes), dtype=np.intp)
            block[class_index[classes]] = block_of(np.arange(len(classes)), len(classes), g)
            blockings.setdefault(gid, []).append(block)
            if node not in grouped_by.setdefault(gid, []):
                grouped_by[gid].append(node)
        cells: dict[int, np.ndarray] = {}
        partial = self._read_in_parts(atom_class, class_group, group_classes) if blockings else set()
        for gid, found in blockings.items():
            convs = ", ".join(f"node '{n}'" for n in grouped_by[gid])
            cell = grouped_cells(found)
            if gid in partial:
                freeze(gid, f"read in parts (Split/Slice) and cut in blocks by grouped Conv {convs}")
            elif cell is None:
                freeze(gid, f"the blocks of grouped Conv {convs} do not line up")
            elif len(cell) == int(cell.max()) + 1:
                freeze(gid, f"grouped Conv {convs} has one of its channels per block: removing any empties a block")
            else:
                cells[gid] = cell
        return cells, grouped_by

    def _read_in_parts(self, atom_class: np.ndarray, class_group: np.ndarray,
                       group_classes: list[np.ndarray]) -> set[int]:
        """Groups of which some tensor holds some channels but not all (a Split or Slice part)."""
        sizes = np.array([len(c) for c in group_classes])
        partial: set[int] = set()
        for layout in self.layouts.values():
            owners = class_group[np.unique(atom_class[layout.atoms])]
            present = np.bincount(owners[owners >= 0], minlength=len(sizes))
            partial.update(np.flatnonzero((present > 0) & (present < sizes)).tolist())
        return partial


def _constant_weight_and_bias(node: gs.Node) -> bool:
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    return isinstance(node.inputs[1], gs.Constant) and (bias is None or isinstance(bias, gs.Constant) or not bias.name)


def _splits_heads(shape: tuple | None, out_shape: tuple | None, axis: int) -> bool:
    """[..., C] -> [..., heads, C / heads] with the channels on the last axis: attention's heads."""
    return (shape is not None and out_shape is not None and axis == len(shape) - 1
            and len(out_shape) == len(shape) + 1 and tuple(out_shape[:axis]) == tuple(shape[:axis])
            and None not in out_shape[-2:] and shape[-1] is not None and out_shape[-2] * out_shape[-1] == shape[-1]
            and out_shape[-2] > 1)


def _adjacency(n: int, a: np.ndarray, b: np.ndarray):
    return coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))


def _reads_shape_entries_other_than(node: gs.Node, entry: int) -> bool:
    """True if ``node`` reads a shape vector only at constant positions other than ``entry``."""
    if node.op == "Cast":  # tf2onnx works on shapes in int32
        return all(_reads_shape_entries_other_than(n, entry) for n in node.outputs[0].outputs)
    if node.op == "Gather" and isinstance(node.inputs[1], gs.Constant) and int(node.attrs.get("axis", 0)) == 0:
        return entry not in np.atleast_1d(node.inputs[1].values).tolist()
    if node.op == "Slice" and all(isinstance(t, gs.Constant) for t in node.inputs[1:3]):
        starts, ends = node.inputs[1].values, node.inputs[2].values
        if len(starts) == 1:
            return entry not in range(100)[slice(int(starts[0]), int(ends[0]))]
    return False


_HANDLERS = {
    "Conv": _Analyzer._conv,
    "ConvTranspose": _Analyzer._conv_transpose,
    "Gemm": _Analyzer._gemm,
    "MatMul": _Analyzer._matmul,
    "BatchNormalization": _Analyzer._normalization,
    "InstanceNormalization": _Analyzer._normalization,
    "Concat": _Analyzer._concat,
    "Split": _Analyzer._split,
    "Slice": _Analyzer._slice,
    "Flatten": _Analyzer._flatten,
    "Reshape": _Analyzer._reshape,
    "Squeeze": _Analyzer._squeeze,
    "Unsqueeze": _Analyzer._squeeze,
    "Transpose": _Analyzer._transpose,
    "Pad": _Analyzer._pad,
    "Resize": _Analyzer._resize,
    "Upsample": _Analyzer._resize,
    "Softmax": _Analyzer._softmax,
    "LogSoftmax": _Analyzer._softmax,
    "LayerNormalization": _Analyzer._layer_norm,
    "Gather": _Analyzer._gather,
    "Shape": _Analyzer._shape_op,
    **{op: _Analyzer._unary for op in UNARY_CHANNELWISE},
    **{op: _Analyzer._elementwise for op in ELEMENTWISE},
    **{op: _Analyzer._reduce for op in REDUCE},
}
