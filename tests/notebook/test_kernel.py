"""The session inside a real ipykernel (a loop already runs in its main thread), executed
with nbclient: streaming, context, a kernel interrupt mid-stream, and the next cell."""

from __future__ import annotations

import os
import signal
import threading
import time

import nbformat
import pytest
from nbclient import NotebookClient

from ipychat.testing import FakeOpenAIServer

pytestmark = pytest.mark.slow


def _notebook(*cells: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    return nb


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


def test_chat_in_a_real_kernel_with_an_interrupt(tmp_path) -> None:
    with FakeOpenAIServer(tokens_per_second=15) as server:
        nb = _notebook(
            "%load_ext ipychat",
            f"%chat endpoint {server.base_url}",
            "import asyncio; asyncio.get_running_loop().is_running()",  # ipykernel's own loop
            "%%chat --max-tokens 20\nhello kernel",
            "%%chat -o partial\n" + "long " * 80,
            "print(partial.interrupted, len(partial.text) > 0)",
            "%%chat --new --no-stream\nafter the interrupt",
            "import ipychat; print(len(ipychat.get_session().threads['main'].messages))",
        )
        client = NotebookClient(
            nb,
            timeout=60,
            kernel_name="python3",
            allow_errors=True,
            resources={"metadata": {"path": str(tmp_path)}},
        )
        with client.setup_kernel():
            kernel_pid = client.km.provisioner.process.pid
            for index, cell in enumerate(nb.cells):
                if index == 4:  # interrupt the long stream once it has started

                    def interrupt() -> None:
                        deadline = time.monotonic() + 20
                        while time.monotonic() < deadline and len(server.chat_requests) < 2:
                            time.sleep(0.05)
                        time.sleep(1.0)
                        os.kill(kernel_pid, signal.SIGINT)  # what Jupyter's interrupt does

                    threading.Thread(target=interrupt, daemon=True).start()
                client.execute_cell(cell, index)
    outputs = [_text(c) for c in nb.cells]
    assert "True" in outputs[2]
    assert "Echo: hello kernel" in outputs[3] and "thread main" in outputs[3]
    assert "UsageError: Interrupted after" in outputs[4]
    assert "Traceback" not in outputs[4] and "KeyboardInterrupt" not in outputs[4]
    assert "interrupted" in outputs[4]  # the partial reply's footer
    assert outputs[5].strip() == "True True"
    assert "Echo: after the interrupt" in outputs[6]
    assert outputs[7].strip() == "2"
