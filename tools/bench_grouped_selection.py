"""Time REAP, ThiNet and NU on the 32 block pieces of one grouped conv (as in ResNeXt, K = 9), half of its channels removed in rounds.

Usage: python tools/bench_grouped_selection.py A [reap] [thinet] [nu]
A: channels per block (n = 32 * A; ResNeXt-50 32x4d has A = 4, 8, 16, 32 in its four stages).
Random statistics; only the time is of interest. Run with OPENBLAS_NUM_THREADS=1 on a loaded
machine: multithreaded BLAS on these small matrices is slower under contention.
"""

import sys
import time

import numpy as np

from onnxprune.calibration.layer_stats import stats_from_data
from onnxprune.methods.grouped import Rounds
from onnxprune.methods.nu import nu_plan
from onnxprune.methods.reap import reap_order
from onnxprune.methods.thinet import thinet_order

GROUPS, K = 32, 9


def pieces(a: int, seed: int = 0) -> list[tuple]:
    """One problem per block: its a channels' K taps, a outputs; copies mark its channels."""
    rng = np.random.default_rng(seed)
    n = GROUPS * a
    problems = []
    for j in range(GROUPS):
        x = rng.standard_normal((4 * a * K + 50, a * K))
        stats = stats_from_data(x, x @ rng.standard_normal((a * K, a)))
        copies = np.zeros(n, dtype=np.intp)
        copies[j * a:(j + 1) * a] = 1
        problems.append((stats, K, rng.standard_normal((a * K + 1, a)), copies))
    return problems


def main() -> None:
    a = int(sys.argv[1])
    n = GROUPS * a
    problems = pieces(a)
    parts = Rounds(np.repeat(np.arange(GROUPS), a), np.full(GROUPS, a // 2))
    runs = {"reap": lambda: reap_order(problems, n, 1e-3, target=n // 2, parts=parts),
            "thinet": lambda: thinet_order(problems, n, target=n // 2, parts=parts),
            "nu": lambda: nu_plan(problems, n, target=n // 2, parts=parts)}
    for name in sys.argv[2:] or runs:
        start = time.perf_counter()
        runs[name]()
        print(f"{name} n={n}: {time.perf_counter() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
