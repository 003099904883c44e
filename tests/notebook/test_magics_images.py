"""`{fig}` in %%chat through a real InteractiveShell against the loopback server (issue 18
item 5): the image goes out as a part, the dry run and the history show its label, never
its bytes, and what cannot be sent is a one-line UsageError with nothing sent."""

from __future__ import annotations

import matplotlib
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.core import images
from ipychat.testing import FakeOpenAIServer

matplotlib.use("Agg")


def run(ip, line: str, cell: str):
    with capture_output() as out:
        ip.run_cell_magic("chat", line, cell)
    return out


def shown(out) -> str:
    parts = [out.stdout]
    for o in out.outputs:
        parts.extend(str(v) for v in o.data.values())
    return "\n".join(parts)


@pytest.fixture
def fig(ip):
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(3, 2), dpi=60)
    ax.bar(["a", "b"], [3, 5])
    ip.user_ns["fig"] = figure
    yield figure
    plt.close(figure)


def test_a_figure_goes_out_as_an_image_part(ip, fake: FakeOpenAIServer, fig) -> None:
    out = shown(run(ip, "", "Which bar is taller in {fig}?"))
    assert "Echo: Which bar is taller in" in out and "base64" not in out
    [request] = fake.chat_requests
    [received] = request.images
    picture = images.image(fig)
    assert received.mime == "image/png" and received.sha256 == picture.sha256
    assert (received.width, received.height) == (picture.width, picture.height)
    with capture_output() as history:
        ip.run_line_magic("chat", "history")
    text = shown(history)
    assert f"Which bar is taller in [image: {picture.width}×{picture.height}]?" in text
    assert "base64" not in text


def test_dry_run_shows_the_label_and_counts_the_image(ip, fake: FakeOpenAIServer, fig) -> None:
    plain = shown(run(ip, "--dry-run", "Which bar is taller in the chart?"))
    out = shown(run(ip, "--dry-run", "Which bar is taller in {fig}?"))
    picture = images.image(fig)
    assert picture.label in out and "sent as an image" in out and "base64" not in out
    assert fake.chat_requests == []

    def tokens(text: str) -> int:
        import re

        found = re.search(r"would send 1 message · ≈?([\d,]+) tokens", text)
        assert found, text
        return int(found.group(1).replace(",", ""))

    # gpt-4o-mini (the session's model) bills 2833 + 5667 a tile: one tile here.
    assert picture.width <= 512 and picture.height <= 512
    assert abs(tokens(out) - tokens(plain) - (2833 + 5667)) <= 3  # the text differs a little


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("-m gpt-3.5-turbo", "Describe {fig}", r"^gpt-3\.5-turbo cannot read images, so nothing"),
        ("", "Describe {p:image}", r"^\{p:image\}: Cannot read the image /nonexistent/x\.png"),
    ],
)
def test_what_cannot_be_sent_is_one_line(
    ip, fake: FakeOpenAIServer, fig, line: str, cell: str, message: str
) -> None:
    ip.user_ns["p"] = "/nonexistent/x.png"
    with pytest.raises(UsageError, match=message):
        run(ip, line, cell)
    assert fake.chat_requests == []
