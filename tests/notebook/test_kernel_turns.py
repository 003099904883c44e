"""%%chat in a real ipykernel, executed with nbclient as a front end would, with real cell ids:
re-runs replace turns, the Reply is the cell's result (Out[n], `_`, metadata in the saved
notebook), export → import, compare (issue 18, "Done when").

JupyterLab and Notebook 7 send each cell's id in the execute_request's metadata
(`{...cell.metadata, cellId: cell.model.sharedModel.getId()}`, `CodeCell.execute` in
@jupyterlab/cells, src/widget.ts); ipykernel hands it to IPython's `run_cell(cell_id=...)`
(ipykernel/kernelbase.py, `execute_request`). nbclient's `KernelClient.execute` sends no
metadata, so `FrontEnd` below sends the message the way JupyterLab does: same content, plus
`metadata.cellId`, the cell's nbformat id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from ipychat.testing import FakeOpenAIServer

pytestmark = pytest.mark.slow


class FrontEnd:
    """Runs cells of one notebook in one kernel, sending their ids as JupyterLab does."""

    def __init__(self, nb: nbformat.NotebookNode, path: Path) -> None:
        self.nb = nb
        self.cell_id: str | None = None
        self.client = NotebookClient(
            nb,
            timeout=60,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(path)}},
            on_cell_execute=self._before,
        )

    def _before(self, cell: Any, cell_index: int) -> None:
        self.cell_id = cell.get("id")

    def _execute(self, code: str, **options: Any) -> str:
        kc = self.client.kc
        content = {
            "code": code,
            "silent": False,
            "store_history": options.get("store_history", True),
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": options.get("stop_on_error", True),
        }
        msg = kc.session.msg("execute_request", content, metadata={"cellId": self.cell_id})
        kc.shell_channel.send(msg)
        return str(msg["header"]["msg_id"])

    def run(self, *indices: int) -> None:
        for index in indices:
            self.client.execute_cell(self.nb.cells[index], index)

    def __enter__(self) -> FrontEnd:
        self._setup = self.client.setup_kernel()
        self._setup.__enter__()
        self.client.kc.execute = self._execute  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self._setup.__exit__(*exc)


def notebook(*cells: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    return nb


def printed(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def errors(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"{o.ename}: {o.evalue}" for c in nb.cells for o in c.outputs if o.output_type == "error"
    ]


THREAD = "import ipychat; t = ipychat.get_session().threads['main']; print(t.turns, t.cells)"


def test_reruns_results_and_metadata_in_a_real_kernel(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        nb = notebook(
            "%load_ext ipychat",
            f"%chat endpoint {server.base_url}",
            "%%chat\nWhat is the capital of France?",  # 2
            "%%chat\nAnd its river?",  # 3
            THREAD,  # 4
            "r = _; print(type(r).__name__, r.turn, r.replaced, r.later_turns, Out[max(Out)] is r)",
            "%%chat\nFirst, again",  # 6: the cell the next step edits and re-runs
        )
        with FrontEnd(nb, tmp_path) as front:
            front.run(0, 1, 2, 2, 2, 3, 4)
            assert printed(nb.cells[4]).strip() == f"2 ['{nb.cells[2].id}', '{nb.cells[3].id}']"
            nb.cells[2].source = "%%chat\nWhat is the capital of Italy?"  # edited, run again
            front.run(2, 5)
            assert printed(nb.cells[5]).strip() == "Reply 1 True 1 True"
            front.run(4)
            assert printed(nb.cells[4]).strip().startswith("2 ")
            prompts = [r.body["messages"][-1]["content"] for r in server.chat_requests]
            # the same prompt re-run came from the cache; the edit asked afresh, alone
            assert server.chat_requests[-1].body["messages"] == [
                {"role": "user", "content": "What is the capital of Italy?"}
            ]
            assert prompts.count("And its river?") == 1
        assert not errors(nb)
    saved = tmp_path / "saved.ipynb"
    nbformat.write(nb, saved)
    cell = nbformat.read(saved, as_version=4).cells[2]
    assert [o.output_type for o in cell.outputs] == ["execute_result"]  # shown once
    result = cell.outputs[0]
    assert "Echo: What is the capital of Italy?" in result.data["text/markdown"]
    assert "replaced turn 1" in result.data["text/plain"]
    meta = result.metadata["ipychat"]
    assert meta["thread"] == "main" and meta["turn"] == 1 and meta["cell"] == cell.id
    assert meta["model"] == "gpt-4o-mini" and meta["usage"]["completion_tokens"] > 0
    assert meta["cost"] > 0 and len(meta["cache_key"]) == 64


def test_out_of_order_export_import_and_compare_in_a_real_kernel(tmp_path: Path) -> None:
    export = tmp_path / "thread.ipynb"
    with FakeOpenAIServer() as server:
        nb = notebook(
            "%load_ext ipychat",
            f"%chat endpoint {server.base_url}",
            "%%chat\nA",  # 2
            "%%chat\nB",  # 3
            "%%chat\nC",  # 4
            THREAD,  # 5
            f"%chat export main {export}",  # 6
            f"%chat import {export} --thread copy",  # 7
            "s = ipychat.get_session(); print(s.threads['copy'].messages == s.threads['main'].messages)",
            "%%chat -m gpt-4o-mini,gpt-4.1-mini --keep gpt-4.1-mini\nD",  # 9
        )
        with FrontEnd(nb, tmp_path) as front:
            front.run(0, 1, 2, 3, 4)
            nb.cells[3].source = "%%chat\nB2"
            nb.cells[2].source = "%%chat\nA2"
            front.run(3, 2, 5)  # B first, then A: each keeps its own slot
            ids = [nb.cells[i].id for i in (2, 3, 4)]
            assert printed(nb.cells[5]).strip() == f"3 {ids}"
            sent = [[m["content"] for m in r.body["messages"]] for r in server.chat_requests]
            assert sent[-2] == ["A", "Echo: A", "B2"] and sent[-1] == ["A2"]
            front.run(6, 7, 8)
            assert printed(nb.cells[8]).strip() == "True"
            server.reset_log()
            front.run(9, 5)
        assert not errors(nb)
        models = sorted(r.body["model"] for r in server.chat_requests)
    assert models == ["gpt-4.1-mini", "gpt-4o-mini"]  # one request per model
    assert printed(nb.cells[5]).strip().startswith("4 ")
    shown = nb.cells[9].outputs[-1]
    assert shown.output_type == "execute_result" and shown.data["text/markdown"].count("<td") == 2
    exported = nbformat.read(export, as_version=4)
    nbformat.validate(exported)
    assert [c.id for c in exported.cells if c.cell_type == "code"] == ids
