"""Segment runs: resuming from kept activations gives exactly what a run from the input gives."""

import numpy as np
import onnx
import pytest
from builders import FACTORIES, random_feeds, run
from test_sequential import calibration

from onnxprune import PruneConfig, normalize, prune
from onnxprune.calibration.cache import SegmentRunner, pairs
from onnxprune.graph.probe import live_tensors
from onnxprune.calibration.statistics import Calibration, samples_per_run, slices
from onnxprune.graph.shapes import infer_shapes
from onnxprune.config import Method
from onnxprune.graph.probe import probe_model

MODELS = ["conv_chain", "basic_block_net", "bottleneck_net", "densenet_like", "c2f_like", "se_net",
          "flatten_gemm_net", "mobilenetv2_block_net"]


def counting(batches, size=0):
    """A runner's data (the batches as parts, in slices of ``size`` samples, 0: whole), and a list
    that gets one entry each time the data is read."""
    calls = []

    def wrapped():
        calls.append(1)
        return slices(batches(), size)
    return wrapped, calls


def everything(model):
    """Names of the activations of ``model``, in node order."""
    return [o for node in model.graph.node for o in node.output if o]


@pytest.mark.parametrize("name", MODELS)
def test_a_segment_from_the_live_tensors_at_any_cut_gives_the_same_outputs(name):
    model, _ = normalize(FACTORIES[name]())
    feeds = random_feeds(model, batch=3, seed=1)
    full = probe(model, everything(model), feeds)
    outputs = [o.name for o in model.graph.output]
    for position in range(1, len(model.graph.node)):
        live = live_tensors(model, position)
        segment = probe_model(model, outputs, {n: full[n] for n in live})
        got = run(segment, {i.name: full[i.name] for i in segment.graph.input})
        for name_, value in zip(outputs, got):
            np.testing.assert_array_equal(value, full[name_])


def probe(model, names, feeds):
    return {**feeds, **dict(zip(names, run(probe_model(model, names), feeds)))}


def test_live_tensors_of_a_residual_block_are_its_input_and_the_branch():
    model, _ = normalize(FACTORIES["basic_block_net"](projection=False, stride=1, blocks=1))
    nodes = list(model.graph.node)
    add = next(i for i, n in enumerate(nodes) if n.op_type == "Add")
    live = live_tensors(model, add)
    assert sorted(live) == sorted(nodes[add].input)


def test_the_runner_resumes_from_the_cut_and_gives_the_same_values():
    model, _ = normalize(FACTORIES["basic_block_net"](blocks=2))
    calib = calibration(model, samples=48, batch=16)
    batches, reads = counting(calib.batches)
    runner = SegmentRunner(batches, ["CPUExecutionProvider"], 1 << 30)
    names = everything(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    last = names[-1]
    first = [b[names[2]] for _, b in runner.run(model, [names[2]], keep_before=convs[2])]
    assert len(reads) == 1 and runner.cut > 0
    resumed = [b[last] for _, b in runner.run(model, [last], keep_before=convs[-1])]
    assert len(reads) == 1, "the second run should start from the kept activations"
    fresh = [b[last] for _, b in
             SegmentRunner(counting(calib.batches)[0], ["CPUExecutionProvider"], 0).run(model, [last])]
    assert len(first) == len(resumed) == 3
    for a, b in zip(resumed, fresh):  # optimised sessions may fuse differently across the cut
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_runner_starts_from_the_input_when_the_cache_cannot_serve():
    model, _ = normalize(FACTORIES["conv_chain"]())
    calib = calibration(model, samples=32, batch=16)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    names = everything(model)
    # over budget: nothing kept
    batches, reads = counting(calib.batches)
    runner = SegmentRunner(batches, ["CPUExecutionProvider"], 0)
    list(runner.run(model, [names[-1]], keep_before=convs[-1]))
    list(runner.run(model, [names[-1]]))
    assert len(reads) == 2 and runner.cut == 0
    # a wanted tensor before the cut
    batches, reads = counting(calib.batches)
    runner = SegmentRunner(batches, ["CPUExecutionProvider"], 1 << 30)
    list(runner.run(model, [names[-1]], keep_before=convs[-1]))
    early = [b[names[0]] for _, b in runner.run(model, [names[0]])]
    assert len(reads) == 2
    np.testing.assert_allclose(early[0], probe(model, [names[0]], next(calib.batches()))[names[0]], rtol=1e-5, atol=1e-6)
    # a model whose nodes before the cut are not the same (by name)
    other = onnx.ModelProto()
    other.CopyFrom(model)
    for node in other.graph.node:
        node.name = "other_" + node.name
    batches, reads = counting(calib.batches)
    runner = SegmentRunner(batches, ["CPUExecutionProvider"], 1 << 30)
    list(runner.run(model, [names[-1]], keep_before=convs[-1]))
    list(runner.run(other, [everything(other)[-1]]))
    assert len(reads) == 2


def test_pairs_runs_both_to_the_end_and_checks_the_lengths():
    done = []

    def gen(n):
        yield from range(n)
        done.append(n)
    assert list(pairs(gen(2), gen(2))) == [(0, 0), (1, 1)] and done == [2, 2]
    with pytest.raises(AssertionError):
        list(pairs(gen(2), gen(3)))


@pytest.mark.parametrize("method", [Method.REAP, Method.THINET, Method.NU])
@pytest.mark.parametrize("name", ["basic_block_net", "bottleneck_net", "flatten_gemm_net", "densenet_like"])
def test_pruning_with_the_activation_cache_equals_pruning_without(name, method):
    """In memory, in temporary files (nothing in memory) or not at all: the same model."""
    model = FACTORIES[name]()
    config = PruneConfig(method=method, ratio=0.5, round_to=1)
    cached = prune(model, config, calibration(model))
    plain = calibration(model)
    feeds = random_feeds(model, batch=4, seed=3)
    for spill in (True, False):
        other = prune(model, config, Calibration(plain.batches, plain.samples, cache_bytes=0, spill=spill))
        np.testing.assert_allclose(run(cached.model, feeds)[0], run(other.model, feeds)[0], rtol=1e-5, atol=1e-6)


def test_activations_beyond_the_budget_go_to_files_unlinked_as_they_are_mapped(tmp_path, monkeypatch):
    """A runner with no memory budget and a spill folder resumes from the cut like one that keeps
    everything in memory: its kept parts are read-only maps of files no longer in the folder."""
    from onnxprune.calibration import cache

    monkeypatch.setattr(cache, "SPILL_BYTES", 1)  # this model's tensors are small
    model, _ = normalize(FACTORIES["basic_block_net"](blocks=2))
    calib = calibration(model, samples=48, batch=16)
    names = everything(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    last = names[-1]
    batches, reads = counting(calib.batches, size=5)
    runner = SegmentRunner(batches, ["CPUExecutionProvider"], 0, str(tmp_path))
    list(runner.run(model, [names[2]], keep_before=convs[-1]))
    assert runner.cut > 0 and len(runner.cache) == 12  # 3 batches of 16 in slices of 5
    assert all(isinstance(v, np.memmap) and not v.flags.writeable for _, kept in runner.cache for v in kept.values())
    assert list(tmp_path.iterdir()) == []
    resumed = list(runner.run(model, [last]))
    assert len(reads) == 1 and runner.cache == []
    fresh = list(SegmentRunner(counting(calib.batches, size=5)[0], ["CPUExecutionProvider"], 1 << 30).run(
        model, [last]))
    assert [p for p, _ in resumed] == [p for p, _ in fresh]
    for (_, a), (_, b) in zip(resumed, fresh):
        np.testing.assert_allclose(a[last], b[last], rtol=1e-5, atol=1e-6)


def test_a_spill_folder_that_refuses_files_means_runs_from_the_input(tmp_path):
    model, _ = normalize(FACTORIES["conv_chain"]())
    calib = calibration(model, samples=32, batch=16)
    names = everything(model)
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    batches, reads = counting(calib.batches)
    runner = SegmentRunner(batches, ["CPUExecutionProvider"], 0, str(tmp_path / "missing"))
    list(runner.run(model, [names[-1]], keep_before=convs[-1]))
    assert runner.cut == 0 and runner.cache == []
    list(runner.run(model, [names[-1]]))
    assert len(reads) == 2


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_cuts_run_variants_from_their_cut_and_forget_what_a_change_invalidates(budget):
    from onnxprune import analyze
    from onnxprune.analysis.consumers import touched_nodes
    from onnxprune.widths.variants import Cuts
    from onnxprune.passes.surgery import prune_channels

    model, _ = normalize(FACTORIES["basic_block_net"](blocks=2))
    analysis = analyze(model)
    feeds = random_feeds(model, batch=5, seed=4)
    output = model.graph.output[0].name
    at = {n.name: i for i, n in enumerate(model.graph.node)}
    groups = [g.id for g in analysis.groups if g.prunable]
    cuts = Cuts(model, feeds, ["CPUExecutionProvider"], budget)
    keep: dict = {}
    for gid in groups:  # prune one group after the other, each variant run from its cut only
        cut = min(at[n] for n in touched_nodes(analysis, gid))
        variant = prune_channels(model, analysis, {**keep, gid: np.arange(analysis.groups[gid].channels // 2)})
        got = cuts.run(variant, cut, [output])[0]
        np.testing.assert_allclose(got, run(variant, feeds)[0], rtol=1e-5, atol=1e-5)
        keep[gid] = np.arange(analysis.groups[gid].channels // 2)
        cuts.update(variant, cut)
        assert all(cuts.producer.get(n, -1) < cut for n in cuts.kept.values)


def test_segments_take_shape_arithmetic_across_the_cut():
    """RetinaFace computes Resize sizes at run time (Shape -> Concat, int64, no batch dim):
    a cut across them must feed them with their own type and fixed shape."""
    from pathlib import Path

    model, _ = normalize(onnx.load(str(Path(__file__).parent / "data" / "real" / "retinaface_mnet025.onnx")))
    feeds = {model.graph.input[0].name: np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    full = probe(model, everything(model), feeds)
    outputs = [o.name for o in model.graph.output]
    positions = [p for p in range(1, len(model.graph.node))
                 if any(full[n].dtype != np.float32 for n in live_tensors(model, p))]
    assert positions, "the model should have int64 tensors live across some cut"
    for position in positions[::max(1, len(positions) // 4)]:
        segment = probe_model(model, outputs, {n: full[n] for n in live_tensors(model, position)})
        got = run(segment, {i.name: full[i.name] for i in segment.graph.input})
        for name_, value in zip(outputs, got):
            np.testing.assert_allclose(value, full[name_], rtol=1e-6, atol=1e-6)


def test_a_run_takes_as_many_samples_as_its_largest_activation_allows():
    """samples_per_run: the budget over the largest activation per sample (4 bytes a value), weights
    left out (a Gemm's weight is larger than any activation here, as ResNet-50's classifier is);
    a model that fixes its batch dim runs whole batches (0), since no slice could feed it."""
    model, _ = normalize(FACTORIES["flatten_gemm_net"]())
    shapes = infer_shapes(model)
    produced = {o for node in model.graph.node for o in node.output}
    largest = max(int(np.prod(shapes[n])) for n in produced)
    weight = max(int(np.prod(i.dims)) for i in model.graph.initializer)
    assert weight > largest
    assert samples_per_run(model, shapes, 40 * 4 * largest) == 40
    assert samples_per_run(model, shapes, 1) == 1
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    assert samples_per_run(fixed, infer_shapes(fixed), 40 * 4 * largest) == 0


def test_spilled_tensors_keep_their_shapes_and_small_ones_stay_in_memory(tmp_path, monkeypatch):
    """A 0-d tensor (a computed size) would map back 1-D: it stays in memory, as does every tensor
    under SPILL_BYTES; the others come back as read-only maps with their shape, dtype and values."""
    from onnxprune.calibration import cache

    big = np.arange(cache.SPILL_BYTES, dtype=np.float32).reshape(4, -1)
    tensors = {"scalar": np.array(7, np.int64), "shape": np.array([1, 64, 80, 80], np.int64), "big": big,
               "empty": np.zeros((0, 3), np.float32)}
    got = cache._spilled(tensors, str(tmp_path))
    assert {n: (v.shape, v.dtype) for n, v in got.items()} == {n: (v.shape, v.dtype) for n, v in tensors.items()}
    assert [n for n, v in got.items() if isinstance(v, np.memmap)] == ["big"]
    for name, value in tensors.items():
        np.testing.assert_array_equal(got[name], value)
    monkeypatch.setattr(cache, "SPILL_BYTES", 1)
    got = cache._spilled(tensors, str(tmp_path))
    assert [n for n, v in got.items() if isinstance(v, np.memmap)] == ["shape", "big"]
    assert got["scalar"].shape == () and got["shape"].shape == (4,)
    assert list(tmp_path.iterdir()) == []
