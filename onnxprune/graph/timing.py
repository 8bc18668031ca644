"""Wall-clock latency of onnxruntime sessions, measured side by side (warm-up, then interleaved runs)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort


def interleaved(sessions: Sequence[ort.InferenceSession], feeds: Sequence[dict[str, np.ndarray]], runs: int,
                warmup: int = 3) -> list[list[float]]:
    """Seconds of each run of each session. After ``warmup`` runs each, the sessions take turns
    (A, B, C, A, B, C, ...), so the slow drifts of a shared machine hit every one alike: compare
    medians, not single runs or means."""
    for run, feed in zip(sessions, feeds):
        for _ in range(warmup):
            run.run(None, feed)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(runs):
        for i, (run, feed) in enumerate(zip(sessions, feeds)):
            start = time.perf_counter()
            run.run(None, feed)
            times[i].append(time.perf_counter() - start)
    return times


def medians_ms(times: list[list[float]]) -> list[float]:
    return [1000 * float(np.median(t)) for t in times]
