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


def test_grouped_conv_cuts_what_it_reads_and_writes_in_blocks():
    """ResNeXt: the 1x1 conv's channels (read by the grouped conv) and the grouped conv's own
    channels are prunable in as many blocks as the conv has groups; the residual stream is not cut."""
    a = groups_of(FACTORIES["resnext_like"](channels=8, groups=4, per_group=4, blocks=2))
    for reader, grouped in (("conv1", "conv2"), ("conv4", "conv5")):
        for g in (group_with(a, reader), group_with(a, grouped)):
            assert g.prunable and g.blocks == 4 and g.grouped_by == (grouped,)
            assert np.array_equal(np.bincount(a.cells[g.id]), [g.channels // 4] * 4)
    stream = group_with(a, "conv0")
    assert stream.prunable and stream.blocks == 1 and stream.id not in a.cells


def test_channel_shuffle_stays_frozen_and_the_residual_is_cut_in_blocks():
    """ShuffleNet: the shuffled channels stay (Reshape/Transpose); the stem's channels, read by the
    first grouped 1x1 conv and added to the last one's, are cut in blocks by both."""
    a = groups_of(FACTORIES["shuffle_net"](groups=2, channels=8))
    assert "moves channels" in group_with(a, "conv1").reason
    stem = group_with(a, "conv0")
    assert stem.prunable and stem.blocks == 2 and set(stem.grouped_by) == {"conv1", "conv3"}


def grouped_readers(groups, channels=12, mult=1, split=False, concat=False):
    """conv(channels) -> one grouped 3x3 conv (``mult`` outputs per input channel) per entry of
    ``groups`` (their outputs added); with
    ``split``, a Split of the conv's channels is also read; with ``concat``, the grouped convs read a
    Concat of the conv's channels and another conv's."""
    b = NetBuilder(3)
    x = b.conv("input", channels)
    if concat:
        x = b.concat([x, b.conv("input", channels)])
    outs = [b.conv(x, b.channels[x] * mult, group=g) for g in groups]
    y = outs[0]
    for other in outs[1:]:
        y = b.add(y, other)
    if split:
        y = b.add(y, b.concat(b.split(x, [b.channels[x] // 2] * 2)[::-1]))
    return b.model(b.gemm(b.flatten(b.gap(y)), 4))


@pytest.mark.parametrize("kwargs, blocks, reason", [
    ({"groups": (2, 4)}, 4, None),  # nested blocks: the finer ones
    ({"groups": (2, 3)}, 1, "do not line up"),  # blocks of 6 and of 4: cells of 4, 2, 2, 4
    ({"groups": (12,), "mult": 2}, 1, "one of its channels per block"),  # depthwise with a multiplier
    ({"groups": (2,), "split": True}, 1, "read in parts"),
    ({"groups": (2,), "concat": True}, 1, "mixes its channels with other groups'"),
])
def test_blocks_that_cannot_be_kept_equal_freeze_the_group(kwargs, blocks, reason):
    a = groups_of(grouped_readers(**kwargs))
    g = group_with(a, "conv0")
    if reason is None:
        assert g.prunable and g.blocks == blocks
    else:
        assert not g.prunable and reason in g.reason


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
