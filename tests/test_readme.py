"""The README's commands: the first one's job and the Python block run as written; CI runs the second; every command the README and docs/ show exists, with its options."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import onnx

from onnxprune import cost_of, load
from onnxprune.cli import main
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


# -- every command the README and docs/ show names a command and options that exist

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
OPTION = r"(?<![\w/.=-])(--?[A-Za-z][\w-]*)"
SPAN = r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)"  # a code span: a run of backticks to the next run as long
# what may stand before a command: a timer, a pinning, a niceness (each with its own options)
PREFIX = r"^\s*(?:(?:/usr/bin/time|time|taskset|nice)(?:\s+-\w+(?:\s+\d+)?)*\s+)*"


def shown_commands(text: str) -> list[str]:
    """The commands a page may show: every line of its ```sh blocks (comments dropped, `\\`
    and indented continuations joined, split at `;`) and every inline code span (spans may wrap
    across lines; a `;` in one is prose, as in a quoted message)."""
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        joined = re.sub(r"\\\n|\n(?=[ \t])", " ", block)  # `\` or an indented line continues the one before
        commands += [part.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")
                     for part in line.split(" #")[0].split(";")]  # `a; b` in a shell line: two commands
    fenced = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    return commands + [" ".join(m.group(2).split()) for m in re.finditer(SPAN, fenced, flags=re.DOTALL)]


def calls(command: str) -> list[tuple[str, str, list[str]]]:
    """(program, subcommand or tool, options) of every onnxprune or tools/ call a command line
    starts (`a && b`; prefixes such as `taskset -c 0` or `/usr/bin/time -v` and "quoted" values
    skipped). Prose that merely mentions onnxprune starts no call."""
    found = []
    for part in re.split(r"&&", re.sub(r"\"[^\"]*\"", '""', command)):  # a quoted argument is a value
        onnxprune = re.search(PREFIX + r"(?:python -m )?onnxprune\s+([a-z]+)\b(.*)", part)
        tool = re.search(PREFIX + r"python (tools/[\w.]+\.py)\b(.*)", part)
        if onnxprune:
            found.append(("onnxprune", onnxprune.group(1), re.findall(OPTION, onnxprune.group(2))))
        elif tool:  # after a test file, the options are pytest's (tools/mutation.py --try MUTANT tests/x.py -k ...)
            found.append(("tool", tool.group(1), re.findall(OPTION, re.split(r"\s\S+\.py\b", tool.group(2))[0])))
    return found


def onnxprune_options(command: str) -> set[str]:
    cmd = main.commands[command]
    return {"--help", *(o for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts))}


def tool_options(path: str) -> set[str]:
    """Options a tools/ script declares to argparse ("--name" strings in its source)."""
    return {"--help", "-h", *re.findall(r"[\"'](--?[A-Za-z][\w-]*)[\"']", (ROOT / path).read_text())}


def test_the_shown_commands_and_options_exist():
    problems, checked = [], 0
    for page in PAGES:
        for command in shown_commands(page.read_text()):
            for program, name, options in calls(command):
                checked += 1
                where = f"{page.relative_to(ROOT)}: `{command}`"
                if program == "onnxprune":
                    if name not in main.commands:
                        problems.append(f"{where}: no command `onnxprune {name}`")
                        continue
                    known = onnxprune_options(name)
                elif not (ROOT / name).is_file():
                    problems.append(f"{where}: no script {name}")
                    continue
                else:
                    known = tool_options(name)
                problems += [f"{where}: {name} has no option {o}" for o in options if o not in known]
    assert checked > 40  # the pages show many commands; a parsing slip would check none
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_missing_option_and_a_missing_command():
    text = ("```sh\nonnxprune prune m.onnx -o o.onnx\n    --keep-flop 0.5  # wrapped\nonnxprune inspect m --json; "
            "onnxprune srn m -o s\n```\nthen `onnxprune trim m.onnx`.")
    found = [c for command in shown_commands(text) for c in calls(command)]
    assert found == [("onnxprune", "prune", ["-o", "--keep-flop"]), ("onnxprune", "inspect", ["--json"]),
                     ("onnxprune", "srn", ["-o"]), ("onnxprune", "trim", [])]
    assert "--keep-flop" not in onnxprune_options("prune") and "trim" not in main.commands
    wrapped = ("run `python\ntools/bench_latency.py --models vgg16 --no-such` and `taskset -c 0 onnxprune bench a b --rounds 3`"
               ' and `python tools/bench_keep_latency.py --timing-prefix "taskset -c 0"`, ```sh blocks, `/usr/bin/time -v'
               ' onnxprune eval m --limit 1`; `` the message (`onnxprune runs` is prose) `` and `onnxprune writes it`')
    found = [c for command in shown_commands(wrapped) for c in calls(command)]
    assert found == [("tool", "tools/bench_latency.py", ["--models", "--no-such"]), ("onnxprune", "bench", ["--rounds"]),
                     ("tool", "tools/bench_keep_latency.py", ["--timing-prefix"]), ("onnxprune", "eval", ["--limit"]),
                     ("onnxprune", "writes", [])]
    assert "--models" in tool_options("tools/bench_latency.py") and "--no-such" not in tool_options("tools/bench_latency.py")


def test_readme_python_snippet_runs(tmp_path):
    """The README's Python block, run as written in a folder holding the bundled models."""
    text = (ROOT / "README.md").read_text()
    snippet = re.search(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL).group(1)
    (tmp_path / "models").symlink_to(ROOT / "models")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    pruned = onnx.load(tmp_path / "pruned.onnx")
    onnx.checker.check_model(pruned, full_check=True)
    before, after = cost_of(onnx.load(ROOT / "models" / "resnet20_fmnist.onnx")).macs, cost_of(pruned).macs
    assert after <= 0.5 * before
    assert proc.stdout.strip() == f"{after / before:.1%} of the MACs kept"


MEASUREMENT = r"\d(?:[\d,.]*\d)?\s?(?:%|x\b| points\b| s\b| GB\b| GiB\b| MiB\b| ms\b)"


def readme_blocks(text: str) -> list[str]:
    """The README's paragraphs, list items and table rows, code blocks left out."""
    text = re.sub(r"^```.*?^```\n", "", text, flags=re.MULTILINE | re.DOTALL)
    blocks = []
    for paragraph in re.split(r"\n\s*\n", text):
        if paragraph.startswith("|"):
            blocks += paragraph.splitlines()
        else:
            blocks += re.split(r"\n(?=- )", paragraph)
    return blocks


def test_every_measured_number_in_the_readme_links_to_its_source():
    """A percentage, speedup, time or size in the README sits in a paragraph, item or table row
    that links to the docs/ page giving the command that measured it."""
    blocks = readme_blocks((ROOT / "README.md").read_text())
    measured = [b for b in blocks if re.search(MEASUREMENT, b)]
    assert len(measured) > 5
    unlinked = [b for b in measured if "](docs/" not in b]
    assert not unlinked, "\n\n".join(unlinked)
    assert readme_blocks("a 1.5x speedup\n\n| x | 91.2% | [s](docs/A.md) |\n- 3 s here\n- none") == \
        ["a 1.5x speedup", "| x | 91.2% | [s](docs/A.md) |", "- 3 s here", "- none"]
