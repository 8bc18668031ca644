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
