"""The distributions people install: the wheel and sdist that `python -m build` makes.

Built offline (`--no-isolation`: the backend, hatchling, comes from the test extra, and a
proxy at a closed port plus PIP_NO_INDEX make any download fail instead of pass), then
read file by file: the encodings, the price data, `py.typed` and the licence must be in
both; nothing from a test run, a cache or a model may be in the wheel. Last, the wheel goes
into a fresh venv (`--system-site-packages` provides the dependencies, so nothing is
fetched) and must import and count tokens with every network path closed.
"""

from __future__ import annotations

import email.parser
import os
import re
import socket
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = ("data/cl100k_base.tiktoken", "data/o200k_base.tiktoken", "data/prices.json")
# What may sit in the wheel's ipychat/ folder: modules and the data above, nothing else.
WHEEL_SUFFIXES = {".py", ".typed", ".tiktoken", ".json"}
# What a test run, a tool or a local model leaves behind; none of it belongs in a distribution.
LEFTOVERS = re.compile(
    r"(^|/)(__pycache__|\.pytest_cache|\.mypy_cache|\.ruff_cache|\.ipynb_checkpoints|"
    r"\.benchmarks|artifacts|mutants|\.venv|venv|build|dist)(/|$)"
    r"|\.(pyc|pyo|gguf|bin|safetensors|pt|onnx|log|sqlite|db)$"
)
MAX_FILE_BYTES = 8 * 2**20  # the largest real file, o200k_base.tiktoken, is 3.6 MB


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _offline_env(tmp: Path) -> dict[str, str]:
    """This environment with every way out closed: proxies at a closed loopback port, pip
    without an index, tiktoken's download cache empty, no PYTHONPATH (so the code under
    test is the installed copy, not this checkout)."""
    closed = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "NO_PROXY", "no_proxy")}
    tiktoken_cache = tmp / "tiktoken-cache"
    tiktoken_cache.mkdir(exist_ok=True)
    env.update(
        HTTP_PROXY=closed,
        HTTPS_PROXY=closed,
        ALL_PROXY=closed,
        http_proxy=closed,
        https_proxy=closed,
        all_proxy=closed,
        PIP_NO_INDEX="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        TIKTOKEN_CACHE_DIR=str(tiktoken_cache),
        DATA_GYM_CACHE_DIR=str(tiktoken_cache),
        IPYCHAT_CACHE_DIR=str(tmp / "ipychat-cache"),
        HOME=str(tmp / "home"),
    )
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> str:
    done = subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _source_version() -> str:
    text = (ROOT / "ipychat" / "__init__.py").read_text()
    match = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    assert match, "ipychat/__init__.py must set __version__ to a string literal"
    return match.group(1)


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """(wheel, sdist), built as a release would: the sdist, then the wheel from the sdist."""
    tmp = tmp_path_factory.mktemp("build")
    out = tmp / "dist"
    env = _offline_env(tmp)
    _run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)], env, tmp
    )
    version = _source_version()
    wheel = out / f"ipychat-{version}-py3-none-any.whl"
    sdist = out / f"ipychat-{version}.tar.gz"
    assert sorted(p.name for p in out.iterdir()) == sorted([wheel.name, sdist.name])
    yield wheel, sdist


def _wheel_files(wheel: Path) -> dict[str, int]:
    with zipfile.ZipFile(wheel) as z:
        return {i.filename: i.file_size for i in z.infolist() if not i.is_dir()}


def _sdist_files(sdist: Path) -> dict[str, int]:
    with tarfile.open(sdist) as t:
        prefix = sdist.name.removesuffix(".tar.gz") + "/"
        return {m.name.removeprefix(prefix): m.size for m in t.getmembers() if m.isfile()}


def _metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def test_the_wheel_carries_the_data_the_types_and_the_licence(dists: tuple[Path, Path]) -> None:
    wheel, _ = dists
    files = _wheel_files(wheel)
    version = _source_version()
    info = f"ipychat-{version}.dist-info"
    # every module of the source tree, so a new subpackage cannot be left out of the wheel
    modules = [p.relative_to(ROOT / "ipychat").as_posix() for p in (ROOT / "ipychat").rglob("*.py")]
    assert "testing/pytest_plugin.py" in modules and "core/tokens.py" in modules
    for name in (*PACKAGE_DATA, "py.typed", *modules):
        assert f"ipychat/{name}" in files, f"ipychat/{name} is missing from the wheel"
    assert f"{info}/licenses/LICENSE" in files
    with zipfile.ZipFile(wheel) as z:
        assert z.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        for name in PACKAGE_DATA:  # the very bytes tokens.py checks by sha256
            assert z.read(f"ipychat/{name}") == (ROOT / "ipychat" / name).read_bytes()
        meta = _metadata(z.read(f"{info}/METADATA").decode())
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    assert meta["Version"] == version
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta.get_all("License-File") == ["LICENSE"]
    classifiers = set(meta.get_all("Classifier"))
    assert {"Framework :: Jupyter", "Framework :: IPython", "Typing :: Typed"} <= classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # PEP 639: the expression
    assert meta.get_all("Project-URL")
    [transport] = [r for r in meta.get_all("Requires-Dist") if r.startswith("httpx-aiohttp")]
    assert "<" in transport, "httpx-aiohttp needs an upper bound (_transport uses its privates)"
    assert "ipychat = ipychat.testing.pytest_plugin" in entry_points


def test_the_wheel_holds_nothing_but_the_package(dists: tuple[Path, Path]) -> None:
    wheel, _ = dists
    files = _wheel_files(wheel)
    package = [f for f in files if not f.startswith("ipychat-")]
    assert package and all(f.startswith("ipychat/") for f in package), package
    stray = [f for f in package if PurePosixPath(f).suffix not in WHEEL_SUFFIXES]
    assert stray == [], f"unexpected files in the wheel: {stray}"
    assert [f for f in files if LEFTOVERS.search(f)] == []
    assert [f for f in package if f.startswith(("ipychat/tests/", "tests/"))] == []
    big = {f: n for f, n in files.items() if n > MAX_FILE_BYTES}
    assert big == {}, f"files too large for source or data (weights?): {big}"


def test_the_sdist_carries_sources_tests_data_and_licence(dists: tuple[Path, Path]) -> None:
    _, sdist = dists
    files = _sdist_files(sdist)
    for name in (*PACKAGE_DATA, "py.typed"):
        assert f"ipychat/{name}" in files, f"ipychat/{name} is missing from the sdist"
    # tools/ too: the tests load tools/update_prices.py and tools/check_structure.py
    for name in ("LICENSE", "README.md", "CHANGELOG.md", "pyproject.toml", "tests/conftest.py",
                 "tools/update_prices.py", "tools/check_structure.py"):  # fmt: skip
        assert name in files, f"{name} is missing from the sdist"
    assert [f for f in files if LEFTOVERS.search(f)] == []
    with tarfile.open(sdist) as t:
        prefix = sdist.name.removesuffix(".tar.gz")
        pkg_info = t.extractfile(f"{prefix}/PKG-INFO")
        assert pkg_info is not None
        meta = _metadata(pkg_info.read().decode())
    assert meta["License-Expression"] == "BSD-3-Clause"
    assert meta["Version"] == _source_version()


# Run inside the venv: any socket to anywhere but a local pipe fails the check, and the
# proxies point at a closed port, so a download attempt cannot pass unseen.
OFFLINE_CHECK = textwrap.dedent(
    """
    import os, socket, sys

    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access in an offline check")

    socket.socket.connect = socket.socket.connect_ex = refuse
    socket.create_connection = socket.getaddrinfo = refuse

    import importlib.metadata, importlib.resources
    import ipychat
    from ipychat.core import pricing

    from ipychat.core import tokens
    assert ipychat.__file__.startswith(sys.prefix), (ipychat.__file__, sys.prefix)
    assert importlib.metadata.version("ipychat") == ipychat.__version__
    assert importlib.resources.files("ipychat").joinpath("py.typed").is_file()
    assert tokens.count_text("hello world", "gpt-4o") == 2  # o200k_base
    assert tokens.count_text("hello world", "gpt-4") == 2  # cl100k_base
    messages = [{"role": "user", "content": "hello world"}]
    assert tokens.count_messages(messages, "gpt-4o-mini").tokens == 3 + 1 + 2 + 3
    assert pricing.default_table().lookup("gpt-4o-mini") is not None
    import ipychat.notebook.magics, ipychat.session, ipychat.notebook.widget  # the extension's modules load
    assert attempts == [], attempts
    assert os.listdir(os.environ["TIKTOKEN_CACHE_DIR"]) == []
    print("offline ok", ipychat.__version__)
    """
)


def test_the_wheel_installs_in_a_fresh_venv_and_counts_tokens_offline(
    dists: tuple[Path, Path], tmp_path: Path
) -> None:
    wheel, _ = dists
    env = _offline_env(tmp_path)
    venv = tmp_path / "venv"
    # The venv sees this environment's packages (pip and the dependencies) but gets its
    # own copy of ipychat, which shadows any editable install of this checkout.
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
         env, tmp_path)  # fmt: skip
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
         env, tmp_path)  # fmt: skip
    out = _run([str(python), "-I", "-c", OFFLINE_CHECK], env, tmp_path, timeout=120)
    assert out.strip() == f"offline ok {_source_version()}"
