"""What `%chat` can do, and its help: `%chat?`, `%chat help`, `%chat SUBCOMMAND --help`.

One table (`SUBCOMMANDS`) says, for each subcommand, how it is typed, what it does, the
flags it takes and examples; the overview, each subcommand's own help and the "did you
mean" hints are all built from it, so they cannot disagree. Pure text: the commands
themselves are `ipychat.notebook.commands`.
"""

from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass

from ipychat.core import providers
from ipychat.core.markdown import fenced

__all__ = [
    "SUBCOMMANDS",
    "Subcommand",
    "chat_help",
    "find",
    "subcommand_help",
    "unknown_subcommand",
]


@dataclass(frozen=True)
class Subcommand:
    """One `%chat NAME ...` subcommand: its forms (usage, what it does), flags, examples."""

    name: str
    group: str
    forms: tuple[tuple[str, str], ...]
    examples: tuple[str, ...]
    flags: tuple[str, ...] = ()  # its --flags: an unknown one gets "did you mean"


def _one(
    group: str,
    usage: str,
    text: str,
    examples: tuple[str, ...],
    flags: tuple[str, ...] = (),
) -> Subcommand:
    return Subcommand(usage.split()[0], group, ((usage, text),), examples, flags)


_ENDPOINT = (
    "show or set the endpoint: an OpenAI-compatible URL (https://…/v1), the embedded "
    "local model, or a named provider (NAME: " + ", ".join(providers.names()) + "), which "
    "reads its own key variable (ANTHROPIC_API_KEY, …); --send-key sends the API key to a "
    "URL too (OPENAI_API_KEY goes only to OpenAI and OPENAI_BASE_URL; plain http to another "
    "machine needs it)"
)

SUBCOMMANDS: tuple[Subcommand, ...] = (
    _one(
        "Settings",
        "model [NAME]",
        "show or set the default model",
        ("%chat model", "%chat model gpt-4o-mini"),
    ),
    _one(
        "Settings",
        "endpoint [URL|local|NAME] [--send-key]",
        _ENDPOINT,
        (
            "%chat endpoint",
            "%chat endpoint anthropic",
            "%chat endpoint ollama",
            "%chat endpoint http://localhost:11434/v1",
            "%chat endpoint local",
            "%chat endpoint https://llm.example.com/v1 --send-key",
        ),
        ("--send-key",),
    ),
    _one("Settings", "key", "ask for the API key (never type it into a cell)", ("%chat key",)),
    _one(
        "Settings",
        "system [TEXT|off]",
        "show or set the system prompt",
        ("%chat system Answer in one short paragraph.", "%chat system off"),
    ),
    _one("Settings", "models", "list the endpoint's models", ("%chat models",)),
    _one(
        "Settings",
        "offline [on|off]",
        "serve only from the cache, never the network",
        ("%chat offline", "%chat offline on"),
    ),
    _one("Settings", "local log", "the end of the local model server's log", ("%chat local log",)),
    _one("Conversations", "threads", "list conversation threads", ("%chat threads",)),
    _one(
        "Conversations",
        "thread NAME",
        "switch to (or create) a thread",
        ("%chat thread experiments",),
    ),
    _one(
        "Conversations",
        "history [NAME]",
        "show a thread's messages, turn by turn, with the cell each came from",
        ("%chat history", "%chat history experiments"),
    ),
    _one(
        "Conversations",
        "export [THREAD] FILE [--force]",
        "write a thread to FILE.md (Markdown) or FILE.ipynb (a notebook of %%chat cells with "
        "their results); an existing file only with --force",
        ("%chat export notes.md", "%chat export draft draft.ipynb --force"),
        ("--force",),
    ),
    _one(
        "Conversations",
        "import FILE.ipynb [--thread NAME] [--force]",
        "restore a thread from a notebook of %%chat cells (an export, or a saved notebook); "
        "a thread that has turns only with --force",
        ("%chat import draft.ipynb", "%chat import old.ipynb --thread old"),
        ("--thread", "--force"),
    ),
    _one(
        "Conversations",
        "reset [NAME]",
        "forget a thread's messages",
        ("%chat reset", "%chat reset experiments"),
    ),
    _one(
        "Conversations",
        "panel [--side]",
        "the chat panel; --side docks it in JupyterLab's right-hand sidebar (pip install sidecar)",
        ("%chat panel", "%chat panel --side"),
        ("--side",),
    ),
    Subcommand(
        "usage",
        "Spend and cache",
        (
            (
                "usage [--plot]",
                "spend, tokens and latency per model in this kernel; --plot: spend against "
                "the budget over time, and latency per model (matplotlib)",
            ),
            (
                "usage --all|--since WHEN|--notebook [PATH]",
                "the same for every kernel, from the record kept in the cache folder: all "
                "time, since WHEN (30m, 12h, 7d, 2w or a date), or of one notebook (this one, "
                "or PATH)",
            ),
        ),
        (
            "%chat usage",
            "%chat usage --plot",
            "%chat usage --since 7d",
            "%chat usage --notebook",
            "%chat usage --all --notebook analysis.ipynb",
        ),
        ("--plot", "--all", "--since", "--notebook"),
    ),
    Subcommand(
        "budget",
        "Spend and cache",
        (
            ("budget [USD|off]", "show or set the spend budget of this session"),
            (
                "budget USD|off --per day|week|month",
                "a budget for every kernel's spend in the day, week or month, kept in the "
                "cache folder and checked before sending from any kernel",
            ),
        ),
        (
            "%chat budget",
            "%chat budget 5",
            "%chat budget off",
            "%chat budget 20 --per month",
            "%chat budget off --per month",
        ),
        ("--per",),
    ),
    _one(
        "Spend and cache",
        "price MODEL IN OUT",
        "set a model's price in USD per 1M input/output tokens",
        ("%chat price my-llama-3 0.2 0.6",),
    ),
    _one(
        "Spend and cache",
        "cache [clear [--older-than DAYS] [--model MODEL]]",
        "response cache statistics, or clear it (all, or old entries, or one model's)",
        ("%chat cache", "%chat cache clear --older-than 30", "%chat cache clear --model gpt-4o"),
        ("--older-than", "--model"),
    ),
    _one(
        "Batch API",
        "batches",
        "%%chatmap --batch jobs of this cache, with their status",
        ("%chat batches",),
    ),
    Subcommand(
        "batch",
        "Batch API",
        (
            (
                "batch resume ID [DF]",
                "wait for a batch (after a restart too) and fill DF from it; without DF its "
                "replies go to the cache",
            ),
            ("batch cancel ID", "cancel a batch (what finished is kept)"),
        ),
        ("%chat batch resume bm_1a2b3c4d reviews", "%chat batch cancel bm_1a2b3c4d"),
    ),
    _one(
        "Help",
        "help [SUBCOMMAND]",
        "this list, or one subcommand's usage and examples (as %chat SUBCOMMAND --help)",
        ("%chat help", "%chat help cache"),
    ),
)
_BY_NAME = {command.name: command for command in SUBCOMMANDS}

_EXAMPLES = """\
  %chat                          the status: endpoint, model, thread, spend
  %chat model gpt-4o-mini
  %chat budget 5
  %chat usage --plot
  %chat cache clear --older-than 30
  %chat budget --help            one subcommand's help"""


def find(name: str) -> Subcommand | None:
    """The subcommand called `name` (as typed, any case), or None."""
    return _BY_NAME.get(name.lower())


def unknown_subcommand(name: str) -> str:
    """The one-line error for a name that is no subcommand, with the nearest one."""
    close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
    hint = f" (did you mean %chat {close[0]}?)" if close else ""
    return f"%chat {name}: unknown subcommand{hint}. %chat? lists them."


def chat_help() -> str:
    """`%chat?`, `%chat --help`, `%chat help`: every subcommand, in groups, with examples."""
    lines = [
        "Usage: %chat [SUBCOMMAND ARGS]",
        "",
        "Without a subcommand: the status. With one: change settings and threads, see spend.",
    ]
    groups = dict.fromkeys(command.group for command in SUBCOMMANDS)
    for group in groups:
        lines += ["", f"{group}:"]
        for command in (c for c in SUBCOMMANDS if c.group == group):
            for usage, text in command.forms:
                lines += _entry(usage, text)
    lines += ["", "Examples:", "", _EXAMPLES]
    return "\n".join(lines)


def _entry(usage: str, text: str) -> list[str]:
    wrapped = textwrap.wrap(text, 56) or [""]
    if len(usage) > 24:
        return [f"  {usage}", *(f"  {'':24}  {part}" for part in wrapped)]
    return [f"  {usage:24}  {wrapped[0]}", *(f"  {'':24}  {part}" for part in wrapped[1:])]


def subcommand_help(command: Subcommand) -> tuple[str, str]:
    """`%chat NAME --help`: each form of the subcommand and what it does, then examples;
    as (Markdown, plain text)."""
    forms = [f"`%chat {usage}`: {text}" for usage, text in command.forms]
    listed = forms[0] if len(forms) == 1 else "\n".join(f"- {form}" for form in forms)
    examples = "\n".join(command.examples)
    markdown = f"{listed}\n\nExamples:\n\n{fenced(examples)}"
    plain = "\n".join([*forms, "", "Examples:", textwrap.indent(examples, "  ")])
    return markdown, plain
