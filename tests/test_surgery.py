"""Surgery is consistent: every member of a group is cut the same way.

The proof: give the channels to be removed all-zero consumer weights, so they
influence nothing; cutting them must then leave every output unchanged. A
member that was forgotten or cut at the wrong offset breaks the equality (or
the model).
"""

import numpy as np
import onnx
import pytest
from builders import FACTORIES, cnn_models, random_feeds, run
from checks import assert_same_outputs, random_keep, zero_consumer_weights
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune import OnnxPruneError, analyze, cost_of, normalize, prune_channels
from onnxprune.analysis.cost import MacPredictor, model_cost
from onnxprune.methods.l1 import l1_scores, select


def prepared(model):
    normalized, _ = normalize(model)
    return normalized, analyze(normalized)


def check_cut(model, seed, fixed=None):
    """Cut random channels (``fixed``: these channels of the given groups) out of ``model``
    with zeroed consumer weights: the outputs and the predicted MACs must not change."""
    normalized, analysis = prepared(model)
    keep = random_keep(analysis, np.random.default_rng(seed)) | (fixed(analysis) if fixed else {})
    zeroed = zero_consumer_weights(normalized, analysis, keep)
    pruned = prune_channels(zeroed, analysis, keep)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_feeds(model, seed=seed)
    assert_same_outputs(zeroed, pruned, feeds)
    # the MAC prediction used by --keep-flops equals a recount of the rewritten model
    predicted = MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes)).macs(analysis.removed_mask(keep))
    assert predicted == cost_of(pruned).macs
    return normalized, analysis, keep, pruned, feeds


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("seed", [0, 1])
def test_cutting_channels_with_zero_consumer_weights_changes_nothing(name, seed):
    check_cut(FACTORIES[name](seed=seed), seed)


@settings(max_examples=40, deadline=None)
@given(cnn_models(), st.integers(0, 1000))
def test_cutting_is_consistent_on_generated_graphs(model, seed):
    check_cut(model, seed)


def test_the_check_is_not_vacuous():
    """Without zeroing, cutting channels does change the outputs."""
    normalized, analysis, keep, pruned, feeds = check_cut(FACTORIES["basic_block_net"](), 0)
    plain = prune_channels(normalized, analysis, keep)
    assert not np.allclose(run(normalized, feeds)[0], run(plain, feeds)[0], rtol=1e-3, atol=1e-4)
    assert sum(len(k) for k in keep.values()) < sum(analysis.groups[g].channels for g in keep)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_keeping_every_channel_is_an_exact_identity(name):
    normalized, analysis = prepared(FACTORIES[name]())
    keep = {g.id: np.arange(g.channels) for g in analysis.groups if g.prunable}
    pruned = prune_channels(normalized, analysis, keep)
    feeds = random_feeds(normalized)
    for x, y in zip(run(normalized, feeds), run(pruned, feeds)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_deepest_selection_never_empties_a_tensor(name):
    normalized, analysis = prepared(FACTORIES[name]())
    counts = {g.id: 1 for g in analysis.groups if g.prunable}
    keep = select(analysis, l1_scores(analysis), counts)
    removed = analysis.removed_mask(keep)
    assert all(analysis.channel_count(t, removed) > 0 for t in analysis.layouts)
    pruned = prune_channels(normalized, analysis, keep)
    if counts:
        assert cost_of(pruned).params < cost_of(normalized).params
    run(pruned)


def test_refuses_to_empty_or_cut_frozen_groups():
    normalized, analysis = prepared(FACTORIES["conv_chain"]())
    with pytest.raises(OnnxPruneError, match="lose all"):
        prune_channels(normalized, analysis, {0: np.array([], dtype=int)})
    frozen = next(g for g in analysis.groups if not g.prunable)
    with pytest.raises(OnnxPruneError, match="frozen"):
        prune_channels(normalized, analysis, {frozen.id: np.array([0])})
    channels = analysis.groups[0].channels
    for kept in ([0, 0], [-1, 1], [0, channels], [channels + 1]):
        with pytest.raises(OnnxPruneError, match=rf"must be distinct, in 0\.\.{channels - 1}$"):
            prune_channels(normalized, analysis, {0: np.array(kept)})
    # a frozen group may be named with all of its channels (nothing is cut)
    everything = {frozen.id: np.arange(frozen.channels), 0: np.arange(channels - 1)}
    pruned = prune_channels(normalized, analysis, everything)
    assert cost_of(pruned).params < cost_of(normalized).params


def test_split_part_that_would_be_emptied_is_refused():
    normalized, analysis = prepared(FACTORIES["c2f_like"](channels=8))
    g = next(g for g in analysis.groups if len(g.producers) == 3)
    # the Split's first half holds channels 0..3 of this group: dropping all of them empties it
    with pytest.raises(OnnxPruneError, match="no channels"):
        prune_channels(normalized, analysis, {g.id: np.arange(4, g.channels)})


def split_slice_net(opset, sizes):
    """conv0 (8 channels) -> Relu -> a Split in two ('attr': sizes [3, 5] as an attribute,
    'input': as an input, 'equal': none, 'num_outputs': opset 18's attribute), a Slice of
    channels 2..6 and every column (axes [3, 1]; bounds as attributes before opset 10) and,
    from opset 11, a Resize given its output sizes -> a 1x1 conv on each part -> Concat -> conv3,
    written by hand at the given opset (the builder writes each op one way)."""
    rng = np.random.default_rng(opset)
    inits = []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def conv(name, x, cin, cout):
        w = const(f"{name}.weight", rng.standard_normal((cout, cin, 1, 1)))
        b = const(f"{name}.bias", rng.standard_normal(cout))
        return helper.make_node("Conv", [x, w, b], [name], name=name)

    split_inputs, split_attrs = ["relu0"], {}
    if sizes == "attr":
        split_attrs["split"] = [3, 5]
    elif sizes == "input":
        split_inputs.append(const("split0.split", [3, 5], np.int64))
    elif sizes == "num_outputs":
        split_attrs["num_outputs"] = 2
    parts = [3, 5] if sizes in ("attr", "input") else [4, 4]
    bounds = {"starts": [0, 2], "ends": [4, 7], "axes": [3, 1]}
    if opset < 10:
        slice_node = helper.make_node("Slice", ["relu0"], ["slice0"], name="slice0", **bounds)
    else:
        inputs = [const(f"slice0.{role}", v, np.int64) for role, v in bounds.items()]
        slice_node = helper.make_node("Slice", ["relu0", *inputs], ["slice0"], name="slice0")
    resize = []
    if opset >= 11:  # Resize to 2x8x4x6: sizes[1] is rewritten, the width is not the input's
        sizes_ = const("resize0.sizes", [2, 8, 4, 6], np.int64)
        empty = [const(f"resize0.{role}", []) for role in ("roi", "scales")] if opset < 13 else ["", ""]
        resize = [helper.make_node("Resize", ["relu0", *empty, sizes_], ["resize0"], name="resize0"),
                  helper.make_node("Slice", ["resize0", const("slice1.starts", [0], np.int64),
                                            const("slice1.ends", [4], np.int64), const("slice1.axes", [3], np.int64)],
                                   ["slice1"], name="slice1"),
                  conv("conv5", "slice1", 8, 4)]
    nodes = [
        conv("conv0", "input", 3, 8),
        helper.make_node("Relu", ["conv0"], ["relu0"], name="relu0"),
        helper.make_node("Split", split_inputs, ["split0.0", "split0.1"], name="split0", axis=1, **split_attrs),
        slice_node,
        conv("conv1", "split0.0", parts[0], 4),
        conv("conv2", "split0.1", parts[1], 4),
        conv("conv4", "slice0", 5, 4),
        *resize,
        helper.make_node("Concat", ["conv1", "conv2", "conv4", *(["conv5"] if resize else [])], ["concat0"],
                         name="concat0", axis=1),
        conv("conv3", "concat0", 16 if resize else 12, 2),
    ]
    graph = helper.make_graph(
        nodes, "split_slice", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("conv3", TensorProto.FLOAT, [2, 2, 4, 4])], inits)
    ir_version = {9: 4, 10: 5, 11: 6, 13: 7, 18: 8}[opset]
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("opset, sizes", [(9, "attr"), (10, "attr"), (11, "attr"), (11, "equal"), (13, "input"),
                                          (13, "equal"), (18, "num_outputs")])
def test_split_sizes_and_slice_bounds_are_rewritten_the_way_the_opset_writes_them(opset, sizes):
    """Split sizes as an attribute (before opset 13), as an input, or none (equal parts; opset 18's
    num_outputs), and Slice bounds as attributes (before opset 10) or inputs: each is rewritten
    in the form its opset reads, and cutting zero-weight channels changes nothing."""
    model = split_slice_net(opset, sizes)
    # conv0's kept channels: some of each Split part and of the Slice's range, and 0 or 1 (so
    # that the Slice's new channel start is not 0: written over its column start, it would show)
    for seed, kept in enumerate([[0, 3, 4, 6], [1, 2, 5, 7], [0, 1, 2, 3, 4]]):
        def conv0_kept(analysis, kept=kept):
            return {next(g.id for g in analysis.groups if "conv0" in g.producers): np.array(kept)}
        pruned = check_cut(model, seed, conv0_kept)[3]
        assert pruned.opset_import[0].version == opset
        split = next(n for n in pruned.graph.node if n.op_type == "Split")
        if opset < 13:
            assert len(split.input) == 1 and "split" in [a.name for a in split.attribute]
        else:
            assert len(split.input) == 2 and not split.attribute[1:]
            assert [a.name for a in split.attribute] == ["axis"]
        slice_ = next(n for n in pruned.graph.node if n.op_type == "Slice")
        assert (len(slice_.input) == 1) == (opset < 10)


def reshape_gemm_net(shape):
    """conv0 (8 channels, 4x4) -> Relu -> a flattening Reshape to ``shape`` -> Gemm (3 outputs)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), name) for name, s in
             [("conv0.weight", (8, 3, 3, 3)), ("conv0.bias", (8,)), ("gemm0.weight", (3, 128)), ("gemm0.bias", (3,))]]
    inits.append(numpy_helper.from_array(np.array(shape, np.int64), "reshape0.shape"))
    nodes = [
        helper.make_node("Conv", ["input", "conv0.weight", "conv0.bias"], ["conv0"], name="conv0", pads=[1] * 4),
        helper.make_node("Relu", ["conv0"], ["relu0"], name="relu0"),
        helper.make_node("Reshape", ["relu0", "reshape0.shape"], ["reshape0"], name="reshape0"),
        helper.make_node("Gemm", ["reshape0", "gemm0.weight", "gemm0.bias"], ["gemm0"], name="gemm0", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "reshape_gemm", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("gemm0", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("shape", [[0, 128], [2, 128], [-1, 128], [0, -1]])
def test_a_flattening_reshape_gets_the_feature_count_of_the_channels_kept(shape):
    """A Reshape [N, C, H, W] -> [N, C*H*W] that names its feature count gets the kept channels
    times H*W; one that leaves it to -1 is not rewritten."""
    for seed in range(3):
        _, _, keep, pruned, _ = check_cut(reshape_gemm_net(shape), seed)
        (kept,) = keep.values()
        assert 0 < len(kept) < 8
        (new_shape,) = [numpy_helper.to_array(i) for i in pruned.graph.initializer if i.name.startswith("reshape0")]
        expected = list(shape) if shape[1] == -1 else [shape[0], 16 * len(kept)]
        assert new_shape.tolist() == expected
