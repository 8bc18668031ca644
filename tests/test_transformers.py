"""Transformer encoders: FFN neurons (and attention heads: test_heads.py) are pruned; the hidden width, fused and int8 layers stay and say why."""

import json
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from builders import run
from checks import assert_padding_left_out, assert_same_outputs, random_keep, zero_consumer_weights
from click.testing import CliRunner
from encoders import ACTIVATIONS, EncoderBuilder, EncoderSpec, encoder_feeds, encoder_specs
from hypothesis import given, settings
from test_cache import counting

from onnxprune import OnnxPruneError, PruneConfig, analyze, normalize, prune, prune_channels
from onnxprune.analysis.consumers import Consumer, reconstructable
from onnxprune.analysis.cost import cost_of
from onnxprune.calibration.layer_stats import stats_from_data
from onnxprune.calibration.cache import SegmentRunner
from onnxprune.calibration.statistics import MASK, Calibration, host_stats, token_rows
from onnxprune.cli import main
from onnxprune.config import Method
from onnxprune.widths.budget import kept_count
from onnxprune.widths.pro import Pooling, ProSearch, real_tokens


def build(**kw):
    spec = EncoderSpec(**kw)
    return spec, EncoderBuilder(spec).model()


def analysis_of(model):
    normalized, _ = normalize(model)
    return normalized, analyze(normalized)


def ffn_groups(analysis):
    return [g for g in analysis.groups if any(p.endswith("/fc1/MatMul") for p in g.producers)]


def group_with(analysis, producer):
    [g] = [g for g in analysis.groups if producer in g.producers]
    return g


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def calibration(spec, samples=64, batch=16, seed=1):
    feeds = encoder_feeds(spec, batch=samples, seed=seed)
    batches = lambda: ({k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, samples, batch))  # noqa: E731
    return Calibration(batches, samples)


def ffn_macs(spec, kept, heads=None):
    """MACs per sample of an encoder whose FFN l keeps kept[l] neurons and its attention heads[l]
    heads (all by default) of d = H / heads dims: per layer Q, K, V and the output projection
    (4 S H a, a = heads[l] d the attention's width), the two attention MatMuls (2 S^2 a) and the
    FFN (2 S H F)."""
    s, h, d = spec.seq, spec.hidden, spec.hidden // spec.heads
    heads = [spec.heads] * len(kept) if heads is None else heads
    return sum(4 * s * h * n * d + 2 * s * s * n * d + 2 * s * h * f for f, n in zip(kept, heads))


def head_groups(analysis):
    return [g for g in analysis.groups if g.head_dim]


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("layer_norm", ["op", "decomposed"])
@pytest.mark.parametrize("vocab", [None, 20])
def test_each_ffn_is_one_prunable_group_and_the_rest_stays_with_its_reason(norm, layer_norm, vocab):
    """One group per FFN, its neurons: made by fc1 (columns and bias), read by fc2's rows. The
    residual stream (every fc2 and output projection, the embedding) is frozen by the LayerNorm;
    Q, K and V make one group of heads (test_heads.py)."""
    spec, model = build(layers=2, norm=norm, layer_norm=layer_norm, vocab=vocab)
    _, a = analysis_of(model)
    for i, g in enumerate(ffn_groups(a)):
        layer = f"/encoder/layer.{i}/ffn"
        assert g.prunable and g.channels == spec.ffn
        assert g.producers == (f"{layer}/fc1/MatMul",) and g.consumers == (f"{layer}/fc2/MatMul",)
    assert len(ffn_groups(a)) == 2
    hidden = group_with(a, "/encoder/layer.0/ffn/fc2/MatMul")
    assert {f"/encoder/layer.{i}/{p}/MatMul" for i in range(2) for p in ("ffn/fc2", "attention/output/dense")} \
        <= set(hidden.producers)
    assert ("/embeddings/word_embeddings/Gather" in hidden.producers) == (vocab is not None)
    assert not hidden.prunable
    assert ("LayerNormalization node" if layer_norm == "op" else "(reduces over channels)") in hidden.reason
    for role in ("query", "key", "value"):
        g = group_with(a, f"/encoder/layer.1/attention/{role}/MatMul")
        assert g.prunable and g.head_dim == spec.hidden // spec.heads and g.channels == spec.heads


def test_inspect_lists_the_ffn_groups_and_counts_3d_matmuls(tmp_path):
    spec, model = build(layers=3, hidden=16, ffn=40, heads=4, seq=6)
    onnx.save(model, tmp_path / "enc.onnx")
    data = json.loads(invoke("inspect", tmp_path / "enc.onnx", "--json").stdout)
    prunable = [g for g in data["groups"] if g["prunable"] and not g["head_dim"]]
    assert [(g["channels"], g["producers"], g["consumers"]) for g in prunable] == [
        (40, [f"/encoder/layer.{i}/ffn/fc1/MatMul"], [f"/encoder/layer.{i}/ffn/fc2/MatMul"]) for i in range(3)]
    assert data["macs"] == ffn_macs(spec, [40] * 3)


@pytest.mark.parametrize("act", [*ACTIVATIONS, "relu"])
@pytest.mark.parametrize("norm, layer_norm, vocab", [("pre", "op", None), ("post", "decomposed", 20)])
def test_cutting_neurons_that_fc2_ignores_changes_nothing(act, norm, layer_norm, vocab):
    """Neurons whose rows of the second projection are zero influence nothing: cutting them (and
    fc1's columns and bias with them) leaves the outputs as they were, in onnxruntime."""
    spec, model = build(act=act, norm=norm, layer_norm=layer_norm, vocab=vocab, ffn=24)
    normalized, a = analysis_of(model)
    keep = random_keep(a, np.random.default_rng(0))
    assert set(keep) == {g.id for g in ffn_groups(a) + head_groups(a)}
    zeroed = zero_consumer_weights(normalized, a, keep)
    pruned = prune_channels(zeroed, a, keep)
    onnx.checker.check_model(pruned, full_check=True)
    assert_same_outputs(zeroed, pruned, encoder_feeds(spec, batch=3))
    widths = [onnx.numpy_helper.to_array(t).shape for t in pruned.graph.initializer if t.name.endswith("fc1.weight")]
    assert [w[1] for w in widths] == [len(keep[g.id]) for g in ffn_groups(a)]


def test_matmul_reads_the_last_axis_and_mean_pooling_keeps_the_channels():
    """[B, S, 8] -> fc (12) -> Relu -> mean over the sequence (keepdims 0: [B, 12]) -> head (4):
    fc's neurons are one group whose consumer is the head, and cutting them is exact."""
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in [("w1", (8, 12)), ("b1", (12,)), ("w2", (12, 4)), ("b2", (4,))]]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="fc_bias"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("ReduceMean", ["r"], ["p"], name="pool", axes=[1], keepdims=0),
             helper.make_node("MatMul", ["p", "w2"], ["o"], name="head"),
             helper.make_node("Add", ["o", "b2"], ["y"], name="head_bias")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    normalized, a = analysis_of(model)
    g = group_with(a, "fc")
    assert g.prunable and g.consumers == ("head",) and g.channels == 12
    keep = {g.id: np.array([0, 3, 4, 7, 11])}
    zeroed = zero_consumer_weights(normalized, a, keep)
    feeds = {"x": rng.standard_normal((3, 5, 8)).astype(np.float32)}
    assert_same_outputs(zeroed, prune_channels(zeroed, a, keep), feeds)


def test_mask_of_padding_leaves_token_rows_out():
    """token_rows: [B, S, n] becomes B*S rows, and a mask of [B, S] keeps the real tokens only;
    a mask of other dims (a consumer after pooling) does not apply."""
    x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    y = -x[..., :2]
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    xs, ys = token_rows(x, y, mask)
    np.testing.assert_array_equal(xs, np.stack([x[0, 0], x[0, 1], x[1, 0]]))
    np.testing.assert_array_equal(ys, np.stack([y[0, 0], y[0, 1], y[1, 0]]))
    pooled = x.mean(axis=1)
    assert token_rows(pooled, pooled[:, :2], mask)[0].shape == (2, 4)
    assert token_rows(x, y)[0].shape == (6, 4)


def test_statistics_with_padding_equal_those_of_the_real_tokens():
    """G, C, ||Y||^2 and the row count of a padded batch (padding of any values) are those of its
    real tokens alone."""
    rng = np.random.default_rng(0)
    lengths = [5, 1, 3, 7]
    real_x = [rng.standard_normal((n, 6)) for n in lengths]
    real_y = [rng.standard_normal((n, 3)) for n in lengths]
    x = rng.standard_normal((4, 7, 6)) * 100  # padding: large garbage
    y = rng.standard_normal((4, 7, 3)) * 100
    mask = np.zeros((4, 7), dtype=np.int64)
    for i, n in enumerate(lengths):
        x[i, :n], y[i, :n], mask[i, :n] = real_x[i], real_y[i], 1
    padded = host_stats(*token_rows(x, y, mask), Consumer("fc", "MatMul", "x", "y", channels=6, taps=1))
    expected = stats_from_data(np.concatenate(real_x), np.concatenate(real_y))
    assert padded.rows == expected.rows == sum(lengths)
    for got, want in [(padded.gram, expected.gram), (padded.cross, expected.cross), (padded.yy, expected.yy)]:
        # the host's products run in float32 (layer_stats.RunningSums): equal to its rounding
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_calibration_with_attention_mask_sees_only_real_tokens():
    """Through a masked encoder, the statistics of padded batches (collect) equal those of the same
    sequences fed alone at their own lengths: padding changes neither the real tokens' activations
    nor, being left out, G and C (of each FFN's fc2 and each attention's output projection, which
    reads the heads)."""
    spec, model = build(layers=2, mask=True, dynamic_seq=True, seq=6)
    normalized, _ = normalize(model)
    a = analyze(normalized, {"input": (1, 6, spec.hidden), "attention_mask": (1, 6)})
    consumers = [c for cs in reconstructable(a)[0].values() for c in cs]
    assert len(consumers) == 4 and sum(c.taps == spec.hidden // spec.heads for c in consumers) == 2
    lengths = [6, 2, 4, 1]
    padded = encoder_feeds(spec, batch=4, seed=3, lengths=lengths)
    alone = [{"input": padded["input"][i:i + 1, :n], "attention_mask": np.ones((1, n), np.int64)}
             for i, n in enumerate(lengths)]
    assert_padding_left_out(normalized, consumers, padded, alone, sum(lengths))


@pytest.mark.parametrize("stats", ["host", "graph"])
def test_reconstruction_rows_are_the_real_tokens(tmp_path, stats):
    """prune --method reap with an attention_mask in the calibration data: every reconstructed
    layer's rows are the calibration set's real tokens, also with a batch of padding only."""
    spec, model = build(layers=2, mask=True, ffn=32)
    onnx.save(model, tmp_path / "enc.onnx")
    lengths = np.random.default_rng(1).integers(1, spec.seq + 1, 48)
    lengths[16:24] = 0  # the third batch of 8: padding only
    feeds = encoder_feeds(spec, batch=48, seed=1, lengths=lengths)
    np.savez(tmp_path / "calib.npz", **feeds)
    result = invoke("prune", tmp_path / "enc.onnx", "-o", tmp_path / "out.onnx", "--method", "reap", "--stats", stats,
                    "--calib", tmp_path / "calib.npz", "--ratio", "0.5", "--batch-size", "8", "--json", "-q")
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["reconstruction"]
    assert [n["node"] for n in layers] == [f"/encoder/layer.{i}/{p}/MatMul"
                                           for i in range(2) for p in ("attention/output/dense", "ffn/fc2")]
    assert all(n["rows"] == feeds["attention_mask"].sum() < feeds["attention_mask"].size for n in layers)


def test_the_attention_mask_travels_with_the_kept_activations():
    """Sequential reconstruction runs each next layer from activations kept at a cut; the mask, a
    graph input, is kept with them, so asking for it does not restart the runs from the input."""
    spec, model = build(layers=2, mask=True)
    normalized, _ = normalize(model)
    calib = calibration(spec, samples=32, batch=16)
    batches, reads = counting(calib.batches)
    runner = SegmentRunner(batches, ["CPUExecutionProvider"], 1 << 30)
    fc2 = [n for n in normalized.graph.node if n.name.endswith("fc2/MatMul")]
    list(runner.run(normalized, [fc2[0].input[0], MASK], keep_before=fc2[1].name))
    resumed = list(runner.run(normalized, [fc2[1].input[0], MASK]))
    assert len(reads) == 1 and runner.cut == 0
    for (_, got), want in zip(resumed, calib.batches(), strict=True):
        np.testing.assert_array_equal(got[MASK], want[MASK])


@pytest.mark.parametrize("vocab", [None, 20])
def test_prune_by_ratio_and_by_flops_writes_a_valid_model_with_the_predicted_macs(tmp_path, vocab):
    """l1 --ratio 0.5 and reap --calib --keep-flops F: each FFN (and each attention's 4 heads of 4
    dims) loses what was asked, the model runs, and its MACs are the formula's at the kept widths."""
    spec, model = build(layers=2, ffn=64, vocab=vocab, mask=True, heads=4)
    onnx.save(model, tmp_path / "enc.onnx")
    np.savez(tmp_path / "calib.npz", **encoder_feeds(spec, batch=64, seed=1))
    full = ffn_macs(spec, [64, 64])
    runs = [("l1", ["--ratio", "0.5"]), ("reap", ["--calib", tmp_path / "calib.npz", "--keep-flops", "0.75"]),
            ("reap", ["--calib", tmp_path / "calib.npz", "--keep-flops", "0.75", "--no-pro"])]
    for method, target in runs:
        out = tmp_path / f"{method}.onnx"
        result = invoke("prune", tmp_path / "enc.onnx", "-o", out, "--method", method, *target, "--json", "-q")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        kept = [g["channels_after"] for g in data["groups"] if g["channels_before"] == 64]
        heads = [g["channels_after"] for g in data["groups"] if g["head_dim"]]
        assert len(kept) == len(heads) == 2 and data["macs_before"] == full
        assert data["macs_after"] == ffn_macs(spec, kept, heads) == cost_of(onnx.load(out)).macs
        if method == "l1":
            assert kept == [32, 32] and heads == [2, 2]
        else:
            assert data["macs_after"] <= 0.75 * full and all(k % 8 == 0 for k in kept)
        pruned = onnx.load(out)
        onnx.checker.check_model(pruned, full_check=True)
        feeds = encoder_feeds(spec, batch=5, seed=9)
        assert run(pruned, feeds)[0].shape == run(model, feeds)[0].shape


def test_pro_measures_the_first_floating_point_output():
    """A torch export of a sentence encoder lists copies of its int64 inputs as its first outputs:
    PRO measures the hidden states instead (it failed, the copy's producer lying before its cuts)."""
    spec, model = build(layers=2, ffn=32, vocab=20, mask=True, echo_inputs=True)
    assert [o.name for o in model.graph.output][:2] == ["input_ids_copy", "attention_mask_copy"]
    result = prune(model, PruneConfig(method=Method("reap"), keep_flops=0.8, pro=True, pro_samples=16),
                   calibration(spec, samples=32))
    assert result.pro and result.pro[-1].error > 0 and result.macs_after <= 0.8 * result.macs_before


def test_pro_error_leaves_padded_tokens_out():
    """PRO's final-output error counts the real tokens only: outputs that differ at padded tokens
    alone (which mean pooling never reads) are at distance 0; a pooled output counts whole."""
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    reference = np.zeros((2, 3, 4))
    out = reference.copy()
    out[0, 2], out[1, 1:] = 7, -3  # padding only
    view = Pooling(mask, "hidden", pooled=False)
    search = SimpleNamespace(reference=view(reference), view=view)
    assert ProSearch.distance(search, out) == 0
    out[1, 0, 0] = 2
    assert ProSearch.distance(search, out) == 4 / 2
    assert real_tokens(mask, (2, 4)) == 1.0 and real_tokens(None, (2, 3, 4)) == 1.0


def test_pooled_pro_error_is_that_of_the_mean_over_real_tokens():
    """--pro-pooled: errors that cancel in the mean over a sentence's real tokens cost nothing,
    padding never counts, and the rest is the squared error of the means."""
    mask = np.array([[1, 1, 0], [1, 0, 0]])
    reference = np.zeros((2, 3, 4))
    out = reference.copy()
    out[0, 0], out[0, 1] = 5, -5  # cancels in sentence 0's mean
    out[1, 1:] = 9  # padding
    view = Pooling(mask, "hidden", pooled=True)
    search = SimpleNamespace(reference=view(reference), view=view)
    assert ProSearch.distance(search, out) == 0
    out[1, 0, :2] = 2  # sentence 1 has one real token: its mean moves by (2, 2, 0, 0)
    assert ProSearch.distance(search, out) == 8 / 2
    np.testing.assert_allclose(view(np.arange(24.0).reshape(2, 3, 4)),
                               [[2, 3, 4, 5], [12, 13, 14, 15]])  # (row 0 + row 1) / 2, row 0


def test_pro_pooled_prunes_an_encoder_and_refuses_what_it_cannot_pool(tmp_path):
    spec, model = build(layers=2, ffn=32, vocab=20, mask=True, heads=4)
    result = prune(model, PruneConfig(method=Method("reap"), keep_flops=0.7, pro=True, pro_samples=16,
                                      pro_pooled=True), calibration(spec, samples=32))
    assert result.pro and result.macs_after <= 0.7 * result.macs_before
    with pytest.raises(OnnxPruneError, match="--pro-pooled.*needs PRO"):
        PruneConfig(keep_flops=0.5, pro_pooled=True)
    spec, model = build(layers=2, ffn=32, mask=False)
    with pytest.raises(OnnxPruneError, match="--pro-pooled: .*attention_mask"):
        prune(model, PruneConfig(method=Method("reap"), keep_flops=0.7, pro=True, pro_samples=16, pro_pooled=True),
              calibration(spec, samples=32))


def test_pro_widths_do_not_depend_on_what_the_padding_holds():
    """The same calibration sentences with other values at their padded positions: the same
    statistics, PRO errors and widths (padding steered PRO's error before it was masked)."""
    spec, model = build(layers=2, mask=True, ffn=32, heads=4)
    feeds = encoder_feeds(spec, batch=64, seed=1)
    other = dict(feeds, input=np.where(feeds["attention_mask"][..., None] == 0,
                                       np.random.default_rng(5).standard_normal(feeds["input"].shape) * 10,
                                       feeds["input"]).astype(np.float32))
    results = []
    for data in (feeds, other):
        calib = Calibration(lambda data=data: ({k: v[i:i + 16] for k, v in data.items()} for i in range(0, 64, 16)), 64)
        results.append(prune(model, PruneConfig(method=Method("reap"), keep_flops=0.7, pro=True, pro_samples=32), calib))
    a, b = results
    assert [c.channels_after for c in a.groups] == [c.channels_after for c in b.groups]
    np.testing.assert_allclose([p.error for p in a.pro], [p.error for p in b.pro], rtol=1e-4)


def output_error(model, pruned, feeds):
    """||f(x) - f_pruned(x)|| / ||f(x)|| over the real tokens."""
    a, b = run(model, feeds)[0], run(pruned, feeds)[0]
    real = feeds["attention_mask"].astype(bool) if "attention_mask" in feeds else np.ones(a.shape[:2], bool)
    return float(np.linalg.norm((a - b)[real]) / np.linalg.norm(a[real]))


def test_reap_on_ffn_neurons_beats_l1_without_reconstruction():
    """Half of each FFN's neurons removed (the heads excluded): REAP (selection by the error after refitting fc2, then the
    refit) leaves a smaller output error than l1 (largest fc1 columns, fc2 as it was), and ThiNet's
    selection with the same refit lies between."""
    spec, model = build(layers=2, ffn=64, redundancy=0.5, mask=True, seed=4)
    calib = calibration(spec, samples=256, batch=32)
    test = encoder_feeds(spec, batch=128, seed=7)
    errors = {}
    for method in ("l1", "thinet", "reap"):
        result = prune(model, PruneConfig(method=Method(method), ratio=0.5, exclude=("*/attention/*",)),
                       calib if method != "l1" else None)
        errors[method] = output_error(model, result.model, test)
    assert errors["reap"] < 0.6 * errors["l1"], errors
    assert errors["reap"] <= errors["thinet"] * 1.05, errors


@pytest.mark.parametrize("kw, producer, reason", [
    ({"act": "fastgelu"}, "/encoder/layer.0/ffn/fc1/MatMul",
     "FastGelu node '/encoder/layer.0/ffn/act/FastGelu' (a fused onnxruntime op (com.microsoft), not pruned)"),
    ({"norm": "post", "layer_norm": "skip"}, "/encoder/layer.0/ffn/fc2/MatMul",
     "SkipLayerNormalization node '/encoder/layer.0/res2/SkipLayerNormalization' (a fused onnxruntime op"),
    ({"attention": "fused"}, "/encoder/layer.0/ffn/fc2/MatMul",
     "Attention node '/encoder/layer.0/attention/Attention' (a fused onnxruntime op"),
    ({"quantized": ("fc2",)}, "/encoder/layer.0/ffn/fc1/MatMul",
     "its weight is dequantized by DequantizeLinear node '/encoder/layer.0/ffn/fc2/DequantizeLinear' "
     "(quantized weights are not pruned)"),
], ids=["fastgelu", "skip_layer_norm", "fused_attention", "dequantized_fc2"])
def test_fused_ops_and_dequantized_weights_freeze_with_their_reasons(tmp_path, kw, producer, reason):
    """What onnxruntime's transformer optimizer fuses, and int8 weights dequantized in the graph,
    stay as they are and say why; whatever else is prunable is still pruned into a model that runs."""
    spec, model = build(layers=2, **kw)
    onnx.save(model, tmp_path / "enc.onnx")
    data = json.loads(invoke("inspect", tmp_path / "enc.onnx", "--json").stdout)
    [g] = [g for g in data["groups"] if producer in g["producers"]]
    assert not g["prunable"] and reason in g["reason"]
    result = invoke("prune", tmp_path / "enc.onnx", "-o", tmp_path / "out.onnx", "--ratio", "0.5", "--json", "-q")
    prunable = [g for g in data["groups"] if g["prunable"]]
    if not prunable:
        assert result.exit_code == 2 and "no prunable channel group" in result.stderr
        assert not (tmp_path / "out.onnx").exists()
        return
    assert result.exit_code == 0, result.output
    after = json.loads(result.stdout)["groups"]
    ids = {g["id"] for g in prunable}
    assert [g["channels_after"] for g in after if g["id"] in ids] == [g["channels"] // 2 for g in prunable]
    feeds = encoder_feeds(spec, batch=2)
    assert run(onnx.load(tmp_path / "out.onnx"), feeds)[0].shape == (2, spec.seq, spec.hidden)


def test_a_model_of_dequantized_ffn_weights_lists_them_frozen_and_is_refused(tmp_path):
    """Both FFN projections int8 (and a single attention head): inspect lists the FFN's neurons as a
    group of the dequantized fc1, frozen with the reason; prune has nothing to prune and says so,
    writing nothing."""
    _, model = build(layers=1, heads=1, quantized=("fc1", "fc2"))
    onnx.save(model, tmp_path / "enc.onnx")
    groups = json.loads(invoke("inspect", tmp_path / "enc.onnx", "--json").stdout)["groups"]
    [ffn] = [g for g in groups if g["producers"] == ["/encoder/layer.0/ffn/fc1/MatMul"]]
    assert not ffn["prunable"] and ffn["reason"].startswith(
        "produced by MatMul node '/encoder/layer.0/ffn/fc1/MatMul' (its weight is dequantized by DequantizeLinear "
        "node '/encoder/layer.0/ffn/fc1/DequantizeLinear' (quantized weights are not pruned))")
    result = invoke("prune", tmp_path / "enc.onnx", "-o", tmp_path / "out.onnx", "--ratio", "0.5", "-q")
    assert result.exit_code == 2 and result.stderr.startswith("error: no prunable channel group")
    assert not (tmp_path / "out.onnx").exists()


@settings(max_examples=25)
@given(spec=encoder_specs())
def test_generated_encoders_prune_into_models_that_run(spec):
    """Any small encoder (layers, heads and their dims, activation form, pre/post-norm, LayerNorm op
    or decomposed, static, inferred or dynamic head Reshapes, float or embedded input): inspect finds
    one prunable group per FFN and one of heads per attention (of more than one head); cutting the
    neurons and heads that the next layer ignores is exact; prune --ratio 0.5 runs in onnxruntime
    with the formula's MACs."""
    model = EncoderBuilder(spec).model()
    normalized, a = analysis_of(model)
    groups, heads = ffn_groups(a), head_groups(a)
    assert [g.prunable for g in groups] == [spec.ffn > 1] * spec.layers
    assert all(g.channels == spec.ffn for g in groups)
    assert [(g.channels, g.head_dim) for g in heads] == [(spec.heads, spec.hidden // spec.heads)] * spec.layers
    assert {g.id for g in a.groups if g.prunable} == {g.id for g in groups + heads if g.channels > 1}
    feeds = encoder_feeds(spec, batch=2, seed=spec.seed)
    keep = random_keep(a, np.random.default_rng(spec.seed))
    zeroed = zero_consumer_weights(normalized, a, keep)
    assert_same_outputs(zeroed, prune_channels(zeroed, a, keep), feeds)
    result = prune(model, PruneConfig(method=Method("l1"), ratio=0.5, round_to=1))
    after = {c.group.id: c.channels_after for c in result.groups}
    kept, kept_heads = [after[g.id] for g in groups], [after[g.id] for g in heads]
    assert kept == [spec.ffn // 2] * spec.layers and kept_heads == [kept_count(spec.heads, 0.5)] * spec.layers
    assert result.macs_after == ffn_macs(spec, kept, kept_heads) == cost_of(result.model).macs
    assert run(result.model, feeds)[0].shape == (2, spec.seq, spec.hidden)
