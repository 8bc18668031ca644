"""MACs and parameters: absolute counts of known layers (docs/GUIDE.md's conventions), and the
predictors that fit widths against a recount of the pruned model."""

import re

import numpy as np
import pytest
from builders import FACTORIES, NetBuilder
from onnx import helper, numpy_helper

from onnxprune import OnnxPruneError, analyze, cost_of, normalize
from onnxprune.analysis.cost import MacPredictor, ParamPredictor, model_cost, node_macs
from onnxprune.graph.convert import to_graph
from onnxprune.graph.shapes import infer_shapes, unknown_after
from onnxprune.methods.l1 import l1_scores, select
from onnxprune.passes.surgery import prune_channels
from onnxprune.widths.budget import uniform


def every_costed_layer():
    """One of each costed op with sizes chosen so that no two dims are equal (a dim used in
    place of another changes the count): input 3 x 8 x 8."""
    b = NetBuilder(3, hw=8, seed=0)
    x = b.conv("input", 8, k=3)  # dense 3x3, pad 1: 8 x 8 x 8
    x = b.conv(x, 16, k=3, group=2)  # grouped: each output reads 8 / 2 = 4 channels
    x = b.conv(x, 4, k=1, stride=2, pad=0)  # strided 1x1: 4 x 4 x 4
    x = b.conv_transpose(x, 6, k=2, stride=2)  # 4 x 4 x 4 -> 6 x 8 x 8
    x = b.flatten(b.gap(x))  # 6 features
    x = b.gemm(x, 10, trans_b=True)  # B [10, 6]
    x = b.gemm(x, 5, trans_b=False)  # B [10, 5]
    return b.model(b.matmul(x, 3))  # [5, 3] then Add


EXPECTED_MACS = {
    "conv0": 8 * 8 * 8 * 3 * 3 * 3,  # C_out * H * W * C_in * kh * kw
    "conv1": 16 * 8 * 8 * (8 // 2) * 3 * 3,  # C_in / group
    "conv2": 4 * 4 * 4 * 16 * 1 * 1,  # output spatial after the stride
    "convtranspose0": 4 * 4 * 4 * 6 * 2 * 2,  # C_in * prod(in spatial) * C_out * kh * kw
    "gemm0": 10 * 6,  # prod(output) * K, K = B's columns with transB
    "gemm1": 5 * 10,  # K = B's rows without transB
    "matmul0": 3 * 5,
}
EXPECTED_PARAMS = {  # weights + biases
    "conv0": 8 * 3 * 3 * 3 + 8, "conv1": 16 * 4 * 3 * 3 + 16, "conv2": 4 * 16 + 4,
    "convtranspose0": 4 * 6 * 2 * 2 + 6, "gemm0": 10 * 6 + 10, "gemm1": 10 * 5 + 5, "matmul0": 5 * 3,
}


def test_absolute_macs_and_params_of_known_layers():
    model = every_costed_layer()
    cost = cost_of(model)
    assert {n.node: n.op for n in cost.nodes} == {n.name: n.op_type for n in model.graph.node if n.name in EXPECTED_MACS}
    assert {n.node: n.macs for n in cost.nodes} == EXPECTED_MACS
    assert {n.node: n.params for n in cost.nodes} == EXPECTED_PARAMS
    assert cost.macs == sum(EXPECTED_MACS.values())
    assert cost.params == sum(EXPECTED_PARAMS.values()) + 3  # + the MatMul's bias, read by its Add


def test_a_fixed_batch_multiplies_the_macs_not_the_params():
    model = every_costed_layer()
    one, four = cost_of(model), cost_of(model, {"input": (4, 3, 8, 8)})
    assert four.macs == 4 * one.macs == 4 * sum(EXPECTED_MACS.values())
    assert four.params == one.params


def test_params_count_float_initializers_once_and_nothing_else():
    """A weight read by two nodes counts once; integer constants (a Reshape's shape) do not count;
    the same for the parameter predictor."""
    b = NetBuilder(3, hw=4, seed=0)
    x = b.conv("input", 5, k=1)
    y = b.conv("input", 5, k=1)
    b.nodes[-1].input[1] = "conv0.weight"  # conv1 reads conv0's weight too
    b.initializers = [i for i in b.initializers if i.name != "conv1.weight"]
    model = b.model(b.reshape_flatten(b.add(x, y)))
    cost = cost_of(model)
    assert cost.params == 5 * 3 + 5 + 5  # one shared weight, two biases; the int64 shape is not counted
    assert [n.macs for n in cost.nodes] == [5 * 16 * 3, 5 * 16 * 3]
    _check_predictors(model)  # and so does the parameter predictor


def test_matmul_counts_the_inner_dimension():
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", 1, [2, 7])], [helper.make_tensor_value_info("y", 1, [2, 3])],
        [numpy_helper.from_array(np.zeros((7, 3), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    cost = cost_of(model)
    assert cost.macs == 2 * 3 * 7 and cost.params == 21


@pytest.mark.parametrize("name", ["conv_chain", "basic_block_net", "densenet_like", "inception_like", "c2f_like",
                                  "mobilenetv2_block_net", "se_net", "flatten_gemm_net", "convtranspose_net", "unet_like",
                                  "matmul_head_net"])
def test_predictors_match_a_recount_of_the_pruned_model(name):
    """The MAC and parameter predictors (which fit --keep-flops and --keep-params) agree exactly
    with counting the model the surgery writes, at several depths."""
    _check_predictors(FACTORIES[name]())


def test_predictors_match_a_recount_when_a_layer_reads_a_tensor_without_channels():
    """A MatMul on a rank-1 vector (Reshape to [-1]): its input and output have no channel axis,
    so the predictors leave its MACs as they are (and do not ask for their channel counts)."""
    w0 = np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32)
    w1 = np.random.default_rng(1).normal(size=(4, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="conv0"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["b"], name="conv1"),
             helper.make_node("Reshape", ["b", "shape"], ["v"], name="vector"),
             helper.make_node("MatMul", ["v", "wm"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 4, 4])], [helper.make_tensor_value_info("y", 1, [5])],
        [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(np.array([-1], np.int64), "shape"),
         numpy_helper.from_array(np.ones((64, 5), np.float32), "wm")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert _check_predictors(model) == 1  # conv0's channels: the only prunable group


def _check_predictors(model):
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    macs = MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes)).macs
    params = ParamPredictor(analysis).params
    channels = {g.id: g.channels for g in analysis.groups if g.prunable}
    scores = l1_scores(analysis)
    for ratio in (0.0, 0.3, 0.6):
        keep = select(analysis, scores, uniform(channels, ratio))
        recount = cost_of(prune_channels(normalized, analysis, keep))
        removed = analysis.removed_mask(keep)
        assert (macs(removed), params(removed)) == (recount.macs, recount.params), ratio
    return len(channels)


def test_unknown_dims_are_an_error_that_says_how_to_fix_them():
    """A dynamic spatial dim leaves a Conv's output shape unknown: counting asks for --input-shape,
    and with the dim fixed it counts."""
    model = every_costed_layer()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    with pytest.raises(OnnxPruneError, match=re.escape(
            "cannot count MACs of Conv node 'conv0': the shape of its output 'conv0' is unknown; fix dynamic "
            "input dims with --input-shape NAME=d0,d1,... (prune takes them from --calib data when given)")):
        cost_of(model)
    assert cost_of(model, {"input": (1, 3, 8, 8)}).macs == sum(EXPECTED_MACS.values())


def test_an_unknown_weight_shape_is_an_error_that_names_the_weight():
    """A Conv whose weight is a graph input of dynamic shape: the error says it is the weight."""
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8]), helper.make_tensor_value_info("w", 1, [4, 3, "k", "k"])],
        [helper.make_tensor_value_info("y", 1, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(OnnxPruneError, match="cannot count MACs of Conv node 'conv': the shape of its weight 'w' is"):
        cost_of(model)


def test_an_unknown_input_shape_of_a_convtranspose_is_an_error_that_names_the_input():
    """ConvTranspose's MACs come from its input's shape: the error says it is the input."""
    graph = helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up", strides=[2, 2])], "g",
        [helper.make_tensor_value_info("x", 1, [1, 3, "h", "w"])], [helper.make_tensor_value_info("y", 1, None)],
        [numpy_helper.from_array(np.ones((3, 4, 2, 2), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(OnnxPruneError, match="cannot count MACs of ConvTranspose node 'up': the shape of its input 'x'"):
        cost_of(model)


def custom_op_chain():
    """conv_chain with an op of a custom domain (onnx and onnxruntime know neither) after its first Relu."""
    model = FACTORIES["conv_chain"]()
    nodes = list(model.graph.node)
    relu = next(n for n in nodes if n.op_type == "Relu")
    out, relu.output[0] = relu.output[0], relu.output[0] + "_in"
    nodes.insert(nodes.index(relu) + 1, helper.make_node("MyOp", [relu.output[0]], [out], name="myop0",
                                                          domain="my.domain"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    return model


def test_shapes_unknown_after_an_op_onnx_does_not_know_are_an_error_that_names_the_op():
    """Shape inference stops at a custom op: counting the Conv after it fails, naming that op
    (not a dynamic input dim, which --input-shape would fix)."""
    with pytest.raises(OnnxPruneError, match="is unknown after my.domain:MyOp node 'myop0', an op onnx does not"):
        cost_of(custom_op_chain())


def test_a_partial_count_lists_the_layers_after_an_op_onnx_does_not_know():
    """For inspect: the layers behind the custom op are listed with it, the others counted."""
    model = custom_op_chain()
    shapes = infer_shapes(model)
    partial = model_cost(to_graph(model), shapes, unknown_after(model, shapes), partial=True)
    convs = [n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert partial.not_counted == {name: "my.domain:MyOp node 'myop0'" for name in convs[1:]}
    assert [n.node for n in partial.nodes] == convs[:1] and partial.macs == partial.nodes[0].macs > 0


def test_gemm_with_transposed_a_counts_b_inner_dimension():
    """Gemm(A^T, B): A is [K, M] = [7, 2], so K comes from B, not from A's last dim."""
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "b"], ["y"], name="gemm", transA=1)], "g",
        [helper.make_tensor_value_info("a", 1, [7, 2])], [helper.make_tensor_value_info("y", 1, [2, 3])],
        [numpy_helper.from_array(np.zeros((7, 3), np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert cost_of(model).macs == 2 * 3 * 7


def test_ops_that_are_not_counted_cost_zero_macs():
    model = every_costed_layer()
    graph, shapes = to_graph(model), infer_shapes(model)
    counted = {n.name: node_macs(n, shapes) for n in graph.nodes}
    assert {name: m for name, m in counted.items() if m != 0} == EXPECTED_MACS
    assert all(counted[n.name] == 0 for n in graph.nodes if n.op in ("Relu", "GlobalAveragePool", "Flatten", "Add"))
