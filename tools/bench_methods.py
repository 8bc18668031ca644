"""Accuracy vs kept MACs for every method on the reference models, with time and memory.

    python tools/bench_methods.py                       # everything: writes docs/RESULTS_<models>.md and a plot
    python tools/bench_methods.py --models resnet20 --keep 0.5 0.25 --methods l1 reap
    python tools/bench_methods.py ... --jobs 2 2> rows.log     # two prunes at a time
    python tools/bench_methods.py ... --rows rows.log          # resume: reuse the cells measured

Each prune runs in its own process (`onnxprune prune ... --json`), so its wall time
and peak memory (VmHWM of the child) are its own; accuracy is measured with onnxruntime on
the full Fashion-MNIST test set. No fine-tuning anywhere. A "method" is a
`--method` plus optional flags: `reap+pro` adds `--pro`, `reap+srn` adds `--srn`.
Also measures time and peak memory of a REAP prune calibrated on 256 and on 4096 samples.
The plot needs matplotlib (the `tools` extra).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("resnet20", "resnet56", "vgg16", "mobilenetv2")
METHODS = ("l1", "thinet", "nu", "reap", "reap+pro", "reap+srn", "reap+pro+srn")
KEEP = (1.0, 0.75, 0.5, 0.35, 0.25)


# Runs the onnxprune CLI and reports its own wall time and peak RSS on stderr.
WRAPPER = """
import runpy, sys, time
sys.argv = ["onnxprune", *sys.argv[1:]]
start = time.perf_counter()
try:
    runpy.run_module("onnxprune", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code or 0
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (fork + exec)
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024
sys.stderr.write(f"@@ {time.perf_counter() - start} {peak} {code}\\n")
"""


def prune_once(model: Path, method: str, keep: float, calib: Path, out: Path, extra: tuple[str, ...] = ()) -> dict:
    """One prune in a child process: its JSON report, wall time (s) and peak memory (MiB); ``extra``: more
    options (a method's `+a+b` adds `--a --b`)."""
    name, *flags = method.split("+")
    args = ["prune", str(model), "-o", str(out), "--method", name, "--keep-flops", str(keep), "--json", "-q", *extra]
    args += [f"--{f}" for f in flags] + ([] if "pro" in flags else ["--no-pro"])  # PRO is on by default with data
    if name != "l1" or "pro" in flags:
        args += ["--calib", str(calib)]
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *args], capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    _, seconds, peak, code = lines[-1].split()
    if code != "0":
        return {"error": lines[-2] if len(lines) > 1 else "failed", "seconds": float(seconds)}
    report = json.loads(proc.stdout)
    report.update(seconds=float(seconds), peak_mib=float(peak))
    return report


def accuracy(model: Path, test: Path) -> float:
    from onnxprune import load
    from onnxprune.data import open_data
    from onnxprune.evaluate import evaluate

    loaded = load(model)
    return evaluate(loaded, open_data(test, loaded, batch_size=500)).accuracy


def calibration_memory(model: Path, samples: int) -> dict:
    """Time and peak memory of a REAP prune (0.5 of the MACs) calibrated on ``samples`` images
    (the test images, repeated): the statistics, the activation cache and everything else."""
    images = np.load(ROOT / "models" / "fmnist_test.npz")["image"]
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "calib.npz"
        np.savez(calib, image=np.resize(images, (samples, *images.shape[1:])))
        report = prune_once(model, "reap", 0.5, calib, Path(tmp) / "out.onnx")
    if "error" in report:
        raise RuntimeError(f"calibration run with {samples} samples failed: {report['error']}")
    return {"model": model.stem, "samples": samples, "seconds": round(report["seconds"], 1),
            "peak_mib": round(report["peak_mib"])}


def prune_and_score(name: str, path: Path, method: str, keep: float, calib: Path, test: Path, tmp: Path) -> dict:
    """One table cell: prune model ``name`` (at ``path``) in a child process, then its test accuracy."""
    out = tmp / f"{name}_{method}_{keep}.onnx"
    report = prune_once(path, method, keep, calib, out)
    row = {"model": name, "method": method, "keep": keep, "seconds": round(report["seconds"], 1)}
    if "error" in report:
        row["error"] = report["error"]
    else:
        row.update(accuracy=accuracy(out, test), macs_kept=report["macs_after"] / report["macs_before"],
                   params_kept=report["params_after"] / report["params_before"], peak_mib=round(report["peak_mib"]))
        out.unlink()
    print(json.dumps(row), file=sys.stderr)
    return row


def earlier_rows(path: Path | None) -> dict[tuple, dict]:
    """Cells measured by an earlier run: the JSON lines it printed on stderr, by (model, method, keep)."""
    if path is None:
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    return {(r["model"], r["method"], r["keep"]): r for r in rows if "method" in r and "error" not in r}


def run(models, methods, keeps, calib: Path, test: Path, folder: Path, jobs: int = 1,
        done: dict[tuple, dict] | None = None) -> list[dict]:
    """Every (model, method, keep) cell not in ``done``, and the cells of ``done`` too; ``jobs``
    prunes at a time (times then include contention)."""
    rows, done = [], done or {}
    for r in done.values():  # so that this run's stderr can seed the next one
        print(json.dumps(r), file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(jobs) as pool:
        for name in models:
            path = folder / f"{name}_fmnist.onnx"
            if not path.exists():
                print(f"skipping {name}: {path} not found", file=sys.stderr)
                continue
            rows.append({"model": name, "method": "original", "keep": 1.0, "accuracy": accuracy(path, test),
                         "macs_kept": 1.0})
            cells = [done.get((name, m, k)) or pool.submit(prune_and_score, name, path, m, k, calib, test, Path(tmp))
                     for m in methods for k in keeps if k < 1.0]
            rows += [c if isinstance(c, dict) else c.result() for c in cells]
            rows += [r for (m, method, k), r in done.items() if m == name and (method not in methods or k not in keeps)]
    order = {m: i for i, m in enumerate(METHODS)}
    return sorted(rows, key=lambda r: (r["method"] != "original", order.get(r["method"], len(order)), -r["keep"]))


def markdown(rows: list[dict], memory: list[dict], command: str, jobs: int = 1) -> str:
    together = f", {jobs} at a time (so times include their contention)" if jobs > 1 else ""
    lines = ["# Results", "", f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}; no fine-tuning anywhere.",
             "Accuracy: top-1 on the full Fashion-MNIST test set (10,000 images), onnxruntime on the CPU.",
             f"Time and peak memory: each prune as its own process on this 2-core machine{together}.", ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        base = next(r["accuracy"] for r in mine if r["method"] == "original")
        keeps = sorted({r["keep"] for r in mine if r["method"] != "original"}, reverse=True)
        lines += [f"## {model} (original {100 * base:.2f}%)", "",
                  "| method | " + " | ".join(f"keep {k}" for k in keeps) + " |",
                  "|---|" + "---|" * len(keeps)]
        for method in dict.fromkeys(r["method"] for r in mine if r["method"] != "original"):
            cells = []
            for k in keeps:
                r = next((r for r in mine if r["method"] == method and r["keep"] == k), None)
                if r is None:
                    cells.append("")
                elif "error" in r:
                    cells.append("error")
                else:
                    cells.append(f"{100 * r['accuracy']:.2f}% ({100 * (r['accuracy'] - base):+.2f}) "
                                 f"<br>MACs {100 * r['macs_kept']:.1f}%, {r['seconds']:.0f} s, {r['peak_mib']} MiB")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    if memory:
        lines += ["## Calibration memory", "",
                  f"REAP at 0.5 of the MACs on {memory[0]['model']}, calibrated on N images (the test images, "
                  "repeated); the whole prune as its own process.", "",
                  "| samples | seconds | peak MiB |", "|---|---|---|"]
        lines += [f"| {m['samples']} | {m['seconds']:.1f} | {m['peak_mib']:.0f} |" for m in memory]
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, key: str = "accuracy", label: str = "test accuracy (%)",
         scale: float = 100.0) -> None:
    """One panel per model: each method's ``key`` (times ``scale``) against its kept MACs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and key in r]
        base = next(r[key] for r in mine if r["method"] == "original")
        for method in dict.fromkeys(r["method"] for r in mine if r["method"] != "original"):
            pts = sorted((r["macs_kept"], r[key]) for r in mine if r["method"] == method)
            pts.append((1.0, base))
            ax.plot([p[0] for p in pts], [scale * p[1] for p in pts], marker="o", label=method)
        ax.set_title(model)
        ax.set_xlabel("kept MACs")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--keep", nargs="+", type=float, default=KEEP)
    p.add_argument("--model-dir", type=Path, default=ROOT / "models", help="where the <name>_fmnist.onnx models are")
    p.add_argument("--calib", type=Path, default=ROOT / "models" / "fmnist_calib.npz")
    p.add_argument("--test", type=Path, default=ROOT / "models" / "fmnist_test.npz")
    p.add_argument("--out", type=Path, help="the page to write [default: docs/RESULTS_<models>.md, e.g. "
                   "docs/RESULTS_resnet20.md; docs/RESULTS.md is the index, written by hand]")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "accuracy_vs_macs.png")
    p.add_argument("--no-memory", action="store_true", help="skip the calibration memory measurement")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--jobs", type=int, default=1, help="prunes run at once (their times then include contention)")
    p.add_argument("--rows", type=Path, help="stderr of an earlier run: its cells join the table, and are not measured again")
    args = p.parse_args()
    args.out = args.out or ROOT / "docs" / f"RESULTS_{'_'.join(args.models)}.md"
    rows = run(args.models, args.methods, args.keep, args.calib, args.test, args.model_dir, args.jobs,
               earlier_rows(args.rows))
    memory = []
    first = next((args.model_dir / f"{m}_fmnist.onnx" for m in args.models
                  if (args.model_dir / f"{m}_fmnist.onnx").exists()), None)
    if first is not None and not args.no_memory:
        memory = [calibration_memory(first, n) for n in (256, 4096)]
    command = "python tools/bench_methods.py " + " ".join(sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(rows, memory, command.strip(), args.jobs) + "\n")
    try:
        plot(rows, args.plot)
    except ImportError:
        print("matplotlib is not installed (pip install '.[tools]'): no plot", file=sys.stderr)
    if args.json:
        print(json.dumps({"rows": rows, "calibration_memory": memory}, indent=2))


if __name__ == "__main__":
    main()
