"""Loading, saving and the ModelProto <-> onnx-graphsurgeon boundary.

Passes take an ``onnx.ModelProto`` and return a new one; inside they work on a
graphsurgeon ``Graph``. ``to_graph``/``to_model`` keep the input's ir_version,
opsets and metadata, which onnx.helper and graphsurgeon would otherwise replace.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx import numpy_helper
from onnx_graphsurgeon.logger import G_LOGGER
from google.protobuf.message import DecodeError

from .errors import OnnxPruneError

G_LOGGER.severity = G_LOGGER.CRITICAL  # its warnings are not for our users
ort.set_default_logger_severity(3)  # nor are onnxruntime's optimiser notes (constant folding)

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
# Protobuf cannot serialise a message over 2 GiB: larger weights go to a side file.
_EXTERNAL_DATA_BYTES = 1_800_000_000
_OUTSIDE_BYTES = 1 << 20  # in such a model, initializers over this stay outside the serialised proto


def load(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read and validate a model from a path (external data included) or a ModelProto."""
    if isinstance(source, onnx.ModelProto):
        model = source
        where = "the given model"
    else:
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise OnnxPruneError(f"{path}: no such file")
        if not path.is_file():
            raise OnnxPruneError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise OnnxPruneError(f"{path}: empty file, not an ONNX model")
        try:
            model = onnx.load(str(path), load_external_data=True)
        except (DecodeError, RuntimeError, ValueError, OSError) as exc:
            raise OnnxPruneError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from None
    if not model.graph.node:
        raise OnnxPruneError(f"{where}: not an ONNX model (no graph nodes)")
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxPruneError(
            f"{where}: unsupported opset {opset} (supported: {MIN_OPSET} to {MAX_OPSET})"
        )
    large = _weight_bytes(model) > _EXTERNAL_DATA_BYTES
    try:
        # Over 2 GiB the checker reads the file itself; an in-memory model gets the opset check only.
        if not large:
            onnx.checker.check_model(model)
        elif not isinstance(source, onnx.ModelProto):
            onnx.checker.check_model(str(source))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise OnnxPruneError(f"{where}: invalid ONNX model ({_first_line(exc)})") from None
    return model


def save(model: onnx.ModelProto, path: str | os.PathLike, input_path: str | os.PathLike | None = None) -> None:
    """Write atomically: a temporary file in the same folder, then a rename.

    On failure no output file is left. Refuses to overwrite ``input_path``.
    """
    path = Path(path)
    if input_path is not None and _same_file(path, Path(input_path)):
        raise OnnxPruneError(f"{path}: the output path is the input model; choose another")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OnnxPruneError(f"{path}: output folder {folder} does not exist")
    if path.is_dir():
        raise OnnxPruneError(f"{path}: is a folder, not a file path")
    external = _weight_bytes(model) > _EXTERNAL_DATA_BYTES
    try:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".onnxprune-") as tmp:
            tmp_model = Path(tmp) / path.name
            data_name = path.name + ".data"
            if external:
                onnx.save_model(model, str(tmp_model), save_as_external_data=True,
                                all_tensors_to_one_file=True, location=data_name)
                # onnx creates the side file readable by its owner only; give it the model's mode
                os.chmod(Path(tmp) / data_name, stat.S_IMODE(tmp_model.stat().st_mode))
                os.replace(Path(tmp) / data_name, folder / data_name)
            else:
                onnx.save_model(model, str(tmp_model))
            os.replace(tmp_model, path)
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot write ({exc.strerror or exc})") from None


def inference_session(model: onnx.ModelProto, options: ort.SessionOptions, providers: list[str],
                      ) -> ort.InferenceSession:
    """An onnxruntime session for a model of any size.

    Protobuf cannot serialise 2 GiB, so a model with more weights than that is passed with
    its initializers over 1 MiB as OrtValues (SessionOptions.add_external_initializers); the
    serialised model keeps their entries, marked external. ``model`` is changed only while
    it is serialised, and given back as it was."""
    if _weight_bytes(model) <= _EXTERNAL_DATA_BYTES:
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    large = [t for t in model.graph.initializer if t.ByteSize() > _OUTSIDE_BYTES]
    arrays = [numpy_helper.to_array(t) for t in large]
    try:
        for t in large:
            stub = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims,
                                    data_location=onnx.TensorProto.EXTERNAL)
            stub.external_data.add(key="location", value="onnxprune-in-memory")
            t.CopyFrom(stub)
        serialised = model.SerializeToString()
    finally:
        for t, array in zip(large, arrays):
            t.CopyFrom(numpy_helper.from_array(array, t.name))
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    options.add_external_initializers([t.name for t in large], values)
    session = ort.InferenceSession(serialised, options, providers=providers)
    session.onnxprune_weights = values  # onnxruntime reads them in place: they live as long as the session
    return session


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default ('' or 'ai.onnx') operator set."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise OnnxPruneError("the model imports no default-domain opset")


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    """A graphsurgeon graph of the model (the ModelProto is not modified).

    Unnamed or duplicate node names get deterministic ones (``Op_i``) so that
    analyses and rewrites can refer to nodes by name.
    """
    graph = gs.import_onnx(model)
    seen: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if not node.name or node.name in seen:
            node.name = f"{node.op}_{i}"
            while node.name in seen:
                node.name += "_"
        seen.add(node.name)
    return graph


def to_model(graph: gs.Graph, like: onnx.ModelProto) -> onnx.ModelProto:
    """Export ``graph`` with the ir_version, opsets and metadata of ``like``.

    Stale intermediate shape annotations are dropped (channel counts change);
    IR version 3 models list every initializer as a graph input, as that IR requires.
    """
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor not in graph.inputs and tensor not in graph.outputs:
            tensor.shape = None
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


def _weight_bytes(model: onnx.ModelProto) -> int:
    """The initializers' data size, from their dims and type: ``len(raw_data)`` would copy the
    data (every session asks: inference_session). Sub-byte types count a byte per element."""
    total = 0
    for init in model.graph.initializer:
        count = int(np.prod(init.dims, dtype=np.int64))
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        total += count * itemsize if init.HasField("raw_data") else count * 4
    return total


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
