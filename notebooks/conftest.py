"""nbval runs the notebooks on the embedded local model and a fresh, private cache, so a
developer's key or cache never changes what the checked cells show (or costs money)."""

from __future__ import annotations

import os
import tempfile

for name in (
    "OPENAI_API_KEY",
    "OPENAI_API_KEYS",
    "OPENAI_BASE_URL",
    "IPYCHAT_MODEL",
    "IPYCHAT_OFFLINE",
):
    os.environ.pop(name, None)
os.environ["IPYCHAT_CACHE_DIR"] = tempfile.mkdtemp(prefix="ipychat-nbval-")
