"""Token counting that never touches the network: tiktoken with the encodings in the package.

tiktoken's own loader (`tiktoken.get_encoding`, `tiktoken.encoding_for_model`) looks in a cache
directory and, on a miss, downloads the encoding with no timeout; in a kernel without internet
that is a hang. So this module builds the `tiktoken.Encoding` objects itself from
`ipychat/data/*.tiktoken` (checked against the same sha256 tiktoken expects) with the regex and
special tokens of `tiktoken_ext/openai_public.py`, and never calls the loader.

This is the only module that imports tiktoken.

Which encoding a model uses follows tiktoken's own model map (`tiktoken.model`), so a new
tiktoken release that learns a new model name is picked up without a change here. Names tiktoken
does not know (local models, Llama, Claude, Mistral behind an OpenAI-compatible API) are counted
with o200k_base and flagged `approximate`: the real tokenizer is different, so the count is an
estimate, shown as "≈" by the views.

Chat format (OpenAI cookbook, "How to count tokens with tiktoken"): every message costs
`MESSAGE_OVERHEAD` (3) tokens plus its encoded fields (role, content, name, ...), a `name` costs
one more, and `REPLY_PRIMING` (3) tokens prime the assistant's reply.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Final

import tiktoken
from tiktoken.model import encoding_name_for_model

from ipychat.core import foreground
from ipychat.core.errors import ChatError
from ipychat.core.images import image_info, image_tokens, takes_images

__all__ = [
    "DEFAULT_ENCODING",
    "MESSAGE_OVERHEAD",
    "NAME_OVERHEAD",
    "REPLY_PRIMING",
    "TokenCount",
    "clear_cache",
    "count_batch",
    "count_messages",
    "count_messages_bound",
    "count_text",
    "encoding_for",
    "encoding_name_for",
    "get_encoding",
    "is_exact",
    "is_loaded",
    "truncate",
    "warm",
]

MESSAGE_OVERHEAD: Final = 3  # <|start|>{role}\n ... <|end|> around every message
NAME_OVERHEAD: Final = 1  # a `name` field costs one token beyond its text
REPLY_PRIMING: Final = 3  # every reply is primed with <|start|>assistant<|message|>

# Images are billed by size and model with the provider's formula (ipychat.core.images). An
# image whose size is not known (a remote URL) is counted at the most it can cost, gpt-4o's
# largest tiling (85 + 170 x 8 tiles), so a budget check errs on the safe side, and "≈".
IMAGE_TOKENS_LOW: Final = 85
IMAGE_TOKENS_HIGH: Final = 85 + 170 * 8

DEFAULT_ENCODING: Final = "o200k_base"  # for models tiktoken does not know (approximate)

# The text cache holds references to the caller's strings (the history the panel recounts on
# every keystroke), so its memory cost is mostly strings that are alive anyway. It is bounded
# by total characters, not entries, because one pasted document can be 100,000 characters.
_CACHE_MAX_CHARS: Final = 4_000_000
# Below this length encoding is about as cheap as a cache lookup; don't churn the cache.
_CACHE_MIN_CHARS: Final = 64

# Bytes of the encoding file parsed per C call (see _parse_bpe): ~8,000 lines, a few ms.
_PARSE_BLOCK: Final = 128 * 1024

_ENDOFTEXT = "<|endoftext|>"
_FIM_PREFIX = "<|fim_prefix|>"
_FIM_MIDDLE = "<|fim_middle|>"
_FIM_SUFFIX = "<|fim_suffix|>"
_ENDOFPROMPT = "<|endofprompt|>"


@dataclass(frozen=True)
class _Spec:
    """How to build one encoding. Copied from tiktoken_ext/openai_public.py; a test pins it."""

    file: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


_SPECS: Final[Mapping[str, _Spec]] = {
    "cl100k_base": _Spec(
        file="cl100k_base.tiktoken",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+|"""
            r""" ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": _Spec(
        file="o200k_base.tiktoken",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
}


@dataclass(frozen=True)
class TokenCount:
    """Tokens of a prompt; `approximate` when the model's real tokenizer is not the one used."""

    tokens: int
    approximate: bool = False

    def __int__(self) -> int:
        return self.tokens


# --------------------------------------------------------------------------------------------
# Loading the bundled encodings
# --------------------------------------------------------------------------------------------

_encodings: dict[str, tiktoken.Encoding] = {}
# One lock per encoding: loading o200k (~0.25 s) must not hold up a cl100k caller.
_load_locks: Final[Mapping[str, threading.Lock]] = {name: threading.Lock() for name in _SPECS}


def _read_bundled(file: str) -> bytes:
    """The bytes of `ipychat/data/<file>`, read through importlib.resources (works zipped too)."""
    return (resources.files("ipychat") / "data" / file).read_bytes()


def _parse_bpe(data: bytes) -> dict[bytes, int]:
    """`<base64 token> <rank>` lines → ranks, like `tiktoken.load.load_tiktoken_bpe`.

    tiktoken's function takes a path and goes through `read_file_cached`, which copies the file
    into TIKTOKEN_CACHE_DIR (or $TMPDIR/data-gym-cache) and raises if a user-set cache directory
    is read-only. Parsing the bytes here keeps loading free of side effects; a test checks the
    result equals tiktoken's. One split per block of lines is ~40% faster than a loop of lines,
    and `binascii.a2b_base64` (what `base64.b64decode` calls, without its per-call checks) a
    third faster again: o200k_base has 200,000 lines, and a kernel's first map waits for them.
    Blocks, not the whole file at once: each is one C call that holds the GIL, and %load_ext
    loads the encoding in a background thread (ipychat.notebook.warmup) while the user's cells run.
    """
    ranks: dict[bytes, int] = {}
    start, size = 0, len(data)
    while start < size:
        end = data.find(b"\n", start + _PARSE_BLOCK)
        end = size if end < 0 else end + 1
        parts = data[start:end].split()
        if len(parts) % 2:
            raise ValueError("odd number of fields")
        ranks.update(zip(map(binascii.a2b_base64, parts[0::2]), map(int, parts[1::2]), strict=True))
        start = end
    return ranks


def _load(name: str) -> tiktoken.Encoding:
    spec = _SPECS[name]
    where = f"ipychat/data/{spec.file}"
    try:
        data = _read_bundled(spec.file)
    except OSError as exc:
        raise ChatError(f"{where} is missing ({exc.strerror}): reinstall ipychat") from None
    if hashlib.sha256(data).hexdigest() != spec.sha256:
        raise ChatError(f"{where} is corrupted (sha256 mismatch): reinstall ipychat")
    try:
        ranks = _parse_bpe(data)
    except ValueError as exc:  # binascii.Error is a ValueError
        raise ChatError(f"{where} is unreadable ({exc}): reinstall ipychat") from None
    return tiktoken.Encoding(
        name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=dict(spec.special_tokens)
    )


def get_encoding(name: str) -> tiktoken.Encoding:
    """A bundled encoding ("cl100k_base" or "o200k_base"), loaded once, lazily, thread-safely."""
    enc = _encodings.get(name)
    if enc is not None:
        return enc
    if name not in _SPECS:
        raise ValueError(f"unknown encoding {name!r}; bundled: {', '.join(_SPECS)}")
    with _load_locks[name]:
        enc = _encodings.get(name)  # another thread may have loaded it while we waited
        if enc is None:
            enc = _encodings[name] = _load(name)
    return enc


def warm(models: Iterable[str] = ("gpt-4o",), *, when_idle: bool = False) -> None:
    """Load the encodings of `models` now (e.g. in a background thread at session start), so
    the first keystroke in the panel does not pay the ~0.1-0.25 s load. `when_idle`: each
    load waits until no map has run for a moment (`ipychat.core.foreground`; in a thread of
    its own only: it may wait long). Loading on demand (`get_encoding`) never waits."""
    for model in models:
        name = encoding_name_for(model)[0]
        if when_idle and name not in _encodings:
            foreground.wait_idle()
        get_encoding(name)


# --------------------------------------------------------------------------------------------
# Model → encoding
# --------------------------------------------------------------------------------------------


def _candidates(model: str) -> list[str]:
    """The model name as given (lowercased), then without a provider path ("openai/gpt-4o",
    "openrouter/openai/gpt-4o", "azure/gpt-35-turbo"): the tokenizer does not depend on who
    serves the model."""
    name = model.strip().lower()
    names = [name]
    if "/" in name:
        names.append(name.rsplit("/", 1)[1])
    return names


@lru_cache(maxsize=512)
def encoding_name_for(model: str) -> tuple[str, bool]:
    """(encoding name, exact) for a model name, without loading anything.

    Uses tiktoken's map (`tiktoken.model.encoding_name_for_model`: exact names, then prefixes
    such as "gpt-4o-" for dated snapshots, Azure's "gpt-35-turbo", "ft:gpt-4o..."). Anything it
    does not map to an encoding we ship is counted with o200k_base, `exact=False`.
    """
    for name in _candidates(model):
        try:
            encoding = encoding_name_for_model(name)
        except KeyError:
            continue
        if encoding in _SPECS:
            return encoding, True
        # o200k_harmony (gpt-oss) shares o200k_base's ranks and regex, so text counts agree,
        # but its chat template is different: approximate. The legacy p50k/r50k/gpt2 encodings
        # are not bundled (completion-era models): approximate too.
        return DEFAULT_ENCODING, False
    return DEFAULT_ENCODING, False


def encoding_for(model: str) -> tuple[tiktoken.Encoding, bool]:
    """(Encoding, exact) for a model name; loads the encoding on first use."""
    name, exact = encoding_name_for(model)
    return get_encoding(name), exact


def is_loaded(model: str) -> bool:
    """True when `model`'s encoding is loaded: counting for it now waits for nothing. Loads
    nothing (%%chatmap sends while a fresh kernel's encoding still loads, ipychat.map.plan)."""
    return encoding_name_for(model)[0] in _encodings


def is_exact(model: str) -> bool:
    """True when counts for `model` use its real tokenizer (no "≈"); loads nothing."""
    return encoding_name_for(model)[1]


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


class _CountCache:
    """LRU of (encoding, text) → token count, bounded by the total characters of its keys."""

    def __init__(self, max_chars: int) -> None:
        self._max_chars = max_chars
        self._chars = 0
        self._data: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()  # the panel counts on the event-loop thread, users on main

    def get(self, key: tuple[str, str]) -> int | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, str], value: int) -> None:
        size = len(key[1])
        if size > self._max_chars:
            return
        with self._lock:
            if key in self._data:
                return
            self._data[key] = value
            self._chars += size
            while self._chars > self._max_chars:
                (_, old), _ = self._data.popitem(last=False)
                self._chars -= len(old)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._chars = 0

    def __len__(self) -> int:
        return len(self._data)


_cache = _CountCache(_CACHE_MAX_CHARS)


def clear_cache() -> None:
    """Forget the cached counts (tests, or to release memory)."""
    _cache.clear()


def _count(enc: tiktoken.Encoding, text: str) -> int:
    # encode_ordinary, not encode: the API treats "<|endoftext|>" in user text as plain text,
    # and encode() would also scan the whole text for special tokens on every call.
    if len(text) < _CACHE_MIN_CHARS:
        return len(enc.encode_ordinary(text))
    key = (enc.name, text)
    n = _cache.get(key)
    if n is None:
        n = len(enc.encode_ordinary(text))
        _cache.put(key, n)
    return n


def count_text(text: str, model: str) -> int:
    """Tokens of a plain string for `model` (no chat overhead). See `is_exact` for "≈"."""
    enc, _ = encoding_for(model)
    return _count(enc, text)


def count_batch(texts: Iterable[str], model: str) -> list[int]:
    """Tokens of each text, in order, for `model` (no chat overhead).

    A plain loop: on this 2-core machine `Encoding.encode_ordinary_batch` (a thread per text
    through a ThreadPoolExecutor) measured about half as fast for 10,000 prompts of a few hundred
    tokens, and chunking the batch over two threads gained nothing (benchmarks/tokens.py).
    The cache is bypassed: a batch of distinct prompts would only evict the chat history.
    """
    enc, _ = encoding_for(model)
    encode = enc.encode_ordinary
    return [len(encode(text)) for text in texts]


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _content_tokens(enc: tiktoken.Encoding, content: Any, model: str) -> tuple[int, bool]:
    """Tokens of a message's content: a string, or a list of parts (OpenAI's multi-part form);
    an image by its size and `model`'s formula (`ipychat.core.images.image_tokens`)."""
    if isinstance(content, str):
        return _count(enc, content), False
    if not isinstance(content, Sequence):
        return _count(enc, _json(content)), True
    total, approximate, texts = 0, False, 0
    for part in content:
        if isinstance(part, str):
            total += _count(enc, part)
            texts += 1
            continue
        if not isinstance(part, Mapping):
            total += _count(enc, _json(part))
            approximate = True
            continue
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
            total += _count(enc, part["text"])
            texts += 1
        elif kind == "refusal" and isinstance(part.get("refusal"), str):
            total += _count(enc, part["refusal"])
            texts += 1
        elif kind in ("image_url", "input_image"):
            info = image_info(part)
            n, exact = image_tokens(info.width, info.height, info.detail, model)
            total += n
            # A model not known to take images may bill them some other way (or refuse).
            approximate = approximate or not exact or takes_images(model) is not True
        else:  # audio, files, anything newer: its JSON text is a stand-in
            total += _count(enc, _json(part))
            approximate = True
    # Parts are counted apart; whether the server joins them before tokenizing is not
    # documented, and a join can merge tokens across the seam, so several parts are "≈".
    return total, approximate or texts > 1


def count_messages(messages: Sequence[Mapping[str, Any]], model: str) -> TokenCount:
    """Prompt tokens of a chat request: per message 3 + its fields (+1 for a `name`), plus 3.

    Content may be a string or a list of parts; one text part is counted exactly, several text
    parts and other parts approximately; an image by the model's published formula (exactly
    when the formula and the image's size are known). Non-string fields (`tool_calls`, ...) are
    counted as their JSON text and make the count approximate. `None` fields (an assistant's
    content beside tool calls) are skipped.
    """
    if isinstance(messages, (str, bytes)):
        raise TypeError("count_messages takes a list of message dicts; use count_text for a string")
    enc, exact = encoding_for(model)
    approximate = not exact
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD
        for key, value in message.items():
            if value is None:
                continue
            if key == "content":
                n, approx = _content_tokens(enc, value, model)
                total += n
                approximate = approximate or approx
            elif isinstance(value, str):
                total += _count(enc, value)
            else:
                total += _count(enc, _json(value))
                approximate = True
            if key == "name":
                total += NAME_OVERHEAD
    return TokenCount(total, approximate)


def count_messages_bound(messages: Sequence[Mapping[str, Any]]) -> int | None:
    """An upper bound of `count_messages(messages, model)` for every model, found without
    loading an encoding; None when a field is not a string (images are billed by size).

    The same sum as `count_messages`, with each string's UTF-8 length for its tokens: a BPE
    token stands for at least one byte. %%chatmap uses it to serve a cached row without
    counting it, when even this bound fits the context window.
    """
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD
        for key, value in message.items():
            if value is None:
                continue
            if not isinstance(value, str):
                return None
            total += len(value.encode("utf-8"))
            if key == "name":
                total += NAME_OVERHEAD
    return total


def truncate(text: str, max_tokens: int, model: str) -> str:
    """The longest head of `text` that is at most `max_tokens` tokens for `model`.

    Cuts on a token boundary and drops a character split between tokens (no "�"); re-encoding
    a cut can merge differently, so the result is re-checked and shortened until it fits.
    """
    if max_tokens <= 0:
        return ""
    enc, _ = encoding_for(model)
    tokens = enc.encode_ordinary(text)
    if len(tokens) <= max_tokens:
        return text
    n = max_tokens
    while n > 0:
        head = enc.decode_bytes(tokens[:n]).decode("utf-8", errors="ignore")
        if len(enc.encode_ordinary(head)) <= max_tokens:
            return head
        n -= 1
    return ""
