"""The command line: inspect, prune, their JSON, and bad input."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import FACTORIES
from click.testing import CliRunner

from onnxprune.cli import main


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(FACTORIES["basic_block_net"](), path)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inspect_table(model_path):
    result = invoke("inspect", model_path)
    assert result.exit_code == 0
    assert "prunable" in result.output and "frozen" in result.output
    assert "reaches graph output" in result.output and "MACs" in result.output


def test_inspect_json(model_path):
    result = invoke("inspect", model_path, "--json")
    data = json.loads(result.stdout)
    assert set(data) == {"macs", "params", "groups"}
    assert data["macs"] > 0 and data["params"] > 0
    for g in data["groups"]:
        assert {"id", "channels", "prunable", "reason", "producers", "consumers"} <= set(g)
        assert g["prunable"] == (g["reason"] is None)


def test_prune_json_and_report(model_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = invoke("prune", model_path, "-o", out, "--method", "l1", "--keep-flops", "0.5",
                    "--round-to", "1", "--report", report, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"macs_before", "macs_after", "params_before", "params_after", "groups"} <= set(data)
    assert data["macs_after"] <= 0.5 * data["macs_before"]
    assert all({"id", "channels_before", "channels_after"} <= set(g) for g in data["groups"])
    assert json.loads(report.read_text()) == data
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_prune_human_summary(model_path, tmp_path):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5")
    assert result.exit_code == 0
    assert "MACs" in result.output and "round-to 8" in result.output and "frozen" in result.output


def test_input_shape_fixes_dynamic_dims(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(FACTORIES["conv_chain"](), path)
    small = json.loads(invoke("inspect", path, "--json").stdout)["macs"]
    big = json.loads(invoke("inspect", path, "--json", "--input-shape", "input=4,3,8,8").stdout)["macs"]
    assert big == 4 * small


def test_python_dash_m(model_path):
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "inspect", str(model_path), "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["groups"]


def _truncated(path, tmp_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return bad


def _opset(version):
    def make(path, tmp_path):
        model = onnx.load(path)
        model.opset_import[0].version = version
        bad = tmp_path / f"opset{version}.onnx"
        bad.write_bytes(model.SerializeToString())
        return bad
    return make


def _text(path, tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    return bad


def _missing(path, tmp_path):
    return tmp_path / "missing.onnx"


def _folder(path, tmp_path):
    return tmp_path


@pytest.mark.parametrize(
    "make_input, message",
    [(_missing, "no such file"), (_folder, "not a file"), (_text, "not a readable ONNX model"),
     (_truncated, "ONNX model"), (_opset(99), "unsupported opset 99"), (_opset(3), "unsupported opset 3")],
)
@pytest.mark.parametrize("command", ["inspect", "prune"])
def test_bad_models_are_refused_cleanly(model_path, tmp_path, make_input, message, command):
    bad = make_input(model_path, tmp_path)
    before = digest(bad) if bad.is_file() else None
    out = tmp_path / "out.onnx"
    args = ["inspect", bad] if command == "inspect" else ["prune", bad, "-o", out, "--ratio", "0.5"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code != 0
    assert message in result.output and "error:" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    if before is not None:
        assert digest(bad) == before


@pytest.mark.parametrize(
    "options, message",
    [(["--ratio", "1.5"], "--ratio"), (["--ratio", "-0.5"], "--ratio"), (["--keep-flops", "0"], "--keep-flops"),
     (["--keep-flops", "2"], "--keep-flops"), ([], "exactly one"), (["--ratio", "0.5", "--keep-flops", "0.5"], "exactly one"),
     (["--ratio", "0.5", "--round-to", "0"], "--round-to"), (["--keep-flops", "0.001"], "unreachable"),
     (["--ratio", "0.5", "--input-shape", "nope=1,2"], "no model input named nope"),
     (["--ratio", "0.5", "--input-shape", "input=1,3"], "rank 2 given"),
     (["--ratio", "0.5", "--input-shape", "garbage"], "expected NAME=d0,d1"),
     (["--ratio", "0.5", "--exclude", "no_such_layer*"], "matches no node")],
)
def test_impossible_options_are_refused_cleanly(model_path, tmp_path, options, message):
    before = digest(model_path)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(out), *options])
    assert result.exit_code != 0
    assert message in result.output
    assert not out.exists() and digest(model_path) == before


def test_exclude_is_reported(model_path, tmp_path):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5", "--exclude", "*conv*")
    assert result.exit_code != 0 and "excluded by --exclude" in result.output  # every group excluded
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5", "--exclude", "conv0")
    assert result.exit_code == 0, result.output
    assert "excluded (left as they are)" in result.output and "--exclude 'conv0'" in result.output


def test_output_equal_to_input_is_refused(model_path):
    before = digest(model_path)
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(model_path), "--ratio", "0.5"])
    assert result.exit_code != 0 and "is the input model" in result.output
    assert digest(model_path) == before


@pytest.mark.parametrize("where", ["missing-folder/out.onnx", "."])
def test_unwritable_output_is_refused(model_path, tmp_path, where):
    out = tmp_path / where
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(out), "--ratio", "0.5"])
    assert result.exit_code != 0 and "error:" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_unsupported_model_leaves_no_output(tmp_path):
    path = tmp_path / "shuffle.onnx"
    onnx.save(FACTORIES["shuffle_net"](), path)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--ratio", "0.5"])
    assert result.exit_code != 0 and "no prunable channel group" in result.output
    assert not out.exists()


@pytest.fixture
def calib_path(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize("args, method, pro", [
    (["--keep-flops", "0.6"], "reap", True),  # data and a cost target: reap with PRO
    (["--keep-params", "0.6"], "reap", True),
    (["--keep-flops", "0.6", "--no-pro"], "reap", False),
    (["--ratio", "0.5"], "reap", False),  # no cost target: nothing for PRO to aim at
    (["--keep-flops", "0.6", "--method", "thinet"], "thinet", True),
    (["--keep-flops", "0.6", "--method", "l1"], "l1", True),  # l1 with data: its widths from PRO
])
def test_defaults_with_calibration_data(model_path, calib_path, tmp_path, args, method, pro):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_path, "--round-to", "1",
                    "--pro-samples", "8", "--json", *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == method and bool(report["pro"]) == pro
    assert "warning" not in result.stderr


def test_calib_for_l1_without_pro_is_refused(model_path, calib_path, tmp_path):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_path, "--method", "l1",
                    "--keep-flops", "0.6", "--no-pro")
    assert result.exit_code == 2 and "--calib is for the data methods" in result.output


@pytest.mark.parametrize("method", [[], ["--method", "l1"]])
def test_l1_without_data_warns_that_it_loses_accuracy(model_path, tmp_path, method):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5", "--json", *method)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["method"] == "l1"
    assert "warning" in result.stderr and "loses accuracy" in result.stderr
