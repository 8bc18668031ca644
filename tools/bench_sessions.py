"""How much a measured speedup depends on the sessions that measured it, and on onnxruntime's threading.

    python tools/bench_sessions.py ORIGINAL.onnx PRUNED.onnx --processes 3 --pairs 4

Part 1 (sessions): in each of --processes fresh Python processes, --pairs times, a fresh pair of
sessions (the project's timing sessions: all optimisations, --threads intra-op threads, idle
threads not spinning) times ORIGINAL and PRUNED interleaved (--runs runs each, batch 1) and
prints both medians and the speedup. If the speedups of pairs in one process differ as much as
those of different processes, a session's speed is drawn when it is made, and one pair of
sessions is one draw (why `onnxprune bench` and --keep-latency's checks time in rounds on
fresh sessions).

Part 2 (threading): each model alone in its own session, for 1 and --threads threads, with idle
threads spinning (onnxruntime's default) and not: the median, the speedup, and the share of the
process's CPU time spent in the kernel (thread wake-ups), in one process; then the two
interleaved with spinning on but stopped when a run returns (`session.force_spinning_stop`).
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort

from onnxprune.graph.runtime import session
from onnxprune.graph.shapes import batch_feeds
from onnxprune.graph.timing import interleaved


def pairs(original: str, pruned: str, count: int, runs: int, threads: int) -> None:
    models = [onnx.load(original), onnx.load(pruned)]
    feeds = batch_feeds(models[0], 1, {}, 0)
    for _ in range(count):
        sessions = [session(m, threads=threads) for m in models]
        times = interleaved(sessions, [feeds, feeds], runs)
        a, b = (1000 * float(np.median(t)) for t in times)
        halves = [float(np.median(times[0][h::2]) / np.median(times[1][h::2])) for h in (0, 1)]
        print(f"  pair: original {a:.3f} ms, pruned {b:.3f} ms, speedup {a / b:.2f}x "
              f"(odd and even runs: {halves[0]:.2f}x, {halves[1]:.2f}x)", flush=True)
        del sessions


def alone(model: onnx.ModelProto, feeds: dict, threads: int, spin: bool, runs: int) -> tuple[float, float]:
    """Median ms of ``runs`` runs of one session, and the kernel's share of the CPU time they took."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    run = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(20):
        run.run(None, feeds)
    before, times = resource.getrusage(resource.RUSAGE_SELF), []
    for _ in range(runs):
        start = time.perf_counter()
        run.run(None, feeds)
        times.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_SELF)
    system, user = after.ru_stime - before.ru_stime, after.ru_utime - before.ru_utime
    return 1000 * float(np.median(times)), system / max(system + user, 1e-9)


def threading(original: str, pruned: str, runs: int, threads: int) -> None:
    models = [onnx.load(original), onnx.load(pruned)]
    feeds = batch_feeds(models[0], 1, {}, 0)
    for n in sorted({1, threads}):
        for spin in (False, True):
            (a, sa), (b, sb) = (alone(m, feeds, n, spin, runs) for m in models)
            print(f"  {n} thread(s), spinning {'on ' if spin else 'off'}: original {a:.3f} ms (kernel {sa:.0%}), "
                  f"pruned {b:.3f} ms (kernel {sb:.0%}), speedup {a / b:.2f}x", flush=True)
    # spinning within a run, stopped when it returns: interleaved sessions do not compete
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    sessions = [ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                for m in models]
    a, b = (1000 * float(np.median(t)) for t in interleaved(sessions, [feeds, feeds], runs))
    print(f"  {threads} thread(s), spinning on, stopped after each run, interleaved: original {a:.3f} ms, "
          f"pruned {b:.3f} ms, speedup {a / b:.2f}x", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("original")
    p.add_argument("pruned")
    p.add_argument("--processes", type=int, default=3)
    p.add_argument("--pairs", type=int, default=4, help="fresh session pairs per process")
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--_pairs", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._pairs:
        return pairs(args.original, args.pruned, args.pairs, args.runs, args.threads)
    print(f"sessions: {args.processes} processes x {args.pairs} fresh pairs, {args.threads} threads, "
          f"spinning off, {args.runs} interleaved runs, batch 1")
    for i in range(args.processes):
        print(f" process {i + 1}", flush=True)
        subprocess.run([sys.executable, __file__, args.original, args.pruned, "--_pairs", "--pairs", str(args.pairs),
                        "--runs", str(args.runs), "--threads", str(args.threads)], check=True)
    print(f"threading: each model alone, {args.runs} runs, batch 1")
    threading(args.original, args.pruned, args.runs, args.threads)


if __name__ == "__main__":
    main()
