"""Time of the calibration statistics alone: every consumer of a model on one batch, at several row budgets.

    python tools/bench_statistics.py [--model models/resnet20_fmnist.onnx] [--calib models/fmnist_calib.npz]
        [--batch 64] [--rows 0 256 64] [--rounds 5]

Runs the model once for every consumer's input and output, then times ``host_stats`` of all
consumers per ``--calib-rows`` value (0: every row), the values interleaved round by round so
that the machine's load falls on all alike; prints each one's median over the rounds and its
ratio to the first. The row budget is spread as in a prune calibrated on the whole file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "resnet20_fmnist.onnx")
    p.add_argument("--calib", type=Path, default=ROOT / "models" / "fmnist_calib.npz")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rows", nargs="+", type=int, default=[0, 256, 64])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    from onnxprune import analyze, normalize
    from onnxprune.analysis.consumers import reconstructable
    from onnxprune.calibration.sampling import RowSampling
    from onnxprune.calibration.statistics import host_stats
    from onnxprune.data import open_data
    from onnxprune.graph.probe import probe_model
    from onnxprune.graph.runtime import run_all, session

    model = onnx.load(args.model)
    normalized, _ = normalize(model)
    plans, _ = reconstructable(analyze(normalized))
    consumers = list({c.node: c for cs in plans.values() for c in cs if c.groups == 1}.values())
    data = open_data(args.calib, model, batch_size=args.batch)
    feeds = next(iter(data)).feeds
    values = run_all(session(probe_model(normalized, sorted({c.input for c in consumers} | {c.output for c in consumers}))),
                     feeds)
    times: dict[int, list[float]] = {r: [] for r in args.rows}
    for _ in range(args.rounds):
        for per_column in args.rows:
            rows = RowSampling(per_column, len(data))
            start = time.perf_counter()
            for c in consumers:
                host_stats(values[c.input], values[c.output], c, rows, 0)
            times[per_column].append(time.perf_counter() - start)
    first = float(np.median(times[args.rows[0]]))
    print(f"{args.model.name}: {len(consumers)} consumers, one batch of {args.batch} of {len(data)} samples")
    for per_column, ts in times.items():
        median = float(np.median(ts))
        print(f"--calib-rows {per_column:>5}: median {median:.3f} s over {len(ts)} rounds, {first / median:.1f}x "
              f"faster than --calib-rows {args.rows[0]}")


if __name__ == "__main__":
    main()
