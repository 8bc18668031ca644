"""PRO's statistics (every consumer at once) against the size of the slices a batch runs in.

    python tools/bench_stats_slices.py /tmp/r50/resnet50.onnx /tmp/r50/calib.npz --limit 64 --mib 512 1024 2048 8192

Times ``calibration.statistics.collect`` over the first ``--limit`` samples (one batch of 64 by
default) for each ``run_bytes`` in ``--mib``, in turn, with the product's row sampling and
holdout. Run it alone on the machine; repeat a value to see the noise.
"""

from __future__ import annotations

import argparse
import time

import onnx

from onnxprune import analyze, normalize
from onnxprune.analysis.consumers import reconstructable
from onnxprune.calibration.sampling import DEFAULT_ROWS_PER_COLUMN, RowSampling
from onnxprune.calibration.statistics import HOLDOUT_EVERY, collect
from onnxprune.data import open_data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("calib")
    p.add_argument("--limit", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mib", type=int, nargs="+", default=[512, 1024, 2048])
    args = p.parse_args()
    model = onnx.load(args.model)
    normalized, _ = normalize(model)
    plans, _ = reconstructable(analyze(normalized, {}))
    consumers = list({c.node: c for cs in plans.values() for c in cs}.values())
    data = open_data(args.calib, model, batch_size=args.batch_size, limit=args.limit)
    rows = RowSampling(DEFAULT_ROWS_PER_COLUMN, len(data))
    for mib in args.mib:
        start = time.perf_counter()
        collect(normalized, normalized, consumers, lambda: (b.feeds for b in data), holdout_every=HOLDOUT_EVERY,
                rows=rows, run_bytes=mib << 20)
        print(f"{mib} MiB slices: {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
