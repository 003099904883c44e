"""Brace-safe interpolation, value rendering and trimming history by tokens."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import polars as pl
import pytest

from ipychat.core import tokens
from ipychat.core.errors import ConfigError, ContextLengthError, TemplateError
from ipychat.core.messages import (
    Thread,
    as_content,
    build_messages,
    check_thread_name,
    interpolate,
    is_parts,
    literal_braces,
    parts_text,
    render_value,
    trim_history,
    unfenced_json,
)


class Obj:
    name = "widget"


NS = {
    "x": "XX",
    "n": 3,
    "obj": Obj(),
    "d": {"k": "v", 1: "one"},
    "items": ["a", "b"],
    "In": ["", "print(1)"],
}


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("hello {x}", "hello XX"),
        ("{n} apples", "3 apples"),
        ("{obj.name}", "widget"),
        ("{d['k']} {d[1]}", "v one"),
        ('{d["k"]}', "v"),
        ("{items[-1]}", "b"),
        ("{In[1]}", "print(1)"),
        ("{{x}} stays", "{x} stays"),
        ('JSON {"a": {"b": 1}} stays', 'JSON {"a": {"b": 1}} stays'),
        ("function f() { return x; }", "function f() { return x; }"),
        ("\\frac{a}{b} and x^{k}", "\\frac{a}{b} and x^{k}"),
        ("```\nfor k in d: print(f'{k}')\n```", "```\nfor k in d: print(f'{k}')\n```"),
        ("inline `{unknown}` code", "inline `{unknown}` code"),
        ("set() {}", "set() {}"),
        ("{ x }", "{ x }"),  # spaces: not a placeholder
    ],
)
def test_interpolation_replaces_only_known_names(template: str, expected: str) -> None:
    assert interpolate(template, NS).text == expected


def test_unknown_name_is_refused_with_a_suggestion() -> None:
    with pytest.raises(
        TemplateError, match=r"\{dff\} is not defined .*did you mean df\?.*\{\{dff\}\}"
    ):
        interpolate("Summarise {dff}", {"df": 1})


def test_bad_key_is_a_template_error() -> None:
    with pytest.raises(TemplateError, match="KeyError"):
        interpolate("{d['missing']}", NS)


def test_spans_mark_substituted_values() -> None:
    result = interpolate("a {x} b {n}", NS)
    assert [result.text[s:e] for s, e in result.spans] == ["XX", "3"]
    assert result.names == ("x", "n")


def test_long_strings_are_capped() -> None:
    huge = render_value("y" * 50_000, max_chars=1_000)
    assert len(huge) < 1_100 and "characters left out" in huge


def test_series_and_objects_render() -> None:
    assert "Series s of length 3" in render_value(pd.Series([1, 2, 3], name="s"))
    assert render_value([1, 2]) == "[1, 2]"


# ----- DataFrames and Series in prompts (issue: 1,000 × 8 floats went out as 10 raw CSV rows) --


def _floats(rows: int = 1_000, cols: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        rng.normal(size=(rows, cols)) * 1_000, columns=[f"x{i}" for i in range(cols)]
    )


def _polars(df: pd.DataFrame) -> pl.DataFrame:
    return pl.DataFrame({str(c): df[c].tolist() for c in df.columns})


def _numbers(line: str) -> list[str]:
    return re.findall(r"-?\d[\d.]*(?:e[-+]\d+)?", line)


def _significant(number: str) -> int:
    mantissa = number.lstrip("-").split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa.rstrip("0")) if "." not in number.split("e")[0] else len(mantissa)


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_a_large_frame_goes_out_as_a_summary_within_its_token_budget(kind: str) -> None:
    df = _floats()
    value = df if kind == "pandas" else _polars(df)
    text = interpolate("Describe {big}", {"big": value}).text
    sent = tokens.count_text(text, "gpt-4o-mini")
    # Before: ten CSV rows at 17 digits, no statistics (864 tokens for this frame's shape).
    raw = tokens.count_text(df.head(10).to_csv(), "gpt-4o-mini")
    assert sent <= 600 < raw, (sent, raw)
    assert "DataFrame with 1,000 rows × 8 columns" in text
    for column in df.columns:
        assert re.search(rf"\b{column}: (f|F)loat64\b", text)  # every column with its dtype
        assert re.search(rf"^{column},1000,", text, re.M)  # and its describe() row
    assert "first 5 rows" in text
    # No float carries more than 4 significant digits (the count column is an integer).
    body = text.split("first 5 rows", 1)[1]
    floats = [n for n in _numbers(body) if "." in n or "e" in n]
    assert floats and max(_significant(n) for n in floats) <= 4


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_summary_numbers_are_the_frames_to_four_significant_digits(kind: str) -> None:
    df = _floats(200, 3)
    value = df if kind == "pandas" else _polars(df)
    text = render_value(value)
    lines = text.splitlines()
    start = lines.index("x0,x1,x2")
    for row, line in zip(
        df.head(5).itertuples(index=False), lines[start + 1 : start + 6], strict=True
    ):
        for cell, exact in zip(line.split(","), row, strict=True):
            assert math.isclose(float(cell), exact, rel_tol=5e-4), (cell, exact)
    means = {
        line.split(",")[0]: float(line.split(",")[2])
        for line in lines
        if re.match(r"x\d,200,", line)
    }
    for column in df.columns:
        assert math.isclose(means[column], df[column].mean(), rel_tol=5e-4)


def test_rounding_keeps_integers_and_whole_parts_exact() -> None:
    df = pd.DataFrame(
        {
            "customer_id": [123_456_789_012 + i for i in range(300)],
            "revenue": [1_234_567.891] * 300,
            "rate": [0.000012345] * 300,
            "price": [19.99] * 300,
        }
    )
    text = render_value(df)
    head = text.split("first 5 rows", 1)[1].splitlines()[2]
    assert head == "123456789012,1234568,1.234e-05,19.99"


def test_a_small_frame_is_sent_whole_at_full_precision() -> None:
    df = pd.DataFrame({"month": ["Jan", "Feb"], "share": [0.1234567891, 0.25]})
    result = interpolate("{sales}", {"sales": df})
    assert re.fullmatch(
        r"DataFrame with 2 rows × 2 columns \(month: (str|object), share: float64\)\n"
        r"month,share\nJan,0.1234567891\nFeb,0.25",
        result.text,
    )
    assert result.notes == ("{sales}: 2 × 2 DataFrame, sent whole",)


def test_many_short_rows_are_summarised_not_listed() -> None:
    flags = pd.DataFrame({"churned": [0, 1, 1, 0, 1] * 100})  # 500 rows, 1,000 characters
    result = interpolate("{flags}", {"flags": flags})
    assert "as a summary" in result.notes[0]
    assert re.search(r"^churned,500,0\.6,", result.text, re.M)


def test_a_wide_frame_stays_within_budget_and_says_what_it_left_out() -> None:
    df = _floats(50, 400)
    text = render_value(df)
    assert len(text) <= 2_000
    assert "more numeric columns" in text and "… " in text.splitlines()[1]


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_the_spec_chooses_the_view(kind: str) -> None:
    df = _floats(100, 3)
    df["city"] = ["Paris", "Lyon", "Nice", "Paris"] * 25
    value = df if kind == "pandas" else _polars(df)
    ns = {"big": value}

    head = interpolate("{big:head=20}", ns)
    rows = head.text.split("first 20 rows:\n", 1)[1].splitlines()
    assert len(rows) == 21 and rows[0] == "x0,x1,x2,city"
    assert float(rows[1].split(",")[0]) == df["x0"].iloc[0]  # full precision
    assert head.notes == ("{big:head=20}: head 20 of 100 rows (100 × 4)",)

    tail = interpolate("{big:tail=2}", ns).text.splitlines()
    assert float(tail[-1].split(",")[0]) == df["x0"].iloc[-1]

    described = interpolate("{big:describe}", ns).text
    assert "first" not in described and re.search(r"^x2,100,", described, re.M)
    assert "city: Paris 50, Lyon 25, Nice 25" in described

    whole = interpolate("{big:csv}", ns).text.split("\n", 1)[1]
    assert whole.splitlines()[0] == "x0,x1,x2,city" and len(whole.splitlines()) == 101
    assert float(whole.splitlines()[100].split(",")[1]) == df["x1"].iloc[99]

    summary = interpolate("{big:summary}", {"big": value.head(3)})
    assert "as a summary" in summary.notes[0] and "describe()" in summary.text


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_series_are_summarised_too(kind: str) -> None:
    values = [float(i) / 7 for i in range(1_000)]
    series = pd.Series(values, name="ratio") if kind == "pandas" else pl.Series("ratio", values)
    text = interpolate("{s}", {"s": series}).text
    assert text.startswith("Series ratio of length 1,000")
    assert re.search(r"^ratio,1000,71\.36,", text, re.M)  # describe: count and mean
    assert len(text) < 600


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{price:.2f}", "3.14"),
        ("{n:,} rows", "1,000 rows"),
        ("{share:.1%}", "12.5%"),
        ("{name:>6}|", "   Ada|"),
        ("{a:1} stays", "{a:1} stays"),  # only digits: not a spec
        ("{name: string}", "{name: string}"),  # a space: not a spec
        ('{"name": "x"}', '{"name": "x"}'),
        ("{unknown:.2f} is an f-string", "{unknown:.2f} is an f-string"),
        ("{{price:.2f}}", "{price:.2f}"),
        ("\\frac{p}{q} and x^{k:2}", "\\frac{p}{q} and x^{k:2}"),
    ],
)
def test_format_specs(template: str, expected: str) -> None:
    ns = {"price": 3.14159, "n": 1000, "share": 0.125, "name": "Ada", "a": 5}
    assert interpolate(template, ns).text == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{df:.2f}", r"\{df:.2f\}: a DataFrame or Series takes :summary, :head=N"),
        ("{name:csv}", r"\{name:csv\}: :csv is for DataFrames and Series, and name is a str"),
        ("{name:.2f}", r"\{name:.2f\}: Unknown format code 'f'.*\{\{name:.2f\}\}"),
    ],
)
def test_wrong_specs_are_one_line_errors(template: str, message: str) -> None:
    ns = {"df": pd.DataFrame({"a": [1]}), "name": "Ada"}
    with pytest.raises(TemplateError, match=message):
        interpolate(template, ns)


def _count(messages) -> int:  # one token per word plus 3 per message: easy to reason about
    return sum(3 + len(str(m["content"]).split()) for m in messages)


def test_trim_drops_oldest_turns_and_keeps_system_and_prompt() -> None:
    thread = Thread("t")
    for i in range(5):
        thread.add_turn(f"question {i} " + "w " * 10, f"answer {i} " + "w " * 10)
    messages = build_messages("be brief", thread.messages, "the new prompt")
    kept, dropped = trim_history(messages, 70, _count)
    assert kept[0] == {"role": "system", "content": "be brief"}
    assert kept[-1]["content"] == "the new prompt"
    assert _count(kept) <= 70
    assert dropped == 4 and kept[1]["content"].startswith("question 4")
    untouched, none = trim_history(messages, 10_000, _count)
    assert none == 0 and untouched == messages


def test_prompt_that_cannot_fit_is_refused() -> None:
    with pytest.raises(ContextLengthError, match=r"needs .* tokens but only 5 fit"):
        trim_history(build_messages(None, [], "one two three four five six"), 5, _count)


def test_thread_turns() -> None:
    thread = Thread("main")
    thread.add_turn("q", "a")
    assert thread.turns == 1 and len(thread.messages) == 2
    thread.clear()
    assert thread.turns == 0


# ----- values whose own code fails: one line, never a traceback ------------------------------


class _BadRepr:
    def __repr__(self) -> str:
        raise ValueError("  no\n  repr here  ")

    __str__ = __repr__


class _Unsayable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("nor this")


class _WorseRepr:
    def __repr__(self) -> str:
        raise _Unsayable()

    __str__ = __repr__


class _LongRepr:
    def __repr__(self) -> str:
        raise KeyError("x" * 300)

    __str__ = __repr__


def test_a_value_whose_repr_raises_is_one_line_naming_the_error() -> None:
    with pytest.raises(TemplateError) as info:
        interpolate("look at {obj}", {"obj": _BadRepr()})
    assert str(info.value) == (
        "{obj} could not be turned into text (ValueError: no repr here). Interpolate "
        "something printable instead, or use {{obj}} to send the braces as text."
    )


def test_an_error_that_cannot_be_said_is_named_by_its_type() -> None:
    with pytest.raises(TemplateError, match=r"\(_Unsayable\)\. Interpolate"):
        interpolate("{obj}", {"obj": _WorseRepr()})


def test_a_long_error_is_cut_to_one_short_line() -> None:
    with pytest.raises(TemplateError) as info:
        interpolate("{obj}", {"obj": _LongRepr()})
    said = re.search(r"\(KeyError: (.*)\)\. Interpolate", str(info.value))
    assert said is not None
    assert len(said.group(1)) == 120 and said.group(1).endswith("x…")  # 119 + the ellipsis
    assert said.group(1).startswith("'xxx")


def test_build_messages_in_full() -> None:
    history = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert build_messages(None, [], "hi") == [{"role": "user", "content": "hi"}]
    assert build_messages("", history, "hi") == [*history, {"role": "user", "content": "hi"}]
    assert build_messages("Be brief.", history, "hi") == [
        {"role": "system", "content": "Be brief."},
        *history,
        {"role": "user", "content": "hi"},
    ]


def test_a_turn_is_a_user_message_then_an_assistant_message() -> None:
    thread = Thread("t")
    thread.add_turn("q1", "a1")
    thread.add_turn("q2", "a2")
    assert thread.messages == [
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
    ]
    assert thread.turns == 2


# ----- the shared brace scanner and JSON-fence reader (used by %%chatmap and %chat -f json) ----


def test_literal_braces_marks_code_and_latex_only() -> None:
    text = "ask {q} about \\frac{a}, x^{n}, f{x} and `{code}`, then\n```\n{block}\n```\n{last}"
    is_literal = literal_braces(text)
    literal = [w for w in ("{a}", "{n}", "{x}", "{code}", "{block}") if is_literal(text.index(w))]
    assert literal == ["{a}", "{n}", "{x}", "{code}", "{block}"]
    assert not is_literal(text.index("{q}")) and not is_literal(text.index("{last}"))
    assert not literal_braces("{q}")(0)  # a brace at the very start is a placeholder


def test_unfenced_json_takes_the_json_out_of_its_fence_only() -> None:
    assert unfenced_json(' \n```json\n{"a": 1}\n```\n') == '{"a": 1}'
    assert unfenced_json("```\n[1, 2]```") == "[1, 2]"
    assert unfenced_json(' {"a": "```"} ') == '{"a": "```"}'
    assert unfenced_json("text ```json\n{}\n``` more") == "text ```json\n{}\n``` more"


# ----- what mutation testing showed no test pinned (tests/mutation/README.md) ------------------


def test_spans_stay_right_after_escaped_braces_non_specs_and_unknown_names_with_a_spec() -> None:
    # each kind of brace left as text advances the position the next span is measured from
    result = interpolate("{{a}} {x} {a:1} {x} {zz:.2f} {x}", NS)
    assert result.text == "{a} XX {a:1} XX {zz:.2f} XX"
    assert result.spans == ((4, 6), (13, 15), (25, 27))
    assert result.names == ("x", "x", "x") and result.notes == ()
    later = interpolate("n {{a}} {x}", NS)  # an escape after other text
    assert later.text == "n {a} XX" and later.spans == ((6, 8),)


def test_an_attribute_may_start_with_a_capital() -> None:
    class Shape:
        Width = 7

    assert interpolate("{s.Width}", {"s": Shape()}).text == "7"


def test_a_brace_right_after_inline_code_is_a_placeholder_again() -> None:
    with pytest.raises(TemplateError, match=r"^\{nope\} is not defined in the notebook\. Use"):
        interpolate("`code`{nope}", {})


def test_an_unknown_name_with_no_close_public_match_gets_no_suggestion() -> None:
    message = "{secret} is not defined in the notebook. Use {{secret}} to send the braces as text."
    with pytest.raises(TemplateError) as refused:
        interpolate("{secret}", {"_secret": 1, "zzz": 2})  # private names are not suggested
    assert str(refused.value) == message


class _Says:
    def __init__(self, length: int) -> None:
        self.length = length

    def __repr__(self) -> str:
        raise ValueError("y" * self.length)


@pytest.mark.parametrize(("length", "shown"), [(120, "y" * 120), (121, "y" * 119 + "…")])
def test_an_error_of_120_characters_is_said_whole_and_a_longer_one_cut(
    length: int, shown: str
) -> None:
    with pytest.raises(TemplateError) as refused:
        interpolate("{v}", {"v": _Says(length)})
    assert f"(ValueError: {shown}). Interpolate" in str(refused.value)


def test_shortening_keeps_both_ends_and_counts_what_it_left_out() -> None:
    assert render_value("x" * 10, max_chars=10) == "x" * 10
    text = "a" * 10 + "m" * 4 + "b" * 10
    assert render_value(text, max_chars=10) == "aaaaa\n… [14 characters left out] …\nbbbbb"
    assert interpolate("{t}", {"t": text}, max_value_chars=10).text == render_value(
        text, max_chars=10
    )
    assert interpolate("{v}", {"v": list(range(100))}, max_value_chars=10).text == (
        "[0, 1\n… [380 characters left out] …\n, 99]"
    )


@pytest.mark.parametrize("kind", ["pandas", "polars"])
def test_the_notes_name_the_placeholder_and_only_frames_get_one(kind: str) -> None:
    columns = {"a": list(range(1_000)), "b": [i / 3 for i in range(1_000)]}
    big = pd.DataFrame(columns) if kind == "pandas" else pl.DataFrame(columns)
    choose = "{big:head=N}, {big:describe} or {big:csv} choose"
    assert interpolate("{big}", {"big": big}).notes == (
        f"{{big}}: 1,000 × 2 DataFrame as a summary; {choose}",
    )
    assert interpolate("{big:summary}", {"big": big}).notes == (
        f"{{big:summary}}: 1,000 × 2 DataFrame as a summary; {choose}",
    )
    series = pd.Series([1, 2, 3], name="s") if kind == "pandas" else pl.Series("s", [1, 2, 3])
    assert interpolate("{s:head=2}", {"s": series}).notes == ("{s:head=2}: head 2 of 3 rows (3)",)
    assert interpolate("{n:,} {x}", NS).notes == ()


def test_a_format_error_names_the_value_s_type() -> None:
    with pytest.raises(TemplateError, match=r"^\{n:\.2x\}: .* \(n is a int\)\. Fix the format"):
        interpolate("{n:.2x}", NS)


def test_trim_drops_the_last_old_turn_and_stops_at_an_exact_fit() -> None:
    history = [{"role": "user", "content": "q w w"}, {"role": "assistant", "content": "a w w"}]
    messages = build_messages("be brief", history, "the new prompt")  # 5 + 6 + 6 + 6 tokens
    kept, dropped = trim_history(messages, 11, _count)
    assert dropped == 1 and kept == [messages[0], messages[-1]]  # 11 tokens: fits exactly
    assert trim_history(messages, 23, _count) == (messages, 0)


class _BytesRepr:
    def __repr__(self) -> str:
        return b"raw"  # type: ignore[return-value]


def test_a_repr_that_returns_no_text_is_one_line_naming_the_error() -> None:
    with pytest.raises(TemplateError, match=r"^\{b\} could not be turned into text \(TypeError: "):
        interpolate("{b}", {"b": _BytesRepr()})


# ----- content parts, thread names, and a thread built from its messages alone ----------------


def test_replacing_a_turn_of_a_thread_built_from_its_messages_alone() -> None:
    # regression: the padding of `records` stopped one short, an IndexError
    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    thread = Thread("t", messages=turn * 3)
    thread.replace_turn(2, "Q", "A", {"model": "m"})
    assert thread.records == [None, None, {"model": "m"}]
    assert thread.record_of(2) == {"model": "m"} and thread.record_of(3) is None
    assert thread.messages[4:] == [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert thread.messages[:4] == turn * 2 and thread.cell_of(0) is None
    thread.replace_turn(0, "Q0", "A0")
    assert thread.records == [None, None, {"model": "m"}] and thread.turns == 3


@pytest.mark.parametrize("name", ["draft", "a b", "x" * 200, "é"])
def test_a_thread_name_is_short_printable_text(name: str) -> None:
    check_thread_name(name)


@pytest.mark.parametrize(
    "name", [None, 3, "", "  ", "x" * 201, "a\nb", "\ud800", "a\udfff", "\udc00"]
)
def test_any_other_thread_name_is_refused_in_one_line(name: object) -> None:
    expected = f"{name!r} cannot name a thread: use a short printable name such as 'draft'."
    with pytest.raises(ConfigError) as refused:
        check_thread_name(name)
    assert str(refused.value) == expected


def test_content_parts_are_told_from_messages() -> None:
    text = {"type": "text", "text": "hi"}
    assert is_parts([text, {"type": "image_url", "image_url": {"url": "data:,"}}])
    assert not is_parts([])
    assert not is_parts([{"role": "user", "content": "hi", "type": "x"}])
    assert not is_parts([text, "hi"])
    assert not is_parts([text, {"text": "no type"}])
    assert not is_parts((text,)) and not is_parts("hi")


def test_a_python_list_of_texts_becomes_text_parts() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    assert as_content(["What is", "  ", part, ("kept",)]) == [
        {"type": "text", "text": "What is"},
        part,
        ("kept",),
    ]
    assert as_content(("one",)) == [{"type": "text", "text": "one"}]
    assert as_content("plain") == "plain" and as_content(None) is None


def test_parts_read_as_text() -> None:
    parts = [
        "skipped",
        {"type": "text", "text": "Look:"},
        {"type": "text", "text": None},
        {"text": "no type"},
        {"type": "input_image", "image_url": "data:,"},
        {"type": "text", "text": " and "},
        {"type": "image_url", "image_url": {"url": "data:,"}},
    ]
    assert parts_text(parts) == "Look: [image] and [image]"
    assert parts_text(None) == "" and parts_text(3) == "3" and parts_text("s") == "s"


def test_an_image_in_a_python_list_becomes_its_part_and_a_turn_knows_its_cell() -> None:
    from PIL import Image as PILImage

    picture = PILImage.new("RGB", (4, 3))
    (part,) = as_content([picture])
    assert part["type"] == "image_url" and part["image_url"]["url"].startswith("data:image/")
    thread = Thread("t")
    thread.add_turn("q", "a", "cell-1")
    assert thread.cell_of(0) == "cell-1" and thread.cell_of(1) is None


def test_a_thread_with_fewer_records_than_turns_pads_them_once() -> None:
    turn = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    thread = Thread("t", messages=turn * 2, records=[{"model": "m0"}])
    assert thread.add_turn("q2", "a2", record={"model": "m2"}) == 2
    assert thread.records == [{"model": "m0"}, None, {"model": "m2"}]
    thread.replace_turn(1, "Q1", "A1")
    assert [m["content"] for m in thread.messages] == ["q", "a", "Q1", "A1", "q2", "a2"]
