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
from builders import FACTORIES, as_float64, batch_one_net, text_cnn
from builders import run as run_model
from click.testing import CliRunner
from onnx import helper

from onnxprune import OnnxPruneError, analyze, normalize
from onnxprune.cli import _terminate_on_sigterm, main
from onnxprune.graph import io, shapes, validate
from onnxprune.graph.files import Staging
from onnxprune.widths import latency

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


# -- issue 27: latency tables, threads, onnxruntime's failures, integer inputs, names and paths


def dynamic(folder: Path) -> str:
    """conv_chain with a dynamic batch, height and width."""
    onnx.save(_dynamic_chain(), folder / "dyn.onnx")
    return "dyn.onnx"


def _dynamic_chain() -> onnx.ModelProto:
    proto = FACTORIES["conv_chain"]()
    for dim, name in zip(proto.graph.input[0].type.tensor_type.shape.dim, "NCHW"):
        if name != "C":
            dim.dim_param = name
    return proto


def table_data(proto: onnx.ModelProto, shape=(1, 3, 8, 8)) -> dict:
    """A valid table for ``proto``, made at batch 1, default threads and input [1, 3, 8, 8]: each group's time
    linear in its width, the whole model 1 ms."""
    normalized = normalize(proto)[0]
    steps = {str(g.id): {str(k): k / g.channels for k in latency.ladder(g.channels, 8)}
             for g in analyze(normalized, {"input": shape}).groups if g.prunable}
    return {"format": latency.FORMAT, "full_ms": 1.0, "scale": 1.0, "checks": [], "steps": steps,
            "meta": {"model_sha256": latency.model_hash(normalized), "batch": 1, "threads": 0,
                     "input_shapes": {"input": list(shape)}}}


def table(folder: Path, name: str = "t.json", proto: onnx.ModelProto | None = None, raw: str | None = None,
          **changes) -> str:
    """The table of ``proto`` (conv_chain's) with ``changes`` to its top-level fields, a dict value merged
    ("meta", and "steps" by group); ``raw`` replaces the value set to "RAW" with text (NaN, Infinity, a
    401-digit integer, which json.dumps would not write as such)."""
    data = table_data(proto or FACTORIES["conv_chain"]())
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and key in ("meta", "steps") else value
    (folder / name).write_text(json.dumps(data).replace('"RAW"', raw or '"RAW"'))
    return name


LATENCY = ["--keep-latency", "0.9", "-q"]


def with_table(make) -> callable:
    """A case: prune conv_chain (m.onnx) with the table that ``make(folder)`` writes."""
    return lambda f: ["prune", model(f), "-o", "out.onnx", "--report", "r.json", *LATENCY, "--latency-table", make(f)]


def nested(folder: Path) -> str:
    (folder / "t.json").write_text("[" * 100_000 + "]" * 100_000)
    return "t.json"


THREADS = str((os.cpu_count() or 1) + 1)
LONG = "m" * 300 + ".onnx"  # over the 255 bytes a file name may have
DEEP = "d/" * 2100 + "m.onnx"  # over the 4,096 bytes a path may have


def calib8(folder: Path) -> str:
    """8 random samples for conv_chain or batch_one_net (3 x 8 x 8)."""
    np.savez(folder / "c.npz", input=np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32))
    return "c.npz"


def batch_one(folder: Path) -> str:
    onnx.save(batch_one_net(), folder / "one.onnx")
    return "one.onnx"


def float64(folder: Path) -> str:
    onnx.save(as_float64(FACTORIES["conv_chain"]()), folder / "f64.onnx")
    np.savez(folder / "c64.npz", input=np.random.default_rng(0).standard_normal((8, 3, 8, 8)))
    return "f64.onnx"


CASES.update({
    # latency tables that are JSON but wrong: tracebacks, or exit 0 with a wrong prune
    "table-full-ms-0": (with_table(lambda f: table(f, full_ms=0)), ["t.json", "full_ms 0 is not positive"]),
    "table-full-ms-minus-0": (with_table(lambda f: table(f, full_ms=-0.0)), ["full_ms -0.0 is not positive"]),
    "table-full-ms-negative": (with_table(lambda f: table(f, full_ms=-1)), ["full_ms -1 is not positive"]),
    "table-empty-steps": (with_table(lambda f: table(f, steps={"0": {}})), ["group 0: no widths measured"]),
    "table-nested": (with_table(nested), ["t.json: not a JSON latency table (nested too deeply)"]),
    "table-401-digits": (with_table(lambda f: table(f, full_ms="RAW", raw="9" * 401)), ["full_ms", "out of range"]),
    "table-full-ms-nan": (with_table(lambda f: table(f, full_ms="RAW", raw="NaN")), ["NaN is not a number"]),
    "table-full-ms-infinity": (with_table(lambda f: table(f, full_ms="RAW", raw="Infinity")),
                               ["Infinity is not a number"]),
    "table-full-ms-1e400": (with_table(lambda f: table(f, full_ms="RAW", raw="1e400")), ["1e400 is out of range"]),
    "table-scale-nan": (with_table(lambda f: table(f, scale="RAW", raw="NaN")), ["NaN is not a number"]),
    "table-scale-0": (with_table(lambda f: table(f, scale=0)), ["scale 0 is not positive"]),
    "table-step-infinity": (with_table(lambda f: table(f, steps={"1": {"8": "RAW", "16": 1.0}}, raw="-Infinity")),
                            ["-Infinity is not a number"]),
    "table-step-string": (with_table(lambda f: table(f, steps={"1": {"8": "0.5", "16": 1.0}})),
                          ["group 1 width 8 '0.5' is not a number"]),
    "table-step-negative": (with_table(lambda f: table(f, steps={"1": {"8": -0.5, "16": 1.0}})),
                            ["group 1 width 8 -0.5 is not positive"]),
    "table-step-falls": (with_table(lambda f: table(f, steps={"1": {"8": 2.0, "16": 1.0}})),
                         ["group 1: width 16 is faster than width 8"]),
    "table-check-nan": (with_table(lambda f: table(f, checks=[{"ratio": 0.5, "measured_ms": "RAW"}], raw="NaN")),
                        ["NaN is not a number"]),
    "table-wrong-width": (with_table(lambda f: table(f, steps={"1": {"8": 0.5, "24": 1.0}})),
                          ["group 1 is measured up to 24 channels, the model's has 16"]),
    # the table is an input, never overwritten
    "output-is-table": (lambda f: ["prune", model(f), "-o", table(f), *LATENCY, "--latency-table", "t.json"],
                        ["t.json: the output path is the latency table"]),
    "report-is-table": (lambda f: ["prune", model(f), "-o", "out.onnx", "--report", table(f), *LATENCY,
                                   "--latency-table", "t.json"], ["t.json: the report path is the latency table"]),
    # files that are not tables, whose reading never ends
    "table-is-fifo": (with_table(fifo), ["fifo: is a FIFO, not a regular file; the latency table must be one"]),
    "table-is-dev-zero": (with_table(lambda f: "/dev/zero"), ["/dev/zero: is a character device, not a regular"]),
    "table-is-folder": (with_table(lambda f: "."), [".: is a folder, not a regular file"]),
    # measured elsewhere than the prune asks for
    "table-other-batch": (lambda f: [*with_table(table)(f), "--latency-batch", "7"],
                          ["measured with batch 1, this prune's batch 7 (--latency-batch)"]),
    "table-other-threads": (lambda f: [*with_table(lambda f: table(f, meta={"threads": 1}))(f), "--threads", "0"],
                            ["measured with threads 1, this prune's threads 0 (--threads)"]),
    "table-other-input-shape": (
        lambda f: ["prune", dynamic(f), "-o", "out.onnx", *LATENCY, "--latency-table",
                   table(f, proto=_dynamic_chain()), "--input-shape", "input=1,3,16,16"],
        ["measured with input shapes {'input': [1, 3, 8, 8]}, this prune's input shapes {'input': [1, 3, 16, 16]}"]),
    # --threads beyond the machine's cores, refused before any session
    "threads-prune": (lambda f: ["prune", model(f), "-o", "out.onnx", *LATENCY, "--threads", THREADS],
                      [f"--threads {THREADS}: must be 0 (onnxruntime's choice) to {os.cpu_count() or 1}"]),
    "threads-profile": (lambda f: ["profile", model(f), "-o", "t.json", "--threads", THREADS], [f"--threads {THREADS}"]),
    "threads-bench": (lambda f: ["bench", model(f), "--threads", THREADS], [f"--threads {THREADS}"]),
    # onnxruntime's failures: the input model's, on the inputs named
    "batch-one-calib": (lambda f: ["prune", batch_one(f), "-o", "out.onnx", "--method", "reap", "--calib", calib8(f),
                                   "--ratio", "0.5", "-q"],
                        ["cannot run the input model on the first batch of --calib c.npz (input 'input' float32 "
                         "[8, 3, 8, 8]): ", "Gemm node"]),
    "batch-one-profile": (lambda f: ["profile", batch_one(f), "-o", "t.json", "--batch", "2", "--runs", "1"],
                          ["onnxruntime cannot run the input model at batch 2 (input 'input' float32 [2, 3, 8, 8]): "]),
    "batch-one-keep-latency": (lambda f: ["prune", batch_one(f), "-o", "out.onnx", *LATENCY, "--latency-batch", "2"],
                               ["onnxruntime cannot run the input model at batch 2"]),
    "batch-one-eval": (lambda f: ["eval", batch_one(f), "--data", calib8(f)], ["onnxruntime failed on samples 0 to 7"]),
    "batch-one-bench": (lambda f: ["bench", batch_one(f), "--batch", "2", "--runs", "1"],
                        ["onnxruntime cannot run one.onnx at batch 2"]),
    "float64-calib": (lambda f: ["prune", float64(f), "-o", "out.onnx", "--method", "reap", "--calib", "c64.npz",
                                 "--ratio", "0.5", "-q"],
                      ["cannot run the input model on the first batch of --calib c64.npz (input 'input' float64",
                       "Could not find an implementation for Conv(11)"]),
    "float64-l1": (lambda f: ["prune", float64(f), "-o", "out.onnx", *PRUNE],
                   ["cannot run the input model on random inputs (input 'input' float64 [1, 3, 8, 8])",
                    "Could not find an implementation for Conv(11)"]),
    # names and paths
    "long-model-name": (lambda f: ["inspect", LONG], [f"{LONG[:40]}...", "cannot read (File name too long)"]),
    "deep-model-path": (lambda f: ["inspect", DEEP], ["cannot read (File name too long)"]),
    "long-calib-name": (lambda f: ["prune", model(f), "-o", "out.onnx", "--method", "reap", "--calib", LONG,
                                   "--ratio", "0.5"], ["File name too long"]),
    "long-eval-data": (lambda f: ["eval", model(f), "--data", LONG], ["File name too long"]),
    "long-reference": (lambda f: ["eval", model(f), "--data", calib(f), "--reference", LONG], ["File name too long"]),
    "long-output": (lambda f: ["prune", model(f), "-o", LONG, *PRUNE],
                    ["the output file name is 305 bytes long; the file system takes at most"]),
    "long-report": (lambda f: ["prune", model(f), "-o", "out.onnx", "--report", LONG, *PRUNE],
                    ["the report file name is 305 bytes long"]),
    "deep-output": (lambda f: ["prune", model(f), "-o", DEEP, *PRUNE], ["the output path is 4206 bytes long"]),
    "long-profile-output": (lambda f: ["profile", model(f), "-o", LONG], ["the output file name is 305 bytes long"]),
    "output-dash": (lambda f: ["prune", model(f), "-o", "-", *PRUNE],
                    ["Invalid value for '-o' / '--output': '-': the output goes to a file, not to standard output"]),
    "output-trailing-slash": (lambda f: ["prune", model(f), "-o", "nonexist/", *PRUNE],
                              ["'nonexist/' ends with '/', which names a folder"]),
    "report-trailing-slash": (lambda f: ["prune", model(f), "-o", "out.onnx", "--report", "r/", *PRUNE],
                              ["Invalid value for '--report': 'r/' ends with '/'"]),
    "srn-output-dash": (lambda f: ["srn", model(f), "-o", "-"], ["'-': the output goes to a file"]),
    "profile-output-slash": (lambda f: ["profile", model(f), "-o", "t/"], ["'t/' ends with '/'"]),
    "newline-in-model-path": (lambda f: ["inspect", "a\nb.onnx"], ["a\\nb.onnx: no such file"]),
    "newline-in-output-folder": (lambda f: ["prune", model(f), "-o", "x\ny/out.onnx", *PRUNE],
                                 ["x\\ny/out.onnx: output folder x\\ny does not exist"]),
})


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


def prepare(name: str, root: Path, cases: dict = CASES) -> tuple[list[str], Path, dict]:
    """The case's folder (inside ``root``, so that it has a parent to point outside of), its
    arguments and a snapshot of the folder."""
    folder = root / "case"
    folder.mkdir()
    args = cases[name][0](folder)
    return args, folder, snapshot(folder)


def check_refused(name: str, code: int, stderr: str, before: dict, after: dict, cases: dict = CASES) -> None:
    assert "Traceback" not in stderr, stderr
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for fragment in cases[name][1]:
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


# -- issue 27, beyond the one-line cases above


# onnxruntime's failures, and the tables that were tracebacks, as a user runs them: one line on stderr,
# none of onnxruntime's own log lines before it
IN_A_PROCESS = ["batch-one-calib", "batch-one-profile", "batch-one-keep-latency", "batch-one-eval", "batch-one-bench",
                "float64-calib", "float64-l1", "table-full-ms-0", "table-empty-steps", "table-nested",
                "table-401-digits", "long-model-name"]


def run_cases(names: list[str], root: Path, cases: dict = CASES, limit=None) -> None:
    """The ``cases`` ``names``, each in a process of its own (``limit``: a function run in it first)."""
    prepared = {}
    for name in names:
        (root / name).mkdir()
        prepared[name] = prepare(name, root / name, cases)

    def run(name):
        args, folder, before = prepared[name]
        result = subprocess.run([sys.executable, "-m", "onnxprune", *args], cwd=folder, env=ENV, capture_output=True,
                                text=True, timeout=300, preexec_fn=limit)
        return name, result, before, folder

    with ThreadPoolExecutor(4) as pool:
        for name, result, before, folder in pool.map(run, prepared):
            check_refused(name, result.returncode, result.stderr, before, snapshot(folder), cases)


def test_onnxruntime_failures_are_one_line_without_its_log_in_a_real_process(tmp_path):
    run_cases(IN_A_PROCESS, tmp_path)


def _two_gib():
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


MEMORY_CASES = {  # only in processes limited to 2 GiB: elsewhere they may well fit
    "batch-100000-profile": (lambda f: ["profile", model(f), "-o", "t.json", "--batch", "100000", "--runs", "1"],
                             ["onnxruntime cannot run the input model at batch 100000 (input 'input' float32 "
                              "[100000, 3, 8, 8]): Failed to allocate memory"]),
    "batch-100000-keep-latency": (lambda f: ["prune", model(f), "-o", "out.onnx", *LATENCY, "--latency-batch",
                                             "100000"], ["at batch 100000", "Failed to allocate memory"]),
    "batch-billion-bench": (lambda f: ["bench", model(f), "--batch", "1000000000", "--runs", "1"],
                            ["random inputs for 'input' of shape [1000000000, 3, 8, 8] do not fit in memory"]),
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="address-space limits as Linux sets them")
def test_a_batch_that_does_not_fit_in_memory_is_one_error_line(tmp_path):
    """In processes limited to 2 GiB of address space, onnxruntime cannot allocate a batch of 100,000
    (200 MB a tensor), nor numpy random inputs of a billion samples: each failure is an error naming
    the batch, not a traceback."""
    run_cases(list(MEMORY_CASES), tmp_path, MEMORY_CASES, _two_gib)


def test_a_table_over_the_size_limit_is_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "MAX_TABLE_BYTES", 1 << 20)
    monkeypatch.chdir(tmp_path)
    args = with_table(table)(tmp_path)
    with (tmp_path / "t.json").open("a") as padded:
        padded.write(" " * (1 << 20))
    before = snapshot(tmp_path)
    result = invoke(args)
    assert result.exit_code == 2 and result.stderr == "error: t.json: over 1 MiB, too large for a latency table\n"
    assert snapshot(tmp_path) == before


def test_a_table_from_before_settings_were_recorded_is_used_with_a_warning(tmp_path, monkeypatch):
    """Tables made before input shapes were recorded still work; the prune says plainly what it
    could not check, in a warning, and the report lists it."""
    monkeypatch.chdir(tmp_path)
    data = table_data(FACTORIES["conv_chain"]())
    del data["meta"]["input_shapes"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    result = invoke(["prune", model(tmp_path), "-o", "out.onnx", *LATENCY, "--latency-table", "old.json", "--json"])
    assert result.exit_code == 0, result.stderr
    assert ("warning: --latency-table old.json does not record the input shapes it was measured at (made by an older "
            "onnxprune), so they could not be checked against this prune's; profile it again to have them checked\n"
            ) in result.stderr
    assert json.loads(result.stdout)["latency"]["table_unchecked"] == ["input shapes"]
    data["meta"]["input_shapes"] = {"input": [1, 3, 8, 8]}
    (tmp_path / "new.json").write_text(json.dumps(data))
    result = invoke(["prune", "m.onnx", "-o", "out.onnx", *LATENCY, "--latency-table", "new.json"])
    assert result.exit_code == 0 and "warning: --latency-table" not in result.stderr


def test_a_report_never_holds_nan(tmp_path, monkeypatch):
    """JSON has no NaN: a table whose check measured NaN is an error, and no file is written."""
    monkeypatch.chdir(tmp_path)
    model(tmp_path)
    broken = latency.LatencyTable({}, 1.0, {0: {8: 1.0}}, 1.0, [{"ratio": 0.5, "measured_ms": float("nan")}])
    monkeypatch.setattr("onnxprune.cli.profile", lambda *a, **k: broken)
    monkeypatch.setattr("onnxprune.cli.profile_summary", lambda *a, **k: "")
    before = snapshot(tmp_path)
    result = invoke(["profile", "m.onnx", "-o", "t.json"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: internal error: the report holds a number JSON cannot hold")
    assert snapshot(tmp_path) == before


def text_model(folder: Path, **options) -> str:
    """``text_cnn(**options)`` as text.onnx, with 32 samples of token ids below 100 as ids.npz."""
    onnx.save(text_cnn(**options), folder / "text.onnx")
    np.savez(folder / "ids.npz", ids=np.random.default_rng(0).integers(0, 100, (32, 16)))
    return "text.onnx"


def runs_on_token_ids(path: Path) -> None:
    """The model at ``path`` runs on the token ids of (almost) the whole vocabulary, 0 to 95."""
    (logits,) = run_model(onnx.load(path), {"ids": np.arange(96).reshape(6, 16)})
    assert logits.shape == (6, 10) and np.isfinite(logits).all()


@pytest.mark.parametrize("options", [["--ratio", "0.5"], ["--method", "reap", "--calib", "ids.npz", "--ratio", "0.5"],
                                     ["--calib", "ids.npz", "--keep-flops", "0.5", "--srn"]],
                         ids=["l1", "reap", "srn-pro"])
def test_a_text_cnn_over_a_100_row_embedding_is_pruned(tmp_path, monkeypatch, options):
    """Random probe and validation inputs of token ids were drawn from [0, 255): no text CNN with a
    small embedding could be pruned ("internal error ... Gather idx=216 must be within [-100, 99]")."""
    monkeypatch.chdir(tmp_path)
    result = invoke(["prune", text_model(tmp_path), "-o", "out.onnx", *options, "-q", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["macs_after"] < json.loads(result.stdout)["macs_before"]
    runs_on_token_ids(tmp_path / "out.onnx")


def test_a_text_cnn_is_serialised_and_profiled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke(["srn", text_model(tmp_path), "-o", "serial.onnx", "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["blocks_serialized"] == 1
    runs_on_token_ids(tmp_path / "serial.onnx")
    result = invoke(["profile", "text.onnx", "-o", "t.json", "--runs", "3"])
    assert result.exit_code == 0, result.stderr
    meta = latency.load_table(tmp_path / "t.json").meta
    assert (meta["batch"], meta["threads"], meta["input_shapes"]) == (1, 0, {"ids": [1, 16]})


def test_integer_inputs_are_drawn_below_the_size_of_the_table_they_index():
    assert shapes.index_bounds(text_cnn(vocab=100)) == {"ids": 100}
    assert shapes.index_bounds(text_cnn(vocab=7, contrib=True)) == {"ids": 7}
    feeds = shapes.random_feeds(text_cnn(vocab=7), {"ids": (64, 16)})
    assert feeds["ids"].min() == 0 and feeds["ids"].max() == 6
    # traced no further than ops that pass values unchanged: after an Add, nothing is known but 0 and 1
    assert shapes.index_bounds(text_cnn(shift=99)) == {}
    assert set(np.unique(shapes.random_feeds(text_cnn(shift=99))["ids"])) == {0, 1}


def test_calibration_data_is_used_for_every_run_when_given(tmp_path, monkeypatch):
    """Token ids shifted by 99 before a 100-row embedding: random inputs (0 and 1, nothing known
    about them) do not run, and the model is refused for them, as the input model's failure; with
    calibration data (ids 0), validation and timing run on the data."""
    monkeypatch.chdir(tmp_path)
    text_model(tmp_path, shift=99)
    np.savez(tmp_path / "zeros.npz", ids=np.zeros((8, 16), np.int64))
    result = invoke(["prune", "text.onnx", "-o", "out.onnx", "--ratio", "0.5", "-q"])
    assert result.exit_code == 2 and "internal error" not in result.stderr
    assert result.stderr.startswith("error: onnxruntime ") and "cannot run the input model on random inputs (input " \
        "'ids' int64 [1, 16] in [0, 1]): " in result.stderr and "Gather node" in result.stderr
    assert not (tmp_path / "out.onnx").exists()
    for options in [["--ratio", "0.5"], ["--keep-latency", "1.0", "--no-pro"]]:
        result = invoke(["prune", "text.onnx", "-o", "out.onnx", "--method", "reap", "--calib", "zeros.npz", *options,
                         "-q"])
        assert result.exit_code == 0, result.stderr


def test_macs_of_a_model_whose_inputs_are_all_fixed_say_what_is_unknown(tmp_path, monkeypatch):
    """Behind an op onnx does not know (as in transformer exports), the shapes come from an
    onnxruntime run: token ids drawn within the embedding let it run, so the MACs are counted;
    where it cannot run, the message no longer asks to fix input dims that are fixed."""
    monkeypatch.chdir(tmp_path)
    text_model(tmp_path, contrib=True)
    result = invoke(["prune", "text.onnx", "-o", "out.onnx", "--method", "reap", "--calib", "ids.npz",
                     "--keep-flops", "0.7", "--no-pro", "-q", "--json"])
    assert result.exit_code == 0, result.stderr
    monkeypatch.setattr(shapes, "_run_for_shapes", lambda *a: None)
    result = invoke(["prune", "text.onnx", "-o", "out.onnx", "--input-shape", "ids=1,16", *PRUNE])
    assert result.exit_code == 2
    assert "is unknown after com.microsoft:FusedConv node 'conv0', an op onnx does not know, and onnxruntime " \
           "could not run the model on random inputs to measure it (every input dim is fixed)" in result.stderr
    assert "--input-shape" not in result.stderr


def test_inspect_prints_none_of_onnxruntime_s_log_lines(tmp_path):
    """inspect runs the model in onnxruntime for the shapes an op onnx does not know hides; when the
    run fails (token ids it cannot take), the shapes stay unknown and onnxruntime says nothing."""
    onnx.save(text_cnn(contrib=True, shift=99), tmp_path / "text.onnx")
    result = subprocess.run([sys.executable, "-m", "onnxprune", "inspect", "text.onnx", "--input-shape", "ids=1,16"],
                            cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == ""
    assert "shapes unknown after com.microsoft:FusedConv" in result.stdout


def test_json_text_refuses_nan():
    from onnxprune.report import json_text

    with pytest.raises(OnnxPruneError, match="JSON cannot hold"):
        json_text({"a": [float("inf")]})
