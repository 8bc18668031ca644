"""Dynamic input dims taken from the data's shapes: prune --calib, eval --data, bench --data."""

import json

import numpy as np
import onnx
import pytest
from builders import FACTORIES
from click.testing import CliRunner

from onnxprune.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture
def dynamic(tmp_path):
    """conv_chain with dynamic height and width, and 16 samples of 3 x 8 x 8."""
    model = FACTORIES["conv_chain"]()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path, data = tmp_path / "dynamic.onnx", tmp_path / "data.npz"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    np.savez(data, input=rng.standard_normal((16, 3, 8, 8)).astype(np.float32), labels=rng.integers(0, 10, 16))
    return path, data


def test_without_data_the_dims_must_be_given(dynamic, tmp_path):
    path, _ = dynamic
    result = invoke("prune", path, "-o", tmp_path / "out.onnx", "--method", "l1", "--keep-flops", "0.5")
    assert result.exit_code == 2 and "--input-shape" in result.output


@pytest.mark.parametrize("method", ["reap", "l1"])
def test_prune_takes_the_dims_from_calib(dynamic, tmp_path, method):
    path, data = dynamic
    out = tmp_path / "out.onnx"
    extra = ["--pro", "--pro-samples", "8"] if method == "l1" else ["--no-pro"]
    result = invoke("prune", path, "-o", out, "--method", method, "--calib", data, "--keep-flops", "0.5",
                    "--round-to", "1", "--json", *extra)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    fixed = json.loads(invoke("inspect", path, "--json", "--input-shape", "input=1,3,8,8").stdout)
    assert report["macs_before"] == fixed["macs"]
    assert report["macs_after"] <= 0.5 * report["macs_before"]
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert dims[2].dim_param == "H"  # the output model stays dynamic


def test_agreeing_input_shape_is_accepted(dynamic, tmp_path):
    path, data = dynamic
    result = invoke("prune", path, "-o", tmp_path / "out.onnx", "--method", "reap", "--calib", data,
                    "--keep-flops", "0.6", "--round-to", "1", "--input-shape", "input=1,3,8,8", "--no-pro")
    assert result.exit_code == 0, result.output


def test_disagreeing_input_shape_is_an_error_naming_both(dynamic, tmp_path):
    path, data = dynamic
    out = tmp_path / "out.onnx"
    result = invoke("prune", path, "-o", out, "--method", "reap", "--calib", data, "--keep-flops", "0.5",
                    "--input-shape", "input=1,3,16,16")
    assert result.exit_code == 2
    assert "--input-shape input=1,3,16,16" in result.output and "[3, 8, 8]" in result.output
    assert "--calib" in result.output and not out.exists()


def test_eval_and_bench_take_the_dims_from_data(dynamic):
    path, data = dynamic
    result = invoke("eval", path, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 16
    result = invoke("bench", path, "--data", data, "--batch", "2", "--runs", "2", "--json")
    assert result.exit_code == 0, result.output
    result = invoke("bench", path, "--batch", "2", "--runs", "2")
    assert result.exit_code == 2 and "--data" in result.output
