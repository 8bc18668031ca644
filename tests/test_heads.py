"""Attention heads: one group per attention layer, removed whole (Q, K, V columns, output-projection rows, the Reshapes' head counts), exactly, by every method and PRO; unmatched patterns stay with their reasons."""

import json

import numpy as np
import onnx
import pytest
from builders import run
from checks import assert_same_outputs, zero_consumer_weights
from click.testing import CliRunner
from encoders import EncoderBuilder, EncoderSpec, encoder_feeds
from oracles import reap_order_naive

from onnxprune import PruneConfig, analyze, normalize, prune, prune_channels, methods
from onnxprune.analysis.consumers import reconstructable
from onnxprune.analysis.cost import cost_of
from onnxprune.calibration.statistics import HOLDOUT_EVERY, Calibration, collect
from onnxprune.cli import main
from onnxprune.config import Method
from onnxprune.graph.probe import probe_model
from onnxprune.methods.least_squares import SELECTION_ALPHA
from onnxprune.methods.reap import reap_order
from onnxprune.methods.sequential import prune_sequential
from onnxprune.methods.weights import theta_of
from onnxprune.widths.budget import head_step

ROLES = ("query", "key", "value")


def build(**kw):
    spec = EncoderSpec(**kw)
    return spec, EncoderBuilder(spec).model()


def head_groups(analysis):
    return [g for g in analysis.groups if g.head_dim]


def calibration(spec, samples=64, batch=16, seed=1):
    feeds = encoder_feeds(spec, batch=samples, seed=seed)
    return Calibration(lambda: ({k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, samples, batch)),
                       samples)


def encoder_macs(spec, ffn, heads):
    """MACs per sample: per layer Q, K, V and the output projection (4 S H a, a = heads[l] d the
    attention's width), q k and p v (2 S^2 a) and the FFN (2 S H F)."""
    s, h, d = spec.seq, spec.hidden, spec.hidden // spec.heads
    return sum(4 * s * h * n * d + 2 * s * s * n * d + 2 * s * h * f for f, n in zip(ffn, heads))


@pytest.mark.parametrize("reshape, scale", [("static", "mul"), ("inferred", "div"), ("dynamic", "div")])
@pytest.mark.parametrize("norm, layer_norm", [("pre", "op"), ("post", "decomposed")])
def test_each_attention_layer_is_one_group_of_heads(tmp_path, reshape, scale, norm, layer_norm):
    """Q, K and V of a layer make one group: a channel per head (of d columns in each), read by the
    output projection; inspect names the layer and the heads' size."""
    spec, model = build(layers=2, heads=4, hidden=32, reshape=reshape, scale=scale, norm=norm, layer_norm=layer_norm)
    a = analyze(normalize(model)[0])
    groups = head_groups(a)
    assert [(g.channels, g.head_dim, g.prunable) for g in groups] == [(4, 8, True)] * 2
    for i, g in enumerate(groups):
        layer = f"/encoder/layer.{i}/attention"
        assert g.producers == tuple(f"{layer}/{r}/MatMul" for r in ROLES)
        assert g.consumers == (f"{layer}/output/dense/MatMul",) and g.attention == layer
    onnx.save(model, tmp_path / "enc.onnx")
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "enc.onnx")]).stdout
    assert f"group {groups[1].id}: heads of /encoder/layer.1/attention (4 heads of 8 dims)" in text


def reshape_outputs(model, spec, feeds):
    """The outputs of every head-splitting and merging Reshape, by node name, in onnxruntime."""
    names = {n.name: n.output[0] for n in model.graph.node if n.op_type == "Reshape"}
    return dict(zip(names, run(probe_model(model, list(names.values())), feeds)))


@pytest.mark.parametrize("kw", [
    dict(reshape="static"), dict(reshape="inferred", scale="div"), dict(reshape="dynamic", scale="div"),
    dict(reshape="dynamic", norm="post", layer_norm="decomposed", vocab=20),
    dict(reshape="dynamic", mask=True, dynamic_seq=True),
], ids=["static", "inferred", "dynamic", "dynamic-post-embedded", "dynamic-seq-masked"])
def test_cutting_heads_the_output_projection_ignores_changes_nothing(kw):
    """A head whose rows of the output projection are zero contributes nothing: cutting it (its
    Q, K, V columns and biases, those rows) leaves the outputs as they were in onnxruntime, and
    every Reshape now splits into (and merges) the kept heads, at other sequence lengths too."""
    spec, model = build(layers=2, heads=4, hidden=16, **kw)
    normalized = normalize(model)[0]
    a = analyze(normalized)
    groups = head_groups(a)
    keep = {groups[0].id: np.array([1]), groups[1].id: np.array([0, 2, 3])}
    zeroed = zero_consumer_weights(normalized, a, keep)
    pruned = prune_channels(zeroed, a, keep)
    onnx.checker.check_model(pruned, full_check=True)
    for seq in [spec.seq, spec.seq + 3] if kw.get("dynamic_seq") else [spec.seq]:
        feeds = encoder_feeds(spec, batch=3, seq=seq)
        assert_same_outputs(zeroed, pruned, feeds)
        shapes = {name: out.shape for name, out in reshape_outputs(pruned, spec, feeds).items()}
        for i, kept in enumerate((1, 3)):
            layer = f"/encoder/layer.{i}/attention"
            assert [shapes[f"{layer}/{r}/Reshape"] for r in ROLES] == [(3, seq, kept, 4)] * 3
            assert shapes[f"{layer}/Reshape"] == (3, seq, kept * 4)


def test_fast_block_reap_on_heads_equals_brute_force():
    """REAP removes a head's d rows of the output projection as one block: end to end it keeps the
    heads that REAP by brute force keeps (a fresh ridge solve for every candidate head at every
    step), and its errors after each removal are brute force's."""
    spec, model = build(layers=1, heads=6, hidden=24, seq=6, mask=True, seed=3)
    normalized = normalize(model)[0]
    a = analyze(normalized)
    [g] = head_groups(a)
    plans, _ = reconstructable(a)
    calib = calibration(spec)
    _, keep, _ = prune_sequential(normalized, a, {g.id: 2}, methods.get("reap"), calib)
    fit, holdout = collect(normalized, normalized, plans[g.id], calib.batches, holdout_every=HOLDOUT_EVERY,
                           rows=calib.sampling)
    nodes = {n.name: n for n in a.graph.nodes}
    [c] = plans[g.id]
    assert c.taps == 4 and c.channels == 6
    problems = [(fit[c.node] + holdout[c.node], c.taps, theta_of(nodes[c.node], c))]
    naive = reap_order_naive(problems, 6, SELECTION_ALPHA, target=1)
    fast = reap_order(problems, 6, SELECTION_ALPHA, target=1)
    np.testing.assert_array_equal(fast.order, naive.order)
    np.testing.assert_allclose(fast.errors, naive.errors, rtol=1e-6)
    np.testing.assert_array_equal(keep[g.id], np.setdiff1d(np.arange(6), naive.order[:4]))


@pytest.mark.parametrize("kw, reason", [
    (dict(attention="head_bias"), "Add node '/encoder/layer.0/attention/Add_bias' on the attention scores adds what "
                                  "varies across heads"),
    (dict(reshape="computed"), "Reshape node '/encoder/layer.0/attention/query/Reshape': the head count is not a "
                               "constant of its target shape"),
], ids=["per-head-bias", "computed-head-count"])
def test_unmatched_attention_keeps_its_heads_with_the_reason(tmp_path, kw, reason):
    """A score bias that differs per head (relative position bias) and a head count computed at run
    time are no match: Q, K and V stay, with the reason; the FFNs are still pruned, into a model
    that runs."""
    spec, model = build(layers=2, **kw)
    onnx.save(model, tmp_path / "enc.onnx")
    groups = json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "enc.onnx"), "--json"]).stdout)["groups"]
    assert not any(g["head_dim"] for g in groups)
    [q] = [g for g in groups if "/encoder/layer.0/attention/query/MatMul" in g["producers"]]
    assert not q["prunable"] and "splits the channels into attention heads, which stay: " + reason in q["reason"]
    result = prune(model, PruneConfig(method=Method("l1"), ratio=0.5))
    assert [c.channels_after for c in result.groups if c.group.prunable] == [spec.ffn // 2] * 2
    assert run(result.model, encoder_feeds(spec, batch=2))[0].shape == (2, spec.seq, spec.hidden)


def test_fused_attention_has_no_head_group():
    """onnxruntime's fused Attention op holds Q, K and V in one weight it reads itself: no heads."""
    _, model = build(layers=1, attention="fused")
    a = analyze(normalize(model)[0])
    assert not head_groups(a)
    [out] = [g for g in a.groups if "/encoder/layer.0/attention/output/dense/MatMul" in g.producers]
    assert "Attention node '/encoder/layer.0/attention/Attention' (a fused onnxruntime op" in out.reason


def test_a_head_step_is_the_fewest_heads_whose_columns_are_a_multiple_of_round_to():
    """--round-to counts columns: heads of 32 dims go one at a time at 8, heads of 4 two at a time."""
    assert [head_step(8, d) for d in (32, 8, 4, 6, 3)] == [1, 1, 2, 4, 8]
    assert head_step(1, 5) == 1
    spec, model = build(layers=2, heads=8, hidden=32, ffn=32)
    result = prune(model, PruneConfig(method=Method("l1"), ratio=0.3))
    assert [c.channels_after for c in result.groups if c.group.head_dim] == [6, 6]


@pytest.mark.parametrize("method", ["reap", "thinet", "nu", "l1"])
def test_pro_over_heads_and_neurons_meets_the_budget_one_head_at_a_time(method):
    """--keep-flops 0.6 with PRO over both kinds of group: the MACs (Q, K, V, output projection,
    q k and p v at the kept heads, the FFNs at their kept neurons) are within the budget and are
    what the pruned model counts; PRO's steps on heads remove one head each; the model runs."""
    spec, model = build(layers=2, heads=4, hidden=32, ffn=64, seq=8, mask=True, redundancy=0.5, seed=2)
    calib = calibration(spec, samples=128, batch=32)
    result = prune(model, PruneConfig(method=Method(method), keep_flops=0.6, pro=True, pro_samples=32), calib)
    after = {c.group.id: c.channels_after for c in result.groups}
    a = analyze(normalize(model)[0])
    heads = [after[g.id] for g in head_groups(a)]
    ffn = [after[g.id] for g in a.groups if g.prunable and not g.head_dim]
    assert result.macs_after <= 0.6 * result.macs_before == 0.6 * encoder_macs(spec, [64, 64], [4, 4])
    assert result.macs_after == encoder_macs(spec, ffn, heads) == cost_of(result.model).macs
    assert method == "nu" or min(heads) < 4  # PRO found heads worth removing here (NU: neurons only)
    widths = {g.id: g.channels for g in head_groups(a)}
    for step in result.pro:
        if step.group in widths:
            assert step.channels == widths[step.group] - 1
            widths[step.group] = step.channels
    assert run(result.model, encoder_feeds(spec, batch=3, seed=5))[0].shape == (3, spec.seq, spec.hidden)


def test_keep_params_counts_the_heads_columns_rows_and_biases():
    """--keep-params: the parameters predicted at the kept heads and neurons (Q, K, V columns and
    biases, output-projection rows) are those of the pruned model, within the budget."""
    spec, model = build(layers=2, heads=4, hidden=32, ffn=64)
    result = prune(model, PruneConfig(method=Method("l1"), keep_params=0.7))
    after = {c.group.id: c.channels_after for c in result.groups}
    a = analyze(normalize(model)[0])
    assert [after[g.id] for g in head_groups(a)] != [4, 4]
    assert result.params_after == cost_of(result.model).params <= 0.7 * result.params_before
