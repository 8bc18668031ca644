"""Mutation testing of one module: seed one small bug at a time, run the tests that cover the
module, and list the bugs (mutants) that no test caught (survivors).

    python tools/mutation.py onnxprune/analysis/cost.py tests/test_cost.py tests/test_prune.py
    python tools/mutation.py onnxprune/widths/budget.py tests/test_prune.py -k "budget or kept_count"
    python tools/mutation.py MODULE TESTS... [--json results.json] [--lines 40-80] [--list]

Each mutant is one standard operator mutation applied to the module's syntax tree: an
arithmetic operator swapped (+ -, * /, // /, ** *), a comparison flipped or loosened
(< <=, > >=, == !=, in / not in, is / is not), and/or swapped, a `not` dropped, an integer
constant off by one, a float constant doubled, True/False swapped, a `return value` replaced
by `return None`, a slice bound dropped. Docstrings, strings and annotations are left alone.
The mutated module is written into a private copy of the repository (the working tree is
never touched) and the given tests run there with `pytest -x`; a mutant is killed when they
fail or run past 3x the clean run's time (+ 30 s), and survives when they pass.

It is a small stand-in for mutmut or cosmic-ray (not tried here: a script with no dependency
and no configuration was quicker to make reliable on a machine shared by several checkouts and
one editable install): the same kind of operators, one mutant per run, but no coverage-based
test selection, so give it the test files that cover the module. Not part of CI: a module takes
minutes to an hour on 2 cores (docs/TESTING.md has the results).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SWAP_BINOP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
              ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.Mod: ast.FloorDiv}
SWAP_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}


@dataclass
class Mutant:
    index: int
    line: int
    what: str
    status: str = ""  # killed, survived, timeout
    seconds: float = 0.0


def _skipped(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, f-strings and their parts."""
    skip: set[int] = set()

    def all_ids(node):
        return {id(n) for n in ast.walk(node)}

    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                skip |= all_ids(body[0])
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for arg in [*node.args.args, *node.args.kwonlyargs, *node.args.posonlyargs]:
                if arg.annotation is not None:
                    skip |= all_ids(arg.annotation)
            if node.returns is not None:
                skip |= all_ids(node.returns)
        if isinstance(node, ast.AnnAssign):
            skip |= all_ids(node.annotation)
        if isinstance(node, ast.JoinedStr):
            skip |= all_ids(node)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
            pass  # module constants are mutated like any other (a wrong constant is a bug too)
    return skip


def mutations(tree: ast.Module) -> list[tuple[int, str, callable]]:
    """(line, description, apply) for every mutation point; apply(node) mutates a copy's node."""
    skip = _skipped(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.BinOp) and type(node.op) in SWAP_BINOP:
            new = SWAP_BINOP[type(node.op)]
            found.append((node, line, f"{type(node.op).__name__} -> {new.__name__}",
                          lambda n, new=new: setattr(n, "op", new())))
        elif isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                if type(op) in SWAP_CMP:
                    new = SWAP_CMP[type(op)]

                    def apply(n, i=i, new=new):
                        n.ops[i] = new()
                    found.append((node, line, f"{type(op).__name__} -> {new.__name__}", apply))
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            found.append((node, line, f"{type(node.op).__name__} -> {new.__name__}",
                          lambda n, new=new: setattr(n, "op", new())))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            found.append((node, line, "not x -> x", lambda n: setattr(n, "op", ast.UAdd())))
        elif isinstance(node, ast.Constant) and not isinstance(node.value, str):
            v = node.value
            if isinstance(v, bool):
                found.append((node, line, f"{v} -> {not v}", lambda n: setattr(n, "value", not n.value)))
            elif isinstance(v, int):
                found.append((node, line, f"{v} -> {v + 1}", lambda n: setattr(n, "value", n.value + 1)))
            elif isinstance(v, float):
                new = 1.0 if v == 0 else 2 * v
                found.append((node, line, f"{v} -> {new}", lambda n, new=new: setattr(n, "value", new)))
        elif isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            found.append((node, line, "return x -> return None", lambda n: setattr(n, "value", None)))
        elif isinstance(node, ast.Slice):
            for part in ("lower", "upper"):
                if getattr(node, part) is not None:
                    found.append((node, line, f"slice {part} bound dropped",
                                  lambda n, part=part: setattr(n, part, None)))
    order = {id(n): i for i, n in enumerate(ast.walk(tree))}
    return [(order[id(n)], line, what, apply) for n, line, what, apply in found]


def mutated_source(tree: ast.Module, position: int, apply) -> str:
    twin = copy.deepcopy(tree)
    node = list(ast.walk(twin))[position]
    apply(node)
    return ast.unparse(ast.fix_missing_locations(twin))


def run_tests(workdir: Path, tests: list[str], timeout: float) -> tuple[str, float]:
    env = dict(os.environ, PYTHONPATH=str(workdir), PYTHONDONTWRITEBYTECODE="1")
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                              cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.monotonic() - start
    return ("survived" if proc.returncode == 0 else "killed"), time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", help="the module to mutate, e.g. onnxprune/analysis/cost.py")
    parser.add_argument("tests", nargs="+", help="pytest arguments: test files, -k EXPR, ...")
    parser.add_argument("--json", type=Path, help="write every mutant and its fate here")
    parser.add_argument("--lines", help="only mutants on lines A-B")
    parser.add_argument("--list", action="store_true", help="list the mutants and stop")
    args, extra = parser.parse_known_args()  # -k EXPR and other pytest options
    args.tests += extra
    source = (ROOT / args.module).read_text()
    tree = ast.parse(source)
    points = mutations(tree)
    if args.lines:
        a, b = (int(x) for x in args.lines.split("-"))
        points = [p for p in points if a <= p[1] <= b]
    points.sort(key=lambda p: p[1])
    mutants = [Mutant(i, line, what) for i, (_, line, what, _) in enumerate(points)]
    if args.list:
        for m in mutants:
            print(f"{args.module}:{m.line}: {m.what}")
        return
    with tempfile.TemporaryDirectory(prefix="onnxprune-mutation-") as tmp:
        work = Path(tmp)
        for part in ("onnxprune", "tests", "models", "pyproject.toml", "README.md"):
            src = ROOT / part
            if src.is_dir():
                if part == "models":
                    (work / part).symlink_to(src)
                else:
                    shutil.copytree(src, work / part, ignore=shutil.ignore_patterns("__pycache__"))
            elif src.exists():
                shutil.copy2(src, work / part)
        target = work / args.module
        status, clean = run_tests(work, args.tests, timeout=3600)
        if status != "survived":
            sys.exit(f"the tests fail without any mutant ({status}); fix them first")
        timeout = 3 * clean + 30
        print(f"{len(mutants)} mutants of {args.module}; clean run {clean:.1f} s", flush=True)
        for m, (position, _, _, apply) in zip(mutants, points):
            target.write_text(mutated_source(tree, position, apply))
            m.status, m.seconds = run_tests(work, args.tests, timeout)
            print(f"{m.status:8s} {args.module}:{m.line}: {m.what} ({m.seconds:.1f} s)", flush=True)
        target.write_text(source)
    killed = sum(m.status != "survived" for m in mutants)
    print(f"{args.module}: {len(mutants)} mutants, {killed} killed, {len(mutants) - killed} survived "
          f"({100 * killed / max(1, len(mutants)):.0f}%)")
    if args.json:
        args.json.write_text(json.dumps({"module": args.module, "tests": args.tests,
                                         "mutants": [asdict(m) for m in mutants]}, indent=1))


if __name__ == "__main__":
    main()
