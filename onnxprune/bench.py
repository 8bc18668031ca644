"""onnxruntime latency of several models, measured side by side.

Runs are interleaved (model A, model B, model A, ...) after a warm-up, so slow
drifts of a shared machine hit every model alike, in rounds on fresh sessions;
the ratio to the first model is what to read, not the absolute times.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from .errors import OnnxPruneError
from .graph.runtime import loaded, runtime_reason
from .graph.shapes import batch_feeds
from .graph.timing import in_rounds, round_speedups


@dataclass(frozen=True)
class Latency:
    model: str
    batch: int
    median_ms: float
    p90_ms: float
    ratio: float  # the first model's median / this one's, median over rounds: > 1 is faster

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
              input_shapes: dict[str, tuple[int, ...]] | None = None, rounds: int = 3) -> list[Latency]:
    """Latency of each model at each batch size: ``runs`` interleaved runs after ``warmup`` untimed
    ones (at least one: it checks that the model runs on these inputs), in ``rounds`` rounds on
    fresh sessions (one set of sessions is one draw of their speeds: ``in_rounds``). median_ms is
    the median over rounds of a model's median, p90_ms the 90th percentile of all its runs, and
    the speedup the median over rounds of the first model's median over this one's in the round."""
    providers = providers or ["CPUExecutionProvider"]
    names = list(models)
    make = lambda: [optimized_session(models[n], providers, threads, n) for n in names]  # noqa: E731
    results = []
    for batch in batches:
        feeds = [feeds_for_batch(models[n], batch, data, input_shapes=input_shapes) for n in names]
        _first_runs(make(), feeds, names, batch)
        times = in_rounds(make, feeds, runs, rounds, max(warmup - 1, 0))
        medians_ms, speedups = round_speedups(times)
        for i, n in enumerate(names):
            every_run = np.concatenate([round_[i] for round_ in times])
            results.append(Latency(n, batch, medians_ms[i], 1000 * float(np.percentile(every_run, 90)), speedups[i]))
    return results


def _first_runs(sessions: list[ort.InferenceSession], feeds: list[dict[str, np.ndarray]], names: list[str],
                batch: int) -> None:
    """One run of each session, whose failure (a kernel missing for these inputs, data of the
    wrong shape) is an error naming the model; later runs take the same path. (A function of
    its own so that these sessions are gone before the rounds make theirs.)"""
    for session, feed, name in zip(sessions, feeds, names):
        try:
            session.run(None, feed)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise OnnxPruneError(f"onnxruntime cannot run {name} at batch {batch}: {runtime_reason(exc)}") from None


def table(results: list[Latency]) -> str:
    rows = [("model", "batch", "median ms", "p90 ms", "speedup")]
    rows += [(r.model, str(r.batch), f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.ratio:.2f}x") for r in results]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
