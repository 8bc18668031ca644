"""Models over protobuf's 2 GiB: sessions and the whole CLI, with the limits lowered."""

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from builders import FACTORIES, random_feeds
from click.testing import CliRunner

from onnxprune import OnnxPruneError
from onnxprune.graph import io, runtime
from onnxprune.cli import main


@pytest.fixture
def tiny_limits(monkeypatch):
    """Every model counts as over the limit, and every initializer as large."""
    monkeypatch.setattr(io, "EXTERNAL_DATA_BYTES", 0)
    monkeypatch.setattr(runtime, "OUTSIDE_BYTES", 0)


def outputs(session, feeds):
    return session.run(None, feeds)


@pytest.mark.parametrize("name", ["basic_block_net", "flatten_gemm_net"])
def test_a_large_model_session_computes_the_same_and_leaves_the_model_as_it_was(name, tiny_limits):
    model = FACTORIES[name]()
    before = model.SerializeToString()
    plain = ort.InferenceSession(before, providers=["CPUExecutionProvider"])
    large = runtime.session(model)
    assert len(large.onnxprune_weights) == len(model.graph.initializer)  # every one went outside
    assert model.SerializeToString() == before
    feeds = random_feeds(model)
    for a, b in zip(outputs(plain, feeds), outputs(large, feeds)):
        np.testing.assert_array_equal(a, b)


def test_reap_prunes_a_large_model_from_the_cli(tmp_path, tiny_limits, monkeypatch):
    """Calibration, validation and saving all take the large-model paths: the output has its
    weights in OUT.data and computes what the same prune of a small model computes."""
    model = FACTORIES["basic_block_net"]()
    source = tmp_path / "m.onnx"
    onnx.save(model, source)
    before = source.read_bytes()
    feeds = random_feeds(model, batch=32)
    np.savez(tmp_path / "calib.npz", **feeds)
    args = ["--ratio", "0.5", "--method", "reap", "--calib", str(tmp_path / "calib.npz"), "-q"]
    weights_given = []  # per session: initializers whose values came inside the serialised model
    real = ort.InferenceSession

    def spy(serialised, options=None, providers=None, **kw):
        proto = onnx.load_from_string(serialised)
        weights_given.append(sum(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer))
        return real(serialised, options, providers=providers, **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    result = CliRunner().invoke(main, ["prune", str(source), "-o", str(tmp_path / "large.onnx"), *args])
    assert result.exit_code == 0, result.output
    assert len(weights_given) >= 3 and not any(weights_given)  # calibration, reconstruction, validation
    assert (tmp_path / "large.onnx.data").is_file() and source.read_bytes() == before
    assert (tmp_path / "large.onnx.data").stat().st_mode == (tmp_path / "large.onnx").stat().st_mode
    monkeypatch.undo()  # the real limits
    result = CliRunner().invoke(main, ["prune", str(source), "-o", str(tmp_path / "small.onnx"), *args])
    assert result.exit_code == 0, result.output
    large, small = (onnx.load(str(tmp_path / f"{n}.onnx")) for n in ("large", "small"))
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]) for m in (large, small)]
    np.testing.assert_array_equal(*(outputs(s, feeds)[0] for s in run))


@pytest.mark.parametrize("large", [False, True])
def test_a_failure_in_the_middle_of_a_save_leaves_the_old_output_and_nothing_else(tmp_path, monkeypatch, large):
    """The disk fills up while the model is written: the error says so, the file that was at the
    output path (and its weights) is untouched, and no partial or temporary file is left."""
    if large:
        monkeypatch.setattr(io, "EXTERNAL_DATA_BYTES", 0)
    old = {"out.onnx": b"the previous model", "out.onnx.data": b"its weights"}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    real = Path.write_bytes

    def disk_full(self, data):
        real(self, data[: len(data) // 2])  # half written
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", disk_full)
    with pytest.raises(OnnxPruneError, match="out.onnx: cannot write \\(No space left on device\\)"):
        io.save(FACTORIES["conv_chain"](), tmp_path / "out.onnx")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old


@pytest.mark.parametrize("large", [False, True])
def test_save_then_load_gives_the_same_model(tmp_path, monkeypatch, large):
    if large:
        monkeypatch.setattr(io, "EXTERNAL_DATA_BYTES", 0)
    model = FACTORIES["basic_block_net"]()
    io.save(FACTORIES["basic_block_net"](), tmp_path / "m.onnx")  # a copy: a large save moves its weights out
    assert (tmp_path / "m.onnx.data").exists() == large
    again = io.load(tmp_path / "m.onnx")
    feeds = random_feeds(model)
    np.testing.assert_array_equal(*(outputs(runtime.session(m), feeds)[0] for m in (model, again)))


def test_loading_a_large_model_in_memory_checks_its_opset_but_not_the_protobuf(monkeypatch):
    """Over 2 GB the checker cannot take the ModelProto: a path is checked by file, an in-memory
    model gets the opset check only."""
    model = FACTORIES["conv_chain"]()
    checked = []
    monkeypatch.setattr(onnx.checker, "check_model", lambda model, *a, **kw: checked.append(model))
    assert io.load(model) is model and len(checked) == 1 and checked[0] is model  # small: the proto
    monkeypatch.setattr(io, "EXTERNAL_DATA_BYTES", 0)
    assert io.load(model) is model and len(checked) == 1  # large, in memory: not checked
    model.opset_import[0].version = 99
    with pytest.raises(OnnxPruneError, match="unsupported opset 99"):
        io.load(model)


@pytest.mark.parametrize("name", ["basic_block_net", "flatten_gemm_net"])
def test_saving_a_large_model_leaves_the_model_as_it_was(name, tmp_path, tiny_limits):
    """onnx moves the weights out of a model it writes with external data; ``save`` gives them
    back, so the caller's model still runs from memory after it is saved."""
    model = FACTORIES[name]()
    before = model.SerializeToString()
    io.save(model, tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx.data").exists()
    assert model.SerializeToString() == before
    written = {t.name: onnx.numpy_helper.to_array(t) for t in io.load(tmp_path / "m.onnx").graph.initializer}
    assert written.keys() == {t.name for t in model.graph.initializer}
    for t in model.graph.initializer:
        np.testing.assert_array_equal(written[t.name], onnx.numpy_helper.to_array(t))


def test_loading_a_large_model_file_checks_the_file(tmp_path, monkeypatch):
    model = FACTORIES["conv_chain"]()
    checked = []
    monkeypatch.setattr(onnx.checker, "check_model", lambda model, *a, **kw: checked.append(model))
    monkeypatch.setattr(io, "EXTERNAL_DATA_BYTES", 0)
    io.save(model, tmp_path / "m.onnx")
    io.load(tmp_path / "m.onnx")
    assert checked == [str(tmp_path / "m.onnx")]


def test_a_profiled_session_records_each_kernel_it_runs(tmp_path):
    """``session(profile=...)``: onnxruntime's profiler on, its file under the prefix, with one
    kernel event per node run (the options otherwise as for timing: all optimisations)."""
    model = FACTORIES["conv_chain"]()
    profiled = runtime.session(model, threads=1, profile=str(tmp_path / "p"))
    profiled.run(None, random_feeds(model))
    path = Path(profiled.end_profiling())
    assert path.parent == tmp_path and path.name.startswith("p")
    kernels = [e for e in json.loads(path.read_text()) if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    assert kernels and all(e["dur"] >= 0 for e in kernels)
    assert not runtime.session(model).get_session_options().enable_profiling  # off unless asked


def test_one_run_sessions_and_statistics_free_their_memory_and_the_sequential_pass_keeps_the_arena(monkeypatch):
    """The statistics' sessions (every consumer's tensors at once), PRO's candidates and the
    validation (sessions that run once) go without onnxruntime's CPU memory arena (each run's
    tensors are freed as it ends); the sequential pass's keep it: without it the sequential pass of
    ResNet-50 peaked higher (docs/PERFORMANCE.md)."""
    from onnxprune import analyze, normalize
    from onnxprune.analysis.consumers import reconstructable
    from onnxprune.calibration import cache, statistics
    from onnxprune.graph import validate
    from onnxprune.widths import variants

    made = []
    real = runtime.session

    def recording(*args, **kw):
        made.append(real(*args, **kw).get_session_options().enable_cpu_mem_arena)
        return real(*args, **kw)

    model = FACTORIES["conv_chain"]()
    assert runtime.session(model).get_session_options().enable_cpu_mem_arena
    for module in (statistics, cache, variants, validate):
        monkeypatch.setattr(module, "session", recording)
    normalized, _ = normalize(model)
    feeds = random_feeds(normalized, batch=4)
    consumers = [c for cs in reconstructable(analyze(normalized, {}))[0].values() for c in cs]
    statistics.collect(normalized, normalized, consumers, lambda: [feeds])
    list(cache.SegmentRunner(lambda: statistics.slices([feeds]), list(runtime.CPU), 1 << 20).run(
        normalized, [consumers[0].input]))
    assert made == [False, True]
    output = normalized.graph.output[0].name
    variants.Variants(normalized, consumers, feeds, [output], list(runtime.CPU), 1 << 20).run({})
    variants.Cuts(normalized, feeds, list(runtime.CPU), 1 << 20).run(normalized, 2, [output])
    validate.validate(normalized, feeds=feeds)
    assert len(made) > 4 and made[2:] == [False] * (len(made) - 2)
