"""The command line: inspect, prune, their JSON, and bad input."""

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from builders import FACTORIES, random_feeds, unprunable_net
from checks import assert_refused, assert_same_outputs
from click.testing import CliRunner

from onnxprune.calibration.statistics import StatsMode
from onnxprune.cli import main


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(FACTORIES["basic_block_net"](), path)
    return path


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inspect_table(model_path):
    result = invoke("inspect", model_path)
    assert result.exit_code == 0
    assert "prunable" in result.output and "frozen" in result.output
    assert "reaches graph output" in result.output and "MACs" in result.output


def test_inspect_json(model_path):
    result = invoke("inspect", model_path, "--json")
    data = json.loads(result.stdout)
    assert set(data) == {"macs", "params", "groups"}
    assert data["macs"] > 0 and data["params"] > 0
    for g in data["groups"]:
        assert {"id", "channels", "prunable", "reason", "producers", "consumers"} <= set(g)
        assert g["prunable"] == (g["reason"] is None)


def test_prune_json_and_report(model_path, tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = invoke("prune", model_path, "-o", out, "--method", "l1", "--keep-flops", "0.5",
                    "--round-to", "1", "--report", report, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"macs_before", "macs_after", "params_before", "params_after", "groups"} <= set(data)
    assert data["macs_after"] <= 0.5 * data["macs_before"]
    assert all({"id", "channels_before", "channels_after"} <= set(g) for g in data["groups"])
    assert json.loads(report.read_text()) == data
    onnx.checker.check_model(onnx.load(out), full_check=True)


def test_prune_human_summary(model_path, tmp_path):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5")
    assert result.exit_code == 0
    assert "MACs" in result.output and "round-to 8" in result.output and "frozen" in result.output


def test_input_shape_fixes_dynamic_dims(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(FACTORIES["conv_chain"](), path)
    small = json.loads(invoke("inspect", path, "--json").stdout)["macs"]
    big = json.loads(invoke("inspect", path, "--json", "--input-shape", "input=4,3,8,8").stdout)["macs"]
    assert big == 4 * small


def test_python_dash_m(model_path):
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "inspect", str(model_path), "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout) == json.loads(invoke("inspect", model_path, "--json").stdout)
    proc = subprocess.run([sys.executable, "-m", "onnxprune", "inspect", str(model_path.parent / "missing.onnx")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def _truncated(path, tmp_path):
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return bad


def _opset(version):
    def make(path, tmp_path):
        model = onnx.load(path)
        model.opset_import[0].version = version
        bad = tmp_path / f"opset{version}.onnx"
        bad.write_bytes(model.SerializeToString())
        return bad
    return make


def _text(path, tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is not a model\n")
    return bad


def _missing(path, tmp_path):
    return tmp_path / "missing.onnx"


def _folder(path, tmp_path):
    return tmp_path


@pytest.mark.parametrize(
    "make_input, message",
    [(_missing, "no such file"), (_folder, "not a file"), (_text, "not a readable ONNX model"),
     (_truncated, "ONNX model"), (_opset(99), "unsupported opset 99"), (_opset(3), "unsupported opset 3")],
)
@pytest.mark.parametrize("command", ["inspect", "prune"])
def test_bad_models_are_refused_cleanly(model_path, tmp_path, make_input, message, command):
    bad = make_input(model_path, tmp_path)
    before = digest(bad) if bad.is_file() else None
    out = tmp_path / "out.onnx"
    args = ["inspect", bad] if command == "inspect" else ["prune", bad, "-o", out, "--ratio", "0.5"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert_refused(result, message)
    assert not out.exists()
    if before is not None:
        assert digest(bad) == before


@pytest.mark.parametrize(
    "options, message",
    [(["--ratio", "1.5"], "--ratio"), (["--ratio", "-0.5"], "--ratio"), (["--keep-flops", "0"], "--keep-flops"),
     (["--keep-flops", "2"], "--keep-flops"), ([], "exactly one"), (["--ratio", "0.5", "--keep-flops", "0.5"], "exactly one"),
     (["--ratio", "0.5", "--round-to", "0"], "--round-to"), (["--keep-flops", "0.001"], "unreachable"),
     (["--ratio", "0.5", "--input-shape", "nope=1,2"], "no model input named nope"),
     (["--ratio", "0.5", "--input-shape", "input=1,3"], "rank 2 given"),
     (["--ratio", "0.5", "--input-shape", "garbage"], "expected NAME=d0,d1"),
     (["--ratio", "0.5", "--exclude", "no_such_layer*"], "matches no node")],
)
def test_impossible_options_are_refused_cleanly(model_path, tmp_path, options, message):
    before = digest(model_path)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(out), *options])
    assert_refused(result, message)
    assert not out.exists() and digest(model_path) == before


def test_exclude_is_reported(model_path, tmp_path):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5", "--exclude", "*conv*")
    assert_refused(result, "excluded by --exclude")  # every group excluded
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5", "--exclude", "conv0")
    assert result.exit_code == 0, result.output
    assert "excluded (left as they are)" in result.output and "--exclude 'conv0'" in result.output


def test_output_equal_to_input_is_refused(model_path):
    before = digest(model_path)
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(model_path), "--ratio", "0.5"])
    assert_refused(result, "is the input model")
    assert digest(model_path) == before


@pytest.mark.parametrize("where", ["missing-folder/out.onnx", "."])
def test_unwritable_output_is_refused(model_path, tmp_path, where):
    out = tmp_path / where
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(out), "--ratio", "0.5"])
    assert_refused(result, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.onnx"]


def test_unsupported_model_leaves_no_output(tmp_path):
    path = tmp_path / "shuffle.onnx"
    onnx.save(unprunable_net(), path)
    out = tmp_path / "out.onnx"
    result = CliRunner().invoke(main, ["prune", str(path), "-o", str(out), "--ratio", "0.5"])
    assert_refused(result, "no prunable channel group")
    assert not out.exists()


@pytest.fixture
def calib_path(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, input=np.random.default_rng(0).standard_normal((32, 3, 8, 8)).astype(np.float32))
    return path


@pytest.mark.parametrize("args, method, pro", [
    (["--keep-flops", "0.6"], "reap", True),  # data and a cost target: reap with PRO
    (["--keep-params", "0.6"], "reap", True),
    (["--keep-flops", "0.6", "--no-pro"], "reap", False),
    (["--ratio", "0.5"], "reap", False),  # no cost target: nothing for PRO to aim at
    (["--keep-flops", "0.6", "--method", "thinet"], "thinet", True),
    (["--keep-flops", "0.6", "--method", "l1"], "l1", True),  # l1 with data: its widths from PRO
])
def test_defaults_with_calibration_data(model_path, calib_path, tmp_path, args, method, pro):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_path, "--round-to", "1",
                    "--pro-samples", "8", "--json", *args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["method"] == method and bool(report["pro"]) == pro
    assert "warning" not in result.stderr


def test_calib_for_l1_without_pro_is_refused(model_path, calib_path, tmp_path):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--calib", calib_path, "--method", "l1",
                    "--keep-flops", "0.6", "--no-pro")
    assert result.exit_code == 2 and "--calib is for the data methods" in result.output


@pytest.mark.parametrize("method", [[], ["--method", "l1"]])
def test_l1_without_data_warns_that_it_loses_accuracy(model_path, tmp_path, method):
    result = invoke("prune", model_path, "-o", tmp_path / "out.onnx", "--ratio", "0.5", "--json", *method)
    assert result.exit_code == 0
    assert json.loads(result.stdout)["method"] == "l1"
    assert "warning" in result.stderr and "loses accuracy" in result.stderr


# -- srn and prune --srn ---------------------------------------------------------------------


def test_srn_command_writes_an_equivalent_serial_model(model_path, tmp_path):
    out = tmp_path / "serial.onnx"
    result = invoke("srn", model_path, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    original = json.loads(invoke("inspect", model_path, "--json").stdout)
    serial = json.loads(invoke("inspect", out, "--json").stdout)
    assert data["blocks_serialized"] == 4 and data["blocks_skipped"] == []  # two stages of two blocks
    assert data["macs_before"] == original["macs"] and data["macs_after"] == serial["macs"] > original["macs"]
    feeds = random_feeds(onnx.load(model_path), batch=4)
    assert_same_outputs(onnx.load(model_path), onnx.load(out), feeds)
    summary = invoke("srn", model_path, "-o", tmp_path / "again.onnx").output
    assert "blocks: 4 serialised, 0 left as they are" in summary


@pytest.mark.parametrize("make, message", [
    (lambda tmp, model: (tmp / "missing.onnx", tmp / "o.onnx"), "no such file"),
    (lambda tmp, model: (model, model), "is the input model"),
    (lambda tmp, model: (model, tmp / "no-folder" / "o.onnx"), "does not exist"),
])
def test_srn_refuses_bad_input(model_path, tmp_path, make, message):
    source, out = make(tmp_path, model_path)
    before = digest(model_path)
    result = CliRunner().invoke(main, ["srn", str(source), "-o", str(out)])
    assert_refused(result, message)
    assert digest(model_path) == before and (out == model_path or not out.exists())


def test_prune_srn_keeps_targets_relative_to_the_original(model_path, tmp_path):
    out = tmp_path / "out.onnx"
    result = invoke("prune", model_path, "-o", out, "--srn", "--keep-flops", "0.5", "--round-to", "1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    original = json.loads(invoke("inspect", model_path, "--json").stdout)["macs"]
    assert data["macs_before"] == original == data["srn"]["macs_before"] < data["srn"]["macs_after"]
    assert 0.45 * original <= data["macs_after"] <= 0.5 * original
    assert data["srn"]["blocks_serialized"] == 4
    assert json.loads(invoke("inspect", out, "--json").stdout)["macs"] == data["macs_after"]


# -- devices ---------------------------------------------------------------------------------


@pytest.fixture
def sessions(monkeypatch):
    """The providers every onnxruntime session is asked for (then made on the CPU)."""
    import onnxruntime as ort

    asked, real = [], ort.InferenceSession

    def spy(model, options=None, providers=None, **kw):
        asked.append(tuple(providers or ()))
        return real(model, options, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "InferenceSession", spy)
    return asked


@pytest.mark.parametrize("device, gpu, expected", [
    ("auto", True, ("CUDAExecutionProvider", "CPUExecutionProvider")),
    ("auto", False, ("CPUExecutionProvider",)),
    ("cpu", True, ("CPUExecutionProvider",)),
    ("cuda", True, ("CUDAExecutionProvider", "CPUExecutionProvider")),
])
def test_device_chooses_the_providers(tmp_path, monkeypatch, sessions, device, gpu, expected):
    from onnxprune.graph import runtime

    monkeypatch.setattr(runtime, "cuda_works", lambda: gpu)
    model = FACTORIES["conv_chain"]()
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "calib.npz", input=random_feeds(model, batch=8)["input"])
    result = invoke("prune", path, "-o", tmp_path / "o.onnx", "--method", "reap", "--ratio", "0.5",
                    "--calib", tmp_path / "calib.npz", "--device", device, "-q")
    assert result.exit_code == 0, result.output
    calibration_sessions = [p for p in sessions if p != ("CPUExecutionProvider",)] if gpu and device != "cpu" else sessions
    assert calibration_sessions and all(p == expected for p in calibration_sessions)
    result = invoke("bench", path, "--runs", "1", "--batch", "1", "--device", device, "--json")
    assert result.exit_code == 0 and sessions[-1] == expected


def test_device_cuda_without_a_gpu_is_refused(model_path, tmp_path, monkeypatch):
    from onnxprune.graph import runtime

    monkeypatch.setattr(runtime, "cuda_works", lambda: False)
    np.savez(tmp_path / "calib.npz", input=np.zeros((4, 3, 8, 8), np.float32))
    result = CliRunner().invoke(main, ["prune", str(model_path), "-o", str(tmp_path / "o.onnx"), "--method", "reap",
                                       "--ratio", "0.5", "--calib", str(tmp_path / "calib.npz"), "--device", "cuda"])
    assert_refused(result, "--device cuda: onnxruntime cannot use CUDA here")
    assert not (tmp_path / "o.onnx").exists()


def test_cuda_works_only_when_a_session_really_gets_cuda(monkeypatch):
    """onnxruntime-gpu lists CUDA even without a GPU and then falls back to the CPU: only a
    session that keeps the CUDA provider counts."""
    import onnxruntime as ort

    from onnxprune.graph import runtime

    class Session:
        def __init__(self, kept):
            self.kept = kept

        def get_providers(self):
            return self.kept

    def fails(*a, **kw):
        raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")

    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    cases = [
        (["CPUExecutionProvider"], lambda *a, **kw: Session(listed), False),  # not listed: not asked
        (listed, lambda *a, **kw: Session(["CPUExecutionProvider"]), False),  # listed, fell back
        (listed, fails, False),  # listed, cannot start
        (listed, lambda *a, **kw: Session(listed), True),
    ]
    for available, make, works in cases:
        runtime.cuda_works.cache_clear()
        monkeypatch.setattr(ort, "get_available_providers", lambda: available)
        monkeypatch.setattr(runtime, "session", make)
        assert runtime.cuda_works() is works
        assert runtime.providers(runtime.Device.AUTO) == (listed if works else ["CPUExecutionProvider"])
    runtime.cuda_works.cache_clear()


# -- calibration options reach the library -----------------------------------------------------


def test_calibration_options_reach_the_calibration(model_path, tmp_path, monkeypatch):
    """--calib-limit, --batch-size, --independent, --stats graph, --cache-mb, --no-spill and --calib-rows,
    as the library sees them."""
    from onnxprune import cli

    seen = {}
    real = cli.prune

    def spy(model, config, calibration, progress):
        batches = list(calibration.batches())
        seen.update(samples=calibration.samples, sizes=[len(b["input"]) for b in batches], mode=calibration.mode,
                    sequential=calibration.sequential, cache=calibration.cache_bytes, first=batches[0]["input"],
                    rows=calibration.rows_per_column, spill=calibration.spill)
        return real(model, config, calibration, progress)

    monkeypatch.setattr(cli, "prune", spy)
    images = np.random.default_rng(3).standard_normal((40, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=images)
    base = ["prune", model_path, "-o", tmp_path / "o.onnx", "--method", "reap", "--ratio", "0.5", "--round-to", "1",
            "--calib", tmp_path / "calib.npz", "--json"]
    result = invoke(*base, "--calib-limit", "24", "--batch-size", "10", "--independent", "--stats", "graph",
                    "--cache-mb", "3", "--no-spill", "--calib-rows", "0")
    assert result.exit_code == 0, result.output
    assert seen.pop("sizes") == [10, 10, 4]
    np.testing.assert_array_equal(seen.pop("first"), images[:10])
    assert seen == {"samples": 24, "mode": StatsMode.GRAPH, "sequential": False, "cache": 3 << 20, "rows": 0,
                    "spill": False}
    every = {n["node"]: n["rows"] for n in json.loads(result.stdout)["reconstruction"]}
    assert every["gemm0"] == 24 and all(r in (24, 24 * 64, 24 * 16) for r in every.values())
    result = invoke(*base, "--calib-limit", "24", "--calib-rows", "1")  # the rows read are reported
    drawn = {n["node"]: n["rows"] for n in json.loads(result.stdout)["reconstruction"]}
    assert drawn["gemm0"] == 24 and any(drawn[k] < every[k] for k in every)
    result = invoke(*base)
    assert result.exit_code == 0
    assert seen.pop("sizes") == [40]
    assert {k: seen[k] for k in ("samples", "mode", "sequential", "cache", "rows")} == {
        "samples": 40, "mode": StatsMode.HOST, "sequential": True, "cache": 256 << 20, "rows": 256}


def test_too_few_calibration_rows_are_warned_about(tmp_path):
    """A Gemm reading a flattened 4 x 8 x 8 map has 257 weights per output: 16 samples are too few
    (the next Gemm, with 8 + 1, has enough)."""
    model = FACTORIES["flatten_gemm_net"](channels=4, hidden=8)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    for samples, warned in ((16, True), (320, False)):
        np.savez(tmp_path / "calib.npz", input=random_feeds(model, batch=samples, seed=2)["input"])
        result = invoke("prune", path, "-o", tmp_path / "o.onnx", "--method", "reap", "--ratio", "0.5",
                        "--round-to", "1", "--calib", tmp_path / "calib.npz", "-q")
        assert result.exit_code == 0, result.output
        warnings = [line.strip() for line in result.output.splitlines() if "calibration rows for" in line]
        assert warnings == ([f"gemm0: only {samples} calibration rows for 257 weights per output "
                             "(ridge alpha " + warnings[0].split("ridge alpha ")[1]] if warned else [])
