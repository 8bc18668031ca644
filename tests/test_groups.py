"""Channel groups: what is coupled, what is prunable, what is frozen and why."""

import numpy as np
import onnx
import pytest
from builders import FACTORIES, NetBuilder
from onnx import helper, numpy_helper

from onnxprune import analyze, normalize


def groups_of(model, **kw):
    normalized, _ = normalize(model)
    return analyze(normalized, **kw)


def group_with(analysis, producer):
    [g] = [g for g in analysis.groups if producer in g.producers]
    return g


def test_conv_chain_has_one_group_per_conv_and_the_output_is_frozen():
    a = groups_of(FACTORIES["conv_chain"](widths=(8, 16, 8)))
    assert [(g.channels, g.prunable) for g in a.groups] == [(8, True), (16, True), (8, True), (10, False)]
    assert "graph output" in a.groups[-1].reason


def test_residual_add_couples_both_branches_and_projection():
    a = groups_of(FACTORIES["basic_block_net"](channels=8, blocks=2, projection=True))
    stem = group_with(a, "conv0")
    # stem, and the second conv of both identity blocks share one residual stream
    assert {"conv0", "conv2", "conv4"} <= set(stem.producers)
    assert stem.channels == 8 and stem.prunable
    stage2 = group_with(a, "conv7")  # projection conv of the second stage
    assert len(stage2.producers) >= 2 and stage2.channels == 16


def test_se_gate_joins_the_trunk_and_its_inner_channels_are_a_group():
    a = groups_of(FACTORIES["se_net"](channels=8))
    trunk = group_with(a, "conv0")
    assert set(trunk.producers) == {"conv0", "conv2"}  # trunk conv and the SE expand conv
    inner = group_with(a, "conv1")
    assert inner.producers == ("conv1",) and inner.channels == 2


def test_concat_keeps_groups_apart_with_offsets():
    a = groups_of(FACTORIES["densenet_like"](growth=4, layers=3))
    assert all(len(g.producers) == 1 for g in a.groups)
    # the stem's channels are read by every later dense layer through the Concats
    assert len(group_with(a, "conv0").consumers) >= 3
    # each Concat's channels are its inputs' groups at their offsets: 8 of the stem, then 4 per layer
    stem, dense = group_with(a, "conv0").id, [group_with(a, f"conv{i}").id for i in (1, 2, 3)]
    for i, concat in enumerate(["concat0", "concat1", "concat2"]):
        owners = [int(a.class_group[a.atom_class[atom]]) for atom in a.layouts[concat].atoms]
        assert owners == [stem] * 8 + [g for g in dense[:i + 1] for _ in range(4)]


@pytest.mark.parametrize("use_slice", [False, True])
def test_c2f_split_ties_one_half_to_the_bottleneck_residuals(use_slice):
    a = groups_of(FACTORIES["c2f_like"](channels=8, n=2, use_slice=use_slice))
    g = group_with(a, "conv1")  # the conv before the Split
    assert g.channels == 8 and g.prunable and len(g.producers) == 3


def test_depthwise_conv_passes_channels_through():
    a = groups_of(FACTORIES["mobilenetv2_block_net"](channels=8, expand=4))
    expand = group_with(a, "conv1")
    assert expand.channels == 32 and expand.producers == ("conv1",)
    assert expand.consumers == ("conv3",)  # the depthwise conv in between is not a consumer


def test_grouped_conv_and_channel_shuffle_are_frozen():
    a = groups_of(FACTORIES["grouped_conv_net"](groups=2))
    assert "grouped convolution" in group_with(a, "conv0").reason
    a = groups_of(FACTORIES["shuffle_net"](groups=2))
    assert not any(g.prunable for g in a.groups)


def test_flatten_gemm_reads_blocks_of_hw_rows():
    a = groups_of(FACTORIES["flatten_gemm_net"](channels=4))
    flat = [name for name, lay in a.layouts.items() if lay.block > 1]
    assert flat and all(a.layouts[n].block == 64 for n in flat)  # 8 x 8 map


def test_unknown_op_and_transpose_freeze_with_reasons():
    b = NetBuilder(3)
    x = b.conv("input", 8)
    y = b.conv("input", 8)
    b.nodes.append(helper.make_node("LRN", [x], ["lrn"], size=3, name="lrn"))
    b.channels["lrn"], b.hw["lrn"] = 8, 8
    b.nodes.append(helper.make_node("Transpose", [y], ["t"], perm=[0, 2, 3, 1], name="t"))
    b.channels["t"], b.hw["t"] = 8, 8  # [N, 8, 8, 8] either way
    model = b.model(["lrn", "t"])
    a = groups_of(model)
    assert "LRN node 'lrn'" in group_with(a, "conv0").reason
    assert "Transpose node 't'" in group_with(a, "conv1").reason


def test_shape_read_of_batch_dim_does_not_freeze_but_channel_dim_does():
    def model(index):
        b = NetBuilder(3)
        x = b.relu(b.conv("input", 8))
        b.nodes += [
            helper.make_node("Shape", [x], ["s"], name="shape"),
            helper.make_node("Gather", ["s", "idx"], ["n"], axis=0, name="gather"),
        ]
        b.initializers.append(numpy_helper.from_array(np.array(index, np.int64), "idx"))
        b.nodes.append(helper.make_node("Cast", ["n"], ["nf"], to=onnx.TensorProto.FLOAT, name="cast"))
        out = b.gemm(b.flatten(b.gap(x)), 4)
        b.nodes.append(helper.make_node("Mul", [out, "nf"], ["out"], name="mul"))
        b.channels["out"], b.hw["out"] = 4, None
        return b.model("out")

    assert groups_of(model(0)).groups[0].prunable
    assert "Shape node" in groups_of(model(1)).groups[0].reason


def test_graph_input_channels_are_not_a_group():
    a = groups_of(FACTORIES["conv_chain"]())
    assert all(g.producers for g in a.groups)


def test_old_ir_with_initializers_as_inputs():
    model = FACTORIES["conv_chain"]()
    model.ir_version = 3
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", 9))
    # opset 9 has no Clip inputs etc.; conv_chain uses only Conv/BN/Relu/GAP/Flatten/Gemm
    for init in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    a = groups_of(model)
    assert sum(g.prunable for g in a.groups) == 3
