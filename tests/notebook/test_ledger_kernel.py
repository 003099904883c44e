"""The persistent ledger across a real kernel restart (nbclient): the record and a
persistent budget outlive the kernel, and the notebook path comes from Jupyter's
JPY_SESSION_NAME (which ipykernel also puts in `__session__`)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

from ipychat.testing import FakeOpenAIServer

pytestmark = pytest.mark.slow


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}\n" + "\n".join(out.traceback))
        else:
            parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


def test_the_record_and_a_persistent_budget_survive_a_kernel_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notebook = str(tmp_path / "analysis.ipynb")
    # What jupyter_server puts in a notebook kernel's environment (the kernel inherits it).
    monkeypatch.setenv("JPY_SESSION_NAME", notebook)
    with FakeOpenAIServer() as server:
        before = [
            "%load_ext ipychat",
            f"%chat endpoint {server.base_url}",
            "%%chat\nhello before the restart",
            "%chat budget 0.000001 --per day",
            "print(__session__)",
        ]
        after = [
            "%load_ext ipychat",
            f"%chat endpoint {server.base_url}",
            "%chat usage",
            "%chat usage --all",
            "%chat usage --notebook",
            "%%chat\nrefused after the restart",
            "import ipychat; print(len(ipychat.get_session().usage.to_frame(all=True)))",
        ]
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
        nb.cells = [nbformat.v4.new_code_cell(c) for c in before + after]
        client = NotebookClient(
            nb,
            timeout=90,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(tmp_path)}},
        )
        with client.setup_kernel():
            first_pid = client.km.provisioner.process.pid
            for index in range(len(before)):
                client.execute_cell(nb.cells[index], index)
            # A shutdown request, then a new process: what Jupyter's "Restart kernel" does.
            run_sync(client.km.restart_kernel)(now=False)
            assert client.km.provisioner.process.pid != first_pid
            run_sync(client.kc.wait_for_ready)(timeout=90)
            for index in range(len(before), len(nb.cells)):
                client.execute_cell(nb.cells[index], index)
        sent = len(server.chat_requests)
    out = [_text(c) for c in nb.cells]
    assert "Echo: hello before the restart" in out[2]
    assert "daily budget" in out[3]
    assert out[4].strip() == notebook
    assert "No requests yet in this session." in out[7]  # the new kernel's own
    assert "gpt-4o-mini" not in out[7]
    assert "Every kernel, all time:" in out[8] and "| gpt-4o-mini | 1 |" in out[8]
    assert f"Every kernel, in {notebook}, all time:" in out[9] and "| 1 |" in out[9]
    assert "UsageError: Budget: every kernel spent" in out[10] and "--per day." in out[10]
    assert "Traceback" not in out[10]
    assert out[11].strip() == "1"
    assert sent == 1  # the refused turn was never sent
