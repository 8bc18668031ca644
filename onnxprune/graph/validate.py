"""Check that a model is valid and runs: the last gate before anything is written."""

from __future__ import annotations

import onnx

from ..errors import OnnxPruneError
from .io import first_line
from .runtime import session
from .shapes import random_feeds, unknown_ops


def check_runs(model: onnx.ModelProto) -> None:
    """Refuse, before any work, a model that onnxruntime cannot load: every rewritten model is
    run before it is written (``validate``), which it could not be. Only a model with an op onnx
    does not know (custom domains) is tried: a session of any other model costs time and memory
    for nothing."""
    if not unknown_ops(model):
        return
    try:
        session(model, optimize=False)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(
            f"onnxruntime cannot load the input model ({first_line(exc)}); onnxprune runs every model it writes, "
            "so it cannot rewrite this one (`onnxprune inspect` shows its channel groups)"
        ) from None


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
