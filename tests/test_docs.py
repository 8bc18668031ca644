"""docs/CLI.md is what tools/make_cli_docs.py writes and names every option of every `--help`; TROUBLESHOOTING.md names every refusal; links between pages resolve."""

import ast
import importlib.util
import re
from pathlib import Path

import click
from click.testing import CliRunner

from onnxprune.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "CLI.md"


def _make_cli_docs():
    spec = importlib.util.spec_from_file_location("make_cli_docs", ROOT / "tools" / "make_cli_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_options(args: list[str]) -> set[str]:
    """The option names (`-o`, `--output`, `--no-pro`, ...) in the Options part of `onnxprune ARGS --help`."""
    result = CliRunner().invoke(main, [*args, "--help"])
    assert result.exit_code == 0, result.output
    options = result.output.split("Options:", 1)[1].split("Commands:", 1)[0]
    names = set()
    for line in options.splitlines():
        if line.startswith("  -"):  # an option's first line; its help may wrap onto the next ones
            spec = re.split(r"\s{2,}", line.strip())[0]
            names.update(re.findall(r"(?<![\w-])--?[A-Za-z][\w-]*", spec))
    return names


def page_sections() -> dict[str, str]:
    """docs/CLI.md by command: '' for the part before the first command, else the command's name."""
    parts = re.split(r"^## `onnxprune (\w+)`$", PAGE.read_text(), flags=re.MULTILINE)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2]))}


def test_the_cli_page_is_what_the_script_writes():
    assert PAGE.read_text() == _make_cli_docs().render(), "docs/CLI.md is stale: run python tools/make_cli_docs.py"


def test_every_option_of_every_help_is_on_the_cli_page():
    sections = page_sections()
    assert set(sections) == {"", *main.commands}
    for name in ["", *main.commands]:
        options = help_options([name] if name else [])
        assert options, f"no options parsed from the --help of {name or 'onnxprune'}"
        for option in options:
            assert re.search(rf"`[^`]*(?<![\w-]){re.escape(option)}(?![\w-])[^`]*`", sections[name]), \
                f"{option} of `onnxprune {name} --help` is not in docs/CLI.md"


def test_a_new_command_and_option_appear_with_help_and_default():
    @click.group()
    def cli():
        """A tool."""

    @cli.command()
    @click.option("--speed", type=int, default=3, help="How fast | or not.")
    @click.option("--shown", type=float, default=0.5, show_default=True, help="Shown by click.")
    @click.option("--fast/--slow", default=None, help="A switch.")
    def run(speed, shown, fast):
        """Run it."""

    page = _make_cli_docs().render(cli)
    assert "## `onnxprune run`" in page and "Run it." in page and "Usage: onnxprune run [OPTIONS]" in page
    assert "| `--speed INTEGER` | How fast \\| or not. [default: 3] |" in page  # the default --help leaves out
    assert "| `--shown FLOAT` | Shown by click. [default: 0.5] |" in page  # shown once, not twice
    assert "| `--fast / --slow` | A switch. |" in page
    assert "| [`run`](#onnxprune-run) | Run it. |" in page


# -- docs/TROUBLESHOOTING.md names every refusal and every reason a group is left whole

PACKAGE = ROOT / "onnxprune"
TROUBLESHOOTING = ROOT / "docs" / "TROUBLESHOOTING.md"
REASON_CALLS = {"_opaque", "_freeze", "_fresh_frozen", "freeze"}  # analysis/groups.py: why a group stays whole


def constant_parts(node: ast.AST) -> list[str]:
    """The literal text of a message: a string, an f-string's constant parts, or a sum of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return constant_parts(node.left) + constant_parts(node.right)
    return []


def messages(path: Path) -> list[tuple[int, list[str]]]:
    """(line, literal parts) of every message a module can show a user: the OnnxPruneErrors it
    raises; in analysis/groups.py the reasons it freezes groups with; in analysis/consumers.py the
    reasons a consumer is not reconstructable (the strings it returns or records)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        text = None
        if isinstance(node, ast.Call):
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            if name == "OnnxPruneError" and node.args:
                text = node.args[0]
            elif name in REASON_CALLS and path.name == "groups.py" and len(node.args) > 1:
                text = node.args[1]
        elif path.name == "consumers.py" and isinstance(node, ast.Return):
            text = node.value
        elif path.name == "consumers.py" and isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
            text = node.value
        parts = constant_parts(text) if text is not None else []
        if parts:
            found.append((node.lineno, parts))
    return found


def flat(text: str) -> str:
    return " ".join(text.split())


def test_every_refusal_and_reason_is_on_the_troubleshooting_page():
    page = flat(TROUBLESHOOTING.read_text())
    missing, checked = [], 0
    for path in sorted(PACKAGE.rglob("*.py")):
        for line, parts in messages(path):
            longest = max((flat(p) for p in parts), key=len)
            checked += 1
            if longest and longest not in page:
                missing.append(f"{path.relative_to(ROOT)}:{line}: {longest!r}")
    assert checked > 150  # 127 refusals and the reasons when this test was written
    assert not missing, "not on docs/TROUBLESHOOTING.md:\n" + "\n".join(missing)


def test_the_message_finder_sees_fstrings_sums_and_reasons(tmp_path):
    source = tmp_path / "groups.py"
    source.write_text(
        "raise OnnxPruneError(f'{path}: not a file')\n"
        "raise OnnxPruneError('no prunable group' + (f'; {n} excluded' if n else ''))\n"
        "self._opaque(node, 'moves the channel axis')\n"
        "self._opaque(node)\n"
        "print('not a message')\n")
    assert messages(source) == [(1, [": not a file"]), (2, ["no prunable group"]), (3, ["moves the channel axis"])]


# -- links between the README and the docs lead somewhere

def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.MULTILINE | re.DOTALL)
    return {anchor(h) for h in re.findall(r"^#+ (.*)$", text, flags=re.MULTILINE)}


def test_every_relative_link_finds_its_file_and_heading():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            file, _, fragment = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and path.suffix == ".md" and fragment not in anchors(path):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_anchors_are_githubs():
    assert anchor("Dynamic shapes and `--input-shape`") == "dynamic-shapes-and---input-shape"
    assert anchor("ResNeXt-50 32x4d architecture") == "resnext-50-32x4d-architecture"
    assert anchor("`onnxprune prune`") == "onnxprune-prune"
