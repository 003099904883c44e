"""%%chat turns, results, export/import and compare through a real InteractiveShell, with the
cell ids IPython's `run_cell(cell_id=...)` hands to `pre_run_cell` (as ipykernel does with
the cellId a front end sends). Issue 18, items 1, 2, 4 and 6."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from IPython.utils.capture import capture_output

from ipychat.core.types import Reply
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer


def cell(ip, source: str, cell_id: str | None = None):
    """Run a cell as a front end would; (its ExecutionResult, what it printed and showed)."""
    with capture_output() as out:
        result = ip.run_cell(source, cell_id=cell_id)
    return result, out


def texts(fake: FakeOpenAIServer, n: int = -1) -> list[str]:
    return [m["content"] for m in fake.chat_requests[n].body["messages"]]


def test_rerunning_a_cell_three_times_leaves_one_turn(ip, fake, session: ChatSession) -> None:
    for _ in range(3):
        result, out = cell(ip, "%%chat\nWhat is the capital of France?", "cell-1")
        assert result.error_in_exec is None
    assert session.threads["main"].turns == 1 and session.threads["main"].cells == ["cell-1"]
    assert "replaced turn 1" in out.stdout
    assert texts(fake) == ["What is the capital of France?"]


def test_a_rerun_in_the_middle_says_later_turns_saw_the_old_text(ip, fake, session) -> None:
    cell(ip, "%%chat\none", "a")
    cell(ip, "%%chat\ntwo", "b")
    _, out = cell(ip, "%%chat\none again", "a")
    assert "replaced turn 1 · 1 later turn was answered with the old text" in out.stdout
    assert texts(fake) == ["one again"]


def test_without_a_cell_id_turns_append(ip, fake, session) -> None:
    cell(ip, "%%chat\nsame")
    cell(ip, "%%chat\nsame")
    assert session.threads["main"].turns == 2


def test_the_terminal_prints_once_and_underscore_holds_the_reply(ip, fake) -> None:
    _, out = cell(ip, "%%chat\nhello", "c")
    assert out.stdout.count("Echo: hello") == 1  # streamed, not printed again as Out[n]
    assert "Out[" not in out.stdout
    reply = ip.user_ns["_"]
    assert isinstance(reply, Reply) and reply.text == "Echo: hello"
    cell(ip, "x = _")
    assert ip.user_ns["x"] is reply


def test_notebook_mode_returns_the_reply_once(ip, fake) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    result, out = cell(ip, "%%chat\nhello", "c")
    assert isinstance(result.result, Reply) and ip.user_ns["_"] is result.result
    assert result.result.cell == "c" and result.result.turn == 1
    # the live display was cleared as the result arrived: nothing else is left to show
    assert [o for o in out.outputs if "Echo: hello" in str(o.data)] == []
    assert out.stdout.count("Echo: hello") == 1  # the plain shell prints Out[n] as text


def test_notebook_mode_text_format_shows_the_result_verbatim(ip, fake) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    result, _ = cell(ip, "%%chat -f text\n<b>bold?</b>", "c")
    data, _meta = result.result._repr_mimebundle_()
    assert "<pre>Echo: &lt;b&gt;bold?&lt;/b&gt;</pre>" in data["text/html"]


@pytest.mark.parametrize("mode", ["terminal", "notebook"])
def test_a_semicolon_on_the_magic_line_shows_nothing(ip, fake, mode: str) -> None:
    ip.run_line_magic("config", f"ChatMagics.display_mode = '{mode}'")
    result, out = cell(ip, "%%chat -o answer ;\nquietly", "q")
    assert result.error_in_exec is None and result.result is None
    assert "Echo: quietly" not in out.stdout and not out.outputs
    assert ip.user_ns["answer"].text == "Echo: quietly"
    assert ip.user_ns.get("_") is not ip.user_ns["answer"]  # as `x;` leaves `_` alone


def test_a_prompt_ending_in_a_semicolon_is_sent_and_shown(ip, fake) -> None:
    _, out = cell(ip, "%%chat\nWhy does int x = 1;", "s")
    assert texts(fake) == ["Why does int x = 1;"] and "Echo: Why does int x = 1;" in out.stdout


def test_history_shows_the_cell_of_each_turn(ip, fake) -> None:
    cell(ip, "%%chat\none", "cell-one")
    cell(ip, "%%chat\ntwo")
    _, out = cell(ip, "%chat history")
    assert "[turn 1 · cell cell-one]\nuser: one" in out.stdout
    assert "[turn 2]\nuser: two" in out.stdout


def test_unload_stops_listening_for_cells(ip) -> None:
    from ipychat.notebook import extension

    loaded = extension._loaded
    assert loaded is not None and loaded.note_cell in ip.events.callbacks["pre_run_cell"]
    ip.run_line_magic("unload_ext", "ipychat")
    assert loaded.note_cell not in ip.events.callbacks["pre_run_cell"]
    ip.run_line_magic("load_ext", "ipychat")


# ----- export and import -----------------------------------------------------------------------


def make_thread(ip) -> None:
    cell(ip, "%%chat --thread notes\nFirst question", "n1")
    cell(ip, "%%chat --thread notes\nSecond question", "n2")
    cell(ip, "%%chat --thread notes\nFirst {{literal}} question, better", "n1")


def test_export_to_markdown(ip, fake, tmp_path: Path) -> None:
    make_thread(ip)
    target = tmp_path / "notes.md"
    _, out = cell(ip, f"%chat export notes {target}")
    assert "thread notes (2 turns) written to" in out.stdout
    text = target.read_text()
    assert text.startswith("# Thread notes\n")
    assert "## Turn 1 · gpt-4o-mini · cell `n1`" in text and "First {literal} question" in text
    assert text.index("First {literal} question") < text.index("Second question")


def test_export_refuses_to_overwrite_without_force(ip, fake, tmp_path: Path) -> None:
    make_thread(ip)
    target = tmp_path / "notes.md"
    target.write_text("mine")
    _, out = cell(ip, f"%chat export notes {target}")
    assert "exists: add --force to overwrite it." in out.stderr + out.stdout
    assert "Traceback" not in out.stdout + out.stderr and target.read_text() == "mine"
    cell(ip, f"%chat export notes {target} --force")
    assert target.read_text().startswith("# Thread notes")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("export notes out.txt", "name a .md or an .ipynb file"),
        ("export nosuch out.md", "No thread named 'nosuch'"),
        ("export", "%chat export [THREAD] FILE.md|FILE.ipynb [--force]"),
        ("import missing.ipynb", "is not a readable notebook"),
        ("import notes.md", "%chat import FILE.ipynb [--thread NAME] [--force]"),
        ("import x.ipynb --thread", "name the thread"),
    ],
)
def test_export_and_import_errors_are_one_line(ip, fake, line: str, error: str) -> None:
    make_thread(ip)
    _, out = cell(ip, f"%chat {line}")
    assert error in out.stderr + out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_export_to_a_notebook_and_import_round_trip(ip, fake, session, tmp_path: Path) -> None:
    make_thread(ip)
    target = tmp_path / "notes.ipynb"
    cell(ip, f"%chat export notes {target}")
    nb = nbformat.read(target, as_version=4)
    nbformat.validate(nb)  # nbformat 4.5: ids and all
    chats = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.id for c in chats] == ["n1", "n2"]
    assert chats[0].source.startswith("%%chat --thread notes --no-interpolate\n")
    assert chats[0].outputs[0]["metadata"]["ipychat"]["model"] == "gpt-4o-mini"
    original = session.threads["notes"]
    _, out = cell(ip, f"%chat import {target}")
    assert "already has 2 turn(s)" in out.stderr + out.stdout
    cell(ip, f"%chat import {target} --thread copy")
    copy = session.threads["copy"]
    assert copy.messages == original.messages and copy.cells == original.cells
    assert copy.record_of(0) is not None and copy.record_of(0)["model"] == "gpt-4o-mini"
    cell(ip, f"%chat import {target} --force")  # over the thread it came from
    assert session.threads["notes"].messages == copy.messages


def test_an_exported_notebook_runs_again_without_re_interpolating(ip, fake, tmp_path) -> None:
    make_thread(ip)
    target = tmp_path / "notes.ipynb"
    cell(ip, f"%chat export notes {target}")
    first = json.loads(target.read_text())["cells"][1]
    fake.reset_log()
    cell(ip, first["source"] if isinstance(first["source"], str) else "".join(first["source"]))
    assert texts(fake)[-1] == "First {literal} question, better"  # sent as it was before


# ----- compare models ---------------------------------------------------------------------------


def test_compare_in_a_cell_sends_one_request_per_model(ip, fake, session) -> None:
    _, out = cell(ip, "%%chat -m gpt-4o-mini,gpt-4.1-mini -o both\nWhich is better?", "k")
    assert sorted(r.body["model"] for r in fake.chat_requests) == ["gpt-4.1-mini", "gpt-4o-mini"]
    assert "── gpt-4o-mini (kept) ──" in out.stdout and "── gpt-4.1-mini ──" in out.stdout
    assert out.stdout.count("tokens · $") == 2  # each model's tokens, cost and time
    both = ip.user_ns["both"]
    assert ip.user_ns["_"] is both and both.kept == "gpt-4o-mini"
    assert session.threads["main"].turns == 1 and session.threads["main"].cells == ["k"]
    cell(ip, "%%chat -m gpt-4o-mini,gpt-4.1-mini --keep gpt-4.1-mini\nWhich is better?", "k")
    assert session.threads["main"].turns == 1  # the cell's turn, replaced
    record = session.threads["main"].record_of(0)
    assert record is not None and record["model"] == "gpt-4.1-mini"


def test_compare_in_notebook_mode_returns_the_comparison(ip, fake) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    result, _ = cell(ip, "%%chat -m gpt-4o-mini,gpt-4.1-mini\nhi", "k")
    markdown = result.result._repr_mimebundle_()[0]["text/markdown"]
    assert markdown.count("<td") == 2 and "Echo: hi" in markdown


def test_import_leaves_out_a_comparison(ip, fake, session, tmp_path: Path) -> None:
    # The compared replies end in "\n\n[...]" too: only the metadata tells them apart.
    cell(ip, "%%chat -m gpt-4o-mini,gpt-4.1-mini\nsecond\n\n[not a footer]", "b")
    data, metadata = ip.user_ns["_"]._repr_mimebundle_()
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("%%chat\nfirst"),
        nbformat.v4.new_code_cell("%%chat -m gpt-4o-mini,gpt-4.1-mini\nsecond"),
    ]
    nb.cells[0].outputs = [
        nbformat.v4.new_output(
            "execute_result",
            data={"text/plain": "Echo: first\n\n[gpt-4o-mini · thread main (1 turn)]"},
            metadata={"ipychat": {"thread": "main", "turn": 1}},
            execution_count=1,
        )
    ]
    nb.cells[1].outputs = [
        nbformat.v4.new_output("execute_result", data=data, metadata=metadata, execution_count=2)
    ]
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    cell(ip, f"%chat import {path} --thread back")
    assert [m["content"] for m in session.threads["back"].messages] == ["first", "Echo: first"]


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("--keep gpt-4o-mini", "--keep chooses among compared models"),
        ("-m gpt-4o-mini,gpt-4.1-mini --keep gpt-4o", "not one of the compared models"),
        ("-m gpt-4o-mini,gpt-4o-mini", "a model is named twice"),
        ("-m ,", "-m needs a model name"),
        ("-m gpt-4o-mini,gpt-4.1-mini -f json", "drop -f"),
    ],
)
def test_compare_errors_are_one_line_and_send_nothing(ip, fake, line: str, error: str) -> None:
    _, out = cell(ip, f"%%chat {line}\nhi", "k")
    assert error in out.stderr + out.stdout and "Traceback" not in out.stderr + out.stdout
    assert fake.chat_requests == []


def test_compare_dry_run_estimates_each_model_and_sends_nothing(ip, fake) -> None:
    _, out = cell(ip, "%%chat -m gpt-4o-mini,gpt-4.1-mini --dry-run\nHow much?", "k")
    assert "gpt-4o-mini: would send 1 message" in out.stdout
    assert "gpt-4.1-mini: would send 1 message" in out.stdout
    assert fake.chat_requests == []
