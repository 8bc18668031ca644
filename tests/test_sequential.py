"""Data methods end to end: reap, thinet and nu prune and reconstruct real ONNX graphs."""

import json

import numpy as np
import onnx
import pytest
from builders import FACTORIES, NetBuilder, random_feeds, run
from checks import assert_refused
from click.testing import CliRunner
from onnx import numpy_helper

from onnxprune import OnnxPruneError, PruneConfig, analyze, normalize, prune
from onnxprune import methods
from onnxprune.analysis.consumers import reconstructable
from onnxprune.calibration.statistics import HOLDOUT_EVERY, Calibration, StatsMode, collect
from onnxprune.cli import main
from onnxprune.config import Method
from onnxprune.graph.probe import probe_model
from onnxprune.graph.runtime import run_all, session
from onnxprune.methods.least_squares import SELECTION_ALPHA
from onnxprune.methods import sequential
from onnxprune.methods.sequential import prune_sequential
from onnxprune.methods.weights import theta_of
from oracles import reap_order_naive

DATA_METHODS = [Method.REAP, Method.THINET, Method.NU]


def calibration(model, samples=64, batch=16, seed=1, **kw):
    feeds = random_feeds(model, batch=samples, seed=seed)
    batches = lambda: ({k: v[i:i + batch] for k, v in feeds.items()} for i in range(0, samples, batch))  # noqa: E731
    return Calibration(batches, samples, **kw)


def rel_error(a, b, feeds):
    x, y = run(a, feeds)[0], run(b, feeds)[0]
    return np.linalg.norm(y - x) / np.linalg.norm(x)


def with_redundant_channels(kind):
    """A conv whose output channels 1 and 3 repeat channel 0 ('duplicate': exactly; 'combination':
    channel 3 = channel 0 + channel 2 before a linear consumer)."""
    b = NetBuilder(3, seed=3)
    x = b.conv("input", 8)
    h = b.conv(x, 8) if kind == "combination" else b.relu(x)
    model = b.model(b.gemm(b.flatten(b.gap(b.relu(b.conv(h, 6)))), 4))
    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits["conv0.weight"]).copy()
    bias = numpy_helper.to_array(inits["conv0.bias"]).copy()
    if kind == "duplicate":
        w[1], bias[1] = w[0], bias[0]
        w[3], bias[3] = w[0], bias[0]
    else:
        w[3], bias[3] = w[0] + w[2], bias[0] + bias[2]
    inits["conv0.weight"].CopyFrom(numpy_helper.from_array(w, "conv0.weight"))
    inits["conv0.bias"].CopyFrom(numpy_helper.from_array(bias, "conv0.bias"))
    return model


@pytest.mark.parametrize("method, kind", [(Method.REAP, "duplicate"), (Method.NU, "duplicate"),
                                          (Method.REAP, "combination")])
def test_redundant_channels_go_first_with_no_error(method, kind):
    model = with_redundant_channels(kind)
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    removed = 2 if kind == "duplicate" else 1
    pruned, keep, _ = prune_sequential(normalized, analysis, {0: 8 - removed}, methods.get(method.value),
                                       calibration(model))
    assert len(keep[0]) == 8 - removed
    assert rel_error(model, pruned, random_feeds(model, batch=8, seed=9)) < 1e-4


@pytest.mark.parametrize("name", ["conv_chain", "basic_block_net", "flatten_gemm_net", "convtranspose_net"])
def test_reap_keeps_what_brute_force_reap_keeps(name):
    """The first group is chosen from the original model's statistics (fit + holdout): REAP end to
    end keeps exactly the channels that REAP by brute force (a fresh ridge solve for every
    candidate at every step) keeps, whatever its consumers (3x3 convs, 1x1 projections, a Gemm,
    a ConvTranspose)."""
    model = FACTORIES[name]()
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    plans, _ = reconstructable(analysis)
    g = min(plans)
    n = analysis.groups[g].channels
    k = n // 2 - 1
    calib = calibration(model)
    _, keep, _ = prune_sequential(normalized, analysis, {g: k}, methods.get("reap"), calib)
    fit, holdout = collect(normalized, normalized, plans[g], calib.batches, holdout_every=HOLDOUT_EVERY,
                           rows=calib.sampling)
    nodes = {node.name: node for node in analysis.graph.nodes}
    problems = [(fit[c.node] + holdout[c.node], c.taps, theta_of(nodes[c.node], c)) for c in plans[g]]
    naive = reap_order_naive(problems, n, SELECTION_ALPHA, target=k)
    np.testing.assert_array_equal(keep[g], np.setdiff1d(np.arange(n), naive.order))


@pytest.mark.parametrize("name", ["conv_chain", "basic_block_net", "mobilenetv2_block_net", "se_net",
                                  "flatten_gemm_net", "matmul_head_net", "bottleneck_net"])
@pytest.mark.parametrize("method", DATA_METHODS)
def test_data_methods_beat_l1_and_give_valid_models(name, method):
    model = FACTORIES[name]()
    cal = calibration(model)
    feeds = random_feeds(model, batch=32, seed=7)
    l1 = prune(model, PruneConfig(method=Method.L1, ratio=0.25, round_to=1))
    data = prune(model, PruneConfig(method=method, ratio=0.25, round_to=1), cal)
    onnx.checker.check_model(data.model, full_check=True)
    assert data.macs_after < data.macs_before
    assert rel_error(model, data.model, feeds) < rel_error(model, l1.model, feeds)
    assert data.layers and all(n.rows > 0 and n.columns > 0 for n in data.layers)


def test_keep_flops_with_reap_meets_the_target():
    model = FACTORIES["basic_block_net"]()
    result = prune(model, PruneConfig(method=Method.REAP, keep_flops=0.5, round_to=1), calibration(model))
    assert result.macs_after <= 0.5 * result.macs_before


@pytest.mark.parametrize("name", ["conv_chain", "densenet_like", "resnext_like"])
def test_graph_statistics_give_the_same_pruning_as_host_statistics(name):
    model = FACTORIES[name]()
    host = prune(model, PruneConfig(method=Method.REAP, ratio=0.5, round_to=1), calibration(model))
    graph = prune(model, PruneConfig(method=Method.REAP, ratio=0.5, round_to=1),
                  calibration(model, mode=StatsMode.GRAPH))
    feeds = random_feeds(model, batch=4, seed=2)
    np.testing.assert_allclose(run(graph.model, feeds)[0], run(host.model, feeds)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["basic_block_net", "c2f_like", "resnext_like"])
def test_runs_in_slices_give_the_pruning_of_whole_batches(name, monkeypatch):
    """The sequential pass runs its batches in slices (statistics.samples_per_run): slices of 3
    samples read the rows that whole batches of 16 read (sampled, 2 per column) and give the same model."""
    model = FACTORIES[name]()
    config = PruneConfig(method=Method.REAP, ratio=0.5, round_to=1)
    calib = calibration(model, rows_per_column=2)
    whole = prune(model, config, calib)
    sizes, real = [], sequential.slices

    def recorded(batches, size):
        for part, feeds in real(batches, size):
            sizes.append(len(next(iter(feeds.values()))))
            yield part, feeds
    monkeypatch.setattr(sequential, "samples_per_run", lambda *_: 3)
    monkeypatch.setattr(sequential, "slices", recorded)
    sliced = prune(model, config, calib)
    assert max(sizes) == 3 and sum(sizes) % 64 == 0
    assert [c.channels_after for c in sliced.groups] == [c.channels_after for c in whole.groups]
    feeds = random_feeds(model, batch=4, seed=2)
    np.testing.assert_allclose(run(sliced.model, feeds)[0], run(whole.model, feeds)[0], rtol=1e-4, atol=1e-5)


def test_each_group_frees_the_graphs_its_model_was_made_through(monkeypatch):
    """Writing a group's weights and cutting its channels go through graphsurgeon graphs, whose
    nodes and tensors point at each other (cycles, holding the weights): the pass collects them
    after every group, with the collector off as a long run's old generation effectively is."""
    import gc
    import weakref

    from onnxprune.graph import convert
    from onnxprune.methods import weights
    from onnxprune.passes import surgery

    made = []
    real = convert.to_graph

    def recorded(model):
        graph = real(model)
        made.append(weakref.ref(graph))
        return graph
    monkeypatch.setattr(weights, "to_graph", recorded)
    monkeypatch.setattr(surgery, "to_graph", recorded)
    model = FACTORIES["basic_block_net"]()
    normalized, _ = normalize(model)
    analysis = analyze(normalized)
    plans, _ = reconstructable(analysis)
    counts = {g.id: g.channels // 2 for g in analysis.groups if g.prunable and g.id in plans}
    gc.collect()
    gc.disable()
    try:
        prune_sequential(normalized, analysis, counts, methods.get("reap"), calibration(model))
        assert len(made) >= 2 * len(counts) and all(ref() is None for ref in made)
    finally:
        gc.enable()


def test_groups_that_cannot_be_reconstructed_are_left_alone_and_reported():
    b = NetBuilder(3, seed=0)  # a MatMul without a bias Add reads the second group
    x = b.reshape_flatten(b.gap(b.conv_bn_act(b.conv_bn_act("input", 8), 8)))
    weight = b._const("head.weight", b.rng.normal(0, 0.5, (8, 10)))
    model = b.model(b._emit("MatMul", "head", [x, weight], 10, None))
    normalized, _ = normalize(model)
    plans, reasons = reconstructable(analyze(normalized))
    assert reasons and all("has no bias Add after it" in why for why in reasons.values())
    result = prune(model, PruneConfig(method=Method.REAP, ratio=0.5, round_to=1), calibration(model))
    for change in result.groups:
        if change.group.id in reasons:
            assert change.channels_after == change.group.channels and change.not_reconstructable
    assert "has no bias Add after it" in json.dumps(result.to_json())


@pytest.mark.parametrize("name", ["densenet_like", "inception_like", "c2f_like", "c2f_slice", "sppf_like"])
@pytest.mark.parametrize("method", DATA_METHODS)
@pytest.mark.parametrize("sequential", [True, False])
def test_consumers_of_concatenated_groups_are_reconstructed(name, method, sequential):
    """Consumers reading a Concat of several groups: every group is pruned, the other groups'
    channels stay while one is and are refitted with it. The last group's consumers are fitted
    on the final model's inputs, so the report's calibration error of each must be the error of
    the pruned model's layer on the calibration data: the columns line up. C2f's Split (or
    Slices) gives consumers reading a part of a group and its last conv reading the split-off
    half several times (through the residual Adds); SPPF's last conv reads every channel of
    its group four times (the pooled copies)."""
    model = FACTORIES["c2f_like"](use_slice=True) if name == "c2f_slice" else FACTORIES[name]()
    analysis = analyze(normalize(model)[0])
    plans, reasons = reconstructable(analysis)
    assert not reasons and any(len(analysis.layouts[c.input].atoms) > analysis.groups[g].channels
                               for g, cs in plans.items() for c in cs)
    calib = calibration(model, sequential=sequential)
    result = prune(model, PruneConfig(method=method, ratio=0.5, round_to=1), calib)
    assert all(c.channels_after < c.group.channels for c in result.groups if c.group.prunable)
    if not sequential:
        return
    feeds = {k: np.concatenate([b[k] for b in calib.batches()]) for k in next(calib.batches())}
    last = [n for n in result.layers if n.group == result.layers[-1].group]
    checked = 0
    for note in last:
        y, y_hat = (_layer_output(m, note.node, feeds) for m in (model, result.model))
        if y.shape != y_hat.shape:
            continue  # its outputs were pruned: the columns kept are not known here
        assert np.sum((y - y_hat) ** 2) / np.sum(y ** 2) == pytest.approx(note.rel_error, rel=1e-3, abs=1e-7)
        checked += 1
    assert checked


def _layer_output(model, node_name, feeds):
    normalized, _ = normalize(model)
    node = next(n for n in normalized.graph.node if n.name == node_name)
    return run_all(session(probe_model(normalized, [node.output[0]]), ["CPUExecutionProvider"]),
                     feeds)[node.output[0]]


def test_data_method_without_calibration_is_an_error():
    with pytest.raises(OnnxPruneError, match="needs calibration data"):
        prune(FACTORIES["conv_chain"](), PruneConfig(method=Method.REAP, ratio=0.5))


def test_cli_reap_with_npz_calibration(tmp_path):
    model = FACTORIES["basic_block_net"]()
    path, calib, out = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "out.onnx"
    onnx.save(model, path)
    np.savez(calib, input=random_feeds(model, batch=32, seed=4)["input"])
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--method", "reap", "--calib", str(calib),
                                       "--keep-flops", "0.6", "--round-to", "1", "--batch-size", "8", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["method"] == "reap" and data["macs_after"] <= 0.6 * data["macs_before"]
    assert data["reconstruction"] and {"node", "rows", "columns", "alpha", "rel_error"} <= set(data["reconstruction"][0])
    onnx.checker.check_model(onnx.load(out), full_check=True)


@pytest.mark.parametrize("args, message", [
    (["--method", "reap", "--ratio", "0.5"], "needs calibration data"),
    (["--method", "l1", "--ratio", "0.5", "--calib", "CALIB"], "--calib is for the data methods"),
    (["--method", "reap", "--ratio", "0.5", "--calib", "BAD"], "does not match the model input"),
    (["--method", "reap", "--ratio", "0.5", "--calib", "CALIB", "--batch-size", "0"], "--batch-size"),
    (["--method", "reap", "--ratio", "0.5", "--calib", "CALIB", "--cache-mb", "-1"], "--cache-mb"),
])
def test_cli_calibration_errors(tmp_path, args, message):
    model = FACTORIES["conv_chain"]()
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "calib.npz", input=np.zeros((4, 3, 8, 8), np.float32))
    np.savez(tmp_path / "bad.npz", input=np.zeros((4, 3, 9, 9), np.float32))
    args = [str(tmp_path / "calib.npz") if a == "CALIB" else str(tmp_path / "bad.npz") if a == "BAD" else a for a in args]
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), *args])
    assert_refused(result, message)
    assert not out.exists()


@pytest.mark.parametrize("name", ["c2f_like", "c2f_slice", "sppf_like"])
@pytest.mark.parametrize("method", DATA_METHODS)
def test_split_and_repeated_reads_meet_the_budget_and_beat_l1(name, method):
    """Groups read in parts keep, part by part, the counts the budget was fitted with, so the MAC
    target holds; the reconstructed model is closer to the original than l1's."""
    model = (FACTORIES["c2f_like"](channels=16, use_slice=True) if name == "c2f_slice"
             else FACTORIES[name](channels=16))
    calib = calibration(model, samples=128)
    result = prune(model, PruneConfig(method=method, keep_flops=0.5, round_to=1), calib)
    assert result.macs_after <= 0.5 * result.macs_before
    assert all(c.channels_after < c.group.channels for c in result.groups if c.group.prunable)
    l1 = prune(model, PruneConfig(method=Method.L1, keep_flops=0.5, round_to=1))
    assert l1.macs_after == result.macs_after  # the same counts per part
    feeds = random_feeds(model, batch=64, seed=7)
    assert rel_error(model, result.model, feeds) < rel_error(model, l1.model, feeds)
