"""Shared checks for the tests: run models in onnxruntime and compare them."""

import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from builders import run

from onnxprune import analyze, normalize
from onnxprune.analysis.cost import MacPredictor, ParamPredictor, model_cost
from onnxprune.analysis.groups import Analysis, EditKind
from onnxprune.calibration.statistics import collect
from onnxprune.graph.convert import to_graph, to_model
from onnxprune.methods.l1 import select
from onnxprune.prune import proxy_choice

RTOL, ATOL = 1e-4, 1e-5


def assert_same_outputs(a: onnx.ModelProto, b: onnx.ModelProto, feeds: dict, rtol=RTOL, atol=ATOL) -> None:
    """Both models give the same outputs (onnxruntime, graph optimisations off)."""
    for x, y in zip(run(a, feeds), run(b, feeds), strict=True):
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, rtol=rtol, atol=atol)


def assert_padding_left_out(normalized: onnx.ModelProto, consumers: list, padded: dict, alone: list[dict],
                            real_tokens: int) -> None:
    """The statistics of a padded batch equal those of the same sequences fed ``alone`` at their
    own lengths: both hold the ``real_tokens`` rows only, and the same G and C."""
    fit, _ = collect(normalized, normalized, consumers, lambda: iter([padded]))
    ref, _ = collect(normalized, normalized, consumers, lambda: iter(alone))
    for c in consumers:
        assert fit[c.node].rows == ref[c.node].rows == real_tokens
        np.testing.assert_allclose(fit[c.node].gram, ref[c.node].gram, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fit[c.node].cross, ref[c.node].cross, rtol=1e-4, atol=1e-4)


def random_keep(analysis: Analysis, rng: np.random.Generator) -> dict[int, np.ndarray]:
    """Random kept channels for every prunable group (no tensor emptied)."""
    scores = [rng.random(g.channels) for g in analysis.groups]
    counts = {g.id: max(1, int(round(g.channels * rng.uniform(0.2, 0.9)))) for g in analysis.groups if g.prunable}
    return select(analysis, scores, counts)


def zero_consumer_weights(model: onnx.ModelProto, analysis: Analysis, keep: dict) -> onnx.ModelProto:
    """``model`` with every consumer's weights for the channels ``keep`` drops set to zero.

    Such channels no longer influence any output, so cutting them must change nothing.
    """
    removed = analysis.removed_mask(keep)
    graph = to_graph(model)
    nodes = {n.name: n for n in graph.nodes}
    for edit in analysis.edits:
        node = nodes[edit.node]
        grouped = edit.kind is EditKind.SLICE_GROUPED
        if not grouped and (edit.kind is not EditKind.SLICE_CONST or edit.tensor not in [t.name for t in node.inputs]):
            continue  # not a consumer reading the channels into its weights
        kept = analysis.kept_positions(edit.tensor, removed)
        if kept is None:
            continue
        w = np.array(node.inputs[edit.index].values)
        if grouped:  # output block j's rows read input block j: its columns are positions - j * a
            groups, channels = int(node.attrs["group"]), analysis.channel_count(edit.tensor)
            a, rows = channels // groups, w.shape[0] // groups
            for j in range(groups):
                w[j * rows:(j + 1) * rows, np.setdiff1d(np.arange(j * a, (j + 1) * a), kept) - j * a] = 0
        else:
            dropped = np.setdiff1d(np.arange(w.shape[edit.axis]), kept)
            index = [slice(None)] * w.ndim
            index[edit.axis] = dropped
            w[tuple(index)] = 0
        node.inputs[edit.index] = gs.Constant(node.inputs[edit.index].name + "_zeroed", w)
    return to_model(graph, model)


def zero_rows(c, theta: np.ndarray, gone: np.ndarray, channels: int) -> np.ndarray:
    """``theta`` (a consumer's, all its ``channels`` input channels) with the rows of the input
    channels at ``gone`` zeroed; for a grouped conv, in each output block's columns, its block's."""
    theta = theta.copy()
    a = channels // c.groups
    b = theta.shape[1] // c.groups
    for j in range(c.groups):
        mine = gone[gone // a == j] - j * a
        theta[np.ix_((mine[:, None] * c.taps + np.arange(c.taps)).ravel(), np.arange(j * b, (j + 1) * b))] = 0.0
    return theta


def assert_closest_allowed(model, result, round_to, keep_flops=None, keep_params=None):
    """The result's counts are allowed (multiples of ``round_to``, and of its blocks for a group that
    grouped convs cut, or all channels), within the target, and as close to it as the rounding
    allows: no pruned group can take one more step (or all of its channels) and stay within it."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    if keep_params is not None:
        predict, budget = ParamPredictor(analysis).params, keep_params * result.params_before
        after = result.params_after
    else:
        predict = MacPredictor(analysis, model_cost(analysis.graph, analysis.shapes)).macs
        budget, after = keep_flops * result.macs_before, result.macs_after
    keep_for = proxy_choice(analysis)
    cost = lambda counts: predict(analysis.removed_mask(keep_for(counts)))  # noqa: E731
    counts = {c.group.id: c.channels_after for c in result.groups if c.group.prunable and c.reason is None}
    channels = {c.group.id: c.group.channels for c in result.groups}
    assert after <= budget
    assert cost(counts) == after
    assert any(counts[g] < channels[g] for g in counts)
    for g, k in counts.items():
        step = math.lcm(round_to, analysis.groups[g].blocks)
        assert k == channels[g] or k % step == 0, (g, k)
        if k < channels[g]:
            assert cost({**counts, g: min(channels[g], k + step)}) > budget, (g, k)


def assert_refused(result, message):
    """The promise for bad input (docs/GUIDE.md): one `error:` line naming the problem and exit status 2,
    from a handled error (an unhandled exception would also exit non-zero, with status 1)."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.output
