"""docs/CLI.md is what tools/make_cli_docs.py writes from the click definitions, and names every option of every `--help`."""

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
