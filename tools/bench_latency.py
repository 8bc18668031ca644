"""onnxruntime CPU speedup of pruned models beside their MAC reduction, for --round-to 1, 8, 16.

    python tools/bench_latency.py --models resnet20 --keep 0.5 0.25

Latency does not depend on which channels were kept, only on the widths, and every method
gets the same widths for the same --keep-flops (the uniform fit), so the models are pruned
with l1 (instant). All models of one reference model are timed in one `onnxprune bench`
run (interleaved), so the ratios are comparable on a shared machine. Writes docs/LATENCY.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def onnxprune(*args: str) -> str:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], capture_output=True, text=True,
                          check=True).stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20"])
    p.add_argument("--keep", nargs="+", type=float, default=[0.5, 0.25])
    p.add_argument("--round-to", nargs="+", type=int, default=[1, 8, 16])
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "LATENCY.md")
    args = p.parse_args()
    command = "python tools/bench_latency.py " + " ".join(sys.argv[1:])
    lines = ["# Latency", "", f"Produced by `{command.strip()}` on {time.strftime('%Y-%m-%d')}: onnxruntime CPU "
             f"provider, all graph optimisations, {args.threads} threads, median of {args.runs} interleaved runs.",
             "Speedup = original median / pruned median.", "",
             "| model | keep-flops | round-to | MACs kept | speedup batch 1 | speedup batch 32 | MAC reduction |",
             "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            original = ROOT / "models" / f"{name}_fmnist.onnx"
            variants, kept = [], {}
            for keep in args.keep:
                for r in args.round_to:
                    out = Path(tmp) / f"{name}_{keep}_{r}.onnx"
                    try:
                        report = json.loads(onnxprune("prune", str(original), "-o", str(out), "--keep-flops",
                                                      str(keep), "--round-to", str(r), "--json", "-q"))
                    except subprocess.CalledProcessError as exc:  # e.g. unreachable with wide rounding
                        lines.append(f"| {name} | {keep} | {r} | {exc.stderr.strip().removeprefix('error: ')} |||")
                        continue
                    kept[str(out)] = report["macs_after"] / report["macs_before"]
                    variants.append((keep, r, out))
            rows = json.loads(onnxprune("bench", str(original), *[str(v[2]) for v in variants], "--runs",
                                        str(args.runs), "--threads", str(args.threads), "--json"))
            speed = {(r["model"], r["batch"]): r["speedup"] for r in rows}
            for keep, r, out in variants:
                lines.append(f"| {name} | {keep} | {r} | {100 * kept[str(out)]:.1f}% | {speed[str(out), 1]:.2f}x "
                             f"| {speed[str(out), 32]:.2f}x | {1 / kept[str(out)]:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
