"""Latency targets against MAC targets: measured speedup and accuracy of --keep-latency and --keep-flops prunes.

    python tools/bench_keep_latency.py --models resnet20 --keep 0.5 0.35
    python tools/bench_keep_latency.py --models resnet20 resnet56 vgg16 mobilenetv2 densenet --plot docs/accuracy_vs_speedup.png

For each reference model and each latency target F, REAP + PRO prunes to --keep-latency F
(the latency table measured here at batch 1, or --latency-batch 32, --threads); then REAP + PRO prunes by MACs to
the MAC fraction that latency prune kept, with --round-to 8 and 16, so the MAC-based prunes
have the same MAC budget. All prunes of one model are timed together in one interleaved
`onnxprune bench` run at batch 1 and 32, repeated --repeats times (the median of the
repeats' speedups is reported with their spread), and evaluated on the Fashion-MNIST test
set. Models under tests/data/real (no labels) and a YOLOv8n-architecture model made by
tools/make_yolo.py can be added with --extra PATH[:INPUT=D0,D1,...] (the shape fixes dynamic
dims, batch first): they are pruned with 64 random calibration inputs and compared by speed
and output agreement with the original on those inputs. Writes a markdown page, and every
prune's --json report beside it (the page's name with .json).

Equal MACs are not equal speed. With --mac-curve F1 F2 ..., MAC-based prunes are also made at
those multiples of the latency prune's MAC fraction, timed in the same runs, so each
round-to has a curve of accuracy against measured speedup; the page then gives, for each
latency prune, the MAC-based accuracy interpolated at its measured speedup (``at_speed``),
where the curve brackets it.

On a shared machine, --timing-prefix runs only the commands that time models (the latency
prunes and the bench runs) under a prefix, e.g. one that raises their priority or pauses
other work (`--timing-prefix "nice -n -10"`); pruning by MACs and evaluation run plainly.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CALIB = ROOT / "models" / "fmnist_calib.npz"
TEST = ROOT / "models" / "fmnist_test.npz"


PREFIX: list[str] = []  # --timing-prefix


def onnxprune(*args: str, timed: bool = False) -> subprocess.CompletedProcess:
    prefix = PREFIX if timed else []
    return subprocess.run([*prefix, sys.executable, "-m", "onnxprune", *map(str, args)], capture_output=True,
                          text=True)


def random_calib(model: Path, folder: Path, shape: str | None, samples: int = 64) -> Path:
    """Random calibration inputs of the model's input shape (``shape``: INPUT=D0,D1,... fixes it)."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    feeds = {}
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]
        if shape and shape.split("=")[0] == vi.name:
            dims = [int(d) for d in shape.split("=")[1].split(",")]
        feeds[vi.name] = np.random.default_rng(0).standard_normal((samples, *dims[1:])).astype(np.float32)
    path = folder / f"{model.stem}_calib.npz"
    np.savez(path, **feeds)
    return path


def prune(model: Path, out: Path, calib: Path, target: list[str], threads: int, round_to: int,
          shape: list[str], pro_samples: int, method: str = "reap") -> dict:
    start = time.perf_counter()
    data = ["--pro", "--calib", calib, "--pro-samples", pro_samples] if method != "l1" else []
    done = onnxprune("prune", model, "-o", out, "--method", method, *data, *target, "--round-to", round_to,
                     "--threads", threads, *shape, "--json", "-q", timed="--keep-latency" in target)
    if done.returncode:
        return {"error": done.stderr.strip().removeprefix("error: ")}
    report = json.loads(done.stdout)
    report["seconds"] = time.perf_counter() - start
    return report


def at_speed(curve: list[tuple[float, float]], speed: float) -> float | None:
    """Accuracy of a curve of (speedup, accuracy) points at ``speed``: linear between the two
    points that bracket it (neighbours in speedup), None where no two points do. Points of equal
    speed are averaged, since a curve measured on a noisy machine need not be monotone."""
    pooled: dict[float, list[float]] = {}
    for s, a in curve:
        pooled.setdefault(s, []).append(a)
    points = sorted((s, float(np.mean(a))) for s, a in pooled.items())
    if speed in pooled:
        return dict(points)[speed]
    for (s0, a0), (s1, a1) in zip(points, points[1:]):
        if s0 <= speed <= s1:
            return a0 if s1 == s0 else a0 + (a1 - a0) * (speed - s0) / (s1 - s0)
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=["resnet20"])
    p.add_argument("--extra", nargs="*", default=[], help="unlabelled models PATH[:INPUT=D0,D1,...]")
    p.add_argument("--keep", nargs="+", type=float, default=[0.5, 0.35])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--latency-batch", type=int, default=1, choices=[1, 32],
                   help="batch size the latency target is measured at (--keep-latency's --latency-batch)")
    p.add_argument("--runs", type=int, default=50, help="bench runs per model at batch 1")
    p.add_argument("--runs32", type=int, default=10, help="bench runs per model at batch 32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--samples", type=int, default=64, help="random calibration inputs for --extra models")
    p.add_argument("--pro-samples", type=int, default=256)
    p.add_argument("--timing-prefix", default="", help="command prefix for the runs that time models")
    p.add_argument("--extra-method", default="reap", choices=["reap", "l1"],
                   help="method for --extra models (l1: no data, no PRO: widths from the table alone, for speed)")
    p.add_argument("--mac-curve", nargs="*", type=float, default=[],
                   help="also prune by MACs at these multiples of the latency prune's MAC fraction, and compare "
                        "accuracy at the latency prune's measured speedup (interpolated on the curve)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "KEEP_LATENCY.md")
    p.add_argument("--plot", type=Path)
    args = p.parse_args()
    PREFIX[:] = shlex.split(args.timing_prefix)
    command = "python tools/bench_keep_latency.py " + " ".join(sys.argv[1:])
    rows, points, equal, reports = [], [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sources = [(name, ROOT / "models" / f"{name}_fmnist.onnx", CALIB, True, None) for name in args.models]
        for extra in args.extra:
            path, _, shape = extra.partition(":")
            path = Path(path)
            sources.append((path.stem, path, random_calib(path, tmp, shape or None, args.samples), False, shape or None))
        for name, model, calib, labelled, shape in sources:
            shape_args = ["--input-shape", shape] if shape else []
            variants = []
            for keep in args.keep:
                out = tmp / f"{name}_lat{keep}.onnx"
                method = "reap" if labelled else args.extra_method
                report = prune(model, out, calib, ["--keep-latency", str(keep), "--latency-batch",
                                                   str(args.latency_batch)], args.threads, 8, shape_args,
                               args.pro_samples, method)
                if "error" in report:
                    rows.append((name, f"latency {keep}", report["error"], *[""] * 7))
                    continue
                ranking = report["latency"].get("pro_ranking")
                ranked = f" ({ranking})" if ranking else ""
                variants.append((f"latency {keep}{ranked}", out, report, (keep, None)))
                macs = report["macs_after"] / report["macs_before"]
                for round_to in (8, 16):
                    for factor in sorted({1.0, *args.mac_curve}):
                        fraction = min(macs * factor, 1.0)
                        out_m = tmp / f"{name}_mac{keep}_{round_to}_{factor}.onnx"
                        mac_report = prune(model, out_m, calib, ["--keep-flops", f"{fraction:.4f}"], args.threads,
                                           round_to, shape_args, args.pro_samples, method)
                        label = f"flops {fraction:.3f}, round-to {round_to}"
                        if "error" in mac_report:
                            rows.append((name, label, mac_report["error"], *[""] * 7))
                        else:
                            variants.append((label, out_m, mac_report, (keep, round_to)))
            if not variants:
                continue
            speed: dict[tuple[str, int], list[float]] = {}
            for _ in range(args.repeats):
                for batch, runs in ((1, args.runs), (32, args.runs32)):
                    bench = onnxprune("bench", model, *[v[1] for v in variants], "--runs", runs, "--threads",
                                      args.threads, "--batch", batch, *shape_args, "--json", timed=True)
                    for r in json.loads(bench.stdout):
                        speed.setdefault((r["model"], r["batch"]), []).append(r["speedup"])
            original = json.loads(onnxprune("eval", model, "--data", TEST, "--json").stdout) if labelled else None
            reports[name] = {label: report for label, _, report, _ in variants}
            results = {}  # out -> (speedup at the latency batch, quality)
            for label, out, report, _ in variants:
                if labelled:
                    quality = json.loads(onnxprune("eval", out, "--data", TEST, "--json").stdout)["accuracy"]
                    quality_text = f"{100 * quality:.2f}% ({100 * (quality - original['accuracy']):+.2f})"
                else:
                    ev = json.loads(onnxprune("eval", out, "--data", calib, "--reference", model, "--json").stdout)
                    quality, quality_text = ev["agreement"], (f"rel. error {ev['rel_error']:.3f}" if ev["agreement"]
                                                              is None else f"{100 * ev['agreement']:.1f}% agree")
                b1, b32 = (speed[str(out), b] for b in (1, 32))
                lat = report.get("latency") or {}
                predicted = f"{1 / lat['predicted_fraction']:.2f}x" if lat else ""
                in_prune = f"{1 / lat['measured_fraction']:.2f}x" if lat.get("measured_fraction") else ""
                rows.append((name, label, f"{100 * report['macs_after'] / report['macs_before']:.1f}%",
                             predicted, in_prune, f"{np.median(b1):.2f}x ({min(b1):.2f}-{max(b1):.2f})",
                             f"{np.median(b32):.2f}x ({min(b32):.2f}-{max(b32):.2f})", quality_text,
                             f"{report['seconds']:.0f} s",
                             f"{lat['table_meta']['seconds']} s" if lat else ""))
                results[out] = (float(np.median(b1 if args.latency_batch == 1 else b32)), quality)
                if labelled:  # agreement on random inputs is not accuracy: kept out of the plot
                    points.append((name, label.split()[0], *results[out]))
            for label, out, _, (keep, round_to) in variants:
                if round_to is not None or not args.mac_curve or not labelled:
                    continue
                speedup, quality = results[out]
                cells = []
                for r in (8, 16):
                    curve = [results[o] for _, o, _, (k, rt) in variants if k == keep and rt == r]
                    acc = at_speed(curve, speedup)
                    cells.append("outside its curve" if acc is None else
                                 f"{100 * acc:.2f}% ({100 * (quality - acc):+.2f})")
                equal.append((name, label, f"{speedup:.2f}x", f"{100 * quality:.2f}%", *cells))
    lines = ["# Pruning to a latency target", "",
             f"Produced by `{command.strip()}` on {time.strftime('%Y-%m-%d')}, on this 2-core machine: onnxruntime "
             f"CPU provider, all graph optimisations, {args.threads} threads. Every row is REAP + PRO "
             f"(--extra models: {'l1, no PRO' if args.extra_method == 'l1' else 'REAP + PRO'}) "
             f"({args.pro_samples} PRO samples) with 1,024 calibration images ({args.samples} random inputs for "
             "unlabelled models). `latency F` prunes to --keep-latency F (table measured here at batch "
             f"{args.latency_batch}; in "
             "brackets the PRO ranking it kept); `flops M` prunes to --keep-flops M, the MAC fraction the latency "
             "prune kept, so the two have the same MAC budget. Speedups are medians of "
             f"{args.repeats} `onnxprune bench` runs (each 3 rounds on fresh sessions of {args.runs} interleaved runs "
             f"at batch 1, {args.runs32} at batch 32) with their range; "
             "'in prune' is what --keep-latency measured on its own at the end of the prune.", "",
             "| model | target | MACs kept | predicted | in prune | speedup batch 1 | speedup batch 32 | accuracy "
             "(vs original) | prune time | table time |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if equal:
        lines += ["", f"Accuracy at equal measured speed (batch {args.latency_batch}): each latency prune beside the "
                  "MAC-based prunes' accuracy interpolated at its median speedup, on the curve of the MAC-based "
                  f"prunes at {', '.join(f'{f:g}' for f in sorted({1.0, *args.mac_curve}))} x its MAC fraction "
                  "(in brackets: the latency prune's accuracy minus the curve's).", "",
                  "| model | target | speedup | accuracy | round-to 8 at that speed | round-to 16 at that speed |",
                  "|---|---|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in equal]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(reports, indent=1) + "\n")  # every prune's --json report
    print("\n".join(lines))
    if args.plot and points:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in dict.fromkeys(n for n, *_ in points):
            for kind, marker in (("latency", "o"), ("flops", "s")):
                xs = [s for n, k, s, _ in points if n == name and k == kind]
                ys = [100 * q for n, k, _, q in points if n == name and k == kind]
                if xs:
                    ax.scatter(xs, ys, marker=marker, label=f"{name} ({'--keep-latency' if kind == 'latency' else '--keep-flops'})")
        ax.set_xlabel(f"measured speedup at batch {args.latency_batch} (onnxruntime CPU)")
        ax.set_ylabel("test accuracy (%) / output agreement")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
