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
# Weights too large for a quick second copy: the consistency check skips them.
HEAVY = {"vgg19", "alexnet", "zfnet512"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_real_model_inspects_and_prunes(name):
    path, shapes = MODELS[name]
    model = load(path)
    normalized, _ = normalize(model)
    analysis = analyze(normalized, shapes)
    assert analysis.groups
    for g in analysis.groups:
        assert g.prunable or g.reason or g.channels == 1
    if not any(g.prunable for g in analysis.groups):
        assert name == "shufflenet"  # grouped convs and channel shuffles everywhere
        return
    result = prune(model, PruneConfig(ratio=0.5, input_shapes=shapes))
    assert result.macs_after < result.macs_before
    assert result.params_after < result.params_before


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
    assert "grouped convolution" in reasons["shufflenet"]
    assert "Transpose node" in reasons["retinaface"] and "Resize node" in reasons["retinaface"]
    assert "Transpose node" in reasons["mtcnn_rnet"]
