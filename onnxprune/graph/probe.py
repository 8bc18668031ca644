"""Sub-models that compute chosen tensors of a model, from its inputs or from the live tensors at a cut.

A cut before node p: the activations produced before it and read at or after it (``live_tensors``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from .convert import to_graph, to_model

_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16)


def probe_model(model: onnx.ModelProto, tensors: list[str],
                sources: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """``model`` cut down to what computes ``tensors``, which become its outputs; from the
    graph inputs, or from the tensors ``sources`` (examples give dtype and shape) instead."""
    graph = to_graph(model)
    known = graph.tensors()
    untyped = [known[name] for name in tensors if known[name].dtype is None]
    info = _inferred(model) if untyped or sources else {}
    for t in untyped:  # e.g. int64 shape arithmetic: its type is in no annotation
        t.dtype = info.get(t.name, (np.float32, None))[0]
    if sources is not None:
        graph.inputs = []
        for name, example in sources.items():
            tensor = known[name]
            tensor.inputs.clear()  # cut off its producer: the value is given
            dims = info.get(name, (None, None))[1]
            # dim 0 is the batch unless inference fixes it (shape arithmetic); unknown: rank > 1
            batch = dims[0] is None if dims else example.ndim > 1
            shape = [None, *example.shape[1:]] if batch else list(example.shape)
            tensor.dtype, tensor.shape = example.dtype, shape
            graph.inputs.append(tensor)
    graph.outputs = [known[name] for name in tensors]
    if sources is not None:
        graph.cleanup(remove_unused_graph_inputs=True)
    return to_model(graph, model)


def cuttable(model: onnx.ModelProto) -> bool:
    """Whether cuts are safe: no If/Loop/Scan, whose subgraphs read outer tensors unseen here."""
    return not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                   for n in model.graph.node for a in n.attribute)


def live_tensors(model: onnx.ModelProto, position: int) -> list[str]:
    """Activations that cross the cut before node ``position``: produced before it (or graph
    inputs), read by a node at or after it. Initializers are not activations."""
    constants = {t.name for t in model.graph.initializer}
    before = {i.name for i in model.graph.input} - constants
    for node in model.graph.node[:position]:
        before.update(o for o in node.output if o)
    live: dict[str, None] = {}
    for node in model.graph.node[position:]:
        for name in node.input:
            if name in before:
                live[name] = None
    return list(live)


def _inferred(model: onnx.ModelProto) -> dict[str, tuple[np.dtype, list]]:
    """Element type and dims (ints, or names/None where not fixed) of the model's tensors
    by onnx shape inference; empty where it fails (too large, ops it does not know)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_without_weights(model))
    except Exception:
        return {}
    result = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        t = vi.type.tensor_type
        if t.elem_type:
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim] if t.HasField("shape") else None
            result[vi.name] = (helper.tensor_dtype_to_np_dtype(t.elem_type), dims)
    return result


def _without_weights(model: onnx.ModelProto, limit: int = 1024) -> onnx.ModelProto:
    """A copy of ``model`` whose float initializers of more than ``limit`` elements are typed
    graph inputs instead: inference needs their shapes, not their values (a Reshape's shape
    is a small int64 constant and stays), and a model of several GB is not copied whole."""
    graph = model.graph
    heavy = {t.name for t in graph.initializer
             if t.data_type in _FLOAT_TYPES and int(np.prod(t.dims, dtype=np.int64)) > limit}
    if not heavy:
        return model
    inputs = [*(i for i in graph.input if i.name not in heavy),
              *(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                for t in graph.initializer if t.name in heavy)]
    light = onnx.GraphProto(name=graph.name, node=graph.node, input=inputs, output=graph.output,
                            value_info=graph.value_info,
                            initializer=[t for t in graph.initializer if t.name not in heavy])
    return onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import,
                           functions=model.functions, graph=light)
