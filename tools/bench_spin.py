"""How timing several onnxruntime sessions in one process distorts their latency: the ResNet-56 batch-1 check.

    python tools/bench_spin.py --model resnet56 --repeats 2

Prunes the model as tools/bench_latency.py does (l1, --keep-flops 0.5 and 0.25, --round-to 1, 8
and 16: latency depends only on the widths), then times the original and the pruned models at
batch 1 with 2 intra-op threads: all sessions in one process taking turns run by run (as
`onnxprune bench` does), with idle threads spinning (onnxruntime's default) and not spinning,
and each session alone. Prints medians, speedups over the original and 90th percentiles.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.graph.timing import interleaved, medians_ms

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = [(0.5, 1), (0.5, 8), (0.5, 16), (0.25, 1), (0.25, 8)]


def session(model: onnx.ModelProto, spin: bool) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 2, 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def line(label: str, names: list[str], times: list[list[float]]) -> str:
    med = medians_ms(times)
    return f"{label:24s} " + "  ".join(f"{n} {m:.2f} ms ({med[0] / m:.2f}x, p90 {1000 * np.percentile(t, 90):.1f})"
                                        for n, m, t in zip(names, med, times))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet56")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    original = ROOT / "models" / f"{args.model}_fmnist.onnx"
    names, models = ["original"], [onnx.load(str(original))]
    with tempfile.TemporaryDirectory() as tmp:
        for keep, round_to in VARIANTS:
            out = Path(tmp) / f"{keep}_{round_to}.onnx"
            subprocess.run([sys.executable, "-m", "onnxprune", "prune", str(original), "-o", str(out), "--method",
                            "l1", "--keep-flops", str(keep), "--round-to", str(round_to), "-q"], check=True,
                           capture_output=True)
            names.append(f"{keep}/r{round_to}")
            models.append(onnx.load(str(out)))
    data = np.load(ROOT / "models" / "fmnist_test.npz")
    feeds = {models[0].graph.input[0].name: data["image"][:1]}
    for _ in range(args.repeats):
        for spin in (True, False):
            sessions = [session(m, spin) for m in models]
            print(line(f"together, spin={spin}", names, interleaved(sessions, [feeds] * len(sessions), args.runs, 5)))
            alone = [interleaved([s], [feeds], args.runs, 5)[0] for s in sessions]
            print(line(f"alone, spin={spin}", names, alone), flush=True)


if __name__ == "__main__":
    main()
