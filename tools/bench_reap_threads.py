"""REAP's elimination on one BLAS thread against all of them, and independent eliminations side by side.

    python tools/bench_reap_threads.py --channels 256 --taps 9 --outputs 256 --rounds 3

One synthetic consumer of ``channels`` x ``taps`` columns (a 3x3 conv reading 256 channels:
2,305 with the bias), REAP down to an eighth of its channels as PRO's orders go. Prints the
median wall time of: one elimination with BLAS on 1 thread and on every thread, and two
eliminations one after the other (every thread) against side by side (parallel.each, one
thread each). Run it alone on the machine, or beside a busy process to see what a shared
machine does to threaded BLAS.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

from onnxprune.calibration.layer_stats import LayerStats
from onnxprune.methods.reap import reap_order
from onnxprune.parallel import cores, each


def layer(seed: int, n: int, k: int, m: int) -> tuple[LayerStats, int, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = n * k + 1
    x = np.hstack([rng.standard_normal((3 * p, p - 1)), np.ones((3 * p, 1))])
    theta0 = 0.1 * rng.standard_normal((p, m))
    y = x @ theta0 + 0.01 * rng.standard_normal((3 * p, m))
    return LayerStats(x.T @ x, x.T @ y, np.sum(y * y, axis=0), 3 * p), k, theta0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--taps", type=int, default=9)
    p.add_argument("--outputs", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    n = args.channels
    layers = [layer(seed, n, args.taps, args.outputs) for seed in (0, 1)]

    def eliminate(problem):
        return reap_order([problem], n, 1e-4, target=max(1, n // 8), errors=False).order

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    runs = {
        "one, BLAS on 1 thread": lambda: _limited(1, lambda: eliminate(layers[0])),
        f"one, BLAS on {cores()} threads": lambda: eliminate(layers[0]),
        f"two in turn, BLAS on {cores()} threads": lambda: [eliminate(x) for x in layers],
        "two in turn, BLAS on 1 thread": lambda: list(each(eliminate, layers, workers=1)),
        "two side by side (parallel.each)": lambda: list(each(eliminate, layers)),
    }
    times = {name: [] for name in runs}
    for _ in range(args.rounds):  # interleaved, so that the machine's moods fall on every case
        for name, fn in runs.items():
            times[name].append(timed(fn))
    print(f"{n} channels x {args.taps} taps ({n * args.taps + 1} columns), {args.outputs} outputs, "
          f"medians of {args.rounds} rounds:")
    for name, ts in times.items():
        print(f"  {name:40s} {np.median(ts):7.2f} s")


def _limited(threads: int, fn):
    with threadpool_limits(limits=threads, user_api="blas"):
        return fn()


if __name__ == "__main__":
    main()
