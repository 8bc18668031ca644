"""Bad input, found so far, as a user meets it: every case runs the CLI in its own folder and
must end with exit status 2, one `error:` line naming the problem, no traceback, and the
folder exactly as it was (inputs unchanged, nothing at -o or --report, no temporary).

Every case runs in-process with CliRunner(catch_exceptions=False), where an uncaught exception
fails the test; the cases that gave tracebacks run again as `python -m onnxprune` in
subprocesses (all at once), as a user runs them.
"""

import json
import os
import signal
import stat
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import onnx
import pytest
from builders import FACTORIES
from click.testing import CliRunner
from onnx import helper

from onnxprune.cli import _terminate_on_sigterm, main
from onnxprune.graph import io, validate
from onnxprune.graph.files import Staging

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
PRUNE = ["--method", "l1", "--ratio", "0.5", "-q"]


# -- fixtures, each written into a case's folder


def model(folder: Path, name: str = "m.onnx") -> str:
    onnx.save(FACTORIES["conv_chain"](), folder / name)
    return name


def external(folder: Path, name: str = "ext.onnx") -> str:
    """A model with every weight in `name.data`."""
    onnx.save_model(FACTORIES["conv_chain"](), folder / name, save_as_external_data=True,
                    all_tensors_to_one_file=True, location=name + ".data", size_threshold=0)
    return name


def relocated(folder: Path, location: str) -> str:
    """A model whose external data points at `location` (written as given)."""
    proto = onnx.load(folder / external(folder, "bad.onnx"), load_external_data=False)
    (folder / "bad.onnx.data").unlink()
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(proto, folder / "bad.onnx")
    return "bad.onnx"


def missing_data(folder: Path) -> str:
    return relocated(folder, "bad.onnx.data")


def symlinked_data(folder: Path) -> str:
    (folder / "link.data").symlink_to("/etc/passwd")
    return relocated(folder, "link.data")


BAD_DATA = {
    "missing": (missing_data, ["tensor 'conv0.weight'", "bad.onnx.data is missing"]),
    "outside": (lambda f: relocated(f, "../../etc/passwd"), ["tensor 'conv0.weight'", "outside the model's folder"]),
    "absolute": (lambda f: relocated(f, "/etc/passwd"), ["tensor 'conv0.weight'", "absolute path '/etc/passwd'"]),
    "symlink": (symlinked_data, ["tensor 'conv0.weight'", "link.data is a symbolic link"]),
}


def calib(folder: Path, name: str = "calib.npz") -> str:
    x = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
    np.savez(folder / name, input=x, labels=np.arange(8) % 10)
    return name


def huge_npz(folder: Path) -> str:
    """A 300-byte .npz whose member's header declares 1 TB (2**40 bytes) of float32."""
    member = BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (2**20, 1, 512, 512)})
    member.write(b"\0" * 64)
    with zipfile.ZipFile(folder / "huge.npz", "w") as archive:
        archive.writestr("input.npy", member.getvalue())
    return "huge.npz"


def custom_op(folder: Path, after_relu: int = 0) -> str:
    """conv_chain with an op of a custom domain (which neither onnx nor onnxruntime knows)
    after its `after_relu`-th Relu."""
    proto = FACTORIES["conv_chain"]()
    nodes = list(proto.graph.node)
    index = [i for i, n in enumerate(nodes) if n.op_type == "Relu"][after_relu]
    out = nodes[index].output[0]
    nodes[index].output[0] = out + "_in"
    nodes.insert(index + 1, helper.make_node("MyOp", [out + "_in"], [out], name="myop0", domain="my.domain"))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    proto.opset_import.append(helper.make_opsetid("my.domain", 1))
    onnx.save(proto, folder / "custom.onnx")
    return "custom.onnx"


def rewired(folder: Path, source: str) -> str:
    """conv_chain whose second Conv reads `source` ('relu2': a cycle; 'nowhere': dangling)."""
    proto = FACTORIES["conv_chain"]()
    [n for n in proto.graph.node if n.op_type == "Conv"][1].input[0] = source
    onnx.save(proto, folder / "bad.onnx")
    return "bad.onnx"


def fifo(folder: Path, name: str = "fifo") -> str:
    os.mkfifo(folder / name)
    return name


# -- the cases: name -> (folder -> CLI arguments, fragments the error line must hold)

CASES = {
    # 1. tracebacks
    **{f"{kind}-external-data-inspect": (lambda f, make=make: ["inspect", make(f)], words)
       for kind, (make, words) in BAD_DATA.items()},
    "missing-external-data-prune": (lambda f: ["prune", missing_data(f), "-o", "out.onnx", *PRUNE],
                                    BAD_DATA["missing"][1]),
    "missing-external-data-srn": (lambda f: ["srn", missing_data(f), "-o", "out.onnx"], BAD_DATA["missing"][1]),
    "missing-external-data-bench": (lambda f: ["bench", missing_data(f), "--runs", "1"], BAD_DATA["missing"][1]),
    "missing-external-data-eval-reference": (
        lambda f: ["eval", model(f), "--data", calib(f), "--reference", missing_data(f)], BAD_DATA["missing"][1]),
    "huge-npz-eval": (lambda f: ["eval", model(f), "--data", huge_npz(f)],
                      ["huge.npz", "array 'input' declares shape [1048576, 1, 512, 512]", "1.1 TB", "holds 64 bytes"]),
    "huge-npz-prune": (lambda f: ["prune", model(f), "-o", "out.onnx", "--method", "reap", "--calib", huge_npz(f),
                                  "--ratio", "0.5", "--report", "r.json"], ["huge.npz", "declares shape"]),
    "custom-op-bench": (lambda f: ["bench", custom_op(f), "--runs", "1"],
                        ["onnxruntime cannot load custom.onnx", "my.domain:MyOp"]),
    # 2. destroyed or replaced files
    "output-is-external-data": (lambda f: ["prune", external(f), "-o", "ext.onnx.data", *PRUNE],
                                ["ext.onnx.data: the output path is the input model's external data file"]),
    "output-is-calib": (lambda f: ["prune", model(f), "-o", calib(f), "--method", "reap", "--calib", "calib.npz",
                                   "--ratio", "0.5", "-q"], ["calib.npz: the output path is the calibration data"]),
    "report-is-calib": (lambda f: ["prune", model(f), "-o", "out.onnx", "--method", "reap", "--calib", calib(f),
                                   "--ratio", "0.5", "--report", "calib.npz", "-q"],
                        ["calib.npz: the report path is the calibration data"]),
    "report-is-output": (lambda f: ["prune", model(f), "-o", "out.onnx", "--report", "out.onnx", *PRUNE],
                         ["out.onnx: the output path is the report path"]),
    "output-is-fifo": (lambda f: ["prune", model(f), "-o", fifo(f), *PRUNE], ["fifo: exists and is a FIFO"]),
    "report-is-fifo": (lambda f: ["prune", model(f), "-o", "out.onnx", "--report", fifo(f), *PRUNE],
                       ["fifo: exists and is a FIFO", "report path"]),
    "srn-output-is-fifo": (lambda f: ["srn", model(f), "-o", fifo(f)], ["fifo: exists and is a FIFO"]),
    "output-is-folder": (lambda f: ["prune", model(f), "-o", ".", *PRUNE], ["exists and is a folder"]),
    # 4. misleading messages
    "custom-op-prune": (lambda f: ["prune", custom_op(f, 1), "-o", "out.onnx", *PRUNE],
                        ["cannot load the input model", "my.domain:MyOp", "onnxprune inspect"]),
    "custom-op-srn": (lambda f: ["srn", custom_op(f), "-o", "out.onnx"],
                      ["cannot load the input model", "my.domain:MyOp"]),
    "calib-limit-0": (lambda f: ["prune", model(f), "-o", "out.onnx", "--method", "reap", "--calib", calib(f),
                                 "--ratio", "0.5", "--calib-limit", "0"], ["--calib-limit 0: must be"]),
    "cycle": (lambda f: ["inspect", rewired(f, "relu2")],
              ["node 'conv1' (Conv) reads 'relu2' before node 'relu2' (Relu) computes it", "cycle"]),
    "dangling-input": (lambda f: ["prune", rewired(f, "nowhere"), "-o", "out.onnx", *PRUNE],
                       ["node 'conv1' (Conv) reads 'nowhere', which no node, graph input or initializer provides"]),
    # 5. found before any work: the .npz would be refused too, but only once opened
    "output-folder-missing": (lambda f: ["prune", model(f), "-o", "no/out.onnx", "--method", "reap",
                                         "--calib", huge_npz(f), "--ratio", "0.5"],
                              ["no/out.onnx: output folder no does not exist"]),
    "report-folder-is-a-file": (lambda f: ["prune", model(f), "-o", "out.onnx", "--report", "m.onnx/r.json",
                                           "--method", "reap", "--calib", huge_npz(f), "--ratio", "0.5"],
                                ["m.onnx/r.json: m.onnx is not a folder"]),
    # 6. click's usage errors
    "missing-option": (lambda f: ["prune", model(f), *PRUNE], ["Missing option '-o' / '--output'", "--help"]),
    "bad-option-value": (lambda f: ["prune", model(f), "-o", "out.onnx", "--ratio", "half"],
                         ["Invalid value for '--ratio'"]),
    "unknown-command": (lambda f: ["shrink", model(f)], ["No such command 'shrink'"]),
}
if os.geteuid() == 0:  # only root makes device nodes; a copy of /dev/null's, never /dev/null itself
    CASES["output-is-device"] = (lambda f: (os.mknod(f / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3)),
                                            ["prune", model(f), "-o", "null", *PRUNE])[1],
                                 ["null: exists and is a character device"])


def snapshot(folder: Path) -> dict[str, object]:
    """Every entry under ``folder``: a regular file's bytes, a symlink's target, else its type."""
    found = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        found[str(path.relative_to(folder))] = (path.read_bytes() if stat.S_ISREG(mode) else os.readlink(path)
                                                if stat.S_ISLNK(mode) else stat.S_IFMT(mode))
    return found


def cli(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune", *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def prepare(name: str, root: Path) -> tuple[list[str], Path, dict]:
    """The case's folder (inside ``root``, so that it has a parent to point outside of), its
    arguments and a snapshot of the folder."""
    folder = root / "case"
    folder.mkdir()
    args = CASES[name][0](folder)
    return args, folder, snapshot(folder)


def check_refused(name: str, code: int, stderr: str, before: dict, after: dict) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in CASES[name][1]:
        assert fragment in lines[0]
    assert after == before  # inputs unchanged; nothing at -o or --report; no temporary


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_error_line_and_changes_nothing(name, tmp_path, monkeypatch):
    args, folder, before = prepare(name, tmp_path)
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    check_refused(name, result.exit_code, result.stderr, before, snapshot(folder))


# The cases that ended in a traceback (exit 1), as a user runs them.
TRACEBACKS = ["missing-external-data-inspect", "huge-npz-eval", "custom-op-bench"]


def test_former_tracebacks_in_a_real_process(tmp_path):
    prepared = {}
    for name in TRACEBACKS:
        (tmp_path / name).mkdir()
        prepared[name] = prepare(name, tmp_path / name)

    def run(name):
        args, folder, before = prepared[name]
        return name, cli(args, folder), before, folder

    with ThreadPoolExecutor(len(prepared)) as pool:
        for name, result, before, folder in pool.map(run, prepared):
            check_refused(name, result.returncode, result.stderr, before, snapshot(folder))


def test_calib_limit_error_names_no_option_prune_lacks(tmp_path, monkeypatch):
    args, folder, _ = prepare("calib-limit-0", tmp_path)
    monkeypatch.chdir(folder)
    assert "--limit " not in CliRunner().invoke(main, args).stderr


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_a_bare_command_still_shows_the_help():
    result = invoke([])
    assert result.exit_code == 2 and "Commands:" in result.output and "error:" not in result.output


def test_custom_op_freezes_the_groups_after_it_in_inspect(tmp_path, monkeypatch):
    """Shape inference stops at the op and onnxruntime cannot run it: inspect lists every
    group, frozen where the shapes are unknown, and counts the MACs it can."""
    monkeypatch.chdir(tmp_path)
    result = invoke(["inspect", custom_op(tmp_path), "--json", "--input-shape", "input=1,3,8,8"])
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [g["prunable"] for g in data["groups"]] == [False] * 4
    assert "custom domain my.domain" in data["groups"][0]["reason"]
    for group in data["groups"][1:]:
        assert "shapes unknown after my.domain:MyOp node 'myop0'" in group["reason"]
    assert data["macs"] > 0
    assert {n["node"] for n in data["macs_not_counted"]} == {"conv1", "conv2", "gemm0"}
    table = invoke(["inspect", "custom.onnx"])
    assert table.exit_code == 0 and "MACs not counted for 3 layers" in table.stdout


def contrib_op(folder: Path) -> str:
    """onnxruntime's FusedConv (com.microsoft: onnx has no schema for it), then conv c2 -> Relu -> conv c3."""
    rng = np.random.default_rng(0)
    weights = [onnx.numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in [("w1", (4, 3, 3, 3)), ("w2", (8, 4, 3, 3)), ("w3", (4, 8, 3, 3))]]
    pads = [1, 1, 1, 1]
    nodes = [helper.make_node("FusedConv", ["x", "w1"], ["a"], domain="com.microsoft", activation="Relu", pads=pads,
                              name="fused"),
             helper.make_node("Conv", ["a", "w2"], ["b"], pads=pads, name="c2"),
             helper.make_node("Relu", ["b"], ["c"], name="r2"),
             helper.make_node("Conv", ["c", "w3"], ["y"], pads=pads, name="c3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4, 8, 8])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=8)
    onnx.save(proto, folder / "contrib.onnx")
    return "contrib.onnx"


def test_op_onnx_lacks_but_onnxruntime_runs_takes_shapes_from_onnxruntime(tmp_path, monkeypatch):
    """The shapes after it come from one onnxruntime run: the group after it is pruned as usual."""
    monkeypatch.chdir(tmp_path)
    data = json.loads(invoke(["inspect", contrib_op(tmp_path), "--json"]).stdout)
    assert [(g["producers"], g["prunable"]) for g in data["groups"]] == [(["c2"], True), (["c3"], False)]
    assert data["macs"] == 2 * 8 * 4 * 9 * 64 and "macs_not_counted" not in data
    result = invoke(["prune", "contrib.onnx", "-o", "out.onnx", "--round-to", "1", *PRUNE])
    assert result.exit_code == 0, result.stderr
    assert json.loads(invoke(["inspect", "out.onnx", "--json"]).stdout)["groups"][0]["channels"] == 4


def test_report_is_not_left_when_saving_the_model_fails(tmp_path, monkeypatch):
    """The weights file of a model over 2 GB (every model, with the limit lowered) cannot be
    written: neither the model nor the report appears, and no temporary is left."""
    monkeypatch.setattr(io, "EXTERNAL_DATA_BYTES", 0)
    monkeypatch.chdir(tmp_path)
    model(tmp_path)
    fifo(tmp_path, "out.onnx.data")
    before = snapshot(tmp_path)
    result = invoke(["prune", "m.onnx", "-o", "out.onnx", "--report", "r.json", *PRUNE])
    assert result.exit_code == 2
    assert "out.onnx.data: exists and is a FIFO" in result.stderr
    assert snapshot(tmp_path) == before


def test_prune_writes_model_then_report_and_no_temporary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["prune", model(tmp_path), "-o", "out.onnx", "--report", "r.json", *PRUNE])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "out.onnx", "r.json"]
    assert json.loads((tmp_path / "r.json").read_text())["method"] == "l1"
    assert (tmp_path / "out.onnx").stat().st_mtime_ns <= (tmp_path / "r.json").stat().st_mtime_ns


def test_sigterm_while_writing_leaves_no_temporary(tmp_path):
    """With the CLI's handler, SIGTERM unwinds (exit status 143, as when killed) and the staged
    file is removed."""
    previous = signal.getsignal(signal.SIGTERM)
    restore = _terminate_on_sigterm()
    try:
        with pytest.raises(SystemExit) as stopped, Staging() as staging:
            staging.write(tmp_path / "out.onnx", b"model")
            os.kill(os.getpid(), signal.SIGTERM)
            staging.commit()
    finally:
        restore()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) == previous


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        result = invoke(["prune", model(tmp_path), "-o", "ro/out.onnx", "--method", "reap", "--calib",
                         huge_npz(tmp_path), "--ratio", "0.5"])
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 2 and result.stderr.startswith("error: ro/out.onnx: cannot write in ro")
    assert list(folder.iterdir()) == []


def test_external_data_model_still_loads_and_prunes(tmp_path, monkeypatch):
    """Valid external data is read as before, and the output of a small model is one file."""
    monkeypatch.chdir(tmp_path)
    result = invoke(["prune", external(tmp_path), "-o", "out.onnx", *PRUNE])
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data", "out.onnx"]
    onnx.checker.check_model(onnx.load(tmp_path / "out.onnx"), full_check=True)


def test_model_of_known_ops_is_not_tried_in_onnxruntime_up_front(monkeypatch):
    """check_runs costs a session of the model only for models with ops onnx does not know; for
    the others it loads only their header (IR version, opsets) into an empty model."""
    tried = []
    monkeypatch.setattr(validate, "session", lambda model, *a, **k: tried.append(model))
    model = FACTORIES["conv_chain"]()
    validate.check_runs(model)
    assert len(tried) == 1 and len(tried[0].graph.node) == 0 and len(tried[0].graph.initializer) == 0
    assert tried[0].ir_version == model.ir_version and list(tried[0].opset_import) == list(model.opset_import)


def _newest_ir_onnxruntime_cannot_read() -> int | None:
    header = validate.header_only(FACTORIES["conv_chain"]())
    header.ir_version = onnx.IR_VERSION
    try:
        validate.session(header)
    except Exception:
        return onnx.IR_VERSION
    return None


def test_a_model_of_an_ir_version_onnxruntime_cannot_read_is_refused_as_input_not_as_a_failed_rewrite(tmp_path,
                                                                                                     monkeypatch):
    """It used to be pruned and then refused at the end as "internal error: onnxruntime cannot run
    the rewritten model"; now prune refuses it before any work, and every command says why in
    onnxruntime's words without its C++ source location."""
    newer = _newest_ir_onnxruntime_cannot_read()
    if newer is None:
        pytest.skip("this onnxruntime reads every IR version this onnx writes")
    proto = FACTORIES["conv_chain"]()
    proto.ir_version = newer
    onnx.save(proto, tmp_path / "new.onnx")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    for args, message in [(["prune", "new.onnx", "-o", "out.onnx", *PRUNE], "cannot load the input model ("),
                          (["srn", "new.onnx", "-o", "out.onnx"], "cannot load the input model ("),
                          (["bench", "new.onnx", "--runs", "1"], "onnxruntime cannot load new.onnx: ")]:
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 2 and "internal error" not in result.stderr, result.stderr
        assert message + f"Unsupported model IR version: {newer}" in result.stderr, result.stderr
        assert ".cc:" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert snapshot(tmp_path) == before
