"""Reading and writing model files: validated loads, atomic saves, models over 2 GB."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import onnx
import onnx.external_data_helper
from google.protobuf.message import DecodeError

from ..errors import OnnxPruneError
from .files import Protected, Staging, check_output, lookup, same_file

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
# Protobuf cannot serialise a message over 2 GiB: larger weights go to a side file.
EXTERNAL_DATA_BYTES = 1_800_000_000


def load(source: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """Read and validate a model from a path (external data included) or a ModelProto."""
    return read(source)[0]


def read(source: str | os.PathLike | onnx.ModelProto) -> tuple[onnx.ModelProto, tuple[Path, ...]]:
    """``load``, and the files the model was read from (itself and its external data files),
    which no output may overwrite."""
    if isinstance(source, onnx.ModelProto):
        model, files = source, ()
        where = "the given model"
    else:
        path = Path(source)
        where = str(path)
        model = _parse(path)
        data = _external_data_files(path, model)
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (onnx.checker.ValidationError, ValueError, OSError) as exc:  # what the checks above missed
            raise OnnxPruneError(f"{path}: unreadable external data ({one_line(exc)})") from None
        files = (path, *data)
    if not model.graph.node:
        raise OnnxPruneError(f"{where}: not an ONNX model (no graph nodes)")
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxPruneError(
            f"{where}: unsupported opset {opset} (supported: {MIN_OPSET} to {MAX_OPSET})"
        )
    problem = order_problem(model.graph)
    if problem is not None:
        raise OnnxPruneError(f"{where}: invalid ONNX model ({problem})")
    large = weight_bytes(model) > EXTERNAL_DATA_BYTES
    try:
        # Over 2 GiB the checker reads the file itself; an in-memory model gets the opset check only.
        if not large:
            onnx.checker.check_model(model)
        elif not isinstance(source, onnx.ModelProto):
            onnx.checker.check_model(str(source))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise OnnxPruneError(f"{where}: invalid ONNX model ({one_line(exc)})") from None
    return model, files


def _parse(path: Path) -> onnx.ModelProto:
    """The model's protobuf, external data not read yet."""
    status = lookup(path)
    if status is None:
        raise OnnxPruneError(f"{path}: no such file")
    if not stat.S_ISREG(status.st_mode):
        raise OnnxPruneError(f"{path}: not a file")
    if status.st_size == 0:
        raise OnnxPruneError(f"{path}: empty file, not an ONNX model")
    try:
        return onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError, OSError) as exc:
        raise OnnxPruneError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None


def _external_data_files(path: Path, model: onnx.ModelProto) -> list[Path]:
    """The files the model's external tensors point to; an error naming the tensor for one that
    is missing, not a regular file, a symlink, or outside the model's folder (onnx refuses them
    too, with a traceback's worth of message)."""
    folder = path.parent.resolve()
    files: dict[Path, None] = {}
    for tensor in _tensors(model.graph):
        if not onnx.external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        what = f"{path}: tensor '{tensor.name}': external data"
        relative = Path(location)
        if not location:
            raise OnnxPruneError(f"{what} without a location")
        if relative.is_absolute() or relative.drive:
            raise OnnxPruneError(f"{what} at the absolute path '{location}'; it must lie in the model's folder")
        relative = Path(os.path.normpath(relative))
        if relative.parts[0] == "..":
            raise OnnxPruneError(f"{what} at '{location}', outside the model's folder")
        shown = path.parent / relative  # as the user would name it
        file = folder / relative
        if any(p.is_symlink() for p in (file, *file.parents) if folder in p.parents):
            raise OnnxPruneError(f"{what} file {shown} is a symbolic link; it must be a regular file in the model's folder")
        if not file.exists():
            raise OnnxPruneError(f"{what} file {shown} is missing")
        if not file.is_file():
            raise OnnxPruneError(f"{what} file {shown} is not a regular file")
        files[file] = None
    return list(files)


def graphs_in(graph: onnx.GraphProto):
    """The graph, then every subgraph of its nodes' attributes (If, Loop, Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from graphs_in(sub)


def _tensors(graph: onnx.GraphProto):
    """Every tensor a graph holds: initializers and attribute tensors, subgraphs included."""
    for g in graphs_in(graph):
        yield from g.initializer
        for node in g.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors


def order_problem(graph: onnx.GraphProto) -> str | None:
    """Why the nodes cannot run in their order, or None: a node reading a tensor that nothing
    provides, or one computed only later (a cycle, or nodes out of topological order)."""
    known = {""} | {i.name for i in graph.input} | {t.name for t in graph.initializer} | \
        {t.values.name for t in graph.sparse_initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            if name in known:
                continue
            reader = f"node {_describe(node)} reads '{name}'"
            if name not in producers:
                return f"{reader}, which no node, graph input or initializer provides"
            cause = "the graph has a cycle" if _has_cycle(graph, producers) else "the nodes are not in topological order"
            return f"{reader} before node {_describe(producers[name])} computes it: {cause}"
        known.update(node.output)
    return None


def _has_cycle(graph: onnx.GraphProto, producers: dict[str, onnx.NodeProto]) -> bool:
    """Kahn's algorithm over the nodes' data dependencies: a cycle leaves nodes unsorted."""
    index = {id(n): i for i, n in enumerate(graph.node)}
    needs = [{index[id(producers[x])] for x in n.input if x in producers} for n in graph.node]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(needs):
        for d in deps:
            readers.setdefault(d, []).append(i)
    waiting = [len(d) for d in needs]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for r in readers.get(i, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    return done < len(needs)


def _describe(node: onnx.NodeProto) -> str:
    return f"'{node.name}' ({node.op_type})" if node.name else f"of type {node.op_type} (unnamed, outputs {list(node.output)})"


def save(model: onnx.ModelProto, path: str | os.PathLike, input_path: str | os.PathLike | None = None) -> None:
    """Write atomically: a temporary file in the same folder, then a rename (see ``files``).

    On failure no output file is left. Refuses to overwrite ``input_path``.
    """
    path = Path(path)
    protected = [] if input_path is None else [("the input model", Path(input_path))]
    check_output(path, "output", protected)
    with Staging() as staging:
        stage(model, path, staging, protected)
        staging.commit()


def stage(model: onnx.ModelProto, path: Path, staging: Staging, protected: Protected = ()) -> None:
    """Write ``model`` for ``path`` into ``staging``; over 2 GB with its weights in ``path.data``,
    which must not be one of the ``protected`` files either. ``model`` is left as it was: onnx
    moves the weights out of it to write them, and they are read back from the file written."""
    if weight_bytes(model) <= EXTERNAL_DATA_BYTES:
        staging.write(path, model.SerializeToString())
        return
    data = path.with_name(path.name + ".data")
    for description, other in protected:
        if other is not None and same_file(data, other):
            raise OnnxPruneError(f"{path}: its weights file {data} would be {description}; choose another output path")
    temporary_data = staging.path_for(data)  # renamed before the model that points to it
    temporary_model = staging.path_for(path)
    try:
        onnx.save_model(model, str(temporary_model), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=temporary_data.name)
        moved = [tensor for tensor in _tensors(model.graph) if tensor.external_data]
        _locate(moved, data.name)  # point at the name the data will have once renamed
        temporary_model.write_bytes(model.SerializeToString())
        _locate(moved, temporary_data.name)  # the caller's model gets its weights back
        onnx.external_data_helper.load_external_data_for_model(model, str(temporary_data.parent))
        for tensor in moved:
            tensor.ClearField("data_location")  # unset, as it was, not DEFAULT
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot write ({exc.strerror or exc})") from None
    except (onnx.checker.ValidationError, ValueError) as exc:  # onnx's own checks of what it writes
        raise OnnxPruneError(f"{path}: cannot write ({one_line(exc)})") from None


def _locate(tensors: list[onnx.TensorProto], name: str) -> None:
    """Point the external data of ``tensors`` at the file ``name``."""
    for tensor in tensors:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = name


def default_opset(model: onnx.ModelProto) -> int:
    """Version of the default ('' or 'ai.onnx') operator set."""
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    raise OnnxPruneError("the model imports no default-domain opset")


def weight_bytes(model: onnx.ModelProto) -> int:
    """The initializers' data size, from their dims and type: ``len(raw_data)`` would copy the
    data (every session asks: inference_session). Sub-byte types count a byte per element."""
    total = 0
    for init in model.graph.initializer:
        count = int(np.prod(init.dims, dtype=np.int64))
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        total += count * itemsize if init.HasField("raw_data") else count * 4
    return total


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """The whole message on one line (onnx's checker puts the node it means on the next ones)."""
    return " ".join(str(exc).split()) or type(exc).__name__
