"""paraphrase-MiniLM-L3-v2's methods table in docs/RESULTS_transformers.md: sentence-embedding cosine against kept MACs.

    PYTHONPATH=. python tools/bench_minilm.py DIR 2> rows.log   # writes the section and docs/accuracy_vs_macs_minilm.png
    PYTHONPATH=. python tools/bench_minilm.py DIR --rows rows.log   # resume: reuse the cells measured

DIR holds minilm.onnx, calib.npz and test.npz (input_ids and attention_mask; or calib.txt and
test.txt with --tokenizer, as `python tools/make_minilm.py DIR` writes them). onnxprune on heads
and FFN neurons (the defaults), no fine-tuning: l1, thinet, nu and reap without PRO, reap + PRO,
and reap + PRO with --pro-pooled; each prune its own process, one at a time, with its wall time,
peak memory and the machine's load (tools/bench_methods.py), then `onnxprune eval OUT --data
TEST --reference minilm.onnx`: mean and minimum cosine of the sentence embeddings to the
original's, and nearest-neighbour agreement. The section replaces the text between the BEGIN
and END markers of --page; the plot needs matplotlib (the `tools` extra): with the prunes done,
`--rows` redraws it in an environment that has matplotlib.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_methods  # noqa: E402
import bench_vit  # noqa: E402

METHODS = ("l1", "thinet", "nu", "reap", "reap+pro", "reap+pro+pro-pooled")
KEEP = (0.75, 0.5, 0.35)
BEGIN, END = "<!-- BEGIN tools/bench_minilm.py -->", "<!-- END tools/bench_minilm.py -->"


def widths(report: dict) -> str:
    """The kept heads and FFN neurons of each layer, from a prune's --json report (head groups have a head_dim)."""
    groups = [g for g in report["groups"] if g["reason"] is None]
    heads = [str(g["channels_after"]) for g in groups if g["head_dim"]]
    ffn = [str(g["channels_after"]) for g in groups if not g["head_dim"]]
    return f"{'/'.join(heads)} h; {'/'.join(ffn)}"


def cosine(model: Path, reference: Path, test: Path, text: list[str]) -> dict:
    """`onnxprune eval MODEL --data TEST --reference REFERENCE --json`, in a child process."""
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "eval", str(model), "--data", str(test),
                           "--reference", str(reference), "--json", *text], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def prune_and_score(data: Path, method: str, keep: float, text: list[str], tmp: Path) -> dict:
    """One table cell: prune (the load average before and after it), then the embeddings' cosines."""
    suffix = ".txt" if text else ".npz"
    model, calib, test = data / "minilm.onnx", data / f"calib{suffix}", data / f"test{suffix}"
    out = tmp / f"minilm_{method}_{keep}.onnx"
    # l1 reads no data: the sequence length for the MACs is the calibration's, 64 tokens in the page's
    shapes = [] if method != "l1" else ["--input-shape", "input_ids=1,64", "--input-shape", "attention_mask=1,64"]
    load = os.getloadavg()[0]
    report = bench_methods.prune_once(model, method, keep, calib, out, tuple(shapes or text))
    row = {"model": "minilm", "method": method, "keep": keep, "seconds": round(report["seconds"], 1),
           "load": [round(load, 2), round(os.getloadavg()[0], 2)]}
    if "error" in report:
        row["error"] = report["error"]
    else:
        scores = cosine(out, model, test, text)
        row.update(cosine_mean=scores["cosine_mean"], cosine_min=scores["cosine_min"],
                   neighbours=scores["neighbour_agreement"], macs_kept=report["macs_after"] / report["macs_before"],
                   peak_mib=round(report["peak_mib"]), widths=widths(report))
        out.unlink()
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def cell(r: dict) -> str:
    """A table cell: mean / min cosine / NN agreement, what the prune kept and cost, or its error."""
    if "error" in r:
        return r["error"].replace("|", "\\|")
    return (f"{r['cosine_mean']:.3f} / {r['cosine_min']:.3f} / {r['neighbours']:.3f}<br>MACs {100 * r['macs_kept']:.1f}%"
            f", {r['widths']}<br>{r['seconds']:.0f} s, {r['peak_mib'] / 1024:.1f} GB, load {r['load'][0]:.1f}")


def section(rows: list[dict], command: str) -> str:
    """The page's table: a row per method, a column per budget."""
    keeps = sorted({r["keep"] for r in rows if r["method"] != "original"}, reverse=True)
    lines = [f"Produced by `{command}` on {time.strftime('%Y-%m-%d')}. Each cell: mean / minimum cosine of the "
             "sentence embeddings to the original's / nearest-neighbour agreement; the MACs kept (at 64 tokens); "
             "heads per layer (of 12) and FFN neurons per layer (of 1,536); the prune's wall time, peak memory (its "
             "own process, one at a time) and the 1-minute load average as it started, on the shared 2-core machine.",
             "", "| method | " + " | ".join(f"keep {k}" for k in keeps) + " |", "|---|" + "---|" * len(keeps)]
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "original"):
        cells = [next((cell(r) for r in rows if r["method"] == method and r["keep"] == k), "") for k in keeps]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="the folder with minilm.onnx, calib.npz and test.npz")
    p.add_argument("--keep", nargs="+", type=float, default=KEEP)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--tokenizer", type=Path, help="read calib.txt and test.txt with this tokenizer")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--page", type=Path, default=ROOT / "docs" / "RESULTS_transformers.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "accuracy_vs_macs_minilm.png")
    p.add_argument("--rows", type=Path, help="stderr of an earlier run: its cells are not measured again")
    args = p.parse_args()
    text = ["--tokenizer", str(args.tokenizer), "--max-length", str(args.max_length)] if args.tokenizer else []
    done = bench_methods.earlier_rows(args.rows)
    rows = [{"model": "minilm", "method": "original", "keep": 1.0, "macs_kept": 1.0, "cosine_mean": 1.0}]
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            for keep in args.keep:
                rows.append(done.get(("minilm", method, keep))
                            or prune_and_score(args.data, method, keep, text, Path(tmp)))
    command = "PYTHONPATH=. python tools/bench_minilm.py " + " ".join(sys.argv[1:])
    bench_vit.replace_section(args.page, section(rows, command.strip()), BEGIN, END)
    try:
        bench_methods.plot(rows, args.plot, "cosine_mean", "mean cosine to the original's embeddings", 1.0)
    except ImportError:
        print("matplotlib is not installed (pip install '.[tools]'): no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
