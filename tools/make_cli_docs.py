"""docs/CLI.md from the click definitions: every command, its usage, every option with its help and default.

    python tools/make_cli_docs.py            # writes docs/CLI.md
    python tools/make_cli_docs.py --check    # exit status 1 if docs/CLI.md is not what it would write

The page is made from the same objects `--help` prints, so it cannot say what the code does
not do; tests/test_docs.py regenerates it in memory and fails when docs/CLI.md differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]
# click 8.3+ marks "no default" with a sentinel of its own, older versions with None
UNSET = getattr(click.core, "UNSET", None)
PAGE = ROOT / "docs" / "CLI.md"
PROG = "onnxprune"


def cell(text: str) -> str:
    """Text for a markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def describe(param: click.Parameter, ctx: click.Context) -> tuple[str, str]:
    """(names and value, help) as `--help` prints them, with the default added where `--help`
    leaves it out (options without show_default that have a non-empty default)."""
    names, text = param.get_help_record(ctx)
    default = param.get_default(ctx, call=False)
    shown = "[default:" in text
    flag = isinstance(param, click.Option) and (param.is_flag or param.count)
    if not shown and not flag and default not in (None, UNSET, (), "") and not callable(default):
        value = ", ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        text = f"{text}  [default: {value}]".strip()
    return names, text


def option_table(command: click.Command, ctx: click.Context) -> list[str]:
    """Every option `--help` lists for ``command``, --help itself included."""
    lines = ["| option | description |", "|---|---|"]
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            names, text = describe(param, ctx)
            lines.append(f"| `{cell(names)}` | {cell(text)} |")
    return lines + [""]


def command_section(name: str, command: click.Command, parent: click.Context) -> list[str]:
    ctx = click.Context(command, info_name=name, parent=parent)
    lines = [f"## `{ctx.command_path}`", "", (command.help or "").strip(), "", "```", command.get_usage(ctx), "```", ""]
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if arguments:
        lines += ["Arguments: " + ", ".join(f"`{p.make_metavar(ctx)}`" for p in arguments), ""]
    return lines + option_table(command, ctx)


def render(group: click.Group | None = None) -> str:
    """The whole page for ``group`` (default: onnxprune's command line)."""
    if group is None:
        from onnxprune.cli import main as group
    root = click.Context(group, info_name=PROG)
    lines = ["# Command line reference", "",
             "Generated from the click definitions by `python tools/make_cli_docs.py`; do not edit by hand "
             "(tests/test_docs.py fails when this page is not what the script writes). Every command also "
             f"answers `--help`, and `python -m {PROG} ...` is the same as `{PROG} ...`. How the options work "
             "together, with examples: [GUIDE.md](GUIDE.md).", "",
             "```", group.get_usage(root), "```", "",
             *option_table(group, root),
             "| command | what it does |", "|---|---|"]
    commands = group.commands  # in the order they are defined, which is the order of the page
    lines += [f"| [`{name}`](#{PROG}-{name}) | {cell(cmd.get_short_help_str(limit=200))} |"
              for name, cmd in commands.items()]
    lines.append("")
    for name, command in commands.items():
        lines += command_section(name, command, root)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only check that the page is current")
    p.add_argument("--out", type=Path, default=PAGE)
    args = p.parse_args()
    page = render()
    if args.check:
        current = args.out.read_text() if args.out.exists() else ""
        if current != page:
            sys.exit(f"{args.out} is not current: run python tools/make_cli_docs.py")
        return
    args.out.write_text(page)


if __name__ == "__main__":
    main()
