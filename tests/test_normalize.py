"""Normalisation is exact: BN folding, constants to initializers, Identity removal."""

import numpy as np
import onnx
import pytest
from builders import FACTORIES, NetBuilder, cnn_models, random_feeds, run
from checks import assert_same_outputs
from hypothesis import given, settings
from onnx import helper, numpy_helper

from onnxprune import normalize


def ops(model):
    return [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_normalize_is_exact_on_every_factory(name):
    model = FACTORIES[name]()
    normalized, _ = normalize(model)
    onnx.checker.check_model(normalized, full_check=True)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_batchnorm_after_conv_is_folded():
    model = FACTORIES["conv_chain"](bn=True)
    normalized, report = normalize(model)
    assert report.folded_batchnorms == 3
    assert "BatchNormalization" not in ops(normalized)


def test_batchnorm_folds_into_gemm_conv_transpose_and_grouped_conv():
    b = NetBuilder(3, seed=1)
    x = b.bn(b.conv("input", 8, bias=False))
    x = b.bn(b.conv(x, 8, group=2))
    x = b.relu(b.bn(b.conv_transpose(x, 6)))
    x = b.bn(b.gemm(b.flatten(b.gap(x)), 12))
    model = b.model(b.gemm(x, 4))
    normalized, report = normalize(model)
    assert report.folded_batchnorms == 4
    assert "BatchNormalization" not in ops(normalized)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_batchnorm_with_nothing_foldable_before_it_stays():
    b = NetBuilder(3)
    x = b.relu(b.conv("input", 8))
    model = b.model(b.bn(x))  # after a Relu: not foldable
    normalized, report = normalize(model)
    assert report.folded_batchnorms == 0
    assert "BatchNormalization" in ops(normalized)


def test_batchnorm_whose_input_is_shared_stays():
    b = NetBuilder(3)
    y = b.conv("input", 8)
    model = b.model([b.bn(y), b.relu(y)])
    normalized, _ = normalize(model)
    assert "BatchNormalization" in ops(normalized)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_shared_weight_is_copied_not_changed_for_other_readers():
    b = NetBuilder(3)
    x = b.conv("input", 8)
    model = b.model([b.bn(x), b.relu(b.conv("input", 8))])
    # make the second conv read the first conv's weight initializer
    second = [n for n in model.graph.node if n.op_type == "Conv"][1]
    second.input[1] = "conv0.weight"
    normalized, _ = normalize(model)
    assert_same_outputs(model, normalized, random_feeds(model))


def test_constants_become_initializers_and_identities_go():
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Identity", ["w"], ["w2"]),
        helper.make_node("Conv", ["input", "w2"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Identity", ["y"], ["y2"]),
        helper.make_node("Relu", ["y2"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    normalized, report = normalize(model)
    assert ops(normalized) == ["Conv", "Relu"]
    assert report.removed_identities >= 1
    assert [o.name for o in normalized.graph.output] == ["out"]
    assert normalized.ir_version == 7 and normalized.opset_import[0].version == 13
    assert_same_outputs(model, normalized, random_feeds(model))


def test_identity_feeding_a_graph_output_keeps_the_output_name():
    b = NetBuilder(3)
    model = b.model(b.identity(b.relu(b.conv("input", 4))))
    normalized, _ = normalize(model)
    assert "Identity" not in ops(normalized)
    assert [o.name for o in normalized.graph.output] == [o.name for o in model.graph.output]
    assert_same_outputs(model, normalized, random_feeds(model))


def test_input_model_is_not_modified():
    model = FACTORIES["basic_block_net"]()
    before = model.SerializeToString()
    normalize(model)
    assert model.SerializeToString() == before


@settings(max_examples=25, deadline=None)
@given(cnn_models())
def test_normalize_is_exact_on_generated_graphs(model):
    normalized, _ = normalize(model)
    onnx.checker.check_model(normalized, full_check=True)
    feeds = random_feeds(model, seed=3)
    for x, y in zip(run(model, feeds), run(normalized, feeds)):
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5)
