"""%%chatmap driven through a real InteractiveShell against the loopback server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.notebook import progress
from ipychat.notebook.mapmagic import ChatMapMagics
from ipychat.testing import FakeOpenAIServer


@pytest.fixture
def shell(ip: Any) -> Iterator[Any]:
    """The test shell with %%chatmap registered (magics.load does it in the product)."""
    if "chatmap" not in ip.magics_manager.magics["cell"]:
        ip.register_magics(ChatMapMagics)
    yield ip


def run(shell: Any, line: str, cell: str) -> str:
    with capture_output() as out:
        shell.run_cell_magic("chatmap", line, cell)
    parts = [out.stdout]
    for o in out.outputs:
        parts.extend(str(v) for v in o.data.values())
    return "\n".join(parts)


def reviews(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {"text": [f"review {i}" for i in range(n)], "stars": list(range(n))},
        index=[f"id{i}" for i in range(n)],
    )


def test_writes_the_column_in_place_and_shows_the_summary(
    shell: Any, fake: FakeOpenAIServer
) -> None:
    df = shell.user_ns["reviews"] = reviews()
    shown = run(shell, "reviews -o sentiment --max-tokens 5", "Classify: {text}")
    assert shell.user_ns["reviews"] is df
    assert df["sentiment"].str.startswith("Echo: Classify").all()  # cut at 5 tokens
    assert "6 rows · 0 cached · 6 to send · " in shown  # the check before sending
    assert "Done: 6 rows in " in shown and "(6 sent, 0 cached, 0 failed)" in shown
    assert "column sentiment added to reviews" in shown
    assert "id0" in shown  # reviews.head()
    again = run(shell, "reviews -o sentiment --max-tokens 5", "Classify: {text}")
    assert "(0 sent, 6 cached, 0 failed)" in again and len(fake.chat_requests) == 6


def test_into_leaves_the_frame_untouched(shell: Any, fake: FakeOpenAIServer) -> None:
    df = shell.user_ns["reviews"] = reviews(3)
    shown = run(shell, "reviews -o out --into labelled", "{text} ({stars} stars)")
    assert "out" not in df.columns and shell.user_ns["reviews"] is df
    labelled = shell.user_ns["labelled"]
    assert labelled["out"].tolist() == [f"Echo: review {i} ({i} stars)" for i in range(3)]
    assert list(labelled.index) == list(df.index)
    assert "column out written to labelled" in shown


def test_json_fills_several_columns(shell: Any) -> None:
    def reply(body: dict[str, Any]) -> str:
        return '{"label": "good", "score": 4}'

    with FakeOpenAIServer(reply=reply) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        shell.user_ns["reviews"] = reviews(2)
        run(shell, "reviews -o label score --json", "Rate: {text}")
        out = shell.user_ns["reviews"]
        assert out["label"].tolist() == ["good", "good"] and out["score"].tolist() == [4, 4]


def test_dry_run_sends_nothing(shell: Any, fake: FakeOpenAIServer) -> None:
    shell.user_ns["reviews"] = reviews(4)
    shown = run(shell, "reviews -o x --dry-run --max-tokens 10", "Summarise {text}")
    assert "4 rows · 0 cached · 4 to send · " in shown and "up to 40 reply tokens" in shown
    assert "Summarise review 0" in shown  # the first prompt
    assert fake.chat_requests == [] and "x" not in shell.user_ns["reviews"].columns


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("review -o x", "{text}", "review is not defined in the notebook (did you mean reviews?)"),
        ("number -o x", "{text}", "number is a int, not a DataFrame"),
        ("reviews -o x", "{txt}", "Its columns: text, stars"),
        ("reviews -o x", "   ", "The template is empty"),
        ("reviews -o x --no-cache --refresh", "{text}", "contradict"),
        ("reviews -o x --into 2bad", "{text}", "--into needs a Python variable name"),
        ("reviews -o a b", "{text}", "need --json"),
        ("reviews -o x --max-cost 0.0000001", "{text}", "over --max-cost"),
        ("reviews -o x --concurrency 0", "{text}", "concurrency must be a positive"),
        ("reviews -o x 'unbalanced", "{text}", "%%chatmap: No closing quotation"),
        ("reviews", "{text}", "-o/--output"),
    ],
)
def test_bad_input_is_one_line_and_sends_nothing(
    shell: Any, fake: FakeOpenAIServer, line: str, cell: str, message: str
) -> None:
    shell.user_ns["reviews"] = reviews(3)
    shell.user_ns["number"] = 3
    with pytest.raises(UsageError) as info:
        run(shell, line, cell)
    assert message in str(info.value)
    assert fake.chat_requests == []


def test_failures_are_counted_and_pointed_to(shell: Any) -> None:
    with FakeOpenAIServer(faults=[400], fault_rate=1.0) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        shell.user_ns["reviews"] = reviews(3)
        shown = run(shell, "reviews -o x --retries 0", "{text}")
        assert "3 failed: see reviews['_error']; re-run the cell to retry only those rows." in shown
        assert shell.user_ns["reviews"]["_error"].notna().all()


def test_interrupt_keeps_finished_rows_and_says_how_to_resume(
    shell: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    update = progress.ProgressView.update

    def interrupting(self: Any, progress: Any) -> None:
        update(self, progress)
        if progress.done >= 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.ProgressView, "update", interrupting)
    with FakeOpenAIServer(latency=0.05) as server:
        shell.run_line_magic("chat", f"endpoint {server.base_url}")
        shell.user_ns["reviews"] = reviews(40)
        with pytest.raises(UsageError, match=r"^Interrupted: \d+ of 40 rows written; re-run"):
            run(shell, "reviews -o x --concurrency 2", "{text}")
        written = shell.user_ns["reviews"]["x"].notna().sum()
        assert 5 <= written < 40
        monkeypatch.setattr(progress.ProgressView, "update", update)
        shown = run(shell, "reviews -o x", "{text}")
        assert f"({40 - written} sent, {written} cached, 0 failed)" in shown


def test_help_is_real(shell: Any) -> None:
    assert "--fill-null" in ChatMapMagics.chatmap.__doc__  # from @magic_arguments


def test_the_notebook_progress_bar_is_a_widget_replaced_by_a_static_summary() -> None:
    from ipychat.map.job import MapProgress

    view = progress.ProgressView(notebook=True)
    with capture_output() as out:
        view.update(MapProgress(3, 8, 1, 0.0012, 2.0, 1.5, 3.3))
        bar, label = view._bar, view._label
        assert bar.value == 3 and bar.max == 8
        assert "3/8 · 2 rows/s · ETA 3 s · 1 error · $0.0012" in label.value
        view.finish(False)
    live, final = out.outputs
    assert "application/vnd.jupyter.widget-view+json" in live.data
    assert live.data["text/plain"] == "map in progress: 0/8"  # not HBox(children=(IntProgress…
    # The same output (same display id), now static: what a saved notebook keeps.
    assert final.update and final.transient == live.transient
    assert set(final.data) == {"text/html", "text/plain"}
    assert final.data["text/plain"] == ("map stopped: 3/8 · 2 rows/s · 1 error · $0.0012")
    assert "<progress value='3' max='8'" in final.data["text/html"]
    assert "<code>map stopped: 3/8" in final.data["text/html"]  # amounts never typeset
    assert bar.comm is None and label.comm is None  # the widgets are closed


def test_a_terminal_gets_a_text_line(capsys: pytest.CaptureFixture[str]) -> None:
    from ipychat.map.job import MapProgress

    view = progress.ProgressView(notebook=False)
    view.update(MapProgress(8, 8, 0, 0.0012, 2.0, 4.0, 0.0))
    view.finish(True)
    assert "8/8 · 4 rows/s" in capsys.readouterr().out


@pytest.mark.slow
def test_an_executed_notebook_keeps_summaries_not_widgets(
    fake: FakeOpenAIServer, tmp_path: Any
) -> None:
    """What `jupyter nbconvert --execute` saves: the finished map as a static summary, the
    panel with a readable text/plain, and no widget repr in the Markdown export."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import MarkdownExporter

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(c)
        for c in (
            "%load_ext ipychat",
            f"%chat endpoint {fake.base_url}",
            "import pandas as pd\nreviews = pd.DataFrame({'text': [f'review {i}' for i in range(6)]})",
            "%%chatmap reviews -o label --max-tokens 3\nLabel: {text}",
            "%chat panel",
        )
    ]
    NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    outputs = nb.cells[3].outputs
    kinds = [set(o.get("data", {})) for o in outputs]
    assert not any("application/vnd.jupyter.widget-view+json" in k for k in kinds), kinds
    static = [o for o in outputs if "<progress" in o.get("data", {}).get("text/html", "")]
    assert len(static) == 1
    assert static[0].data["text/plain"].startswith("map finished: 6/6 · ")
    panel = nb.cells[4].outputs[0].data["text/plain"]
    assert panel.startswith("ipychat chat panel · thread main (0 turns) · spent $")

    exported, _ = MarkdownExporter().from_notebook_node(nb)
    for widget_repr in ("HBox(", "IntProgress(", "ChatPanel(", "VBox("):
        assert widget_repr not in exported
    assert "map finished: 6/6" in exported
    assert "Done: 6 rows in" in exported
