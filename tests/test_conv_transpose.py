"""ConvTranspose consumers: patches, statistics and least-squares reconstruction of transposed
convolutions (calibration/transposed.py), and the data methods pruning decoders with them."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import FACTORIES, random_feeds, run
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper
from test_sequential import DATA_METHODS, calibration, rel_error

from onnxprune import PruneConfig, analyze, load, methods, normalize, prune
from onnxprune.analysis.consumers import reconstructable
from onnxprune.calibration.layer_stats import stats_from_data
from onnxprune.calibration.statistics import Calibration, StatsMode, augmented, collect, targets
from onnxprune.config import Method
from onnxprune.graph.probe import probe_model
from onnxprune.graph.runtime import run_all, session
from onnxprune.methods.least_squares import error, ridge_solve
from onnxprune.methods.reap import reap_steps
from onnxprune.methods.sequential import prune_sequential
from onnxprune.methods.weights import overlay_weights, theta_of
from oracles import patches, reap_order_naive

DB = Path(__file__).parent / "data" / "real" / "ppocrv3_det_db.onnx"


@st.composite
def transposed_attrs(draw):
    """A 2-D ConvTranspose's attributes and input size: kernels 1-4, strides 1-3, dilations 1-2,
    output_padding below the stride; explicit pads, VALID, SAME_UPPER/SAME_LOWER or an
    output_shape (up to 4 pixels smaller or stride - 1 larger than the unpadded output, as
    onnx and onnxruntime allow)."""
    kernel = [draw(st.integers(1, 4)), draw(st.integers(1, 3))]
    strides = [draw(st.integers(1, 3)) for _ in range(2)]
    dilations = [draw(st.integers(1, 2)) for _ in range(2)]
    mode = draw(st.sampled_from(["pads", "VALID", "SAME_UPPER", "SAME_LOWER", "output_shape"]))
    size = [draw(st.integers(1, 5)), draw(st.integers(2, 5))]
    extra = [draw(st.integers(0, s - 1)) for s in strides]  # onnxruntime refuses more (the spec: max(s, d) - 1)
    full = [s * (n - 1) + o + (k - 1) * d + 1 for n, s, o, k, d in zip(size, strides, extra, kernel, dilations)]
    attrs = {"kernel_shape": kernel, "strides": strides, "dilations": dilations}
    if any(extra):
        attrs["output_padding"] = extra
    if mode == "pads":
        begin = [min(draw(st.integers(0, 3)), f - 1) for f in full]  # at least one pixel out
        attrs["pads"] = begin + [min(draw(st.integers(0, 3)), f - b - 1) for f, b in zip(full, begin)]
    elif mode == "output_shape":
        # onnx's shape inference drops the axes from the first output_shape entry below the
        # input size on: at least that; onnxruntime refuses one that a smaller input would give:
        # at most s - 1 - output_padding beyond the unpadded output
        attrs["output_shape"] = [draw(st.integers(max(n, f - 4), f + s - 1 - o))
                                 for n, f, s, o in zip(size, full, strides, extra)]
        if draw(st.booleans()):
            attrs["auto_pad"] = draw(st.sampled_from(["SAME_UPPER", "SAME_LOWER"]))
    else:
        attrs["auto_pad"] = mode
    return attrs, size


def transposed_net(attrs, size, n=4, m=3, seed=0, combinations=False):
    """input (3 channels) -> Conv 3x3 (n channels) -> [Relu] -> ConvTranspose(attrs, m outputs).
    With ``combinations`` there is no Relu and the conv's last two channels are linear
    combinations of the others (weights and biases), so the ConvTranspose's patches are too."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.5, (n, 3, 3, 3)).astype(np.float32)
    b = rng.normal(0, 0.3, n).astype(np.float32)
    if combinations:
        w[-1], b[-1] = w[0] + 2 * w[1], b[0] + 2 * b[1]
        w[-2], b[-2] = w[2] - w[1], b[2] - b[1]
    wt = rng.normal(0, 0.5, (n, m, *attrs["kernel_shape"])).astype(np.float32)
    bt = rng.normal(0, 0.3, m).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["h"], name="conv", pads=[1, 1, 1, 1])]
    if not combinations:
        nodes.append(helper.make_node("Relu", ["h"], ["r"], name="relu"))
    nodes.append(helper.make_node("ConvTranspose", [nodes[-1].output[0], "wt", "bt"], ["y"], name="convt", **attrs))
    graph = helper.make_graph(
        nodes, "convt", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 3, *size])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", m, None, None])],
        [numpy_helper.from_array(v, name) for name, v in (("w", w), ("b", b), ("wt", wt), ("bt", bt))])
    graph.node[0].input.append("b")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def transposed_consumer(model):
    """The normalised model, its analysis and the ConvTranspose consumer of the conv's group;
    None where onnx's shape inference disagrees with onnxruntime on the output size: then the
    consumer is refused with a reason that gives onnxruntime's size."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    plans, reasons = reconstructable(analysis)
    if reasons:
        inferred = analysis.shapes["y"]
        (actual,) = [o.shape for o in run(model, batch=1)]
        assert tuple(actual[2:]) != tuple(inferred[2:])
        assert reasons[0].endswith(f"output size {tuple(inferred)} is not the {tuple(actual[2:])} its attributes give")
        return normalized, analysis, None
    (c,) = plans[0]
    assert c.op == "ConvTranspose"
    return normalized, analysis, c


def generated_consumer(spec, seed, **kwargs):
    """``transposed_consumer`` of the net of a generated spec; hypothesis counts the refusals."""
    attrs, size = spec
    normalized, analysis, c = transposed_consumer(transposed_net(attrs, size, seed=seed, **kwargs))
    event(f"refused: {c is None}")
    return normalized, analysis, c


def consumer_values(normalized, c, feeds):
    values = run_all(session(probe_model(normalized, [c.input, c.output])), feeds)
    return values[c.input], values[c.output]


def stats_of(normalized, c, feeds, sizes, mode):
    def batches():
        start = 0
        for size in sizes:
            yield {k: v[start:start + size] for k, v in feeds.items()}
            start += size
    fit, _ = collect(normalized, normalized, [c], batches, mode)
    return fit[c.node]


@settings(max_examples=40, deadline=None)
@given(spec=transposed_attrs(), seed=st.integers(0, 2**16))
def test_patches_and_statistics_equal_the_definition(spec, seed):
    """Host patches (the direct conv of the zero-inserted input) are exactly the brute-force
    ones (a loop over input pixels and taps); host and graph statistics, over any batch split,
    are those of the brute-force patches."""
    normalized, _, c = generated_consumer(spec, seed)
    if c is None:
        return
    feeds = random_feeds(normalized, batch=3, seed=seed)
    x, y = consumer_values(normalized, c, feeds)
    expected = patches(x, c)
    np.testing.assert_array_equal(augmented(x, c, np.dtype(np.float32))[:, :-1], expected)
    reference = stats_from_data(expected, targets(y, c))
    for sizes, mode in (([3], StatsMode.HOST), ([1, 2], StatsMode.HOST), ([3], StatsMode.GRAPH),
                        ([2, 1], StatsMode.GRAPH)):
        stats = stats_of(normalized, c, feeds, sizes, mode)
        assert stats.rows == reference.rows
        tol = 1e-9 if mode is StatsMode.GRAPH else 1e-5  # the host's products run in float32 (RunningSums)
        for got, want in ((stats.gram, reference.gram), (stats.cross, reference.cross), (stats.yy, reference.yy)):
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


@settings(max_examples=40, deadline=None)
@given(spec=transposed_attrs(), seed=st.integers(0, 2**16))
def test_least_squares_on_every_channel_reproduces_the_layer_in_onnxruntime(spec, seed):
    """Patches times the weights in W's own layout give onnxruntime's output (the pads, auto_pad
    and output_shape resolved as it does); least squares keeping every channel, written back
    in ConvTranspose layout, reproduces the model's output."""
    normalized, analysis, c = generated_consumer(spec, seed)
    if c is None:
        return
    feeds = random_feeds(normalized, batch=4, seed=seed)
    x, y = consumer_values(normalized, c, feeds)
    theta0 = theta_of(next(n for n in analysis.graph.nodes if n.name == c.node), c)
    scale = max(1.0, float(np.abs(y).max()))
    np.testing.assert_allclose(patches(x, c) @ theta0[:-1] + theta0[-1], targets(y, c), rtol=1e-5, atol=1e-5 * scale)
    # float64 statistics (the graph's): plain least squares amplifies the host's float32 rounding
    stats = stats_of(normalized, c, feeds, [4], StatsMode.GRAPH)
    theta = ridge_solve(stats, np.arange(c.channels), c.taps, theta0, 0.0)
    rebuilt = overlay_weights(normalized, {c.node: (c, theta, np.arange(theta.shape[1]))})
    np.testing.assert_allclose(run(rebuilt, feeds)[0], y, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [2, 2], "strides": [2, 2]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]},
    {"kernel_shape": [3, 2], "strides": [3, 1], "dilations": [2, 1], "pads": [2, 0, 1, 1]},
    {"kernel_shape": [4, 4], "strides": [2, 2], "auto_pad": "SAME_LOWER"},
], ids=["2x2s2", "3x3s2p1op1", "3x2-dilated", "same-lower"])
def test_channels_that_are_linear_combinations_are_removed_without_error(attrs):
    """Two of six channels are linear combinations of the others: least squares on four reproduces
    the layer exactly, and REAP, end to end, removes two and leaves the model's output unchanged."""
    model = transposed_net(attrs, [5, 6], n=6, m=4, seed=3, combinations=True)
    normalized, analysis, c = transposed_consumer(model)
    feeds = random_feeds(normalized, batch=8, seed=4)
    stats = stats_of(normalized, c, feeds, [8], StatsMode.HOST)
    theta0 = theta_of(next(n for n in analysis.graph.nodes if n.name == c.node), c)
    theta = ridge_solve(stats, np.arange(4), c.taps, theta0, 0.0)
    assert error(stats, theta) < 1e-6 * stats.energy  # exact to the float32 rounding of the statistics
    pruned, keep, _ = prune_sequential(normalized, analysis, {0: 4}, methods.get("reap"), calibration(model))
    assert len(keep[0]) == 4
    assert rel_error(model, pruned, random_feeds(model, batch=8, seed=9)) < 1e-5


@settings(max_examples=10, deadline=None)
@given(spec=transposed_attrs(), seed=st.integers(0, 2**16), alpha=st.sampled_from([0.0, 0.01]))
def test_fast_reap_equals_naive_resolving_on_a_transposed_convolution(spec, seed, alpha):
    """REAP's inverse-Gram downdates on a ConvTranspose consumer's statistics remove the channels
    that a fresh ridge solve per candidate and step removes, with the same errors."""
    normalized, analysis, c = generated_consumer(spec, seed, n=5)
    if c is None:
        return
    stats = stats_of(normalized, c, random_feeds(normalized, batch=16, seed=seed), [16], StatsMode.HOST)
    theta0 = theta_of(next(n for n in analysis.graph.nodes if n.name == c.node), c)
    problems = [(stats, c.taps, theta0)]
    naive = reap_order_naive(problems, 5, alpha)
    steps = [(channel, e) for channel, e, _ in reap_steps(problems, 5, alpha)]
    np.testing.assert_array_equal([channel for channel, _ in steps], naive.order)
    np.testing.assert_allclose([e for _, e in steps], naive.errors, rtol=1e-6, atol=1e-9 * stats.energy)


@pytest.mark.parametrize("method", DATA_METHODS)
def test_data_methods_prune_every_group_of_a_unet_decoder(method):
    """Every group of a U-Net-style decoder (two ConvTransposes, a skip Concat) is pruned and
    reconstructed; the model is valid, runs in onnxruntime and is closer to the original than l1's."""
    model = FACTORIES["unet_like"]()
    plans, reasons = reconstructable(analyze(normalize(model)[0]))
    assert not reasons and sum(c.op == "ConvTranspose" for cs in plans.values() for c in cs) == 2
    result = prune(model, PruneConfig(method=method, ratio=0.5, round_to=1), calibration(model))
    assert all(c.channels_after < c.group.channels and not c.not_reconstructable
               for c in result.groups if c.group.prunable)
    assert sum(c.group.prunable for c in result.groups) == 5
    assert {n.node for n in result.layers} >= {"convtranspose0", "convtranspose1"}
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model, batch=32, seed=7)
    assert np.isfinite(run(result.model, feeds)[0]).all()
    l1 = prune(model, PruneConfig(method=Method.L1, ratio=0.5, round_to=1))
    assert rel_error(model, result.model, feeds) < rel_error(model, l1.model, feeds)


@pytest.mark.parametrize("method", [Method.REAP, Method.NU])
def test_pro_chooses_the_widths_of_a_unet_decoder(method):
    """PRO's candidates bind reconstructed ConvTranspose weights into the model (weight variants):
    the widths it chooses meet the MAC budget and the pruned decoder is closer to the original
    than l1's at the same budget."""
    model = FACTORIES["unet_like"]()
    config = PruneConfig(method=method, keep_flops=0.5, round_to=1, pro=True)
    result = prune(model, config, calibration(model))
    assert result.macs_after <= 0.5 * result.macs_before
    assert {n.node for n in result.layers} & {"convtranspose0", "convtranspose1"}
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model, batch=32, seed=7)
    l1 = prune(model, PruneConfig(method=Method.L1, keep_flops=0.5, round_to=1))
    assert rel_error(model, result.model, feeds) < rel_error(model, l1.model, feeds)


def test_reap_prunes_the_groups_that_the_db_detector_s_conv_transposes_read():
    """The PP-OCRv3 DB text detector's head (Conv -> ConvTranspose -> ConvTranspose -> Sigmoid):
    REAP at half the MACs, on 8 random 64x64 images, reconstructs both ConvTransposes and prunes
    the groups they read (35, 36). The widest groups (the backbone's 104-480 channels and the
    FPN's 96-channel sum), where REAP spends most of its time, are excluded to keep it quick."""
    rng = np.random.default_rng(0)
    data = rng.uniform(-1, 1, (8, 3, 64, 64)).astype(np.float32)
    batches = lambda: ({"x": data[i:i + 4]} for i in range(0, 8, 4))  # noqa: E731
    wide = ("Conv_19", "Conv_22", "Conv_31", "Conv_34", "Conv_37", "Conv_40", "Conv_43", "Conv_46", "Conv_56")
    config = PruneConfig(method=Method.REAP, keep_flops=0.5, input_shapes={"x": (1, 3, 64, 64)}, exclude=wide)
    result = prune(load(DB), config, Calibration(batches, 8))
    changes = {c.group.id: c for c in result.groups}
    assert all(changes[g].channels_after < changes[g].group.channels for g in (35, 36))
    assert {"ConvTranspose_0", "ConvTranspose_1"} <= {n.node for n in result.layers}
    assert result.macs_after <= 0.5 * result.macs_before
    (prob,) = run(result.model, {"x": data[:2]})
    assert prob.shape == (2, 1, 64, 64) and np.isfinite(prob).all()
