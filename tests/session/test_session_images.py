"""Images through the session to a real loopback server (issue 18 item 5): what the server
receives, the tokens the estimate counts against what it bills, the cache, the thread, the
refusals before sending, and the hygiene check on the text around an image."""

from __future__ import annotations

import io
import random
import string
from collections.abc import Iterator
from typing import Any

import pytest
from PIL import Image as PILImage

from ipychat.core import images
from ipychat.core.errors import ChatError, ImageError, SecretInPromptError
from ipychat.core.messages import interpolate
from ipychat.engine.cache import ResponseCache
from ipychat.session import ChatSession, Settings, reset_session
from ipychat.testing import FakeOpenAIServer


def png(width: int, height: int, color: tuple[int, int, int] = (10, 20, 30)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def prompt(text: str, **values: Any) -> Any:
    return interpolate(text, values).content


@pytest.fixture
def vision(fake: FakeOpenAIServer, tmp_path) -> Iterator[ChatSession]:
    s = ChatSession(
        Settings(base_url=fake.base_url, api_key="sk-test-" + "x" * 20, model="gpt-4o"),
        cache=ResponseCache(tmp_path / "cache"),
    )
    reset_session(s)
    yield s
    reset_session(None)


@pytest.mark.parametrize(("model", "size"), [("gpt-4o", (1024, 1024)), ("gpt-4o-mini", (600, 300))])
def test_the_server_gets_the_png_and_bills_what_the_estimate_counted(
    vision: ChatSession, fake: FakeOpenAIServer, model: str, size: tuple[int, int]
) -> None:
    """The image's share of the estimate equals its share of the server's usage (the fake
    bills by OpenAI's formula, written apart from ipychat's)."""
    picture = images.image(png(*size))
    text_only = vision.prepare("Describe it", model=model, new=True).estimate
    with_image = vision.prepare(prompt("Describe {p}", p=picture), model=model, new=True).estimate
    plain = vision.ask("Describe it", model=model, new=True, cache=False)
    reply = vision.ask(prompt("Describe {p}", p=picture), model=model, new=True, cache=False)
    sent = fake.requests[-1]
    [received] = sent.images
    assert (received.mime, received.width, received.height) == ("image/png", *size)
    assert received.sha256 == picture.sha256
    assert sent.body["messages"][-1]["content"][0] == {"type": "text", "text": "Describe "}
    counted = with_image.prompt_tokens - text_only.prompt_tokens
    billed = reply.usage.prompt_tokens - plain.usage.prompt_tokens
    assert counted == billed == images.image_tokens(*size, None, model)[0]
    assert with_image.cost_high > text_only.cost_high
    # The ledger records tokens and cost, never the image (nor any prompt).
    assert "base64" not in repr(vision.usage.rows) and picture.sha256 not in repr(vision.usage.rows)
    assert vision.usage.rows[-1].prompt_tokens == reply.usage.prompt_tokens


def test_the_same_image_is_a_cache_hit_another_is_not(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    first = vision.ask(prompt("What is {p}?", p=images.image(png(20, 20))), new=True)
    again = vision.ask(prompt("What is {p}?", p=images.image(png(20, 20))), new=True)
    other = vision.ask(prompt("What is {p}?", p=images.image(png(20, 21))), new=True)
    assert not first.cached and again.cached and not other.cached
    assert len(fake.requests) == 2


def test_the_thread_resends_its_images_and_counts_them_each_turn(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    picture = images.image(png(1024, 1024))
    vision.ask(prompt("Look at {p}", p=picture))
    follow = vision.prepare("And its colour?")
    vision.ask("And its colour?")
    assert [len(r.images) for r in fake.requests] == [1, 1]
    assert fake.requests[1].images[0].message == 0  # the first turn's user message
    alone = vision.prepare("And its colour?", new=True).estimate.prompt_tokens
    assert follow.estimate.prompt_tokens - alone >= 765  # the image is paid again


def test_a_text_only_model_is_refused_before_sending(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    with pytest.raises(ImageError) as info:
        vision.ask(prompt("Describe {p}", p=images.image(png(8, 8))), model="gpt-3.5-turbo")
    assert str(info.value).startswith("gpt-3.5-turbo cannot read images, so nothing was sent")
    assert fake.requests == [] and vision.threads["main"].messages == []
    assert vision.usage.rows == []


def test_an_unknown_model_is_sent_the_image_with_an_approximate_estimate(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    prepared = vision.prepare(prompt("{p}", p=images.image(png(8, 8))), model="my-vlm")
    assert prepared.estimate.approximate
    vision.ask(prompt("{p}", p=images.image(png(8, 8))), model="my-vlm")
    assert len(fake.requests[-1].images) == 1


def test_credentials_in_the_text_around_an_image_are_refused(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    rng = random.Random(18)  # a key shape built at run time, never a literal in the repo
    key = "sk-proj-" + "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(64))
    with pytest.raises(SecretInPromptError):
        vision.ask(prompt(f"key {key} and {{p}}", p=images.image(png(8, 8))))
    assert fake.requests == []


def test_redaction_masks_the_text_and_keeps_the_image(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    vision.configure(redact=True)
    picture = images.image(png(8, 8))
    vision.ask(prompt("mail ann@example.com about {p}", p=picture))
    content = fake.requests[-1].body["messages"][-1]["content"]
    assert "ann@example.com" not in content[0]["text"]
    assert fake.requests[-1].images[0].sha256 == picture.sha256


def test_the_fake_refuses_what_openai_refuses(fake: FakeOpenAIServer) -> None:
    """The double: images only in user messages, only the four formats, a known detail."""
    import httpx

    good = images.image(png(4, 4)).part()
    bad_format = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8="}}
    bad_detail = {"type": "image_url", "image_url": {"url": good["image_url"]["url"],
                                                     "detail": "max"}}  # fmt: skip
    cases = [
        ([{"role": "system", "content": [good]}], "invalid_value", "messages[0]"),
        ([{"role": "user", "content": [bad_format]}], "invalid_image_format",
         "messages[0].content[0]"),
        ([{"role": "user", "content": [bad_detail]}], "invalid_value",
         "messages[0].content[0].image_url.detail"),
    ]  # fmt: skip
    for messages, code, param in cases:
        r = httpx.post(
            fake.base_url + "/chat/completions",
            json={"model": "gpt-4o", "messages": messages},
            headers={"Authorization": "Bearer sk-test"},
        )
        assert r.status_code == 400, messages
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, param)


@pytest.mark.local_model
def test_the_local_model_refuses_images_before_sending(tmp_path) -> None:
    """SmolLM2 reads text only: an image is refused before the request is built, with the
    real llama.cpp server up (so a request could have gone), and nothing is recorded."""
    from ipychat.engine import local

    server = local.get_server()
    try:
        s = ChatSession(Settings(temperature=0.0), cache=ResponseCache(tmp_path / "cache"))
        try:
            assert s.endpoint().kind == "local"
            with pytest.raises(ImageError) as info:
                s.ask(prompt("What is in {p}?", p=images.image(png(16, 16))), max_tokens=5)
            assert str(info.value).startswith("The local model reads text only, so the image")
            assert s.usage.rows == [] and s.threads["main"].messages == []
            with pytest.raises(ImageError):
                s.prepare(prompt("{p}", p=images.image(png(16, 16))))  # --dry-run too
            assert s.ask("Say hi.", max_tokens=5).text  # the server was there all along
            assert server.base_url
        finally:
            s.close()
    finally:
        local.stop_server()


def test_the_credential_check_reads_text_parts_never_an_images_base64(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    """Precision: base64 is made of letters, digits, `+` and `/`, so an image's data URL can
    spell a key shape by chance; only the text the user wrote is checked."""
    import base64

    rng = random.Random(3)
    aws = "AKIA" + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16))
    data = png(8, 8)
    data += b"\0" * (-len(data) % 3)  # so what follows starts a base64 quantum
    data += base64.b64decode("//" + aws + "//")  # bytes after IEND: decoders ignore them
    picture = images.image(data)
    assert f"//{aws}//" in picture.url
    vision.ask(prompt("What is {p}?", p=picture))
    assert fake.requests[-1].images[0].sha256 == picture.sha256
    with pytest.raises(SecretInPromptError):
        vision.ask(prompt(f"What is {aws} in {{p}}?", p=picture))


def test_from_python_a_list_of_texts_and_images_is_a_prompt(
    vision: ChatSession, fake: FakeOpenAIServer
) -> None:
    picture = images.image(png(30, 30))
    pil = PILImage.new("RGB", (5, 5))
    estimate = vision.estimate(["What are these?", picture, pil])
    reply = vision.ask(["What are these?", picture, pil], new=True)
    content = fake.requests[-1].body["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "What are these?"}
    assert [i.width for i in fake.requests[-1].images] == [30, 5]
    assert estimate.prompt_tokens == vision.prepare(content, new=True).estimate.prompt_tokens
    assert reply.text.startswith("Echo: What are these?")
    with pytest.raises(ChatError, match="The prompt is empty"):
        vision.ask(["  "])
    with pytest.raises(ChatError, match="The prompt is empty"):
        vision.ask(42)  # type: ignore[arg-type]
