"""`onnxprune bench`: two models side by side, speedup relative to the first."""

import json

import onnx
import pytest
from builders import FACTORIES
from checks import assert_refused
from click.testing import CliRunner

from onnxprune import PruneConfig, prune
from onnxprune.bench import benchmark
from onnxprune.cli import main


def test_benchmark_reports_every_model_and_batch():
    model = FACTORIES["conv_chain"](widths=(16, 32, 16))
    pruned = prune(model, PruneConfig(ratio=0.5, round_to=1)).model
    results = benchmark({"original": model, "pruned": pruned}, batches=(1, 4), runs=3, warmup=1)
    assert [(r.model, r.batch) for r in results] == [("original", 1), ("pruned", 1), ("original", 4), ("pruned", 4)]
    assert all(r.median_ms > 0 and r.p90_ms >= r.median_ms for r in results)
    by = {(r.model, r.batch): r for r in results}
    for batch in (1, 4):  # the speedup is the first model's median over this one's, at the same batch
        first, second = by["original", batch], by["pruned", batch]
        assert first.ratio == 1.0
        assert second.ratio == pytest.approx(first.median_ms / second.median_ms)


def test_bench_cli_json(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    model = FACTORIES["basic_block_net"]()
    onnx.save(model, a)
    onnx.save(prune(model, PruneConfig(ratio=0.5, round_to=1)).model, b)
    result = CliRunner().invoke(main, ["bench", str(a), str(b), "--runs", "3", "--batch", "2", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == [str(a), str(b)]
    assert set(rows[0]) == {"model", "batch", "median_ms", "p90_ms", "speedup"}
    assert rows[1]["speedup"] == pytest.approx(rows[0]["median_ms"] / rows[1]["median_ms"])
    result = CliRunner().invoke(main, ["bench", str(a), "--runs", "0"])
    assert_refused(result, "--runs")


@pytest.mark.parametrize("args, message", [
    (["MISSING"], "no such file"),
    (["A", "A"], "the same model is named twice"),
    (["A", "--batch", "0"], "--runs and --batch must be positive"),
    (["A", "--device", "cuda"], "--device cuda"),
])
def test_bench_refuses_bad_input(tmp_path, monkeypatch, args, message):
    from onnxprune.graph import runtime

    monkeypatch.setattr(runtime, "cuda_works", lambda: False)
    onnx.save(FACTORIES["conv_chain"](), tmp_path / "a.onnx")
    paths = {"A": str(tmp_path / "a.onnx"), "MISSING": str(tmp_path / "missing.onnx")}
    result = CliRunner().invoke(main, ["bench", *[paths.get(a, a) for a in args], "--runs", "1"])
    assert_refused(result, message)
