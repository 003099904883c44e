"""A map's row template (ipychat.map.template) on its own: what compiles to which format
string and columns, and each refusal word for word. No session, no server: %%chatmap's
end-to-end use is in test_chatmap.py and test_map_images.py (`python tools/mutation.py
map.template`)."""

from __future__ import annotations

from typing import Any

import pytest

from ipychat.core.errors import TemplateError
from ipychat.map.template import RowTemplate, compile_template


def _refusal(template: Any, columns: list[Any], frame: str = "the DataFrame") -> str:
    with pytest.raises(TemplateError) as info:
        compile_template(template, columns, frame)
    return str(info.value)


def test_placeholders_become_positions_in_order_of_first_use() -> None:
    t = compile_template("  {b} then {a}, {b} again  ", ["a", "b", "c"])
    assert t.text == "{b} then {a}, {b} again"  # stripped
    assert t.columns == ("b", "a") and t.kinds == ("text", "text")
    assert t.format_string == "{0} then {1}, {0} again"
    assert t.render(["B", "A"]) == "B then A, B again"


def test_text_around_the_placeholders_is_sent_as_written() -> None:
    t = compile_template('{"a": 1} {x} }{ {{x}} {{}} `{y}` {not a column}', ["x"])
    assert t.render(["X"]) == '{"a": 1} X }{ {x} {} `{y}` {not a column}'
    assert t.columns == ("x",)


def test_column_labels_need_not_be_strings_or_identifiers() -> None:
    t = compile_template("{0} / {review text} / {1}", [0, 1, "review text"])
    assert t.columns == (0, "review text", 1)
    assert t.render(["zero", "R", "one"]) == "zero / R / one"


def test_a_placeholder_never_spans_a_line() -> None:
    assert compile_template("{a\nb} {a}", ["a", "a\nb"]).render(["A"]) == "{a\nb} A"


def test_image_placeholders_are_kinds_of_their_column() -> None:
    t = compile_template("{p} {p:image} {p:image=low} {p:image} {q:image=auto}", ["p", "q"])
    assert t.columns == ("p", "p", "p", "q")
    assert t.kinds == ("text", "image", "image=low", "image=auto")
    assert t.format_string == "{0} {1} {2} {1} {3}"
    assert [t.kind(k) for k in range(4)] == ["text", "image", "image=low", "image=auto"]
    # A column named "p:image" is that column, as text.
    named = compile_template("{p:image}", ["p", "p:image"])
    assert named.columns == ("p:image",) and named.kinds == ("text",)
    # Not an image kind: text, as written.
    assert compile_template("{p} {p:imagex}", ["p"]).render(["P"]) == "P {p:imagex}"


def test_a_template_built_by_hand_is_text_throughout() -> None:
    assert RowTemplate("{x}", ("x",), "{0}").kind(0) == "text"


@pytest.mark.parametrize("template", ["", "  \n ", None, 3])
def test_an_empty_template_is_refused(template: Any) -> None:
    assert _refusal(template, ["text"]) == (
        "The template is empty: write the prompt below %%chatmap, with {column} "
        "placeholders such as {text}."
    )


def test_a_template_without_a_column_is_refused_naming_them() -> None:
    assert _refusal("Same prompt {{text}} each row", ["text", "stars"], "df") == (
        "The template has no {column} placeholder, so every row would send the same "
        "prompt. Use the columns of df: text, stars."
    )
    assert _refusal("No placeholder", []).endswith("Use the columns of the DataFrame: none.")


def test_an_unknown_column_is_refused_with_the_closest_one() -> None:
    assert _refusal("Classify {txt}", ["text", "stars"]) == (
        "{txt} is not a column of the DataFrame (did you mean {text}?). Its columns: "
        "text, stars. Use {{txt}} to send braces as text."
    )


def test_several_unknown_columns_are_listed_once_each() -> None:
    assert _refusal("{a} and {b} and {a} {text}", ["text"], "reviews") == (
        "{a}, {b} are not columns of reviews. Its columns: text. Use {{a}} to send braces as text."
    )


def test_an_unknown_image_placeholder_names_its_column() -> None:
    assert _refusal("{p} {nope:image}", ["p"]).startswith(
        "{nope} is not a column of the DataFrame. Its columns: p."
    )


def test_braces_that_cannot_be_a_column_are_not_refused() -> None:
    # LaTeX and inline code: literal; a name that is no identifier: text.
    t = compile_template(r"$x^{n}$ and \frac{a}{b} and `{code}` and {a b} for {text}", ["text"])
    assert t.render(["T"]) == r"$x^{n}$ and \frac{a}{b} and `{code}` and {a b} for T"


def test_a_long_list_of_columns_is_cut_at_thirty() -> None:
    thirty = [f"c{i}" for i in range(30)]
    message = _refusal("{zzz}", thirty)
    assert "Its columns: " + ", ".join(thirty) + ". Use" in message
    message = _refusal("{zzz}", [*thirty, "c30", "c31"])
    assert "Its columns: " + ", ".join(thirty) + ", … (2 more). Use" in message


def test_the_frame_is_called_the_dataframe_unless_named() -> None:
    with pytest.raises(TemplateError) as info:
        compile_template("No placeholder", ["text"])
    assert str(info.value).endswith("Use the columns of the DataFrame: text.")
