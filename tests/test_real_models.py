"""Real topologies: the onnx wheel's model-zoo graphs and models exported by other frameworks.

Each must inspect and prune into a model that passes the full checker and runs,
or freeze with reasons; on each, cutting channels whose consumer weights are
zero must leave the outputs unchanged (surgery consistent on real graphs).
"""

from pathlib import Path

import numpy as np
import onnx
import pytest
from checks import random_keep, zero_consumer_weights

from onnxprune import PruneConfig, analyze, load, normalize, prune, prune_channels
from onnxprune.analysis.cost import MacPredictor, ParamPredictor, model_cost
from onnxprune.prune import proxy_choice
from onnxprune.widths.budget import kept_count
from onnxprune.graph.runtime import session
from onnxprune.graph.shapes import random_feeds

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
REAL = Path(__file__).parent / "data" / "real"

# name -> (path, input shapes, ops that must freeze something, whether any group is prunable)
MODELS = {
    "resnet50": (LIGHT / "light_resnet50.onnx", {}),
    "densenet121": (LIGHT / "light_densenet121.onnx", {}),
    "inception_v1": (LIGHT / "light_inception_v1.onnx", {}),
    "inception_v2": (LIGHT / "light_inception_v2.onnx", {}),
    "shufflenet": (LIGHT / "light_shufflenet.onnx", {}),
    "squeezenet": (LIGHT / "light_squeezenet.onnx", {}),
    "vgg19": (LIGHT / "light_vgg19.onnx", {}),
    "alexnet": (LIGHT / "light_bvlc_alexnet.onnx", {}),
    "zfnet512": (LIGHT / "light_zfnet512.onnx", {}),
    "ppocr_cls": (REAL / "ppocr_cls_mnv3.onnx", {"x": (1, 3, 48, 192)}),
    "ppocr_det": (REAL / "ppocrv3_det_db.onnx", {"x": (1, 3, 160, 160)}),
    "retinaface": (REAL / "retinaface_mnet025.onnx", {"input": (1, 3, 160, 160)}),
    "mtcnn_rnet": (REAL / "mtcnn_rnet.onnx", {}),
}
# Weights too large for a quick second copy: only analysed.
HEAVY = {"vgg19", "alexnet", "zfnet512"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_model_inspects_and_prunes(name):
    """Every group is prunable or frozen with a reason naming what froze it; pruning halves every
    prunable group (round-to 1) and costs what the predictors said, in a model that passes the
    full checker and runs. The heavy models (weights of 240-550 MB) are only analysed."""
    path, shapes = MODELS[name]
    model = load(path)
    normalized, _ = normalize(model)
    analysis = analyze(normalized, shapes)
    assert analysis.groups
    for g in analysis.groups:
        if g.reason is not None:
            assert not g.prunable and ("node '" in g.reason or "graph output" in g.reason), g.reason
    if not any(g.prunable for g in analysis.groups):
        assert name == "shufflenet"  # grouped convs and channel shuffles everywhere
        return
    if name in HEAVY:  # LRNs freeze AlexNet's and ZFNet's first layers; AlexNet's grouped convs cut 3 in 2 blocks
        assert sum(g.prunable for g in analysis.groups) == {"vgg19": 18, "zfnet512": 5, "alexnet": 5}[name]
        if name == "alexnet":
            assert sorted(g.blocks for g in analysis.groups if g.prunable) == [1, 1, 2, 2, 2]
        return
    before = model_cost(analysis.graph, analysis.shapes)
    result = prune(model, PruneConfig(ratio=0.5, round_to=1, input_shapes=shapes))
    for c in result.groups:
        assert c.channels_after == (kept_count(c.group.channels, 0.5) if c.group.prunable else c.group.channels)
    counts = {c.group.id: c.channels_after for c in result.groups if c.group.prunable}
    removed = analysis.removed_mask(proxy_choice(analysis)(counts))
    assert result.macs_before == before.macs and result.params_before == before.params
    assert result.macs_after == MacPredictor(analysis, before).macs(removed) < before.macs
    assert result.params_after == ParamPredictor(analysis).params(removed) < before.params
    onnx.checker.check_model(result.model, full_check=True)
    outputs = session(result.model, optimize=False).run(None, random_feeds(normalized, shapes))
    assert all(np.isfinite(o).all() for o in outputs)


@pytest.mark.parametrize("name", sorted(set(MODELS) - HEAVY - {"shufflenet"}))
def test_real_model_cut_is_consistent(name):
    path, shapes = MODELS[name]
    normalized, _ = normalize(load(path))
    analysis = analyze(normalized, shapes)
    keep = random_keep(analysis, np.random.default_rng(0))
    zeroed = zero_consumer_weights(normalized, analysis, keep)
    pruned = prune_channels(zeroed, analysis, keep)
    onnx.checker.check_model(pruned, full_check=True)
    feeds = random_feeds(normalized, shapes)
    for x, y in zip(session(zeroed, optimize=False).run(None, feeds), session(pruned, optimize=False).run(None, feeds),
                    strict=True):
        scale = max(1.0, float(np.abs(x).max()))
        np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-5 * scale)


def test_expected_freezes_are_reported():
    reasons = {}
    for name in ("alexnet", "shufflenet", "retinaface", "mtcnn_rnet"):
        path, shapes = MODELS[name]
        normalized, _ = normalize(load(path))
        reasons[name] = " ".join(g.reason or "" for g in analyze(normalized, shapes).groups)
    assert "LRN node" in reasons["alexnet"]
    assert "grouped Conv" in reasons["shufflenet"] and "Reshape node" in reasons["shufflenet"]
    assert "Transpose node" in reasons["retinaface"] and "Resize node" in reasons["retinaface"]
    assert "Transpose node" in reasons["mtcnn_rnet"]
