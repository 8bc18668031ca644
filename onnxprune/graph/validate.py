"""Check that a model is valid and runs: the last gate before anything is written."""

from __future__ import annotations

import onnx

from ..errors import OnnxPruneError
from .runtime import session
from .shapes import random_feeds


def validate(model: onnx.ModelProto, input_shapes=None) -> None:
    """Full onnx check (strict shape inference), then one onnxruntime run where shapes are known."""
    try:
        if model.ByteSize() < 2_000_000_000:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise OnnxPruneError(f"internal error: the rewritten model fails the ONNX checker: {exc}") from None
    try:
        sess = session(model, optimize=False)
        feeds = random_feeds(model, input_shapes)
        if feeds is not None:
            sess.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(f"internal error: onnxruntime cannot run the rewritten model: {exc}") from None
