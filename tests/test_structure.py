"""The structure rules of issue 16 (tools/check_structure.py, run by .ci/run): the repository
keeps them, and the checker finds each kind of offence (so a green run means something)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_structure", ROOT / "tools" / "check_structure.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_structure", module)
    spec.loader.exec_module(module)
    return module


def test_the_repository_keeps_the_rules_with_todays_allow_list() -> None:
    assert _checker().check() == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "ipychat" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_each_kind_of_offence_is_found(tmp_path: Path) -> None:
    check = _checker()
    long_body = "".join(f"    x{i} = {i}\n" for i in range(60))
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "big.py": "x = 1\n" * 501,
            "ok.py": "x = 1\n" * 500,  # at the limits: not reported
            "ok_function.py": "def f():\n" + "    pass\n" * 59,
            "funcs.py": f"class A:\n    def long(self):\n{long_body.replace('    ', '        ')}",
            "init.py": "class B:\n    def __init__(self, a, b, c, d, e, f, g, h, *, i): ...\n",
            "init_ok.py": "class C:\n    def __init__(self, a, b, c, d, e, f, g, *rest): ...\n",
            "user.py": (
                "from ipychat.funcs import _hidden, public, __version__\n"
                "from os import _exit\n"
                "from ipychat.user import _mine\n"
            ),
        },
    )
    found = check.check(root, frozenset())
    keys = sorted(line.split(": ", 1)[0] for line in found)
    assert keys == [
        "constructor ipychat/init.py:B.__init__",
        "function ipychat/funcs.py:A.long",
        "module ipychat/big.py",
        "private ipychat/user.py:ipychat.funcs._hidden",
    ]


def test_an_allowed_offence_passes_and_a_stale_entry_is_reported(tmp_path: Path) -> None:
    check = _checker()
    root = _package(tmp_path, {"__init__.py": "", "big.py": "x = 1\n" * 600})
    assert check.check(root, frozenset({"module ipychat/big.py"})) == []
    stale = check.check(root, frozenset({"module ipychat/big.py", "module ipychat/gone.py"}))
    assert stale == ["stale module ipychat/gone.py: allowed but no longer offends; delete it"]
