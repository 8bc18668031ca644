"""How well does a latency table predict whole models? Random width patterns, timed in one measurement.

    onnxprune profile models/vgg16_fmnist.onnx -o vgg_table.json --threads 2
    python tools/check_latency_table.py models/vgg16_fmnist.onnx vgg_table.json --threads 2 --reports pruned.json

Prunes the model (its first channels, as the table is timed) to the uniform widths the table
checks its scale on, to --patterns random widths (each group at a random width of its ladder,
or left whole one time in five) and to the widths of any `prune --json` reports given, times
them all against the original in one interleaved measurement (``latency.measure``: rounds of
fresh sessions), and prints each one's measured fraction of the latency beside two predictions:
the table's, and a line in the MAC fraction (a + b * MACs) fitted on the uniform widths, the
baseline a latency model must beat. Spearman's rank correlation says whether a predictor orders
the patterns as the runtime does, which is what PRO's ranking needs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from scipy.stats import spearmanr

from onnxprune import normalize
from onnxprune.analysis.cost import MacPredictor, model_cost
from onnxprune.analysis.groups import analyze
from onnxprune.passes.surgery import prune_channels
from onnxprune.widths import latency
from onnxprune.widths.budget import uniform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("table", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--patterns", type=int, default=10)
    p.add_argument("--reports", nargs="*", type=Path, default=[], help="`prune --json` reports whose widths to time")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    normalized, _ = normalize(onnx.load(args.model))
    table = latency.load_table(args.table)
    analysis = analyze(normalized)
    channels = {g: max(widths) for g, widths in table.steps.items()}
    steps = latency.steps_of(analysis, channels, table.meta.get("round_to", 8))
    before = model_cost(analysis.graph, analysis.shapes, analysis.unknown_after)
    macs = MacPredictor(analysis, before).macs
    rng = np.random.default_rng(args.seed)
    patterns = {f"uniform {r}": uniform(channels, r, steps) for r in latency.CHECK_RATIOS}
    for i in range(args.patterns):
        patterns[f"random {i}"] = {g: int(rng.choice(latency.ladder(n, steps[g]))) if rng.random() < 0.8 else n
                                   for g, n in channels.items()}
    for path in args.reports:
        patterns[path.name] = {g["id"]: g["channels_after"] for g in json.loads(path.read_text())["groups"]
                               if g["id"] in channels}
    keeps = [latency.timed_keep(analysis, c) for c in patterns.values()]
    full, *timed = latency.measure(normalized, [prune_channels(normalized, analysis, k) for k in keeps],
                                   latency.Target(threads=args.threads))
    measured = np.array(timed) / full
    by_table = np.array([table.predict(c) for c in patterns.values()]) / table.full_ms
    mac = np.array([macs(analysis.removed_mask(k)) for k in keeps]) / before.macs
    fit = [i for i, name in enumerate(patterns) if name.startswith("uniform")]
    a, b = np.linalg.lstsq(np.stack([np.ones(len(fit)), mac[fit]], 1), measured[fit], rcond=None)[0]
    by_macs = a + b * mac
    print(f"original {full:.3f} ms measured ({table.full_ms:.3f} ms in the table)")
    print(f"{'pattern':24s} {'MACs':>6s} {'measured':>9s} {'table':>7s} {'MAC line':>9s}")
    for name, f, m, t, q in zip(patterns, mac, measured, by_table, by_macs):
        print(f"{name[:24]:24s} {f:6.3f} {m:9.3f} {t:7.3f} {q:9.3f}")
    for name, predicted in (("table", by_table), ("MAC line", by_macs)):
        error = np.abs(predicted - measured)
        print(f"{name}: Spearman {spearmanr(predicted, measured)[0]:.3f}, mean |error| {error.mean():.3f}, "
              f"max {error.max():.3f} (fractions of the latency)")


if __name__ == "__main__":
    main()
