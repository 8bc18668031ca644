"""Reshapes that only regroup the token dims: [..., C] -> [..., C], the last axis (the channels) untouched.

TensorFlow's Dense on a sequence is a Tensordot, and tf2onnx writes it as

    Reshape(x, [-1, C_in])  ->  MatMul by W [C_in, C_out]  ->  Reshape(., [B, S, C_out])  ->  Add bias

In row-major order such a Reshape moves whole rows of C: element (t, c) of the input is element
(t', c) of the output, with t and t' the same position of the flattened leading dims. So it
neither moves nor mixes channels, and a MatMul behind it reads the same rows of tokens as it
would read from [B, S, C_in]. Where channels go, the only entry of the target shape that must
change is the last (C), unless it is -1.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs


def regroups_tokens(node: gs.Node, shapes: dict[str, tuple]) -> bool:
    """A Reshape from [..., C] to [..., C] (rank 2 or more on both sides, C known and equal)."""
    if node.op != "Reshape":
        return False
    before, after = shapes.get(node.inputs[0].name), shapes.get(node.outputs[0].name)
    return (before is not None and after is not None and len(before) >= 2 and len(after) >= 2
            and before[-1] is not None and before[-1] == after[-1])


def token_source(t: gs.Variable, shapes: dict[str, tuple]) -> gs.Variable:
    """The tensor that ``t`` regroups when a Reshape that regroups tokens makes it and ``t`` has
    that one reader (a MatMul behind tf2onnx's Tensordot Reshape); else ``t`` itself."""
    node = t.inputs[0] if isinstance(t, gs.Variable) and len(t.inputs) == 1 else None
    if node is not None and len(t.outputs) == 1 and regroups_tokens(node, shapes):
        return node.inputs[0]
    return t


def token_reader(t: gs.Variable, shapes: dict[str, tuple] | None) -> gs.Node | None:
    """The one reader of ``t`` where it is a Reshape that regroups tokens (shapes not checked
    where ``shapes`` is None: for consumers the analysis already checked)."""
    readers = t.outputs
    if len(readers) != 1 or readers[0].op != "Reshape":
        return None
    return readers[0] if shapes is None or regroups_tokens(readers[0], shapes) else None
