"""Einsums as tf2onnx writes them, followed symbol by symbol to prove what they compute.

keras MultiHeadAttention computes its scores as einsum('aecd,abcd->acbe', k, q) and its context
as einsum('acbe,aecd->abcd', p, v); tf2onnx 1.17 writes each as a chain (the scores):

    q5 = Transpose(Unsqueeze(q, 3), 0 2 1 3 4)                              [B, H, S, 1, d]
    k5 = Transpose(Unsqueeze(k, 1), 0 3 1 2 4)                              [B, H, 1, T, d]
    s = MatMul(Reshape(q5, [prod(B, H), -1, d]), Transpose(Reshape(k5, [prod(B, H), -1, d]), 0 2 1))
    scores = Squeeze(Reshape(s, [max(B H, B H), S, T, 1]), 4)               [B, H, S, T]

where every entry of the Reshapes' target shapes is read from Shape(q5) and Shape(k5) at run
time (Gather, ReduceProd, Max, Concat with the constants -1 and 1).

Each axis of the two inputs gets a symbol (q [B, S, H, d], k [B, T, H, d]: the batch, heads and
dims of one pair with the other's), and every op of the chain is applied to symbols: a tensor's
shape is a list of dims, each a product of symbols in row-major order (() is 1). Shape reads the
dims, Gather picks them, ReduceProd multiplies them, Max of equal dims is that dim, Concat joins
them; a Reshape to such products (or -1, or 1) regroups the row-major sequence of its input's
symbols, which it must take in order; a MatMul needs the same batch dims on both sides and
contracts a dim that is the same on both. Where the output is then [B, H, S, T], the chain
computes scores[b, h, s, t] = sum_d q[b, s, h, d] k[b, t, h, d]: head h of the output reads head
h of each input only, and the chain's shapes follow its inputs, so removing heads needs no
rewrite inside it. Anything else (an op not listed, a constant other than -1 and 1 in a target
shape, a dim that does not regroup, a tensor or computed shape read outside the chain) is not
proven, with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

DATA = frozenset("Unsqueeze Squeeze Transpose Reshape MatMul".split())
ARITHMETIC = frozenset("Shape Gather ReduceProd Max Concat Cast".split())


class NotProven(Exception):
    """Why a chain is not an Einsum that this module can follow."""


class Dims(tuple):
    """A tensor's shape in symbols: one product of symbols (a tuple; () is 1) per axis."""


class Entries(tuple):
    """A shape vector: per entry a product of symbols, or an int where it is a constant."""


@dataclass(frozen=True)
class Einsum:
    """A chain that makes ``output`` from the two rank-4 ``inputs``, ``last`` the node that
    makes ``output``; ``nodes``: all of its nodes, its shape arithmetic included; ``tensors``:
    the inputs' tensors; ``axes``: the axis of each input that carries the heads (heads.py
    proves it), the output's being 1."""

    inputs: tuple[str, str]
    output: str
    last: str
    nodes: frozenset[str]
    tensors: tuple[gs.Variable, gs.Variable] = field(compare=False, repr=False, default=None)
    axes: tuple[int, int] = (2, 2)


def chain_of(out: gs.Variable, shapes: dict[str, tuple], graph_outputs: set[str]) -> Einsum:
    """The nodes that make the rank-4 ``out`` from two rank-4 tensors through the ops above, each
    of their tensors read by them only (a Shape of the chain's tensors included)."""
    nodes: dict[str, gs.Node] = {}
    inputs: list[gs.Variable] = []
    todo = [out]
    while todo:
        node = _producer(todo.pop())
        if node.name in nodes:
            continue
        if node.op not in DATA | ARITHMETIC:
            raise NotProven(f"{node.op} node '{node.name}' inside an Einsum as tf2onnx writes it")
        nodes[node.name] = node
        for t in node.inputs:
            if isinstance(t, gs.Constant) or not t.name:
                continue
            rank = _rank(t, shapes)
            if rank is None:
                raise NotProven(f"the rank of tensor '{t.name}' inside an Einsum is unknown")
            if rank == 4 and t is not out and (node.op in DATA or node.op == "Shape"):
                if t not in inputs:
                    inputs.append(t)
            else:
                todo.append(t)
    if len(inputs) != 2:
        raise NotProven(f"the Einsum that makes '{out.name}' reads {len(inputs)} rank-4 tensors, not 2")
    for t in {t.name: t for n in nodes.values() for t in [*n.inputs, *n.outputs]
              if isinstance(t, gs.Variable) and t is not out}.values():
        if t.name in graph_outputs:
            raise NotProven(f"tensor '{t.name}' inside an Einsum is a graph output")
        stray = [r for r in t.outputs if r.name not in nodes]
        if stray:
            raise NotProven(f"tensor '{t.name}' inside an Einsum is also read by {stray[0].op} node "
                            f"'{stray[0].name}'")
    return Einsum((inputs[0].name, inputs[1].name), out.name, _producer(out).name, frozenset(nodes), tuple(inputs))


def computes(out: gs.Variable, given: dict[str, Dims]) -> Dims:
    """The dims of ``out``, made by a chain (``chain_of``), in the symbols ``given`` for its inputs."""
    values: dict[str, Dims | Entries] = dict(given)

    def value(t) -> Dims | Entries:
        if isinstance(t, gs.Constant):
            return Entries(int(v) for v in np.asarray(t.values).reshape(-1))
        if t.name not in values:
            node = _producer(t)
            values[t.name] = _apply(node, [value(x) if x.name else None for x in node.inputs])
        return values[t.name]

    result = value(out)
    if not isinstance(result, Dims):
        raise NotProven(f"the Einsum that makes '{out.name}' computes a shape, not a tensor")
    return result


def _apply(node: gs.Node, args: list) -> Dims | Entries:
    """One op on symbols (the module's docstring)."""
    op, x = node.op, args[0]
    where = f"{op} node '{node.name}' inside an Einsum"
    if op in ("Unsqueeze", "Squeeze", "Transpose", "Reshape", "MatMul") and not isinstance(x, Dims):
        raise NotProven(f"{where} reads a shape where a tensor goes")
    if op in ("Gather", "ReduceProd", "Max", "Cast") and not isinstance(x, Entries):
        raise NotProven(f"{where} reads a tensor where a shape goes")
    if op == "Unsqueeze":
        axes = sorted(a + len(x) + len(_axes(node, args)) if a < 0 else a for a in _axes(node, args))
        dims = list(x)
        for a in axes:
            dims.insert(a, ())
        return Dims(dims)
    if op == "Squeeze":
        axes = {a + len(x) if a < 0 else a for a in _axes(node, args)}
        if not axes or any(x[a] != () for a in axes):
            raise NotProven(f"{where} removes an axis that is not 1")
        return Dims(d for a, d in enumerate(x) if a not in axes)
    if op == "Transpose":
        perm = node.attrs.get("perm", list(range(len(x)))[::-1])
        return Dims(x[p] for p in perm)
    if op == "Reshape":
        return _reshape(x, args[1], where, int(node.attrs.get("allowzero", 0)))
    if op == "MatMul":
        y = args[1]
        if not isinstance(y, Dims) or len(x) != len(y) or len(x) < 2 or x[:-2] != y[:-2] or x[-1] != y[-2]:
            raise NotProven(f"{where} does not multiply matrices of the same batch dims over a shared dim")
        return Dims((*x[:-1], y[-1]))
    if op == "Shape":
        start, end = int(node.attrs.get("start", 0)), node.attrs.get("end")
        return Entries(x[slice(start, None if end is None else int(end))])
    if op == "Gather":
        picks = args[1]
        if int(node.attrs.get("axis", 0)) != 0 or not isinstance(node.inputs[1], gs.Constant) \
                or node.inputs[1].values.ndim != 1:
            raise NotProven(f"{where} does not pick entries of a shape by a constant list")
        return Entries(x[int(i)] for i in picks)
    if op == "ReduceProd":
        axes = node.attrs.get("axes", [0]) if len(node.inputs) < 2 else list(args[1])
        if list(axes) not in ([0], [-1]) or int(node.attrs.get("keepdims", 1)) != 1 or \
                any(isinstance(e, int) and e != 1 for e in x):
            raise NotProven(f"{where} does not multiply the dims of a shape")
        return Entries([tuple(s for e in x if not isinstance(e, int) for s in e)])
    if op == "Max":
        if any(not isinstance(a, Entries) or a != x for a in args):
            raise NotProven(f"{where} takes the largest of dims that differ")
        return x
    if op == "Concat":
        if int(node.attrs.get("axis", 0)) != 0 or not all(isinstance(a, Entries) for a in args):
            raise NotProven(f"{where} does not join pieces of a shape")
        return Entries(e for a in args for e in a)
    if op == "Cast":
        if node.attrs.get("to") not in (onnx.TensorProto.INT32, onnx.TensorProto.INT64):
            raise NotProven(f"{where} casts a shape to what is not an integer")
        return x
    raise NotProven(f"{where}: not followed")


def _axes(node: gs.Node, args: list) -> list[int]:
    axes = node.attrs.get("axes") if len(args) < 2 or args[1] is None else args[1]
    if axes is None or (len(args) > 1 and args[1] is not None and not isinstance(node.inputs[1], gs.Constant)):
        raise NotProven(f"{node.op} node '{node.name}' inside an Einsum has no constant axes")
    return [int(a) for a in axes]


def _reshape(x: Dims, target, where: str, allowzero: int) -> Dims:
    """Regroup x's row-major symbols into the target's entries: those before a -1 take a prefix
    of them, those after it a suffix, the -1 what is left; without a -1 they take them all."""
    if not isinstance(target, Entries):
        raise NotProven(f"{where} has no shape as its target")
    entries = []
    for e in target:
        if isinstance(e, int) and e not in (-1, 1):
            raise NotProven(f"{where} has the constant {e} in its target shape (only -1 and 1 follow its input)")
        entries.append(() if e == 1 else e)
    if allowzero or entries.count(-1) > 1:
        raise NotProven(f"{where} has a target shape that does not follow its input")
    symbols = [s for d in x for s in d]
    split = entries.index(-1) if -1 in entries else len(entries)
    head = [s for e in entries[:split] for s in e]
    tail = [s for e in entries[split + 1:] for s in e]
    middle = symbols[len(head):len(symbols) - len(tail)]
    if symbols[:len(head)] != head or symbols[len(symbols) - len(tail):] != tail or len(head) + len(tail) > \
            len(symbols) or (-1 not in entries and middle):
        raise NotProven(f"{where} does not regroup its input's dims in order")
    return Dims(tuple(middle) if e == -1 else e for e in entries)


def _producer(t) -> gs.Node:
    if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
        raise NotProven(f"tensor '{t.name}' inside an Einsum comes from no node")
    return t.inputs[0]


def _rank(t, shapes: dict[str, tuple]) -> int | None:
    shape = tuple(t.shape) if isinstance(t, gs.Constant) else shapes.get(t.name)
    return None if shape is None else len(shape)
