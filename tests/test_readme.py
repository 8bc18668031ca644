"""The README's commands: the first one's job runs as written; CI runs the second."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import onnx

from onnxprune import cost_of, load
from onnxprune.data import open_data
from onnxprune.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```sh")
    return lines[start + 1], lines[start + 2]


def test_readme_opens_with_install_and_test_commands():
    main_job, tests = readme_commands()
    assert main_job.startswith("pip install . && onnxprune ")
    assert tests.startswith('pip install ".[test]" && ') and "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and "eval" in ci


def test_readme_main_job_runs(tmp_path):
    main_job, _ = readme_commands()
    job = shlex.split(main_job.split("&&", 1)[1])
    (tmp_path / "models").symlink_to(ROOT / "models")
    exe = Path(sys.executable).with_name("onnxprune")
    env = dict(os.environ, PATH=f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(job, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / job[job.index("-o") + 1]
    onnx.checker.check_model(onnx.load(out), full_check=True)
    source = ROOT / job[job.index("prune") + 1]
    keep = float(job[job.index("--keep-flops") + 1])
    before, after = cost_of(onnx.load(source)).macs, cost_of(onnx.load(out)).macs
    assert after <= keep * before  # the README: it halves the MACs
    assert f"({100 * after / before:.1f}% kept)" in proc.stdout
    # and keeps the accuracy (README: 92.98% -> 91.44% on the whole test set), on 2,000 test images
    model, pruned = load(source), load(out)
    test = open_data(ROOT / "models" / "fmnist_test.npz", model, batch_size=500, limit=2000)
    assert evaluate(pruned, test).accuracy > evaluate(model, test).accuracy - 0.03
