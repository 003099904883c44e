"""A matplotlib figure from a real ipykernel (nbclient, the inline backend) reaches the server
as a PNG image part, and the tokens the dry run counted are the tokens the server bills
(issue 18 item 5, "Done when")."""

from __future__ import annotations

import re

import nbformat
import pytest
from nbclient import NotebookClient

from ipychat.core import tokens
from ipychat.testing import FakeOpenAIServer
from ipychat.testing.images import image_tokens

pytestmark = pytest.mark.slow


def _text(cell: nbformat.NotebookNode) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type == "error":
            parts.append(f"{out.ename}: {out.evalue}")
        else:
            parts.extend(str(v) for v in out.get("data", {}).values())
    return "\n".join(parts)


def test_a_figure_from_a_kernel_is_sent_and_counted(tmp_path) -> None:
    # The fake counts text with gpt-4o's tokenizer, so its usage and ipychat's estimate
    # can be compared to the token (by default it counts ~4 characters a token).
    with FakeOpenAIServer(count_tokens=lambda text: tokens.count_text(text, "gpt-4o")) as server:
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}  # fmt: skip
        nb.cells = [
            nbformat.v4.new_code_cell(source)
            for source in (
                "%load_ext ipychat",
                f"%chat endpoint {server.base_url}",
                "import matplotlib.pyplot as plt\n"
                "fig, ax = plt.subplots(figsize=(8, 6), dpi=100)\n"
                "ax.plot([1, 3, 2])",  # shown and closed by the inline backend
                "%%chat --dry-run -m gpt-4o\nDescribe {fig}",
                "%%chat -m gpt-4o\nDescribe {fig}",
                "import ipychat; print(ipychat.get_session().last_reply.usage.prompt_tokens)",
            )
        ]
        client = NotebookClient(
            nb, timeout=90, kernel_name="python3", allow_errors=True,
            resources={"metadata": {"path": str(tmp_path)}},
        )  # fmt: skip
        client.execute()
        [request] = server.chat_requests
    outputs = [_text(c) for c in nb.cells]
    assert any("image/png" in o.get("data", {}) for o in nb.cells[2].outputs)  # drawn inline
    [image] = request.images
    assert image.mime == "image/png" and image.width > 400 and image.height > 300
    content = request.body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "Describe "}
    assert content[1]["image_url"]["url"].startswith("data:image/png;base64,")
    estimated = re.search(r"would send 1 message · ([\d,]+) tokens", outputs[3])
    assert estimated, outputs[3]  # no "≈": one text part and gpt-4o's formula
    billed = int(outputs[5].strip())
    assert int(estimated.group(1).replace(",", "")) == billed
    assert billed > image_tokens(image, "gpt-4o") >= 85 + 170 * 2
    assert "Echo: Describe" in outputs[4] and "Error" not in "".join(outputs)
