"""Image columns in %%chatmap / session.map (issue 18 item 5), against FakeOpenAIServer over
real sockets: a column of images or of paths (`{column:image}`) sends image parts per row,
the same picture is one request, a bad value is its row's error, and the brace rules hold."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image as PILImage

from ipychat.core import images
from ipychat.core.errors import ImageError, TemplateError
from ipychat.engine.cache import ResponseCache
from ipychat.map.template import compile_template
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer


@pytest.fixture
def vision(fake: FakeOpenAIServer, tmp_path) -> Iterator[ChatSession]:
    s = ChatSession(
        Settings(base_url=fake.base_url, api_key="sk-test-" + "k" * 20, model="gpt-4o"),
        cache=ResponseCache(tmp_path / "cache"),
    )
    yield s
    s.close()
    reset_session(None)


def pil(color: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> Any:
    return PILImage.new("RGB", size, color)


def png(color: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    buffer = io.BytesIO()
    pil(color, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_column_of_images_sends_one_image_part_per_row(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    red, blue = pil((255, 0, 0)), pil((0, 0, 255))
    df = pd.DataFrame(
        {"img": [red, blue, pil((255, 0, 0)), images.image(png((0, 255, 0)))],
         "title": ["a", "b", "a", "c"]}
    )  # fmt: skip
    out = vision.map(df, "Title {title}: what colour is {img}?", "colour")
    assert "_error" not in out and out["colour"].str.startswith("Echo: Title").all()
    assert len(fake.chat_requests) == 3  # rows 0 and 2: the same picture and title, sent once
    sent = {r.images[0].sha256 for r in fake.chat_requests}
    assert sent == {images.image(x).sha256 for x in (red, blue, df["img"][3])}
    content = fake.chat_requests[0].body["messages"][-1]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "text"]
    assert content[0]["text"] == "Title a: what colour is "
    again = vision.map(df, "Title {title}: what colour is {img}?", "colour")
    assert len(fake.chat_requests) == 3 and again["colour"].tolist() == out["colour"].tolist()


def test_a_column_of_paths_is_text_unless_marked_image(
    vision: ChatSession, fake: FakeOpenAIServer, tmp_path: Path
) -> None:
    paths = []
    for i, color in enumerate([(1, 2, 3), (4, 5, 6)]):
        path = tmp_path / f"p{i}.png"
        path.write_bytes(png(color))
        paths.append(str(path))
    df = pd.DataFrame({"path": [*paths, str(tmp_path / "missing.png")]})
    as_text = vision.map(df, "Read {path}", "r")
    assert [len(r.images) for r in fake.chat_requests] == [0, 0, 0]  # precision: text
    assert "_error" not in as_text
    out = vision.map(df, "Describe {path:image=low}", "r")
    assert out["_error"].isna().tolist() == [True, True, False]
    assert out["_error"][2].startswith("column 'path': Cannot read the image")
    plan = vision.map(df, "Describe {path:image=low}", "r", dry_run=True)
    assert (plan.unreadable, plan.skipped) == (1, 0)
    assert "1 with an unreadable image (see _error)" in plan.line()
    with_images = [r for r in fake.chat_requests if r.images]
    assert len(with_images) == 2 and {r.images[0].detail for r in with_images} == {"low"}


def test_the_plan_counts_the_images_and_shows_their_labels(vision: ChatSession) -> None:
    df = pd.DataFrame({"img": [pil((9, 9, 9), (1024, 1024)), pil((8, 8, 8), (1024, 1024))]})
    text_plan = vision.map(pd.DataFrame({"img": ["x", "y"]}), "What is {img}?", dry_run=True)
    plan = vision.map(df, "What is {img}?", dry_run=True)
    assert plan.first_prompt == "What is [image: 1024×1024 PNG]?"
    assert plan.prompt_tokens - text_plan.prompt_tokens >= 2 * 765  # gpt-4o: 765 each


def test_a_text_only_model_refuses_the_map_before_sending(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    df = pd.DataFrame({"img": [pil((1, 1, 1))]})
    with pytest.raises(ImageError, match=r"^gpt-3\.5-turbo cannot read images"):
        vision.map(df, "{img}", model="gpt-3.5-turbo")
    assert fake.chat_requests == []


def test_image_placeholders_in_the_template() -> None:
    t = compile_template("{p} looks like {p:image} and {q:image=high}", ["p", "q"])
    assert t.columns == ("p", "p", "q") and t.kinds == ("text", "image", "image=high")
    assert compile_template("{p}", ["p"]).kind(0) == "text"
    with pytest.raises(TemplateError, match=r"^\{nope\} is not a column"):
        compile_template("{p} {nope:image}", ["p"])
    # Braces that are not a column stay text: JSON, and a spec on a non-identifier.
    t = compile_template('{p} {"kind": "image"} {a b:image}', ["p"])
    assert t.render(["x"]) == 'x {"kind": "image"} {a b:image}'


def test_a_batch_carries_the_images_in_its_jsonl(tmp_path) -> None:
    """--batch: each JSONL line's body holds the row's image part, as the chat endpoint
    takes it, and the Batch API's replies fill the frame."""
    import json

    from ipychat.map import batch

    with FakeOpenAIServer(batch={"delay": 0.01}) as server:
        s = ChatSession(
            Settings(base_url=server.base_url, api_key="sk-test-" + "k" * 20, model="gpt-4o"),
            cache=ResponseCache(tmp_path / "cache"),
        )
        try:
            df = pd.DataFrame({"img": [pil((1, 2, 3)), pil((4, 5, 6))]})
            result = batch.run(s, df, "Colour of {img}?", "reply", poll_interval=0.01)
        finally:
            s.close()
        files = [f for f in server.batch_api.files.values() if f.purpose == "batch"]
    assert result.frame["reply"].tolist() == ["Echo: Colour of  ?"] * 2  # the text parts
    lines = [json.loads(line) for f in files for line in f.data.splitlines()]
    sent = [line["body"]["messages"][-1]["content"][1]["image_url"]["url"] for line in lines]
    assert sorted(u[:22] for u in sent) == ["data:image/png;base64,"] * 2
    assert {images.image(pil(c)).url for c in ((1, 2, 3), (4, 5, 6))} == set(sent)
