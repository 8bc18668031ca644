"""Check that a model is valid and runs: the last gate before anything is written."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from .errors import OnnxPruneError
from .graph import inference_session
from .shapes import fixed_input_shapes, graph_inputs

_NUMPY_OF = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.FLOAT16: np.float16, onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT8: np.int8, onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.BOOL: np.bool_,
}


def session(model: onnx.ModelProto, optimize: bool = False, providers: list[str] | None = None,
            threads: int = 0) -> ort.InferenceSession:
    """An onnxruntime session; graph optimisations off unless asked (intermediates stay exact)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to numpy
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return inference_session(model, options, providers or ["CPUExecutionProvider"])


def random_feeds(model: onnx.ModelProto, input_shapes=None, seed: int = 0) -> dict[str, np.ndarray] | None:
    """Random inputs of the model's input shapes; None if some dim is unknown."""
    rng = np.random.default_rng(seed)
    feeds = {}
    fixed = fixed_input_shapes(model, input_shapes)
    for vi in graph_inputs(model):
        shape = fixed[vi.name]
        dtype = _NUMPY_OF.get(vi.type.tensor_type.elem_type)
        if dtype is None or any(d is None for d in shape):
            return None
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 2 if dtype == np.bool_ else 255, size=shape).astype(dtype)
    return feeds


def validate(model: onnx.ModelProto, input_shapes=None) -> None:
    """Full onnx check (strict shape inference), then one onnxruntime run where shapes are known."""
    try:
        if model.ByteSize() < 2_000_000_000:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise OnnxPruneError(f"internal error: the rewritten model fails the ONNX checker: {exc}") from None
    try:
        sess = session(model)
        feeds = random_feeds(model, input_shapes)
        if feeds is not None:
            sess.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(f"internal error: onnxruntime cannot run the rewritten model: {exc}") from None
