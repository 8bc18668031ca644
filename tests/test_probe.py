"""Probe models cut on the protos compute what the graphsurgeon round trip computes, from the
inputs or from the live tensors at any cut, and hold only the nodes they need."""

import numpy as np
import pytest
from builders import FACTORIES, random_feeds, run
from encoders import encoder, encoder_feeds, EncoderSpec
from test_groups import conv_then, if_branches

from onnxprune import normalize
from onnxprune.graph import probe as module
from onnxprune.graph.probe import live_tensors, probe_model

CNNS = ["basic_block_net", "densenet_like", "c2f_like", "se_net", "flatten_gemm_net"]
ENCODERS = {"dynamic reshapes, mask": dict(reshape="dynamic", mask=True),
            "static reshapes, decomposed norm": dict(reshape="static", layer_norm="decomposed", norm="post"),
            "embedded ids": dict(vocab=50, mask=True, reshape="inferred")}


def models():
    for name in CNNS:
        model, _ = normalize(FACTORIES[name]())
        yield name, model, random_feeds(model, batch=3, seed=1)
    for name, kw in ENCODERS.items():
        model, _ = normalize(encoder(**kw))
        yield name, model, encoder_feeds(EncoderSpec(**kw), batch=3)


def everything(model):
    return [o for node in model.graph.node for o in node.output if o]


@pytest.mark.parametrize("name,model,feeds", list(models()), ids=lambda v: v if isinstance(v, str) else "")
def test_cut_on_the_protos_equals_the_graphsurgeon_cut_at_every_position(name, model, feeds):
    names = everything(model)
    full = dict(zip(names, run(probe_model(model, names), feeds)))
    via_graph = dict(zip(names, run(module._probe_via_graph(model, names), feeds)))
    for n in names:
        np.testing.assert_array_equal(full[n], via_graph[n])
    values = {**feeds, **full}
    outputs = [o.name for o in model.graph.output]
    for position in range(1, len(model.graph.node), 2):
        sources = {n: values[n] for n in live_tensors(model, position)}
        wanted = outputs + [o for o in model.graph.node[position].output if o]
        fast, slow = probe_model(model, wanted, sources), module._probe_via_graph(model, wanted, sources)
        assert [i.name for i in fast.graph.input] == [i.name for i in slow.graph.input]
        assert len(fast.graph.node) <= len(model.graph.node) - position  # nothing before the cut
        feeds_ = {i.name: values[i.name] for i in fast.graph.input}
        for want, got, expected in zip(wanted, run(fast, feeds_), run(slow, feeds_)):
            np.testing.assert_array_equal(got, expected)
            np.testing.assert_array_equal(got, values[want])


def test_a_probe_holds_only_the_nodes_and_weights_its_outputs_need():
    model, _ = normalize(FACTORIES["basic_block_net"]())
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    cut = probe_model(model, [first_conv.output[0]])
    assert [n.op_type for n in cut.graph.node] == ["Conv"]
    assert sorted(t.name for t in cut.graph.initializer) == sorted(first_conv.input[1:])
    assert [o.name for o in cut.graph.output] == [first_conv.output[0]]


def test_a_batch_source_stays_dynamic_and_a_segment_runs_on_other_batch_sizes():
    model, _ = normalize(encoder(reshape="dynamic", mask=True))
    spec = EncoderSpec(reshape="dynamic", mask=True)
    names = everything(model)
    position = len(model.graph.node) // 2
    segment = None
    for batch in (3, 5):
        feeds = encoder_feeds(spec, batch=batch)
        values = {**feeds, **dict(zip(names, run(probe_model(model, names), feeds)))}
        sources = {n: values[n] for n in live_tensors(model, position)}
        segment = segment or probe_model(model, [model.graph.output[0].name], sources)  # cut at batch 3
        got = run(segment, {i.name: values[i.name] for i in segment.graph.input})[0]
        np.testing.assert_array_equal(got, values[model.graph.output[0].name])


def test_a_model_with_subgraphs_is_cut_through_graphsurgeon(monkeypatch):
    model = conv_then(if_branches)
    calls = []
    slow = module._probe_via_graph
    monkeypatch.setattr(module, "_probe_via_graph", lambda *a: calls.append(1) or slow(*a))
    feeds = random_feeds(model, batch=2)
    names = everything(model)
    got = run(probe_model(model, names), feeds)
    assert calls and len(got) == len(names)
