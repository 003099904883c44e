"""`%chat usage --all/--since/--notebook` and `%chat budget USD --per PERIOD` in a real
InteractiveShell: the persistent record every kernel writes, and one-line UsageErrors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.core.pricing import format_usd
from ipychat.engine.cache import ResponseCache
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer

KEY = "sk-test-" + "u" * 20


def chat(ip, line: str) -> str:
    with capture_output() as out:
        ip.run_line_magic("chat", line)
    return out.stdout


def earlier_kernel(fake: FakeOpenAIServer, folder: Path, notebook: str, *prompts: str) -> None:
    """What another (earlier) kernel leaves in the record: its requests, then its exit."""
    other = ChatSession(
        Settings(base_url=fake.base_url, api_key=KEY, model="gpt-4o-mini"),
        cache=ResponseCache(folder),
    )
    assert other.usage.store is not None
    other.usage.store.notebook = notebook
    for prompt in prompts:
        other.ask(prompt)
    other.close()


def test_usage_shows_this_kernel_and_the_record_every_kernel(
    ip, session: ChatSession, fake: FakeOpenAIServer
) -> None:
    assert session.usage.store is not None
    folder = session.usage.store.path.parent
    earlier_kernel(fake, folder, "/home/me/work/analysis.ipynb", "one", "two")
    ip.run_cell_magic("chat", "", "three")
    spent = sum(r["cost"] for r in session.usage.store.rows())
    own = chat(ip, "usage")
    assert re.search(r"\| gpt-4o-mini \| 1 \|", own)  # this kernel: its one request
    every = chat(ip, "usage --all")
    assert every.startswith("Every kernel, all time:")
    assert re.search(r"\| gpt-4o-mini \| 3 \|", every)
    recent = chat(ip, "usage --since 1h")
    assert recent.startswith("Every kernel, since ") and re.search(
        r"\| gpt-4o-mini \| 3 \|", recent
    )
    one = chat(ip, "usage --notebook analysis.ipynb")
    assert one.startswith("Every kernel, in analysis.ipynb, all time:")
    assert re.search(r"\| gpt-4o-mini \| 2 \|", one)
    assert chat(ip, "usage --notebook other.ipynb").strip() == (
        "No requests recorded in other.ipynb, all time."
    )
    session.usage.store.notebook = "/home/me/work/analysis.ipynb"  # as Jupyter would say
    assert re.search(r"\| gpt-4o-mini \| 2 \|", chat(ip, "usage --notebook"))
    with capture_output() as out:
        ip.run_line_magic("chat", "usage --all --plot")
    (chart,) = [o.data for o in out.outputs if "image/png" in o.data]
    assert chart["text/plain"].startswith(f"<chart: spend and latency; spent {format_usd(spent)}")


def test_a_persistent_budget_from_the_magic(
    ip, session: ChatSession, fake: FakeOpenAIServer
) -> None:
    shown = chat(ip, "budget 20 --per month")
    assert "This month, every kernel: spent $0.00 of the monthly budget of $20.00" in shown
    assert chat(ip, "budget").splitlines() == [
        "spent $0.00 of no budget",
        "This month, every kernel: spent $0.00 of the monthly budget of $20.00",
    ]
    ip.run_cell_magic("chat", "", "spend something")
    chat(ip, "budget 0.000001 --per week")
    with pytest.raises(
        UsageError,
        match=r"^Budget: every kernel spent \$.* this week of the "
        r"weekly budget of .* Raise it with %chat budget [\d.]+ --per week\.$",
    ):
        ip.run_cell_magic("chat", "", "refused")
    assert len(fake.chat_requests) == 1
    assert "weekly" not in chat(ip, "budget off --per week")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("usage --since", r"^--since needs a value, e.g. --since 7d\."),
        (
            "usage --since yesterday",
            r"^--since takes a duration such as 30m, 12h, 7d or 2w, "
            r"or a date such as 2026-11-01; not 'yesterday'\.$",
        ),
        ("usage --since 2999-01-01", r"^--since 2999-01-01 is in the future"),
        ("usage --notebook", r"^This kernel does not know its notebook's path .*JPY_SESSION_NAME"),
        ("budget 5 --per", r"^--per needs day, week or month\."),
        ("budget 5 --per year", r"^--per takes day, week or month, not 'year'"),
        ("budget -5 --per day", r"positive number of dollars"),
        ("budget 5 6", r"^%chat budget \[USD\|off\] \[--per day\|week\|month\]: not '6'\.$"),
    ],
)
def test_bad_words_are_one_line_usage_errors(
    ip, session: ChatSession, fake: FakeOpenAIServer, line: str, message: str
) -> None:
    assert session.usage.store is not None
    session.usage.store.notebook = None  # a terminal: no JPY_SESSION_NAME
    with pytest.raises(UsageError) as refused:
        ip.run_line_magic("chat", line)
    assert re.search(message, str(refused.value)), str(refused.value)
    assert "\n" not in str(refused.value)
    assert fake.chat_requests == []


def test_log_prompts_is_a_magic_setting_off_by_default(ip, session: ChatSession) -> None:
    ip.run_cell_magic("chat", "", "not kept M4RK3R")
    ip.run_line_magic("config", "ChatMagics.log_prompts = True")
    assert session.settings.log_prompts is True
    ip.run_cell_magic("chat", "", "kept K33P")
    frame = session.usage.to_frame(all=True)
    assert frame["prompt"].isna().tolist() == [True, False]
    assert frame["prompt"].iloc[1] == "kept K33P"
    assert session.usage.store is not None
    assert b"M4RK3R" not in session.usage.store.path.read_bytes()
