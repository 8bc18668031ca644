"""Per-operator kernel times of a model in onnxruntime's profiler: the raw material for a latency
model with one term per operator (docs/KEEP_LATENCY.md, "Equal speed on a curve").

    python tools/profile_operators.py models/vgg16_fmnist.onnx --threads 2 --runs 200

Runs the normalised model (as onnxprune times it: all graph optimisations, no spinning) with
profiling on, and prints each kernel's median time with the graph node it maps back to. After
fusion and the NCHWc layout pass, onnxruntime names a kernel by the tensor it writes
(``<tensor>_nchwc``) or ``fused <node>``; the map follows that name to the node that writes
the tensor (for a Conv fused with its activation, the activation). Profiling adds a cost per operator, so the medians are each operator's share of a
run, not its latency (the profiled run is printed beside them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from onnxprune import normalize
from onnxprune.graph.runtime import session
from onnxprune.graph.shapes import batch_feeds


def graph_node(kernel: str, writers: dict[str, str], names: set[str]) -> str | None:
    """The graph node a profiled kernel stands for: itself, the node fused into it, or the writer
    of the tensor an NCHWc kernel is named after."""
    for candidate in (kernel, kernel.removeprefix("fused ")):
        if candidate in names:
            return candidate
    return writers.get(kernel.removesuffix("_nchwc"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--batch", type=int, default=1)
    args = p.parse_args()
    model, _ = normalize(onnx.load(args.model))
    feeds = batch_feeds(model, args.batch, {}, 0)
    if feeds is None:
        raise SystemExit("the model has dynamic input dims other than the batch")
    with tempfile.TemporaryDirectory() as tmp:
        timed = session(model, threads=args.threads, profile=str(Path(tmp) / "profile"))
        for _ in range(args.runs):
            timed.run(None, feeds)
        events = json.loads(Path(timed.end_profiling()).read_text())
    kernels: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kernels[e["name"].removesuffix("_kernel_time"), e["args"].get("op_name", "")].append(e["dur"])
    runs = [e["dur"] for e in events if e.get("name") == "model_run"]
    writers = {o: n.name for n in model.graph.node for o in n.output}
    names = {n.name for n in model.graph.node}
    rows = sorted(((float(np.median(d)), op, k) for (k, op), d in kernels.items()), reverse=True)
    for ms, op, kernel in rows:
        print(f"{ms:8.1f} us  {op:16s} {kernel[:70]:70s} -> {graph_node(kernel, writers, names) or '?'}")
    print(f"{len(rows)} kernels, medians summing to {sum(r[0] for r in rows):.0f} us; profiled run median "
          f"{np.median(runs):.0f} us ({args.runs} runs, {args.threads} threads, batch {args.batch})")


if __name__ == "__main__":
    main()
