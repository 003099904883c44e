"""`%chat usage` and `%chat budget`: their words read, the ledger asked, the text made.

`%chat usage` alone is this kernel's ledger (in memory, as always); `--all`, `--since
WHEN` and `--notebook [PATH]` ask the persistent record every kernel writes (ledger.db in
the cache folder, `ipychat.engine.ledgerdb`). `%chat budget USD --per day|week|month`
sets a persistent budget there, which every kernel checks before sending.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from IPython.core.error import UsageError

from ipychat.core import format as fmt
from ipychat.core.periods import parse_since as since_time
from ipychat.core.periods import period_name, this_period
from ipychat.core.pricing import format_usd
from ipychat.engine.ledger import Ledger

__all__ = ["UsageQuery", "budget_text", "parse_budget", "parse_usage", "usage_text"]

USAGE = "%chat usage [--plot] [--all | --since 7d] [--notebook [PATH]]"
BUDGET = "%chat budget [USD|off] [--per day|week|month]"


@dataclass(frozen=True)
class UsageQuery:
    """What `%chat usage` was asked: this kernel (`persistent` False) or the record."""

    plot: bool = False
    persistent: bool = False
    since: float | None = None
    notebook: str | None = None


def parse_usage(words: list[str], this_notebook: str | None) -> UsageQuery:
    """`%chat usage`'s words; UsageError (one line) for anything else."""
    plot = persistent = False
    since: float | None = None
    notebook: str | None = None
    rest = iter(range(len(words)))
    for i in rest:
        word = words[i]
        if word == "--plot":
            plot = True
        elif word == "--all":
            persistent = True
        elif word == "--since":
            if i + 1 >= len(words):
                raise UsageError(f"--since needs a value, e.g. --since 7d. {USAGE}")
            since = _since(words[i + 1])
            persistent = True
            next(rest)
        elif word == "--notebook":
            persistent = True
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                notebook = words[i + 1]
                next(rest)
            elif this_notebook is None:
                raise UsageError(
                    "This kernel does not know its notebook's path (Jupyter gives it to "
                    "notebook kernels as JPY_SESSION_NAME): name it, e.g. %chat usage "
                    "--notebook analysis.ipynb."
                )
            else:
                notebook = this_notebook
        else:
            raise UsageError(f"{USAGE}: not {word!r}.")
    return UsageQuery(plot, persistent, since, notebook)


def _since(text: str) -> float:
    from ipychat.core.errors import ChatError

    try:
        return since_time(text, time.time())
    except ChatError as exc:
        raise UsageError(str(exc)) from None


def usage_text(ledger: Ledger, query: UsageQuery) -> tuple[Ledger, str]:
    """The ledger `query` shows (this kernel's, or a view of the record) and its text."""
    if not query.persistent:
        return ledger, fmt.usage_markdown(ledger)
    view = ledger.history(query.since, query.notebook)
    scope = _scope(query)
    if not view.rows:
        return view, f"No requests recorded {scope}."
    # The table without its last line (the session's budget), then the persistent budgets.
    table = fmt.usage_markdown(view).rsplit("\n", 1)[0].rstrip()
    lines = [f"Every kernel, {scope}:\n", table, f"\nspent {format_usd(view.spent)}"]
    lines += [f"\n{line}" for line in period_lines(ledger)]
    return view, "\n".join(lines)


def _scope(query: UsageQuery) -> str:
    when = (
        f"since {datetime.fromtimestamp(query.since):%Y-%m-%d %H:%M}"
        if query.since is not None
        else "all time"
    )
    return f"in {query.notebook}, {when}" if query.notebook else when


def period_lines(ledger: Ledger) -> list[str]:
    """One line per persistent budget: what every kernel spent of it."""
    return [
        f"{this_period(period)[:1].upper()}{this_period(period)[1:]}, every kernel: spent "
        f"{format_usd(spent)} of the {period_name(period)} budget of {format_usd(limit)}"
        for period, limit, spent in ledger.periods()
    ]


def parse_budget(words: list[str]) -> tuple[str | None, str | None]:
    """`%chat budget`'s words as (amount or "off" or None, period or None)."""
    amount: str | None = None
    period: str | None = None
    rest = iter(range(len(words)))
    for i in rest:
        word = words[i]
        if word == "--per":
            if i + 1 >= len(words):
                raise UsageError(f"--per needs day, week or month. {BUDGET}")
            period = words[i + 1]
            next(rest)
        elif amount is None and not word.startswith("--"):
            amount = word
        else:
            raise UsageError(f"{BUDGET}: not {word!r}.")
    return amount, period


def budget_text(ledger: Ledger) -> str:
    """`%chat budget`'s answer: the session's budget, then each persistent one."""
    budget = format_usd(ledger.budget) if ledger.budget is not None else "no budget"
    return "\n".join([f"spent {format_usd(ledger.spent)} of {budget}", *period_lines(ledger)])
