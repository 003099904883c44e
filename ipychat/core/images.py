"""Images in prompts: reading them, the content part they become, their tokens, who takes them.

Pure: no I/O beyond reading a file the user named, and no third-party import. A PIL image and
a matplotlib Figure are recognised by duck typing and asked to write themselves as PNG.

- `image(source)` (public as `ipychat.image`) reads a path, bytes, a PIL image or a Figure into
  an `Image`: the encoded bytes, their format and size, and the sha256 the cache key uses.
- `Image.part()` is its OpenAI content part, `{"type": "image_url", "image_url": {"url":
  "data:image/png;base64,…"}}` (https://platform.openai.com/docs/guides/images-vision, "Passing
  a Base64 encoded image"). The URL is a `DataURL`: a `str` (so it serialises as the wire wants)
  that remembers the image's sha256 and size, so neither the cache key nor the token count
  decodes or re-serialises the base64.
- `image_tokens(width, height, detail, model)` is OpenAI's published formula
  (https://platform.openai.com/docs/guides/images-vision#calculating-costs): tile models scale
  the image to fit 2048×2048, then its shortest side to 768, and pay base + tile × (512-px
  tiles); `detail: "low"` pays the base alone. gpt-4o-mini's base and tile are 2833 and 5667
  (the same dollars per image as gpt-4o at its lower price); o1/o3 75 and 150; gpt-5 70 and 140.
  Patch models (gpt-4.1-mini/-nano, o4-mini, gpt-5-mini/-nano) pay per 32-px patch, at most
  1536 patches (the image is scaled down to fit), times a multiplier. The multipliers are
  documented and disputed (openai/openai-python#2851; community.openai.com/t/1344040 measured
  1.20 for gpt-5-mini where the guide says 1.62): the documented, higher figure is used, so a
  budget check errs on the safe side. `detail: "auto"` (the default) is counted as "high".
- `takes_images(model)`: True, False, or None when the model is not known either way.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import math
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ipychat.core.errors import ImageError

__all__ = [
    "MAX_IMAGE_BYTES",
    "DataURL",
    "Image",
    "ImageInfo",
    "as_image",
    "check_can_send",
    "has_images",
    "image",
    "image_info",
    "image_tokens",
    "is_image",
    "takes_images",
]

# OpenAI refuses an image over 20 MB (the guide's "Image input requirements"); said here,
# before a base64 of 27 MB is built and sent.
MAX_IMAGE_BYTES: Final = 20 * 1024 * 1024
DETAILS: Final = ("low", "high", "auto")


class DataURL(str):
    """A `data:` URL that remembers its image's sha256 and size (see the module docstring)."""

    sha256: str
    width: int
    height: int

    def __new__(cls, url: str, sha256: str, width: int, height: int) -> DataURL:
        self = super().__new__(cls, url)
        self.sha256, self.width, self.height = sha256, width, height
        return self

    def __reduce__(self) -> Any:  # copy/deepcopy/pickle keep the remembered facts
        return (DataURL, (str(self), self.sha256, self.width, self.height))


class Image:
    """An encoded image (PNG, JPEG, GIF or WebP) ready to send; `ipychat.image(...)` makes one.

    Two images are equal when their bytes and detail are: the cache key and %%chatmap's
    de-duplication see the same picture as the same prompt."""

    __slots__ = ("_url", "data", "detail", "height", "mime", "name", "sha256", "width")

    def __init__(self, data: bytes, *, detail: str | None = None, name: str = "") -> None:
        if detail is not None and detail not in DETAILS:
            raise ImageError(f"detail must be 'low', 'high' or 'auto', not {detail!r}.")
        if len(data) > MAX_IMAGE_BYTES:
            raise _too_large(name, len(data))
        self.mime, self.width, self.height = _sniff(data, name)
        self.data, self.detail, self.name = data, detail, name
        self.sha256 = hashlib.sha256(data).hexdigest()
        self._url: DataURL | None = None

    @property
    def url(self) -> DataURL:
        """The `data:` URL, built once (every turn that resends the image shares it)."""
        if self._url is None:
            encoded = base64.b64encode(self.data).decode("ascii")
            url = f"data:{self.mime};base64,{encoded}"
            self._url = DataURL(url, self.sha256, self.width, self.height)
        return self._url

    def part(self) -> dict[str, Any]:
        """The OpenAI chat content part of this image."""
        body: dict[str, Any] = {"url": self.url}
        if self.detail is not None:
            body["detail"] = self.detail
        return {"type": "image_url", "image_url": body}

    @property
    def describe(self) -> str:
        """`640×480 PNG`."""
        return f"{self.width}×{self.height} {self.mime.removeprefix('image/').upper()}"

    @property
    def label(self) -> str:
        """How the image shows in a prompt's text (--dry-run, the panel, history)."""
        return f"[image: {self.describe}]"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Image):
            return NotImplemented
        return self.sha256 == other.sha256 and self.detail == other.detail

    def __hash__(self) -> int:
        return hash((self.sha256, self.detail))

    def __repr__(self) -> str:
        where = f" from {self.name}" if self.name else ""
        return f"<ipychat.Image {self.width}×{self.height} {self.mime}{where}>"


def image(source: Any, *, detail: str | None = None) -> Image:
    """An image to put in a prompt (`{img}` in %%chat, a column in %%chatmap).

    `source` is a path (str or os.PathLike) to a PNG, JPEG, GIF or WebP file, its bytes, a
    PIL image or a matplotlib Figure (both written as PNG). URLs are refused: ipychat never
    downloads, and handing a URL to the provider would send it to fetch what you cannot see.
    `detail` is OpenAI's "low" (a flat, small price, 512 px), "high" or "auto" (the default).
    """
    if isinstance(source, Image):
        return source if detail is None else Image(source.data, detail=detail, name=source.name)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Image(bytes(source), detail=detail)
    if isinstance(source, (str, os.PathLike)):
        return _from_path(os.fspath(source), detail)
    png = _png_of(source)
    if png is None:
        raise ImageError(
            f"ipychat.image takes a path, bytes, a PIL image or a matplotlib Figure, not a "
            f"{type(source).__name__}."
        )
    return Image(png, detail=detail, name=_object_name(source))


def _from_path(path: str, detail: str | None) -> Image:
    if re.match(r"[a-z][a-z0-9+.-]*://", path, re.I):
        raise ImageError(
            f"{path} is a URL: ipychat sends images from this machine only. Download it and "
            "pass the file's path."
        )
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)  # no more: a larger file is refused unread
            if len(data) > MAX_IMAGE_BYTES:
                raise _too_large(name, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        raise ImageError(f"Cannot read the image {path}: {exc.strerror or exc}.") from None
    return Image(data, detail=detail, name=name)


def _too_large(name: str, size: int) -> ImageError:
    return ImageError(
        f"{name or 'The image'} is {size / 2**20:.1f} MB; providers take at most 20 MB. "
        "Save it smaller (a lower dpi, or JPEG) and try again."
    )


def _object_name(value: Any) -> str:
    return "a Figure" if _is_figure(value) else "a PIL image"


def _is_figure(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("matplotlib.") and callable(getattr(value, "savefig", None))


def _is_pil(value: Any) -> bool:
    module = type(value).__module__ or ""
    return module.startswith("PIL.") and callable(getattr(value, "save", None))


def is_image(value: Any) -> bool:
    """True for what `{name}` sends as an image: an `Image`, a PIL image, a Figure."""
    return isinstance(value, Image) or _is_figure(value) or _is_pil(value)


def as_image(value: Any) -> Image | None:
    """`value` as an Image when it is one (`is_image`), else None."""
    if isinstance(value, Image):
        return value
    if not is_image(value):
        return None
    return image(value)


def _png_of(value: Any) -> bytes | None:
    """A Figure's or a PIL image's PNG bytes (what the notebook shows of it), or None."""
    buffer = io.BytesIO()
    try:
        if _is_figure(value):
            # As the inline backend draws it: a tight box, so the margins cost no tiles.
            value.savefig(buffer, format="png", bbox_inches="tight")
        elif _is_pil(value):
            value.save(buffer, format="PNG")
        else:
            return None
    except Exception as exc:  # user objects: a broken figure says so in one line
        said = " ".join(str(exc).split())  # (mathtext errors span lines: one line here)
        raise ImageError(
            f"{_object_name(value)} could not be written as PNG ({type(exc).__name__}: {said})."
        ) from None
    return buffer.getvalue()


# ----- what the bytes are ------------------------------------------------------------------


def _sniff(data: bytes, name: str = "") -> tuple[str, int, int]:
    """(MIME type, width, height) from the file's header, or ImageError."""
    size: tuple[int, int] | None = None
    mime = _mime(data)
    try:
        if mime == "image/png":
            size = struct.unpack(">II", data[16:24])
        elif mime == "image/gif":
            size = struct.unpack("<HH", data[6:10])
        elif mime == "image/webp":
            size = _webp_size(data)
        elif mime == "image/jpeg":
            size = _jpeg_size(data)
    except struct.error:
        size = None
    what = name or "The image"
    if not mime:
        raise ImageError(
            f"{what} is not a PNG, JPEG, GIF or WebP image (the formats vision models take)."
        )
    if size is None or min(size) < 1:
        raise ImageError(
            f"{what} is a damaged {mime.split('/')[1].upper()}: its size is unreadable."
        )
    return mime, size[0], size[1]


def _mime(data: bytes) -> str:
    """The image format the magic bytes say ("" when none of the four)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return ""


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit width and height after the frame tag and start code
        w, h = struct.unpack("<HH", data[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14 bits each, minus one, after the signature byte
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas size, minus one
        w = int.from_bytes(data[24:27], "little") + 1
        h = int.from_bytes(data[27:30], "little") + 1
        return w, h
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a JPEG's start-of-frame segment (SOF0…SOF15 but DHT/JPG/DAC)."""
    i = 2
    while i + 9 <= len(data):  # a frame's size is its bytes i+5 … i+8
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return w, h
        i += 2 + length
    return None


# ----- what an image part is ------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What the cache key and the token count need of an image part."""

    sha256: str | None  # of the image's bytes (None: a remote URL, hashed as written)
    width: int | None  # None: unknown (a remote URL)
    height: int | None
    detail: str | None


def _is_image_part(part: Any) -> bool:
    return isinstance(part, Mapping) and part.get("type") in ("image_url", "input_image")


def image_info(part: Mapping[str, Any]) -> ImageInfo:
    """The sha256, size and detail of an image content part (OpenAI's `image_url` form, or
    the Responses API's `input_image`). A `DataURL` says them at once; another `data:` URL
    (a thread restored from a notebook) is decoded once here; a remote URL is unknown."""
    inner = part.get("image_url")
    if isinstance(inner, Mapping):
        url, detail = inner.get("url"), inner.get("detail")
    else:  # input_image: {"type": "input_image", "image_url": "…", "detail": "…"}
        url, detail = inner, part.get("detail")
    if isinstance(url, DataURL):
        return ImageInfo(url.sha256, url.width, url.height, detail)
    if isinstance(url, str) and url.startswith("data:") and ";base64," in url[:100]:
        try:
            data = base64.b64decode(url.split(",", 1)[1], validate=False)
            _, width, height = _sniff(data)
        except (binascii.Error, ImageError):
            return ImageInfo(None, None, None, detail)
        return ImageInfo(hashlib.sha256(data).hexdigest(), width, height, detail)
    return ImageInfo(None, None, None, detail)


def has_images(messages: Iterable[Mapping[str, Any]]) -> bool:
    """True when a message's content holds an image part."""
    for message in messages:
        content = message.get("content")
        if isinstance(content, list) and any(_is_image_part(p) for p in content):
            return True
    return False


# ----- tokens ----------------------------------------------------------------------------------

# (base, tile) of the tile models, longest prefix first; gpt-4o's for a model not listed.
_TILES: Final = (
    ("gpt-4o-mini", 2833, 5667),
    ("computer-use-preview", 65, 129),
    ("gpt-5-chat", 70, 140),
    ("o1-pro", 75, 150),
    ("o1", 75, 150),
    ("o3", 75, 150),
    ("gpt-5", 70, 140),
)
_GPT_4O: Final = (85, 170)
# Patch models and their multipliers (tokens per 32-px patch).
_PATCHES: Final = (
    ("gpt-4.1-mini", 1.62),
    ("gpt-4.1-nano", 2.46),
    ("gpt-5-mini", 1.62),
    ("gpt-5-nano", 2.46),
    ("o4-mini", 1.72),
)
_MAX_PATCHES: Final = 1536


def _family(model: str) -> str:
    """The model's name without a provider path (`openai/gpt-4o` → `gpt-4o`), lower case."""
    return model.strip().lower().rsplit("/", 1)[-1]


def _match(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + "-")


def image_tokens(
    width: int | None, height: int | None, detail: str | None, model: str
) -> tuple[int, bool]:
    """(prompt tokens, exact) of one image for `model` (see the module docstring). `exact` is
    False for a model whose formula is not published (gpt-4o's is used) or an unknown size
    (then the most any image can cost is counted)."""
    name = _family(model)
    for prefix, multiplier in _PATCHES:
        if _match(name, prefix):
            if width is None or height is None:
                return math.ceil(_MAX_PATCHES * multiplier), False
            return math.ceil(_patches(width, height) * multiplier), True
    base, tile = next(((b, t) for p, b, t in _TILES if _match(name, p)), _GPT_4O)
    known = (
        any(_match(name, p) for p, _, _ in _TILES)
        or _match(name, "gpt-4o")
        or any(_match(name, p) for p in ("gpt-4.1", "gpt-4.5", "gpt-4-turbo", "chatgpt-4o"))
    )
    if detail == "low":
        return base, known
    if width is None or height is None:
        return base + tile * 8, False  # 768×2048 after scaling: 2×4 tiles, the most there are
    return base + tile * _tiles(width, height), known


def _tiles(width: int, height: int) -> int:
    """512-px tiles after fitting 2048×2048, then the shortest side to 768 (downscaling only)."""
    w, h = float(width), float(height)
    if max(w, h) > 2048:
        scale = 2048 / max(w, h)
        w, h = w * scale, h * scale
    if min(w, h) > 768:
        scale = 768 / min(w, h)
        w, h = w * scale, h * scale
    return math.ceil(w / 512) * math.ceil(h / 512)


def _patches(width: int, height: int) -> int:
    """32-px patches, the image scaled down to fit 1536 of them (the guide's steps A-B)."""
    patches = math.ceil(width / 32) * math.ceil(height / 32)
    if patches <= _MAX_PATCHES:
        return patches
    ratio = math.sqrt(32 * 32 * _MAX_PATCHES / (width * height))
    ratio *= min(
        math.floor(width * ratio / 32) / (width * ratio / 32),
        math.floor(height * ratio / 32) / (height * ratio / 32),
    )
    return min(
        math.ceil(math.floor(width * ratio) / 32) * math.ceil(math.floor(height * ratio) / 32),
        _MAX_PATCHES,
    )


# ----- who takes images -------------------------------------------------------------------

# Prefixes of models documented to read images (OpenAI's model pages; Anthropic, Google,
# Mistral and Meta's vision models as OpenAI-compatible servers name them), and of models
# documented as text-only. A model in neither list is sent the image (a server of models this
# table has not heard of may well take it) and its estimate is marked "≈".
_VISION: Final = (
    "gpt-4o", "chatgpt-4o", "gpt-4.1", "gpt-4.5", "gpt-4-turbo", "gpt-4-vision",
    "gpt-5", "o1", "o3", "o4-mini", "computer-use-preview",
    "claude-3", "claude-opus-4", "claude-sonnet-4", "claude-haiku-4", "claude-3-5",
    "gemini", "pixtral", "llava", "qwen2-vl", "qwen2.5-vl", "llama-3.2-11b-vision",
    "llama-3.2-90b-vision", "llama-4",
)  # fmt: skip
_TEXT_ONLY: Final = (
    "gpt-3.5", "gpt-4-0613", "gpt-4-0314", "gpt-4-32k", "gpt-4-1106-preview",
    "gpt-4-0125-preview", "gpt-4-turbo-preview", "o1-mini", "o1-preview", "o3-mini",
    "gpt-oss", "smollm", "davinci", "babbage", "text-",
)  # fmt: skip


def takes_images(model: str) -> bool | None:
    """True when `model` is known to read images, False when known not to, else None."""
    name = _family(model)
    if name == "gpt-4" or any(_match(name, p) or name.startswith(p) for p in _TEXT_ONLY):
        return False
    if any(_match(name, p) for p in _VISION):
        return True
    return None


def check_can_send(
    messages: Iterable[Mapping[str, Any]], model: str, *, local: Callable[[], bool]
) -> None:
    """Refuse, before anything is sent, images for a model that cannot read them (ImageError):
    the embedded local model (text-only), or a model `takes_images` knows as text-only.
    `local()` (is the endpoint the local model?) is asked only when there are images."""
    if not has_images(messages):
        return
    if local():
        raise ImageError(
            "The local model reads text only, so the image was not sent: set OPENAI_API_KEY "
            "or %chat endpoint URL to use a vision model, or leave the image out."
        )
    if takes_images(model) is False:
        raise ImageError(
            f"{model} cannot read images, so nothing was sent: use a vision model "
            "(-m gpt-4o-mini), or leave the image out."
        )
