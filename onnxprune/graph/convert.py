"""The ModelProto <-> onnx-graphsurgeon boundary: conversions that keep the model's identity, and safe constant writes.

Passes take an ``onnx.ModelProto`` and return a new one; inside they work on a
graphsurgeon ``Graph``. ``to_graph``/``to_model`` keep the input's ir_version,
opsets and metadata, which onnx.helper and graphsurgeon would otherwise replace.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx_graphsurgeon.logger import G_LOGGER

from .io import graphs_in

G_LOGGER.severity = G_LOGGER.CRITICAL  # its warnings are not for our users


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """A graphsurgeon graph of the model (the ModelProto is not modified).

    Unnamed or duplicate node names get deterministic ones (``Op_i``) so that
    analyses and rewrites can refer to nodes by name. Constant nodes get their
    value as a tensor (see ``_constant_values_as_tensors``).
    """
    graph = gs.import_onnx(_constant_values_as_tensors(model))
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{i}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)
    return graph


# The Constant attributes to_graph turns into the equivalent tensor ``value``, with their dtypes:
# graphsurgeon drops a sparse_value on import (the Constant it exports has no value) and constant
# folding turns value_float(s) into float64 initializers.
_CONSTANT_DTYPES = {"value_float": np.float32, "value_floats": np.float32,
                    "value_int": np.int64, "value_ints": np.int64, "sparse_value": None}


def _dense(sparse: onnx.SparseTensorProto) -> np.ndarray:
    values = onnx.numpy_helper.to_array(sparse.values)
    indices = onnx.numpy_helper.to_array(sparse.indices)
    dense = np.zeros(tuple(sparse.dims), values.dtype)
    if indices.ndim == 1:  # linear indices
        dense.reshape(-1)[indices] = values
    else:  # [NNZ, rank] coordinates
        dense[tuple(indices.T)] = values
    return dense


def _constant_values_as_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model``, or a copy of it where every Constant node (subgraphs included) holds its value
    as the equivalent ``value`` tensor, of the dtype ONNX gives the other forms."""

    def constants(m: onnx.ModelProto):
        return [(n, a) for g in graphs_in(m.graph) for n in g.node if n.op_type == "Constant"
                and n.domain in ("", "ai.onnx") for a in n.attribute if a.name in _CONSTANT_DTYPES]

    if not constants(model):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # not through bytes: a model may be over protobuf's 2 GB
    model = copy
    for node, attr in constants(model):
        if attr.name == "sparse_value":
            value = _dense(attr.sparse_tensor)
        else:
            value = np.array(onnx.helper.get_attribute_value(attr), dtype=_CONSTANT_DTYPES[attr.name])
        attr.CopyFrom(onnx.helper.make_attribute("value", onnx.numpy_helper.from_array(value)))
    return model


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` with the ir_version, opsets and metadata of ``like``.

    Stale intermediate shape annotations are dropped (channel counts change);
    IR version 3 models list every initializer as a graph input, as that IR requires.
    """
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
            tensor.shape = None
    _strings_as_protos(graph)
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = like.ir_version
    del model.opset_import[:]
    model.opset_import.extend(like.opset_import)
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, field, getattr(like, field))
    del model.metadata_props[:]
    model.metadata_props.extend(like.metadata_props)
    del model.functions[:]
    model.functions.extend(like.functions)
    if model.ir_version <= 3:
        listed = {i.name for i in model.graph.input}
        for init in model.graph.initializer:
            if init.name not in listed:
                model.graph.input.append(
                    onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
                )
    return model


def _strings_as_protos(graph: gs.Graph) -> None:
    """String constants that constant folding made numpy arrays, given back as ONNX tensors:
    graphsurgeon exports a numpy-valued constant through raw bytes, which strings cannot use
    (a string Constant or initializer would otherwise crash the export)."""
    for g in (graph, *graph.subgraphs(recursive=True)):
        for tensor in g.tensors().values():
            if (isinstance(tensor, gs.Constant) and not isinstance(tensor._values, LazyValues)
                    and tensor.values.dtype.kind in "OSU"):
                tensor._values = LazyValues(onnx.numpy_helper.from_array(tensor.values.astype(object), tensor.name))


def unique_name(graph: gs.Graph, base: str) -> str:
    """A tensor name not yet used in ``graph``."""
    taken = graph.tensors().keys()
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def set_constant_input(graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray) -> None:
    """Give ``node`` new constant values at input ``index`` without touching other readers.

    graphsurgeon shares one Constant per initializer name, so a constant that
    other nodes also read is copied under a new name (copy-on-write).
    """
    old = node.inputs[index]
    shared = len({id(n) for n in old.outputs}) > 1 or old in graph.outputs
    name = unique_name(graph, old.name) if shared else old.name
    const = gs.Constant(name, np.ascontiguousarray(values))
    node.inputs[index] = const
    if not shared:
        old.outputs.clear()


