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
    """``model`` cut down to the nodes that compute ``tensors``, which become its outputs; from
    the graph inputs, or from the tensors ``sources`` (examples give dtype and shape) instead.

    Built on the protos themselves: PRO and the statistics cut hundreds of segments, and a
    round trip through graphsurgeon costs about ten times the cut (docs/PERFORMANCE.md). A
    model with subgraphs (If/Loop/Scan, whose bodies read outer tensors) takes that round trip.
    """
    if not cuttable(model):
        return _probe_via_graph(model, tensors, sources)
    graph = model.graph
    given = set(sources or ())
    producer = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    needed: set[int] = set()
    stack = [t for t in tensors if t not in given]
    while stack:  # back from the wanted tensors to the given ones
        i = producer.get(stack.pop())
        if i is not None and i not in needed:
            needed.add(i)
            stack.extend(x for x in graph.node[i].input if x and x not in given)
    nodes = [graph.node[i] for i in sorted(needed)]
    read = {x for n in nodes for x in n.input} | set(tensors)
    initializers = [t for t in graph.initializer if t.name in read and t.name not in given]
    constants = {t.name for t in graph.initializer}
    typed = {vi.name: vi.type.tensor_type.elem_type for vi in [*graph.input, *graph.value_info, *graph.output]
             if vi.type.tensor_type.elem_type}
    typed.update((t.name, t.data_type) for t in graph.initializer)
    untyped = [t for t in tensors if t not in typed and t not in given]
    info = _inferred(model) if untyped or sources else {}
    if sources is None:
        inputs = [i for i in graph.input if i.name not in constants or i.name in read]  # IR 3 lists weights too
    else:
        inputs = [_source_info(name, example, info) for name, example in sources.items() if name in read]
    element = {**typed, **{n: helper.np_dtype_to_tensor_dtype(e.dtype) for n, e in (sources or {}).items()}}
    for name in untyped:  # e.g. int64 shape arithmetic: its type is in no annotation
        element[name] = helper.np_dtype_to_tensor_dtype(np.dtype(info.get(name, (np.float32, None))[0]))
    outputs = [helper.make_tensor_value_info(name, element[name], None) for name in tensors]
    produced = {o for n in nodes for o in n.output} - set(tensors)
    cut = onnx.GraphProto(name=graph.name, node=nodes, input=inputs, output=outputs, initializer=initializers,
                          value_info=[vi for vi in graph.value_info if vi.name in produced])
    probe = onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import, functions=model.functions,
                            producer_name=model.producer_name, producer_version=model.producer_version,
                            domain=model.domain, model_version=model.model_version,
                            metadata_props=model.metadata_props)
    probe.graph.CopyFrom(cut)
    return probe


def _source_info(name: str, example: np.ndarray, info: dict[str, tuple[np.dtype, list]]) -> onnx.ValueInfoProto:
    """A graph input for a given tensor: the example's dtype and shape, with dim 0 dynamic where it
    is the batch: unless shape inference fixes it (shape arithmetic), or, unknown, for rank > 1."""
    dims = info.get(name, (None, None))[1]
    batch = dims[0] is None if dims else example.ndim > 1
    shape = [None, *example.shape[1:]] if batch else list(example.shape)
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(example.dtype), shape)


def _probe_via_graph(model: onnx.ModelProto, tensors: list[str],
                     sources: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    """``probe_model`` through graphsurgeon, which follows the outer tensors that subgraphs read."""
    graph = to_graph(model)
    known = graph.tensors()
    untyped = [known[name] for name in tensors if known[name].dtype is None]
    info = _inferred(model) if untyped or sources else {}
    for t in untyped:
        t.dtype = info.get(t.name, (np.float32, None))[0]
    if sources is not None:
        graph.inputs = []
        for name, example in sources.items():
            tensor = known[name]
            tensor.inputs.clear()  # cut off its producer: the value is given
            value = _source_info(name, example, info)
            tensor.dtype = example.dtype
            tensor.shape = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
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
