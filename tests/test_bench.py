"""`onnxprune bench`: two models side by side, speedup relative to the first."""

import json
import weakref

import onnx
import pytest
from builders import FACTORIES
from checks import assert_refused
from click.testing import CliRunner

from onnxprune import PruneConfig, prune
from onnxprune.bench import benchmark
from onnxprune.cli import main
from onnxprune.graph import timing
from onnxprune.graph.timing import round_speedups


def test_benchmark_reports_every_model_and_batch():
    model = FACTORIES["conv_chain"](widths=(16, 32, 16))
    pruned = prune(model, PruneConfig(ratio=0.5, round_to=1)).model
    results = benchmark({"original": model, "pruned": pruned}, batches=(1, 4), runs=3, warmup=1, rounds=1)
    assert [(r.model, r.batch) for r in results] == [("original", 1), ("pruned", 1), ("original", 4), ("pruned", 4)]
    assert all(r.median_ms > 0 and r.p90_ms >= r.median_ms for r in results)
    by = {(r.model, r.batch): r for r in results}
    for batch in (1, 4):  # one round: the speedup is the first model's median over this one's, at the same batch
        first, second = by["original", batch], by["pruned", batch]
        assert first.ratio == 1.0
        assert second.ratio == pytest.approx(first.median_ms / second.median_ms)


def test_bench_cli_json(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    model = FACTORIES["basic_block_net"]()
    onnx.save(model, a)
    onnx.save(prune(model, PruneConfig(ratio=0.5, round_to=1)).model, b)
    result = CliRunner().invoke(main, ["bench", str(a), str(b), "--runs", "3", "--rounds", "1", "--batch", "2",
                                       "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == [str(a), str(b)]
    assert set(rows[0]) == {"model", "batch", "median_ms", "p90_ms", "speedup"}
    assert rows[1]["speedup"] == pytest.approx(rows[0]["median_ms"] / rows[1]["median_ms"])
    result = CliRunner().invoke(main, ["bench", str(a), "--runs", "0"])
    assert_refused(result, "--runs")
    result = CliRunner().invoke(main, ["bench", str(a), "--rounds", "0"])
    assert_refused(result, "--rounds")


def test_every_round_times_fresh_sessions_and_the_speedup_is_the_median_of_the_rounds_ratios(monkeypatch):
    """Three rounds whose per-round ratios are 2.0, 1.67 and 2.0: the speedup is 2.0, their median,
    not the ratio of the medians (2.0 / 1.2 = 1.67); each round's sessions are made afresh, after
    the previous round's are gone."""
    from onnxprune import bench

    model = FACTORIES["conv_chain"](widths=(8, 8))
    made, alive = [], weakref.WeakSet()
    seconds = [1.0, 0.5, 2.0, 1.2, 3.0, 1.5]  # (original, pruned) per round, one timed run each

    class Session:
        def run(self, outputs, feeds):
            return None

    def fresh(model, providers, threads, name):
        made.append(len(alive))  # sessions still alive when this one is made
        session = Session()
        alive.add(session)
        return session

    monkeypatch.setattr(bench, "optimized_session", fresh)
    clock = iter([t for i, d in enumerate(seconds) for t in (10.0 * i, 10.0 * i + d)])  # start, end of each run
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    results = benchmark({"original": model, "pruned": model}, batches=(1,), runs=1, warmup=1, rounds=3)
    assert made == [0, 1, 0, 1, 0, 1, 0, 1]  # the checking pair, then one pair per round
    original, pruned = results
    assert original.ratio == 1.0 and pruned.ratio == pytest.approx(2.0)
    assert original.median_ms == pytest.approx(2000.0) and pruned.median_ms == pytest.approx(1200.0)
    assert round_speedups([[[1.0], [0.5]], [[2.0], [1.2]], [[3.0], [1.5]]]) == ([2000.0, 1200.0],
                                                                               [1.0, pytest.approx(2.0)])


@pytest.mark.parametrize("args, message", [
    (["MISSING"], "no such file"),
    (["A", "A"], "the same model is named twice"),
    (["A", "--batch", "0"], "--runs, --rounds and --batch must be positive"),
    (["A", "--device", "cuda"], "--device cuda"),
])
def test_bench_refuses_bad_input(tmp_path, monkeypatch, args, message):
    from onnxprune.graph import runtime

    monkeypatch.setattr(runtime, "cuda_works", lambda: False)
    onnx.save(FACTORIES["conv_chain"](), tmp_path / "a.onnx")
    paths = {"A": str(tmp_path / "a.onnx"), "MISSING": str(tmp_path / "missing.onnx")}
    result = CliRunner().invoke(main, ["bench", *[paths.get(a, a) for a in args], "--runs", "1"])
    assert_refused(result, message)
