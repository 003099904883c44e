"""The panel's image attachments: pick image files (an ipywidgets FileUpload) and they go
with the next message as image parts, after its text.

The upload's value is what the browser sent (ipywidgets 8: a tuple of {name, type, size,
content, last_modified}, https://ipywidgets.readthedocs.io/en/stable/examples/Widget%20List.html#file-upload);
each file is read as `ipychat.image` reads bytes, so an unreadable file is refused at once
with one line and nothing else is attached. Sending takes the attachments; a refusal gives
them back with the prompt, so nothing picked is lost.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import Any

import ipywidgets as w

from ipychat.core.errors import ChatError
from ipychat.core.images import Image
from ipychat.core.messages import Content

__all__ = ["Attachments"]

# What the browser's file picker offers (the formats vision models take).
ACCEPT = "image/png,image/jpeg,image/gif,image/webp"


class Attachments:
    """The images attached to the panel's next message, and their widgets."""

    def __init__(self, on_error: Callable[[str], None], on_change: Callable[[], None]) -> None:
        self._on_error, self._on_change = on_error, on_change
        self.images: list[Image] = []
        self.upload = w.FileUpload(
            accept=ACCEPT, multiple=True, description="Image", icon="image",
            tooltip="Attach images to the next message (PNG, JPEG, GIF, WebP)",
        )  # fmt: skip
        self.shown = w.HTML()
        self.clear = w.Button(
            icon="times", tooltip="Remove the attached images", layout=w.Layout(width="2.6em")
        )
        self.clear.layout.display = "none"
        self.upload.add_class("ipychat-upload")
        self.shown.add_class("ipychat-attached")
        self.upload.observe(self._on_upload, "value")
        self.clear.on_click(lambda _: self.set([]))

    @property
    def widgets(self) -> list[w.Widget]:
        return [self.upload, self.shown, self.clear]

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if not files:
            return
        try:
            picked = [Image(_content(f), name=str(_field(f, "name"))) for f in files]
        except ChatError as exc:
            self._on_error(str(exc))
            return
        finally:
            self.upload.value = ()  # the same file can be picked again
        self._on_error("")
        self.set([*self.images, *picked])

    def set(self, images: Sequence[Image]) -> None:
        """Attach exactly `images` (none: clear), and show them."""
        self.images = list(images)
        names = ", ".join(f"{p.name or 'image'} ({p.describe})" for p in self.images)
        self.shown.value = f"📎 {html.escape(names)}" if names else ""
        self.clear.layout.display = None if self.images else "none"
        self._on_change()

    def take(self) -> list[Image]:
        """The attachments, handed to a message (the panel shows none after)."""
        taken = self.images
        self.set([])
        return taken

    def content(self, text: str, images: Sequence[Image] | None = None) -> Content:
        """A message's content: `text` alone, or its text part then each image's part."""
        pictures = self.images if images is None else images
        if not pictures:
            return text
        head = [{"type": "text", "text": text}] if text.strip() else []
        return [*head, *(p.part() for p in pictures)]


def _field(entry: Any, name: str) -> Any:
    return entry[name] if isinstance(entry, dict) else getattr(entry, name)


def _content(entry: Any) -> bytes:
    content = _field(entry, "content")
    return content.tobytes() if isinstance(content, memoryview) else bytes(content)
