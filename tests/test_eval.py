"""Evaluation: metrics on data with known answers, comparison with a reference, and `onnxprune eval`."""

import json

import numpy as np
import onnx
import pytest
from builders import FACTORIES, NetBuilder, run
from click.testing import CliRunner

from onnxprune.cli import main
from onnxprune.data import open_data
from onnxprune.errors import OnnxPruneError
from onnxprune.evaluate import OutputDiff, accuracy, agreement, cosines, evaluate, nearest_neighbours, pooled, rel_error, top1

N = 20


@pytest.fixture(scope="module")
def model():
    return FACTORIES["conv_chain"]()


@pytest.fixture(scope="module")
def other():
    """Same inputs and outputs as `model`, other weights."""
    return FACTORIES["conv_chain"](seed=1)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((N, 3, 8, 8)).astype(np.float32)


def logits_of(model, x):
    return run(model, {"input": x})[0]


def invoke(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


def test_metrics():
    logits = np.array([[0.1, 0.9], [2.0, 1.0], [0.0, 3.0]])
    np.testing.assert_array_equal(top1(logits), [1, 0, 1])
    assert accuracy(top1(logits), np.array([1, 1, 1])) == pytest.approx(2 / 3)
    assert agreement(np.array([0, 1, 2, 3]), np.array([0, 1, 0, 0])) == 0.5
    assert rel_error(9.0, 4.0) == 1.5 and rel_error(0.0, 0.0) == 0.0 and rel_error(1.0, 0.0) is None


def test_output_diff_accumulates_exactly():
    rng = np.random.default_rng(1)
    y, y_ref = rng.standard_normal((10, 5)), rng.standard_normal((10, 5))
    diff = OutputDiff()
    for i in range(0, 10, 3):
        diff.add(y[i:i + 3], y_ref[i:i + 3])
    expected = np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref)
    assert rel_error(diff.diff_squares, diff.reference_squares) == pytest.approx(expected, rel=1e-12)
    assert diff.max_abs == np.max(np.abs(y - y_ref))


def test_accuracy_is_one_on_own_predictions(model, x, tmp_path):
    np.savez(tmp_path / "d.npz", input=x, labels=top1(logits_of(model, x)))
    result = evaluate(model, open_data(tmp_path / "d.npz", model, batch_size=6))
    assert result.samples == N and result.accuracy == 1.0
    assert result.agreement is None and result.rel_error is None and result.max_abs_diff is None


def test_accuracy_counts_wrong_labels(model, x, tmp_path):
    labels = top1(logits_of(model, x))
    labels[:7] = (labels[:7] + 1) % 10  # 7 of 20 wrong
    np.savez(tmp_path / "d.npz", input=x, labels=labels)
    assert evaluate(model, open_data(tmp_path / "d.npz", model, batch_size=6)).accuracy == 13 / 20
    assert evaluate(model, open_data(tmp_path / "d.npz", model, limit=10)).accuracy == 3 / 10


def test_reference_same_model(model, x, tmp_path):
    np.save(tmp_path / "d.npy", x)
    result = evaluate(model, open_data(tmp_path / "d.npy", model, batch_size=7), reference=model)
    assert (result.agreement, result.rel_error, result.max_abs_diff) == (1.0, 0.0, 0.0)
    assert result.accuracy is None


def test_reference_other_model(model, other, x, tmp_path):
    np.save(tmp_path / "d.npy", x)
    result = evaluate(model, open_data(tmp_path / "d.npy", model, batch_size=7), reference=other)
    y, y_ref = logits_of(model, x), logits_of(other, x)
    assert result.agreement == np.mean(top1(y) == top1(y_ref))
    assert result.rel_error == pytest.approx(np.linalg.norm(y - y_ref) / np.linalg.norm(y_ref), rel=1e-5)
    assert result.max_abs_diff == pytest.approx(np.max(np.abs(y - y_ref)), rel=1e-5)


def test_reference_with_other_inputs_is_refused(model, x, tmp_path):
    np.save(tmp_path / "d.npy", x)
    wider = onnx.ModelProto()
    wider.CopyFrom(model)
    wider.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 16
    with pytest.raises(OnnxPruneError, match=r"reference model's input 'input' is \[N, 3, 16, 8\] float32, "
                                             r"the model's is \[N, 3, 8, 8\] float32"):
        evaluate(model, open_data(tmp_path / "d.npy", model), reference=wider)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(model)
    renamed.graph.input[0].name = "pixels"
    with pytest.raises(OnnxPruneError, match="reference model's inputs 'pixels' are not the model's 'input'"):
        evaluate(model, open_data(tmp_path / "d.npy", model), reference=renamed)


def test_top1_metrics_need_class_scores(x, tmp_path):
    b = NetBuilder(3)
    feature_map = b.model(b.conv("input", 4))  # output [N, 4, 8, 8]
    np.savez(tmp_path / "d.npz", input=x, labels=np.zeros(N, np.int64))
    result = evaluate(feature_map, open_data(tmp_path / "d.npz", feature_map), reference=feature_map)
    assert (result.accuracy, result.agreement, result.rel_error, result.max_abs_diff) == (None, None, 0.0, 0.0)


def test_reference_same_model_without_labels_has_cosine_one(model, x, tmp_path):
    np.save(tmp_path / "d.npy", x)
    result = evaluate(model, open_data(tmp_path / "d.npy", model, batch_size=7), reference=model)
    assert (result.cosine_mean, result.cosine_min, result.neighbour_agreement) == pytest.approx((1.0, 1.0, 1.0))
    np.savez(tmp_path / "d.npz", input=x, labels=top1(logits_of(model, x)))  # labelled: accuracy, no cosine
    labelled = evaluate(model, open_data(tmp_path / "d.npz", model), reference=model)
    assert labelled.cosine_mean is None and labelled.neighbour_agreement is None


def test_pooling_cosines_and_neighbours_by_hand():
    y = np.array([[[3, 4], [100, -7]], [[1, 0], [0, 1]]], np.float32)  # [2 samples, 2 tokens, 2]
    mask = np.array([[1, 0], [1, 1]])
    np.testing.assert_array_equal(pooled(y, mask), [[3, 4], [0.5, 0.5]])  # the padded token is left out
    np.testing.assert_array_equal(pooled(y), [[51.5, -1.5], [0.5, 0.5]])
    np.testing.assert_array_equal(pooled(y[:, 0]), y[:, 0])  # [N, H]: as it is
    a, b = np.array([[3.0, 4], [1, 0], [0, 0], [0, 0]]), np.array([[3.0, 0], [-2, 0], [0, 0], [1, 1]])
    np.testing.assert_allclose(cosines(a, b), [9 / 15, -1, 1, 0])
    e = np.array([[1.0, 0], [0.9, 0.1], [0, 1], [-1, 0.2]])
    np.testing.assert_array_equal(nearest_neighbours(e), [1, 0, 3, 2])  # (0, 1): 0.11 to row 1, 0.20 to row 3
    np.testing.assert_array_equal(nearest_neighbours(e, block=3), [1, 0, 3, 2])


def masked_pair(tmp_path):
    """Two models of [N, S, 2] features and an attention_mask: the reference passes the features on,
    the model zeroes the second one."""
    from onnx import TensorProto, helper, numpy_helper

    def make(scale):
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 2]),
                  helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", "S"])]
        graph = helper.make_graph([helper.make_node("Mul", ["x", "scale"], ["y"])], "g", inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", 2])],
                                  [numpy_helper.from_array(np.array(scale, np.float32), "scale")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    return make([1, 0]), make([1, 1])


def test_cosine_of_a_known_perturbation_ignores_padding(tmp_path):
    """Sample 0's real token is (3, 4), the model outputs (3, 0): cosine 9 / (5 * 3) = 0.6, whatever the
    padding holds; sample 1's real tokens average to (1, 1) against (1, 0): cosine 1 / sqrt 2."""
    model, reference = masked_pair(tmp_path)
    x = np.array([[[3, 4], [50, -80], [7, 7]], [[2, 0], [0, 2], [-9, 1]]], np.float32)
    mask = np.array([[1, 0, 0], [1, 1, 0]])
    np.savez(tmp_path / "d.npz", x=x, attention_mask=mask)
    result = evaluate(model, open_data(tmp_path / "d.npz", model, batch_size=1), reference)
    assert result.cosine_mean == pytest.approx((0.6 + 2 ** -0.5) / 2) and result.cosine_min == pytest.approx(0.6)
    x[:, 2] = [[1e3, 0], [0, -1e3]]  # other padding: the same cosines
    np.savez(tmp_path / "e.npz", x=x, attention_mask=mask)
    again = evaluate(model, open_data(tmp_path / "e.npz", model), reference)
    assert (again.cosine_mean, again.cosine_min) == pytest.approx((result.cosine_mean, result.cosine_min))
    assert again.rel_error != result.rel_error  # the output error still sees every token


def test_metrics_are_on_the_first_float_output(tmp_path):
    """torch's export of a sentence encoder lists copies of its int64 inputs first: eval compares
    the hidden states after them."""
    from encoders import EncoderSpec, encoder, encoder_feeds

    spec = EncoderSpec(vocab=20, mask=True, echo_inputs=True)
    model, other = encoder(**vars(spec)), encoder(**{**vars(spec), "seed": 1})
    assert model.graph.output[0].name == "input_ids_copy"
    np.savez(tmp_path / "d.npz", **encoder_feeds(spec, batch=6))
    result = evaluate(model, open_data(tmp_path / "d.npz", model), other)
    assert result.rel_error > 0.1 and result.cosine_mean < 0.99 and result.agreement is None


def test_label_out_of_range(model, x, tmp_path):
    np.savez(tmp_path / "d.npz", input=x, labels=np.full(N, 10))
    with pytest.raises(OnnxPruneError, match=r"label 10 of sample 0 is not a class of the model's first output \(0 to 9\)"):
        evaluate(model, open_data(tmp_path / "d.npz", model))


# -- the command


@pytest.fixture
def files(model, other, x, tmp_path):
    onnx.save(model, tmp_path / "model.onnx")
    onnx.save(other, tmp_path / "other.onnx")
    np.savez(tmp_path / "d.npz", input=x, labels=top1(logits_of(model, x)))
    return tmp_path


def test_cli_json(files):
    result = invoke(files / "model.onnx", "--data", files / "d.npz", "--reference", files / "other.onnx",
                    "--batch-size", 8, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == ["samples", "accuracy", "agreement", "rel_error", "max_abs_diff", "cosine_mean", "cosine_min",
                          "neighbour_agreement"]
    assert data["samples"] == N and data["accuracy"] == 1.0
    assert 0 <= data["agreement"] <= 1 and data["rel_error"] > 0 and data["max_abs_diff"] > 0


def test_cli_json_nulls_and_limit(files):
    data = json.loads(invoke(files / "model.onnx", "--data", files / "d.npz", "--limit", 5, "--json").stdout)
    assert data == {"samples": 5, "accuracy": 1.0, "agreement": None, "rel_error": None, "max_abs_diff": None,
                    "cosine_mean": None, "cosine_min": None, "neighbour_agreement": None}


def test_cli_summary(files):
    result = invoke(files / "model.onnx", "--data", files / "d.npz", "--reference", files / "model.onnx")
    assert result.exit_code == 0
    assert "samples       20" in result.stdout and "accuracy      100.00%" in result.stdout
    assert "agreement     100.00%" in result.stdout and "rel_error     0" in result.stdout


def test_cli_summary_without_labels(files, x):
    np.save(files / "x.npy", x)
    result = invoke(files / "model.onnx", "--data", files / "x.npy", "--reference", files / "model.onnx")
    assert result.exit_code == 0
    assert "cosine        1.0000 mean, 1.0000 min" in result.stdout and "neighbours    100.00%" in result.stdout


def test_cli_image_folder(files):
    from PIL import Image

    for i, name in enumerate(["a/0.png", "b/1.png", "b/2.png"]):
        (files / "img" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (40 * i, 0, 255)).save(files / "img" / name)
    result = invoke(files / "model.onnx", "--data", files / "img", "--resize", "8,8", "--mean", "0.5,0.5,0.5",
                    "--std", "0.2", "--layout", "NCHW", "--channels", "3", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["samples"] == 3


@pytest.mark.parametrize("args, message", [
    (["--data", "absent.npz"], "absent.npz: no such file or folder"),
    (["--data", "bad.npz"], "array 'input' of shape [2, 3, 4, 4] does not match the model input 'input' [N, 3, 8, 8]"),
    (["--data", "d.npz", "--resize", "8,8"], "apply to image folders only"),
    (["--data", "d.npz", "--reference", "absent.onnx"], "absent.onnx: no such file"),
])
def test_cli_errors(files, args, message):
    np.savez(files / "bad.npz", input=np.zeros((2, 3, 4, 4), np.float32))
    args = [files / a if a.endswith((".npz", ".onnx")) else a for a in args]
    result = invoke(files / "model.onnx", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stdout == ""
