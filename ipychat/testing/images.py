"""Image content parts, as the fake OpenAI server checks, counts and records them.

A double of what OpenAI documents, written apart from `ipychat.core.images` (the fake uses
ipychat's public API only), so a test comparing ipychat's estimate with the fake's usage
compares two readings of the same documentation:

- The part: `{"type": "image_url", "image_url": {"url": "https://…" | "data:image/…;base64,…",
  "detail": "low" | "high" | "auto"}}`, in user messages only
  (https://platform.openai.com/docs/api-reference/chat/create, "content parts"; another role
  gets "Image URLs are only allowed for messages with role 'user'", as quoted in
  openai/openai-node#1030).
- The formats: PNG, JPEG, GIF and WebP; anything else gets "You uploaded an unsupported
  image…" with code `invalid_image_format` (as quoted in marketing-factory/ai-filemetadata#20).
- The tokens (https://platform.openai.com/docs/guides/images-vision#calculating-costs): fit in
  2048×2048, shortest side to 768, base + tile × 512-px tiles; `low`: the base. gpt-4o's base
  and tile are 85 and 170, gpt-4o-mini's 2833 and 5667. The fake bills every model at one of
  these two (it does not know the patch-priced models) and a remote URL, which it cannot
  fetch, at `REMOTE_IMAGE_TOKENS`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "REMOTE_IMAGE_TOKENS",
    "ImageRejected",
    "SentImage",
    "check_parts",
    "image_tokens",
    "sent_images",
]

REMOTE_IMAGE_TOKENS = 765  # a 1024×1024 image at gpt-4o's rate: the fake cannot fetch URLs
_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
_UNSUPPORTED = (
    "You uploaded an unsupported image. Please make sure your image has of one the "
    "following formats: ['png', 'jpeg', 'gif', 'webp']."
)
_PART_TYPES = ("text", "image_url", "input_audio", "file", "refusal")


@dataclass(frozen=True)
class SentImage:
    """An image as the fake received it: where in the request, what it is, its bytes' hash."""

    message: int  # index in `messages`
    part: int  # index in that message's content
    mime: str  # "" for a remote URL
    width: int
    height: int
    detail: str
    sha256: str  # of the decoded bytes ("" for a remote URL)
    url: str  # the remote URL, or "" for an inline image


class ImageRejected(Exception):
    """What `check_parts` refuses: (message, code, param), for an OpenAI 400."""

    def __init__(self, message: str, code: str, param: str) -> None:
        super().__init__(message)
        self.code, self.param = code, param


def _size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) of PNG, GIF, JPEG and WebP bytes, else None."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return ("png", *struct.unpack(">II", data[16:24]))
        if data[:6] in (b"GIF87a", b"GIF89a"):
            return ("gif", *struct.unpack("<HH", data[6:10]))
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and data[12:16] == b"VP8X":
            w, h = (int.from_bytes(data[i : i + 3], "little") + 1 for i in (24, 27))
            return "webp", w, h
        if data[:3] == b"\xff\xd8\xff":
            i = 2
            while i + 9 < len(data) and data[i] == 0xFF:
                marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return "jpeg", w, h
                i += 2 + length
    except struct.error:
        return None
    return None


def _one(index: int, j: int, part: dict[str, Any]) -> SentImage:
    where = f"messages[{index}].content[{j}]"
    inner = part.get("image_url")
    url = inner.get("url") if isinstance(inner, dict) else None
    if not isinstance(url, str):
        raise ImageRejected(
            f"Missing required parameter: '{where}.image_url.url'.", "missing_required_parameter",
            f"{where}.image_url.url",
        )  # fmt: skip
    detail = inner.get("detail", "auto") if isinstance(inner, dict) else "auto"
    if detail not in ("auto", "low", "high"):
        raise ImageRejected(
            f"Invalid value: '{detail}'. Supported values are: 'auto', 'low', and 'high'.",
            "invalid_value", f"{where}.image_url.detail",
        )  # fmt: skip
    if not url.startswith("data:"):
        return SentImage(index, j, "", 0, 0, detail, "", url)
    head, _, encoded = url.partition(",")
    try:
        data = base64.b64decode(encoded, validate=True) if head.endswith(";base64") else b""
    except binascii.Error:
        data = b""
    found = _size(data)
    if found is None:
        raise ImageRejected(_UNSUPPORTED, "invalid_image_format", where)
    kind, width, height = found
    return SentImage(
        index, j, _FORMATS[kind], width, height, detail, hashlib.sha256(data).hexdigest(), ""
    )


def check_parts(messages: list[Any]) -> list[SentImage]:
    """The images of a request, or `ImageRejected` as OpenAI would refuse it."""
    images: list[SentImage] = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _PART_TYPES:
                allowed = ", ".join(f"'{t}'" for t in _PART_TYPES)
                raise ImageRejected(
                    f"Invalid value: '{kind}'. Supported values are: {allowed}.",
                    "invalid_value", f"messages[{i}].content[{j}].type",
                )  # fmt: skip
            if kind != "image_url":
                continue
            if message.get("role") != "user":
                raise ImageRejected(
                    f"Invalid 'messages[{i}]'. Image URLs are only allowed for messages with "
                    f"role 'user', but this message with role '{message.get('role')}' contains "
                    "an image URL.", "invalid_value", f"messages[{i}]",
                )  # fmt: skip
            images.append(_one(i, j, part))
    return images


def sent_images(body: Any) -> list[SentImage]:
    """The images of a recorded request's body (`RecordedRequest.body`); [] if it has none
    or is not a valid chat request."""
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list):
        return []
    try:
        return check_parts(messages)
    except ImageRejected:
        return []


def image_tokens(image: SentImage, model: str) -> int:
    """The prompt tokens OpenAI bills for one image (see the module docstring)."""
    mini = model.lower().rsplit("/", 1)[-1].startswith("gpt-4o-mini")
    base, tile = (2833, 5667) if mini else (85, 170)
    if image.detail == "low":
        return base
    if not image.mime:
        return REMOTE_IMAGE_TOKENS if not mini else base + 4 * tile
    w, h = float(image.width), float(image.height)
    if max(w, h) > 2048:
        w, h = w * 2048 / max(w, h), h * 2048 / max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 / min(w, h), h * 768 / min(w, h)
    return base + tile * math.ceil(w / 512) * math.ceil(h / 512)
