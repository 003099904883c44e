"""Kernel reality: a fault case and an interrupt case inside a real ipykernel (nbclient),
where a loop already runs in the main thread and Ctrl-C is the kernel's SIGINT."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
from _support import CANARY, Tally, prompt_of, succeeded
from nbclient import NotebookClient

from ipychat.testing import FakeOpenAIServer, Fault

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PROBE = """
import asyncio, json, threading, ipychat
_s = ipychat.get_session()
async def _others():
    return [repr(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]
print("PROBE " + json.dumps({
    "tasks": _s.run(_others()),
    "loops": [t.name for t in threading.enumerate() if t.name == "ipychat-loop"],
}))
"""


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


def _probe(text: str) -> dict[str, list[str]]:
    line = next(x for x in text.splitlines() if x.startswith("PROBE "))
    return json.loads(line.removeprefix("PROBE "))


def run_notebook(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    server: FakeOpenAIServer,
    cells: list[str],
    before: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Run `cells` in a fresh kernel pointed at `server`; `before(index, pid)` runs before
    each cell. The kernel imports this work tree's ipychat."""
    monkeypatch.setenv("OPENAI_API_KEY", CANARY)
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(tmp_path / "cache"))
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    monkeypatch.setenv("PYTHONPATH", path)
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    client = NotebookClient(
        nb,
        timeout=60,
        kernel_name="python3",
        allow_errors=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    with client.setup_kernel():
        pid = client.km.provisioner.process.pid
        for index, cell in enumerate(nb.cells):
            if before is not None:
                before(index, pid)
            client.execute_cell(cell, index)
    return [_text(c) for c in nb.cells]


def test_faults_in_a_real_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    cells = [
        "%load_ext ipychat\n%config ChatMagics.max_retries = 1\n%config ChatMagics.read_timeout = 1.0",
        "%%chat --max-tokens 20\nhello through a 503",  # 503, then the retry answers
        "%%chat --no-cache\nhello through a hang",  # silent past the read timeout, retried
        "%%chat --no-cache\nwho am I",  # 401: one line, no traceback
        "import pandas as pd\ndf = pd.DataFrame({'text': [f'row {i}' for i in range(8)]})",
        "%%chatmap df -o out\nSay {text}",  # a reset and a 500 among its rows
        "%%chat --no-cache\nstill there?",
        PROBE,
    ]
    script = {
        1: [Fault.status(503, headers={"retry-after-ms": "50"})],
        2: [Fault.hang()],
        3: [Fault.status(401)],
        5: [Fault.reset(), Fault.status(500)],
    }
    with FakeOpenAIServer() as server:
        out = run_notebook(
            tmp_path,
            monkeypatch,
            server,
            cells,
            before=lambda index, pid: server.script(*script.get(index, [])),
        )
        requests = server.chat_requests
    assert "Echo: hello through a 503" in out[1] and "Traceback" not in out[1]
    assert "Echo: hello through a hang" in out[2]
    assert "UsageError: " in out[3] and "refused the API key (HTTP 401)" in out[3]
    assert "Traceback" not in out[3] and out[3].count("\n") <= 1
    assert "Done: 8 rows in " in out[5] and "(8 sent, 0 cached, 0 failed)" in out[5]
    assert "Echo: still there?" in out[6]
    probe = _probe(out[7])
    assert probe["tasks"] == [] and probe["loops"] == ["ipychat-loop"], probe
    answers = Counter(prompt_of(r) for r in requests if succeeded(r))
    assert set(answers.values()) == {1}, answers
    tally.kernel.append(
        f"faults: 503, hang, 401, reset+500 in %%chatmap → recovered/one line; "
        f"{len(requests)} requests, duplicates 0, tasks left {len(probe['tasks'])}"
    )


def test_interrupt_a_chatmap_in_a_real_kernel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tally: Tally
) -> None:
    rows = 200
    cells = [
        "%load_ext ipychat",
        f"import pandas as pd\ndf = pd.DataFrame({{'text': [f'row {{i}}' for i in range({rows})]}})",
        "%%chatmap df -o out --concurrency 4\nSay {text}",  # interrupted by SIGINT
        "import json\nprint('DONE ' + json.dumps(sorted(df.loc[df['out'].notna(), 'text'])))",
        PROBE,
        "%%chatmap df -o out --concurrency 16\nSay {text}",  # re-run: only what is missing
        "%%chat --no-cache\nthe next cell works",
    ]
    fired: list[float] = []

    with FakeOpenAIServer(latency=(0.03, 0.06)) as server:

        def before(index: int, pid: int) -> None:
            if index == 2:

                def interrupt() -> None:
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and len(server.chat_requests) < 40:
                        time.sleep(0.01)
                    fired.append(time.monotonic())
                    os.kill(pid, signal.SIGINT)  # what Jupyter's interrupt button does

                threading.Thread(target=interrupt, daemon=True).start()
            if index == 5:
                marks.append(len(server.chat_requests))

        marks: list[int] = []
        out = run_notebook(tmp_path, monkeypatch, server, cells, before)
        requests = server.chat_requests
    assert fired, "the interrupt never fired"
    assert "UsageError: Interrupted: " in out[2] and "rows written; re-run the cell" in out[2]
    assert "Traceback" not in out[2] and "KeyboardInterrupt" not in out[2]
    kept = json.loads(next(x for x in out[3].splitlines() if x.startswith("DONE "))[5:])
    assert 0 < len(kept) < rows, len(kept)
    probe = _probe(out[4])
    assert probe["tasks"] == [] and probe["loops"] == ["ipychat-loop"], probe
    assert f"Done: {rows} rows in " in out[5] and f"{len(kept)} cached, 0 failed" in out[5]
    resent = {prompt_of(r) for r in requests[marks[0] :]} & {f"Say {t}" for t in kept}
    assert not resent, sorted(resent)[:5]
    assert "Echo: the next cell works" in out[6]
    tally.kernel.append(
        f"interrupt: SIGINT mid-%%chatmap kept {len(kept)}/{rows} rows, re-run sent "
        f"{len(requests) - marks[0] - 1} (0 resent), tasks left {len(probe['tasks'])}"
    )
