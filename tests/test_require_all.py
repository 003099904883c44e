"""IPYCHAT_REQUIRE_ALL=1 (set by .ci/run): a skip of a test that needs a real component fails.

Each check runs pytest in a subprocess on a tiny test folder that uses this suite's own
tests/conftest.py (copied), as CI would run it, and reads the outcome of every test.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
REQUIRED = ("browser", "local_model", "redis", "dask")

CASES = textwrap.dedent(
    """
    import pytest

    @pytest.mark.browser
    def test_browser_skips():
        pytest.skip("no chromium here")

    @pytest.mark.local_model
    @pytest.mark.skipif(True, reason="no model here")
    def test_local_model_skipif():
        pass

    @pytest.fixture
    def redis_server():
        pytest.skip("no redis-server on PATH")

    @pytest.mark.redis
    def test_redis_fixture_skips(redis_server):
        pass

    @pytest.mark.dask
    def test_dask_importorskip():
        pytest.importorskip("a_module_nobody_has")

    @pytest.mark.browser
    def test_browser_runs():
        pass

    @pytest.mark.browser
    @pytest.mark.xfail(reason="a known bug", strict=True)
    def test_browser_xfail():
        raise AssertionError

    def test_ordinary_skip():
        pytest.skip("only on Windows")

    @pytest.mark.slow
    def test_slow_skip():
        pytest.skip("not today")
    """
)

MODULE_SKIP = textwrap.dedent(
    """
    import pytest

    pytestmark = pytest.mark.browser
    pytest.skip("needs jupyter-lab on PATH", allow_module_level=True)

    def test_never_seen():
        pass
    """
)

INI = "[pytest]\naddopts = -rA -p no:cacheprovider --strict-markers\nmarkers =\n" + "".join(
    f"    {name}: x\n" for name in (*REQUIRED, "slow")
)


def _pytest(tmp_path: Path, source: str, require_all: str | None) -> tuple[int, str]:
    folder = tmp_path / "suite"
    folder.mkdir(exist_ok=True)
    shutil.copy2(ROOT / "tests" / "conftest.py", folder / "conftest.py")
    (folder / "pytest.ini").write_text(INI)
    (folder / "test_cases.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "IPYCHAT_REQUIRE_ALL"}
    env["PYTHONPATH"] = str(ROOT)  # the conftest imports ipychat from this checkout
    if require_all is not None:
        env["IPYCHAT_REQUIRE_ALL"] = require_all
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "test_cases.py"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stdout + done.stderr


def _outcomes(output: str) -> dict[str, str]:
    """test name -> PASSED/FAILED/ERROR/XFAIL, from the -rA short summary (skips are
    listed there by line, not by name: they are counted with `_skipped_count`)."""
    pattern = r"^(PASSED|FAILED|ERROR|XFAIL) test_cases\.py::(\w+)"
    return {name: status for status, name in re.findall(pattern, output, re.M)}


def _skipped_count(output: str) -> int:
    match = re.search(r"(\d+) skipped", output)
    return int(match.group(1)) if match else 0


def test_required_skips_fail_under_require_all(tmp_path: Path) -> None:
    code, out = _pytest(tmp_path, CASES, "1")
    outcomes = _outcomes(out)
    # A skip in the test fails it; a skip in setup (a skipif marker, a fixture) is pytest's
    # ERROR, a failure all the same.
    for name, status in {
        "test_browser_skips": "FAILED",
        "test_local_model_skipif": "ERROR",
        "test_redis_fixture_skips": "ERROR",
        "test_dask_importorskip": "FAILED",
    }.items():
        assert outcomes.get(name) == status, (name, out)
    # Precision: what is not a skip of a required test keeps its outcome.
    assert outcomes.get("test_browser_runs") == "PASSED", out
    assert outcomes.get("test_browser_xfail") == "XFAIL", out
    assert _skipped_count(out) == 2, out  # test_ordinary_skip and test_slow_skip
    assert code == 1, out
    assert "IPYCHAT_REQUIRE_ALL=1: a skipped browser/local_model/redis/dask test fails" in out
    assert (
        "test_cases.py::test_browser_skips needs browser and was skipped (no chromium here); "
        "under IPYCHAT_REQUIRE_ALL=1 that is a failure" in out
    )
    assert "needs redis and was skipped (no redis-server on PATH)" in out
    assert "needs local_model and was skipped (no model here)" in out


@pytest.mark.parametrize("value", [None, "0", ""])
def test_without_require_all_a_skip_stays_a_skip(tmp_path: Path, value: str | None) -> None:
    code, out = _pytest(tmp_path, CASES, value)
    assert code == 0, out
    assert _skipped_count(out) == 6, out
    assert "FAILED" not in out
    assert "IPYCHAT_REQUIRE_ALL" not in out


def test_a_module_skipped_at_import_fails_under_require_all(tmp_path: Path) -> None:
    code, out = _pytest(tmp_path, MODULE_SKIP, "1")
    assert code != 0, out
    assert (
        "test_cases.py was skipped whole at import (needs jupyter-lab on PATH); "
        "under IPYCHAT_REQUIRE_ALL=1 that is a failure" in out
    )
    code, out = _pytest(tmp_path, MODULE_SKIP, None)
    assert code == pytest.ExitCode.NO_TESTS_COLLECTED and _skipped_count(out) == 1, out


def test_the_required_markers_are_registered_and_ci_requires_them() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    registered = {m.split(":")[0] for m in pyproject["tool"]["pytest"]["ini_options"]["markers"]}
    assert set(REQUIRED) <= registered
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    [line] = re.findall(r"^REQUIRED_MARKERS = (.*)$", conftest, re.M)
    assert ast.literal_eval(line) == REQUIRED
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^export IPYCHAT_REQUIRE_ALL=1$", ci, re.M), "CI must require every test"
