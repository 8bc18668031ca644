"""The package's structure: stages import only earlier stages, no cycles, one session factory, methods by registry."""

import ast
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import onnxprune
from onnxprune import methods
from onnxprune.cli import main

PACKAGE = Path(onnxprune.__file__).parent
# The data's way through the package: a module may import from its own stage or earlier ones.
STAGES = ["errors", "progress", "parallel", "memory", "graph", "analysis", "passes", "calibration", "methods", "widths"]


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts): p for p in sorted(PACKAGE.rglob("*.py"))}


def runtime_imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import that runs (not under ``if TYPE_CHECKING``), resolved."""
    tree = ast.parse(path.read_text())
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for child in node.body for n in ast.walk(child)}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module
            found.append((target, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def edges() -> dict[str, set[str]]:
    """Package module -> package modules it imports (``from . import x`` counts as importing x)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        targets = set()
        for target, names in runtime_imports(name, path):
            for candidate in [f"{target}.{n}" for n in names] + [target]:
                if candidate in known or f"{candidate}.__init__" in known:
                    targets.add(candidate if candidate in known else f"{candidate}.__init__")
        graph[name] = targets - {name}
    return graph


def stage(module: str) -> int:
    parts = module.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else len(STAGES)


def test_no_import_cycle():
    graph = edges()
    done, on_path = set(), []

    def visit(node):
        if node in on_path:
            pytest.fail("import cycle: " + " -> ".join(on_path[on_path.index(node):] + [node]))
        if node in done:
            return
        on_path.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        on_path.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_each_stage_imports_only_itself_and_earlier_stages():
    wrong = [f"{a} -> {b}" for a, targets in edges().items() for b in targets if stage(b) > stage(a)]
    assert not wrong, wrong


def test_no_private_name_is_imported_across_modules():
    wrong = [f"{name}: {target}.{n}" for name, path in modules().items()
             for target, names in runtime_imports(name, path) if target.startswith("onnxprune")
             for n in names if n.startswith("_")]
    assert not wrong, wrong


def test_every_module_says_in_its_first_line_what_it_does():
    for name, path in modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{name} has no docstring"
        first = doc.splitlines()[0]
        assert first.endswith("."), f"{name}: {first!r}"


def test_one_place_makes_session_options():
    makers = [name for name, path in modules().items() if "SessionOptions(" in path.read_text()]
    assert makers == ["onnxprune.graph.runtime"]


def test_only_the_registry_and_option_parsing_know_method_names():
    names = "|".join(methods.names())
    pattern = re.compile(rf"Method\.({names.upper()})\b|[=!]=\s*[\"']({names})[\"']|[\"']({names})[\"']\s*[=!]=")
    allowed = {"onnxprune.cli", "onnxprune.config"}
    wrong = [name for name, path in modules().items()
             if not name.startswith("onnxprune.methods") and name not in allowed and pattern.search(path.read_text())]
    assert not wrong, wrong


def test_methods_are_found_by_name_and_drive_the_cli_choices():
    assert methods.names() == ["l1", "thinet", "nu", "reap"]
    assert all(methods.get(n).name == n for n in methods.names())
    assert [m.name for m in methods.all_methods() if m.needs_data] == ["thinet", "nu", "reap"]
    option = next(p for p in main.commands["prune"].params if p.name == "method")
    assert list(option.type.choices) == methods.names()
    help_text = CliRunner().invoke(main, ["prune", "--help"]).output
    for m in methods.all_methods():
        assert f"{m.name}: " in help_text


def test_an_unknown_method_is_a_clear_error():
    with pytest.raises(onnxprune.OnnxPruneError, match="no such method"):
        methods.get("magnitude")
