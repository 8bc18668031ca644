"""Reading and writing model files: validated loads, atomic saves, models over 2 GB."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from ..errors import OnnxPruneError

MIN_OPSET = 7
MAX_OPSET = onnx.defs.onnx_opset_version()
# Protobuf cannot serialise a message over 2 GiB: larger weights go to a side file.
EXTERNAL_DATA_BYTES = 1_800_000_000


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
            raise OnnxPruneError(f"{path}: not a readable ONNX model ({first_line(exc)})") from None
    if not model.graph.node:
        raise OnnxPruneError(f"{where}: not an ONNX model (no graph nodes)")
    opset = default_opset(model)
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxPruneError(
            f"{where}: unsupported opset {opset} (supported: {MIN_OPSET} to {MAX_OPSET})"
        )
    large = weight_bytes(model) > EXTERNAL_DATA_BYTES
    try:
        # Over 2 GiB the checker reads the file itself; an in-memory model gets the opset check only.
        if not large:
            onnx.checker.check_model(model)
        elif not isinstance(source, onnx.ModelProto):
            onnx.checker.check_model(str(source))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise OnnxPruneError(f"{where}: invalid ONNX model ({first_line(exc)})") from None
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
    external = weight_bytes(model) > EXTERNAL_DATA_BYTES
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
