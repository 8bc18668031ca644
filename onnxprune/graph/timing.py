"""Wall-clock latency of onnxruntime sessions, measured side by side (warm-up, then interleaved runs)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

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


def in_rounds(make: Callable[[], Sequence[ort.InferenceSession]], feeds: Sequence[dict[str, np.ndarray]],
              runs: int, rounds: int, warmup: int = 3) -> list[list[list[float]]]:
    """``interleaved`` ``rounds`` times, each round on fresh sessions from ``make``: round r, session i
    -> its run times. A session's speed is partly drawn when it is made (sub-millisecond models on a
    2-core VM: the same pair of models measured 1.44x to 1.73x apart from one pair of sessions to
    the next, docs/LATENCY.md), so one pair of sessions is one draw; several rounds sample it."""
    times = []
    for _ in range(rounds):
        sessions = make()
        times.append(interleaved(sessions, feeds, runs, warmup))
        del sessions  # freed before the next round's are made
    return times


def round_speedups(times: list[list[list[float]]]) -> tuple[list[float], list[float]]:
    """Each session's latency and its speedup over the first, from rounds of interleaved runs
    (``in_rounds``): latency_i (ms) = the median over rounds of session i's median; speedup_i =
    the median over rounds of median_0 / median_i within the round. The ratio is taken within
    each round, where both sessions saw the same machine, before the rounds are combined."""
    medians = np.array([[np.median(t) for t in rounds_] for rounds_ in times])  # rounds x sessions
    return ([1000 * float(m) for m in np.median(medians, axis=0)],
            [float(s) for s in np.median(medians[:, :1] / medians, axis=0)])
