"""A model's inputs and tensor shapes: shape inference with dynamic input dims fixed, random feeds.

Convention: a dynamic leading (batch) dim is taken as 1, so costs are per
sample; any other dynamic dim must be given with ``--input-shape NAME=d0,d1,...``
or it stays unknown (``None``), and whatever needs it says so.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import OnnxPruneError
from .runtime import session

Shape = tuple  # of int | None

# Initializers larger than this are declared by shape only: inference needs no weights.
_SMALL_CONSTANT = 4096


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a user feeds (old IR versions also list initializers as inputs)."""
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


NUMPY_OF = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.BOOL: np.bool_,
}


def random_feeds(model: onnx.ModelProto, input_shapes=None, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Random inputs of the model's input shapes (integers 0 or 1); None if some dim is unknown."""
    rng = np.random.default_rng(seed)
    feeds = {}
    fixed = fixed_input_shapes(model, input_shapes)
    for vi in graph_inputs(model):
        shape = fixed[vi.name]
        dtype = NUMPY_OF.get(vi.type.tensor_type.elem_type)
        if dtype is None or any(d is None for d in shape):
            return None
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:  # 0 or 1: valid token ids (an embedding table may be small), masks and token types
            feeds[vi.name] = rng.integers(0, 2, size=shape).astype(dtype)
    return feeds


def batch_feeds(model: onnx.ModelProto, batch: int, input_shapes: dict[str, tuple[int, ...]] | None = None,
                seed: int = 0) -> dict[str, np.ndarray] | None:
    """Random inputs of ``batch`` samples: the model's input shapes with ``input_shapes`` fixing
    dynamic dims and the batch dim replaced; None if some other dim is still unknown."""
    fixed = fixed_input_shapes(model, input_shapes)
    return random_feeds(model, {name: (batch, *dims[1:]) for name, dims in fixed.items()}, seed)


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=d0,d1,...`` strings (as given to ``--input-shape``)."""
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            values = tuple(int(d) for d in dims.split(","))
        except ValueError:
            values = ()
        if not sep or not name or not values or min(values) < 1:
            raise OnnxPruneError(
                f"--input-shape {spec!r}: expected NAME=d0,d1,... with positive integers"
            )
        shapes[name] = values
    return shapes


def fixed_input_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None) -> dict[str, Shape]:
    """Each user input's shape with overrides applied and a dynamic batch dim taken as 1."""
    overrides = dict(overrides or {})
    result = {}
    for vi in graph_inputs(model):
        dims = [_dim(d) for d in vi.type.tensor_type.shape.dim]
        if vi.name in overrides:
            given = overrides.pop(vi.name)
            if vi.type.tensor_type.HasField("shape") and len(given) != len(dims):
                raise OnnxPruneError(
                    f"--input-shape {vi.name}: rank {len(given)} given, the model's input has rank {len(dims)} {_fmt(dims)}"
                )
            for i, (have, want) in enumerate(zip(dims, given)):
                if have is not None and have != want:
                    raise OnnxPruneError(
                        f"--input-shape {vi.name}: dim {i} is fixed to {have} in the model, {want} given"
                    )
            dims = list(given)
        elif dims and dims[0] is None:
            dims[0] = 1
        result[vi.name] = tuple(dims)
    if overrides:
        names = ", ".join(sorted(overrides))
        known = ", ".join(vi.name for vi in graph_inputs(model))
        raise OnnxPruneError(f"--input-shape: no model input named {names} (inputs: {known})")
    return result


def infer_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None) -> dict[str, Shape]:
    """Shape of every tensor that onnx shape inference can work out (None for unknown dims)."""
    fixed = fixed_input_shapes(model, overrides)
    skeleton = onnx.ModelProto()
    skeleton.ir_version = max(model.ir_version, 4)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.functions.extend(model.functions)
    graph = skeleton.graph
    graph.node.extend(model.graph.node)
    graph.output.extend(model.graph.output)
    for vi in graph_inputs(model):
        copy = onnx.ValueInfoProto()
        copy.CopyFrom(vi)
        dims = copy.type.tensor_type.shape.dim
        del dims[:]
        for d in fixed[vi.name]:
            dims.add().dim_value = d if d is not None else 0
            if d is None:
                dims[-1].Clear()
        graph.input.append(copy)
    for init in model.graph.initializer:
        if _numel(init) <= _SMALL_CONSTANT:
            graph.initializer.append(init)
        else:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False, data_prop=True)
    except Exception as exc:  # onnx raises several unrelated types here
        raise OnnxPruneError(f"onnx shape inference failed: {str(exc).splitlines()[0]}") from None
    shapes: dict[str, Shape] = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(_dim(d) for d in tt.shape.dim)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    unknown = [o for n in model.graph.node for o in n.output
               if o in used and (o not in shapes or None in shapes[o])]
    if unknown and all(None not in dims for dims in fixed.values()):
        shapes.update(_shapes_from_onnxruntime(model, fixed, unknown, inferred))
    return shapes


def _shapes_from_onnxruntime(model, fixed, names, inferred) -> dict[str, Shape]:
    """Shapes that inference could not work out (sizes computed at run time, e.g.
    Shape -> Gather -> Resize, or what follows an op onnx does not know but onnxruntime
    runs), read from one onnxruntime run on random inputs."""
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    listed = {o.name for o in model.graph.output}
    wanted = [n for n in names if n not in listed]
    typed = [n for n in wanted if types.get(n)]
    # Untyped tensors (after an op onnx does not know) are asked for without a type, which
    # onnxruntime fills in; if that fails, the typed ones alone.
    for asked in ([wanted, typed] if len(typed) < len(wanted) else [typed]):
        found = _run_for_shapes(model, fixed, asked, types)
        if found is not None:
            return found
    return {}


def _run_for_shapes(model, fixed, names, types) -> dict[str, Shape] | None:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None) if types.get(name)
                                  else onnx.ValueInfoProto(name=name))
    try:
        run = session(probe, optimize=False)
        outputs = run.run(None, random_feeds(model, fixed))
    except Exception:  # shapes then stay unknown, and whatever needs them says so
        return None
    return {o.name: tuple(v.shape) for o, v in zip(run.get_outputs(), outputs) if hasattr(v, "shape")}


def unknown_ops(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph whose op onnx has no schema for (custom domains, contrib ops)
    and the model defines no function for: shape inference stops at them."""
    return [n for n in model.graph.node if _is_unknown_op(n, model)]


def _is_unknown_op(node: onnx.NodeProto, model: onnx.ModelProto) -> bool:
    return not onnx.defs.has(node.op_type, node.domain) and not any(
        f.domain == node.domain and f.name == node.op_type for f in model.functions)


def describe_op(node: onnx.NodeProto) -> str:
    """"my.domain:MyOp node 'myop0'"."""
    return f"{node.domain + ':' if node.domain else ''}{node.op_type} node '{node.name}'"


def unknown_after(model: onnx.ModelProto, shapes: dict[str, Shape]) -> dict[str, str]:
    """Tensors whose shapes are not known because an op that onnx does not know stands before
    them (and onnxruntime did not work them out), each with that op (``describe_op``)."""
    if not unknown_ops(model):
        return {}
    origin: dict[str, str] = {}
    for node in model.graph.node:
        if _is_unknown_op(node, model):
            source = describe_op(node)
        else:
            source = next((origin[i] for i in node.input if i in origin), None)
        if source is not None:
            origin.update((o, source) for o in node.output if o and not known(shapes.get(o)))
    return origin


def known(shape: Shape | None) -> bool:
    """Rank and every dim known."""
    return shape is not None and None not in shape


def _dim(d) -> int | None:
    """A dim's size; None when symbolic or unset (some exporters write -1 or 0)."""
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None


def _numel(init: onnx.TensorProto) -> int:
    n = 1
    for d in init.dims:
        n *= d
    return n


def _fmt(dims) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"
