"""The latency model's arithmetic pinned by value (widths/latency.py): hand-made tables and timings
whose expected numbers are worked out by hand in each test, as test_cost.py pins the MAC formulas.

The staircase's tolerance is max(FLAT * T(widest), FLAT_MS) = max(0.03 * T(widest), 0.002 ms)."""

import json
import re
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from builders import FACTORIES

from onnxprune import OnnxPruneError, analyze, normalize
from onnxprune.progress import no_progress
from onnxprune.widths import latency
from onnxprune.widths.latency import LatencyGoal, LatencyTable, Target, ladder, staircase, steps_of, timed_keep
from onnxprune.widths.pro import ProChoice


def test_the_constants_the_hand_computations_below_assume():
    assert (latency.FLAT, latency.FLAT_MS, latency.CHECK_RATIOS) == (0.03, 0.002, (0.25, 0.5, 0.75))
    assert latency.FASTER_THAN_ASKED == 0.92


# --- the staircase from measured times ---------------------------------------------------------------

def test_every_width_of_a_flat_step_is_charged_the_step_s_highest_time():
    """The README's promise, by value: a width inside a flat step is charged what the whole step costs.
    Widest 4.0 ms: tolerance 0.12 ms, measured from the step's narrowest width. 8, 16 and 24 are
    within 0.12 of 8's 1.00 (1.05, 1.10): one step, all three charged 24's 1.10; 32 (1.15) is 0.15
    above 8 and starts the next step, although only 0.05 above 24."""
    measured = {8: 1.00, 16: 1.05, 24: 1.10, 32: 1.15, 40: 4.0}
    assert staircase(measured) == pytest.approx({8: 1.10, 16: 1.10, 24: 1.10, 32: 1.15, 40: 4.0}, rel=1e-12)


def test_the_widest_step_is_charged_its_highest_time_too():
    """The last step is closed after the loop: 32 and 40 (2.0 and 2.04, within 0.03 * 2.04) both cost 2.04."""
    measured = {8: 0.5, 16: 1.0, 24: 1.02, 32: 2.0, 40: 2.04}
    # 16 and 24: within 0.0612 of each other, one step at 1.02; 8 alone
    assert staircase(measured) == pytest.approx({8: 0.5, 16: 1.02, 24: 1.02, 32: 2.04, 40: 2.04}, rel=1e-12)


def test_a_difference_exactly_at_the_flat_threshold_starts_a_new_step():
    """Tolerance 0.03 * 4.0 = 0.12: 0.62 - 0.5 is exactly 0.12 in floating point, a new step; 0.61 is
    0.11 above, the same step, charged 0.61. (Measured from the widest's time, not the second's:
    0.03 * 0.62 would split 0.5 and 0.61 too.)"""
    assert 0.62 - 0.5 == 0.03 * 4.0  # an exact tie, not a rounding accident
    assert staircase({8: 0.5, 16: 0.62, 24: 4.0}) == {8: 0.5, 16: 0.62, 24: 4.0}
    assert staircase({8: 0.5, 16: 0.61, 24: 4.0}) == {8: 0.61, 16: 0.61, 24: 4.0}


def test_below_a_fifteenth_of_a_millisecond_the_threshold_is_two_microseconds():
    """Widest 0.05 ms: 0.03 * 0.05 = 0.0015 < 0.002, so the tolerance is 0.002 ms: 0.012 - 0.01 is
    exactly 0.002, a new step; 0.0119 - 0.01 = 0.0019 is the same step (at 0.0015 it would not be)."""
    assert 0.012 - 0.01 == 0.002
    assert staircase({8: 0.01, 16: 0.012, 24: 0.05}) == {8: 0.01, 16: 0.012, 24: 0.05}
    assert staircase({8: 0.01, 16: 0.0119, 24: 0.05}) == {8: 0.0119, 16: 0.0119, 24: 0.05}


def test_above_it_the_threshold_is_three_percent_of_the_widest_time():
    """Widest 2.0 ms: tolerance 0.06 (not 0.002): 1.0 and 1.05 share a step at 1.05."""
    assert staircase({8: 1.0, 16: 1.05, 24: 2.0}) == {8: 1.05, 16: 1.05, 24: 2.0}


def test_a_dip_is_pooled_with_the_times_before_it():
    """Pool-adjacent-violators: a narrower width measured slower is noise; both get their mean."""
    # at the narrow end: (2.0 + 1.0) / 2 = 1.5 for 8 and 16
    assert staircase({8: 2.0, 16: 1.0, 24: 4.0}) == {8: 1.5, 16: 1.5, 24: 4.0}
    # at the wide end: (3.0 + 2.0) / 2 = 2.5; the widest keeps the pooled 2.5, not the measured 3.0 or 2.0
    assert staircase({8: 1.0, 16: 3.0, 24: 2.0}) == {8: 1.0, 16: 2.5, 24: 2.5}
    # in the middle: 16 and 24 pool to 1.03, then within 0.06 (widest 2.0) of 8's 1.0: one step at 1.03
    assert staircase({8: 1.0, 16: 1.06, 24: 1.0, 32: 2.0}) == pytest.approx(
        {8: 1.03, 16: 1.03, 24: 1.03, 32: 2.0}, rel=1e-12)
    # the tolerance is 3 % of the widest's pooled time: 32's 1.0 pools with 24's 3.0 to 2.0, tolerance
    # 0.06 (not 0.03 from the 1.0 measured), so 8 and 16 (1.0, 1.05) are one step
    assert staircase({8: 1.0, 16: 1.05, 24: 3.0, 32: 1.0}) == {8: 1.05, 16: 1.05, 24: 2.0, 32: 2.0}


def test_a_deep_dip_pools_back_across_several_widths():
    """24's 0.5 pools with 16's 3.0 (mean 1.75), which is then below 8's 2.0: all three pool to
    (2.0 + 3.0 + 0.5) / 3 = 1.8333..., one step (tolerance 0.15 from 32's 5.0)."""
    assert staircase({8: 2.0, 16: 3.0, 24: 0.5, 32: 5.0}) == pytest.approx(
        {8: 5.5 / 3, 16: 5.5 / 3, 24: 5.5 / 3, 32: 5.0}, rel=1e-12)
    # two pools side by side, then merged: 16/24 -> 2.5, 32/40 -> 1.5 < 2.5, so 16..40 -> (3+2+1+2)/4 = 2.0
    assert staircase({8: 0.5, 16: 3.0, 24: 2.0, 32: 1.0, 40: 2.0, 48: 10.0}) == {
        8: 0.5, 16: 2.0, 24: 2.0, 32: 2.0, 40: 2.0, 48: 10.0}


def test_a_single_width_and_a_flat_group():
    assert staircase({16: 0.7}) == {16: 0.7}
    assert staircase({24: 1.0, 8: 1.0, 16: 1.0}) == {8: 1.0, 16: 1.0, 24: 1.0}  # any order of the keys
    # equal times are not pooled: they stay exactly as measured (pooled, (0.1 + 0.1 + 0.1) / 3 = 0.10000000000000002)
    assert staircase({8: 0.1, 16: 0.1, 24: 0.1}) == {8: 0.1, 16: 0.1, 24: 0.1}


# --- the prediction from the table -------------------------------------------------------------------

def test_a_width_inside_a_flat_step_saves_nothing_in_the_prediction():
    """From measured times to the prediction: group 0's 16, 24 and 32 (1.0, 1.02, 1.04; widest 2.0,
    tolerance 0.06) are one step at 1.04, so any width from 9 to 32 predicts 10 - (2.0 - 1.04) = 9.04;
    group 1's 16 and 24 (0.98, 1.0; tolerance 0.03) are its top step: pruning 24 to 16 saves nothing."""
    steps = {0: staircase({8: 0.5, 16: 1.0, 24: 1.02, 32: 1.04, 40: 2.0}), 1: staircase({8: 0.5, 16: 0.98, 24: 1.0})}
    table = LatencyTable({}, 10.0, steps, 1.0)
    for width in (9, 16, 20, 24, 31, 32):
        assert table.group_ms(0, width) == 1.04
        assert table.predict({0: width}) == pytest.approx(9.04, rel=1e-12)
    assert table.predict({0: 8}) == 8.5 and table.predict({0: 33}) == 10.0 and table.predict({0: 40}) == 10.0
    assert table.predict({1: 16}) == 10.0 and table.predict({1: 24}) == 10.0 and table.predict({1: 8}) == 9.5
    assert table.predict({0: 8, 1: 8}) == 8.0


def test_group_ms_charges_the_narrowest_measured_width_at_least_asked():
    table = LatencyTable({}, 5.0, {3: {8: 0.25, 16: 0.5, 24: 0.75}})
    assert [table.group_ms(3, k) for k in (1, 8, 9, 15, 16, 17, 24)] == [0.25, 0.25, 0.5, 0.5, 0.5, 0.75, 0.75]
    assert table.group_ms(3, 25) == 0.75  # above the widest measured: the widest's


def test_the_prediction_scales_the_summed_savings_and_ignores_groups_without_steps():
    """T = 5.0 - 0.5 * ((0.75 - 0.25) + (2.0 - 1.5)) = 4.5; group 9, not in the table, saves nothing."""
    table = LatencyTable({}, 5.0, {3: {8: 0.25, 16: 0.5, 24: 0.75}, 4: {8: 1.5, 16: 2.0}}, 0.5)
    assert table.predict({3: 8, 4: 8, 9: 1}) == 4.5
    assert table.predict({3: 24, 4: 16}) == 5.0 and table.predict({}) == 5.0
    assert table.predict({3: 16}) == 4.875  # 5.0 - 0.5 * 0.25


# --- the widths timed: steps of grouped groups, the ladder, the channels kept --------------------------

@pytest.fixture(scope="module")
def resnext():
    """Stem 8 channels (group 0), two groups of 24 channels read by a 4-block grouped conv (1 and 2)."""
    analysis = analyze(normalize(FACTORIES["resnext_like"](channels=8, groups=4, per_group=6, blocks=1))[0])
    assert [(g.id, g.channels, g.blocks) for g in analysis.groups if g.prunable] == [(0, 8, 1), (1, 24, 4), (2, 24, 4)]
    return analysis


def test_a_group_in_blocks_steps_by_the_least_multiple_of_round_to_and_its_blocks(resnext):
    channels = {0: 8, 1: 24, 2: 24}
    assert steps_of(resnext, channels, 1) == {0: 1, 1: 4, 2: 4}
    assert steps_of(resnext, channels, 3) == {0: 3, 1: 12, 2: 12}  # lcm(3, 4)
    assert steps_of(resnext, channels, 6) == {0: 6, 1: 12, 2: 12}  # lcm(6, 4)
    assert steps_of(resnext, channels, 8) == {0: 8, 1: 8, 2: 8}  # 8 is a multiple of 4
    assert steps_of(resnext, {1: 24}, 3) == {1: 12}  # only the groups asked for


def test_the_ladder_steps_down_by_round_to_or_a_sixteenth_of_the_width():
    """n, then multiples of round_to at least max(round_to, n // 16) below the last, down to round_to."""
    assert ladder(24, 12) == [24, 12]
    assert ladder(100, 8) == [100, 88, 80, 72, 64, 56, 48, 40, 32, 24, 16, 8]  # 100 // 16 = 6 < 8
    assert ladder(256, 8) == list(range(256, 0, -16))  # 256 // 16 = 16 apart: 16 is the last
    assert ladder(64, 1) == list(range(64, 0, -4))  # 64 // 16 = 4 apart (not 64 // 17 = 3)
    assert ladder(8, 8) == [8] and ladder(7, 8) == [7]
    assert all(type(k) is int for k in ladder(256, 8) + ladder(64, 1))  # they become the table's JSON keys


def test_a_timed_width_keeps_the_first_channels_of_each_block(resnext):
    assert timed_keep(resnext, {0: 3})[0].tolist() == [0, 1, 2]
    # 24 channels in 4 blocks of 6, 12 kept: the first 3 of each block
    assert timed_keep(resnext, {1: 12})[1].tolist() == [0, 1, 2, 6, 7, 8, 12, 13, 14, 18, 19, 20]
    assert timed_keep(resnext, {1: 24})[1].tolist() == list(range(24))
    assert set(timed_keep(resnext, {0: 3, 2: 12})) == {0, 2}


# --- profile: the staircases and the scale fitted to whole-model checks ---------------------------------

@pytest.fixture(scope="module")
def chain():
    """conv 16 (group 0) -> conv 32 (group 1) -> classifier: ladders [16, 8] and [32, 24, 16, 8] at 8."""
    normalized, _ = normalize(FACTORIES["conv_chain"](widths=(16, 32)))
    analysis = analyze(normalized)
    assert {g.id: g.channels for g in analysis.groups if g.prunable} == {0: 16, 1: 32}
    return normalized, analysis


def weight_widths(model: onnx.ModelProto) -> list[int]:
    """The output channels of each Conv, in graph order."""
    shapes = {i.name: list(i.dims) for i in model.graph.initializer}
    return [shapes[n.input[1]][0] for n in model.graph.node if n.op_type == "Conv"]


def fake_timing(monkeypatch, segment_ms: list[list[float]], full_ms: float, check_ms: list[float]):
    """profile's timings replaced: each group's segment medians (ladder order: widest first), then the
    whole models (the original, then the checks). Returns what profile asked to be timed, and the
    providers and options of each session it made."""
    asked = {"segments": [], "models": None, "sessions": []}
    segment_ms = iter(segment_ms)
    session = latency.session
    monkeypatch.setattr(latency, "session", lambda model, providers=None, **options: (
        asked["sessions"].append((providers, options)), session(model, providers, **options))[1])
    monkeypatch.setattr(latency, "interleaved", lambda sessions, feeds, runs: (asked["segments"].append(
        (len(sessions), len(feeds), runs)), sessions)[1])
    monkeypatch.setattr(latency, "medians_ms", lambda sessions: next(segment_ms))

    def measure(original, models, target, runs, seed):
        asked.update(models=[weight_widths(m) for m in models], runs=runs, seed=seed)
        return [full_ms, *check_ms]

    monkeypatch.setattr(latency, "measure", measure)
    return asked


def test_profile_fits_the_scale_by_least_squares_to_the_checks(chain, monkeypatch):
    """Staircases: group 0 {8: 0.3, 16: 0.5}; group 1 measured 32: 1.0, 24: 0.75, 16: 0.76, 8: 0.25,
    so 16 and 24 pool to 0.755 (tolerance 0.03): {8: 0.25, 16: 0.755, 24: 0.755, 32: 1.0}.
    Checks (uniform, steps of 8): 0.25 -> {0: 16, 1: 24}, 0.5 -> {0: 8, 1: 16}, 0.75 -> {0: 8, 1: 8},
    predicted savings p = 0.245, 0.2 + 0.245 = 0.445, 0.2 + 0.75 = 0.95; measured 5.0 - (4.75, 4.5,
    4.0) = m = 0.25, 0.5, 1.0; s = p.m / p.p = 1.23375 / 1.16055."""
    normalized, analysis = chain
    asked = fake_timing(monkeypatch, [[0.5, 0.3], [1.0, 0.75, 0.76, 0.25]], 5.0, [4.75, 4.5, 4.0])
    clock = iter([100.0, 112.5])  # perf_counter at the start and the end
    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: next(clock), strftime=lambda f: f))
    table = latency.profile(normalized, analysis, {0: 16, 1: 32}, Target(threads=1), 8, runs=7, seed=3)
    assert table.steps[0] == {8: 0.3, 16: 0.5}
    assert table.steps[1] == pytest.approx({8: 0.25, 16: 0.755, 24: 0.755, 32: 1.0}, rel=1e-12)
    assert asked["segments"] == [(2, 2, 7), (4, 4, 7)]  # each group's widths timed together, `runs` times
    # the activations computed once, unoptimised (every tensor exact), then each segment on the target
    cpu = ("CPUExecutionProvider",)
    assert asked["sessions"] == [(cpu, {"optimize": False})] + [(cpu, {"threads": 1})] * 6
    assert asked["models"] == [[16, 24], [8, 16], [8, 8]] and (asked["runs"], asked["seed"]) == (7, 3)
    scale = 1.23375 / 1.16055
    assert table.scale == pytest.approx(scale, rel=1e-12) and table.scale == pytest.approx(1.0630735, abs=1e-7)
    assert table.full_ms == 5.0
    assert [sorted(c) for c in table.checks] == [["measured_ms", "predicted_ms", "ratio"]] * 3
    assert [(c["ratio"], c["measured_ms"]) for c in table.checks] == [(0.25, 4.75), (0.5, 4.5), (0.75, 4.0)]
    assert [c["predicted_ms"] for c in table.checks] == pytest.approx(
        [5.0 - scale * 0.245, 5.0 - scale * 0.445, 5.0 - scale * 0.95], rel=1e-12)
    meta = table.meta
    assert (meta["threads"], meta["batch"], meta["round_to"], meta["runs"]) == (1, 1, 8, 7)
    assert meta["providers"] == ["CPUExecutionProvider"] and meta["model_sha256"] == latency.model_hash(normalized)
    assert meta["made"] == "%Y-%m-%d %H:%M:%S" and meta["seconds"] == 12.5  # the date's format; 112.5 - 100.0


@pytest.mark.parametrize("check_ms, scale", [
    ([4.9, 4.8, 4.7], 0.3985 / 1.16055),  # m = 0.1, 0.2, 0.3: p.m = 0.0245 + 0.089 + 0.285; 0.343
    ([2.5, 0.0, 0.0], 7.5875 / 1.16055),  # m = 2.5, 5, 5: p.m = 0.6125 + 2.225 + 4.75; 6.54
    ([4.99, 4.99, 4.99], 0.1),  # m = 0.01 each: s = 0.0164 / 1.16055 = 0.014, raised to 0.1
    ([5.5, 5.5, 5.5], 0.1),  # slower than the original: s < 0, raised to 0.1
])
def test_the_fitted_scale_is_kept_between_a_tenth_and_ten(chain, monkeypatch, check_ms, scale):
    """The checks of the test above (p.p = 1.16055) measured otherwise."""
    normalized, analysis = chain
    fake_timing(monkeypatch, [[0.5, 0.3], [1.0, 0.75, 0.76, 0.25]], 5.0, check_ms)
    assert latency.profile(normalized, analysis, {0: 16, 1: 32}, Target(), 8, runs=3).scale == pytest.approx(
        scale, rel=1e-12)


def test_a_scale_far_above_ten_is_clamped_to_ten(chain, monkeypatch):
    """Savings 100x the predicted: s = 100 -> 10."""
    normalized, analysis = chain
    fake_timing(monkeypatch, [[0.5, 0.3], [1.0, 0.75, 0.76, 0.25]], 100.0, [100 - 24.5, 100 - 44.5, 100 - 95.0])
    assert latency.profile(normalized, analysis, {0: 16, 1: 32}, Target(), 8, runs=3).scale == 10.0


def test_without_a_predicted_saving_the_scale_is_one(chain, monkeypatch):
    """Flat staircases (every width within 3 %) predict no saving at any check: s = 1, not 0 / 0."""
    normalized, analysis = chain
    fake_timing(monkeypatch, [[0.5, 0.49], [1.0, 0.99, 0.98, 0.99]], 5.0, [4.0, 3.0, 2.0])
    table = latency.profile(normalized, analysis, {0: 16, 1: 32}, Target(), 8, runs=3)
    # group 1: 8 and 16 pool to 0.985, and 0.985 to 1.0 are within 0.03: one step at 1.0
    assert table.steps == {0: {8: 0.5, 16: 0.5}, 1: {8: 1.0, 16: 1.0, 24: 1.0, 32: 1.0}}
    assert table.scale == 1.0 and [c["predicted_ms"] for c in table.checks] == [5.0, 5.0, 5.0]


def test_savings_predicted_below_a_millisecond_are_still_fitted(chain, monkeypatch):
    """Every predicted saving here is below 1 ms (0.1, 0.2, 0.2): still fitted, s = p.m / p.p."""
    normalized, analysis = chain
    fake_timing(monkeypatch, [[0.5, 0.4], [1.0, 0.9, 0.9, 0.9]], 5.0, [4.8, 4.4, 4.6])
    table = latency.profile(normalized, analysis, {0: 16, 1: 32}, Target(), 8, runs=3)
    assert table.steps == {0: {8: 0.4, 16: 0.5}, 1: {8: 0.9, 16: 0.9, 24: 0.9, 32: 1.0}}
    # p = 0.1, 0.1 + 0.1, 0.1 + 0.1; m = 0.2, 0.6, 0.4: p.m = 0.02 + 0.12 + 0.08, p.p = 0.01 + 0.04 + 0.04
    assert table.scale == pytest.approx(0.22 / 0.09, rel=1e-12)


def test_checks_that_prune_nothing_are_not_timed(chain, monkeypatch):
    """Group 0 alone, 16 channels at round_to 16: every uniform check keeps 16, so nothing is
    checked and the scale stays 1; only the original is timed."""
    normalized, analysis = chain
    asked = fake_timing(monkeypatch, [[0.5]], 5.0, [])
    table = latency.profile(normalized, analysis, {0: 16}, Target(), 16, runs=3)
    assert table.steps == {0: {16: 0.5}} and table.scale == 1.0 and table.checks == [] and asked["models"] == []


def test_only_the_checks_that_prune_are_timed(chain, monkeypatch):
    """Group 1 alone at round_to 16: checks 0.25 -> 32 (nothing pruned, dropped), 0.5 -> 16, 0.75 -> 16."""
    normalized, analysis = chain
    asked = fake_timing(monkeypatch, [[1.0, 0.5]], 5.0, [4.5, 4.5])
    table = latency.profile(normalized, analysis, {1: 32}, Target(), 16, runs=3)
    assert asked["models"] == [[16, 16], [16, 16]]
    assert [c["ratio"] for c in table.checks] == [0.5, 0.75] and table.scale == 1.0


# --- measure: the runs per round -------------------------------------------------------------------------

@pytest.mark.parametrize("first_ms, runs, seconds, per_round", [
    ((1.0, 0.5), 30, 1.5, 200),  # 1.5 s / 1.5 ms / 5 rounds
    ((1.0, 0.5), 30, 3.0, 400),
    ((0.001, 0.001), 30, 1.5, 1000),  # 150,000: at most 1,000 a round
    ((100.0, 200.0), 30, 1.5, 6),  # 1: at least runs / rounds = 6
    ((100.0, 200.0), 31, 1.5, 7),  # ... rounded up
    ((2.0, 1.0), 30, 1.5, 100),
    ((0.2, 0.1001), 30, 1.5, 999),  # 1,500 / 0.3001 / 5 = 999.67, just below the cap
])
def test_measure_sizes_its_rounds_to_the_seconds_asked(monkeypatch, first_ms, runs, seconds, per_round):
    model = FACTORIES["conv_chain"](widths=(8, 8))
    seen = {}
    monkeypatch.setattr(latency, "interleaved", lambda sessions, feeds, n: (
        seen.update(sizing=(len(sessions), len(feeds), n)), [[ms / 1000] * 3 for ms in first_ms])[1])

    def rounds_of(make, feeds, n, rounds):
        seen.update(runs=n, rounds=rounds)
        return [[[0.002] * n, [0.001] * n] for _ in range(rounds)]

    monkeypatch.setattr(latency, "in_rounds", rounds_of)
    assert latency.measure(model, [model], Target(), runs=runs, seconds=seconds) == pytest.approx([2.0, 1.0])
    assert seen == {"sizing": (2, 2, 3), "runs": per_round, "rounds": 5}


# --- latency_counts: the fit, the deepest pruning measured, the refits' budgets --------------------------

# The table of the chain: group 0 saves 0.2 at 8; group 1 saves 0.25 at 16 or 24, 0.75 at 8. Predictions:
# {16, 32} 5.0 | {16, 24} = {16, 16} 4.75 | {16, 8} 4.25 | {8, 32} 4.8 | {8, 24} = {8, 16} 4.55 | {8, 8} 4.05
STEPS = {0: {8: 0.3, 16: 0.5}, 1: {8: 0.25, 16: 0.75, 24: 0.75, 32: 1.0}}


def fit_latency(chain, monkeypatch, fraction, measured, table_path=None, steps=STEPS, pro=False, method=None,
                macs=None):
    """latency_counts on the chain and the table above (without PRO, unless ``pro``), each whole-model
    timing taken from ``measured`` (the original's, then the models'). Returns the counts, the fit
    and the timings asked for (the widths of each model timed)."""
    normalized, analysis = chain
    monkeypatch.setattr(latency, "profile", lambda *a, **k: LatencyTable({}, 5.0, steps))
    measured, timed = iter(measured), []

    def measure(original, models, target):
        timed.append([weight_widths(m) for m in models])
        return [next(measured) for _ in range(1 + len(models))]

    monkeypatch.setattr(latency, "measure", measure)
    goal = LatencyGoal(fraction, Target(), 8, table_path, pro, pro_samples=7)
    channels = {g.id: g.channels for g in analysis.groups if g.prunable}
    counts, trace, fit = latency.latency_counts(normalized, analysis, method, channels, goal, "calibration",
                                                no_progress, lambda c: timed_keep(analysis, c), macs)
    assert pro or trace == []
    return (counts, fit, timed, trace) if pro else (counts, fit, timed)


def test_the_uniform_fit_then_a_measurement_on_the_target(chain, monkeypatch):
    """Budget 0.9 * 5.0 = 4.5: the bisection reaches {8, 8} (4.05), the give-back {16, 8} (4.25);
    measured 0.9 of the original: on the target, no refit."""
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.9, [2.0, 1.8])
    assert counts == {0: 16, 1: 8} and fit.predicted_ms == 4.25 and timed == [[[16, 8]]]
    assert fit.attempts == [{"budget_ms": 4.5, "predicted_ms": 4.25, "measured_ms": 1.8, "measured_original_ms": 2.0}]
    report = fit.to_json()
    assert report["predicted_fraction"] == 0.85 and report["original_ms"] == 5.0
    assert report["groups"] == [{"group": 0, "channels": 16, "ms": 0.5, "full_ms": 0.5},
                                {"group": 1, "channels": 8, "ms": 0.25, "full_ms": 1.0}]
    assert report["pro_rankings"] == {} and report["pro_ranking"] is None
    assert report == {
        "target": 0.9, "batch": 1, "threads": 0, "providers": ["CPUExecutionProvider"], "table": "measured here",
        "table_meta": {}, "table_scale": 1.0, "table_checks": [], "table_unchecked": [], "original_ms": 5.0, "predicted_ms": 4.25,
        "predicted_fraction": 0.85, "measured_original_ms": None, "measured_ms": None, "measured_fraction": None,
        "attempts": fit.attempts, "pro_rankings": {}, "pro_ranking": None, "groups": report["groups"]}


def test_the_refits_scale_the_budget_by_the_miss_and_keep_the_largest_budget_within_the_target(chain, monkeypatch):
    """Target 0.9, tolerance 1.02. Measured (original 1.0): 0.99 (miss 1.1) -> budget 4.5 / 1.1 =
    4.0909, widths {8, 8}; 0.81 (miss 0.9, within but more than 8 % fast) -> 4.0909 / 0.9 = 4.5454,
    {16, 8}; 0.99 (1.1) -> 4.5454 / 1.1 = 4.1322, {8, 8}; 0.85 (0.944): the fourth timing, the last.
    Within the target: budgets 4.0909 and 4.1322, both {8, 8}: the larger's widths are kept."""
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.9, [1.0, 0.99, 1.0, 0.81, 1.0, 0.99, 1.0, 0.85])
    budgets = [4.5, 4.5 / 1.1, 4.5 / 1.1 / 0.9, 4.5 / 1.1 / 0.9 / 1.1]
    assert [a["budget_ms"] for a in fit.attempts] == pytest.approx(budgets, rel=1e-12)
    assert [a["predicted_ms"] for a in fit.attempts] == [4.25, 4.05, 4.25, 4.05]
    assert [a["measured_ms"] for a in fit.attempts] == [0.99, 0.81, 0.99, 0.85]
    assert timed == [[[16, 8]], [[8, 8]], [[16, 8]], [[8, 8]]]
    assert counts == {0: 8, 1: 8} and fit.counts == counts and fit.predicted_ms == 4.05


def test_a_refit_to_a_larger_budget_is_kept_when_it_is_within_the_target(chain, monkeypatch):
    """Measured 0.72 of the original at target 0.9 (miss 0.8): budget 4.5 / 0.8 = 5.625, capped at
    the full 5.0: nothing pruned; measured 0.9 (miss 1.0): kept, the larger budget."""
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.9, [1.0, 0.72, 1.0, 0.9])
    assert [a["budget_ms"] for a in fit.attempts] == [4.5, 5.0]
    assert counts == {0: 16, 1: 32} and fit.predicted_ms == 5.0 and timed == [[[16, 8]], [[16, 32]]]


def test_a_smaller_budget_within_the_target_does_not_replace_a_larger_one(chain, monkeypatch):
    """0.72 (miss 0.8, within: budget 4.5 kept) -> 5.0 (capped), nothing pruned; 1.08 (1.2) -> 5.0 / 1.2
    = 4.1667, {8, 8}; 0.81 (0.9, within, but 4.1667 < 4.5) -> 4.6296, {8, 24} (4.55); 0.95 (1.056), the last.
    The widths of budget 4.5 are kept, not those of 4.1667."""
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.9, [1.0, 0.72, 1.0, 1.08, 1.0, 0.81, 1.0, 0.95])
    assert [a["budget_ms"] for a in fit.attempts] == pytest.approx([4.5, 5.0, 5.0 / 1.2, 5.0 / 1.2 / 0.9], rel=1e-12)
    assert timed == [[[16, 8]], [[16, 32]], [[8, 8]], [[8, 24]]]
    assert counts == {0: 16, 1: 8} and fit.predicted_ms == 4.25


def test_a_miss_of_exactly_two_percent_is_within_the_target(chain, monkeypatch):
    """0.72 (miss 0.8, within: budget 4.5 kept) -> 5.0, nothing pruned; 0.918 / 1.0 / 0.9 is exactly
    1.02, the tolerance: within, and the larger budget, so its widths are kept."""
    assert 0.918 / 1.0 / 0.9 == 1.02
    counts, fit, _ = fit_latency(chain, monkeypatch, 0.9, [1.0, 0.72, 1.0, 0.918])
    assert [a["budget_ms"] for a in fit.attempts] == [4.5, 5.0] and counts == {0: 16, 1: 32}


@pytest.fixture(scope="module")
def chain_16_40():
    normalized, _ = normalize(FACTORIES["conv_chain"](widths=(16, 40)))
    return normalized, analyze(normalized)


def test_the_uniform_fit_moves_every_group_by_its_step(chain_16_40, monkeypatch):
    """Groups of 16 and 40 channels, steps of 8: group 0 saves 0.25 at 8, group 1 0.25 at 24 or
    fewer. Budget 0.95 * 5.0 = 4.75. Uniform ratios r in steps of 8 keep {16, 40} up to r = 0.1,
    {16, 32} to 0.25 (5.0 both), then {8, 32} (4.75): the bisection's end; the give-back cannot
    widen group 0 (5.0), widens group 1 to 40 (still 4.75): {8, 40}. (By single channels instead,
    the bisection would end at {10, 24}, charged 16's and 24's times, and give back {16, 24}.)"""
    steps = {0: {8: 0.25, 16: 0.5}, 1: {8: 0.25, 16: 0.25, 24: 0.25, 32: 0.5, 40: 0.5}}
    counts, fit, timed = fit_latency(chain_16_40, monkeypatch, 0.95, [1.0, 0.95], steps=steps)
    assert counts == {0: 8, 1: 40} and fit.predicted_ms == 4.75 and timed == [[[8, 40]]]


def test_with_pro_both_rankings_are_fitted_to_the_budget_in_microseconds(chain, monkeypatch):
    """PRO gets the table's prediction in whole microseconds as its cost (widths {16, 8}: round(1000
    * 4.25) = 4250), the budget 1000 * 0.9 * 5.0 = 4500, each group's step and the samples asked
    for, ranked per microsecond or per MAC. Both rankings' widths measure 0.936 of the original,
    4 % over the target: within PRO's 5 % (not the uniform fit's 2 %), so no refit, and the smaller
    error (per MAC, 0.1) is kept, with its steps."""
    calls = []

    class Search:  # latency.ProSearch: one per ranking, asked for the budget
        def __init__(self, normalized, analysis, method, channels, cost, calibration, steps, samples, progress,
                     rank, rebuilt, pooled, errors):
            self.call = dict(cost=cost, calibration=calibration, steps=steps, samples=samples, rank=rank,
                             rebuilt=rebuilt, method=method, pooled=pooled, errors=errors)

        def choose(self, budget):
            calls.append(dict(self.call, budget=budget))
            return ProChoice({0: 16, 1: 8}, ["per microsecond"], 0.2) if self.call["rank"] is self.call["cost"] else \
                ProChoice({0: 8, 1: 16}, ["per MAC"], 0.1)

    monkeypatch.setattr(latency, "ProSearch", Search)
    macs, method = (lambda keep: 0), SimpleNamespace(reconstructs=False)
    counts, fit, timed, trace = fit_latency(chain, monkeypatch, 0.9, [1.0, 0.936, 0.936], pro=True, method=method,
                                            macs=macs)
    assert len(calls) == 2 and calls[1]["rank"] is macs and calls[0]["cost"] is calls[1]["cost"]
    assert calls[0]["errors"] == {} and calls[0]["errors"] is calls[1]["errors"]  # one record for both rankings
    cost = calls[0]["cost"]
    assert cost({0: np.arange(16), 1: np.arange(8)}) == 4250 and cost({0: np.arange(8), 1: np.arange(8)}) == 4050
    assert all(c["budget"] == 4500.0 and c["steps"] == {0: 8, 1: 8} and c["samples"] == 7 and c["rebuilt"] is None
               and c["calibration"] == "calibration" and c["method"] is method and c["pooled"] is False
               for c in calls)
    assert timed == [[[16, 8], [8, 16]]]
    assert counts == {0: 8, 1: 16} and trace == ["per MAC"] and fit.ranking == "per MAC"
    assert fit.rankings == {"per microsecond": 0.2, "per MAC": 0.1} and fit.predicted_ms == 4.55


def test_a_miss_beyond_the_deepest_pruning_stops_the_refits(chain, monkeypatch):
    """Measured 3.0 of the original at target 0.9 (miss 3.33): budget 4.5 / 3.33 = 1.35 is below the
    deepest pruning's 4.05, so no refit; nothing was within the target, the last widths stay."""
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.9, [1.0, 3.0])
    assert counts == {0: 16, 1: 8} and len(fit.attempts) == 1 and len(timed) == 1


def test_a_slow_refit_after_one_within_the_target_keeps_the_one_within(chain, monkeypatch):
    """0.45 (miss 0.5, within) -> 5.0 (capped), nothing pruned, measured 1.0 (1.11) -> 4.5,
    {16, 8}: 0.99 (1.1) -> 4.09, {8, 8}: 0.99 (1.1), the fourth timing. Only the first was within."""
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.9, [1.0, 0.45, 1.0, 1.0, 1.0, 0.99, 1.0, 0.99])
    assert [a["budget_ms"] for a in fit.attempts] == pytest.approx([4.5, 5.0, 4.5, 4.5 / 1.1], rel=1e-12)
    assert counts == {0: 16, 1: 8} and fit.predicted_ms == 4.25 and len(timed) == 4


def test_a_target_beyond_the_table_s_deepest_pruning_is_fitted_in_the_table_s_units_when_measured_within(
        chain, monkeypatch):
    """Target 0.75: budget 3.75 < the deepest's predicted 4.05. The deepest pruning {8, 8} measures
    1.4 / 2.0 = 0.7 of the original, within 0.75: the budget becomes 4.05 * 0.75 / 0.7 = 4.339, where
    the fit gives back group 0: {16, 8} (4.25)."""
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.75, [2.0, 1.4, 1.0, 0.75])
    assert timed == [[[8, 8]], [[16, 8]]]
    assert [a["budget_ms"] for a in fit.attempts] == pytest.approx([4.05 * 0.75 / 0.7], rel=1e-12)
    assert counts == {0: 16, 1: 8}


def test_a_target_the_deepest_pruning_meets_exactly_is_fitted_without_timing_it(chain, monkeypatch):
    """Group 0 saving 0.25 at 8: the deepest pruning predicts 5.0 - (0.25 + 0.75) = 4.0, exactly the
    budget 0.8 * 5.0, so it is within the target as predicted: fitted ({8, 8}) and timed once."""
    steps = {0: {8: 0.25, 16: 0.5}, 1: STEPS[1]}
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.8, [1.0, 0.8], steps=steps)
    assert counts == {0: 8, 1: 8} and fit.predicted_ms == 4.0 and timed == [[[8, 8]]]
    assert [a["budget_ms"] for a in fit.attempts] == [4.0]


@pytest.mark.parametrize("deepest_ms, fastest", [(1.6, "0.800"), (2.2, "1.000"), (1.52, "0.760")])
def test_a_target_beyond_the_deepest_pruning_measured_is_refused_with_the_fraction_measured(
        chain, monkeypatch, deepest_ms, fastest):
    """The deepest pruning measured against the original's 2.0: 1.6 -> 0.8; 2.2 (slower: noise) -> 1.0."""
    with pytest.raises(OnnxPruneError) as refused:
        fit_latency(chain, monkeypatch, 0.75, [2.0, deepest_ms])
    assert str(refused.value) == (f"--keep-latency 0.75: unreachable; the fastest pruning allowed (--round-to 8, "
                                  f"frozen groups untouched) keeps {fastest} of the latency (measured, batch 1)")


def test_with_a_table_from_elsewhere_the_prediction_decides_alone(chain, monkeypatch, tmp_path):
    """A table read from a file: no timing at all; the deepest pruning predicts 4.05 / 5.0 = 0.81."""
    normalized, analysis = chain
    path = tmp_path / "table.json"
    path.write_text(json.dumps(
        LatencyTable({"model_sha256": latency.model_hash(normalized)}, 5.0, STEPS).to_json()))
    counts, fit, timed = fit_latency(chain, monkeypatch, 0.9, [], table_path=str(path))
    assert counts == {0: 16, 1: 8} and fit.predicted_ms == 4.25 and timed == [] and fit.attempts == []
    assert fit.measured_here is False and fit.to_json()["table"] == str(path)
    with pytest.raises(OnnxPruneError, match=r"keeps 0\.810 of the latency \(predicted, batch 1\)"):
        fit_latency(chain, monkeypatch, 0.8, [], table_path=str(path))
    path.write_text(json.dumps(LatencyTable({"model_sha256": "another"}, 5.0, STEPS).to_json()))
    with pytest.raises(OnnxPruneError, match="^" + re.escape(f"{path}: made for another model")):  # the table's path
        fit_latency(chain, monkeypatch, 0.9, [], table_path=str(path))
