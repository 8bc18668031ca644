"""Check that a model is valid and runs: the last gate before anything is written."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import OnnxPruneError
from .runtime import describe_feeds, runtime_reason, session
from .shapes import random_feeds, unknown_ops


def check_runs(model: onnx.ModelProto) -> None:
    """Refuse, before any work, a model that onnxruntime cannot load: every rewritten model is
    run before it is written (``validate``), which it could not be. Its IR version and opsets
    are tried on an empty model with the same header (an IR version newer than this onnxruntime
    reads would otherwise fail only at the end, as if the rewrite were wrong); the model itself
    only where it has an op onnx does not know (custom domains): a session of any other model
    costs time and memory for nothing."""
    for candidate in [header_only(model), *([model] if unknown_ops(model) else [])]:
        try:
            session(candidate, optimize=False)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxPruneError(
                f"onnxruntime {ort.__version__} cannot load the input model ({runtime_reason(exc)}); onnxprune runs "
                "every model it writes, so it cannot rewrite this one (`onnxprune inspect` shows its channel groups)"
            ) from None


def header_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A model with ``model``'s IR version and opset imports and nothing else (its one input is its output)."""
    value = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    empty = onnx.ModelProto(ir_version=model.ir_version, graph=onnx.helper.make_graph([], "header", [value], [value]))
    empty.opset_import.extend(model.opset_import)
    return empty


def check_runs_on(model: onnx.ModelProto, feeds: dict[str, np.ndarray], what: str) -> None:
    """Refuse, before any work, a model that onnxruntime cannot run on ``feeds`` (``what``: where
    they come from, e.g. the first calibration batch): every later run would fail the same way."""
    problem = _run_problem(model, feeds)
    if problem is not None:
        raise _input_model_fails(problem, feeds, what)


def validate(model: onnx.ModelProto, input_shapes=None, original: onnx.ModelProto | None = None,
             feeds: dict[str, np.ndarray] | None = None, what: str = "random inputs") -> None:
    """Full onnx check (strict shape inference), then one onnxruntime run, on ``feeds`` (``what``)
    or, where shapes are known, on random inputs. A run that fails is the rewrite's fault only if
    the ``original`` runs on the same inputs: else the input model is what onnxruntime cannot run."""
    try:
        if model.ByteSize() < 2_000_000_000:
            onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as exc:
        raise OnnxPruneError(f"internal error: the rewritten model fails the ONNX checker: {exc}") from None
    feeds = random_feeds(model, input_shapes) if feeds is None else feeds
    problem = _run_problem(model, feeds)
    if problem is None:
        return
    if original is not None:
        theirs = _run_problem(original, feeds)
        if theirs is not None:
            raise _input_model_fails(theirs, feeds, what)
    raise OnnxPruneError(f"internal error: onnxruntime cannot run the rewritten model: {problem}")


def _run_problem(model: onnx.ModelProto, feeds: dict[str, np.ndarray] | None) -> str | None:
    """Why onnxruntime cannot make a session of ``model`` or run it on ``feeds`` (None: only the
    session is made); None when it can."""
    try:
        run = session(model, optimize=False, arena=False)  # one run: an arena would only hold its memory
        if feeds is not None:
            run.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        return runtime_reason(exc)
    return None


def _input_model_fails(problem: str, feeds: dict[str, np.ndarray] | None, what: str) -> OnnxPruneError:
    on = "" if feeds is None else f" on {what} ({describe_feeds(feeds)})"
    return OnnxPruneError(f"onnxruntime {ort.__version__} cannot run the input model{on}: {problem}")
