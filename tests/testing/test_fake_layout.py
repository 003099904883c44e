"""The shape of `ipychat.testing` (issue 16): imports flow one way inside it, it uses only
ipychat's public API, no private name crosses a module, and loading its pytest plugin (which
pytest does in every run of every project that installed ipychat) stays cheap."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import ipychat.testing

PACKAGE = Path(ipychat.testing.__file__).parent
# Bottom to top: a module may import only those before it (and `__init__` only lazily).
ORDER = [
    "http",
    "images",
    "rules",
    "faults",
    "records",
    "flavours",
    "options",
    "batchapi",
    "server",
    "process",
    "fake",
    "cli",
    "__main__",
    "pytest_plugin",
]
# What of the product the testing wing may import: ipychat's public API.
PUBLIC = {"ipychat", "ipychat.errors"}


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in a file, at any depth (lazy ones included)."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def test_every_module_has_its_place_in_the_order() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == set(ORDER)


def test_imports_flow_down_and_only_through_the_public_api() -> None:
    wrong: list[str] = []
    for path in sorted(PACKAGE.glob("*.py")):
        here = path.stem
        for module, names in imports(path):
            if module == "ipychat.testing":  # `from ipychat.testing import rules`
                targets = [f"ipychat.testing.{n}" for n in names if n in ORDER]
                if len(targets) != len(names) and here != "__init__":
                    wrong.append(f"{here}: imports the package's re-exports {names}")
            else:
                targets = [module]
            for target in targets:
                if target.startswith("ipychat.testing."):
                    other = target.rsplit(".", 1)[1]
                    if here != "__init__" and ORDER.index(other) >= ORDER.index(here):
                        wrong.append(f"{here} imports {other}, which is above it")
                elif target.startswith("ipychat") and target not in PUBLIC:
                    wrong.append(f"{here} imports {target}, not ipychat's public API")
    assert wrong == []


def test_no_private_name_crosses_a_module() -> None:
    crossing = [
        f"{path.stem}: from {module} import {name}"
        for path in sorted(PACKAGE.glob("*.py"))
        for module, names in imports(path)
        if module.startswith("ipychat")
        for name in names
        if name.startswith("_")
    ]
    assert crossing == []


def test_the_public_names_are_unchanged_and_load_on_first_use() -> None:
    assert ipychat.testing.__all__ == [
        "BatchOptions",
        "FakeOpenAIServer",
        "Fault",
        "FaultSpec",
        "RecordedRequest",
        "ServerStats",
        "approx_tokens",
        "main",
    ]
    from ipychat.testing import FakeOpenAIServer, Fault
    from ipychat.testing.fake import FakeOpenAIServer as Home
    from ipychat.testing.faults import Fault as FaultHome

    assert FakeOpenAIServer is Home and Fault is FaultHome
    assert set(ipychat.testing.__all__) <= set(dir(ipychat.testing))
    try:
        ipychat.testing.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


def test_loading_the_pytest_plugin_loads_no_server() -> None:
    code = (
        "import json, sys; import ipychat.testing.pytest_plugin; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    root = str(PACKAGE.parent.parent)
    loaded = json.loads(
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            timeout=60,
        ).stdout
    )
    heavy = [
        m
        for m in loaded
        if m.split(".")[0] in ("httpx", "pandas", "aiohttp", "polars", "IPython")
        or (
            m.startswith("ipychat.")
            and m not in ("ipychat.testing", "ipychat.testing.pytest_plugin")
        )
    ]
    assert heavy == []
