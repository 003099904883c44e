"""The chat panel (`%chat panel`): an ipywidgets view of the kernel's ChatSession.

The panel holds no chat state of its own. Threads, settings, spend and replies live in the
session; the panel subscribes to its events and re-renders, so several panels and the
`%%chat` magic stay in step. Sending runs on the session's loop thread and never blocks the
kernel's main thread, so the user keeps running cells while a reply streams.

Threads: session events arrive on the loop thread (requests) or the main thread (settings,
threads), and clicks arrive on the main thread. Every re-render driven by the session is
funnelled onto the session's loop thread (`_post`), so rendering is serialised without
locks; the user's own changes reach the session at once, on the main thread. ipykernel
sends comm messages from any thread through its iopub thread.

This is the only module that imports ipywidgets.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ipywidgets as w

from ipychat.core import format as fmt
from ipychat.core import tokens
from ipychat.core.errors import ChatError
from ipychat.core.images import Image
from ipychat.core.markdown import escape_dollars, prompt_markdown, reply_markdown
from ipychat.core.messages import parts_text
from ipychat.core.pricing import format_usd
from ipychat.core.types import Estimate, Reply
from ipychat.notebook.attach import Attachments
from ipychat.notebook.footers import ReplyFooters
from ipychat.notebook.typed import TypedPrompt
from ipychat.session import ChatSession, Event, get_session

__all__ = ["ChatPanel", "panel"]

log = logging.getLogger("ipychat")

REFRESH_HZ = 20  # transcript updates per second while streaming, at most
DEBOUNCE = 0.15  # seconds of typing quiet before the estimate is recounted


@dataclass
class _Pending:
    """The request in flight on a thread: shown below the history until its reply event."""

    prompt: str
    estimate: Estimate
    text: str = ""


def _show_markdown(output: w.Output, markdown: str, plain: str) -> None:
    # Markdown rendered by the front end, like a %%chat cell's. Outputs of an Output widget
    # are trusted (raw HTML renders, images load), so every reply and prompt in `markdown`
    # went through ipychat.core.markdown first.
    data = {"text/markdown": markdown, "text/plain": plain}
    output.outputs = (
        ({"output_type": "display_data", "data": data, "metadata": {}},) if markdown else ()
    )


def _parse_number(text: str, kind: type[float] | type[int], what: str) -> float | int | None:
    text = text.strip()
    if not text:
        return None  # empty: the session's default (the server's, or the model's maximum)
    try:
        return kind(text)
    except ValueError:
        raise ChatError(f"{what} must be a number, not {text!r}.") from None


class ChatPanel(w.VBox):
    """Transcript, prompt box, Send/Stop, model and thread pickers, settings, estimate, spend."""

    def __init__(self, session: ChatSession | None = None, **kwargs: Any) -> None:
        self.session = session or get_session()
        self._footers = ReplyFooters.of(self.session)
        self._pending: dict[str, _Pending] = {}
        self._future: concurrent.futures.Future[Reply] | None = None
        self._estimate_handle: asyncio.TimerHandle | None = None
        self._render_handle: asyncio.TimerHandle | None = None
        self._last_render = 0.0
        self._models: list[str] = []
        self._models_for: str | None = None
        self._syncing = False
        self._build()
        kwargs.setdefault(
            "layout",
            w.Layout(border="1px solid var(--jp-border-color2, #ccc)", padding="4px 8px"),
        )
        super().__init__(self._layout(), **kwargs)
        self.add_class("ipychat-panel")
        self._unsubscribe = self.session.subscribe(self._on_event)
        self._refresh_controls()
        self._render_transcript()
        self._post(self._update_estimate)
        self._fetch_models()

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any] | None:
        """The widget view, and a text/plain that reads well where widgets do not render
        (`jupyter nbconvert --to markdown`, a saved notebook opened without its kernel)."""
        data = super()._repr_mimebundle_(**kwargs)
        if data is not None:
            name = self.session.current_thread
            thread = self.session.threads.get(name)
            turns = thread.turns if thread is not None else 0
            data["text/plain"] = (
                f"ipychat chat panel · thread {name} ({turns} turn{'s' if turns != 1 else ''}) "
                f"· {self.spend.value and html.unescape(self.spend.value)} "
                "(interactive: shown with a running kernel)"
            )
        return data

    # ----- building ------------------------------------------------------------------------

    def _build(self) -> None:
        def field(description: str, placeholder: str, width: str) -> w.Text:
            # Text, not FloatText: empty means "not set" (the server's or the model's default).
            return w.Text(
                description=description,
                placeholder=placeholder,
                continuous_update=False,
                style={"description_width": "initial"},
                layout=w.Layout(width=width),
            )

        self.title = w.HTML("<b>ipychat</b>")
        self.model = w.Combobox(
            placeholder="model", continuous_update=False, layout=w.Layout(width="14em")
        )
        self.thread = w.Dropdown(layout=w.Layout(width="10em"))
        self.new_thread = w.Button(
            icon="plus", tooltip="New thread", layout=w.Layout(width="2.6em")
        )
        # Two parts, so a streaming reply re-sends only itself at 20 Hz, not the whole thread.
        self.history, self.live = w.VBox(), w.VBox()  # one Output per message (_show_blocks)
        self._shown: dict[int, list[tuple[tuple[str, str], w.Output]]] = {}
        # flex 0 0 auto: the transcript keeps its full height, so the scroller below
        # overflows and scrolls (a shrinkable transcript scrolled inside itself, from the top).
        self.transcript = w.VBox(
            [self.history, self.live],
            layout=w.Layout(width="100%", flex="0 0 auto", overflow="visible"),
        )
        self.prompt = w.Textarea(placeholder="Ask something…", rows=4, layout={"width": "100%"})
        self.send = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop = w.Button(description="Stop", icon="stop", disabled=True)
        # HTML, not Label: a Label typesets "$0.0002–$0.0008" as LaTeX.
        self.estimate = w.HTML(layout=w.Layout(flex="1 1 auto"))
        self.temperature = field("temperature", "default", "13em")
        self.max_tokens = field("max tokens", "model max", "12em")
        self.spend = w.HTML(layout=w.Layout(margin="0 0 0 auto"))
        self.error = w.HTML()
        # Images picked for the next message (ipychat.notebook.attach)
        self.attachments = Attachments(self.show_error, lambda: self._post(self._schedule_estimate))
        for name in ("transcript", "prompt", "send", "stop", "estimate", "spend", "error"):
            getattr(self, name).add_class(f"ipychat-{name}")  # stable selectors for tests
        self._typed = TypedPrompt(self.prompt)  # Send waits for the last keystrokes
        self.send.on_click(lambda _: self._typed.then(self.submit, self.session.loop, self._guard))
        self.stop.on_click(lambda _: self.cancel())
        self.new_thread.on_click(lambda _: self._guard(self._create_thread))
        self.prompt.observe(self._on_prompt, "value")
        self.model.observe(self._on_model, "value")
        self.thread.observe(self._on_thread, "value")
        self.temperature.observe(self._on_number, "value")
        self.max_tokens.observe(self._on_number, "value")

    def _layout(self) -> list[w.Widget]:
        # Rows wrap where the panel is narrow (docked in JupyterLab's sidebar: %chat panel
        # --side) instead of pushing the pickers and fields out of view.
        row = w.Layout(width="100%", align_items="center", flex_flow="row wrap")
        spacer = w.Box(layout=w.Layout(flex="1"))
        header = w.HBox([self.title, spacer, self.model, self.thread, self.new_thread], layout=row)
        # column-reverse: browsers start such a scroll container at its end and keep it there
        # as the text grows, unless the user scrolled up (ipywidgets has no scroll API).
        self.scroller = w.Box(
            [self.transcript],
            layout=w.Layout(
                display="flex", flex_flow="column-reverse", max_height="26em", overflow="auto"
            ),
        )
        self.scroller.add_class("ipychat-scroller")
        actions = w.HBox(
            [self.estimate, *self.attachments.widgets, self.send, self.stop], layout=row
        )
        settings = w.HBox([self.temperature, self.max_tokens, self.spend], layout=row)
        return [header, self.scroller, self.prompt, actions, settings, self.error]

    # ----- plumbing ------------------------------------------------------------------------

    def _post(self, func: Callable[[], object]) -> None:
        """Run `func` on the session's loop thread, where every display change happens."""
        self.session.loop.call_soon_threadsafe(self._guard, func)

    def _guard(self, func: Callable[[], object]) -> None:
        try:
            func()
        except ChatError as exc:
            self.show_error(str(exc))
        except Exception as exc:  # a bug: say so in the panel, keep the log clean
            log.debug("panel update failed", exc_info=True)
            self.show_error(f"ipychat panel: {type(exc).__name__}: {exc}")

    def show_error(self, text: str) -> None:
        """One readable line in the panel; empty text clears it."""
        line = " ".join(text.split())
        self.error.value = (
            f"<span style='color: var(--jp-error-color1, #d32f2f)'>⚠ {html.escape(line)}</span>"
            if line
            else ""
        )

    def close(self) -> None:
        self._unsubscribe()

        def close_tree(widget: w.Widget) -> None:
            for child in getattr(widget, "children", ()):
                close_tree(child)
                child.close()

        close_tree(self)
        super().close()

    # ----- session → panel ---------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        self._post(lambda: self._handle(event))

    def _handle(self, event: Event) -> None:
        current = event.thread == self.session.current_thread
        if event.kind == "start":
            estimate = self.session.estimate(event.text, thread=event.thread)
            self._pending[event.thread] = _Pending(event.text, estimate)
        elif event.kind == "delta":
            if event.thread in self._pending:  # (a panel opened mid-stream waits for the reply)
                self._pending[event.thread].text += event.text
                if current:
                    self._throttled_render()
            return
        elif event.kind in ("reply", "error"):
            self._pending.pop(event.thread, None)
            if event.kind == "error":
                self.show_error(event.text)
            self._update_estimate()  # the history grew
        elif event.kind in ("settings", "threads"):
            self._refresh_controls()
            self._update_estimate()
            if event.kind == "settings" and self.session.base_url != self._models_for:
                self._fetch_models()
        self._render_transcript()

    def _refresh_controls(self) -> None:
        s, model = self.session.settings, self.session.model
        # These are the session's values, not the user's changes: the observers stand aside
        # (setting a Dropdown's options also passes through its first option).
        self._syncing = True
        try:
            self.model.options = sorted({model, *self._models})
            self.model.value = model
            self.thread.options = list(self.session.threads)
            self.thread.value = self.session.current_thread
            self.temperature.value = "" if s.temperature is None else f"{s.temperature:g}"
            self.max_tokens.value = "" if s.max_tokens is None else str(s.max_tokens)
        finally:
            self._syncing = False
        self._update_spend()

    def _update_spend(self) -> None:
        ledger = self.session.usage
        budget = f"of {format_usd(ledger.budget)}" if ledger.budget is not None else "· no budget"
        self.spend.value = html.escape(f"spent {format_usd(ledger.spent)} {budget}")

    def _throttled_render(self) -> None:
        wait = self._last_render + 1 / REFRESH_HZ - time.monotonic()
        if wait <= 0:
            self._render_live()
        elif self._render_handle is None:  # a trailing update, so the last delta shows too
            self._render_handle = self.session.loop.call_later(wait, self._guard, self._render_live)

    def _render_transcript(self) -> None:
        self._show_blocks(self.history, self._history())
        self._render_live()

    def _render_live(self) -> None:
        if self._render_handle is not None:
            self._render_handle.cancel()
            self._render_handle = None
        self._last_render = time.monotonic()
        self._show_blocks(self.live, self._live())

    def _show_blocks(self, box: w.VBox, blocks: list[tuple[str, str]]) -> None:
        """Show each (Markdown, text) block in its own Output, re-rendering only the blocks
        that changed. An Output is cleared and re-rendered (asynchronously) on every update;
        re-rendering the whole thread collapsed the transcript for a moment, which threw the
        scroll position away (to the end, even when the user had scrolled up to read)."""
        shown: list[tuple[tuple[str, str], w.Output]] = self._shown.setdefault(id(box), [])
        same = 0
        while same < min(len(shown), len(blocks)) and shown[same][0] == blocks[same]:
            same += 1
        if same == len(shown) == len(blocks):
            return
        kept = shown[:same]
        stale = shown[same:]
        # The last block of a streaming reply changes in place rather than being replaced.
        if stale and len(blocks) > same and len(stale) == len(blocks) - same == 1:
            _show_markdown(stale[0][1], *blocks[same])
            kept.append((blocks[same], stale[0][1]))
            stale = []
        else:
            for block in blocks[same:]:
                output = w.Output()
                _show_markdown(output, *block)
                kept.append((block, output))
        box.children = tuple(output for _, output in kept)
        for _, output in stale:
            output.close()
        self._shown[id(box)] = kept

    def transcript_markdown(self) -> str:
        """The current thread as Markdown: prompts quoted, each reply followed by its footer."""
        return "\n\n".join(md for md, _ in (*self._history(), *self._live()))

    def transcript_text(self) -> str:
        """The current thread as plain text (the panel's text/plain)."""
        return "\n\n".join(plain for _, plain in (*self._history(), *self._live()))

    def _history(self) -> list[tuple[str, str]]:
        """(Markdown, plain text) of each message of the current thread, footers included."""
        name = self.session.current_thread
        thread = self.session.threads.get(name)
        blocks: list[tuple[str, str]] = []
        for message in list(thread.messages) if thread else []:
            content = parts_text(message.get("content"))  # an image as its label
            if message["role"] == "user":
                blocks.append((prompt_markdown(content), "> " + content))
            elif message["role"] == "assistant":
                parts = [(reply_markdown(content) or "*(no text)*", content)]
                known = self._footers.get(message)
                if known is not None:
                    reply, footer = known
                    if reply.interrupted:
                        parts.append(("*⏹ stopped: partial reply*", "(stopped: partial reply)"))
                    parts.append((fmt.footer_markdown(footer), f"[{footer}]"))
                blocks.append(("\n\n".join(m for m, _ in parts), "\n\n".join(t for _, t in parts)))
        if not blocks and name not in self._pending:
            empty = f"Thread {name} is empty: write a prompt below, or run a %%chat cell."
            return [(f"*{escape_dollars(empty)}*", empty)]
        return blocks

    def _live(self) -> list[tuple[str, str]]:
        """The prompt in flight and its reply so far, with the streaming footer."""
        pending = self._pending.get(self.session.current_thread)
        if pending is None:
            return []
        model = pending.estimate.model
        done = tokens.count_text(pending.text, model)
        footer = fmt.streaming_footer(self.session.model_label(model), pending.estimate, done)
        reply = (reply_markdown(pending.text) or "*…*") + "\n\n" + fmt.footer_markdown(footer)
        return [
            (prompt_markdown(pending.prompt), "> " + pending.prompt),
            (reply, f"{pending.text or '…'}\n\n[{footer}]"),
        ]

    def _schedule_estimate(self) -> None:
        if self._estimate_handle is not None:
            self._estimate_handle.cancel()
        self._estimate_handle = self.session.loop.call_later(
            DEBOUNCE, self._guard, self._update_estimate
        )

    def _update_estimate(self) -> None:
        self._update_spend()  # %chat budget changes the ledger without an event
        prompt = self.prompt.value
        if not prompt.strip() and not self.attachments.images:
            self.estimate.value = ""
            return
        thread = self.session.threads.get(self.session.current_thread)
        content = self.attachments.content(prompt)  # attached images are counted too
        estimate = self.session.estimate(content, thread=self.session.current_thread)
        text = fmt.estimate_text(estimate, history=bool(thread and thread.messages))
        self.estimate.value = html.escape(text)

    def _fetch_models(self) -> None:
        """Ask the endpoint for its models in the background; failures only keep the list."""
        self._models_for = self.session.base_url
        if self.session.endpoint().kind in ("local", "none"):
            return  # opening a panel must not start the embedded model's server

        async def fetch() -> list[str]:
            return await self.session.amodels()

        def done(future: concurrent.futures.Future[list[str]]) -> None:
            if not future.cancelled() and future.exception() is None:
                self._models = future.result()
                self._post(self._refresh_controls)

        self.session.submit(fetch()).add_done_callback(done)

    # ----- panel → session ---------------------------------------------------------------

    def _on_prompt(self, change: dict[str, Any]) -> None:
        self._typed.seen()
        self._post(self._schedule_estimate)

    def submit(self) -> None:
        """Send the prompt on the current thread; the reply streams in through events."""
        prompt = self.prompt.value.strip()
        if not prompt and not self.attachments.images:
            self.show_error("Write a prompt first.")
            return
        if self._future is not None and not self._future.done():
            self.show_error("A reply is still streaming: wait for it, or press Stop.")
            return
        self.show_error("")
        session, thread = self.session, self.session.current_thread
        self.prompt.value = ""
        images = self.attachments.take()
        content = self.attachments.content(prompt, images)
        self.send.disabled, self.stop.disabled = True, False
        # The session's own `aask`, as `%%chat` uses `stream`: refusals are raised before
        # anything is sent, and the reply streams into the panel through events.
        self._future = future = session.submit(session.aask(content, thread=thread, stream=True))
        future.add_done_callback(
            lambda f: self._post(lambda: self._finished(f, prompt, thread, images))
        )

    def _finished(
        self,
        future: concurrent.futures.Future[Reply],
        prompt: str,
        thread: str,
        images: list[Image],
    ) -> None:
        self.send.disabled, self.stop.disabled = False, True
        if future.cancelled():
            return  # the interrupted reply arrives as an event, marked
        exc = future.exception()
        if exc is None:
            return
        # A refusal after the start event (budget, offline cache miss) sends no error event.
        self._pending.pop(thread, None)
        self._render_transcript()
        if not self.prompt.value:
            self.prompt.value = prompt  # give the prompt back so nothing typed is lost
        if not self.attachments.images:
            self.attachments.set(images)  # and the images picked
        if isinstance(exc, ChatError):
            self.show_error(str(exc))
        else:
            log.debug("panel request failed", exc_info=exc)
            self.show_error(f"{type(exc).__name__}: {exc}")

    def cancel(self) -> None:
        """Stop the panel's request; what arrived is kept in the thread, marked as stopped."""
        if self._future is not None:
            self._future.cancel()

    def _on_model(self, change: dict[str, Any]) -> None:
        name = (change["new"] or "").strip()
        if self._syncing or not name or name == self.session.model:
            return
        self._guard(lambda: self.session.configure(model=name))
        self._post(self._refresh_controls)  # shows the session's value (reverts a refusal)

    def _on_thread(self, change: dict[str, Any]) -> None:
        if self._syncing or not change["new"] or change["new"] == self.session.current_thread:
            return
        self._guard(lambda: self.session.switch_thread(change["new"]))

    def _create_thread(self) -> None:
        n = len(self.session.threads) + 1
        while f"thread-{n}" in self.session.threads:
            n += 1
        self.session.switch_thread(f"thread-{n}")

    def _on_number(self, change: dict[str, Any]) -> None:
        if self._syncing:
            return

        def apply() -> None:
            temperature = _parse_number(self.temperature.value, float, "temperature")
            max_tokens = _parse_number(self.max_tokens.value, int, "max tokens")
            self.session.configure(temperature=temperature, max_tokens=max_tokens)
            self.show_error("")

        self._guard(apply)
        self._post(self._refresh_controls)


def panel(session: ChatSession | None = None) -> ChatPanel:
    """A new chat panel on `session` (default: the kernel's); display it to show it."""
    return ChatPanel(session)
