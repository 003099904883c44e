"""The size and privacy rules of issue 16 that ruff and import-linter do not check.

    python tools/check_structure.py            # exit 1 and one line per offence

- a module has at most MAX_MODULE_LINES lines;
- a function (or method) has at most MAX_FUNCTION_LINES lines, from `def` to its last line;
- a constructor (`__init__`) takes at most MAX_INIT_PARAMETERS parameters besides `self`
  (more belong in an option object);
- no `from ipychat.x import _name` across modules: what crosses a module is public.
  ruff's PLC2701 (import-private-name) does not see this one: it reports private names
  imported from *other* packages only, never from the package being checked.

Today's offenders are listed in ALLOWED, each with who removes it. An entry that no longer
offends is reported too ("stale"), so the list only shrinks.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ipychat"

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_INIT_PARAMETERS = 8

# Known offences on the day the rules were written (issue 16, step 2), by the helper whose
# files they are in; the lead deletes entries as the work lands. Keys are the exact text
# check() reports before the colon.
ALLOWED: frozenset[str] = frozenset(
    {
        # helper "core": left this round (ChatClient's keywords are its public API; the lean transport is one class built in a cached factory)
        "constructor ipychat/net/client.py:ChatClient.__init__",
        "function ipychat/core/hygiene.py:clean_messages",
        "function ipychat/net/transport.py:lean_aiohttp_transport",
        "module ipychat/core/markdown.py",
        # helper "engine" (the engine/session split)
        "function ipychat/engine/ledger.py:_plot",
        "function ipychat/session.py:ChatSession._request",
        "function ipychat/session.py:ChatSession.prepare",
        "module ipychat/engine/cache.py",
        "module ipychat/engine/local.py",
        "module ipychat/session.py",
        # helper "map" (MapOptions, job/plan/batch split)
        "constructor ipychat/map/dispatch.py:Dispatcher.__init__",
        "constructor ipychat/map/job.py:MapJob.__init__",
        "function ipychat/map/job.py:MapJob.__init__",
        "function ipychat/map/plan.py:plan_requests",
        "module ipychat/map/batch.py",
        "module ipychat/map/job.py",
        "module ipychat/map/plan.py",
        "module ipychat/map/ratelimit.py",
        "private ipychat/map/batch.py:ipychat.session._cache_value",
        "private ipychat/map/job.py:ipychat.map.dispatch._LIMITERS",
        # helper "notebook"
        "function ipychat/notebook/mapmagic.py:ChatMapMagics._map",
        "module ipychat/notebook/magics.py",
        "module ipychat/notebook/widget.py",
        "private ipychat/notebook/magics.py:ipychat.notebook.mapmagic._ProgressView",
        # helper "testing"
        "constructor ipychat/testing/__init__.py:FakeOpenAIServer.__init__",
        "function ipychat/testing/__init__.py:FakeOpenAIServer.__init__",
        "function ipychat/testing/http.py:read_request",
        "function ipychat/testing/server.py:_Engine._stream",
        "module ipychat/testing/__init__.py",
        "private ipychat/testing/__init__.py:ipychat.testing.process._ProcessBackend",
        "private ipychat/testing/__init__.py:ipychat.testing.process._ThreadBackend",
        "private ipychat/testing/batchapi.py:ipychat.testing.server._Engine",
        "private ipychat/testing/process.py:ipychat.testing._Options",
        "private ipychat/testing/process.py:ipychat.testing.server._Engine",
        "private ipychat/testing/server.py:ipychat.testing._Options",
        "private ipychat/testing/server.py:ipychat.testing.rules._BAD_JSON",
        "private ipychat/testing/server.py:ipychat.testing.rules._ERROR_MESSAGES",
        "private ipychat/testing/server.py:ipychat.testing.rules._ERROR_TYPES",
        "private ipychat/testing/server.py:ipychat.testing.rules._NO_KEY",
        "private ipychat/testing/server.py:ipychat.testing.rules._RateLimiter",
        "private ipychat/testing/server.py:ipychat.testing.rules._Reject",
        "private ipychat/testing/server.py:ipychat.testing.rules._dumps",
        "private ipychat/testing/server.py:ipychat.testing.rules._echo",
        "private ipychat/testing/server.py:ipychat.testing.rules._error_body",
        "private ipychat/testing/server.py:ipychat.testing.rules._prompt_tokens",
        "private ipychat/testing/server.py:ipychat.testing.rules._split",
        "private ipychat/testing/server.py:ipychat.testing.rules._truncate",
    }
)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its dotted name inside the module (`Class.method`)."""

    def walk(
        node: ast.AST, prefix: str
    ) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                yield name, child
                yield from walk(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, f"{prefix}{child.name}.")
            else:
                yield from walk(child, prefix)

    yield from walk(tree, "")


def _parameters(func: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    args = func.args
    named = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
    return named - 1 + (args.vararg is not None) + (args.kwarg is not None)  # - self


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def offences(path: Path, root: Path) -> Iterator[str]:
    """`kind path[:what]: detail` for each rule `path` breaks; `root` holds the package."""
    text = path.read_text(encoding="utf-8")
    rel = path.relative_to(root).as_posix()
    lines = len(text.splitlines())
    if lines > MAX_MODULE_LINES:
        yield f"module {rel}: {lines} lines (at most {MAX_MODULE_LINES})"
    tree = ast.parse(text, filename=rel)
    for name, func in _functions(tree):
        length = (func.end_lineno or func.lineno) - func.lineno + 1
        if length > MAX_FUNCTION_LINES:
            yield f"function {rel}:{name}: {length} lines (at most {MAX_FUNCTION_LINES})"
        if func.name == "__init__" and _parameters(func) > MAX_INIT_PARAMETERS:
            yield (
                f"constructor {rel}:{name}: {_parameters(func)} parameters "
                f"(at most {MAX_INIT_PARAMETERS}; use an option object)"
            )
    own = _module_name(path, root)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom) or node.level or not node.module:
            continue
        if node.module.split(".")[0] != PACKAGE or node.module == own:
            continue
        for alias in node.names:
            if _is_private(alias.name):
                yield (
                    f"private {rel}:{node.module}.{alias.name}: imported across modules "
                    f"(line {node.lineno}); give it a public name"
                )


def check(root: Path = ROOT, allowed: frozenset[str] = ALLOWED) -> list[str]:
    """Every offence not in `allowed`, then every entry of `allowed` that no longer offends."""
    found = [o for p in sorted((root / PACKAGE).rglob("*.py")) for o in offences(p, root)]
    keys = {o.split(": ", 1)[0] for o in found}
    new = [o for o in found if o.split(": ", 1)[0] not in allowed]
    stale = [
        f"stale {key}: allowed but no longer offends; delete it" for key in sorted(allowed - keys)
    ]
    return new + stale


def main() -> int:
    problems = check()
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
