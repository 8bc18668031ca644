"""The reference ViT's methods table in docs/RESULTS_transformers.md: accuracy against kept MACs.

    PYTHONPATH=. python tools/bench_vit.py 2> rows.log   # writes the section and docs/accuracy_vs_macs_vit_heads.png
    PYTHONPATH=. python tools/bench_vit.py --rows rows.log   # resume: reuse the cells measured

onnxprune on models/vit_fmnist.onnx, heads and FFN neurons (the defaults), no fine-tuning:
l1, thinet, nu and reap without PRO, and reap + PRO; each prune its own process, with its wall
time and peak memory, as tools/bench_methods.py measures them. Torch-Pruning on the PyTorch model
that file was exported from (tools/compare_torch_pruning.py: L1 magnitude, whole heads and FFN
neurons, uniform ratio), without and after fine-tuning. Accuracy: the full Fashion-MNIST test set.
The section replaces the text between the BEGIN and END markers of --page; the prunes run one at
a time, and the fine-tuning uses --threads torch threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_methods  # noqa: E402

METHODS = ("l1", "thinet", "nu", "reap", "reap+pro")
KEEP = (1.0, 0.75, 0.5, 0.35)
TP, TP_FT = "torch-pruning", "torch-pruning + fine-tuning"
BEGIN, END = "<!-- BEGIN tools/bench_vit.py -->", "<!-- END tools/bench_vit.py -->"


def torch_pruning(keeps: list[float], epochs: int, cache: str, data_dir: str | None, threads: int) -> list[dict]:
    """Torch-Pruning's model at each of ``keeps`` of the MACs: its accuracy before and after fine-tuning
    (torch and Torch-Pruning imported here only: the table and the page need neither)."""
    if not keeps:
        return []
    import numpy as np
    import torch

    import compare_torch_pruning as ctp

    torch.set_num_threads(threads)
    x_train, y_train = ctp.load_fmnist(data_dir or ctp.DEFAULT_DATA_DIR, "train")
    x_test, y_test = ctp.load_fmnist(data_dir or ctp.DEFAULT_DATA_DIR, "test")
    test = torch.from_numpy(x_test), torch.from_numpy(y_test.astype(np.int64))
    original = ctp.load_model("vit", cache)
    rows = []
    for keep in keeps:
        start = time.perf_counter()
        pruned = ctp.torch_prune(original, keep)
        seconds = time.perf_counter() - start
        common = {"model": "vit", "keep": keep, "macs_kept": ctp.macs_of(pruned) / ctp.macs_of(original),
                  "kept": ctp.structure(pruned)}
        with torch.no_grad():
            before = ctp.evaluate(pruned, *test)
        tuned = ctp.finetune(pruned, x_train, y_train, epochs)
        with torch.no_grad():
            after = ctp.evaluate(pruned, *test)
        for r in ({**common, "method": TP, "accuracy": before, "seconds": round(seconds, 1)},
                  {**common, "method": TP_FT, "accuracy": after, "seconds": round(tuned, 1), "epochs": epochs}):
            print(json.dumps(r), file=sys.stderr, flush=True)
            rows.append(r)
    return rows


def cell(r: dict, base: float) -> str:
    """A table cell: the accuracy and what the run cost, or the error the prune gave."""
    if "error" in r:  # the CLI's own `error:` line
        return r["error"].replace("|", "\\|")
    text = f"{100 * r['accuracy']:.2f}% ({100 * (r['accuracy'] - base):+.2f})<br>MACs {100 * r['macs_kept']:.1f}%"
    if r["method"] == TP_FT:
        return text + f", {r['seconds']:.0f} s fine-tuning"
    if r["method"] == TP:
        return text + f" ({r['kept']}), {r['seconds']:.0f} s"
    return text + f", {r['seconds']:.0f} s, {r['peak_mib']} MiB"


def section(rows: list[dict], command: str, epochs: int) -> str:
    """The page's table: a row per method, a column per budget, in the order the rows come."""
    base = next(r["accuracy"] for r in rows if r["method"] == "original")
    keeps = sorted({r["keep"] for r in rows if r["method"] != "original"}, reverse=True)
    lines = [f"Produced by `{command}` on {time.strftime('%Y-%m-%d')} (original {100 * base:.2f}%). "
             "Each cell: test accuracy (points from the original), the MACs kept, and for onnxprune the prune's "
             "wall time and peak memory (its own process, one at a time, on the shared 2-core machine); for "
             "Torch-Pruning the heads/FFN neurons kept in each block (of 4h/256) and the time of the bisection, "
             f"or of the fine-tuning ({epochs} epoch{'s' * (epochs != 1)} of AdamW, lr 5e-4, cosine).", "",
             "| method | " + " | ".join(f"keep {k}" for k in keeps) + " |", "|---|" + "---|" * len(keeps)]
    for method in dict.fromkeys(r["method"] for r in rows if r["method"] != "original"):
        cells = [next((cell(r, base) for r in rows if r["method"] == method and r["keep"] == k), "") for k in keeps]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_section(page: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``text`` between the page's ``begin`` and ``end`` markers."""
    content = page.read_text()
    if begin not in content or end not in content:
        raise SystemExit(f"{page} has no {begin} ... {end} markers")
    head, rest = content.split(begin, 1)
    page.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", nargs="+", type=float, default=KEEP)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--cache", default="/work/cache", help="where tools/train_vit.py saved vit.pt and vit.json")
    p.add_argument("--data-dir", help="Fashion-MNIST [default: tools/train_reference.py's]")
    p.add_argument("--threads", type=int, default=1, help="torch threads for Torch-Pruning's fine-tuning")
    p.add_argument("--page", type=Path, default=ROOT / "docs" / "RESULTS_transformers.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "accuracy_vs_macs_vit_heads.png")
    p.add_argument("--rows", type=Path, help="stderr of an earlier run: its cells are not measured again")
    args = p.parse_args()
    done = bench_methods.earlier_rows(args.rows)
    rows = bench_methods.run(["vit"], args.methods, args.keep, ROOT / "models" / "fmnist_calib.npz",
                             ROOT / "models" / "fmnist_test.npz", ROOT / "models", 1, done)
    rows += torch_pruning([k for k in args.keep if k < 1.0 and ("vit", TP, k) not in done], args.finetune_epochs,
                          args.cache, args.data_dir, args.threads)
    command = "PYTHONPATH=. python tools/bench_vit.py " + " ".join(sys.argv[1:])
    replace_section(args.page, section(rows, command.strip(), args.finetune_epochs))
    bench_methods.plot(rows, args.plot)


if __name__ == "__main__":
    main()
