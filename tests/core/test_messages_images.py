"""`{fig}` in a prompt (issue 18 item 5): images become content parts, the text around them
text parts, and the brace rules hold (nothing else turns into an image)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import pandas as pd
import pytest
from PIL import Image as PILImage

from ipychat.core import images
from ipychat.core.errors import TemplateError
from ipychat.core.messages import Thread, build_messages, interpolate, parts_text

matplotlib.use("Agg")


def png(width: int = 40, height: int = 30) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_figure_becomes_an_image_part_between_text_parts() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2, 2), dpi=40)
    ax.plot([1, 2])
    rendered = interpolate("What trend does {fig} show?\nOne sentence.", {"fig": fig})
    plt.close(fig)
    picture = images.image(fig)
    label = picture.label
    assert rendered.text == f"What trend does {label} show?\nOne sentence."
    assert rendered.names == ("fig",)
    assert rendered.notes == (f"{{fig}}: sent as an image ({picture.describe})",)
    content = rendered.content
    assert isinstance(content, list)
    assert content[0] == {"type": "text", "text": "What trend does "}
    assert content[1]["type"] == "image_url"
    assert content[1]["image_url"]["url"].sha256 == picture.sha256
    assert content[2] == {"type": "text", "text": " show?\nOne sentence."}


def test_pil_images_and_ipychat_image_and_two_of_them() -> None:
    pil = PILImage.new("RGB", (12, 10))
    low = images.image(png(), detail="low")
    rendered = interpolate("{a}{b} compare them", {"a": pil, "b": low})
    kinds = [p["type"] for p in rendered.content]
    assert kinds == ["image_url", "image_url", "text"]
    assert rendered.content[1]["image_url"]["detail"] == "low"
    assert parts_text(rendered.content) == "[image: 12×10] [image: 40×30] compare them"


def test_a_path_is_text_unless_asked_for_as_an_image(tmp_path: Path) -> None:
    """Precision: a string never turns into an image by looking like a path; `:image` (or
    `:image=low`) asks for the file."""
    path = tmp_path / "plot.png"
    path.write_bytes(png())
    ns = {"p": str(path)}
    assert interpolate("Read {p}", ns).content == f"Read {path}"
    asked = interpolate("Read {p:image}", ns).content
    assert [part["type"] for part in asked] == ["text", "image_url"]
    low = interpolate("Read {p:image=low}", ns).content
    assert low[1]["image_url"]["detail"] == "low"


@pytest.mark.parametrize(
    "template",
    [
        '{"type": "image"}',  # JSON stays JSON
        "{x:image}",  # an unknown name with a spec is left as written
        "{{fig}}",  # escaped
        "`{fig:image}` is how you send it",  # code: an unknown name stays
    ],
)
def test_braces_that_are_not_images_stay_text(template: str) -> None:
    rendered = interpolate(template, {"fig_": 1})
    assert isinstance(rendered.content, str) and not rendered.images


def test_the_escape_sends_the_braces_not_the_figure() -> None:
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        assert interpolate("{{fig}}", {"fig": fig}).content == "{fig}"
    finally:
        plt.close(fig)


def test_what_cannot_be_an_image_is_refused_in_one_line(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1]})
    with pytest.raises(TemplateError) as info:
        interpolate("{df:image}", {"df": frame})
    assert str(info.value) == (
        "{df:image}: ipychat.image takes a path, bytes, a PIL image or a matplotlib Figure, "
        "not a DataFrame."
    )
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(TemplateError, match=r"^\{p:image\}: notes\.txt is not a PNG, JPEG"):
        interpolate("{p:image}", {"p": str(tmp_path / "notes.txt")})


def test_whitespace_only_text_between_images_is_not_a_part() -> None:
    a, b = images.image(png(1, 1)), images.image(png(2, 2))
    content = interpolate("{a}\n\n{b}", {"a": a, "b": b}).content
    assert [p["type"] for p in content] == ["image_url", "image_url"]


def test_a_thread_keeps_its_images_and_builds_them_into_the_next_request() -> None:
    content = interpolate("see {a}", {"a": images.image(png())}).content
    thread = Thread("main")
    thread.add_turn(content, "a black rectangle")
    messages = build_messages("be brief", thread.messages, "and now?")
    assert messages[1]["content"] is content
    assert parts_text(messages[1]["content"]) == "see [image: 40×30]"
    assert parts_text("plain") == "plain" and parts_text(None) == ""
