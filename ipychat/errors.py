"""The public name of ipychat's errors: `except ipychat.errors.ChatError` (they live in
`ipychat.core.errors`)."""

from ipychat.core.errors import *  # noqa: F403
from ipychat.core.errors import __all__ as __all__
