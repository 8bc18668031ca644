"""Helpers of the benchmark scripts under tools/ that decide numbers written in docs/."""

import importlib.util
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


at_speed = _tool("bench_keep_latency").at_speed


def test_accuracy_at_a_speed_is_linear_between_the_two_points_that_bracket_it():
    curve = [(2.2, 0.86), (1.6, 0.91), (1.9, 0.89)]  # unordered, as the runs come
    assert at_speed(curve, 2.0) == pytest.approx(0.89 + (0.86 - 0.89) * (0.1 / 0.3))
    assert at_speed(curve, 1.75) == pytest.approx(0.90)
    assert at_speed(curve, 1.9) == pytest.approx(0.89)  # on a point: that point


def test_points_of_equal_speed_are_averaged_and_a_speed_outside_the_curve_has_no_accuracy():
    curve = [(1.8, 0.90), (1.8, 0.88), (2.0, 0.85)]
    assert at_speed(curve, 1.8) == pytest.approx(0.89)
    assert at_speed(curve, 1.9) == pytest.approx((0.89 + 0.85) / 2)
    assert at_speed(curve, 1.79) is None
    assert at_speed(curve, 2.01) is None
    assert at_speed([(1.8, 0.9)], 1.9) is None


def test_a_profiled_kernel_maps_back_to_the_graph_node_it_runs():
    graph_node = _tool("profile_operators").graph_node
    writers, names = {"relu_out": "relu1", "x": "conv0"}, {"relu1", "conv0", "gemm"}
    assert graph_node("gemm", writers, names) == "gemm"  # kept its name
    assert graph_node("fused gemm", writers, names) == "gemm"  # an activation fused into it
    assert graph_node("relu_out_nchwc", writers, names) == "relu1"  # NCHWc: named by the tensor it writes
    assert graph_node("ReorderOutput", writers, names) is None  # a layout change onnxruntime inserted


def test_the_vit_table_replaces_only_the_text_between_its_markers(tmp_path):
    bench_vit = _tool("bench_vit")
    page = tmp_path / "page.md"
    page.write_text(f"# head\n\nkept\n\n{bench_vit.BEGIN}\nold table\n{bench_vit.END}\n\n## tail\nkept too\n")
    rows = [{"model": "vit", "method": "original", "keep": 1.0, "accuracy": 0.88, "macs_kept": 1.0},
            {"model": "vit", "method": "reap", "keep": 0.5, "accuracy": 0.87, "macs_kept": 0.499, "seconds": 30.2,
             "peak_mib": 400},
            {"model": "vit", "method": "nu", "keep": 0.5, "error": "error: cannot reach 0.5 | of the MACs"}]
    for _ in range(2):  # a rerun replaces its own table
        bench_vit.replace_section(page, bench_vit.section(rows, "python tools/bench_vit.py", 1))
    text = page.read_text()
    assert text.startswith("# head\n\nkept\n\n") and text.endswith(f"{bench_vit.END}\n\n## tail\nkept too\n")
    assert "old table" not in text and text.count(bench_vit.BEGIN) == 1
    assert "| reap | 87.00% (-1.00)<br>MACs 49.9%, 30 s, 400 MiB |" in text
    assert "| nu | error: cannot reach 0.5 \\| of the MACs |" in text  # the error, and the table stays a table


def test_the_vit_table_refuses_a_page_without_its_markers(tmp_path):
    bench_vit = _tool("bench_vit")
    page = tmp_path / "page.md"
    page.write_text("no markers\n")
    with pytest.raises(SystemExit):
        bench_vit.replace_section(page, "table")
    assert page.read_text() == "no markers\n"
