"""tf2onnx exports (tests/data/tf2onnx, made by tools/make_tf_encoders.py): FFN neurons and attention heads found on the graph's structure, cut exactly, pruned by REAP + PRO; keras MultiHeadAttention's heads through the Einsums tf2onnx writes, and the Einsums not proven left whole.

bert_tf.onnx is TF BERT code: every Dense a Tensordot (Reshape to [-1, C], 2-D MatMul, Reshape
back through a Concat of Shape pieces Cast to int64, bias Add), heads split by a shape that q, k
and v share, LayerNorm decomposed (GlobalAveragePool for the means), Gelu in the erf form, int64
input_ids and attention_mask with dynamic batch and sequence. vit_tf.onnx: a Conv patch embedding,
keras MultiHeadAttention (EinsumDense: MatMul, split Reshape, [H, d] bias; its Einsums as rank-5
Unsqueeze/Transpose/Reshape/MatMul/Squeeze chains with shapes computed by Shape, Gather,
ReduceProd, Max and Concat), Tensordot FFNs. bert_keras.onnx: keras MultiHeadAttention given a
padding mask, at a fixed sequence of 16.
"""

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from builders import run
from checks import assert_padding_left_out, assert_same_outputs, zero_consumer_weights
from click.testing import CliRunner

from onnxprune import PruneConfig, analyze, normalize, prune, prune_channels
from onnxprune.analysis.consumers import reconstructable
from onnxprune.analysis.cost import cost_of
from onnxprune.calibration.statistics import Calibration
from onnxprune.cli import main
from onnxprune.config import Method
from onnxprune.graph.convert import to_graph, to_model
from onnxprune.graph.probe import probe_model

DATA = Path(__file__).parent / "data" / "tf2onnx"
HIDDEN, HEADS, DIMS, FFN, VOCAB, PATCHES = 32, 4, 8, 64, 64, 16


def load(name):
    return onnx.load(DATA / name)


def text_feeds(batch, seq, seed=0, lengths=None):
    """input_ids and attention_mask: sequences of ``lengths`` real tokens (random by default), then padding."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, seq + 1, batch) if lengths is None else np.asarray(lengths)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, (batch, seq)) * mask, "attention_mask": mask}


def image_feeds(batch, seed=0):
    return {"images": np.random.default_rng(seed).standard_normal((batch, 28, 28, 1)).astype(np.float32)}


def weight_shape(analysis, node):
    [n] = [n for n in analysis.graph.nodes if n.name == node]
    return tuple(n.inputs[1].shape)


def head_groups(analysis):
    return [g for g in analysis.groups if g.head_dim]


def ffn_groups(analysis):
    return [g for g in analysis.groups if g.prunable and not g.head_dim]


def split_shapes(model, feeds, op="Reshape"):
    """The outputs of every rank-4 Reshape (a head split; the images' too in vit_tf) or ``op`` in
    onnxruntime, sorted by node order."""
    names = [n.output[0] for n in model.graph.node if n.op_type == op]
    return [o.shape for o in run(probe_model(model, names), feeds) if o.ndim == 4]


def test_bert_heads_and_ffns_are_found_on_the_graph():
    """Each layer's Q, K and V Tensordot MatMuls make one group of 4 heads of 8 dims, read by the
    output projection; each FFN's first MatMul makes 64 neurons, read by the second; the hidden
    width (embedding, residuals, the decomposed LayerNorms) stays."""
    a = analyze(normalize(load("bert_tf.onnx"))[0])
    heads, ffns = head_groups(a), ffn_groups(a)
    assert [(g.channels, g.head_dim, g.prunable) for g in heads] == [(HEADS, DIMS, True)] * 2
    assert [g.channels for g in ffns] == [FFN] * 2
    for g in heads:
        assert len(g.producers) == 3 and {weight_shape(a, p) for p in g.producers} == {(HIDDEN, HIDDEN)}
        [out] = g.consumers
        assert weight_shape(a, out) == (HIDDEN, HIDDEN) and out not in g.producers
    for g in ffns:
        [fc1], [fc2] = g.producers, g.consumers
        assert weight_shape(a, fc1) == (HIDDEN, FFN) and weight_shape(a, fc2) == (FFN, HIDDEN)
    assert {g.channels for g in a.groups if not g.prunable} == {HIDDEN}


def test_inspect_lists_the_bert_heads(tmp_path):
    result = CliRunner().invoke(main, ["inspect", str(DATA / "bert_tf.onnx"), "--input-shape", "input_ids=1,16",
                                       "--input-shape", "attention_mask=1,16"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(f"({HEADS} heads of {DIMS} dims)") == 2
    assert "groups: 4 prunable, 2 frozen" in result.stdout


@pytest.mark.parametrize("name", ["bert_tf.onnx", "vit_tf.onnx"])
def test_cutting_heads_and_neurons_their_readers_ignore_changes_nothing(name):
    """With the output projection's rows of some heads and fc2's rows of some neurons zero, cutting
    them (Q, K, V columns and biases, fc1's columns, the int32 shape entries of the Tensordot
    Reshapes and head splits) leaves the outputs as they were in onnxruntime, at other batch
    sizes and sequence lengths too; every head split then holds the kept heads."""
    normalized = normalize(load(name))[0]
    a = analyze(normalized)
    rng = np.random.default_rng(0)
    keep = {g.id: np.sort(rng.choice(g.channels, n, replace=False))
            for g, n in zip(head_groups(a) + ffn_groups(a), [1, 3, 24, 40])}
    zeroed = zero_consumer_weights(normalized, a, keep)
    pruned = prune_channels(zeroed, a, keep)
    onnx.checker.check_model(pruned, full_check=True)
    for feeds in ([text_feeds(3, 9), text_feeds(1, 16, seed=1)] if name == "bert_tf.onnx" else
                  [image_feeds(3), image_feeds(1, seed=1)]):
        assert_same_outputs(zeroed, pruned, feeds)
        if name == "bert_tf.onnx":
            batch, seq = feeds["input_ids"].shape
            assert split_shapes(pruned, feeds) == [(batch, seq, 1, DIMS)] * 3 + [(batch, seq, 3, DIMS)] * 3
        else:  # the Einsums' computed shapes follow: the scores hold the kept heads
            batch = len(feeds["images"])
            assert split_shapes(pruned, feeds)[1:] == [(batch, PATCHES, 1, DIMS)] * 3 + [(batch, PATCHES, 3, DIMS)] * 3
            assert split_shapes(pruned, feeds, "Softmax") == [(batch, 1, PATCHES, PATCHES), (batch, 3, PATCHES, PATCHES)]
    shape = {"input_ids": (1, 16), "attention_mask": (1, 16)} if name == "bert_tf.onnx" else None
    assert cost_of(pruned, shape).params < cost_of(normalized, shape).params


def test_padding_is_left_out_of_the_statistics_behind_tensordot_reshapes():
    """The consumers read [tokens, C] behind a Reshape; their rows are taken from [batch, sequence,
    C] before it, so the attention mask applies: the statistics of padded batches equal those of
    the same sequences fed alone at their own lengths."""
    normalized = normalize(load("bert_tf.onnx"))[0]
    a = analyze(normalized, {"input_ids": (1, 6), "attention_mask": (1, 6)})
    consumers = [c for cs in reconstructable(a)[0].values() for c in cs]
    assert len(consumers) == 4 and sum(c.taps == DIMS for c in consumers) == 2
    lengths = [6, 2, 4, 1]
    padded = text_feeds(4, 6, seed=3, lengths=lengths)
    alone = [{k: v[i:i + 1, :n] for k, v in padded.items()} for i, n in enumerate(lengths)]
    assert_padding_left_out(normalized, consumers, padded, alone, sum(lengths))


def mean_pooled(y, mask):
    m = mask[..., None]
    return (y * m).sum(1) / m.sum(1)


def test_reap_and_pro_prune_bert_into_a_close_model():
    """REAP + PRO at 0.6 of the MACs over heads and neurons: within the budget, the MACs counted
    on the pruned model, its head splits hold the kept heads, and its mean-pooled outputs keep a
    cosine to the original's above 0.95 on held-out padded sentences."""
    model = load("bert_tf.onnx")
    feeds = text_feeds(64, 16, seed=1)
    calib = Calibration(lambda: ({k: v[i:i + 16] for k, v in feeds.items()} for i in range(0, 64, 16)), 64)
    shape = {"input_ids": (1, 16), "attention_mask": (1, 16)}
    config = PruneConfig(method=Method("reap"), keep_flops=0.6, pro=True, pro_samples=32, input_shapes=shape)
    result = prune(model, config, calib)
    assert result.macs_after <= 0.6 * result.macs_before
    assert result.macs_after == cost_of(result.model, shape).macs
    heads = [c.channels_after for c in result.groups if c.group.head_dim]
    assert min(heads) < HEADS
    test = text_feeds(8, 16, seed=7)
    assert split_shapes(result.model, test) == [(8, 16, n, DIMS) for n in heads for _ in range(3)]
    want, got = (mean_pooled(run(m, test)[0], test["attention_mask"]) for m in (model, result.model))
    cosine = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert cosine.mean() > 0.95


def test_keras_multi_head_attention_heads_are_found_through_its_einsums():
    """keras MultiHeadAttention: Q, K and V (EinsumDense: MatMul, split Reshape, an [H, d] bias) make
    one group of 4 heads of 8 dims per layer through the Einsums tf2onnx writes, read by the output
    projection; inspect lists them."""
    a = analyze(normalize(load("vit_tf.onnx"))[0])
    assert [(g.channels, g.head_dim, g.prunable) for g in head_groups(a)] == [(HEADS, DIMS, True)] * 2
    assert [g.channels for g in ffn_groups(a)] == [FFN] * 2
    for g in head_groups(a):
        assert len(g.producers) == 3 and {weight_shape(a, p) for p in g.producers} == {(HIDDEN, HIDDEN)}
        [out] = g.consumers
        assert weight_shape(a, out) == (HIDDEN, HIDDEN) and out not in g.producers
    result = CliRunner().invoke(main, ["inspect", str(DATA / "vit_tf.onnx")])
    assert result.exit_code == 0, result.output
    assert result.stdout.count(f"({HEADS} heads of {DIMS} dims)") == 2
    assert "groups: 4 prunable, 3 frozen" in result.stdout


def test_reap_and_pro_prune_keras_heads_below_what_ffns_alone_reach():
    """REAP + PRO at 0.5 of the MACs (FFNs alone reach 0.642): within the budget, heads removed,
    the MACs counted on the pruned model, which runs close to the original on held-out images."""
    model = load("vit_tf.onnx")
    feeds = image_feeds(64, seed=1)
    calib = Calibration(lambda: ({"images": feeds["images"][i:i + 16]} for i in range(0, 64, 16)), 64)
    result = prune(model, PruneConfig(method=Method("reap"), keep_flops=0.5, pro=True, pro_samples=32), calib)
    assert result.macs_after <= 0.5 * result.macs_before
    assert result.macs_after == cost_of(result.model).macs
    heads = [c.channels_after for c in result.groups if c.group.head_dim]
    assert len(heads) == 2 and min(heads) < HEADS
    test = image_feeds(8, seed=7)
    want, got = run(model, test)[0], run(result.model, test)[0]
    assert split_shapes(result.model, test, "Softmax") == [(8, n, PATCHES, PATCHES) for n in heads]
    cosine = (want * got).sum(1) / np.linalg.norm(want, axis=1) / np.linalg.norm(got, axis=1)
    assert np.linalg.norm(got - want) < 0.2 * np.linalg.norm(want) and cosine.mean() > 0.98


def einsum_concats(graph):
    """The Concats that make the target shapes of the first attention's Einsums: first the scores'
    last ([max(B H), S, T, 1]), found by what they read (a Max, then Gathers, then the constant 1)."""
    return [n for n in graph.nodes if n.op == "Concat" and len(n.inputs) == 4 and n.inputs[0].inputs
            and n.inputs[0].inputs[0].op == "Max"]


def frozen_heads(model):
    """The reason the first layer's Q, K and V stay; the number of head groups found."""
    a = analyze(model)
    reasons = [g.reason for g in a.groups if g.reason and "splits the channels into attention heads" in g.reason]
    return reasons, len(head_groups(a))


def test_an_einsum_shape_read_elsewhere_leaves_its_heads_alone():
    """A computed shape inside the first layer's scores Einsum that another node also reads: removing
    heads would change what that node sees, so that layer's heads stay, with the reason; the other's
    are found."""
    graph = to_graph(normalize(load("vit_tf.onnx"))[0])
    concat = einsum_concats(graph)[0]
    extra = gs.Variable("shape_copy", np.int64)
    graph.nodes.append(gs.Node("Abs", "reads_the_shape", inputs=[concat.outputs[0]], outputs=[extra]))
    graph.outputs.append(extra)
    reasons, found = frozen_heads(to_model(graph, load("vit_tf.onnx")))
    assert found == 1 and len(reasons) == 3
    assert all(f"is also read by Abs node 'reads_the_shape'" in r and "an Einsum as tf2onnx writes it" in r
               for r in reasons)


def test_an_einsum_whose_shapes_reorder_its_result_is_not_followed():
    """The scores' last Reshape asked for [B, H, T, S] where its MatMul made [B*H, S, T] (the Gathers
    of S and T swapped: the same sizes, so onnxruntime runs it, but it moves the values): the symbols
    do not regroup in order, so that layer's heads stay, with the reason."""
    graph = to_graph(normalize(load("vit_tf.onnx"))[0])
    concat = einsum_concats(graph)[0]
    concat.inputs[1], concat.inputs[2] = concat.inputs[2], concat.inputs[1]
    model = to_model(graph, load("vit_tf.onnx"))
    assert run(model, image_feeds(2))[0].shape == (2, 10)
    reasons, found = frozen_heads(model)
    assert found == 1 and len(reasons) == 3
    assert all("does not regroup its input's dims in order" in r for r in reasons)


def test_keras_masked_softmax_leaves_the_heads_alone():
    """keras MultiHeadAttention given a mask computes where(mask & ones_like(scores), scores, -big),
    which tf2onnx writes as a Mul of the scores by the cast mask plus a Mul of -big by its negation:
    not a scale and a mask added, so those heads stay with the reason; the FFNs are found."""
    a = analyze(normalize(load("bert_keras.onnx"))[0])
    assert not head_groups(a) and [g.channels for g in ffn_groups(a)] == [FFN] * 2
    qkv = [g for g in a.groups if g.reason and "splits the channels into attention heads" in g.reason]
    assert len(qkv) == 6 and all("on the attention scores adds what varies across heads" in g.reason for g in qkv)


def test_a_computed_target_shape_read_elsewhere_leaves_its_reshapes_alone():
    """q, k and v's Tensordot Reshapes share one computed target shape (Concat, Cast); where
    another node also reads it, rewriting its width would change that node too: the heads stay,
    with the reason."""
    graph = to_graph(normalize(load("bert_tf.onnx"))[0])
    reshape = next(n for n in graph.nodes if n.op == "Reshape" and not isinstance(n.inputs[1], gs.Constant)
                   and n.outputs[0].outputs[0].op == "Add" and len(n.inputs[1].outputs) == 3)
    extra = gs.Variable("shape_copy", np.int64)
    graph.nodes.append(gs.Node("Abs", "reads_the_shape", inputs=[reshape.inputs[1]], outputs=[extra]))
    graph.outputs.append(extra)
    a = analyze(to_model(graph, load("bert_tf.onnx")))
    frozen, other = head_groups(a)
    assert not frozen.prunable and other.prunable and len(ffn_groups(a)) == 2
    assert f"the target shape of Reshape node '{reshape.name}' is also read by Abs node 'reads_the_shape'" \
        in frozen.reason
