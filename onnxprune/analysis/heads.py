"""Attention heads: multi-head self-attention as torch exports it, matched on the graph's structure (never on names).

One attention layer, with B the batch, S the sequence, H heads of d dims and C = H * d:

    q = Transpose(Reshape(x Wq + bq, [B, S, H, d]), 0 2 1 3)       [B, H, S, d]
    k = Transpose(Reshape(x Wk + bk, [B, S, H, d]), 0 2 3 1)       [B, H, d, S]
    v = Transpose(Reshape(x Wv + bv, [B, S, H, d]), 0 2 1 3)       [B, H, S, d]
    p = Softmax(q k / sqrt(d) + mask) over the keys                 [B, H, S, S]
    y = Reshape(Transpose(p v, 0 2 1 3), [B, S, C]) Wo + bo

Head h is columns h*d .. h*d + d-1 of Wq, Wk and Wv (and of their biases) and the same rows
of Wo, and nothing else reads them: removing heads removes those columns and rows, and H
(C in the merging Reshape) becomes the kept count in the Reshapes' target shapes, wherever
they hold it: a constant shape, or a constant that a Concat of Shape/Gather results and
constants (torch's export with dynamic axes; tf2onnx computes it in int32 and Casts it) makes
the shape from; one computed shape may be read by the Reshapes of q, k and v together, which
keep the same heads. Nothing else changes: d, and with it the scale 1/sqrt(d), stays.

The match starts at each Softmax and follows the tensors: back through scalings (Mul or Div
by a one-element constant) and masks (an Add of a tensor that is the same for every head)
to a MatMul of two activations (q k), forward to the MatMul with v; each of q, k, v goes
back through Transposes (composed into one permutation, checked), scalings and constant Adds
(keras' EinsumDense adds its [H, d] bias after the split) to the Reshape that splits a
projection's C outputs into heads; a projection is a MatMul by a constant and its bias Add,
directly or through a Reshape that regroups its tokens (TF's Dense on a sequence, tokens.py).
Instead of either MatMul of activations there may be an Einsum as tf2onnx writes it (keras
MultiHeadAttention, einsum.py): proven to compute q k^T of [B, S, H, d] and [B, T, H, d] into
[B, H, S, T], or p v of [B, H, S, T] and [B, T, H, d] into [B, H, S, d], head by head, with
shapes that follow its inputs. Every tensor on the way has that
one reader (the projections' outputs and the merged context may also be read by Shape
nodes, whose reads the analysis checks). Anything else is no match, with its reason: the
heads of that layer stay frozen (groups.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .einsum import DATA, Dims, Einsum, NotProven, chain_of, computes
from .tokens import regroups_tokens


@dataclass(frozen=True)
class Entry:
    """One entry of a Reshape's target shape: its constant value (None where it is computed)
    and where it lives (input ``index`` of ``node``, element ``offset``)."""

    value: int | None
    node: str
    index: int
    offset: int


@dataclass(frozen=True)
class Attention:
    """A matched attention layer: H heads of d dims, made by the projection MatMuls q, k and v,
    split by their Reshapes, merged back by ``merge``; ``moves``: the Transposes and the two
    MatMuls of activations in between; ``entries``: per Reshape, the shape entry that holds H
    (or C), to be rewritten (none where it is -1, inferred); ``einsums``: the Einsums (einsum.py)
    that take the MatMuls' place, if any."""

    heads: int
    head_dim: int
    projections: tuple[str, str, str]
    splits: tuple[str, str, str]
    merge: str
    moves: frozenset[str]
    entries: dict[str, tuple[Entry, ...]]
    einsums: tuple[Einsum, ...] = ()


def layer_name(nodes: tuple[str, ...]) -> str:
    """The path that node names share ('/encoder/layer.2/attention' for its projections and
    output projection), for messages; the first name where they share none."""
    common = []
    for level in zip(*(n.split("/") for n in nodes)):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    return "/".join(common) or nodes[0]


@dataclass(frozen=True)
class Heads:
    """Every matched attention layer, and why each Softmax that is not one is not."""

    layers: tuple[Attention, ...]
    failed: dict[str, str]  # Softmax node -> why

    def of(self, node: str) -> Attention | None:
        """The layer that ``node`` is a projection, Reshape, Transpose or attention MatMul of."""
        return next((a for a in self.layers if node in a.projections or node in a.splits or node == a.merge
                     or node in a.moves), None)

    def einsum_of(self, node: str) -> Einsum | None:
        """The Einsum of a matched layer that ``node`` belongs to (its shape arithmetic included)."""
        return next((e for a in self.layers for e in a.einsums if node in e.nodes), None)

    def why_not(self, reshape: gs.Node) -> str:
        """Why the heads that ``reshape`` splits are not matched: the reason of its attention's Softmax."""
        softmax = _softmax_of(reshape)
        return self.failed.get(softmax, "no Softmax over keys follows it") if softmax else \
            "no Softmax over keys follows it"


@dataclass(frozen=True)
class _Split:
    """q, k or v: the Transposes from its head split to the attention MatMul, the split Reshape,
    H and d, the projection MatMul that makes it, and the split's shape entry holding H."""

    transposes: list
    reshape: gs.Node
    heads: int
    dims: int
    projection: str
    entry: Entry
    shared: tuple[gs.Node, ...]  # other nodes that read its computed target shape


class NoMatch(Exception):
    """Why a Softmax is not the attention pattern."""


SPLIT_Q, SPLIT_K = (0, 2, 1, 3), (0, 2, 3, 1)  # [B, S, H, d] axes at q k's inputs: [B, H, S, d], [B, H, d, S]
SPLIT = (0, 1, 2, 3)  # an Einsum's q, k and v: [B, S, H, d] as split

# An Einsum's inputs and outputs in symbols (einsum.py): batch B, query tokens S, key tokens T, heads H, dims d.
Q, K = Dims([("B",), ("S",), ("H",), ("d",)]), Dims([("B",), ("T",), ("H",), ("d",)])
SCORES, CONTEXT = Dims([("B",), ("H",), ("S",), ("T",)]), Dims([("B",), ("H",), ("S",), ("d",)])
KEYS_FIRST = Dims([("B",), ("H",), ("T",), ("S",)])  # the scores where the given q and k are the other way round


def find_heads(graph: gs.Graph, shapes: dict[str, tuple], opset: int) -> Heads:
    """Match every Softmax of the graph; reasons for the head-splitting Reshapes not matched."""
    layers, failed = [], {}
    outputs = {t.name for t in graph.outputs}
    for node in graph.nodes:
        if node.op == "Softmax":
            try:
                layers.append(_match(node, shapes, opset, outputs))
            except NoMatch as e:
                failed[node.name] = str(e)
    return Heads(tuple(layers), failed)


def _softmax_of(node: gs.Node, depth: int = 12) -> str | None:
    """The attention Softmax of a head split ``node``: the first within ``depth`` nodes downstream
    (q, k), or the one whose weights a MatMul there multiplies (v) by, a few nodes before it."""
    frontier, seen = [node], {node.name}
    for _ in range(depth):
        frontier = [r for n in frontier for t in n.outputs for r in t.outputs if r.name not in seen]
        seen.update(n.name for n in frontier)
        for n in frontier:
            hit = n if n.op == "Softmax" else _softmax_before(n) if n.op == "MatMul" else None
            if hit is not None:
                return hit.name
    return None


def _softmax_before(node: gs.Node, depth: int = 3) -> gs.Node | None:
    """A Softmax among the first producers, up to ``depth`` back, of each of ``node``'s inputs."""
    for t in node.inputs:
        for _ in range(depth):
            if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
                break
            if t.inputs[0].op == "Softmax":
                return t.inputs[0]
            t = t.inputs[0].inputs[0]
    return None


def _match(softmax: gs.Node, shapes: dict[str, tuple], opset: int, outputs: set[str]) -> Attention:
    scores = softmax.inputs[0]
    rank = _rank(scores, shapes)
    axis = int(softmax.attrs.get("axis", -1 if opset >= 13 else 1))
    if rank != 4 or axis not in (-1, 3):
        raise NoMatch(f"Softmax node '{softmax.name}' is not over the keys of a [batch, heads, queries, keys] tensor "
                      "(or its shape is unknown)")
    _check_single_reader(scores)
    (q_in, want_q), (k_in, want_k), moves, einsums = _back_through_scores(scores, shapes, outputs)
    (v_in, want_v), context, av_moves, av_einsums = _times_values(softmax.outputs[0], shapes, outputs)
    q, k, v = (_back_to_split(t, want, shapes) for t, want in ((q_in, want_q), (k_in, want_k), (v_in, want_v)))
    splits = {s.reshape.name for s in (q, k, v)}
    for s in (q, k, v):
        stray = [n for n in s.shared if n.name not in splits]
        if stray:
            raise NoMatch(f"the target shape of Reshape node '{s.reshape.name}' is also read by {stray[0].op} node "
                          f"'{stray[0].name}'")
    sizes = {(s.heads, s.dims) for s in (q, k, v)}
    if len(sizes) != 1:
        raise NoMatch(f"queries, keys and values are split into different heads: {sorted(sizes)}")
    [(heads, head_dim)] = sizes
    merges, context = _forward_to_merge(context)
    merge = _only_reader(context, "Reshape", "the attention's context", shape_readers=True)
    if _rank(merge.outputs[0], shapes) is None or _rank(merge.inputs[0], shapes) != 4:
        raise NoMatch(f"Reshape node '{merge.name}' does not merge [batch, sequence, heads, dims]")
    entries, shared = target_entries(merge, shapes)
    if shared:
        raise NoMatch(f"the target shape of Reshape node '{merge.name}' is also read by {shared[0].op} node "
                      f"'{shared[0].name}'")
    out = entries[-1]
    _check_entry(out, heads * head_dim, merge, "the merged width")
    entries = {merge.name: (out,) if out.value != -1 else ()}
    for s in (q, k, v):
        entries[s.reshape.name] = (s.entry,) if s.entry.value != -1 else ()
    moves = moves | av_moves | merges | {t.name for s in (q, k, v) for t in s.transposes}
    return Attention(heads, head_dim, tuple(s.projection for s in (q, k, v)), tuple(s.reshape.name for s in (q, k, v)),
                     merge.name, frozenset(moves), entries, einsums + av_einsums)


Product = tuple[tuple[gs.Variable, tuple], tuple[gs.Variable, tuple], set[str], tuple[Einsum, ...]]


def _back_through_scores(t: gs.Variable, shapes: dict[str, tuple], outputs: set[str]) -> Product:
    """From the Softmax's input back through scalings and masks to the MatMul of q and k, or an
    Einsum that computes it: q and k with the axes of [B, S, H, d] they must have there, the
    MatMul, and the Einsum."""
    while True:
        node = _producer(t, "the attention scores")
        if node.op == "MatMul":
            if any(isinstance(x, gs.Constant) for x in node.inputs):
                raise NoMatch(f"MatMul node '{node.name}' before the Softmax has a constant input, not q and k")
            return (node.inputs[0], SPLIT_Q), (node.inputs[1], SPLIT_K), {node.name}, ()
        if node.op in DATA:
            einsum = _einsum(t, shapes, outputs, "the attention scores")
            a, b = einsum.tensors
            got = _computes(t, {a.name: Q, b.name: K})
            if got not in (SCORES, KEYS_FIRST):
                raise NoMatch(f"the Einsum that makes the attention scores ('{t.name}') computes {_show(got)}, "
                              f"not {_show(SCORES)} from {_show(Q)} and {_show(K)}")
            q, k = (a, b) if got == SCORES else (b, a)
            return (q, SPLIT), (k, SPLIT), set(), (einsum,)
        if node.op in ("Mul", "Div") and _scalar(node):
            t = _variable(node)
        elif node.op == "Add":
            if any(_shape(x, shapes) is None for x in node.inputs):
                raise NoMatch(f"Add node '{node.name}' on the attention scores: shapes unknown")
            varying = [x for x in node.inputs if not _same_for_every_head(x, shapes)]
            if len(varying) != 1:
                raise NoMatch(f"Add node '{node.name}' on the attention scores adds what varies across heads"
                              if varying else f"Add node '{node.name}' on the attention scores: a single head")
            t = varying[0]
        else:
            raise NoMatch(f"{node.op} node '{node.name}' on the attention scores (only a scale and a mask are "
                          "matched)")
        _check_single_reader(t)


def _times_values(weights: gs.Variable, shapes: dict[str, tuple], outputs: set[str]
                  ) -> tuple[tuple[gs.Variable, tuple], gs.Variable, set[str], tuple[Einsum, ...]]:
    """From the attention weights forward to the MatMul with v, or an Einsum that computes it: v
    with the axes of [B, S, H, d] it must have there, the context [B, H, S, d], the MatMul, the Einsum."""
    readers = [r for r in weights.outputs if r.op != "Shape"]
    if len(readers) == 1 and readers[0].op in DATA - {"MatMul"}:
        t = weights
        while _rank(t, shapes) != 4 or t is weights:  # along the Einsum's data ops to its output
            data = [r for r in t.outputs if r.op != "Shape"]
            if len(data) != 1 or data[0].op not in DATA:
                raise NoMatch(f"tensor '{t.name}' after the attention weights is read by "
                              f"{', '.join(r.op for r in data) or 'nothing'}, not by one op of an Einsum")
            t = data[0].outputs[0]
        einsum = _einsum(t, shapes, outputs, "the attention's context")
        if weights.name not in (x.name for x in einsum.tensors):
            raise NoMatch(f"the Einsum that makes '{t.name}' does not read the attention weights")
        v = next(x for x in einsum.tensors if x.name != weights.name)
        got = _computes(t, {weights.name: SCORES, v.name: K})
        if got != CONTEXT:
            raise NoMatch(f"the Einsum that makes the attention's context ('{t.name}') computes {_show(got)}, not "
                          f"{_show(CONTEXT)} from the weights {_show(SCORES)} and the values {_show(K)}")
        axes = tuple(1 if x is weights else 2 for x in einsum.tensors)
        return (v, SPLIT), t, set(), (replace(einsum, axes=axes),)
    av = _only_reader(weights, "MatMul", "the attention weights")
    if av.inputs[0] is not weights:
        raise NoMatch(f"MatMul node '{av.name}' does not multiply the attention weights by the values")
    return (av.inputs[1], SPLIT_Q), av.outputs[0], {av.name}, ()


def _einsum(t: gs.Variable, shapes: dict[str, tuple], outputs: set[str], what: str) -> Einsum:
    try:
        return chain_of(t, shapes, outputs)
    except NotProven as e:
        raise NoMatch(f"{what} come from an Einsum as tf2onnx writes it that is not followed: {e}") from None


def _computes(t: gs.Variable, given: dict[str, Dims]) -> Dims:
    try:
        return computes(t, given)
    except NotProven as e:
        raise NoMatch(f"an Einsum as tf2onnx writes it is not followed: {e}") from None


def _show(dims: Dims) -> str:
    return "[" + ", ".join("*".join(d) or "1" for d in dims) + "]"


def _back_to_split(t: gs.Variable, want: tuple[int, ...], shapes: dict[str, tuple]) -> _Split:
    """From q, k or v at the attention MatMuls back to the Reshape that splits a projection into
    heads; the Transposes on the way must bring its [B, S, H, d] to ``want``."""
    transposes = []
    _check_single_reader(t)
    while True:
        node = _producer(t, "queries, keys or values")
        if node.op == "Reshape":
            break
        if node.op == "Transpose":
            transposes.append(node)
        elif not (node.op in ("Mul", "Div") and _scalar(node) or _adds_constant(node)):
            raise NoMatch(f"{node.op} node '{node.name}' between a head split and the attention MatMuls")
        t = node.inputs[0] if node.op == "Transpose" else _variable(node)
        _check_single_reader(t)
    perm = tuple(range(4))
    for tr in reversed(transposes):
        perm = tuple(perm[p] for p in tr.attrs.get("perm", (3, 2, 1, 0)))
    if perm != want:
        raise NoMatch(f"Transposes after Reshape node '{node.name}' give axes {perm} of [batch, sequence, heads, "
                      f"dims], not {want}")
    split = node
    x = split.inputs[0]
    if _rank(x, shapes) != 3 or _rank(split.outputs[0], shapes) != 4:
        raise NoMatch(f"Reshape node '{split.name}' does not split [batch, sequence, width] into heads")
    for reader in x.outputs:
        if reader is not split and reader.op != "Shape":
            raise NoMatch(f"the projection that Reshape node '{split.name}' splits is also read by {reader.op} "
                          f"node '{reader.name}'")
    projection, width = _projection(x, shapes)
    entries, shared = target_entries(split, shapes)
    if len(entries) != 4:
        raise NoMatch(f"Reshape node '{split.name}' has a target shape of {len(entries)} entries, not 4")
    heads, dims = entries[2].value, entries[3].value
    if heads == -1 and dims not in (None, -1, 0):
        heads = width // dims
    elif dims == -1 and heads not in (None, -1, 0):
        dims = width // heads
    if heads is None or heads <= 0 or dims is None or dims <= 0 or heads * dims != width:
        raise NoMatch(f"Reshape node '{split.name}': the head count is not a constant of its target shape "
                      f"(heads {heads}, dims {dims}, width {width})")
    known = shapes.get(split.outputs[0].name)
    if known is not None and tuple(known[2:]) not in ((heads, dims), (None, None)):
        raise NoMatch(f"Reshape node '{split.name}' gives {known}, not [.., .., {heads}, {dims}]")
    _check_entry(entries[2], heads, split, "the head count")
    return _Split(transposes, split, heads, dims, projection, entries[2], shared)


def _projection(x: gs.Variable, shapes: dict[str, tuple]) -> tuple[str, int]:
    """The MatMul by a constant [in, C] weight (with its bias Add, if any, and a Reshape that
    regroups its tokens between them) that makes ``x``; and C."""
    node = _producer(x, "a head split's input")
    if node.op == "Add":
        bias = [t for t in node.inputs if isinstance(t, gs.Constant)]
        if len(bias) != 1:
            raise NoMatch(f"Add node '{node.name}' before a head split does not add a constant bias")
        x = next(t for t in node.inputs if t is not bias[0])
        _check_single_reader(x)
        node = _producer(x, "a head split's input")
    if regroups_tokens(node, shapes):
        x = node.inputs[0]
        _check_single_reader(x)
        node = _producer(x, "a head split's input")
    weight = node.inputs[1] if node.op == "MatMul" else None
    if not isinstance(weight, gs.Constant) or weight.values.ndim != 2:
        raise NoMatch(f"{node.op} node '{node.name}' before a head split is not a MatMul by a constant weight")
    return node.name, int(weight.shape[1])


def _forward_to_merge(t: gs.Variable) -> tuple[set[str], gs.Variable]:
    """From p v [B, H, S, d] through Transposes back to [B, S, H, d]: (their names, that tensor)."""
    perm, names = SPLIT_Q, set()
    while True:
        readers = t.outputs
        if len(readers) != 1 or readers[0].op != "Transpose":
            break
        tr = readers[0]
        perm = tuple(perm[p] for p in tr.attrs.get("perm", (3, 2, 1, 0)))
        names.add(tr.name)
        t = tr.outputs[0]
    if perm != (0, 1, 2, 3):
        raise NoMatch(f"the attention's context reaches its merge as axes {perm} of [batch, sequence, heads, dims]")
    return names, t


INTEGERS = (onnx.TensorProto.INT32, onnx.TensorProto.INT64)


def target_entries(reshape: gs.Node, shapes: dict[str, tuple]) -> tuple[list[Entry], tuple[gs.Node, ...]]:
    """The entries of a Reshape's target shape: a constant, or a Concat (axis 0) of pieces of
    known length (maybe Cast from int32 to int64, as tf2onnx writes it), each entry constant
    where its piece is; and the other nodes that read the computed shape (its entries are theirs
    too: rewriting one rewrites it for them)."""
    shape = reshape.inputs[1]
    if isinstance(shape, gs.Constant):
        return [Entry(int(v), reshape.name, 1, i) for i, v in enumerate(np.asarray(shape.values).reshape(-1))], ()
    what = f"the target shape of Reshape node '{reshape.name}'"
    node = _producer(shape, what)
    shared = [r for r in shape.outputs if r is not reshape]
    if node.op == "Cast" and node.attrs.get("to") in INTEGERS:
        shape = node.inputs[0]
        shared += [r for r in shape.outputs if r is not node]
        node = _producer(shape, what)
    if node.op != "Concat" or int(node.attrs.get("axis", 0)) != 0:
        raise NoMatch(f"{what} is computed by {node.op} node '{node.name}', not a constant or a Concat of pieces")
    entries = []
    for i, piece in enumerate(node.inputs):
        if isinstance(piece, gs.Constant):
            entries += [Entry(int(v), node.name, i, j) for j, v in enumerate(np.asarray(piece.values).reshape(-1))]
            continue
        length = shapes.get(piece.name)
        if length is None or len(length) != 1 or length[0] is None:
            raise NoMatch(f"Concat node '{node.name}' makes a target shape from pieces of unknown length")
        entries += [Entry(None, node.name, i, j) for j in range(length[0])]
    return entries, tuple(shared)


def _check_entry(entry: Entry, value: int, reshape: gs.Node, what: str) -> None:
    if entry.value not in (value, -1):
        raise NoMatch(f"Reshape node '{reshape.name}': {what} ({value}) is not a constant entry of its target shape")


def _same_for_every_head(t, shapes: dict[str, tuple]) -> bool:
    """A mask (or bias) of the [B, H, S, S] scores that broadcasts over the heads (axis 1)."""
    shape = _shape(t, shapes)
    return shape is not None and len(shape) <= 4 and (len(shape) < 3 or shape[len(shape) - 3] == 1)


def _scalar(node: gs.Node) -> bool:
    """Mul or Div of an activation by a one-element constant (a Div's divisor only)."""
    a, b = node.inputs
    return isinstance(b, gs.Constant) and b.values.size == 1 and isinstance(a, gs.Variable) or (
        node.op == "Mul" and isinstance(a, gs.Constant) and a.values.size == 1 and isinstance(b, gs.Variable))


def _adds_constant(node: gs.Node) -> bool:
    """An Add of a constant (a bias) of at most rank 4 to an activation; groups.py slices it by heads."""
    constants = [t for t in node.inputs if isinstance(t, gs.Constant)]
    return node.op == "Add" and len(constants) == 1 and constants[0].values.ndim <= 4


def _variable(node: gs.Node) -> gs.Variable:
    return next(t for t in node.inputs if isinstance(t, gs.Variable))


def _producer(t, what: str) -> gs.Node:
    if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
        raise NoMatch(f"{what} ('{t.name}') come from no node (a graph input or a constant)")
    return t.inputs[0]


def _only_reader(t: gs.Variable, op: str, what: str, shape_readers: bool = False) -> gs.Node:
    readers = [r for r in t.outputs if not (shape_readers and r.op == "Shape")]
    if len(readers) != 1 or readers[0].op != op:
        raise NoMatch(f"{what} ('{t.name}') are read by {', '.join(r.op for r in readers) or 'nothing'}, "
                      f"not by one {op}")
    return readers[0]


def _check_single_reader(t: gs.Variable) -> None:
    if len(t.outputs) != 1:
        raise NoMatch(f"tensor '{t.name}' inside the attention is read by {len(t.outputs)} nodes")


def _shape(t, shapes: dict[str, tuple]) -> tuple | None:
    return tuple(t.shape) if isinstance(t, gs.Constant) else shapes.get(t.name)


def _rank(t, shapes: dict[str, tuple]) -> int | None:
    shape = _shape(t, shapes)
    return None if shape is None else len(shape)
