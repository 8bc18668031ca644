"""Self-tests for tests/builders.py: every graph is valid and runs in onnxruntime."""

import numpy as np
import onnx
import pytest
from hypothesis import given, settings

from builders import ACTIVATIONS, FACTORIES, NetBuilder, cnn_models, run


def check_runs(model, batch=2):
    """Full checker passes; outputs are finite and match the declared shapes (batch substituted)."""
    onnx.checker.check_model(model, full_check=True)
    outputs = run(model, batch=batch)
    for out, info in zip(outputs, model.graph.output, strict=True):
        dims = info.type.tensor_type.shape.dim
        assert list(out.shape) == [d.dim_value if d.HasField("dim_value") else batch for d in dims], info.name
        assert np.isfinite(out).all(), info.name
    return outputs


CASES = [(name, {}) for name in FACTORIES] + [
    ("conv_chain", {"bn": False, "act": "silu", "k": 1}),
    ("basic_block_net", {"x_from": "maxpool", "preact": True}),
    ("basic_block_net", {"projection": False, "blocks": 1}),
    ("bottleneck_net", {"expansion": 1, "stride": 1}),
    ("c2f_like", {"use_slice": True}),
    ("mobilenetv2_block_net", {"expand": 1, "stride": 2}),
    ("se_net", {"gate": "HardSigmoid"}),
]


@pytest.mark.parametrize("name, kwargs", CASES, ids=[f"{n}-{kw}" for n, kw in CASES])
def test_factory(name, kwargs):
    (out,) = check_runs(FACTORIES[name](**kwargs))
    assert out.shape == (2, 10)


def test_factories_are_deterministic():
    assert FACTORIES["c2f_like"](seed=3) == FACTORIES["c2f_like"](seed=3)
    assert FACTORIES["c2f_like"](seed=3) != FACTORIES["c2f_like"](seed=4)


def test_every_op_tracks_shapes():
    """Each builder method's output shape, as tracked, matches onnxruntime's."""
    b = NetBuilder(4, hw=8, batch=1)
    x = b.conv("input", 8, k=3, stride=2)  # 8x4x4
    x = b.conv(x, 8, k=3, pad=2, dilation=2, group=4, bias=False)
    acts = [b.act(b.bn(x), kind) for kind in ACTIVATIONS]
    outs = acts + [
        b.prelu(x, per_channel=False), b.mul_const(x), b.add_const(x, per_channel=False),
        b.sub(x, acts[0]), b.max(x, acts[1]), b.concat([x, acts[2]], axis=-3), *b.split(x, [3, 5]),
        b.slice_channels(x, 2, 100), b.slice_channels(x, -3, -1), b.maxpool(x, k=3, stride=1, pad=1),
        b.avgpool(x), b.gmp(x), b.pad(x, p=2), b.resize(x), b.dropout(x), b.identity(x),
        b.channel_shuffle(x, 4), b.se(x, gate="HardSigmoid"),
        b.conv_transpose(x, 5, k=3, stride=2, bias=False),
        b.gemm(b.reshape_flatten(x), 6, trans_b=False), b.matmul(b.flatten(x), 7),
    ]
    model = b.model(outs)
    initializers = {i.name for i in model.graph.initializer}
    assert {"conv0.weight", "conv0.bias", "bn0.var", "split0.split"} <= initializers
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)
    results = dict(zip(outs, check_runs(model, batch=1)))
    assert results["slice0"].shape == (1, 6, 4, 4) and results["slice1"].shape == (1, 2, 4, 4)
    assert results["convtranspose0"].shape == (1, 5, 9, 9)


@pytest.mark.parametrize("opset, ir_version", [(11, 6), (13, 7), (17, 8)])
def test_split_and_clip_across_opsets(opset, ir_version):
    b = NetBuilder(3, batch=2, opset=opset, ir_version=ir_version)
    x = b.clip(b.conv("input", 6))
    model = b.model(b.concat(b.split(x, [2, 4])[::-1]))
    assert model.opset_import[0].version == opset and model.ir_version == ir_version
    check_runs(model)


@settings(max_examples=30, deadline=None)
@given(cnn_models())
def test_random_models(model):
    (out,) = check_runs(model)
    assert out.shape == (2, 10)
