"""Mutation testing of the core modules with mutmut (the `mutation` extra), one module or all.

    pip install -e ".[mutation]"
    python tools/mutation.py                      # all modules, in the order below
    python tools/mutation.py least_squares cost   # some of them (short names or paths)
    python tools/mutation.py --table              # only print the table of the last runs
    python tools/mutation.py --survivors cost     # the table, then each survivor's diff
    python tools/mutation.py --rerun-survivors cost   # the survivors (and untested) again, after new tests
    python tools/mutation.py --sample 60 groups   # a seeded random 60 of the module's mutants not run yet
    python tools/mutation.py --functions staircase,predict latency   # all the mutants of some functions
    python tools/mutation.py --try MUTANT tests/test_cost.py -k macs   # tests against one mutant

mutmut's configuration is `[tool.mutmut]` in pyproject.toml: the modules it mutates and the
fast test files it may run, which this script narrows per module (MODULES). mutmut copies the
tree into mutants/ (ignored by git), writes every mutant of a function next to the original
behind a trampoline, runs the selected tests once to record which tests reach which function,
and then, for each mutant, runs only those tests (fastest first, stopping at the first
failure). A mutant is killed when they fail or pass their time limit, and survives when they
pass. mutmut keeps its verdicts only while the test selection stays the same (another module's
run changes it), so this script merges each run's verdicts into mutants/mutation-results.json,
which the table reads: running a module again reruns all its mutants, --rerun-survivors only its
survivors and the mutants no test reached, --sample N a seeded random N of those not run yet. Not part of CI (hours on two cores for all modules); docs/TESTING.md has the results
and the reasons for the survivors.

This script only drives mutmut: `mutmut run --max-children N "onnxprune.analysis.cost.*"` per
module, in a child process with mutmut's configuration narrowed to the module and its tests
(with CI=1 and HYPOTHESIS_PROFILE=mutation: hypothesis derandomised as in CI, failing examples
not shrunk), then folds mutmut's record of the module (mutants/<module>.meta) into the results.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# short name -> (module, the fast test files that cover it), in the order they are run
MODULES = {
    "least_squares": ("onnxprune/methods/least_squares.py",
                      ["tests/test_selection.py", "tests/test_copies.py", "tests/test_sequential.py"]),
    "budget": ("onnxprune/widths/budget.py", ["tests/test_prune.py", "tests/test_cost.py"]),
    "cost": ("onnxprune/analysis/cost.py", ["tests/test_cost.py", "tests/test_prune.py"]),
    "groups": ("onnxprune/analysis/groups.py",
               ["tests/test_groups.py", "tests/test_surgery.py", "tests/test_prune.py", "tests/test_cost.py",
                "tests/test_transformers.py"]),
    "surgery": ("onnxprune/passes/surgery.py", ["tests/test_surgery.py", "tests/test_prune.py", "tests/test_cost.py"]),
    "pro": ("onnxprune/widths/pro.py", ["tests/test_pro.py"]),
    "normalize": ("onnxprune/passes/normalize.py",
                  ["tests/test_normalize.py", "tests/test_groups.py", "tests/test_surgery.py", "tests/test_prune.py"]),
    "data": ("onnxprune/data.py", ["tests/test_data.py"]),
    "scores": ("onnxprune/methods/scores.py", ["tests/test_selection.py", "tests/test_copies.py", "tests/test_sequential.py"]),
    "reap": ("onnxprune/methods/reap.py", ["tests/test_selection.py", "tests/test_copies.py", "tests/test_sequential.py"]),
    "latency": ("onnxprune/widths/latency.py", ["tests/test_latency_numbers.py", "tests/test_latency.py"]),
    "variants": ("onnxprune/widths/variants.py", ["tests/test_variants.py"]),
}
RESULTS = ROOT / "mutants" / "mutation-results.json"  # module -> mutant -> mutmut exit code, merged over runs

# mutmut's exit-code classes (mutmut.stats.status_by_exit_code), folded into four columns
STATUS = {1: "killed", 3: "killed", 0: "survived", 36: "timeout", 24: "timeout", -24: "timeout",
          152: "timeout", 255: "timeout", 5: "no tests", 33: "no tests", None: "not run"}


def module_name(name: str) -> str:
    for short, (path, _) in MODULES.items():
        if name in (short, path):
            return short
    raise SystemExit(f"unknown module {name!r}: one of {', '.join(MODULES)} (or their paths)")


def mutant_glob(path: str) -> str:
    return path[: -len(".py")].replace("/", ".") + ".*"


def function_globs(path: str, functions: list[str]) -> list[str]:
    """mutmut's names for the mutants of these functions or methods of the module: x_f__mutmut_3
    for a function, xǁClassǁf__mutmut_3 for a method."""
    return [f"{mutant_glob(path)[:-1]}*[_ǁ]{f}__mutmut_*" for f in functions]


def load() -> dict[str, dict[str, int | None]]:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def results(short: str) -> dict[str, str]:
    """Mutant name -> status, merged over this module's runs (empty before its first run)."""
    return {name: STATUS.get(code, "suspicious") for name, code in load().get(short, {}).items()}


def merge(short: str) -> None:
    """Fold mutmut's record of the module into RESULTS: a verdict replaces the previous one,
    a mutant mutmut did not run this time keeps its previous verdict."""
    path = MODULES[short][0]
    codes = json.loads((ROOT / "mutants" / (path + ".meta")).read_text())["exit_code_by_key"]
    everything = load()
    merged = everything.get(short, {})
    merged = {name: (code if code is not None else merged.get(name)) for name, code in codes.items()}
    everything[short] = merged
    RESULTS.write_text(json.dumps(everything, indent=1, sort_keys=True))


def table(shorts: list[str]) -> str:
    rows = ["| module | mutants | killed | timeout | survived | no tests | not run | killed % |",
            "|---|---|---|---|---|---|---|---|"]
    for short in shorts:
        count = Counter(results(short).values())
        total = sum(count.values())
        caught = count["killed"] + count["timeout"]
        tested = total - count["no tests"] - count["not run"]
        share = f"{100 * caught / tested:.0f}%" if tested else "-"
        rows.append(f"| {MODULES[short][0].removeprefix('onnxprune/')} | {total} | {count['killed']} | "
                    f"{count['timeout']} | {count['survived']} | {count['no tests']} | {count['not run']} | {share} |")
    return "\n".join(rows)


def run_one(short: str, max_children: int, names: list[str], sample: int = 0) -> int:
    """`mutmut run` on one module with its own tests (a child process: mutmut keeps global state)."""
    copied = ROOT / "mutants" / MODULES[short][0]
    if copied.exists() and "__mutmut_" not in copied.read_text():
        copied.unlink()  # copied unmutated by a run of another module, with a newer mtime: mutmut
        # would take it as already mutated and find no mutant
    # hypothesis derandomised as in CI, and failing examples not shrunk (tests/conftest.py)
    env = {**os.environ, "CI": "1", "HYPOTHESIS_PROFILE": "mutation"}
    command = [sys.executable, __file__, "--_mutmut", short, "--max-children", str(max_children),
               "--sample", str(sample), *names]
    what = f"{sample} sampled mutants" if sample else ' '.join(names) or mutant_glob(MODULES[short][0])
    print(f"+ mutmut run --max-children {max_children} {what}"
          f"  (only_mutate {MODULES[short][0]}, tests {' '.join(MODULES[short][1])})", flush=True)
    code = subprocess.call(command, cwd=ROOT, env=env)
    if code == 0:
        merge(short)
    return code


def mutmut_in_process(short: str, max_children: int, names: list[str], sample: int = 0) -> int:
    from mutmut.__main__ import cli
    from mutmut.configuration import config

    path, tests = MODULES[short]
    os.chdir(ROOT)
    cfg = config()  # [tool.mutmut] of pyproject.toml, narrowed to this module and its tests
    cfg.only_mutate = [path]
    cfg.pytest_add_cli_args_test_selection = list(tests)
    if sample:
        names = sampled(short, sample)
    return cli(["run", "--max-children", str(max_children), *(names or [mutant_glob(path)])],
               standalone_mode=False) or 0


def sampled(short: str, n: int, seed: int = 0) -> list[str]:
    """A seeded random n of the module's mutants that have no verdict yet: mutmut writes the
    mutants first (the same step `mutmut run` starts with, skipped there when nothing changed),
    so that their names can be drawn before any is run. An unbiased sample estimates the share
    killed of a module too large to run whole (groups: 1,875 mutants) to within a few points."""
    import random

    from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants, setup_source_paths

    copy_src_dir()
    copy_also_copy_files()
    setup_source_paths()
    create_mutants(1)
    everything = json.loads((ROOT / "mutants" / (MODULES[short][0] + ".meta")).read_text())["exit_code_by_key"]
    done = results(short)
    pending = sorted(name for name in everything if done.get(name, "not run") == "not run")
    return sorted(random.Random(seed).sample(pending, min(n, len(pending))))


def try_mutant(name: str, pytest_args: list[str]) -> int:
    """Run pytest on the current tests with one mutant active (mutmut's trampolines read
    MUTANT_UNDER_TEST): the check that a new test fails on the mutant it was written for."""
    shutil.copytree(ROOT / "tests", ROOT / "mutants" / "tests", dirs_exist_ok=True)
    env = {**os.environ, "CI": "1", "HYPOTHESIS_PROFILE": "mutation", "MUTANT_UNDER_TEST": name}
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *pytest_args],
                           cwd=ROOT / "mutants", env=env)
    print(f"{name}: {'killed' if code == 1 else 'survived' if code == 0 else f'pytest exit {code}'}")
    return 0 if code in (0, 1) else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"short names ({', '.join(MODULES)}) or paths; default all")
    parser.add_argument("--max-children", type=int, default=2, help="mutants run in parallel (default 2)")
    parser.add_argument("--sample", type=int, default=0, metavar="N",
                        help="run a seeded random N of the module's mutants not run yet (not all of them)")
    parser.add_argument("--functions", metavar="F,G",
                        help="run all the mutants of these functions or methods of the module (run before or not)")
    parser.add_argument("--table", action="store_true", help="run nothing, print the table of the last runs")
    parser.add_argument("--rerun-survivors", action="store_true",
                        help="run only the module's survivors of earlier runs again, and the mutants no test "
                             "reached (after new tests)")
    parser.add_argument("--survivors", action="store_true", help="after the table, show each survivor's diff")
    parser.add_argument("--try", dest="try_", metavar="MUTANT",
                        help="(first) run the pytest arguments that follow against this one mutant")
    parser.add_argument("--_mutmut", help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--try"] and len(argv) > 1:
        return try_mutant(argv[1], argv[2:])
    args, rest = parser.parse_known_args(argv)
    if args._mutmut:
        return mutmut_in_process(args._mutmut, args.max_children, args.modules + rest, args.sample)
    shorts = [module_name(m) for m in args.modules] or list(MODULES)
    if not args.table:
        for short in shorts:
            # after new tests: the survivors, and the mutants no test reached before
            names = (sorted(n for n, s in results(short).items() if s in ("survived", "no tests"))
                     if args.rerun_survivors else [])
            if args.rerun_survivors and not names:
                continue
            if args.functions:
                names = function_globs(MODULES[short][0], args.functions.split(","))
            # record again which tests reach which function: the tests may have changed, and mutmut
            # records only the functions of the module it mutates, but reuses its record for the
            # next module when their test files are the same (least_squares after reap found no
            # test for any of its mutants)
            (ROOT / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
            code = run_one(short, args.max_children, names, args.sample)
            if code != 0:
                print(f"mutmut failed on {short} (exit {code})", file=sys.stderr)
                return code
    print(table(shorts))
    if args.survivors:
        for short in shorts:
            for name, status in sorted(results(short).items()):
                if status == "survived":
                    subprocess.call([sys.executable, "-m", "mutmut", "show", name], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
