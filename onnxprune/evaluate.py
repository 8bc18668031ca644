"""Evaluation: top-1 accuracy on labelled data, and how far a model's outputs are from a reference's.

All metrics are on the model's first output. Top-1 metrics (accuracy, agreement) need it to be
``[N, classes]`` logits or scores and are None otherwise; the output errors are computed for any
shape. Everything is accumulated batch by batch: memory holds one batch and one class index
per sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .data import Batch, DataSource, InputSpec, model_inputs, quoted
from .errors import OnnxPruneError
from .graph.runtime import loaded, runtime_reason


@dataclass(frozen=True)
class EvalResult:
    """Samples seen and the metrics that apply (None where they do not)."""

    samples: int
    accuracy: float | None = None
    agreement: float | None = None
    rel_error: float | None = None
    max_abs_diff: float | None = None

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"samples       {self.samples}"]
        if self.accuracy is not None:
            lines.append(f"accuracy      {self.accuracy:.2%}  (top-1)")
        if self.agreement is not None:
            lines.append(f"agreement     {self.agreement:.2%}  (top-1 class same as the reference's)")
        if self.rel_error is not None:
            lines.append(f"rel_error     {self.rel_error:.4g}  (||y - y_ref|| / ||y_ref||)")
        if self.max_abs_diff is not None:
            lines.append(f"max_abs_diff  {self.max_abs_diff:.4g}")
        if len(lines) == 1:
            lines.append("nothing to measure: the data has no labels and no --reference was given")
        return "\n".join(lines)


def top1(logits: np.ndarray) -> np.ndarray:
    """The predicted class of each sample: argmax over axis 1."""
    return np.argmax(logits, axis=1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose predicted class is their label."""
    return float(np.mean(predictions == labels))


def agreement(predictions: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of samples whose predicted class is the reference's."""
    return float(np.mean(predictions == reference))


def rel_error(diff_squares: float, reference_squares: float) -> float | None:
    """||y - y_ref|| / ||y_ref|| from the two sums of squares; None if y_ref is all zero and y is not."""
    if reference_squares == 0:
        return 0.0 if diff_squares == 0 else None
    return float(np.sqrt(diff_squares / reference_squares))


@dataclass
class OutputDiff:
    """Sums of squares and the largest absolute difference of outputs vs reference outputs, so far."""

    diff_squares: float = 0.0
    reference_squares: float = 0.0
    max_abs: float = 0.0

    def add(self, y: np.ndarray, y_ref: np.ndarray) -> None:
        diff = y.astype(np.float64) - y_ref.astype(np.float64)
        self.diff_squares += float(np.sum(diff * diff))
        self.reference_squares += float(np.sum(np.square(y_ref, dtype=np.float64)))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))


def check_same_inputs(model: onnx.ModelProto, reference: onnx.ModelProto) -> None:
    """The reference must take the same inputs: names, dtypes, ranks and fixed dims."""
    ours = {s.name: s for s in model_inputs(model)}
    theirs = {s.name: s for s in model_inputs(reference)}
    if ours.keys() != theirs.keys():
        raise OnnxPruneError(
            f"the reference model's inputs {quoted(theirs)} are not the model's {quoted(ours)}"
        )
    for name, spec in ours.items():
        other = theirs[name]
        if spec.dtype != other.dtype or _fixed(spec) != _fixed(other):
            raise OnnxPruneError(
                f"the reference model's input '{name}' is {other.describe()} {other.dtype},"
                f" the model's is {spec.describe()} {spec.dtype}"
            )


def evaluate(model: onnx.ModelProto, data: DataSource, reference: onnx.ModelProto | None = None) -> EvalResult:
    """Run ``model`` (and ``reference``) over ``data`` with onnxruntime on CPU, graph optimisations on."""
    if reference is not None:
        check_same_inputs(model, reference)
    ours = loaded(model, "the model")
    theirs = None if reference is None else loaded(reference, "the reference model")
    predictions: list[np.ndarray] = []
    reference_predictions: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    diff = OutputDiff()
    for batch in data:
        y = _run(ours, batch, "the model")
        y_ref = None if theirs is None else _run(theirs, batch, "the reference model")
        if y_ref is not None:
            if y_ref.shape != y.shape:
                raise OnnxPruneError(
                    f"the reference model's first output has shape {list(y_ref.shape)}, the model's {list(y.shape)}"
                )
            diff.add(y, y_ref)
        if y.ndim == 2:  # [N, classes]: the top-1 metrics apply
            predictions.append(top1(y))
            if batch.labels is not None:
                _check_labels(data, batch, y.shape[1])
                labels.append(batch.labels)
            if y_ref is not None:
                reference_predictions.append(top1(y_ref))
    compared = theirs is not None
    return EvalResult(
        samples=len(data),
        accuracy=accuracy(np.concatenate(predictions), np.concatenate(labels)) if labels else None,
        agreement=agreement(np.concatenate(predictions), np.concatenate(reference_predictions))
        if reference_predictions else None,
        rel_error=rel_error(diff.diff_squares, diff.reference_squares) if compared else None,
        max_abs_diff=diff.max_abs if compared else None,
    )


def _run(sess: ort.InferenceSession, batch: Batch, what: str) -> np.ndarray:
    """The first output for one batch; an error if the run fails or the output is not finite."""
    stop = batch.start + len(next(iter(batch.feeds.values())))
    samples = f"samples {batch.start} to {stop - 1}"
    try:
        y = np.asarray(sess.run([sess.get_outputs()[0].name], batch.feeds)[0])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(f"onnxruntime failed on {samples} with {what}: {runtime_reason(exc)}") from None
    if np.issubdtype(y.dtype, np.floating) and not np.isfinite(y).all():
        raise OnnxPruneError(f"{what} outputs NaN or Inf on {samples}")
    return y


def _check_labels(data: DataSource, batch: Batch, classes: int) -> None:
    bad = np.flatnonzero((batch.labels < 0) | (batch.labels >= classes))
    if bad.size:
        i = int(bad[0])
        raise OnnxPruneError(
            f"{data.path}: label {batch.labels[i]} of sample {batch.start + i} is not a class of the"
            f" model's first output (0 to {classes - 1})"
        )


def _fixed(spec: InputSpec) -> tuple | None:
    """The dims with every dynamic one as None (symbolic names may differ between exports)."""
    return None if spec.dims is None else tuple(d if isinstance(d, int) else None for d in spec.dims)

