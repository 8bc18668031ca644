"""onnxruntime latency of several models, measured side by side.

Runs are interleaved (model A, model B, model A, ...) after a warm-up, so slow
drifts of a shared machine hit every model alike; the ratio to the first model
is what to read, not the absolute times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .errors import OnnxPruneError
from .graph.io import first_line
from .graph.runtime import loaded
from .graph.shapes import batch_feeds
from .graph.timing import interleaved


@dataclass(frozen=True)
class Latency:
    model: str
    batch: int
    median_ms: float
    p90_ms: float
    ratio: float  # median of the first model / median of this one: > 1 is faster

    def to_json(self) -> dict:
        return {"model": self.model, "batch": self.batch, "median_ms": self.median_ms,
                "p90_ms": self.p90_ms, "speedup": self.ratio}


def optimized_session(model: onnx.ModelProto, providers: list[str], threads: int = 0,
                      name: str = "the model") -> ort.InferenceSession:
    """A session as deployment would use it, all graph optimisations on; idle threads do not spin
    (spinning pools of the interleaved sessions made the timings bimodal: docs/LATENCY.md)."""
    return loaded(model, name, providers, threads=threads)


def feeds_for_batch(model: onnx.ModelProto, batch: int, data: dict[str, np.ndarray] | None = None,
                    seed: int = 0, input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """Inputs of ``batch`` samples: from ``data`` (repeated as needed) or random, of the model's
    input shapes with ``input_shapes`` fixing dynamic dims (their batch dim is replaced)."""
    if data is not None:
        return {k: np.resize(v, (batch, *v.shape[1:])) for k, v in data.items()}
    feeds = batch_feeds(model, batch, input_shapes, seed)
    if feeds is None:
        raise OnnxPruneError("bench: the model has dynamic input dims other than the batch; give --data or "
                             "--input-shape")
    return feeds


def benchmark(models: dict[str, onnx.ModelProto], batches: tuple[int, ...] = (1, 32), runs: int = 30,
              warmup: int = 5, providers: list[str] | None = None, threads: int = 0,
              data: dict[str, np.ndarray] | None = None,
              input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[Latency]:
    """Median and 90th-percentile latency of each model at each batch size, interleaved, after
    ``warmup`` untimed runs (at least one: it checks that the model runs on these inputs)."""
    providers = providers or ["CPUExecutionProvider"]
    names = list(models)
    sessions = [optimized_session(models[n], providers, threads, n) for n in names]
    results = []
    for batch in batches:
        feeds = [feeds_for_batch(models[n], batch, data, input_shapes=input_shapes) for n in names]
        for n, run, feed in zip(names, sessions, feeds):
            _first_run(run, feed, n, batch)
        times = interleaved(sessions, feeds, runs, max(warmup - 1, 0))
        base = float(np.median(times[0]))
        for n, t in zip(names, times):
            median = float(np.median(t))
            results.append(Latency(n, batch, 1000 * median, 1000 * float(np.percentile(t, 90)), base / median))
    return results


def _first_run(run: ort.InferenceSession, feeds: dict[str, np.ndarray], name: str, batch: int) -> None:
    """One warm-up run, whose failure (a kernel missing for these inputs, data of the wrong
    shape) is an error naming the model; later runs take the same path."""
    try:
        run.run(None, feeds)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(f"onnxruntime cannot run {name} at batch {batch}: {first_line(exc)}") from None


def table(results: list[Latency]) -> str:
    rows = [("model", "batch", "median ms", "p90 ms", "speedup")]
    rows += [(r.model, str(r.batch), f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.ratio:.2f}x") for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
