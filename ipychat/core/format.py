"""The one-line texts every view shows: reply footers, estimates, usage tables.

Pure string building, shared by the magics, the panel and `Reply._repr_markdown_`, so the
same facts read the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ipychat.core.pricing import format_tokens, format_usd, format_usd_bound

if TYPE_CHECKING:  # annotations only: `Reply._repr_markdown_` imports this module
    from ipychat.core.providers import Provider
    from ipychat.core.types import Estimate, Reply, Usage

__all__ = [
    "ModelUsage",
    "UsageRecord",
    "compare_line",
    "estimate_line",
    "estimate_text",
    "footer",
    "footer_markdown",
    "named_endpoints",
    "plural",
    "provider_line",
    "replaced_lines",
    "streaming_footer",
    "usage_markdown",
]


class ModelUsage(Protocol):
    """One model's row of `%chat usage` (`ipychat.engine.ledger.ModelSummary` is one)."""

    @property
    def model(self) -> str: ...
    @property
    def requests(self) -> int: ...
    @property
    def cached(self) -> int: ...
    @property
    def errors(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def cost(self) -> float | None: ...
    @property
    def saved(self) -> float: ...
    @property
    def p50_latency(self) -> float | None: ...
    @property
    def p95_latency(self) -> float | None: ...


class UsageRecord(Protocol):
    """What `%chat usage` reads of a ledger (`ipychat.engine.ledger.Ledger` is one): core
    knows the shape, not the engine that keeps it."""

    budget: float | None

    @property
    def spent(self) -> float: ...
    def summary(self) -> Sequence[ModelUsage]: ...


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """`1 turn`, `2 turns`, `1,200 replies` (with `nouns` for irregular plurals)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def _tokens(usage: Usage | None) -> str:
    if usage is None:
        return "? → ? tokens"
    approx = usage.estimated
    return f"{format_tokens(usage.prompt_tokens, approx)} → {format_tokens(usage.completion_tokens, approx)} tokens"


def footer(reply: Reply, *, turns: int | None = None) -> str:
    """`gpt-4o-mini · 412 → 96 tokens · $0.00012 · 1.8 s · thread main (4 turns)`"""
    parts = [reply.model, _tokens(reply.usage)]
    if reply.cached:
        parts.append(f"cached (saved {format_usd(reply.saved)})")
    else:
        parts.append(format_usd(reply.cost))
        parts.append(f"{reply.latency:.1f} s")
    thread = f"thread {reply.thread}"
    if turns is None and reply.turn:  # how many turns the thread had when it answered
        turns = reply.turn + reply.later_turns
    if turns is not None:
        thread += f" ({turns} turn{'s' if turns != 1 else ''})"
    parts.append(thread)
    parts.extend(replaced_lines(reply))
    if reply.dropped_turns:
        n = reply.dropped_turns
        parts.append(f"{n} early turn{'s' if n != 1 else ''} left out to fit the context")
    if reply.extra.get("masked"):  # the redact setting: say what never left the kernel
        parts.append(str(reply.extra["masked"]))
    if reply.extra.get("note"):  # e.g. the local model answered a request naming another
        parts.append(str(reply.extra["note"]))
    if reply.interrupted:
        parts.append("interrupted")
    elif reply.finish_reason == "length":
        parts.append("cut at max tokens")
    return " · ".join(parts)


def compare_line(reply: Reply) -> str:
    """One model's figures under its reply in a comparison: `412 → 96 tokens · $0.00012 · 1.8 s`."""
    parts = [_tokens(reply.usage)]
    if reply.cached:
        parts.append(f"cached (saved {format_usd(reply.saved)})")
    else:
        parts += [format_usd(reply.cost), f"{reply.latency:.1f} s"]
    if reply.finish_reason == "length":
        parts.append("cut at max tokens")
    return " · ".join(parts)


def replaced_lines(reply: Reply) -> list[str]:
    """A re-run cell's footer: `replaced turn 2 · 1 later turn was answered with the old text`."""
    if not reply.replaced:
        return []
    parts = [f"replaced turn {reply.turn}"]
    if reply.later_turns:
        n = reply.later_turns
        parts.append(
            f"{plural(n, 'later turn')} {'was' if n == 1 else 'were'} answered with the old text"
        )
    return parts


def footer_markdown(footer: str) -> str:
    """A footer under a reply, in Markdown: in a code span, JupyterLab neither typesets its
    dollars nor parses it."""
    return f"<sub>`{footer}`</sub>"


def streaming_footer(model: str, estimate: Estimate, completion_tokens: int) -> str:
    """`gpt-4o-mini · 412 → 31… tokens · ≤ $0.00037 · streaming`"""
    approx = estimate.approximate
    high = format_usd_bound(estimate.cost_high)
    return (
        f"{model} · {format_tokens(estimate.prompt_tokens, approx)} → "
        f"{format_tokens(completion_tokens, approx)}… tokens · ≤ {high} · streaming"
    )


def context_share(share: float) -> str:
    """`12%`; a prompt is never "0%" of the window: under half a percent, and exactly half
    (which rounds half to even), is `<1%`."""
    shown = f"{share:.0%}"
    return "<1%" if shown == "0%" else shown


def estimate_line(estimate: Estimate) -> str:
    """`would send 3 messages · 412 tokens · up to 1,024 reply tokens · $0.00006–$0.00068`"""
    n = estimate.messages
    cost = (
        f"{format_usd(estimate.cost_low)}–{format_usd_bound(estimate.cost_high)}"
        if estimate.cost_high is not None
        else "cost unknown (no price for this model: %chat price MODEL INPUT OUTPUT)"
    )
    share = ""
    if estimate.context_share is not None and estimate.context_window:
        window = format_tokens(estimate.context_window, compact=True)
        share = f" ({context_share(estimate.context_share)} of {window} context)"
    return (
        f"would send {n} message{'s' if n != 1 else ''} · "
        f"{format_tokens(estimate.prompt_tokens, estimate.approximate)} tokens{share} · "
        f"up to {estimate.max_completion_tokens:,} reply tokens · {cost}"
    )


def estimate_text(estimate: Estimate, *, history: bool) -> str:
    """The panel's estimate of the prompt being typed:
    `1,204 tokens with history · 1% of 128k · $0.0002–$0.0008`"""
    parts = [
        f"{format_tokens(estimate.prompt_tokens, estimate.approximate)} tokens"
        + (" with history" if history else "")
    ]
    share = estimate.context_share
    if share is not None and estimate.context_window:
        window = format_tokens(estimate.context_window, compact=True)
        parts.append(f"{context_share(share)} of {window}")
    if estimate.cost_high is None:
        parts.append("cost unknown (set it with %chat price MODEL INPUT OUTPUT)")
    else:
        parts.append(f"{format_usd(estimate.cost_low)}–{format_usd(estimate.cost_high)}")
    return " · ".join(parts)


def _latency(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} s"


def usage_markdown(ledger: UsageRecord, summaries: Sequence[ModelUsage] | None = None) -> str:
    """`%chat usage`: a table per model and the totals, with the budget line."""
    rows = list(summaries if summaries is not None else ledger.summary())
    if not rows:
        return "No requests yet in this session."
    head = (
        "| model | requests | cached | errors | prompt tokens | completion tokens | cost | "
        "saved by cache | p50 latency | p95 latency |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for s in rows:
        lines.append(
            f"| {s.model} | {s.requests:,} | {s.cached:,} | {s.errors:,} | {s.prompt_tokens:,} | "
            f"{s.completion_tokens:,} | {format_usd(s.cost)} | {format_usd(s.saved)} | "
            f"{_latency(s.p50_latency)} | {_latency(s.p95_latency)} |"
        )
    costs = [s.cost for s in rows]
    total = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
    lines.append(
        f"| **total** | {sum(s.requests for s in rows):,} | {sum(s.cached for s in rows):,} | "
        f"{sum(s.errors for s in rows):,} | {sum(s.prompt_tokens for s in rows):,} | "
        f"{sum(s.completion_tokens for s in rows):,} | {format_usd(total)} | "
        f"{format_usd(sum(s.saved for s in rows))} | | |"
    )
    budget = f"of {format_usd(ledger.budget)}" if ledger.budget is not None else "(no budget set)"
    lines.append(f"\nspent {format_usd(ledger.spent)} {budget}")
    return "\n".join(lines)


def named_endpoints(names: Sequence[str]) -> str:
    """What `%chat endpoint` lists under the current endpoint."""
    return (
        f"named endpoints: {', '.join(names)}, local (%chat endpoint NAME; the README's "
        "providers table says what each needs), or any OpenAI-compatible URL."
    )


def provider_line(spec: Provider, url: str, model: str, key_var: str | None) -> str:
    """`endpoint: anthropic (https://api.anthropic.com/v1) · key ANTHROPIC_API_KEY · model
    claude-haiku-4-5`, or what to set when the key variable is not set."""
    head = f"endpoint: {spec.name} ({url})"
    if spec.local:
        keyed = "no key needed"
    elif key_var is not None:
        keyed = f"key from {key_var}"
    else:
        keyed = f"no key: set {' or '.join(spec.key_vars)}, or run %chat key"
    tokens = " · token counts ≈ (not OpenAI's tokenizer)" if spec.approximate_tokens else ""
    return f"{head} · {keyed} · model {model}{tokens}"
