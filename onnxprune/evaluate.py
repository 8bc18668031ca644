"""Evaluation: top-1 accuracy on labelled data, and how far a model's outputs are from a reference's.

All metrics are on the model's first floating-point output (its first output if none is: torch's
export of a sentence encoder lists copies of its int64 inputs first). Top-1 metrics (accuracy,
agreement) need it to be ``[N, classes]`` logits or scores and are None otherwise; the output
errors are computed for any shape. On data without labels, a reference also gives the cosine
similarity of each sample's output to the reference's, a per-token output [N, S, H] first
mean-pooled over the real tokens (``attention_mask``), and how often each sample's nearest
other sample is the same in both models. Everything is accumulated batch by batch: memory
holds one batch and one class index per sample, and for the nearest neighbours one pooled
vector per sample.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .calibration.statistics import MASK
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
    cosine_mean: float | None = None
    cosine_min: float | None = None
    neighbour_agreement: float | None = None

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
        if self.cosine_mean is not None:
            lines.append(f"cosine        {self.cosine_mean:.4f} mean, {self.cosine_min:.4f} min  "
                         "(per sample, to the reference's output, mean-pooled over real tokens)")
        if self.neighbour_agreement is not None:
            lines.append(f"neighbours    {self.neighbour_agreement:.2%}  (nearest other sample by cosine "
                         "same as the reference's)")
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


def pooled(y: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """One float64 vector per sample: a per-token output y [N, S, H] averaged over its real tokens,
    sum_s m[n,s] y[n,s] / sum_s m[n,s] with m = ``mask`` != 0 ([N, S]; all tokens without one, or
    with a mask of other dims); any other output flattened to [N, prod(rest)]."""
    y = y.astype(np.float64)
    if y.ndim != 3:
        return y.reshape(len(y), -1)
    m = np.ones(y.shape[:2]) if mask is None or mask.shape != y.shape[:2] else (mask != 0).astype(np.float64)
    return np.einsum("ns,nsh->nh", m, y) / np.maximum(m.sum(axis=1), 1)[:, None]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row, <a, b> / (|a| |b|): 1 where both rows are zero, 0 where one is."""
    dots = np.einsum("nh,nh->n", a, b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1), both_zero.astype(np.float64))


def nearest_neighbours(e: np.ndarray, block: int = 1024) -> np.ndarray:
    """For each row of e [N, H], the index of the other row of highest cosine similarity
    (the first on ties), computed ``block`` rows at a time (memory block x N)."""
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    unit = e / np.where(norms > 0, norms, 1)
    found = np.empty(len(e), np.int64)
    for start in range(0, len(e), block):
        sims = unit[start:start + block] @ unit.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        found[start:start + block] = np.argmax(sims, axis=1)
    return found


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
    embeddings: list[np.ndarray] = []  # pooled outputs, without labels only
    reference_embeddings: list[np.ndarray] = []
    for batch in data:
        y = _run(ours, batch, "the model")
        y_ref = None if theirs is None else _run(theirs, batch, "the reference model")
        if y_ref is not None:
            if y_ref.shape != y.shape:
                raise OnnxPruneError(
                    f"the reference model's compared output has shape {list(y_ref.shape)}, the model's {list(y.shape)}"
                )
            diff.add(y, y_ref)
            if not data.has_labels:
                embeddings.append(pooled(y, batch.feeds.get(MASK)))
                reference_embeddings.append(pooled(y_ref, batch.feeds.get(MASK)))
        if y.ndim == 2:  # [N, classes]: the top-1 metrics apply
            predictions.append(top1(y))
            if batch.labels is not None:
                _check_labels(data, batch, y.shape[1])
                labels.append(batch.labels)
            if y_ref is not None:
                reference_predictions.append(top1(y_ref))
    compared = theirs is not None
    cos = cosines(np.concatenate(embeddings), np.concatenate(reference_embeddings)) if embeddings else None
    neighbours = None
    if embeddings and len(cos) > 1:
        neighbours = agreement(nearest_neighbours(np.concatenate(embeddings)),
                               nearest_neighbours(np.concatenate(reference_embeddings)))
    return EvalResult(
        samples=len(data),
        accuracy=accuracy(np.concatenate(predictions), np.concatenate(labels)) if labels else None,
        agreement=agreement(np.concatenate(predictions), np.concatenate(reference_predictions))
        if reference_predictions else None,
        rel_error=rel_error(diff.diff_squares, diff.reference_squares) if compared else None,
        max_abs_diff=diff.max_abs if compared else None,
        cosine_mean=None if cos is None else float(cos.mean()),
        cosine_min=None if cos is None else float(cos.min()),
        neighbour_agreement=neighbours,
    )


def compared_output(sess: ort.InferenceSession) -> str:
    """The output the metrics are on: the first of a floating-point type, else the first."""
    floats = [o.name for o in sess.get_outputs() if o.type in FLOAT_TYPES]
    return floats[0] if floats else sess.get_outputs()[0].name


FLOAT_TYPES = ("tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)")


def _run(sess: ort.InferenceSession, batch: Batch, what: str) -> np.ndarray:
    """The compared output for one batch; an error if the run fails or the output is not finite."""
    stop = batch.start + len(next(iter(batch.feeds.values())))
    samples = f"samples {batch.start} to {stop - 1}"
    try:
        y = np.asarray(sess.run([compared_output(sess)], batch.feeds)[0])
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

