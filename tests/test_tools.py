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


def test_the_minilm_table_replaces_its_own_section_and_leaves_the_vit_table_alone(tmp_path):
    bench_minilm, bench_vit = _tool("bench_minilm"), _tool("bench_vit")
    page = tmp_path / "page.md"
    vit = f"{bench_vit.BEGIN}\nvit table\n{bench_vit.END}"
    page.write_text(f"# head\n\n{bench_minilm.BEGIN}\nold\n{bench_minilm.END}\n\n{vit}\n")
    report = {"groups": [{"reason": "LayerNorm", "channels_after": 384, "head_dim": 0},
                         {"reason": None, "channels_after": 11, "head_dim": 32},
                         {"reason": None, "channels_after": 976, "head_dim": 0},
                         {"reason": None, "channels_after": 10, "head_dim": 32},
                         {"reason": None, "channels_after": 880, "head_dim": 0}]}
    rows = [{"model": "minilm", "method": "original", "keep": 1.0, "macs_kept": 1.0, "cosine_mean": 1.0},
            {"model": "minilm", "method": "reap+pro", "keep": 0.5, "cosine_mean": 0.9671, "cosine_min": 0.9312,
             "neighbours": 0.7168, "macs_kept": 0.4996, "widths": bench_minilm.widths(report), "seconds": 67.2,
             "peak_mib": 2355, "load": [2.04, 3.1]},
            {"model": "minilm", "method": "nu", "keep": 0.5, "error": "error: cannot reach | 0.5"}]
    for _ in range(2):
        bench_vit.replace_section(page, bench_minilm.section(rows, "python tools/bench_minilm.py"),
                                  bench_minilm.BEGIN, bench_minilm.END)
    text = page.read_text()
    assert text.startswith(f"# head\n\n{bench_minilm.BEGIN}\n") and text.endswith(f"{bench_minilm.END}\n\n{vit}\n")
    assert "old" not in text and text.count(bench_minilm.BEGIN) == 1
    assert ("| reap+pro | 0.967 / 0.931 / 0.717<br>MACs 50.0%, 11/10 h; 976/880<br>67 s, 2.3 GB, load 2.0 |"
            in text)
    assert "| nu | error: cannot reach \\| 0.5 |" in text
