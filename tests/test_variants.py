"""Weight variants (variants.py): a candidate that only zeroes the rows of removed channels in
its consumers computes what the pruned model computes, from any cut and after any commits."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import FACTORIES, cnn_models, random_feeds, run
from checks import zero_rows
from hypothesis import given, settings

from onnxprune import analyze, normalize
from onnxprune.analysis.consumers import reconstructable
from onnxprune.methods.scores import select
from onnxprune.methods.weights import overlay_weights, theta_of
from onnxprune.passes.surgery import prune_channels
from onnxprune.widths.variants import Variants, bind, weights_as_inputs

MODELS = Path(__file__).parent.parent / "models"


def check_variants(model, feeds, seed=0, steps=3, budget=1 << 30, rtol=1e-4, atol=1e-4) -> int:
    """Commits random prunings of up to ``steps`` groups, one after the other; before each
    commit, the candidate's outputs must equal the pruned model's. Returns the groups checked."""
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    plans, _ = reconstructable(analysis)
    output = normalized.graph.output[0].name
    variants = Variants(normalized, [c for g in plans for c in plans[g]], feeds, [output],
                        ["CPUExecutionProvider"], budget)
    np.testing.assert_allclose(variants.run({})[0], run(normalized, feeds)[0], rtol=rtol, atol=atol)
    nodes = {n.name: n for n in analysis.graph.nodes}
    rng = np.random.default_rng(seed)
    keep, thetas = {}, {}
    groups = sorted(plans)
    rng.shuffle(groups)
    for g in groups[:steps]:
        n = analysis.groups[g].channels
        count = int(rng.integers(1, n)) if n > 1 else 1
        scores = [rng.random(group.channels) for group in analysis.groups]
        kept = select(analysis, scores, {g: count})[g]  # random, but no Split part emptied
        candidate, changed = {}, {}
        for c in plans[g]:
            theta = theta_of(nodes[c.node], c) * rng.uniform(0.5, 1.5)  # new weights for the kept rows
            removed = analysis.removed_mask({**keep, g: kept})  # a Concat's consumer: other groups' too
            classes = analysis.atom_class[analysis.layouts[c.input].atoms]
            theta = zero_rows(c, theta, np.flatnonzero(removed[classes]), len(classes))
            columns = np.arange(theta.shape[1])
            candidate[c.node] = (c, theta, columns)
            changed.update(variants.params(c, theta, columns))
        pruned = prune_channels(overlay_weights(normalized, {**thetas, **candidate}), analysis, {**keep, g: kept})
        np.testing.assert_allclose(variants.run(changed)[0], run(pruned, feeds)[0], rtol=rtol, atol=atol)
        variants.commit(changed)
        keep[g] = kept
        thetas.update(candidate)
    return min(steps, len(groups))


@pytest.mark.parametrize("budget", [0, 1 << 30])
@pytest.mark.parametrize("name", ["conv_chain", "basic_block_net", "bottleneck_net", "flatten_gemm_net",
                                  "mobilenetv2_block_net", "matmul_head_net", "inception_like",
                                  "densenet_like", "unet_like", "resnext_like", "grouped_conv_net"])
def test_a_variant_equals_the_pruned_model(name, budget):
    model = FACTORIES[name]()
    assert check_variants(model, random_feeds(model, batch=3, seed=1), seed=2, steps=4, budget=budget) > 0


@settings(max_examples=25, deadline=None)
@given(cnn_models())
def test_a_variant_equals_the_pruned_model_on_generated_graphs(model):
    check_variants(model, random_feeds(model, batch=2, seed=3), seed=4)


@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_a_variant_equals_the_pruned_model_on_reference_models(name):
    model = onnx.load(str(MODELS / f"{name}_fmnist.onnx"))
    with np.load(MODELS / "fmnist_calib.npz") as data:
        images = data[data.files[0]][:4]
    feeds = {model.graph.input[0].name: images}
    assert check_variants(model, feeds, seed=5, steps=6, rtol=1e-3, atol=1e-3) == 6


def test_a_gemm_alpha_is_folded_into_the_weight_input():
    model = FACTORIES["flatten_gemm_net"]()
    normalized, _ = normalize(model)
    for node in normalized.graph.node:
        if node.op_type == "Gemm":
            node.attribute.append(onnx.helper.make_attribute("alpha", 0.5))
    plans, _ = reconstructable(analyze(normalized))
    rewritten, slots, values = weights_as_inputs(normalized, [c for g in plans for c in plans[g]])
    assert all(a.f == 1.0 for n in rewritten.graph.node for a in n.attribute if a.name == "alpha")
    feeds = random_feeds(model, batch=2, seed=0)
    np.testing.assert_allclose(run(bind(rewritten, values), feeds)[0], run(normalized, feeds)[0], rtol=1e-5, atol=1e-6)


def chain_variants(monkeypatch, budget=1 << 30):
    """Variants of a conv 8 -> conv 16 -> conv 8 -> Gemm chain whose consumers conv1, conv2 and gemm0
    (nodes 2, 4 and 8 of 9) read their weights from inputs; each segment cut out is recorded as
    (its activation inputs, its outputs), and each session's providers."""
    from onnxprune.widths import variants as module

    normalized, _ = normalize(FACTORIES["conv_chain"](widths=(8, 16, 8)))
    plans, _ = reconstructable(analyze(normalized))
    segments, providers = [], []
    probe, session = module.probe_model, module.session

    def probed(model, tensors, sources=None):
        segments.append((sorted(n for n in sources if "/" not in n), list(tensors)))
        return probe(model, tensors, sources)

    def made(model, providers_=None, **kwargs):
        providers.append(providers_)
        return session(model, providers_, **kwargs)

    monkeypatch.setattr(module, "probe_model", probed)
    monkeypatch.setattr(module, "session", made)
    feeds = random_feeds(normalized, batch=2, seed=0)
    variants = Variants(normalized, [c for g in sorted(plans) for c in plans[g]], feeds, ["gemm0"],
                        ["CPUExecutionProvider"], budget)
    return variants, feeds, segments, providers


def test_a_variant_runs_from_the_first_node_that_reads_its_changed_parameters(monkeypatch):
    """Nothing changed: the whole model, from the input. conv2's weights changed: its input relu1 is
    computed from the input once and kept, then the rest runs from relu1; conv1's likewise from
    relu0. After conv1's weights are committed, relu1 (made after conv1) is forgotten and recomputed
    from relu0, the nearest cut still kept, not from the input. Every output equals the whole model's
    with the same weights, and every session runs on the providers asked for."""
    variants, feeds, segments, providers = chain_variants(monkeypatch)
    rng = np.random.default_rng(1)
    whole = lambda params: run(bind(variants.model, params), feeds)[0]  # noqa: E731
    conv1, conv2 = ({name: rng.standard_normal(variants.current[name].shape).astype(np.float32)
                     for name in variants.slots[node][:2]} for node in ("conv1", "conv2"))
    np.testing.assert_allclose(variants.run({})[0], whole(variants.current), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variants.run(conv2)[0], whole({**variants.current, **conv2}), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variants.run(conv1)[0], whole({**variants.current, **conv1}), rtol=1e-5, atol=1e-5)
    variants.commit(conv1)
    np.testing.assert_allclose(variants.run(conv2)[0], whole({**variants.current, **conv2}), rtol=1e-5, atol=1e-5)
    assert segments == [
        (["input"], ["gemm0"]),  # nothing changed: from node 0
        (["input"], ["relu1"]), (["relu1"], ["gemm0"]),  # conv2 (node 4): relu1 kept, then from it
        (["input"], ["relu0"]), (["relu0"], ["gemm0"]),  # conv1 (node 2)
        (["relu0"], ["relu1"]),  # after the commit: relu1 again, from relu0; the segment from relu1 is reused
    ]
    assert providers and all(p == ["CPUExecutionProvider"] for p in providers)


def test_the_weights_as_inputs_are_declared_with_their_type_and_shape():
    """Each consumer's weight and bias become inputs named after the node and their role, declared
    float32 with the shape of the value; the model runs fed them as inputs, without ``bind``."""
    normalized, _ = normalize(FACTORIES["conv_chain"](widths=(8, 16, 8)))
    plans, _ = reconstructable(analyze(normalized))
    rewritten, slots, values = weights_as_inputs(normalized, [c for g in sorted(plans) for c in plans[g]])
    assert slots == {"conv1": ("conv1/weight", "conv1/bias", False), "conv2": ("conv2/weight", "conv2/bias", False),
                     "gemm0": ("gemm0/weight", "gemm0/bias", True)}
    declared = {i.name: (i.type.tensor_type.elem_type, tuple(d.dim_value for d in i.type.tensor_type.shape.dim))
                for i in rewritten.graph.input}
    assert {n: declared[n] for n in values} == {n: (onnx.TensorProto.FLOAT, v.shape) for n, v in values.items()}
    assert values["conv1/weight"].shape == (16, 8, 3, 3) and values["gemm0/bias"].shape == (10,)
    onnx.checker.check_model(rewritten, full_check=True)
    feeds = random_feeds(normalized, batch=2, seed=0)
    np.testing.assert_allclose(run(rewritten, {**feeds, **values})[0], run(normalized, feeds)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ir_version, still_inputs", [(3, True), (4, False), (8, False)])
def test_bind_makes_the_bound_inputs_initializers(ir_version, still_inputs):
    """From IR 4 on, the bound inputs leave the graph's inputs (onnxruntime then pre-packs them as
    constants); IR 3 lists every initializer among the inputs, so there they stay."""
    normalized, _ = normalize(FACTORIES["conv_chain"](widths=(8, 16, 8)))
    plans, _ = reconstructable(analyze(normalized))
    rewritten, _, values = weights_as_inputs(normalized, [c for g in sorted(plans) for c in plans[g]])
    rewritten.ir_version = ir_version
    params = {n: v for n, v in values.items() if n.startswith("conv2/")}
    bound = bind(rewritten, {**params, "not an input": np.zeros(1, np.float32)})
    inputs = [i.name for i in bound.graph.input]
    assert ("conv2/weight" in inputs and "conv2/bias" in inputs) == still_inputs
    assert {"input", "conv1/weight", "conv1/bias", "gemm0/weight", "gemm0/bias"} <= set(inputs)
    added = {t.name for t in bound.graph.initializer} - {t.name for t in rewritten.graph.initializer}
    assert added == {"conv2/weight", "conv2/bias"}  # not "not an input"
    assert len(rewritten.graph.input) == 7 and "conv2/weight" not in {t.name for t in rewritten.graph.initializer}


def test_variants_and_cuts_go_as_soon_as_their_owner_drops_them():
    """PRO drops a Variants (its model, sessions and kept activations) at every rebase, and the
    l1 candidates their Cuts: with the garbage collector off, nothing keeps them alive (a reference
    cycle through their kept activations did, until the collector happened to run)."""
    import gc
    import weakref

    from onnxprune.widths.variants import Cuts

    normalized, _ = normalize(FACTORIES["basic_block_net"](blocks=2))
    plans, _ = reconstructable(analyze(normalized))
    feeds = random_feeds(normalized, batch=3, seed=5)
    output = normalized.graph.output[0].name
    convs = [i for i, n in enumerate(normalized.graph.node) if n.op_type == "Conv"]
    gc.collect()
    gc.disable()
    try:
        variants = Variants(normalized, [c for g in plans for c in plans[g]], feeds, [output],
                            ["CPUExecutionProvider"], 1 << 30)
        changed = next(iter(variants.original))
        variants.run({changed: variants.original[changed] * 2})
        cuts = Cuts(normalized, feeds, ["CPUExecutionProvider"], 1 << 30)
        cuts.run(normalized, convs[-1], [output])
        assert variants.kept.values and cuts.kept.values  # they kept activations
        refs = [weakref.ref(variants), weakref.ref(cuts)]
        del variants, cuts
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_variants_keep_a_few_cut_segments_and_run_alike_without_the_others(monkeypatch):
    """Each cut segment copies the weights after its cut: a Variants keeps the latest SEGMENTS; with
    one kept, candidates changed at every consumer in turn, twice over, give what they give with
    all of them kept."""
    from onnxprune.widths import variants as module

    normalized, _ = normalize(FACTORIES["basic_block_net"](blocks=2))
    plans, _ = reconstructable(analyze(normalized))
    consumers = [c for g in plans for c in plans[g]]
    feeds = random_feeds(normalized, batch=3, seed=6)
    output = normalized.graph.output[0].name

    def outputs():
        v = Variants(normalized, consumers, feeds, [output], ["CPUExecutionProvider"], 1 << 30)
        got = [v.run({name: v.original[name] * 1.5})[0] for _ in range(2) for name in v.original]
        return got, len(v._segments)
    every, kept = outputs()
    assert kept > 1
    monkeypatch.setattr(module, "SEGMENTS", 1)
    few, kept = outputs()
    assert kept == 1
    for a, b in zip(few, every, strict=True):
        np.testing.assert_array_equal(a, b)
