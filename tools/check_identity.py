"""Byte-identity of pruned reference models: record their sha256, or check them against a record.

A refactoring must not change what onnxprune writes. This runs a fixed set of prunes through the
CLI (each method, plain, with --pro and with --srn, on the bundled ResNet-20 and DenseNet, with
256 calibration images to stay quick) and compares the outputs' sha256 with a record made before
the change:

    python tools/check_identity.py --record before.json     # on the old code
    python tools/check_identity.py --check before.json      # on the new code: exit 1 on a difference

Hashes depend on the numerical libraries (BLAS, onnxruntime), so record and check on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet20", "densenet")
METHODS = ("l1", "reap", "thinet", "nu")
# PRO is on by default with --calib and --keep-flops: the plain and srn cases turn it off explicitly.
VARIANTS = {"plain": ["--no-pro"], "pro": ["--pro", "--pro-samples", "64"], "srn": ["--srn", "--no-pro"]}


def cases() -> list[tuple[str, list[str]]]:
    result = []
    for model in MODELS:
        for method in METHODS:
            for variant, extra in VARIANTS.items():
                data = method != "l1" or variant == "pro"
                args = [str(ROOT / "models" / f"{model}_fmnist.onnx"), "--method", method, "--keep-flops", "0.5",
                        *extra, "-q"]
                if data:
                    args += ["--calib", str(ROOT / "models" / "fmnist_calib.npz"), "--calib-limit", "256"]
                result.append((f"{model}/{method}/{variant}", args))
    return result


def run(only: str | None) -> dict[str, str]:
    hashes = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in cases():
            if only and only not in name:
                continue
            out = Path(tmp) / "out.onnx"
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "onnxprune", "prune", *args, "-o", str(out)],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                hashes[name] = f"exit {done.returncode}: {done.stderr.strip().splitlines()[-1:]}"
            else:
                hashes[name] = hashlib.sha256(out.read_bytes()).hexdigest()
            print(f"{name:28s} {hashes[name][:16]}  {time.perf_counter() - start:5.1f} s", flush=True)
    return hashes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--record", type=Path, help="write the hashes to this JSON file")
    mode.add_argument("--check", type=Path, help="compare the hashes with this JSON file")
    parser.add_argument("--only", help="run only the cases whose name contains this")
    args = parser.parse_args()
    hashes = run(args.only)
    if args.record:
        args.record.write_text(json.dumps(hashes, indent=1) + "\n")
        return 0
    recorded = json.loads(args.check.read_text())
    differ = [name for name, h in hashes.items() if recorded.get(name) != h]
    print(f"{len(hashes) - len(differ)} of {len(hashes)} identical" + (f"; differ: {', '.join(differ)}" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
