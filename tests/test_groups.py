"""Channel groups: what is coupled, what is prunable, what is frozen and why."""

import numpy as np
import onnx
import pytest
from builders import FACTORIES, NetBuilder, random_feeds
from checks import assert_same_outputs, random_keep, zero_consumer_weights
from onnx import TensorProto, helper, numpy_helper

from onnxprune import analyze, normalize, prune_channels


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


def grouped_readers(groups, channels=12, mult=1, split=False, concat=False, twice=False):
    """conv(channels) -> one grouped 3x3 conv (``mult`` outputs per input channel) per entry of
    ``groups`` (their outputs added); with
    ``split``, a Split of the conv's channels is also read; with ``concat``, the grouped convs read a
    Concat of the conv's channels and another conv's; with ``twice``, a Concat of the conv's
    channels with themselves."""
    b = NetBuilder(3)
    x = b.conv("input", channels)
    if concat:
        x = b.concat([x, b.conv("input", channels)])
    if twice:
        x = b.concat([x, x])
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
    ({"groups": (2,), "twice": True}, 1, "holds only some of its channels, or some twice"),
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


@pytest.mark.parametrize("shape_attrs, index, frozen", [
    ({}, 0, False),  # Gather of the batch dim
    ({}, 1, True),  # Gather of the channel dim
    ({}, None, True),  # the whole shape (Cast): the channel dim with it
    ({"start": 1}, 0, True),  # Shape from dim 1: entry 0 is the channel dim
    ({"start": 2}, 1, False),  # Shape of the spatial dims only
])
def test_shape_read_freezes_the_channels_only_where_their_count_is_used(shape_attrs, index, frozen):
    """Shape(x) -> [Gather(index)] -> Cast, multiplied into the output: the channels of x stay
    exactly when the entries read include x's channel count."""
    b = NetBuilder(3)
    x = b.relu(b.conv("input", 8))
    b.nodes.append(helper.make_node("Shape", [x], ["s"], name="shape", **shape_attrs))
    read = "s"
    if index is not None:
        b.nodes.append(helper.make_node("Gather", ["s", "idx"], ["n"], axis=0, name="gather"))
        b.initializers.append(numpy_helper.from_array(np.array(index, np.int64), "idx"))
        read = "n"
    b.nodes.append(helper.make_node("Cast", [read], ["nf"], to=onnx.TensorProto.FLOAT, name="cast"))
    out = b.gemm(b.flatten(b.gap(x)), 4)
    b.nodes.append(helper.make_node("Mul", [out, "nf"], ["out"], name="mul"))
    b.channels["out"], b.hw["out"] = 4, None
    g = groups_of(b.model("out")).groups[0]
    if frozen:
        assert "its channel count is read by Shape node 'shape'" in g.reason
    else:
        assert g.prunable


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


def model_of(b, outputs, inputs=(), domains=()):
    """The builder's graph with more graph inputs (value infos) and ops of custom ``domains``;
    not checked (onnx does not know custom ops)."""
    graph = helper.make_graph(b.nodes, "groups_test", [b._value_info("input"), *inputs],
                              [b._value_info(o) for o in outputs], b.initializers)
    opsets = [helper.make_opsetid("", b.opset), *(helper.make_opsetid(d, 1) for d in domains)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=b.ir_version)


def node(b, op, inputs, name, channels=None, hw=None, outputs=None, **attrs):
    """Appends one node named ``name`` (its output too, unless ``outputs``); records the output's
    channels and size when given (else its shape is left undeclared)."""
    b.nodes.append(helper.make_node(op, inputs, outputs or [name], name=name, **attrs))
    if channels is not None:
        b.channels[name], b.hw[name] = channels, hw
    return name


def graph_input(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_then(read, opset=17, inputs=(), domains=()):
    """conv0 (8 channels) -> Relu -> whatever ``read(b, x)`` adds, its output the graph's;
    ``inputs``: more graph inputs it reads."""
    b = NetBuilder(3, opset=opset)
    return model_of(b, [read(b, b.relu(b.conv("input", 8)))], inputs, domains)


def if_branches(b, x):
    """An If (condition from the input) whose branches read x from the outer graph."""
    node(b, "ReduceMean", ["input"], "mean", keepdims=0)
    node(b, "Greater", ["mean", b._const("zero", 0.0)], "cond")
    branches = {
        branch: helper.make_graph([helper.make_node(op, [x], [f"{branch}_out"])], branch, [],
                                  [helper.make_tensor_value_info(f"{branch}_out", TensorProto.FLOAT, None)])
        for branch, op in (("then", "Relu"), ("else", "Sigmoid"))
    }
    return node(b, "If", ["cond"], "branch", then_branch=branches["then"], else_branch=branches["else"])


def unknown_shape_added(b, x):
    """x + (an op of a custom domain, times 2): the second term's shape is unknown."""
    b.nodes.append(helper.make_node("MyOp", ["input"], ["u"], name="myop", domain="my.domain"))
    node(b, "Mul", ["u", b._const("two", 2.0)], "twice")
    return node(b, "Add", [x, "twice"], "add", 8, 8)


def bn_of_scale(b, x):
    """BatchNormalization of x with its scale read from a graph input."""
    params = [b._const(role, np.full(8, v)) for role, v in (("bias", 0.0), ("mean", 0.0), ("var", 1.0))]
    return node(b, "BatchNormalization", [x, "scale", *params], "bn_w", 8, 8)


def ints(b, **values):
    """One int64 initializer of a single value per keyword."""
    return [b._const(name, [v], np.int64) for name, v in values.items()]


def graph_input_added():
    """input (3 channels) + conv0(input, 3 channels): conv0's channels are tied to the input's."""
    b = NetBuilder(3)
    x = b.add("input", b.conv("input", 3))
    return b.model(b.gemm(b.flatten(b.gap(x)), 4))


def layouts_differ():
    """Flatten(conv0) + Gemm(GAP(conv0)) on 2x2 maps: 32 features either way, but one is 8
    channels of 4 features, the other 32 channels."""
    b = NetBuilder(3, hw=2)
    x = b.relu(b.conv("input", 8))
    return b.model(b.gemm(b.add(b.flatten(x), b.gemm(b.flatten(b.gap(x)), 32)), 4))


@pytest.mark.parametrize("model, reason", [
    (lambda: conv_then(lambda b, x: node(b, "Conv", [x, "w"], "conv_w", 4, 8, kernel_shape=[1, 1]),
                       inputs=[graph_input("w", [4, 8, 1, 1])]),
     "Conv node 'conv_w' (non-constant weight or bias)"),
    (lambda: conv_then(lambda b, x: node(b, "Gemm", [b.flatten(b.gap(x)), "w"], "gemm_w", 4),
                       inputs=[graph_input("w", [8, 4])]),
     "Gemm node 'gemm_w' (needs a constant weight and bias vector, and no transA)"),
    (lambda: conv_then(lambda b, x: node(b, "MatMul", [x, b._const("m", np.eye(8))], "matmul", 8, 8)),
     "MatMul node 'matmul' (reads axis 3; its channels lie on axis 1)"),
    (lambda: conv_then(bn_of_scale, inputs=[graph_input("scale", [8])]),
     "BatchNormalization node 'bn_w' (non-constant parameters or training outputs)"),
    (lambda: conv_then(lambda b, x: node(b, "Flatten", [x], "flatten2", axis=2)),
     "Flatten node 'flatten2' (map of unknown size, or not on axis 1)"),
    (lambda: conv_then(lambda b, x: node(b, "Slice", [x, *ints(b, starts=0, ends=8, axes=1, steps=2)],
                                         "every_other", 4, 8)),
     "Slice node 'every_other' (steps through channels)"),
    (lambda: conv_then(lambda b, x: node(b, "Transpose", [x], "nhwc", perm=[0, 2, 3, 1])),
     "Transpose node 'nhwc' (moves the channel axis)"),
    (lambda: conv_then(lambda b, x: node(b, "Squeeze", [x, "axes"], "squeeze"),
                       inputs=[graph_input("axes", [1], TensorProto.INT64)]),
     "Squeeze node 'squeeze' (axes not constant)"),
    (lambda: conv_then(lambda b, x: node(b, "Unsqueeze", [x, *ints(b, axes=1)], "unsqueeze")),
     "Unsqueeze node 'unsqueeze' (moves the channel axis)"),
    (lambda: conv_then(lambda b, x: node(b, "ReduceMean", [x], "mean", 1, 8, axes=[1])),
     "ReduceMean node 'mean' (reduces over channels)"),
    (lambda: conv_then(lambda b, x: node(b, "Softmax", [x], "softmax", 8, 8), opset=11),
     "Softmax node 'softmax' (normalises across channels)"),  # before opset 13 the axis is 1
    (lambda: conv_then(lambda b, x: node(b, "Pad", [x, b._const("pads", [0, 1, 0, 0, 0, 1, 0, 0], np.int64)],
                                         "pad", 10, 8)),
     "Pad node 'pad' (pads the batch or channel axis)"),
    (lambda: conv_then(if_branches), "read inside a subgraph of If node 'branch'"),
    (lambda: conv_then(unknown_shape_added, domains=["my.domain"]), "Add node 'add' (an input of unknown shape)"),
    (graph_input_added, "comes from graph input 'input'"),
    (layouts_differ, "Add node 'add0' (combines tensors of different channel layouts)"),
], ids=["conv_weight", "gemm_weight", "matmul_4d", "bn_params", "flatten_axis2", "slice_step", "transpose",
        "squeeze_axes", "unsqueeze_axis1", "reduce_channels", "softmax_opset11", "pad_channels", "if",
        "unknown_shape", "graph_input", "layouts_differ"])
def test_what_cannot_be_cut_safely_freezes_the_channels_with_its_reason(model, reason):
    g = group_with(groups_of(model()), "conv0")
    assert not g.prunable and reason in g.reason


def assert_cut_changes_nothing(model, seed=0):
    """Cutting random channels of every prunable group, their consumer weights zeroed first,
    leaves the outputs as they were (test_surgery.py's check, on one model)."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    keep = random_keep(analysis, np.random.default_rng(seed))
    zeroed = zero_consumer_weights(normalized, analysis, keep)
    assert_same_outputs(zeroed, prune_channels(zeroed, analysis, keep), random_feeds(model, seed=seed))


def conv_through(op, opset=17):
    """conv0 (8 channels) -> Relu -> whatever ``op(b, x)`` adds -> GAP -> Flatten -> Gemm(4)."""
    b = NetBuilder(3, opset=opset)
    return b.model(b.gemm(b.flatten(b.gap(op(b, b.relu(b.conv("input", 8))))), 4))


def split_rows(b, x):
    """x split into its top and bottom halves, put back the other way round."""
    node(b, "Split", [x, b._const("halves", [4, 4], np.int64)], "split", axis=2, outputs=["top", "bottom"])
    return node(b, "Concat", ["bottom", "top"], "concat", 8, 8, axis=2)


def two_convs_stacked(b, x):
    """conv0's map and conv1's (both 8 channels), one above the other (Concat on axis 2)."""
    return node(b, "Concat", [x, b.relu(b.conv("input", 8))], "concat", 8, 8, axis=2)


def flattened_maps_joined():
    """Flatten(conv0) and Flatten(conv1), 4 channels of 8x8 each, joined and read by a Gemm."""
    b = NetBuilder(3)
    maps = [b.flatten(b.relu(b.conv("input", 4))) for _ in range(2)]
    return b.model(b.gemm(b.concat(maps), 4))


def residual_of_features():
    """conv0 -> GAP -> Flatten -> gemm0(16) -> Relu, plus gemm1(16) of that, -> gemm2(4): an Add of
    2-D tensors ties gemm0's and gemm1's features."""
    b = NetBuilder(3)
    h = b.relu(b.gemm(b.flatten(b.gap(b.relu(b.conv("input", 8)))), 16))
    return b.model(b.gemm(b.add(h, b.gemm(h, 16)), 4))


@pytest.mark.parametrize("model, producer, tied", [
    (lambda: conv_through(lambda b, x: node(b, "Pad", [x], "pad", 8, 10, pads=[0, 0, 1, 1, 0, 0, 1, 1]), opset=10),
     "conv0", ()),  # pads as an attribute
    (lambda: conv_through(lambda b, x: b.pad(x)), "conv0", ()),  # pads as an input
    (lambda: conv_through(lambda b, x: node(b, "Pad", [x, b._const("pads", [1, 1, 1, 1], np.int64), "",
                                                      b._const("axes", [-2, -1], np.int64)], "pad", 8, 10), opset=18),
     "conv0", ()),  # only some axes padded (opset 18)
    (lambda: conv_through(lambda b, x: node(b, "ReduceMean", [x], "mean", 8, 1, axes=[2, 3])), "conv0", ()),
    (lambda: conv_through(lambda b, x: node(b, "ReduceSum", [x, b._const("axes", [-2, -1], np.int64)], "sum", 8, 1)),
     "conv0", ()),
    (lambda: conv_through(lambda b, x: node(b, "Softmax", [x], "softmax", 8, 8), opset=13), "conv0", ()),  # axis -1
    (lambda: conv_through(split_rows), "conv0", ()),
    (lambda: conv_through(two_convs_stacked), "conv0", ("conv1",)),
    (flattened_maps_joined, "conv0", ()),
    (residual_of_features, "gemm0", ("gemm1",)),
], ids=["pad_opset10", "pad", "pad_axes_opset18", "reduce_mean", "reduce_sum_axes_input", "softmax_opset13",
        "split_rows", "concat_rows", "concat_flattened", "add_2d"])
def test_ops_that_keep_channels_apart_pass_them_through_and_cut_exactly(model, producer, tied):
    """Pads of the spatial axes, reductions over them, Softmax over the last axis, Split/Concat
    along a spatial axis (which ties the maps stacked), Concat of flattened maps, Add of 2-D
    features: the channels stay prunable, and cutting them through the op is exact."""
    m = model()
    g = group_with(groups_of(m), producer)
    assert g.prunable and set(g.producers) == {producer, *tied}
    assert_cut_changes_nothing(m)


def test_channels_of_unknown_count_are_not_taken_for_a_depthwise_conv_input_nor_joined():
    """The input's channel count is dynamic: conv0 (group 8, one input channel per group) may not
    be taken for depthwise (its own channels, one per block, stay), and the Concat of conv1 with
    the input cannot track the input's channels, so conv1's stay too."""
    b = NetBuilder(8)
    x = b.conv(b.conv("input", 8, group=8), 8)
    model = b.model(b.concat([x, "input"]))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "C"
    a = groups_of(model)
    assert "grouped Conv node 'conv0' has one of its channels per block" in group_with(a, "conv0").reason
    assert "Concat node 'concat0' (joins channels that cannot be tracked)" in group_with(a, "conv1").reason


def test_single_channel_maps_added_are_one_group():
    b = NetBuilder(3)
    x = b.add(b.conv("input", 1), b.conv("input", 1))
    g = group_with(groups_of(b.model(b.gemm(b.flatten(b.gap(x)), 4))), "conv0")
    assert g.producers == ("conv0", "conv1") and g.channels == 1 and not g.prunable
