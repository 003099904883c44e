"""Picking images in the panel (issue 18 item 5), through the widget models against the
loopback server: the upload's value is set as the browser's comm message sets it
(`set_state`, through ipywidgets' own deserializer), then the panel is clicked and polled."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from PIL import Image as PILImage

from ipychat.core import images
from ipychat.notebook.widget import ChatPanel, panel
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)
    return value


@pytest.fixture
def chat_panel(session: ChatSession) -> Iterator[ChatPanel]:
    p = panel(session)
    yield p
    p.close()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def pick(p: ChatPanel, *files: tuple[str, bytes]) -> None:
    """What the browser sends when files are picked (ipywidgets 8's FileUpload value)."""
    p.attachments.upload.set_state(
        {"value": [{"name": name, "type": "image/png", "size": len(data),
                    "content": memoryview(data), "last_modified": 0} for name, data in files]}
    )  # fmt: skip


def test_picked_images_go_with_the_next_message(
    chat_panel: ChatPanel, session: ChatSession, fake: FakeOpenAIServer
) -> None:
    p = chat_panel
    pick(p, ("chart.png", png(600, 300)), ("b.png", png(20, 20)))
    assert "chart.png (600×300 PNG)" in p.attachments.shown.value
    assert p.attachments.upload.value == ()  # the same file can be picked again
    p.prompt.value = "Compare these"
    expected = session.estimate(p.attachments.content("Compare these"))
    # (the picks alone were estimated first, then the prompt: wait for the latest)
    wait_for(lambda: f"{expected.prompt_tokens:,} tokens" in p.estimate.value, "the estimate")
    assert expected.prompt_tokens > session.estimate("Compare these").prompt_tokens + 2833
    p.send.click()
    wait_for(lambda: not p.send.disabled and fake.chat_requests, "the reply")
    [request] = fake.chat_requests
    assert [i.width for i in request.images] == [600, 20]
    content = request.body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "Compare these"}
    assert p.attachments.images == [] and p.attachments.shown.value == ""
    shown = wait_for(lambda: "[image: 600×300]" in p.transcript_text() and p.transcript_text(),
                     "the transcript")  # fmt: skip
    assert "base64" not in shown


def test_an_image_alone_can_be_sent(chat_panel: ChatPanel, fake: FakeOpenAIServer) -> None:
    pick(chat_panel, ("only.png", png(8, 8)))
    chat_panel.send.click()
    wait_for(lambda: fake.chat_requests, "the request")
    content = fake.chat_requests[0].body["messages"][-1]["content"]
    assert [part["type"] for part in content] == ["image_url"]


def test_a_file_that_is_not_an_image_is_refused_in_one_line(
    chat_panel: ChatPanel, fake: FakeOpenAIServer
) -> None:
    pick(chat_panel, ("notes.png", b"not really a png"))
    assert (
        "⚠ notes.png is not a PNG, JPEG, GIF or WebP image (the formats vision models take).</"
        in chat_panel.error.value
    )
    assert chat_panel.attachments.images == []


def test_a_refusal_gives_the_images_back(
    chat_panel: ChatPanel, session: ChatSession, fake: FakeOpenAIServer
) -> None:
    session.configure(model="gpt-3.5-turbo")
    pick(chat_panel, ("a.png", png(8, 8)))
    chat_panel.prompt.value = "What is it?"
    chat_panel.send.click()
    wait_for(lambda: "cannot read images" in chat_panel.error.value, "the refusal")
    wait_for(lambda: chat_panel.attachments.images, "the images back")
    assert chat_panel.prompt.value == "What is it?" and fake.chat_requests == []
    chat_panel.attachments.clear.click()
    assert chat_panel.attachments.images == [] and images.takes_images("gpt-3.5-turbo") is False
