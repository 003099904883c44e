"""Mutation score of one module against its own unit test file alone.

    python tools/mutation.py net.sse                 # ipychat/net/sse.py vs tests/net/test_sse.py
    python tools/mutation.py map.ratelimit --tests tests/map/test_ratelimit.py --show
    python tools/mutation.py core.schema --tests tests/core/test_structured.py \
        --tests tests/core/test_schema.py      # a module whose tests are in two files
    python tools/mutation.py net.sse --only 'ipychat.net.sse.x_decode*' --show
                                               # re-check some mutants (a run's survivors)

A test suite is only as strong as the changes it notices. This runs mutmut (PyPI `mutmut`,
3.x) in a throw-away copy of the repository, so `mutants/` and mutmut's state never land
in the working tree: only `MODULE` is mutated, only its own test file runs against each
mutant (a mutant killed by some unrelated test does not count). It prints the score and,
with `--show`, the diff of every surviving mutant, which is the part to read: each
survivor is either behaviour no test pins (write the test) or an equivalent mutant (list
it in tests/mutation/README.md with why).

Needs `pip install mutmut`; takes from seconds to a few minutes per module on 2 cores.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _copy_repo(into: Path, test_files: list[Path]) -> None:
    """The package and the test files at their places under tests/, with every module of
    tests/ that is not a test file: the conftests and the helpers a test file imports
    (tests/core/hygiene_corpus.py), also from another folder (tests/conftest.py puts
    tests/engine on sys.path for redis_server.py). pytest puts the test file's folder on
    sys.path (rootdir conftest, no __init__.py), so its helpers import there."""
    shutil.copytree(
        ROOT / "ipychat", into / "ipychat", ignore=shutil.ignore_patterns("__pycache__")
    )
    for helper in (ROOT / "tests").rglob("*.py"):
        if not helper.name.startswith("test_") and "__pycache__" not in helper.parts:
            place = into / helper.relative_to(ROOT)
            place.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(helper, place)
    for test_file in test_files:
        shutil.copy2(ROOT / test_file, into / test_file)
    # Scripts some tests run or import (test_pricing.py checks the price file against
    # tools/update_prices.py): without them the unmutated run fails and nothing is checked.
    shutil.copytree(ROOT / "tools", into / "tools", ignore=shutil.ignore_patterns("__pycache__"))


def _default_test_file(stem: str) -> Path | None:
    """tests/**/test_STEM.py, when exactly one file has that name (tests mirror the package)."""
    found = sorted((ROOT / "tests").rglob(f"test_{stem}.py"))
    return found[0].relative_to(ROOT) if len(found) == 1 else None


def _config(module: str, test_files: list[Path]) -> str:
    """pyproject.toml for the copy: pytest quiet, stop at the first failure, mutmut scoped."""
    selection = ", ".join(f'"{t.as_posix()}"' for t in test_files)
    return f"""
[tool.pytest.ini_options]
addopts = "-x -q -p no:cacheprovider -p no:nbval"
markers = ["browser", "local_model", "slow"]

[tool.mutmut]
# Each mutant runs in a process forked from a server that has only collected the tests:
# forked from mutmut's own process, which ran them, a mutant hangs in the first polars call
# (polars' thread pool does not survive a fork: https://docs.pola.rs/user-guide/misc/multiprocessing/)
# and is reported as a timeout, counted as killed, whatever the tests say.
process_isolation = "forkserver"
source_paths = ["ipychat"]
only_mutate = ["ipychat/{module.replace(".", "/")}.py"]
pytest_add_cli_args_test_selection = [{selection}]
also_copy = ["tests", "tools"]
"""


def _results(work: Path) -> dict[str, str]:
    """mutant name → status, from `mutmut results --all true`."""
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    statuses: dict[str, str] = {}
    for line in out.splitlines():
        match = re.match(r"\s*(\S+):\s*(.+)$", line)
        if match:
            statuses[match.group(1)] = match.group(2).strip()
    return statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="a module of ipychat, dotted, e.g. net.sse")
    parser.add_argument(
        "--tests",
        type=Path,
        action="append",
        help="its test file (default: the one tests/**/test_MODULE.py); repeat for several",
    )
    parser.add_argument("--show", action="store_true", help="print every survivor's diff")
    parser.add_argument(
        "--only",
        action="append",
        metavar="MUTANT",
        help="run only these mutants (a name or an fnmatch pattern, as the survivors are "
        "printed; repeat for several): re-checks a run's survivors after new tests",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--fail-under",
        type=float,
        metavar="SCORE",
        help="exit 2 when the raw score (killed / all mutants, %%) is below SCORE (for CI)",
    )
    args = parser.parse_args(argv)
    source = Path("ipychat", *args.module.split(".")).with_suffix(".py")
    if not (ROOT / source).is_file():
        parser.error(f"no module {source}")
    default = _default_test_file(source.stem)
    test_files: list[Path] = args.tests or ([default] if default else [])
    if not test_files:
        parser.error(f"no single test file tests/**/test_{source.stem}.py; pass one with --tests")
    for test_file in test_files:
        if not (ROOT / test_file).is_file():
            parser.error(f"no test file {test_file}; pass one with --tests")

    work = Path(tempfile.mkdtemp(prefix=f"ipychat-mutation-{args.module}-"))
    try:
        _copy_repo(work, test_files)
        (work / "pyproject.toml").write_text(_config(args.module, test_files))
        run = subprocess.run(
            [sys.executable, "-m", "mutmut", "run", *(args.only or ())],
            cwd=work,
            check=False,
            capture_output=True,
            text=True,
        )
        statuses = _results(work)
        if args.only:
            # mutmut lists every mutant of the module; those not selected are "not checked".
            statuses = {n: s for n, s in statuses.items() if any(fnmatch(n, p) for p in args.only)}
        killed = sum(1 for s in statuses.values() if s in ("killed", "timeout"))
        timeouts = sum(1 for s in statuses.values() if s == "timeout")
        survivors = sorted(n for n, s in statuses.items() if s == "survived")
        other = {n: s for n, s in statuses.items() if s not in ("killed", "timeout", "survived")}
        total = len(statuses)
        if total and len(other) == total and all(s == "not checked" for s in other.values()):
            # mutmut runs the tests on the unmutated code first and stops if they fail.
            tail = (run.stdout + run.stderr).strip().splitlines()[-25:]
            print(f"{source}: no mutant was checked; mutmut said:", *tail, sep="\n  ")
            return 1
        score = 100.0 * killed / total if total else 0.0
        print(
            f"{source} vs {' + '.join(map(str, test_files))}: {total} mutants, {killed} killed, "
            f"{len(survivors)} survived, score {score:.1f}% ({timeouts} of the killed by a timeout)"
        )
        for name, status in sorted(other.items()):
            print(f"  {name}: {status}")
        for name in survivors:
            print(f"  survived: {name}")
            if args.show:
                diff = subprocess.run(
                    [sys.executable, "-m", "mutmut", "show", name],
                    cwd=work,
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout
                print("    " + diff.replace("\n", "\n    "))
        if not total:
            return 1
        return 2 if args.fail_under is not None and score < args.fail_under else 0
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
