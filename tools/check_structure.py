"""The size and privacy rules of the package that ruff and import-linter do not check.

    python tools/check_structure.py            # exit 1 and one line per offence

- a module has at most MAX_MODULE_LINES lines;
- a function (or method) has at most MAX_FUNCTION_LINES lines, from `def` to its last line;
- a constructor (`__init__`) takes at most MAX_INIT_PARAMETERS parameters besides `self`
  (more belong in an option object);
- no `from ipychat.x import _name` across modules: what crosses a module is public.
  ruff's PLC2701 (import-private-name) does not see this one: it reports private names
  imported from *other* packages only, never from the package being checked.

The few exceptions that stand are listed in ALLOWED, each with why. An entry that no longer
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

# Known offences, each with why it stands; an entry that stops offending is reported stale,
# so the list only shrinks. Keys are the exact text check() reports before the colon.
ALLOWED: frozenset[str] = frozenset(
    {
        # Public APIs whose keyword options are the interface, as httpx.Client's are
        # (FakeOpenAIServer checks its own into one frozen ServerOptions).
        "constructor ipychat/net/client.py:ChatClient.__init__",
        "constructor ipychat/testing/fake.py:FakeOpenAIServer.__init__",
        # One class built in a cached factory (the trimmed aiohttp transport).
        "function ipychat/net/transport.py:lean_aiohttp_transport",
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
