"""What a prune costs: wall time per stage, peak memory and the result's accuracy or output error.

    python tools/bench_prune_cost.py --models resnet20 vgg16 --modes default no-pro --calib-rows 0 64
    python tools/bench_prune_cost.py --models yolo=/tmp/yolo320/yolov8n.onnx:/tmp/yolo320/calib.npz \\
        --modes default latency --keep 0.5 --json rows.json
    python tools/bench_prune_cost.py --rows rows.json --table        # the page's tables from saved rows

A model is a reference model's name (models/NAME_fmnist.onnx, calibrated on
models/fmnist_calib.npz, accuracy on models/fmnist_test.npz) or NAME=MODEL.onnx:CALIB.npz
(no labels: the output error relative to the original on the calibration samples that
the prune did not use, or on all of them). Modes: ``default`` (REAP + PRO, as the README's
command), ``no-pro`` and ``latency`` (``--keep-latency``, measured here). Each prune runs in a
child process, so its peak memory (VmHWM) is its own, and takes its stages from the
progress labels the library reports (onnxprune.progress):

    analyse       normalise, analyse, cost model (before the first labelled step)
    PRO stats     "PRO: calibrating": the original model's statistics for PRO
    PRO orders    "PRO: removal orders": every group's removal order (REAP's selection) for PRO
    PRO search    "PRO: ridges" (the first candidates' fits) and "PRO: choosing ...": candidates' final outputs
    latency       "latency: ..." and what follows it: the latency table, refits
    stats         "[i/n] group ...": the sequential pass's statistics
    selection     after each of those: selection and reconstruction of that group
    finish        after the last group: surgery, validation, cost

Rows are appended to ``--json`` as they finish (``--rows`` reads them back).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import fields
from itertools import product
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("analyse", "PRO stats", "PRO orders", "PRO search", "latency", "stats", "selection", "finish")


def stage_of(label: str) -> tuple[str, str]:
    """(the stage of a labelled step, the stage of the unlabelled time after it)."""
    if label.startswith("PRO: calibrating"):
        return "PRO stats", "PRO orders"
    if label.startswith("PRO: removal orders"):
        return "PRO orders", "PRO search"
    if label.startswith("PRO: ridges"):  # the search's first candidates, fitted before it
        return "PRO search", "PRO search"
    if label.startswith("PRO: choosing"):
        return "PRO search", "finish"
    if label.startswith("latency"):
        return "latency", "latency"
    if label.startswith("["):
        return "stats", "selection"
    return "finish", "finish"


def rss_sampler(every: float = 0.1) -> Callable[[], list[tuple[float, float]]]:
    """Start sampling this process's resident memory (MiB) every ``every`` s in a daemon thread;
    the returned function stops it and gives the samples (time, MiB)."""
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample():
        while not stop.wait(every):
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
            samples.append((time.perf_counter(), pages * os.sysconf("SC_PAGE_SIZE") / 2**20))

    threading.Thread(target=sample, daemon=True).start()

    def done():
        stop.set()
        return samples
    return done


def peaks_by_stage(timeline: list[tuple[str, float, float]], start: float, end: float,
                   samples: list[tuple[float, float]]) -> dict[str, float]:
    """The largest resident memory sampled in each stage (as ``stage_of`` names them)."""
    spans, after, mark = [], "analyse", start
    for label, a, b in timeline:
        spans.append((after, mark, a))
        now, after = stage_of(label)
        spans.append((now, a, b))
        mark = b
    spans.append((after, mark, end))
    peaks = dict.fromkeys(STAGES, 0.0)
    for t, mib in samples:
        for stage, a, b in spans:
            if a <= t <= b:
                peaks[stage] = max(peaks[stage], mib)
    return peaks


def child(spec: dict) -> dict:
    """One prune in this process (the child): stage times, peak memory, the result's quality."""
    import onnx

    from onnxprune import PruneConfig, prune
    from onnxprune.calibration.statistics import Calibration
    from onnxprune.data import open_data
    from onnxprune.evaluate import evaluate

    timeline: list[tuple[str, float, float]] = []
    samples = rss_sampler()

    class Timed:
        def __init__(self, label: str, total: int):
            self.label = label

        def __enter__(self):
            self.start = time.perf_counter()
            return lambda n: None

        def __exit__(self, *exc):
            timeline.append((self.label, self.start, time.perf_counter()))

    start = time.perf_counter()
    model = onnx.load(spec["model"])
    data = open_data(spec["calib"], model, batch_size=64, limit=spec.get("limit"))
    if "rows_per_column" in {f.name for f in fields(Calibration)}:
        calib = Calibration(lambda: (b.feeds for b in data), len(data), rows_per_column=spec["rows"])
    else:  # a checkout from before --calib-rows: every row
        calib, spec["rows"] = Calibration(lambda: (b.feeds for b in data), len(data)), None
    mode = spec["mode"]
    target = {"keep_latency": spec["keep"]} if mode == "latency" else {"keep_flops": spec["keep"]}
    config = PruneConfig(method="reap", pro=mode != "no-pro", input_shapes=data.input_shapes({}, "--calib"),
                         **target)
    result = prune(model, config, calib, Timed)
    end = time.perf_counter()

    stages = dict.fromkeys(STAGES, 0.0)
    after, mark = "analyse", start
    for label, a, b in timeline:
        stages[after] += a - mark
        now, after = stage_of(label)
        stages[now] += b - a
        mark = b
    stages[after] += end - mark
    stage_peaks = peaks_by_stage(timeline, start, end, samples())

    out = {"rows": spec["rows"], "seconds": end - start, "stages": stages, "macs": result.macs_after / result.macs_before,
           "gmacs": result.macs_before / 1e9,
           "stage_peak_mib": stage_peaks,
           "peak_mib": next(int(line.split()[1]) for line in open("/proc/self/status")
                            if line.startswith("VmHWM")) / 1024}
    pruned = result.model
    if spec.get("test"):
        test = open_data(spec["test"], pruned, batch_size=256)
        out["accuracy"] = evaluate(pruned, test).accuracy
    else:
        held = open_data(spec["calib"], model, batch_size=16)
        out["rel_error"] = evaluate(pruned, held, model).rel_error
    if mode == "latency" and result.latency:
        out["latency_kept"] = result.latency["measured_fraction"]  # the pruned model's time over the original's
    return out


def parse_model(text: str) -> dict:
    if "=" in text:
        name, rest = text.split("=", 1)
        model, calib = rest.split(":", 1)
        return {"name": name, "model": model, "calib": calib, "test": None}
    return {"name": text, "model": str(ROOT / "models" / f"{text}_fmnist.onnx"),
            "calib": str(ROOT / "models" / "fmnist_calib.npz"), "test": str(ROOT / "models" / "fmnist_test.npz")}


def run(spec: dict, tree: Path = ROOT) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return {**spec, **json.loads(proc.stdout.strip().splitlines()[-1])}


def rows_text(r: dict) -> str:
    return "all (before)" if r.get("rows") is None else "all" if r["rows"] == 0 else str(r["rows"])


def table(rows: list[dict]) -> str:
    head = ("| code | model | images | mode | --calib-rows | MACs kept | accuracy / output error | wall s | "
            + " | ".join(STAGES) + " | peak MiB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r.get('code', '')} | {r['name']} | {r.get('limit') or 'all'} | {r['mode']} | {rows_text(r)} | failed: "
                         f"{r['error']} |")
            continue
        quality = (f"{100 * r['accuracy']:.2f} %" if r.get("accuracy") is not None
                   else f"{r['rel_error']:.4f}")
        stages = " | ".join(f"{r['stages'][s]:.1f}" for s in STAGES)
        lines.append(f"| {r.get('code', '')} | {r['name']} | {r['images']} | {r['mode']} {r['keep']} | {rows_text(r)} | {r['macs']:.3f} | "
                     f"{quality} | {r['seconds']:.1f} | {stages} | {r['peak_mib']:.0f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Wall time of each mode against the model's MACs per image times the images (left) and
    against the images for each model (right), log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    done = [r for r in rows if "error" not in r]
    for mode in dict.fromkeys(r["mode"] for r in done):
        mine = [r for r in done if r["mode"] == mode]
        a.scatter([r["gmacs"] * r["images"] for r in mine], [r["seconds"] for r in mine], label=mode)
    for name in dict.fromkeys(r["name"] for r in done):
        mine = sorted((r for r in done if r["name"] == name and r["mode"] == "default"), key=lambda r: r["images"])
        if len(mine) > 1:
            b.plot([r["images"] for r in mine], [r["seconds"] for r in mine], marker="o", label=name)
    a.set(xscale="log", yscale="log", xlabel="GMACs per image x images", ylabel="wall time of the prune (s)")
    b.set(xscale="log", yscale="log", xlabel="calibration images", ylabel="wall time, REAP + PRO (s)")
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=["resnet20"])
    p.add_argument("--modes", nargs="+", default=["default"], choices=["default", "no-pro", "latency"])
    p.add_argument("--keep", nargs="+", type=float, default=[0.5])
    p.add_argument("--calib-rows", nargs="+", type=int, default=[256])
    p.add_argument("--limit", nargs="+", type=int, default=[0], help="calibration images (0: all)")
    p.add_argument("--code", nargs="+", default=[f"this={ROOT}"], metavar="NAME=TREE",
                   help="checkouts to run, each in turn for every cell (e.g. before=/tmp/old after=.); one "
                        "from before --calib-rows reads every row")
    p.add_argument("--json", type=Path, help="append each row to this file (JSON lines)")
    p.add_argument("--rows", type=Path, help="print the table of rows saved with --json, run nothing")
    p.add_argument("--plot", type=Path, help="with --rows: plot wall time against MACs and images (matplotlib)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if args.rows:
        saved = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
        print(table(saved))
        if args.plot:
            plot(saved, args.plot)
        return
    rows = []
    for name, limit, mode, keep, per_column, code in product(args.models, args.limit, args.modes, args.keep,
                                                             args.calib_rows, args.code):
        label, tree = code.split("=", 1)
        spec = {**parse_model(name), "mode": mode, "keep": keep, "code": label, "rows": per_column,
                "limit": limit or None}
        row = run(spec, Path(tree).resolve())
        if "error" not in row:
            with np.load(spec["calib"]) as z:
                total = len(z[z.files[0]])
            row["images"] = min(limit, total) if limit else total
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
