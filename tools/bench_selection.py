"""Fast vs naive REAP elimination: time and choices on random correlated data.

    python tools/bench_selection.py [--json] [--threads 1] [--budget 60] [--alpha 0]

n in (32, 64, 128, 256, 512) channels, K in {1, 9}, m = 64 outputs, about 4 n K rows (at most
ROW_CAP, accumulated in chunks), half the channels removed. The naive elimination re-solves
least squares for every candidate at every step, O(n^5 K^3): it runs only while its estimated
time (naive_estimate) stays under --budget seconds, "skipped" otherwise, and the speedup is then
read off the estimate. --json prints a list of rows {"n", "kernel", "fast_s", "naive_s",
"same_order", "naive_est_s"} (naive_s and same_order null when skipped).
"""

import argparse
import json
import os
import time

SIZES = (32, 64, 128, 256, 512)
KERNELS = (1, 9)
OUTPUTS = 64
ROW_CAP = 12288
CHUNK = 2048
BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--budget", type=float, default=60.0, help="longest naive run to attempt, seconds")
    parser.add_argument("--alpha", type=float, default=0.0, help="ridge alpha of the reconstruction")
    return parser.parse_args()


if __name__ == "__main__":  # BLAS reads its thread count when numpy loads
    ARGS = parse_args()
    for var in BLAS_THREADS:
        os.environ[var] = str(ARGS.threads)

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from onnxprune.calibration.layer_stats import LayerStats, stats_from_data  # noqa: E402
from onnxprune.methods.least_squares import Problem, objective, ridge_solve  # noqa: E402
from onnxprune.methods.reap import reap_order  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the brute-force reference
from oracles import reap_order_naive  # noqa: E402


def make_problem(n: int, k: int, seed: int = 0) -> Problem:
    """One consumer: patches X = Z A + noise (rank nK/2 mixing), Y = [X 1] theta + noise,
    theta0 = theta + perturbation; statistics accumulated chunk by chunk."""
    rng = np.random.default_rng(seed)
    cols = n * k
    rank = max(1, cols // 2)
    mixing = rng.standard_normal((rank, cols)) / np.sqrt(rank)
    true = rng.standard_normal((cols + 1, OUTPUTS))
    rows = min(4 * cols, ROW_CAP)
    stats = LayerStats(np.zeros((cols + 1, cols + 1)), np.zeros((cols + 1, OUTPUTS)), 0.0, 0)
    for start in range(0, rows, CHUNK):
        count = min(CHUNK, rows - start)
        x = rng.standard_normal((count, rank)) @ mixing + 0.1 * rng.standard_normal((count, cols))
        y = x @ true[:-1] + true[-1] + 0.1 * rng.standard_normal((count, OUTPUTS))
        stats = stats + stats_from_data(x, y)
    return stats, k, true + 0.1 * rng.standard_normal(true.shape)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def naive_estimate(consumer: Problem, n: int, alpha: float) -> float:
    """Seconds the naive removal of n // 2 channels would take: one candidate (ridge_solve and
    objective on n - 1 channels, best of 3) times the candidates of every step, each scaled by
    (kept / (n - 1))^3 for its smaller solve."""
    stats, k, theta0 = consumer
    candidate = min(timed(lambda: objective(stats, ridge_solve(stats, range(1, n), k, theta0, alpha), theta0, alpha))[1]
                    for _ in range(3))
    return sum((n - s) * candidate * ((n - s - 1) / (n - 1)) ** 3 for s in range(n // 2))


def bench(budget: float, alpha: float) -> list[dict]:
    rows = []
    for k in KERNELS:
        for n in SIZES:
            consumers = [make_problem(n, k)]
            fast, fast_s = timed(reap_order, consumers, n, alpha, target=n // 2)
            estimate = naive_estimate(consumers[0], n, alpha)
            row = {"n": n, "kernel": k, "fast_s": fast_s, "naive_s": None, "same_order": None, "naive_est_s": estimate}
            if estimate <= budget:
                naive, naive_s = timed(reap_order_naive, consumers, n, alpha, target=n // 2)
                row.update(naive_s=naive_s, same_order=bool(np.array_equal(fast.order, naive.order)))
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'n':>5} {'K':>3} {'fast s':>9} {'naive s':>9} {'(est.)':>9} {'speedup':>9} {'same order':>11}"]
    for r in rows:
        if r["naive_s"] is None:
            naive, speedup = "skipped", f"~{r['naive_est_s'] / r['fast_s']:.0f}x"
        else:
            naive, speedup = f"{r['naive_s']:.3f}", f"{r['naive_s'] / r['fast_s']:.0f}x"
        same = "-" if r["same_order"] is None else ("yes" if r["same_order"] else "NO")
        lines.append(f"{r['n']:>5} {r['kernel']:>3} {r['fast_s']:>9.3f} {naive:>9} {r['naive_est_s']:>9.3g} "
                     f"{speedup:>9} {same:>11}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    rows = bench(args.budget, args.alpha)
    print(json.dumps(rows, indent=1) if args.json else table(rows))


if __name__ == "__main__":
    main(ARGS)
