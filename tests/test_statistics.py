"""Calibration statistics: im2col matches the layers, any batch split sums to the same, host == graph."""

from pathlib import Path

import numpy as np
import pytest
from builders import FACTORIES, NetBuilder, random_feeds

from onnxprune import analyze, normalize
from onnxprune.analysis.consumers import reconstructable
from onnxprune.calibration.sampling import RowSampling
from onnxprune.calibration.statistics import StatsMode, collect, targets
from onnxprune.graph.probe import probe_model
from onnxprune.graph.runtime import run_all, session
from onnxprune.methods.weights import theta_of
from oracles import patches


def setup(model):
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    plans, _ = reconstructable(analysis)
    consumers = [c for cs in plans.values() for c in cs]
    return normalized, analysis, consumers


def strided_conv_net():
    b = NetBuilder(3, hw=9, seed=2)
    x = b.relu(b.conv("input", 6, k=3, stride=2, pad=1))
    x = b.relu(b.conv(x, 5, k=3, dilation=2, pad=2))
    x = b.relu(b.conv(x, 4, k=1))
    return b.model(b.gemm(b.flatten(x), 3))


@pytest.mark.parametrize("model", [strided_conv_net(), FACTORIES["basic_block_net"](), FACTORIES["flatten_gemm_net"](),
                                   FACTORIES["matmul_head_net"](), FACTORIES["mobilenetv2_block_net"](),
                                   FACTORIES["unet_like"]()])
def test_patches_times_weights_give_the_layer_output(model):
    normalized, analysis, consumers = setup(model)
    assert consumers
    nodes = {n.name: n for n in analysis.graph.nodes}
    run = session(probe_model(normalized, sorted({c.input for c in consumers} | {c.output for c in consumers})))
    values = run_all(run, random_feeds(normalized, batch=3))
    for c in consumers:
        theta = theta_of(nodes[c.node], c)
        x, y = patches(values[c.input], c), targets(values[c.output], c)
        np.testing.assert_allclose(x @ theta[:-1] + theta[-1], y, rtol=1e-4, atol=1e-4)


FLOAT32 = 1e-5  # the host's products run in float32 (layer_stats.RunningSums): a few ulps of the data


def batches_of(feeds, sizes):
    def batches():
        start = 0
        for size in sizes:
            yield {k: v[start:start + size] for k, v in feeds.items()}
            start += size
    return batches


@pytest.mark.parametrize("factory", ["basic_block_net", "flatten_gemm_net", "densenet_like", "unet_like"])
def test_statistics_add_up_over_any_batch_split_and_host_equals_graph(factory):
    normalized, analysis, consumers = setup(FACTORIES[factory]())
    feeds = random_feeds(normalized, batch=8, seed=5)
    reference, _ = collect(normalized, normalized, consumers, batches_of(feeds, [8]))
    for sizes, mode in (([1] * 8, StatsMode.HOST), ([3, 5], StatsMode.HOST), ([8], StatsMode.GRAPH), ([2, 6], StatsMode.GRAPH)):
        stats, _ = collect(normalized, normalized, consumers, batches_of(feeds, sizes), mode)
        assert_same_stats(stats, reference, consumers)


def assert_same_stats(stats, reference, consumers, rtol=FLOAT32):
    """Every consumer's statistics equal the reference's (rows exactly, sums to the rounding of
    the host's float32 products, layer_stats.RunningSums)."""
    for c in consumers:
        a, b = reference[c.node], stats[c.node]
        assert a.rows == b.rows
        np.testing.assert_allclose(b.gram, a.gram, rtol=rtol, atol=rtol * np.abs(a.gram).max())
        np.testing.assert_allclose(b.cross, a.cross, rtol=rtol, atol=rtol * np.abs(a.cross).max())
        np.testing.assert_allclose(b.yy, a.yy, rtol=1e-9)


@pytest.mark.parametrize("sizes", [[1] * 8, [2, 1, 3, 2], [3, 5]])
@pytest.mark.parametrize("mode", [StatsMode.HOST, StatsMode.GRAPH])
def test_fit_and_holdout_are_the_statistics_of_their_batches_whatever_the_split(sizes, mode):
    """With held-out batches (every 2nd here), the holdout's statistics are exactly those of the
    held-out samples taken as one batch, the fit's those of the others, for any batch sizes."""
    normalized, analysis, consumers = setup(FACTORIES["densenet_like"]())
    feeds = random_feeds(normalized, batch=8, seed=6)
    fit, holdout = collect(normalized, normalized, consumers, batches_of(feeds, sizes), mode, holdout_every=2)
    bounds = np.cumsum([0, *sizes])
    held = np.concatenate([np.arange(a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:])) if i % 2 == 1])
    rest = np.setdiff1d(np.arange(8), held)
    for stats, samples in ((holdout, held), (fit, rest)):
        alone, _ = collect(normalized, normalized, consumers,
                           batches_of({k: v[samples] for k, v in feeds.items()}, [len(samples)]))
        assert_same_stats(stats, alone, consumers)


def test_holdout_takes_every_nth_batch():
    normalized, analysis, consumers = setup(FACTORIES["conv_chain"]())
    feeds = random_feeds(normalized, batch=8)
    whole, _ = collect(normalized, normalized, consumers, batches_of(feeds, [2, 2, 2, 2]))
    fit, holdout = collect(normalized, normalized, consumers, batches_of(feeds, [2, 2, 2, 2]), holdout_every=4)
    c = consumers[0]
    assert holdout[c.node].rows == whole[c.node].rows // 4
    # the host's float32 products are of rows around each sum's first batch's means: equal to their rounding
    np.testing.assert_allclose((fit[c.node] + holdout[c.node]).gram, whole[c.node].gram, rtol=FLOAT32)


@pytest.mark.parametrize("path", ["data/real/retinaface_mnet025.onnx", "data/real/ppocrv3_det_db.onnx",
                                  "../models/mobilenetv2_fmnist.onnx", "../models/vgg16_fmnist.onnx"])
def test_shape_inference_without_the_weights_infers_what_it_does_with_them(path):
    """Probes infer shapes on a copy whose large float initializers are typed inputs."""
    import onnx
    from onnx import helper

    from onnxprune.graph.probe import _inferred, _without_weights

    model, _ = normalize(onnx.load(str(Path(__file__).parent / path)))
    light = _without_weights(model)
    assert light.ByteSize() < model.ByteSize() // 4
    full = onnx.shape_inference.infer_shapes(model)
    expected = {vi.name: (helper.tensor_dtype_to_np_dtype(t.elem_type),
                          [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
                          if t.HasField("shape") else None)
                for vi in [*full.graph.value_info, *full.graph.output] for t in [vi.type.tensor_type]}
    got = _inferred(model)
    assert expected and all(got[name] == value for name, value in expected.items())


@pytest.mark.parametrize("mode", [StatsMode.HOST, StatsMode.GRAPH])
@pytest.mark.parametrize("factory", ["basic_block_net", "densenet_like"])
def test_batches_run_in_slices_give_the_statistics_of_whole_batches(factory, mode):
    """A run hands over every consumer's tensors of its samples at once (4.7 GB for 64 images of
    ResNet-50), so batches run in slices of ``run_bytes``: the same rows are drawn, the same
    batches held out, and the statistics equal those of whole batches."""
    normalized, analysis, consumers = setup(FACTORIES[factory]())
    feeds = random_feeds(normalized, batch=12, seed=7)
    rows = RowSampling(per_column=1, samples=12)  # a few positions of each sample: the draws matter
    whole = collect(normalized, normalized, consumers, batches_of(feeds, [5, 7]), mode, holdout_every=2, rows=rows,
                    run_bytes=1 << 40)
    seen = []
    sliced = collect(normalized, normalized, consumers, batches_of(feeds, [5, 7]), mode, holdout_every=2, rows=rows,
                     run_bytes=1, on_batch=seen.append)
    assert seen == [1] * 12  # one sample a run
    for a, b in zip(whole, sliced):
        assert_same_stats(b, a, consumers)
    assert any(whole[0][c.node].drawn for c in consumers)  # rows were drawn (sampling.py)


def test_permuting_statistics_by_the_identity_is_no_copy():
    """A consumer that reads only the group being pruned takes its statistics as they are (its
    Gram may be hundreds of MB); any other order is the reordered copy."""
    from onnxprune.calibration.layer_stats import stats_from_data
    rng = np.random.default_rng(0)
    stats = stats_from_data(rng.normal(size=(50, 6)), rng.normal(size=(50, 3)))
    p = len(stats.gram)
    assert stats.permuted(np.arange(p)) is stats
    assert stats.permuted(np.append(np.arange(p - 1), -1)) is stats  # the bias as -1 (columns())
    for rows in (np.append(rng.permutation(p - 1), -1), np.array([3, 0, -1])):
        moved = stats.permuted(rows)
        assert moved is not stats
        np.testing.assert_array_equal(moved.gram, stats.gram[np.ix_(rows, rows)])
        np.testing.assert_array_equal(moved.cross, stats.cross[rows])
