"""`onnxprune bench`: two models side by side, speedup relative to the first."""

import json

import onnx
from builders import FACTORIES
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
    assert results[0].ratio == 1.0


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
    result = CliRunner().invoke(main, ["bench", str(a), "--runs", "0"])
    assert result.exit_code != 0 and "--runs" in result.output
