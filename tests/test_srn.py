"""SRN: residual blocks serialise into exactly equivalent models, or are skipped with a reason."""

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from builders import FACTORIES, NetBuilder, random_feeds, run
from checks import assert_same_outputs
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from onnxprune import PruneConfig, analyze, cost_of, normalize, prune
from onnxprune.graph.convert import to_graph, to_model
from onnxprune.passes.srn import serialize_residuals

LIGHT_RESNET50 = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"
MODELS = Path(__file__).parent.parent / "models"


def serialized_exactly(model, feeds=None, input_shapes=None):
    """The SRN model, after checking that it is valid, exactly equivalent and a fixed point."""
    srn, report = serialize_residuals(normalize(model)[0], input_shapes)
    onnx.checker.check_model(srn, full_check=True)
    feeds = random_feeds(model) if feeds is None else feeds
    for x, y in zip(run(model, feeds), run(srn, feeds), strict=True):
        assert np.linalg.norm(y - x) <= 1e-5 * np.linalg.norm(x)
    again, second = serialize_residuals(srn, input_shapes)
    assert second.blocks_serialized == 0
    assert again.SerializeToString() == srn.SerializeToString()
    return srn, report


def ops(model):
    return [n.op_type for n in model.graph.node]


# -- generated ResNets ------------------------------------------------------------------

BLOCKS = st.fixed_dictionaries({
    "bottleneck": st.booleans(),
    "widen": st.booleans(),
    "stride": st.sampled_from([1, 2]),
    "projection": st.booleans(),  # a 1x1 projection even where the identity would fit
    "preact": st.booleans(),
    "act": st.sampled_from(["relu", "relu", "leaky_relu", "prelu", "clip"]),  # "clip" is ReLU6: skipped
    "relu_after_add": st.booleans(),
    "shortcut_first": st.booleans(),  # Add(shortcut, branch) rather than Add(branch, shortcut)
})
RESNETS = st.fixed_dictionaries({
    "channels": st.sampled_from([4, 6]),
    "hw": st.sampled_from([7, 8]),
    "x_from": st.sampled_from(["relu", "maxpool", "conv"]),  # "conv": x of any sign
    "blocks": st.lists(BLOCKS, min_size=1, max_size=3),
    "seed": st.integers(0, 2**16),
})


def resnet(channels, hw, x_from, blocks, seed):
    """Stem conv-bn (-relu, -maxpool), the given residual blocks, GAP -> Gemm head."""
    b = NetBuilder(3, hw=hw, seed=seed)
    x = b.conv_bn_act("input", channels, act=None if x_from == "conv" else "relu")
    if x_from == "maxpool":
        x = b.maxpool(x, k=3, stride=1, pad=1)
    for block in blocks:
        x = residual_block(b, x, **block)
    return b.model(b.gemm(b.flatten(b.gap(x)), 10))


def residual_block(b, x, bottleneck, widen, stride, projection, preact, act, relu_after_add, shortcut_first):
    """conv-bn-act-conv-bn (bottleneck: 1x1, 3x3 with the stride, 1x1) + shortcut; pre-activation
    blocks read act(bn(x)), which their projection reads too."""
    cin = b.channels[x]
    cout = 2 * cin if widen else cin
    h = b.act(b.bn(x), act) if preact else x
    if bottleneck:
        mid = max(2, cout // 2)
        branch = b.conv_bn_act(b.conv_bn_act(h, mid, k=1, act=act), mid, stride=stride, act=act)
        branch = b.conv_bn_act(branch, cout, k=1, act=None)
    else:
        branch = b.conv_bn_act(b.conv_bn_act(h, cout, stride=stride, act=act), cout, act=None)
    shortcut = x
    if projection or widen or stride != 1:
        shortcut = b.bn(b.conv(h, cout, k=1, stride=stride, bias=False))
    y = b.add(shortcut, branch) if shortcut_first else b.add(branch, shortcut)
    return b.relu(y) if relu_after_add else y


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RESNETS)
def test_generated_resnets_serialize_exactly(spec):
    note(f"resnet spec: {spec}")
    model = resnet(**spec)
    srn, report = serialized_exactly(model)
    clipped = sum(block["act"] == "clip" for block in spec["blocks"])
    assert report.blocks_serialized == len(spec["blocks"]) - clipped
    assert len(report.blocks_skipped) == clipped
    assert all("Clip" in s.reason and "ReLU6" in s.reason for s in report.blocks_skipped)
    assert ops(srn).count("Add") == clipped
    if report.blocks_serialized:
        assert cost_of(srn).macs > cost_of(model).macs


@pytest.mark.parametrize("kwargs", [
    {}, {"preact": True}, {"x_from": "maxpool", "stride": 1}, {"preact": True, "projection": False},
])
def test_serialized_blocks_are_ordinary_prunable_groups(kwargs):
    model = FACTORIES["basic_block_net"](**kwargs)
    srn, report = serialized_exactly(model)
    assert report.blocks_serialized == ops(model).count("Add") and report.blocks_skipped == ()
    assert "Add" not in ops(srn)
    # x >= 0 after a Relu passes the Relus; a pre-activation x of any sign joins through a
    # Concat and passes PRelus with slope 1 on its channels.
    assert ("PRelu" in ops(srn)) == ("Concat" in ops(srn)) == kwargs.get("preact", False)
    groups = analyze(srn).groups
    # No residual Add couples producers any more: every conv's channels are its own group.
    assert all(len(g.producers) == 1 for g in groups)
    assert all(g.prunable for g in groups if "gemm" not in g.producers[0])


def test_identity_on_x_of_any_sign_carries_through_prelu():
    b = NetBuilder(3, seed=3)
    x = b.conv("input", 8)  # no activation: x has both signs
    h = b.conv(b.relu(b.conv(x, 8)), 8)
    model = b.model(b.relu(b.add(h, x)))
    srn, report = serialized_exactly(model)
    assert report.blocks_serialized == 1
    prelu = next(n for n in srn.graph.node if n.op_type == "PRelu")
    slope = onnx.numpy_helper.to_array(next(i for i in srn.graph.initializer if i.name == prelu.input[1]))
    assert slope.reshape(-1).tolist() == [0.0] * 8 + [1.0] * 8


def test_single_conv_branch_merges_into_the_conv():
    b = NetBuilder(3, seed=4)
    x = b.relu(b.conv("input", 8))
    model = b.model(b.relu(b.add(x, b.conv(x, 8))))  # Add(x, conv x): conv' = W + Dirac, no wider
    srn, report = serialized_exactly(model)
    assert report.blocks_serialized == 1 and "Add" not in ops(srn)
    assert cost_of(srn).macs == cost_of(model).macs


def test_dirac_exactness_depends_on_padding_and_dilation():
    def block(pads, dilation):
        b = NetBuilder(3, hw=9, seed=5)
        x = b.relu(b.conv("input", 4))
        h = b.conv(b.relu(b.conv(x, 4, dilation=dilation, pad=dilation)), 4)
        model = b.model(b.relu(b.add(h, x)))
        conv = next(n for n in model.graph.node if n.name == "conv1")
        next(a for a in conv.attribute if a.name == "pads").ints[:] = pads
        return model

    _, report = serialized_exactly(block([2, 2, 2, 2], dilation=2))  # Dirac at the centre tap
    assert report.blocks_serialized == 1
    _, report = serialized_exactly(block([0, 0, 2, 2], dilation=1))  # Dirac at the first tap
    assert report.blocks_serialized == 1
    _, report = serialized_exactly(block([1, 1, 3, 3], dilation=2))  # pad 1 falls between taps
    assert report.blocks_serialized == 0
    assert "Dirac" in report.blocks_skipped[0].reason


def test_dynamic_spatial_dims_use_the_padding_rule():
    model = FACTORIES["basic_block_net"](x_from="maxpool")
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
        dim.dim_param = name
    _, report = serialized_exactly(model)
    assert report.blocks_serialized == 4


def test_blocks_that_cannot_be_serialized_say_why():
    b = NetBuilder(3, seed=6)
    x = b.relu(b.conv("input", 8))
    inner = b.relu(b.conv(x, 8))
    y = b.relu(b.add(b.conv(inner, 8), x))  # inner is also a graph output
    y = b.relu(b.add(b.conv(b.conv(y, 8, group=2), 8), y))  # a grouped conv in the branch
    y = b.add(b.conv(b.hard_swish(b.conv(y, 8)), 8), y)  # HardSwish between the convs
    y = b.add(b.conv(b.conv(y, 8, stride=2), 8), b.maxpool(y))  # the shortcut is no 1x1 conv
    model = b.model([b.gemm(b.flatten(b.gap(y)), 10), inner])
    srn, report = serialized_exactly(model)
    assert report.blocks_serialized == 0
    reasons = [s.reason for s in report.blocks_skipped]
    assert "also read outside it" in reasons[0]
    assert "grouped convolution (group=2)" in reasons[1]
    assert "HardSwish" in reasons[2]
    assert "'maxpool0' feeds only the shortcut" in reasons[3]


@pytest.mark.parametrize("expand", [1, 4])
def test_mobilenetv2_blocks_are_skipped_for_relu6(expand):
    model = FACTORIES["mobilenetv2_block_net"](expand=expand, stride=1)
    srn, report = serialized_exactly(model)
    assert report.blocks_serialized == 0
    [skipped] = report.blocks_skipped
    assert "Clip" in skipped.reason and "ReLU6" in skipped.reason


def test_silu_residuals_are_skipped():
    _, report = serialized_exactly(FACTORIES["c2f_like"]())
    assert report.blocks_serialized == 0 and len(report.blocks_skipped) == 2


def test_input_model_is_not_modified_and_report_json():
    normalized, _ = normalize(FACTORIES["bottleneck_net"]())
    before = normalized.SerializeToString()
    srn, report = serialize_residuals(normalized)
    assert normalized.SerializeToString() == before
    assert report.to_json(1, 2) == {
        "blocks_serialized": 2, "blocks_skipped": [], "macs_before": 1, "macs_after": 2,
    }


# -- the onnx wheel's light ResNet-50 topology ------------------------------------------


def thin_light_resnet50(divide=8, seed=0):
    """light_resnet50 (16 bottlenecks, residual Sum, strides in the first 1x1 convs) normalised,
    every width divided by ``divide``, random weights, cut after the average pool (its head
    reshapes to a hard-coded 2048)."""
    normalized, _ = normalize(onnx.load(str(LIGHT_RESNET50)))
    graph = to_graph(normalized)
    rng = np.random.default_rng(seed)
    for conv in [n for n in graph.nodes if n.op == "Conv"]:
        cout, cin, *kernel = conv.inputs[1].shape
        shape = (cout // divide, cin if cin == 3 else cin // divide, *kernel)
        weight = rng.normal(0, np.sqrt(2 / np.prod(shape[1:])), shape)
        conv.inputs[1] = gs.Constant(f"{conv.name}.weight", weight.astype(np.float32))
        conv.inputs[2] = gs.Constant(f"{conv.name}.bias", rng.normal(0, 0.1, shape[0]).astype(np.float32))
    pooled = next(n for n in graph.nodes if n.op == "AveragePool").outputs[0]
    graph.outputs = [pooled.to_variable(np.float32, [1, 2048 // divide, 1, 1])]
    graph.cleanup(remove_unused_graph_inputs=True)
    return to_model(graph, normalized)


def test_light_resnet50_serializes_exactly():
    model = thin_light_resnet50()
    assert ops(model).count("Sum") == 16
    srn, report = serialized_exactly(model, random_feeds(model, batch=1))
    assert report.blocks_serialized == 16 and report.blocks_skipped == ()
    assert "Sum" not in ops(srn)
    assert all(len(g.producers) == 1 for g in analyze(srn).groups)


# -- pruning after SRN ----------------------------------------------------------------------


@pytest.mark.parametrize("name, kwargs", [("basic_block_net", {}), ("basic_block_net", {"preact": True}),
                                           ("bottleneck_net", {})])
def test_pruning_a_serialized_model(name, kwargs):
    """After SRN no group is tied by a shortcut: there are more groups, each with one producer,
    and pruning halves every one of them, the former residual streams included."""
    normalized, _ = normalize(FACTORIES[name](**kwargs))
    srn, _ = serialize_residuals(normalized)
    tied = analyze(normalized).groups
    result = prune(srn, PruneConfig(ratio=0.5, round_to=1))
    onnx.checker.check_model(result.model, full_check=True)
    prunable = [c for c in result.groups if c.group.prunable]
    assert len(prunable) > sum(g.prunable for g in tied) and all(len(c.group.producers) == 1 for c in prunable)
    assert all(c.channels_after == c.group.channels // 2 for c in prunable)
    assert result.macs_before == cost_of(srn).macs
    assert result.macs_after == cost_of(result.model).macs < 0.5 * result.macs_before  # inner convs: a quarter
    [logits] = run(result.model)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


# -- a trained model on real images ----------------------------------------------------------


def reference(name, serialized, skipped):
    path = MODELS / f"{name}_fmnist.onnx"
    return pytest.param(path, serialized, skipped, id=name,
                        marks=pytest.mark.skipif(not path.exists(), reason=f"models/{path.name} not trained yet"))


@pytest.mark.parametrize("path, serialized, skipped", [
    reference("resnet20", 9, 0), reference("resnet56", 27, 0), reference("mobilenetv2", 0, 7)])
def test_reference_models_serialize_exactly_on_real_images(path, serialized, skipped):
    model = onnx.load(str(path))
    images = np.load(MODELS / "fmnist_test.npz")["image"][:64]
    feeds = {model.graph.input[0].name: images}
    srn, report = serialized_exactly(model, feeds)
    assert report.blocks_serialized == serialized and len(report.blocks_skipped) == skipped
    assert all("Clip" in s.reason or "ReLU6" in s.reason for s in report.blocks_skipped)
    assert_same_outputs(model, srn, feeds)
