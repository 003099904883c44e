"""The README's commands, binder/ and .ci/run agree with each other and with pyproject."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", quickstart, re.S)


def test_readme_quickstart_has_exactly_two_commands() -> None:
    install_and_run, install_and_test = _readme_commands()
    assert (
        'pip install -e ".[local]"' in install_and_run
        and "notebooks/quickstart.ipynb" in install_and_run
    )
    assert (
        'pip install -e ".[test,local]"' in install_and_test
        and "python -m pytest" in install_and_test
    )


def test_binder_installs_the_package_and_extra_the_readme_names() -> None:
    install_and_run = _readme_commands()[0]
    extra = re.search(r'pip install -e "(\.\[[a-z,]+\])"', install_and_run).group(1)
    post_build = (ROOT / "binder" / "postBuild").read_text()
    assert f'pip install --no-cache-dir -e "{extra}"' in post_build
    assert (ROOT / "binder" / "postBuild").stat().st_mode & 0o111, "postBuild must be executable"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for name in extra.strip(".[]").split(","):
        assert name in extras


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    install_and_test = _readme_commands()[1]
    install, test = (part.strip() for part in install_and_test.split("&&"))
    assert install.replace("pip install", "python -m pip install -q") in ci
    assert re.search(rf"^{re.escape(test)}\b", ci, re.M), "CI must call the README's test command"


def test_readme_testing_example_runs(tmp_path: Path) -> None:
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing your own notebooks", 1)[1].split("\n## ", 1)[0]
    (example,) = re.findall(r"```python\n(.*?)\n```", section, re.S)
    env = {"PATH": "/usr/bin:/bin", "IPYCHAT_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", example], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
