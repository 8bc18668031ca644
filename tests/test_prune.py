"""Choosing how many and which channels: ratios, --keep-flops, --round-to, L1."""

import sys

import numpy as np
import pytest
from builders import FACTORIES, NetBuilder, cnn_models, random_feeds, unprunable_net
from checks import assert_closest_allowed
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import OnnxPruneError, PruneConfig, analyze, cost_of, normalize, prune
from onnxprune.config import Method
from onnxprune.analysis.cost import MacPredictor, model_cost
from onnxprune.calibration.statistics import Calibration
from onnxprune.methods.l1 import l1_scores, select
from onnxprune.widths.budget import fit_budget, kept_count, uniform


def calibration(model, samples=64, batch=16):
    feeds = random_feeds(model, batch=samples, seed=1)
    return Calibration(lambda: ({k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, samples, batch)),
                       samples)


@pytest.mark.parametrize(
    "n, ratio, round_to, expected",
    [(16, 0.5, 1, 8), (16, 0.3, 8, 8), (16, 0.0, 8, 16), (12, 0.1, 8, 12), (64, 0.5, 8, 32),
     (64, 0.99, 8, 8), (5, 0.99, 1, 1), (10, 0.25, 16, 10), (100, 0.5, 16, 48)],
)
def test_kept_count(n, ratio, round_to, expected):
    assert kept_count(n, ratio, round_to) == expected


def test_kept_count_rounds_to_single_channels_by_default():
    assert kept_count(10, 0.35) == 7 and kept_count(10, 0.35, 2) == 6  # 6.5 channels: the tie keeps more
    assert uniform({0: 10, 1: 20}, 0.35) == {0: 7, 1: 13}
    cost = lambda c: sum(c.values())  # noqa: E731
    assert fit_budget({0: 10, 1: 10}, cost, 13) == {0: 7, 1: 6}


def test_fit_budget_at_exactly_the_deepest_cost_gives_the_deepest_pruning():
    channels = {0: 16, 1: 24}
    cost = lambda c: 2 * c[0] + c[1]  # noqa: E731
    deepest = uniform(channels, 1.0, 8)
    assert fit_budget(channels, cost, cost(deepest), 8) == deepest == {0: 8, 1: 8}
    assert fit_budget(channels, cost, cost(deepest) - 1, 8) is None
    assert fit_budget(channels, cost, cost(channels), 8) == channels


@settings(max_examples=200)
@given(st.integers(1, 512), st.floats(0, 0.999), st.sampled_from([1, 4, 8, 16]))
def test_kept_count_is_a_multiple_or_everything(n, ratio, round_to):
    k = kept_count(n, ratio, round_to)
    assert 1 <= k <= n
    assert k == n or k % round_to == 0


@pytest.mark.parametrize("round_to", [1, 8, 16])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.77])
def test_fit_budget_meets_the_budget_and_cannot_grow(round_to, fraction):
    channels = {0: 16, 1: 32, 2: 64, 3: 20}
    weights = {0: 3.0, 1: 2.0, 2: 1.0, 3: 1.5}
    cost = lambda c: sum(weights[g] * c[g] for g in c)  # noqa: E731
    budget = fraction * cost(channels)
    counts = fit_budget(channels, cost, budget, round_to=round_to)
    if counts is None:  # only when even the deepest pruning allowed costs more
        assert cost(uniform(channels, 1.0, round_to)) > budget and round_to == 16
        return
    assert cost(counts) <= budget
    for g in channels:  # a multiple of round_to or everything; greedy fill: no group can take round_to more
        assert counts[g] == channels[g] or counts[g] % round_to == 0
        if counts[g] < channels[g]:
            assert cost({**counts, g: min(channels[g], counts[g] + round_to)}) > budget
    assert fit_budget(channels, cost, 0.0, round_to) is None


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("round_to", [1, 4])
def test_fit_budget_prunes_alike_groups_alike(round_to, fraction):
    """The bisection finds the uniform ratio: groups that cost the same per channel keep the same
    count (give or take one step), and only a few channels are given back one by one (a bisection
    that does not halve its interval ends deeper at 20 % or 80 %, and the fill takes ~30 calls more)."""
    channels = {0: 64, 1: 64, 2: 64}
    calls = []

    def cost(counts):  # on a real model each call runs the predictor over every layer
        calls.append(counts)
        return sum(counts.values())

    budget = fraction * 192 + 1
    counts = fit_budget(channels, cost, budget, round_to=round_to)
    assert sum(counts.values()) <= budget and max(counts.values()) - min(counts.values()) <= round_to
    assert sum(counts.values()) + round_to > budget
    assert len(calls) <= 45  # bisection (30) and a short fill, not a fill from the deepest pruning


def test_fit_budget_gives_back_to_the_groups_it_can():
    """The bisection's uniform ratio leaves budget over; the fill gives it to the cheap groups."""
    channels = {0: 64, 1: 64}
    cost = lambda c: 10 * c[0] + c[1]  # noqa: E731
    counts = fit_budget(channels, cost, 0.55 * cost(channels), round_to=8)  # budget 387.2
    assert counts == {0: 32, 1: 64}  # uniform: 32 each (352); group 0 cannot take 8 more (432), group 1 can


def test_ratio_removes_that_fraction_from_every_prunable_group():
    result = prune(FACTORIES["conv_chain"](widths=(8, 16, 8)), PruneConfig(ratio=0.5, round_to=1))
    assert [(c.group.channels, c.channels_after) for c in result.groups] == [(8, 4), (16, 8), (8, 4), (10, 10)]
    assert result.macs_after < result.macs_before and result.params_after < result.params_before
    assert cost_of(result.model).macs == result.macs_after


def test_round_to_keeps_multiples():
    result = prune(FACTORIES["conv_chain"](widths=(16, 32, 24)), PruneConfig(ratio=0.6, round_to=8))
    for c in result.groups:
        if c.group.prunable:
            assert c.channels_after % 8 == 0 or c.channels_after == c.group.channels


@pytest.mark.parametrize("name", ["conv_chain", "basic_block_net", "densenet_like", "mobilenetv2_block_net", "c2f_like"])
@pytest.mark.parametrize("keep", [0.8, 0.5, 0.3])
def test_keep_flops_meets_the_target_closely(name, keep):
    model = FACTORIES[name]()
    result = prune(model, PruneConfig(keep_flops=keep, round_to=1))
    assert_closest_allowed(model, result, 1, keep_flops=keep)


@pytest.mark.parametrize("target", ["keep_flops", "keep_params"])
def test_keep_flops_and_params_with_round_to_take_steps_of_round_to(target):
    model = FACTORIES["conv_chain"](widths=(32, 48, 64, 40))
    result = prune(model, PruneConfig(round_to=8, **{target: 0.5}))
    assert_closest_allowed(model, result, 8, **{target: 0.5})


@pytest.mark.parametrize("name", ["conv_chain", "basic_block_net", "flatten_gemm_net"])
def test_keep_params_without_pro_meets_the_target_closely(name):
    model = FACTORIES[name]()
    result = prune(model, PruneConfig(keep_params=0.5, round_to=1))
    assert_closest_allowed(model, result, 1, keep_params=0.5)
    assert cost_of(result.model).params == result.params_after


@settings(max_examples=15, deadline=None)
@given(cnn_models(), st.floats(0.3, 1.0))
def test_keep_flops_on_generated_graphs(model, keep):
    try:
        result = prune(model, PruneConfig(keep_flops=keep, round_to=1))
    except OnnxPruneError as exc:
        assert "unreachable" in str(exc) or "no prunable" in str(exc)
        return
    assert result.macs_after <= keep * result.macs_before


def test_keep_flops_unreachable_is_a_clear_error(monkeypatch):
    with pytest.raises(OnnxPruneError, match="unreachable"):
        prune(FACTORIES["conv_chain"](widths=(8, 16, 8)), PruneConfig(keep_flops=0.01, round_to=8))
    # with PRO too, and before PRO measures anything (it would only fail at its smallest widths)
    model = FACTORIES["conv_chain"](widths=(8, 16, 8))
    monkeypatch.setattr(sys.modules["onnxprune.prune"], "optimize_counts", lambda *a, **k: pytest.fail("PRO ran"))
    with pytest.raises(OnnxPruneError, match="--keep-flops 0.01: unreachable; the deepest pruning allowed"):
        prune(model, PruneConfig(method=Method.REAP, keep_flops=0.01, round_to=8, pro=True),
              calibration(model))


def test_keep_flops_one_prunes_nothing():
    result = prune(FACTORIES["basic_block_net"](), PruneConfig(keep_flops=1.0))
    assert result.macs_after == result.macs_before
    assert all(c.channels_after == c.group.channels for c in result.groups)


def test_l1_keeps_the_filters_with_the_largest_weights():
    b = NetBuilder(3, seed=0)
    x = b.conv("input", 8)
    model = b.model(b.gemm(b.flatten(b.gap(b.relu(x))), 4))
    weight = next(i for i in model.graph.initializer if i.name == "conv0.weight")
    w = np.frombuffer(weight.raw_data, np.float32).reshape(8, 3, 3, 3).copy()
    w[[1, 4, 6]] *= 100  # three big filters
    weight.raw_data = w.tobytes()
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    keep = select(analysis, l1_scores(analysis), {0: 3})
    assert keep[0].tolist() == [1, 4, 6]


@pytest.mark.parametrize("method", [Method.L1, Method.REAP])
def test_exclude_leaves_the_matching_producers_groups_alone(method):
    model = FACTORIES["basic_block_net"]()
    analysis = analyze(normalize(model)[0])
    stream = next(g for g in analysis.groups if g.prunable and len(g.producers) > 1)  # the residual Add's group
    pattern = stream.producers[-1]
    calib = calibration(model) if method.needs_data else None
    result = prune(model, PruneConfig(method=method, ratio=0.5, round_to=1, exclude=(pattern,)), calib)
    changes = {c.group.id: c for c in result.groups}
    assert changes[stream.id].channels_after == stream.channels
    assert changes[stream.id].excluded == f"excluded by --exclude '{pattern}' (produced by {pattern})"
    assert result.to_json()["groups"][stream.id]["reason"] == changes[stream.id].excluded
    others = [c for c in result.groups if c.group.prunable and c.group.id != stream.id]
    assert others and all(c.channels_after < c.group.channels for c in others)
    assert result.macs_after < result.macs_before


def test_exclude_pattern_matching_nothing_is_an_error():
    with pytest.raises(OnnxPruneError, match="--exclude 'nothing\\*' matches no node"):
        prune(FACTORIES["conv_chain"](), PruneConfig(ratio=0.5, exclude=("nothing*",)))


def test_excluding_every_group_is_a_clear_error():
    with pytest.raises(OnnxPruneError, match="no prunable channel group.*excluded by --exclude"):
        prune(FACTORIES["conv_chain"](), PruneConfig(ratio=0.5, exclude=("*",)))


def test_no_prunable_group_is_a_clear_error():
    with pytest.raises(OnnxPruneError, match="no prunable channel group"):
        prune(unprunable_net(), PruneConfig(ratio=0.5))


@pytest.mark.parametrize(
    "kwargs, message",
    [({}, "exactly one"), ({"ratio": 0.5, "keep_flops": 0.5}, "exactly one"), ({"ratio": 1.0}, "--ratio"),
     ({"ratio": -0.1}, "--ratio"), ({"keep_flops": 0.0}, "--keep-flops"), ({"keep_flops": 1.5}, "--keep-flops"),
     ({"ratio": 0.5, "round_to": 0}, "--round-to")],
)
def test_impossible_options_are_refused(kwargs, message):
    with pytest.raises(OnnxPruneError, match=message):
        PruneConfig(**kwargs)


def test_predictor_matches_recount_at_several_depths():
    normalized, _ = normalize(FACTORIES["inception_like"]())
    analysis = analyze(normalized)
    predictor = MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes))
    channels = {g.id: g.channels for g in analysis.groups if g.prunable}
    from onnxprune.passes.surgery import prune_channels

    for ratio in (0.25, 0.5, 0.75):
        keep = select(analysis, l1_scores(analysis), uniform(channels, ratio))
        pruned = prune_channels(normalized, analysis, keep)
        assert predictor.macs(analysis.removed_mask(keep)) == cost_of(pruned).macs
