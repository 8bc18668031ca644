"""PRO: per-group widths chosen by their effect on the final output."""

from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import onnx
import pytest
from builders import FACTORIES, NetBuilder, random_feeds, run
from checks import assert_closest_allowed, assert_refused
from click.testing import CliRunner
from onnx import numpy_helper

from onnxprune import OnnxPruneError, PruneConfig, prune
from onnxprune import methods
from onnxprune.cli import main
from onnxprune.config import Method
from onnxprune import analyze, normalize
from onnxprune.analysis.consumers import reconstructable
from onnxprune.calibration.statistics import HOLDOUT_EVERY, Calibration, StatsMode, collect
from onnxprune.progress import no_progress
from onnxprune.analysis.cost import MacPredictor, model_cost
from onnxprune.methods.l1 import l1_scores, select
from onnxprune.passes.surgery import prune_channels
from onnxprune.widths import pro
from onnxprune.widths.pro import Reconstructions, allowed_counts, optimize_counts


def calibration(model, samples=64, batch=16, seed=1):
    feeds = random_feeds(model, batch=samples, seed=seed)
    return Calibration(lambda: ({k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, samples, batch)),
                       samples)


def final_error(model, pruned, feeds):
    return float(np.mean((run(model, feeds)[0] - run(pruned, feeds)[0]) ** 2))


def test_allowed_counts():
    assert allowed_counts(64, 8, 8) == [64, 56, 48, 40, 32, 24, 16, 8]
    assert allowed_counts(20, 8, 8) == [20, 8]
    assert allowed_counts(10, 1, 2) == [10, 8, 6, 4, 2]


@pytest.mark.parametrize("method", [Method.L1, Method.REAP])
@pytest.mark.parametrize("target", ["keep_flops", "keep_params"])
def test_pro_reaches_the_target_as_closely_as_the_steps_allow(method, target):
    """Within the target, and the give-back leaves no group that could take one more channel."""
    model = FACTORIES["conv_chain"](widths=(32, 16, 32))
    result = prune(model, PruneConfig(method=method, round_to=1, pro=True, pro_samples=16, **{target: 0.5}),
                   calibration(model))
    assert_closest_allowed(model, result, 1, **{target: 0.5})
    assert_trace_replays(model, result)


@pytest.mark.parametrize("method", [Method.THINET, Method.L1])
def test_pro_with_round_to_8(method):
    """PRO's steps and give-back move by --round-to: every width is a multiple of 8 (or all),
    and none can take 8 more within the target; ThiNet's candidates are reconstructed too."""
    model = FACTORIES["conv_chain"](widths=(16, 24, 16))
    result = prune(model, PruneConfig(method=method, round_to=8, pro=True, pro_samples=16, keep_flops=0.5),
                   calibration(model))
    assert_closest_allowed(model, result, 8, keep_flops=0.5)
    assert_trace_replays(model, result)
    assert all(step.channels % 8 == 0 for step in result.pro)
    if method.needs_data:
        assert {n.group for n in result.layers} == {c.group.id for c in result.groups
                                                    if c.channels_after < c.group.channels}


def assert_trace_replays(model, result):
    """PRO's trace: each step narrows its group to an allowed count, the recorded cost is the
    cost of the widths so far, costs fall, and the pruned model's error is positive."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    by_params = result.config.keep_params is not None
    predict = (pro_params(analysis) if by_params
               else MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes)).macs)
    scores = l1_scores(analysis)
    counts = {c.group.id: c.group.channels for c in result.groups if c.group.prunable and c.reason is None}
    last = result.params_before if by_params else result.macs_before
    assert result.pro
    for step in result.pro:
        assert step.channels < counts[step.group]
        counts[step.group] = step.channels
        assert step.cost == predict(analysis.removed_mask(select(analysis, scores, counts))) < last
        last = step.cost
    assert result.pro[-1].error > 0


def pro_params(analysis):
    from onnxprune.analysis.cost import ParamPredictor

    return ParamPredictor(analysis).params


def test_pro_error_is_the_mean_squared_final_output_error_of_its_widths():
    """For l1 a step's error is the mean over PRO's samples of ||f(x) - f_pruned(x)||^2 of the
    model pruned to the widths so far."""
    model = FACTORIES["conv_chain"](widths=(16, 32, 16))
    cal = calibration(model)
    result = prune(model, PruneConfig(method=Method.L1, round_to=1, pro=True, pro_samples=24, keep_flops=0.6), cal)
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    feeds = {k: np.concatenate([b[k] for b in cal.batches()])[:24] for k in ["input"]}
    counts = {c.group.id: c.group.channels for c in result.groups if c.group.prunable}
    reference = run(normalized, feeds)[0].astype(np.float64)
    for step in result.pro:
        counts[step.group] = step.channels
        pruned = prune_channels(normalized, analysis, select(analysis, l1_scores(analysis), counts))
        out = run(pruned, feeds)[0].astype(np.float64)
        assert step.error == pytest.approx(np.mean(np.sum((out - reference) ** 2, axis=1)), rel=1e-5)


class KnownErrors:
    """PRO's candidates with a known final-output error: each removed channel of group g adds
    ``per_channel[g]`` to the mean squared error (the output is sqrt of the sum)."""

    def __init__(self, channels, per_channel, samples):
        self.channels, self.per_channel, self.samples = channels, per_channel, samples

    def evaluate(self, counts, group):
        error = sum(self.per_channel[g] * (self.channels[g] - k) for g, k in counts.items())
        return np.full((self.samples, 1), np.sqrt(error))

    def commit(self, counts, group):
        pass

    def at(self, counts):
        return self.evaluate(counts, None)


class ByIndex:
    """A data-free method whose removal order is the channels' index order."""

    reconstructs = False

    def orders(self, analysis, channels):
        return {g: np.arange(n) for g, n in channels.items()}


def no_parts(channels):
    """An analysis of independent groups, none read in parts (all that the search asks of it here)."""
    from types import SimpleNamespace
    return SimpleNamespace(groups=list(channels), layouts={}, removed_mask=lambda keep: None)


def choose(channels, macs_per_channel, error_per_channel, keep, round_to, monkeypatch, budget=None, rank=None,
           choice=False, progress=no_progress):
    """PRO's widths on two independent groups whose MACs and error per channel are known."""
    model = FACTORIES["conv_chain"]()
    samples = 4
    monkeypatch.setattr(pro, "PrunedCandidates",
                        lambda *args: KnownErrors(channels, error_per_channel, samples))
    cost = lambda kept: sum(macs_per_channel[g] * len(k) for g, k in kept.items())  # noqa: E731
    total = sum(macs_per_channel[g] * n for g, n in channels.items())
    budget = keep * total if budget is None else budget
    result = optimize_counts(model, no_parts(channels), ByIndex(), channels, cost, budget, calibration(model, samples),
                             round_to, samples, progress, rank=rank)
    return result if choice else (result.counts, result.steps)


def test_pro_ranks_steps_by_error_per_mac_saved(monkeypatch):
    """Group 0's channels cost 100 MACs and 1.0 of error each, group 1's 1 MAC and 0.1: per MAC
    saved, group 0 is 10x cheaper although each of its steps adds more error."""
    counts, trace = choose({0: 16, 1: 16}, {0: 100, 1: 1}, {0: 1.0, 1: 0.1}, 0.75, 1, monkeypatch)
    assert counts == {0: 11, 1: 16}  # 5 channels of group 0: 1616 -> 1116 MACs <= 1212
    assert [step.group for step in trace] == [0] * 5
    assert [step.error for step in trace] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    # Group 1 now cheaper per MAC: all its steps go first (15 MACs), then one of group 0 is needed
    # (budget 1599.84), after which group 1 gets all its channels back.
    counts, trace = choose({0: 16, 1: 16}, {0: 100, 1: 1}, {0: 1.0, 1: 0.001}, 0.99, 1, monkeypatch)
    assert [step.group for step in trace] == [1] * 15 + [0]
    assert counts == {0: 15, 1: 16}


def test_pro_gives_back_what_the_last_step_overshot(monkeypatch):
    """Steps of 4 channels (64 // 16): the fifth step of group 0 overshoots by 3 channels, which
    are given back one at a time (round_to 1) while the budget holds."""
    counts, trace = choose({0: 64, 1: 64}, {0: 100, 1: 1}, {0: 1.0, 1: 10.0}, 0.75, 1, monkeypatch)
    assert [(step.group, step.channels) for step in trace] == [(0, 60), (0, 56), (0, 52), (0, 48), (0, 44)]
    assert counts == {0: 47, 1: 64}  # 4764 MACs <= 4848; 48 channels would cost 4864
    counts, _ = choose({0: 64, 1: 64}, {0: 100, 1: 1}, {0: 1.0, 1: 10.0}, 0.75, 8, monkeypatch)
    assert counts == {0: 40, 1: 64}  # steps of 8; 48 would cost 4864
    counts, _ = choose({0: 64, 1: 64}, {0: 100, 1: 1}, {0: 1.0, 1: 10.0}, None, 1, monkeypatch, budget=4764)
    assert counts == {0: 47, 1: 64}  # exactly the budget is within it


def test_pro_ranks_by_another_cost_and_stops_on_its_own(monkeypatch):
    """Ranked per channel (not per MAC), group 1's steps are cheaper (0.1 < 1.0 per channel): all
    15 go first although they save only 15 MACs, then group 0 until the MAC budget (1212)
    holds: 12 * 100 + 1 = 1201; then group 1 gets 11 channels back (1200 + 12 <= 1212)."""
    per_channel = lambda kept: sum(len(k) for k in kept.values())  # noqa: E731
    result = choose({0: 16, 1: 16}, {0: 100, 1: 1}, {0: 1.0, 1: 0.1}, 0.75, 1, monkeypatch, rank=per_channel,
                    choice=True)
    assert [step.group for step in result.steps] == [1] * 15 + [0] * 4
    assert result.counts == {0: 12, 1: 12}
    # the error is that of the final counts, after the give-back: 4 * 1.0 + 4 * 0.1
    assert result.steps[-1].error == pytest.approx(4 * 1.0 + 15 * 0.1)
    assert result.error == pytest.approx(4 * 1.0 + 4 * 0.1)


def mac_problem(model):
    """The normalised model, its analysis, its prunable groups' widths and their MAC cost of kept channels."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    channels = {g.id: g.channels for g in analysis.groups if g.prunable}
    macs = MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes, analysis.unknown_after)).macs
    return normalized, analysis, channels, lambda keep: macs(analysis.removed_mask(keep))


def recording_progress():
    """A Progress that records each step's label, its total and the work it is told is done."""
    steps = {}

    @contextmanager
    def progress(label, total):
        steps[label] = (total, [])
        yield steps[label][1].append

    return progress, steps


def test_pro_reports_its_progress_as_the_cost_saved_toward_the_budget(monkeypatch):
    """The total is the cost to save (1616 - 1212 = 404 MACs), and each commit reports what it
    saved: five steps of group 0, 100 MACs each."""
    progress, steps = recording_progress()
    counts, _ = choose({0: 16, 1: 16}, {0: 100, 1: 1}, {0: 1.0, 1: 0.1}, 0.75, 1, monkeypatch, progress=progress)
    assert counts == {0: 11, 1: 16}
    assert steps == {"PRO: choosing per-layer widths": (404, [100] * 5)}


def test_pro_refuses_a_budget_below_its_smallest_widths(monkeypatch):
    """One channel per group costs 101 MACs: a budget of 100 cannot be reached."""
    with pytest.raises(OnnxPruneError, match="^PRO cannot reach the target: every group is at its smallest width$"):
        choose({0: 16, 1: 16}, {0: 100, 1: 1}, {0: 1.0, 1: 0.1}, None, 1, monkeypatch, budget=100)


def test_pro_draws_only_the_calibration_batches_its_samples_need(monkeypatch):
    """20 samples from batches of 16: the first two batches are drawn, no more, and the
    candidates run on their first 20 samples."""
    model = FACTORIES["conv_chain"]()
    data = random_feeds(model, batch=64, seed=1)
    drawn, used = [], {}

    def batches():
        for i in range(0, 64, 16):
            drawn.append(i)
            yield {k: v[i:i + 16] for k, v in data.items()}

    def candidates(normalized, analysis, channels, keep_of, feeds, output, calib):
        used.update(feeds)
        return KnownErrors(channels, {0: 1.0, 1: 0.1}, 20)

    monkeypatch.setattr(pro, "PrunedCandidates", candidates)
    cost = lambda kept: sum(len(k) for k in kept.values())  # noqa: E731
    optimize_counts(model, no_parts({0: 16, 1: 16}), ByIndex(), {0: 16, 1: 16}, cost, 24, Calibration(batches, 64), 1,
                    20)
    assert drawn == [0, 16]
    assert used.keys() == data.keys()
    np.testing.assert_array_equal(used["input"], data["input"][:20])


def reap_reconstructions(model, cal):
    """The normalised model, its analysis, every reconstructable group's consumers and width, and
    REAP's reconstructions of them from ``cal``."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    plans, _ = reconstructable(analysis)
    channels = {g: analysis.groups[g].channels for g in plans}
    return normalized, analysis, plans, channels, Reconstructions(normalized, analysis, methods.get("reap"),
                                                                    channels, cal, no_progress)


@pytest.mark.parametrize("mode", [StatsMode.HOST, StatsMode.GRAPH])
def test_reconstructions_use_statistics_collected_in_the_calibrations_mode(mode):
    """PRO's reconstructions fit on the original model's statistics computed as the calibration
    says (host or onnxruntime, its rows sampled as it says): the same, to the bit, as collecting them in that mode."""
    model = FACTORIES["conv_chain"](widths=(8, 16, 8))
    cal = replace(calibration(model), mode=mode)
    normalized, analysis, plans, channels, rebuilt = reap_reconstructions(model, cal)
    consumers = list({c.node: c for g in channels for c in plans[g]}.values())
    fit, holdout = collect(normalized, normalized, consumers, cal.batches, mode, list(cal.providers), HOLDOUT_EVERY,
                           rows=cal.sampling)
    for mine, theirs in ((rebuilt.fit, fit), (rebuilt.holdout, holdout)):
        assert mine.keys() == theirs.keys() and mine
        for node, s in theirs.items():
            assert mine[node].rows == s.rows
            for name in ("gram", "cross", "yy"):
                np.testing.assert_array_equal(getattr(mine[node], name), getattr(s, name))


def test_candidates_rebase_when_the_cost_falls_below_rebase_of_the_base(monkeypatch):
    """REAP + PRO: the candidates' base model is rebuilt at the first commit whose cost is below
    REBASE times the base's own cost (replayed from the trace), and at the chosen counts when
    channels were given back; never otherwise."""
    model = FACTORIES["conv_chain"](widths=(8, 16, 8))
    normalized, analysis, channels, cost = mac_problem(model)
    rebases = []
    rebase = pro.VariantCandidates.rebase

    def recording_rebase(self, counts):
        rebases.append(dict(counts))
        rebase(self, counts)

    monkeypatch.setattr(pro.VariantCandidates, "rebase", recording_rebase)
    full = cost({g: np.arange(n) for g, n in channels.items()})
    result = optimize_counts(normalized, analysis, methods.get("reap"), channels, cost, 0.45 * full,
                             calibration(model), 2, 16)
    expected, counts, base = [dict(channels)], dict(channels), full
    for step in result.steps:
        counts[step.group] = step.channels
        if step.cost < pro.REBASE * base:
            expected.append(dict(counts))
            base = step.cost
    if result.counts != counts:
        expected.append(result.counts)
    assert len(expected) > 2 and rebases == expected


def test_the_final_error_is_that_of_the_chosen_widths():
    """l1 + PRO: ProChoice.error recounts as the final-output error of the model pruned to its counts."""
    model = FACTORIES["conv_chain"](widths=(16, 32, 16))
    cal = calibration(model)
    normalized, analysis, channels, cost = mac_problem(model)
    result = optimize_counts(normalized, analysis, methods.get("l1"), channels, cost,
                             0.55 * cost({g: np.arange(n) for g, n in channels.items()}), cal, 4, 24)
    feeds = {"input": np.concatenate([b["input"] for b in cal.batches()])[:24]}
    pruned = prune_channels(normalized, analysis, select(analysis, l1_scores(analysis), result.counts))
    reference = run(normalized, feeds)[0].astype(np.float64)
    out = run(pruned, feeds)[0].astype(np.float64)
    assert result.error == pytest.approx(np.mean(np.sum((out - reference) ** 2, axis=1)), rel=1e-5)
    assert result.counts != channels


@pytest.mark.parametrize("name", ["densenet_like", "inception_like"])
@pytest.mark.parametrize("method", [Method.REAP, Method.NU])
def test_pro_prunes_the_groups_of_concatenations(name, method):
    """Consumers reading a Concat of several groups take part in every group's candidates."""
    model = FACTORIES[name]()
    result = prune(model, PruneConfig(method=method, round_to=1, pro=True, pro_samples=16, keep_flops=0.5),
                   calibration(model))
    assert not any(c.not_reconstructable for c in result.groups)
    assert_closest_allowed(model, result, 1, keep_flops=0.5)
    assert_trace_replays(model, result)
    assert len({step.group for step in result.pro}) > 1


def test_candidate_weights_of_a_concat_consumer_leave_out_what_the_base_lost():
    """A candidate's consumer that also reads group B is fitted on B's channels that the base
    still has: zero weights on B's removed ones (which the base no longer computes)."""
    model = FACTORIES["densenet_like"]()
    normalized, analysis, plans, channels, rebuilt = reap_reconstructions(model, calibration(model))
    orders, weights = rebuilt.orders, rebuilt.weights
    g, c, b = next((g, c, b) for g in plans for c in plans[g] for b in plans
                   if b != g and c in plans[b])  # c reads groups g and b
    gone = orders[b][:channels[b] // 2]
    removed = analysis.removed_mask({b: np.setdiff1d(np.arange(channels[b]), gone)})
    classes = analysis.atom_class[analysis.layouts[c.input].atoms]
    lost = np.flatnonzero(removed[classes])
    assert len(lost) == len(gone)
    rows = (lost[:, None] * c.taps + np.arange(c.taps)).ravel()
    k = channels[g] - 1
    with_b, without = weights(g, k, removed)[c.node][1], weights(g, k)[c.node][1]
    assert np.all(with_b[rows] == 0) and np.any(without[rows] != 0)
    assert weights(g, k, removed) is weights(g, k, removed)  # cached per base


def test_pro_with_target_one_prunes_nothing():
    model = FACTORIES["basic_block_net"]()
    result = prune(model, PruneConfig(method=Method.L1, keep_flops=1.0, pro=True), calibration(model))
    assert result.macs_after == result.macs_before and not result.pro
    assert all(c.channels_after == c.group.channels for c in result.groups)


def redundant_middle_layer():
    """conv1's 32 channels are 4 distinct filters repeated: it can lose most of them for free."""
    b = NetBuilder(3, seed=5)
    x = b.relu(b.conv("input", 16))
    x = b.relu(b.conv(x, 32))
    x = b.relu(b.conv(x, 16))
    model = b.model(b.gemm(b.flatten(b.gap(x)), 10))
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits["conv1.weight"]).copy()
    bias = numpy_helper.to_array(inits["conv1.bias"]).copy()
    w[4:], bias[4:] = np.tile(w[:4], (7, 1, 1, 1)), np.tile(bias[:4], 7)
    inits["conv1.weight"].CopyFrom(numpy_helper.from_array(w, "conv1.weight"))
    inits["conv1.bias"].CopyFrom(numpy_helper.from_array(bias, "conv1.bias"))
    return model


def test_pro_beats_uniform_widths_on_the_final_output():
    model = redundant_middle_layer()
    cal = calibration(model)
    feeds = random_feeds(model, batch=64, seed=1)
    uniform = prune(model, PruneConfig(method=Method.REAP, keep_flops=0.6, round_to=1), cal)
    pro = prune(model, PruneConfig(method=Method.REAP, keep_flops=0.6, round_to=1, pro=True, pro_samples=64), cal)
    assert pro.macs_after <= 0.6 * pro.macs_before
    assert final_error(model, pro.model, feeds) < final_error(model, uniform.model, feeds)
    removed = {c.group.producers[0]: c.group.channels - c.channels_after for c in pro.groups}
    assert removed["conv1"] > sum(removed.values()) / 2  # the redundant layer takes most of the cut


@pytest.mark.parametrize("kwargs, message", [
    ({"ratio": 0.5, "pro": True}, "--pro chooses the ratios"),
    ({"keep_flops": 0.5, "keep_params": 0.5}, "exactly one"),
    ({"keep_params": 1.5}, "--keep-params"),
    ({"keep_flops": 0.5, "pro": True, "pro_samples": -1}, "--pro-samples"),
])
def test_impossible_pro_options(kwargs, message):
    with pytest.raises(OnnxPruneError, match=message):
        PruneConfig(**kwargs)


def test_pro_needs_calibration(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(FACTORIES["conv_chain"](), path)
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(tmp_path / "o.onnx"), "--keep-flops", "0.5",
                                       "--pro"])
    assert_refused(result, "--pro needs calibration data")


@pytest.mark.parametrize("name", ["basic_block_net", "flatten_gemm_net", "mobilenetv2_block_net", "matmul_head_net",
                                  "convtranspose_net", "grouped_conv_net"])
def test_candidates_on_a_pruned_base_measure_what_they_measure_on_the_original_shape(name, monkeypatch):
    """PRO runs candidates on a model pruned to the widths of an earlier commit (rebased
    whenever the cost falls below REBASE of the base's); rebasing at every commit or never
    must give the same choices and errors (a grouped conv's rows restricted block by block)."""
    from onnxprune.widths import pro

    model = FACTORIES[name]()
    config = PruneConfig(method=Method.REAP, keep_flops=0.4, round_to=1, pro=True, pro_samples=32)
    traces = []
    for rebase in (0.0, 1.01):
        monkeypatch.setattr(pro, "REBASE", rebase)
        traces.append(prune(model, config, calibration(model)).pro)
    never, always = traces
    assert len(never) > 2 and [(p.group, p.channels) for p in never] == [(p.group, p.channels) for p in always]
    np.testing.assert_allclose([p.error for p in always], [p.error for p in never], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("method", ["reap", "l1"])
def test_one_search_answers_several_budgets_as_fresh_searches_do(method):
    """A ProSearch asked for 0.6 of the MACs, then 0.4 (it continues its path), then 0.75 (it
    reads the path's start), then 0.6 again: each answer (counts, steps, error) is what a fresh
    search for that budget alone gives."""
    model = FACTORIES["conv_chain"](widths=(16, 32, 16))
    normalized, analysis, channels, cost = mac_problem(model)
    full = cost({g: np.arange(n) for g, n in channels.items()})
    search = pro.ProSearch(normalized, analysis, methods.get(method), channels, cost, calibration(model), 2, 16)
    answers = [(f, search.choose(f * full)) for f in (0.6, 0.4, 0.75, 0.6)]
    assert len({len(a.steps) for _, a in answers}) == 3
    for fraction, answer in answers:
        fresh = optimize_counts(normalized, analysis, methods.get(method), channels, cost, fraction * full,
                                calibration(model), 2, 16)
        assert answer.counts == fresh.counts and answer.steps == fresh.steps
        assert answer.error == pytest.approx(fresh.error, rel=1e-6, abs=1e-12)


def test_every_stage_of_a_data_prune_reports_its_progress_to_the_end():
    """REAP + PRO: PRO's statistics, removal orders, ridges and search, then each group's statistics,
    each a labelled step whose work done adds up to its total (the search may overshoot it)."""
    model = FACTORIES["conv_chain"](widths=(16, 32, 16))
    progress, steps = recording_progress()
    result = prune(model, PruneConfig(method=Method.REAP, pro=True, pro_samples=16, keep_flops=0.5),
                   calibration(model), progress)
    pruned = [c for c in result.groups if c.channels_after < c.group.channels]
    labels = list(steps)
    assert labels[:4] == ["PRO: calibrating", "PRO: removal orders", "PRO: ridges", "PRO: choosing per-layer widths"]
    assert [label.split(" group")[0] for label in labels[4:]] == [f"[{i}/{len(pruned)}]"
                                                                 for i in range(1, len(pruned) + 1)]
    for label, (total, done) in steps.items():
        if label.startswith("PRO: choosing"):
            assert sum(done) >= total > 0
        else:
            assert sum(done) == total > 0, label


def test_sample_count_keeps_one_pass_within_its_mac_budget():
    assert pro.sample_count(96e6) == 256  # the largest reference CNN: every sample it is given, up to 256
    assert pro.sample_count(1.093e9) == 29  # YOLOv8n at 320 px: 32 GMAC / 1.093 GMAC
    assert pro.sample_count(4.1e9) == pro.MIN_SAMPLES  # ResNet-50: never fewer than 16
    assert pro.sample_count(4.1e9, requested=64) == 64  # --pro-samples wins
    assert pro.sample_count(0) == 256


def test_refresh_costs_at_most_an_evaluation_per_commit():
    assert [pro.refresh_interval(g) for g in (1, 8, 12, 58)] == [8, 8, 12, 58]


def test_candidate_fits_keep_the_ridge_chosen_at_a_pieces_first_fit(monkeypatch):
    """The ridge of a consumer's fits in the search is chosen once (on the holdout, at its first
    fit) and kept for the group's later candidates: one factorisation a candidate, not one per
    ridge of the grid. The fits equal plain ridge solves at that ridge."""
    from onnxprune.methods import least_squares
    model = FACTORIES["basic_block_net"]()
    normalized, analysis, plans, channels, rebuilt = reap_reconstructions(model, calibration(model))
    chosen = []
    choose = least_squares.choose_alpha
    monkeypatch.setattr(least_squares, "choose_alpha", lambda *a, **k: chosen.append(choose(*a, **k)) or chosen[-1])
    g = next(iter(channels))
    rebuilt.weights(g, channels[g] - 1)
    first = len(chosen)
    assert first == len(plans[g])  # one choice per consumer (no grouped pieces here)
    deeper = rebuilt.weights(g, channels[g] // 2)
    assert len(chosen) == first
    n = channels[g]
    kept = np.sort(np.setdiff1d(np.arange(n), rebuilt.orders[g][: n - n // 2]))
    for (c, theta, _), alpha in zip(deeper.values(), chosen):
        fit = rebuilt._pieces(c, g, rebuilt.nothing)[0].consumer_fit()
        assert fit.holdout is None  # merged into fit once the ridge was chosen
        keep = np.concatenate([kept, np.arange(n, fit.channels)])
        expected = least_squares.ridge_solve(fit.fit, keep, fit.taps, fit.theta0, alpha, fit.copies)
        assert theta.dtype == np.float32  # kept as the float32 model's weights will be written
        np.testing.assert_array_equal(theta, expected.astype(np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_candidate_weights_are_kept_as_the_model_will_be_written(dtype):
    """Reconstructions keep float32 weights for a float32 consumer (theta_params writes them so:
    the same numbers), the float64 solve otherwise (float16 is rounded once, from float64)."""
    import onnx_graphsurgeon as gs
    from onnxprune.analysis.consumers import Consumer
    from onnxprune.methods.weights import stored, theta_params
    rng = np.random.default_rng(0)
    w = gs.Constant("w", rng.normal(size=(4, 3, 1, 1)).astype(dtype))
    b = gs.Constant("b", rng.normal(size=4).astype(dtype))
    node = gs.Node("Conv", "conv", inputs=[gs.Variable("x"), w, b], outputs=[gs.Variable("y")])
    c = Consumer("conv", "Conv", "x", "y", 3, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
    theta = rng.normal(size=(4, 4))
    kept = stored(node, c, theta)
    assert kept.dtype == (np.float32 if dtype == np.float32 else np.float64)
    for got, want in zip(theta_params(c, kept, np.arange(4), w.values, b.values),
                         theta_params(c, theta, np.arange(4), w.values, b.values)):
        np.testing.assert_array_equal(got, want)


def test_ladders_have_fewer_rungs_when_there_are_many_groups():
    assert [pro.rungs_per_group(g) for g in (1, 12, 16, 30, 58, 200)] == [16, 16, 16, 8, 4, 4]


def test_a_committed_groups_next_step_is_measured_only_before_it_is_committed(monkeypatch):
    """Five commits of group 0 (as in test_pro_ranks_steps_by_error_per_mac_saved): both groups are
    measured once at the start, then group 0's next step once before each of its four later
    commits; nothing is measured after the last commit, whose next step is never taken."""
    measured = []
    original = pro.ProSearch.measure
    monkeypatch.setattr(pro.ProSearch, "measure", lambda self, g: measured.append(g) or original(self, g))
    counts, _ = choose({0: 16, 1: 16}, {0: 100, 1: 1}, {0: 1.0, 1: 0.1}, 0.75, 1, monkeypatch)
    assert counts == {0: 11, 1: 16}
    assert sorted(measured[:2]) == [0, 1] and measured[2:] == [0] * 4


def test_pro_never_empties_a_part_of_a_group_read_in_parts():
    """A C2f block's Split reads its group in two parts. REAP's removal order may take every
    channel of one part first; PRO's candidates keep that part's last channel (as the sequential
    pass does) instead of failing with 'pruning would leave tensor ... with no channels'."""
    model = FACTORIES["c2f_like"]()
    result = prune(model, PruneConfig(method=Method.REAP, keep_flops=0.1, round_to=1, pro=True, pro_samples=16),
                   calibration(model))
    assert result.macs_after <= 0.1 * result.macs_before
    check_runs_like(model, result.model)


def check_runs_like(model, pruned):
    feeds = random_feeds(model, batch=2, seed=3)
    assert np.isfinite(run(pruned, feeds)[0]).all()


def test_lateness_is_a_channels_place_in_the_removal_order():
    np.testing.assert_array_equal(pro.lateness(np.array([2, 0]), 3), [1, 2, 0])


def test_removal_orders_stop_at_the_last_rung_of_each_ladder():
    """PRO never leaves a group below its ladder's last rung, so REAP's order stops there: the
    elimination's dearest steps (the most channels gone) are not computed."""
    model = FACTORIES["conv_chain"](widths=(32, 16, 32))
    normalized, analysis, channels, _ = mac_problem(model)
    assert pro.floors(channels, 8) == {g: 8 for g in channels}
    rebuilt = Reconstructions(normalized, analysis, methods.get("reap"), channels, calibration(model), no_progress,
                              pro.ladders(channels, 8))
    assert {g: len(order) for g, order in rebuilt.orders.items()} == {g: n - 8 for g, n in channels.items()}
    full = Reconstructions(normalized, analysis, methods.get("reap"), channels, calibration(model), no_progress)
    for g, order in rebuilt.orders.items():
        np.testing.assert_array_equal(order, full.orders[g][:len(order)])  # the same steps, fewer of them


@pytest.mark.parametrize("name", ["conv_chain", "c2f_like"])
def test_the_first_candidates_are_fitted_before_the_search_and_the_holdouts_go(name):
    """Given the search's ladders, the reconstructions fit every group's first candidate right after
    the removal orders, in the order the search's first round asks for them: the weights are those
    a lazy first fit gives, to the bit (ridges chosen on the same holdouts; a Concat's consumer, read
    by several groups, at its first group's), and every holdout Gram is merged into its fit before
    the search begins."""
    model = FACTORIES[name]()
    cal = calibration(model)
    normalized, analysis, _, _ = mac_problem(model)
    plans, _ = reconstructable(analysis)
    channels = {g: analysis.groups[g].channels for g in plans}
    steps = pro.ladders(channels, 1)
    eager = Reconstructions(normalized, analysis, methods.get("reap"), channels, cal, no_progress, steps)
    lazy = Reconstructions(normalized, analysis, methods.get("reap"), channels, cal, no_progress)
    assert not eager.holdout and lazy.holdout
    for g, ladder in steps.items():
        assert list(eager._cache[g]) == [(ladder[1], eager.nothing[eager.others[g]].tobytes())]
        for (_, a, _), (_, b, _) in zip(eager.weights(g, ladder[1]).values(), lazy.weights(g, ladder[1]).values()):
            np.testing.assert_array_equal(a, b)
    assert eager._alphas == lazy._alphas


def test_pro_frees_its_statistics_when_it_returns(monkeypatch):
    """PRO's reconstructions hold every consumer's statistics (gigabytes on ResNet-50): nothing
    may keep them alive after the search returns, not even a reference cycle waiting for the
    garbage collector (the candidates held the search's bound method before)."""
    import gc
    import weakref

    model = FACTORIES["conv_chain"](widths=(8, 16, 8))
    normalized, analysis, channels, cost = mac_problem(model)
    made = []
    init = Reconstructions.__init__

    def recording_init(self, *args, **kwargs):
        made.append(weakref.ref(self))
        init(self, *args, **kwargs)

    monkeypatch.setattr(Reconstructions, "__init__", recording_init)
    full = cost({g: np.arange(n) for g, n in channels.items()})
    gc.collect()
    gc.disable()
    try:
        optimize_counts(normalized, analysis, methods.get("reap"), channels, cost, 0.45 * full, calibration(model),
                        2, 16)
        assert made and all(ref() is None for ref in made)
    finally:
        gc.enable()


def test_reconstructions_keep_a_few_weights_per_group_and_rebuild_the_rest_alike():
    """The search moves each group a rung at a time, so only its latest KEPT_WEIGHTS counts' weights
    are kept; one asked for again after that is rebuilt to the same values, to the bit: the ridge is
    chosen once, and from then on the consumer's fit and holdout statistics are one sum."""
    model = FACTORIES["conv_chain"](widths=(8, 16, 8))
    *_, channels, rebuilt = reap_reconstructions(model, calibration(model))
    g = max(channels, key=channels.get)
    nodes = [c.node for c in rebuilt.consumers[g]]
    assert all(node in rebuilt.holdout for node in nodes)
    first = {node: theta.copy() for node, (_, theta, _) in rebuilt.weights(g, channels[g] - 1).items()}
    assert not any(node in rebuilt.holdout for node in nodes)
    for k in range(channels[g] - 2, channels[g] - 2 - pro.KEPT_WEIGHTS, -1):
        rebuilt.weights(g, k)
    assert len(rebuilt._cache[g]) == pro.KEPT_WEIGHTS
    assert (channels[g] - 1, b"") not in rebuilt._cache[g]
    again = rebuilt.weights(g, channels[g] - 1)
    assert again.keys() == first.keys()
    for node, (_, theta, _) in again.items():
        np.testing.assert_array_equal(theta, first[node])


def test_prune_frees_pros_candidates_before_the_sequential_pass(monkeypatch):
    """PRO's candidates hold models, sessions and kept activations in reference cycles: prune
    collects them before the sequential pass, which needs the memory (with the collector off)."""
    import gc
    import weakref

    from onnxprune.methods import base
    from onnxprune.widths import variants

    made, alive = [], []
    init, run_pass = variants.Variants.__init__, base.prune_sequential

    def recording_init(self, *args, **kwargs):
        made.append(weakref.ref(self))
        init(self, *args, **kwargs)

    def checking_pass(*args, **kwargs):
        alive.append(sum(ref() is not None for ref in made))
        return run_pass(*args, **kwargs)

    monkeypatch.setattr(variants.Variants, "__init__", recording_init)
    monkeypatch.setattr(base, "prune_sequential", checking_pass)
    model = FACTORIES["conv_chain"](widths=(8, 16, 8))
    gc.collect()
    gc.disable()
    try:
        prune(model, PruneConfig(method=Method.REAP, pro=True, keep_flops=0.5, round_to=1), calibration(model))
    finally:
        gc.enable()
    assert made and alive == [0]


def test_searches_that_share_their_errors_choose_as_alone_and_measure_any_counts_once(monkeypatch):
    """--keep-latency's two rankings share one record of the errors measured, by counts: each
    chooses what it chooses alone, and no counts is measured twice across both."""
    model = FACTORIES["conv_chain"](widths=(16, 32, 16))
    normalized, analysis, channels, cost = mac_problem(model)
    last = max(channels)
    ranks = [cost, lambda keep: sum(len(k) * (50 if g == last else 1) for g, k in keep.items())]
    budget = 0.45 * cost({g: np.arange(n) for g, n in channels.items()})

    def search(rank, errors=None):
        return pro.ProSearch(normalized, analysis, methods.get("reap"), channels, cost, calibration(model), 2, 16,
                             rank=rank, errors=errors).choose(budget)
    measured, evaluate = [], pro.VariantCandidates.evaluate

    def recording(self, counts, group):
        if group is not None:
            measured.append(tuple(sorted(counts.items())))
        return evaluate(self, counts, group)
    monkeypatch.setattr(pro.VariantCandidates, "evaluate", recording)
    alone = [search(rank) for rank in ranks]
    each = len(measured)
    measured.clear()
    shared: dict = {}
    together = [search(rank, shared) for rank in ranks]
    assert [c.counts for c in together] == [c.counts for c in alone]
    assert [c.steps for c in together] == [c.steps for c in alone]
    assert alone[0].counts != alone[1].counts  # two rankings that part ways
    assert len(measured) == len(set(measured)) == len(shared) < each
