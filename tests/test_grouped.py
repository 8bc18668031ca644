"""Grouped convolutions (ResNeXt): pruned in blocks by every method, cut exactly, counted exactly,
reconstructed block by block, and selected as brute force selects under equal removal per block."""

import json

from dataclasses import replace

import numpy as np
import onnx
import pytest
from builders import FACTORIES, grouped_conv_net, random_feeds, run
from checks import assert_closest_allowed, assert_same_outputs, random_keep, zero_consumer_weights
from click.testing import CliRunner
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper
from test_selection import consumer, correlated
from test_sequential import _layer_output, calibration, rel_error

from onnxprune import PruneConfig, analyze, normalize, prune, prune_channels
from onnxprune import methods
from onnxprune.analysis.consumers import reconstructable
from onnxprune.analysis.cost import MacPredictor, model_cost
from onnxprune.calibration.statistics import HOLDOUT_EVERY, collect
from onnxprune.cli import main
from onnxprune.config import Method
from onnxprune.methods.grouped import Rounds, join, pieces
from onnxprune.methods.least_squares import columns, ridge_solve
from onnxprune.methods.nu import nu_plan
from onnxprune.methods.reap import reap_order
from onnxprune.methods.sequential import group_first, prune_sequential
from onnxprune.methods.thinet import thinet_order
from onnxprune.methods.weights import overlay_weights, theta_of
from oracles import reap_order_naive

METHODS = [Method.L1, Method.REAP, Method.THINET, Method.NU]


def conv_shapes(model):
    """Per Conv: (group, weight shape, input channels), from the model's own initializers and
    onnx's shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    dims = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
            for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    result = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            result[node.name] = (group, weights[node.input[1]], dims[node.input[0]][1], dims[node.output[0]])
    return result, weights


def recount_macs(model) -> int:
    """MACs by the formula of docs/GUIDE.md, from the pruned model alone: Conv C_out * H_out * W_out *
    (C_in / group) * kh * kw (the weight's dims 1..3), Gemm its weight's size."""
    convs, weights = conv_shapes(model)
    total = sum(int(np.prod(out[1:])) * int(np.prod(w[1:])) for _, w, _, out in convs.values())
    return total + sum(int(np.prod(weights[n.input[1]])) for n in model.graph.node if n.op_type == "Gemm")


def assert_grouped_and_equal(model, groups):
    """Every grouped conv of the original keeps its group attribute, with C_in = group * (its
    weight's dim 1) and C_out a multiple of it: equal widths per group."""
    convs, _ = conv_shapes(model)
    grouped = {name: c for name, c in convs.items() if c[0] > 1}
    assert set(grouped) == set(groups)
    for name, (group, w, c_in, _) in grouped.items():
        assert group == groups[name] and c_in == group * w[1] and w[0] % group == 0, (name, group, w, c_in)


def grouped_of(model):
    return {name: c[0] for name, c in conv_shapes(normalize(model)[0])[0].items() if c[0] > 1}


@pytest.mark.parametrize("method", METHODS)
def test_every_group_of_a_resnext_is_pruned_in_blocks(method):
    """Every prunable group (the 1x1 convs' channels read by the grouped convs, the grouped convs'
    own, the residual streams) is pruned; the model runs, stays grouped with equal widths per
    group, its MACs are those of a recount, and the data methods are closer to the original."""
    model = FACTORIES["resnext_like"](channels=8, groups=4, per_group=4, blocks=2)
    calib = None if method is Method.L1 else calibration(model)
    result = prune(model, PruneConfig(method=method, ratio=0.5, round_to=1), calib)
    assert all(c.channels_after < c.group.channels for c in result.groups if c.group.prunable)
    assert sum(c.group.blocks == 4 for c in result.groups if c.channels_after < c.group.channels) == 4
    assert_grouped_and_equal(result.model, grouped_of(model))
    feeds = random_feeds(model, batch=32, seed=7)
    run(result.model, feeds)
    assert result.macs_after == recount_macs(result.model) < result.macs_before
    if method is not Method.L1:
        assert {"conv2", "conv5"} <= {n.node for n in result.layers}  # the grouped convs, refitted
        l1 = prune(model, PruneConfig(method=Method.L1, ratio=0.5, round_to=1))
        assert rel_error(model, result.model, feeds) < rel_error(model, l1.model, feeds)


@pytest.mark.parametrize("method", [Method.REAP, Method.THINET, Method.NU])
def test_a_group_read_by_a_grouped_conv_and_a_dense_layer_is_refitted_in_both(method):
    """ShuffleNet's stem channels are read by a grouped 1x1 conv and, through the residual Add,
    by the Gemm head, and cut in blocks by that conv and the last grouped conv: both consumers
    are refitted (the dense one couples the blocks), and the blocks stay equal."""
    model = FACTORIES["shuffle_net"](groups=2, channels=16)
    result = prune(model, PruneConfig(method=method, ratio=0.5, round_to=1), calibration(model))
    [change] = [c for c in result.groups if c.group.prunable]
    assert change.channels_after == 8 and change.group.blocks == 2
    assert {n.node for n in result.layers} == {"conv1", "gemm0"}
    assert_grouped_and_equal(result.model, grouped_of(model))
    run(result.model)


@pytest.mark.parametrize("round_to", [1, 3, 8])
def test_keep_flops_fits_widths_in_whole_blocks(round_to):
    """With --round-to r a group cut in b blocks moves by lcm(r, b) channels: the fit meets the
    target and no group can take one more step."""
    model = FACTORIES["resnext_like"](channels=8, groups=4, per_group=6, blocks=2)
    result = prune(model, PruneConfig(keep_flops=0.5, round_to=round_to))
    assert_closest_allowed(model, result, round_to, keep_flops=0.5)
    assert result.macs_after == recount_macs(result.model)


@pytest.mark.parametrize("method", [Method.L1, Method.REAP])
def test_pro_steps_through_whole_blocks(method):
    model = FACTORIES["resnext_like"](channels=8, groups=4, per_group=4, blocks=2)
    result = prune(model, PruneConfig(method=method, keep_flops=0.5, round_to=1, pro=True, pro_samples=16),
                   calibration(model))
    assert result.macs_after <= 0.5 * result.macs_before and result.pro
    assert all(c.channels_after % c.group.blocks == 0 for c in result.groups)
    assert_grouped_and_equal(result.model, grouped_of(model))


@settings(max_examples=30, deadline=None)
@given(groups=st.sampled_from([2, 3, 4, 8]), per_in=st.integers(1, 4), per_out=st.integers(1, 4),
       k=st.sampled_from([1, 3, 5]), seed=st.integers(0, 1000))
def test_cutting_unused_channels_of_a_grouped_conv_changes_nothing(groups, per_in, per_out, k, seed):
    """Channels whose consumer weights are zero influence nothing: cutting them out of a grouped
    conv's input (block by block) and output leaves every output as it was, and the MAC
    prediction equals a recount."""
    assume(per_in > 1 or per_out > 1)  # else depthwise
    model = grouped_conv_net(groups, channels=groups * per_in, out_channels=groups * per_out, k=k, seed=seed)
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    keep = random_keep(analysis, np.random.default_rng(seed))
    zeroed = zero_consumer_weights(normalized, analysis, keep)
    pruned = prune_channels(zeroed, analysis, keep)
    assert_same_outputs(zeroed, pruned, random_feeds(model, seed=seed), rtol=1e-5, atol=1e-6)
    assert_grouped_and_equal(pruned, {"conv1": groups})
    predicted = MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes)).macs(analysis.removed_mask(keep))
    assert predicted == recount_macs(pruned)


def test_unequal_blocks_are_refused():
    normalized, _ = normalize(grouped_conv_net(groups=2, channels=8))
    analysis = analyze(normalized)
    with pytest.raises(Exception, match="as many channels in each of its 2 blocks"):
        prune_channels(normalized, analysis, {0: np.array([0, 1, 2, 4])})  # 3 of block 0, 1 of block 1


def grouped_pieces(model, samples=64):
    """The grouped conv 'conv1' of ``model`` as the consumer of group 0, its pieces (statistics of
    the original model, all output columns) and its original theta."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    plans, _ = reconstructable(analysis)
    [c] = plans[0]
    calib = calibration(model, samples=samples)
    fit, holdout = collect(normalized, normalized, [c], calib.batches, holdout_every=HOLDOUT_EVERY,
                           rows=calib.sampling)
    nothing = np.zeros(len(analysis.class_group), dtype=bool)
    _, problem, read_rows, rows, copies = group_first(analysis, c, 0, nothing, sequential=False)
    theta0 = theta_of(next(n for n in analysis.graph.nodes if n.name == c.node), c)
    ps = pieces(analysis, c, problem, read_rows, rows, copies, fit[c.node], holdout[c.node], theta0,
                np.arange(theta0.shape[1]))
    return normalized, analysis, c, ps, theta0


def test_keeping_every_channel_refits_a_grouped_conv_exactly():
    """One piece per block, reading that block's channels only; least squares on each block's
    statistics with every channel kept gives back the weights, and the model's outputs."""
    model = grouped_conv_net(groups=4, channels=8, out_channels=12)
    normalized, analysis, c, ps, theta0 = grouped_pieces(model)
    assert c.groups == 4 and theta0.shape == (2 * 9 + 1, 12) and len(ps) == 4
    for j, p in enumerate(ps):
        assert np.array_equal(np.flatnonzero(p.copies), [2 * j, 2 * j + 1])
        assert np.array_equal(p.outputs, np.arange(3 * j, 3 * j + 3))
    thetas = [ridge_solve(p.total, np.arange(8), c.taps, p.theta0, 0.0, p.copies) for p in ps]
    theta = join(c, ps, thetas, 12)
    np.testing.assert_allclose(theta, theta0, rtol=1e-4, atol=1e-5)
    refitted = overlay_weights(normalized, {c.node: (c, theta, np.arange(12))})
    assert_same_outputs(normalized, refitted, random_feeds(model, batch=4, seed=5), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["reap", "thinet", "nu"])
def test_the_reported_error_of_a_grouped_conv_is_its_error_in_the_pruned_model(method):
    """Pruning only the group a grouped conv reads: the relative calibration error reported for
    it is the error of the pruned model's layer on the calibration data (the blocks line up),
    every row read (sampled rows would report an estimate)."""
    model = grouped_conv_net(groups=4, channels=16, out_channels=8)
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    calib = replace(calibration(model), rows_per_column=0)
    pruned, keep, notes = prune_sequential(normalized, analysis, {0: 8}, methods.get(method), calib)
    assert np.array_equal(np.bincount(keep[0] // 4), [2, 2, 2, 2])
    [note] = notes
    feeds = {k: np.concatenate([b[k] for b in calib.batches()]) for k in next(calib.batches())}
    y, y_hat = (_layer_output(m, note.node, feeds) for m in (model, pruned))
    assert np.sum((y - y_hat) ** 2) / np.sum(y ** 2) == pytest.approx(note.rel_error, rel=1e-3, abs=1e-7)


def block_problems(seed, groups, per_group, k, dense, m=3):
    """A grouped consumer's pieces over n = groups * per_group channels (piece j: block j's
    columns of the shared patches, copies marking its channels) and, with ``dense``, a consumer
    of the same channels with group 1."""
    rng = np.random.default_rng(seed)
    n = groups * per_group
    x = correlated(rng, 3 * n * k + 10, n * k, rank=max(1, n * k // 2))
    problems = []
    for j in range(groups):
        mine = np.arange(j * per_group, (j + 1) * per_group)
        stats, theta0, _ = consumer(rng, x[:, columns(mine, k)[:-1]], m)
        copies = np.zeros(n, dtype=np.intp)
        copies[mine] = 1
        problems.append((stats, k, theta0, copies))
    if dense:
        stats, theta0, _ = consumer(rng, x, m)
        problems.append((stats, k, theta0))
    return problems, np.repeat(np.arange(groups), per_group)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), groups=st.integers(2, 3), per_group=st.integers(2, 3),
       k=st.sampled_from([1, 4]), dense=st.booleans(), alpha=st.sampled_from([0.0, 1e-3]))
def test_fast_reap_on_grouped_pieces_equals_brute_force_in_rounds(seed, groups, per_group, k, dense, alpha):
    """REAP with inverse-Gram downdates equals re-solving every candidate at every step, both
    removing in rounds (one channel per block each round), with or without a dense consumer of
    the same channels coupling the blocks; every whole round removes one from each block."""
    problems, block = block_problems(seed, groups, per_group, k, dense)
    n = len(block)
    parts = Rounds(block, np.full(groups, per_group - 1))
    fast = reap_order(problems, n, alpha, target=groups, parts=parts)
    naive = reap_order_naive(problems, n, alpha, target=groups, parts=parts)
    np.testing.assert_array_equal(fast.order, naive.order)
    np.testing.assert_allclose(fast.errors, naive.errors, rtol=1e-7)
    for r in range(1, per_group):
        assert np.array_equal(np.bincount(block[fast.order[:r * groups]], minlength=groups), [r] * groups)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), per_group=st.integers(2, 4), k=st.sampled_from([1, 4]))
def test_blocks_of_a_grouped_consumer_are_eliminated_independently(seed, per_group, k):
    """Read by a grouped conv only, each block loses the channels that REAP on that block alone
    removes first: the rounds only interleave independent eliminations."""
    groups = 3
    problems, block = block_problems(seed, groups, per_group, k, dense=False)
    order = reap_order(problems, len(block), 1e-3, target=groups,
                       parts=Rounds(block, np.full(groups, per_group - 1))).order
    for j, (stats, _, theta0, copies) in enumerate(problems):
        alone = reap_order([(stats, k, theta0)], per_group, 1e-3).order
        np.testing.assert_array_equal(order[block[order] == j], j * per_group + alone)


@pytest.mark.parametrize("dense", [False, True])
def test_thinet_and_nu_remove_in_rounds_and_nu_folds_within_a_block(dense):
    problems, block = block_problems(3, groups=3, per_group=3, k=4, dense=dense)
    parts = Rounds(block, np.full(3, 2))
    for plan in (thinet_order(problems, 9, target=3, parts=parts), nu_plan(problems, 9, target=3, parts=parts)):
        assert len(plan.order) == 6
        for r in (1, 2):
            assert np.array_equal(np.bincount(block[plan.order[:3 * r]], minlength=3), [r] * 3)
    assert np.array_equal(block[plan.stand_in], block[plan.order])  # a grouped conv reads no other block


def test_inspect_and_the_report_say_how_grouped_convs_cut_groups(tmp_path):
    path, out = tmp_path / "resnext.onnx", tmp_path / "out.onnx"
    onnx.save(FACTORIES["resnext_like"](channels=8, groups=4, per_group=4, blocks=1), path)
    result = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    groups = json.loads(result.stdout)["groups"]
    assert [(g["blocks"], g["grouped_by"]) for g in groups if g["blocks"] > 1] == [(4, ["conv2"])] * 2
    text = CliRunner().invoke(main, ["inspect", str(path)]).stdout
    assert "4 blocks of 4, equal after pruning (grouped Conv conv2)" in text
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--ratio", "0.5", "--round-to", "1"])
    assert result.exit_code == 0, result.output
    assert "16 -> 8 channels (conv1); 2 of 4 in each of 4 blocks (grouped Conv conv2)" in result.stdout
    weight = next(numpy_helper.to_array(i) for i in onnx.load(out).graph.initializer if i.name.startswith("conv2"))
    assert weight.shape[:2] == (8, 2)


def test_the_latency_table_times_widths_in_whole_blocks(tmp_path):
    """`profile` times each group's segment at the widths PRO steps through, each a model with
    only that group pruned: for a group in 4 blocks, multiples of lcm(round_to, 4), as many
    channels in each block (the surgery refuses anything else)."""
    path, out = tmp_path / "resnext.onnx", tmp_path / "table.json"
    onnx.save(FACTORIES["resnext_like"](channels=8, groups=4, per_group=6, blocks=1), path)
    result = CliRunner().invoke(main, ["profile", str(path), "-o", str(out), "--runs", "3", "--threads", "1",
                                       "--round-to", "3"])
    assert result.exit_code == 0, result.output
    analysis = analyze(normalize(onnx.load(str(path)))[0])
    steps = {int(g): [int(k) for k in widths] for g, widths in json.loads(out.read_text())["steps"].items()}
    blocked = [g for g in steps if analysis.groups[g].blocks == 4]
    assert len(blocked) == 2
    for g in blocked:
        assert sorted(steps[g]) == [12, 24]  # 24 channels, lcm(3, 4) = 12 apart
