"""The public surface is deliberate: this pins it."""

from __future__ import annotations

import ipychat
import ipychat.core.errors
import ipychat.errors
import ipychat.testing


def test_top_level_all_is_pinned() -> None:
    assert sorted(ipychat.__all__) == [
        "__version__",
        "get_session",
        "image",
        "load_ipython_extension",
        "panel",
        "unload_ipython_extension",
    ]
    for name in ipychat.__all__:
        assert hasattr(ipychat, name)


def test_public_errors_module_is_the_core_one() -> None:
    assert ipychat.errors.__all__ == ipychat.core.errors.__all__
    for name in ipychat.errors.__all__:
        assert getattr(ipychat.errors, name) is getattr(ipychat.core.errors, name), name


def test_error_tree_roots_in_chat_error() -> None:
    for name in ipychat.core.errors.__all__:
        obj = getattr(ipychat.core.errors, name)
        if isinstance(obj, type):
            assert issubclass(obj, ipychat.core.errors.ChatError), name


def test_testing_exports() -> None:
    assert {"FakeOpenAIServer", "Fault"} <= set(ipychat.testing.__all__)


def test_panel_is_a_view_of_the_kernel_session(session) -> None:
    view = ipychat.panel()
    try:
        assert view.session is ipychat.get_session() is session
    finally:
        view.close()
