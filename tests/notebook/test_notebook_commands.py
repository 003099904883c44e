"""Shell commands in the notebooks run the kernel's own Python, however the kernel started.

A kernel from a venv that was never activated, or a conda kernel started from another
environment, has some other `python` (or none) first on PATH; `!python -m pytest` then runs
that one. The notebooks use `!"{sys.executable}" -m ...` instead.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# A shell escape that starts a Python tool by its PATH name.
BARE = re.compile(r"^\s*!\s*(python3?|pip3?|pytest|jupyter|ipython)\b", re.M)


def _code_cells(path: Path) -> list[str]:
    cells = json.loads(path.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_shell_escape_runs_python_by_its_path_name(path: Path) -> None:
    offending = [m.group(0).strip() for cell in _code_cells(path) for m in BARE.finditer(cell)]
    assert offending == [], f'{path.name}: use !"{{sys.executable}}" -m ... instead of {offending}'


@pytest.mark.slow
def test_testing_notebook_passes_with_another_python_first_on_path(tmp_path: Path) -> None:
    # `python` on PATH is a stranger: it fails whatever it is asked. The kernel (started by
    # nbval from this interpreter) must not call it.
    stranger = tmp_path / "bin" / "python"
    stranger.parent.mkdir()
    stranger.write_text("#!/bin/sh\necho 'not the kernel python' >&2\nexit 3\n")
    stranger.chmod(0o755)
    env = dict(os.environ, PATH=f"{stranger.parent}{os.pathsep}{os.environ['PATH']}")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax",
         str(ROOT / "notebooks" / "testing.ipynb")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "not the kernel python" not in done.stdout
