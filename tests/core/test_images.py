"""Images in prompts (issue 18 item 5), the pure parts: reading images, their content part,
their tokens by OpenAI's published formula, which models take them, and the cache key."""

from __future__ import annotations

import copy
import io
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from PIL import Image as PILImage

from ipychat.core import images, tokens
from ipychat.core.errors import ImageError
from ipychat.core.keys import cache_key

matplotlib.use("Agg")


def encoded(width: int, height: int, fmt: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), (200, 30, 30)).save(buffer, format=fmt, **save)
    return buffer.getvalue()


# ----- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mime", "save"),
    [
        ("PNG", "image/png", {}),
        ("JPEG", "image/jpeg", {}),
        ("JPEG", "image/jpeg", {"progressive": True}),  # SOF2, not SOF0
        ("GIF", "image/gif", {}),
        ("WEBP", "image/webp", {}),  # lossy: VP8
        ("WEBP", "image/webp", {"lossless": True}),  # VP8L
    ],
)
@pytest.mark.parametrize(("width", "height"), [(1, 1), (640, 480), (333, 1999), (4000, 17)])
def test_every_format_is_read_with_its_size(
    fmt: str, mime: str, save: dict[str, Any], width: int, height: int
) -> None:
    """Recall: the size every format's header gives is the size PIL made (the formula
    depends on it)."""
    picture = images.image(encoded(width, height, fmt, **save))
    assert (picture.mime, picture.width, picture.height) == (mime, width, height)


def test_extended_webp_with_alpha_is_read() -> None:
    buffer = io.BytesIO()
    PILImage.new("RGBA", (300, 200), (0, 0, 0, 0)).save(buffer, format="WEBP")
    picture = images.image(buffer.getvalue())
    assert (picture.width, picture.height) == (300, 200)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"just some text, not an image",
        b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>",
        b"BM" + b"\0" * 60,  # a BMP: providers do not take it
        b"%PDF-1.7\n",
    ],
)
def test_what_is_not_an_image_is_refused_in_one_line(data: bytes) -> None:
    """Precision: nothing but the four formats vision models take is sent as an image."""
    with pytest.raises(ImageError) as info:
        images.image(data)
    assert str(info.value) == (
        "The image is not a PNG, JPEG, GIF or WebP image (the formats vision models take)."
    )


def test_a_truncated_png_says_it_is_damaged() -> None:
    with pytest.raises(ImageError, match=r"^The image is a damaged PNG: its size is unreadable\.$"):
        images.image(encoded(10, 10)[:18])


def test_paths_bytes_pil_and_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    data = encoded(64, 32)
    path = tmp_path / "chart.png"
    path.write_bytes(data)
    from_path = images.image(path)
    assert from_path == images.image(str(path)) == images.image(data)
    assert from_path.name == "chart.png" and from_path.data == data
    pil = images.image(PILImage.new("L", (20, 10)))
    assert (pil.mime, pil.width, pil.height) == ("image/png", 20, 10)
    fig, ax = plt.subplots(figsize=(4, 3), dpi=50)
    ax.plot([1, 2, 3])
    drawn = images.image(fig)
    plt.close(fig)
    assert drawn.mime == "image/png" and 0 < drawn.width <= 200 and 0 < drawn.height <= 150
    assert images.as_image(fig) is not None and images.is_image(fig)
    assert images.as_image("chart.png") is None  # a string is text unless asked (:image)
    assert images.image(from_path) is from_path
    assert images.image(from_path, detail="low").detail == "low"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("https://example.com/cat.png", "is a URL: ipychat sends images from this machine"),
        ("/nonexistent/cat.png", "Cannot read the image /nonexistent/cat.png: No such file"),
        (12, "ipychat.image takes a path, bytes, a PIL image or a matplotlib Figure, not a int."),
    ],
)
def test_sources_that_cannot_be_read(source: Any, message: str) -> None:
    with pytest.raises(ImageError, match=message.replace(".", r"\.")):
        images.image(source)


def test_detail_and_size_are_checked() -> None:
    with pytest.raises(ImageError, match="detail must be 'low', 'high' or 'auto', not 'max'"):
        images.image(encoded(2, 2), detail="max")
    huge = encoded(2, 2) + b"\0" * images.MAX_IMAGE_BYTES
    with pytest.raises(ImageError, match=r"is 20\.0 MB; providers take at most 20 MB"):
        images.image(huge)


def test_the_part_is_openai_s_and_its_url_remembers_the_image() -> None:
    picture = images.image(encoded(30, 20), detail="low")
    part = picture.part()
    assert part == {"type": "image_url", "image_url": {"url": picture.url, "detail": "low"}}
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,iVBORw0KGgo")
    assert picture.part()["image_url"]["url"] is url  # built once, shared by every turn
    for copied in (copy.copy(url), copy.deepcopy(url), pickle.loads(pickle.dumps(url))):
        assert isinstance(copied, images.DataURL) and copied == url
        assert (copied.sha256, copied.width, copied.height) == (picture.sha256, 30, 20)
    assert images.image(encoded(30, 20)).part() == {
        "type": "image_url",
        "image_url": {"url": picture.url},
    }


def test_image_info_from_a_plain_data_url_and_a_remote_one() -> None:
    picture = images.image(encoded(50, 40))
    plain = {"type": "image_url", "image_url": {"url": str(picture.url), "detail": "high"}}
    assert images.image_info(plain) == images.ImageInfo(picture.sha256, 50, 40, "high")
    remote = {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}
    assert images.image_info(remote) == images.ImageInfo(None, None, None, "low")


# ----- tokens (https://platform.openai.com/docs/guides/images-vision#calculating-costs) --------


@pytest.mark.parametrize(
    ("model", "width", "height", "detail", "expected"),
    [
        # The guide's own examples for gpt-4o: 1024² → 768² → 4 tiles; 2048×4096 → 1024×2048
        # → 768×1536 → 6 tiles; low detail is the base whatever the size.
        ("gpt-4o", 1024, 1024, None, 85 + 170 * 4),
        ("gpt-4o", 2048, 4096, "high", 85 + 170 * 6),
        ("gpt-4o", 4096, 8192, "low", 85),
        ("gpt-4o-2024-08-06", 512, 512, "auto", 85 + 170),  # auto counted as high
        ("gpt-4o", 513, 100, None, 85 + 170 * 2),  # a pixel over a tile is a second tile
        ("gpt-4.1", 1024, 1024, None, 765),
        # gpt-4o-mini: base 2833, tile 5667 (the same dollars per image as gpt-4o).
        ("gpt-4o-mini", 1024, 1024, None, 2833 + 5667 * 4),
        ("gpt-4o-mini-2024-07-18", 10, 10, "low", 2833),
        ("o1", 1024, 1024, None, 75 + 150 * 4),
        ("o3", 10, 10, "low", 75),
        ("gpt-5", 1024, 1024, None, 70 + 140 * 4),
        ("openai/gpt-4o", 1024, 1024, None, 765),  # a provider path changes nothing
        # Patch models: ceil(w/32) × ceil(h/32) patches (at most 1536) × the multiplier. The
        # guide's examples: 1024² is 1024 patches; 1800×2400 is scaled to 1452 patches.
        ("gpt-4.1-mini", 1024, 1024, None, math.ceil(1024 * 1.62)),
        ("gpt-4.1-mini", 1800, 2400, None, math.ceil(1452 * 1.62)),
        ("gpt-4.1-nano", 1024, 1024, "low", math.ceil(1024 * 2.46)),
        ("o4-mini", 100, 100, None, math.ceil(16 * 1.72)),
    ],
)
def test_the_published_formula(
    model: str, width: int, height: int, detail: str | None, expected: int
) -> None:
    assert images.image_tokens(width, height, detail, model) == (expected, True)


def test_unknown_models_and_sizes_are_counted_high_and_marked() -> None:
    assert images.image_tokens(1024, 1024, None, "llava-13b") == (765, False)
    assert images.image_tokens(None, None, None, "gpt-4o") == (85 + 170 * 8, False)
    assert images.image_tokens(None, None, None, "gpt-4.1-mini") == (math.ceil(1536 * 1.62), False)
    # No image the formula can be given costs more than the unknown-size count.
    worst = max(images.image_tokens(w, h, None, "gpt-4o")[0] for w in (1, 768, 2048, 9000)
                for h in (1, 768, 2048, 9000))  # fmt: skip
    assert worst <= images.image_tokens(None, None, None, "gpt-4o")[0]


def test_count_messages_adds_the_images_tokens() -> None:
    picture = images.image(encoded(1024, 1024))
    text = [{"type": "text", "text": "What is in this picture?"}]

    def counted(content: Any, model: str) -> tokens.TokenCount:
        return tokens.count_messages([{"role": "user", "content": content}], model)

    for model, image_cost in (("gpt-4o", 765), ("gpt-4o-mini", 2833 + 4 * 5667)):
        alone = counted(text, model)
        both = counted([*text, picture.part()], model)
        assert both.tokens - alone.tokens == image_cost
        assert not both.approximate  # one text part, a known formula and size
    assert counted([picture.part()], "some-local-vlm").approximate


# ----- who takes images ----------------------------------------------------------------------

VISION = ["gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-4.1-nano", "gpt-4-turbo", "gpt-4-turbo-2024-04-09",
          "o1", "o3", "o4-mini", "gpt-5-mini", "openai/gpt-4o", "claude-3-5-sonnet-latest",
          "gemini-2.0-flash", "llava"]  # fmt: skip
TEXT_ONLY = ["gpt-3.5-turbo", "gpt-3.5-turbo-0125", "gpt-4", "gpt-4-0613", "gpt-4-turbo-preview",
             "o1-mini", "o3-mini", "SmolLM2-135M-Instruct", "text-embedding-3-small",
             "gpt-oss-20b"]  # fmt: skip


def test_the_capability_table() -> None:
    assert {m: images.takes_images(m) for m in VISION} == dict.fromkeys(VISION, True)
    assert {m: images.takes_images(m) for m in TEXT_ONLY} == dict.fromkeys(TEXT_ONLY, False)
    assert images.takes_images("my-finetune") is None


def test_who_is_refused_before_sending() -> None:
    part = images.image(encoded(4, 4)).part()
    with_image = [{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}]
    text = [{"role": "user", "content": "hi"}]
    with pytest.raises(ImageError) as info:
        images.check_can_send(with_image, "gpt-3.5-turbo", local=lambda: False)
    assert str(info.value) == (
        "gpt-3.5-turbo cannot read images, so nothing was sent: use a vision model "
        "(-m gpt-4o-mini), or leave the image out."
    )
    with pytest.raises(ImageError, match=r"^The local model reads text only"):
        images.check_can_send(with_image, "gpt-4o", local=lambda: True)
    images.check_can_send(with_image, "gpt-4o", local=lambda: False)
    images.check_can_send(with_image, "my-finetune", local=lambda: False)  # unknown: sent, "≈"
    images.check_can_send(text, "gpt-3.5-turbo", local=lambda: True)  # no image: nothing to refuse


# ----- the cache key -------------------------------------------------------------------------


def _body(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [{"role": "user", "content": list(parts)}]}


def test_the_cache_key_holds_the_images_hash_not_its_base64() -> None:
    text = {"type": "text", "text": "Describe it"}
    red = images.image(encoded(8, 8))
    plain_url = {"type": "image_url", "image_url": {"url": str(red.url)}}
    key = cache_key("https://api.openai.com/v1", _body(text, red.part()))
    # The same bytes in a plain str URL (a restored thread): the same key.
    assert key == cache_key("https://api.openai.com/v1", _body(text, plain_url))
    # What is hashed names the image by its bytes' sha256.
    by_hash = {"type": "image_url", "image_url": {"url": f"sha256:{red.sha256}"}}
    assert key == cache_key("https://api.openai.com/v1", _body(text, by_hash))
    other = images.image(encoded(8, 9))
    assert key != cache_key("https://api.openai.com/v1", _body(text, other.part()))
    low = images.image(red, detail="low")
    assert key != cache_key("https://api.openai.com/v1", _body(text, low.part()))
    # The body given is not changed.
    body = _body(text, red.part())
    cache_key("https://api.openai.com/v1", body)
    assert body == _body(text, red.part())


# ----- JPEG headers the encoders above do not write (mutation run, issue 22) ----------------
# The layout is ITU T.81 (https://www.w3.org/Graphics/JPEG/itu-t81.pdf), B.1.1: a marker is
# 0xFF then a code; any number of 0xFF fill bytes may precede it (B.1.1.2); SOI (D8), TEM
# (01) and RSTn (D0-D7) stand alone, every other marker is followed by a 2-byte big-endian
# length that counts itself; SOFn (C0-CF but DHT C4, JPG C8, DAC CC) holds the sample
# precision, then the height Y and the width X, 16 bits each.


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _sof(width: int, height: int, marker: int = 0xC0) -> bytes:
    return _segment(marker, b"\x08" + struct.pack(">HH", height, width) + b"\x01\x01\x11\x00")


def _jpeg(*parts: bytes) -> bytes:
    return b"\xff\xd8" + b"".join(parts) + b"\xff\xd9"


APP0 = _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")


@pytest.mark.parametrize(
    "before",
    [
        b"",
        APP0,
        b"\xff",  # one fill byte before the SOF marker
        b"\xff\xff",  # two
        APP0 + b"\xff",
        b"\xff\xd8",  # a standalone SOI
        b"\xff\x01",  # TEM
        b"\xff\xd0",  # RST0
        b"\xff\xd7",  # RST7
        _segment(0xC4, b"\x00" * 20),  # DHT: not a frame, though its code is within C0-CF
        _segment(0xC8, b"\x00" * 20),  # JPG
        _segment(0xCC, b"\x00" * 20),  # DAC
        _segment(0xFE, b"c" * 0x8000),  # a comment longer than a signed 16-bit length
    ],
)
def test_jpeg_segments_before_the_frame_are_skipped(before: bytes) -> None:
    picture = images.image(_jpeg(APP0, before, _sof(321, 123)))
    assert (picture.mime, picture.width, picture.height) == ("image/jpeg", 321, 123)


@pytest.mark.parametrize("marker", [0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB,
                                    0xCD, 0xCE, 0xCF])  # fmt: skip
def test_every_start_of_frame_gives_the_size(marker: int) -> None:
    picture = images.image(_jpeg(APP0, _sof(40, 30, marker)))
    assert (picture.width, picture.height) == (40, 30)


def test_jpeg_sizes_up_to_65535_are_read_unsigned() -> None:
    picture = images.image(_jpeg(_sof(50_000, 40_000)))
    assert (picture.width, picture.height) == (50_000, 40_000)


def test_a_jpeg_cut_right_after_its_size_is_read() -> None:
    """The frame's height and width are its bytes 5-8: nothing after them is needed."""
    header = b"\xff\xd8" + APP0 + _sof(64, 48)[:9]
    assert images.image(header).width == 64 and images.image(header).height == 48
    with pytest.raises(ImageError, match=r"^The image is a damaged JPEG"):
        images.image(header[:-1])


@pytest.mark.parametrize(
    "data",
    [
        _jpeg(APP0, APP0),  # no frame at all
        b"\xff\xd8" + APP0 + APP0,  # no frame, and no end-of-image marker either
        _jpeg(APP0, b"\x00\x00", _sof(10, 10)),  # a segment that is not a marker
        _jpeg(_sof(0, 10)),  # a frame of no size
    ],
)
def test_a_jpeg_without_a_readable_frame_is_damaged(data: bytes) -> None:
    with pytest.raises(ImageError) as info:
        images.image(data)
    assert str(info.value) == "The image is a damaged JPEG: its size is unreadable."


# ----- which messages hold images ------------------------------------------------------------


def test_has_images_finds_either_apis_image_part_and_nothing_else() -> None:
    text = {"type": "text", "text": "hi"}
    responses_api = {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}
    chat_api = images.image(encoded(2, 2)).part()
    assert images.has_images([{"role": "user", "content": [text, chat_api]}])
    assert images.has_images([{"role": "user", "content": "hi"}, {"content": [responses_api]}])
    assert not images.has_images([{"role": "user", "content": [text]}])
    assert not images.has_images([{"role": "user", "content": "hi"}])
    assert not images.has_images([{"role": "assistant", "content": None}])
    assert not images.has_images([{"role": "user", "content": ["a bare string part"]}])
    assert not images.has_images([{"role": "user", "content": [{"type": "INPUT_IMAGE"}]}])
    assert not images.has_images([])


# ----- patches: sizes that are not multiples of 32 -------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "patches"),
    [
        (33, 33, 4),  # a pixel over 32 is a second patch either way
        (33, 64, 4),
        (64, 33, 4),
        (1248, 1248, 1521),  # 39 × 39: under the 1536 cap, not scaled
        (1280, 1216, 1520),  # 40 × 38
        (2400, 1800, 1452),  # the guide's example, turned: the formula is symmetric
        (1800, 2400, 1452),
    ],
)
def test_patches_of_sizes_off_the_grid(width: int, height: int, patches: int) -> None:
    assert images.image_tokens(width, height, None, "o4-mini") == (math.ceil(patches * 1.72), True)


@pytest.mark.parametrize(
    ("width", "height", "tiles"),
    [
        (2049, 300, 4),  # a pixel over 2048: fitted to 2048 × 299.9, 4 × 1 tiles (not 5)
        (4000, 500, 4),  # fitted to 2048 × 256: 4 × 1
        (1025, 769, 4),  # shortest side to 768: 1023.7 × 768, 2 × 2 (not 3 × 2)
        (2048, 2048, 4),  # neither fit changes a side at its bound: 768 × 768
        (700, 1100, 6),  # shortest side under 768: not scaled, 2 × 3
        (100, 513, 2),  # a pixel over a tile down is a second tile too
    ],
)
def test_the_tiles_at_the_scaling_bounds(width: int, height: int, tiles: int) -> None:
    assert images.image_tokens(width, height, "high", "gpt-4o") == (85 + 170 * tiles, True)


def test_an_unknown_side_counts_the_most_for_patch_models_too() -> None:
    most = (math.ceil(1536 * 1.62), False)
    assert images.image_tokens(None, 100, None, "gpt-4.1-mini") == most
    assert images.image_tokens(100, None, None, "gpt-4.1-mini") == most
    assert images.image_tokens(None, 100, None, "gpt-4o") == (85 + 170 * 8, False)


def test_image_info_keeps_the_detail_whatever_the_url() -> None:
    picture = images.image(encoded(50, 40), detail="low")
    assert images.image_info(picture.part()) == images.ImageInfo(picture.sha256, 50, 40, "low")
    broken = {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,QUJD", "detail": "high"},
    }
    assert images.image_info(broken) == images.ImageInfo(None, None, None, "high")
    not_base64 = {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@="}}
    assert images.image_info(not_base64) == images.ImageInfo(None, None, None, None)


def test_image_info_decodes_base64_written_in_lines() -> None:
    """A data URL saved in a notebook may carry its base64 in 76-character lines (RFC 2045):
    the line breaks are skipped, as b64decode does without `validate`."""
    picture = images.image(encoded(30, 20))
    payload = str(picture.url).split(",", 1)[1]
    lines = "\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + lines}}
    assert images.image_info(part) == images.ImageInfo(picture.sha256, 30, 20, None)


def test_the_base64_marker_is_looked_for_in_the_urls_first_100_characters() -> None:
    picture = images.image(encoded(30, 20))
    payload = str(picture.url).split(",", 1)[1]

    def info(header: str) -> images.ImageInfo:
        return images.image_info({"type": "image_url", "image_url": {"url": header + payload}})

    # `data:image/png;name=…;base64,`: the marker's last character at index 99, then 100.
    within = "data:image/png;name=" + "n" * (100 - len("data:image/png;name=;base64,")) + ";base64,"
    assert len(within) == 100 and info(within).sha256 == picture.sha256
    beyond = within.replace(";name=", ";name=n")
    assert len(beyond) == 101 and info(beyond) == images.ImageInfo(None, None, None, None)


def test_the_local_models_refusal_word_for_word() -> None:
    with_image = [{"role": "user", "content": [images.image(encoded(4, 4)).part()]}]
    with pytest.raises(ImageError) as info:
        images.check_can_send(with_image, "gpt-4o", local=lambda: True)
    assert str(info.value) == (
        "The local model reads text only, so the image was not sent: set OPENAI_API_KEY "
        "or %chat endpoint URL to use a vision model, or leave the image out."
    )


@pytest.mark.parametrize("model", ["gpt-4.5-preview", "gpt-4-turbo", "gpt-4-turbo-2024-04-09",
                                   "chatgpt-4o-latest", "gpt-4.1", "gpt-4o"])  # fmt: skip
def test_gpt_4o_s_formula_is_published_for_these_families(model: str) -> None:
    assert images.image_tokens(1024, 1024, None, model) == (765, True)


def test_the_family_is_the_name_after_the_last_slash() -> None:
    assert images.image_tokens(10, 10, "low", "proxy/openai/gpt-4o-mini") == (2833, True)
    assert images.takes_images("hub/vendor/gpt-3.5-turbo") is False


# ----- what is an image, and a figure or PIL image that cannot be written -------------------


def test_images_are_equal_by_their_bytes_and_their_detail() -> None:
    red = images.image(encoded(2, 2))
    assert red == images.image(encoded(2, 2)) and hash(red) == hash(images.image(encoded(2, 2)))
    assert red != images.image(encoded(2, 3))  # the same detail, other bytes
    assert red != images.image(red, detail="low")  # the same bytes, another detail
    assert red.__eq__("not an image") is NotImplemented


def test_the_repr_says_where_an_image_came_from_if_anywhere() -> None:
    assert repr(images.image(encoded(3, 2))) == "<ipychat.Image 3×2 image/png>"
    named = images.Image(encoded(3, 2), name="cat.png")
    assert repr(named) == "<ipychat.Image 3×2 image/png from cat.png>"


def test_figures_and_pil_images_are_named_by_what_they_are() -> None:
    import matplotlib.pyplot as plt

    fig, _ax = plt.subplots(figsize=(1, 1), dpi=20)
    try:
        drawn = images.image(fig)
    finally:
        plt.close(fig)
    assert drawn.name == "a Figure" and repr(drawn).endswith("image/png from a Figure>")
    pil = images.image(PILImage.new("RGB", (3, 2)))
    assert pil.name == "a PIL image" and images.is_image(PILImage.new("L", (1, 1)))


def test_a_figure_that_cannot_be_drawn_says_so_in_one_line() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    ax.set_title(r"$\notacommand$")  # matplotlib's mathtext refuses it when drawing
    try:
        with pytest.raises(ImageError) as info:
            images.image(fig)
    finally:
        plt.close(fig)
    message = str(info.value)
    assert message.startswith("a Figure could not be written as PNG (ValueError: ")
    assert "Unknown symbol: \\notacommand" in message and "\n" not in message
    with pytest.raises(ImageError) as info:
        images.image(PILImage.new("CMYK", (2, 2)))  # PNG has no CMYK
    assert str(info.value) == (
        "a PIL image could not be written as PNG (OSError: cannot write mode CMYK as PNG)."
    )


class _Plot:
    """Has savefig and save like a Figure and a PIL image, but is neither."""

    def savefig(self, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("never asked")

    save = savefig


def test_only_matplotlib_figures_and_pil_images_are_images() -> None:
    import matplotlib.colors
    from PIL import ImageFilter

    assert not images.is_image(_Plot()) and images.as_image(_Plot()) is None
    # From matplotlib and PIL, but without savefig / save: not images either.
    assert not images.is_image(matplotlib.colors.Normalize())
    assert not images.is_image(ImageFilter.GaussianBlur())
    with pytest.raises(ImageError, match="not a _Plot"):
        images.image(_Plot())


# ----- sizes, names and paths -------------------------------------------------------------------


def test_an_image_of_exactly_the_limit_is_taken_one_byte_more_is_not() -> None:
    data = encoded(2, 2)
    data += b"\0" * (images.MAX_IMAGE_BYTES - len(data))
    assert len(images.image(data).data) == images.MAX_IMAGE_BYTES
    with pytest.raises(ImageError) as info:
        images.Image(data + b"\0", name="big.png")
    assert str(info.value) == (
        "big.png is 20.0 MB; providers take at most 20 MB. Save it smaller (a lower dpi, or "
        "JPEG) and try again."
    )
    with pytest.raises(ImageError, match=r"^The image is 20\.0 MB; providers"):
        images.image(data + b"\0")


def test_a_file_is_read_whole_up_to_the_limit_and_a_larger_one_says_its_size(
    tmp_path: Path,
) -> None:
    exact = tmp_path / "exact.png"
    data = encoded(2, 2)
    exact.write_bytes(data + b"\0" * (images.MAX_IMAGE_BYTES - len(data)))
    assert images.image(exact).data == exact.read_bytes()
    huge = tmp_path / "huge.png"
    with open(huge, "wb") as f:  # 25 MB, sparse: only its first 20 MB + 1 byte are read
        f.write(data)
        f.truncate(25 * 2**20)
    with pytest.raises(ImageError) as info:
        images.image(huge)
    assert str(info.value).startswith("huge.png is 25.0 MB; providers take at most 20 MB.")


def test_a_file_keeps_its_name_and_detail(tmp_path: Path) -> None:
    path = tmp_path / "chart.png"
    path.write_bytes(encoded(4, 4))
    picture = images.image(path, detail="low")
    assert (picture.name, picture.detail) == ("chart.png", "low")
    assert images.image(picture, detail="high").name == "chart.png"
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ImageError, match=r"^notes\.txt is not a PNG, JPEG, GIF or WebP image"):
        images.image(notes)


def test_a_url_in_any_case_is_refused_word_for_word() -> None:
    for url in ("https://example.com/cat.png", "HTTPS://EXAMPLE.COM/CAT.PNG", "s3://b/k.png"):
        with pytest.raises(ImageError) as info:
            images.image(url)
        assert str(info.value) == (
            f"{url} is a URL: ipychat sends images from this machine only. Download it and "
            "pass the file's path."
        )


def test_a_figure_is_written_as_a_tight_png_whatever_the_users_settings() -> None:
    import matplotlib.pyplot as plt

    with matplotlib.rc_context({"savefig.format": "jpg"}):
        fig = plt.figure(figsize=(4, 3), dpi=50)  # 200 × 150 pixels...
        axes = fig.add_axes((0.4, 0.4, 0.2, 0.2))  # ...of which the axes take 40 × 30
        axes.set_axis_off()
        axes.plot([0, 1], [0, 1])
        try:
            drawn = images.image(fig)
        finally:
            plt.close(fig)
    assert drawn.mime == "image/png"
    assert drawn.width < 100 and drawn.height < 100  # the margins are not sent


def test_gif_headers_of_either_version_and_any_width_up_to_65535() -> None:
    # GIF's logical screen: two little-endian 16-bit fields after the 6-byte signature.
    for signature in (b"GIF87a", b"GIF89a"):
        picture = images.image(signature + struct.pack("<HH", 40_000, 3) + b"\0" * 20)
        assert (picture.mime, picture.width, picture.height) == ("image/gif", 40_000, 3)


def test_a_riff_file_that_is_not_webp_is_not_an_image() -> None:
    wave = b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + b"\0" * 24
    with pytest.raises(ImageError, match=r"^The image is not a PNG, JPEG, GIF or WebP image"):
        images.image(wave)


def test_a_pil_image_keeps_the_detail_asked_for() -> None:
    assert images.image(PILImage.new("RGB", (3, 2)), detail="low").detail == "low"
