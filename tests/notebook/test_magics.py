"""%%chat and %chat driven through a real InteractiveShell against the loopback server."""

from __future__ import annotations

import _thread
import re
import sys
import threading

import pandas as pd
import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from ipychat.core.types import Reply
from ipychat.session import ChatSession, get_session
from ipychat.testing import FakeOpenAIServer


def run(ip, line: str, cell: str):
    with capture_output() as out:
        ip.run_cell_magic("chat", line, cell)
    return out


def shown(out) -> str:
    """Everything a cell showed: printed text and the Markdown/HTML of displays."""
    parts = [out.stdout]
    for o in out.outputs:
        parts.extend(str(v) for v in o.data.values())
    return "\n".join(parts)


def test_chat_cell_streams_a_reply_with_a_footer(ip, fake: FakeOpenAIServer) -> None:
    out = run(ip, "", "Hello there")
    text = shown(out)
    assert "Echo: Hello there" in text
    assert "gpt-4o-mini" in text and "tokens" in text and "thread main (1 turn)" in text
    assert fake.chat_requests[0].body["stream"] is True


def test_notebook_mode_returns_the_reply_as_the_cells_result(ip, fake: FakeOpenAIServer) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    with capture_output():
        result = ip.run_cell("%%chat\nRender me as markdown please")
    reply = result.result
    assert isinstance(reply, Reply) and ip.user_ns["_"] is reply
    data, metadata = reply._repr_mimebundle_()
    assert "Echo: Render me as markdown please" in data["text/markdown"]
    assert "$" in data["text/markdown"] and "thread main" in data["text/markdown"]
    assert data["text/plain"].startswith("Echo: Render me as markdown please\n\n[gpt-4o-mini")
    assert metadata["ipychat"]["thread"] == "main" and metadata["ipychat"]["turn"] == 1


def test_multi_turn_threads_and_new(ip, fake: FakeOpenAIServer) -> None:
    run(ip, "", "one")
    run(ip, "", "two")
    assert [m["content"] for m in fake.chat_requests[-1].body["messages"]] == [
        "one",
        "Echo: one",
        "two",
    ]
    run(ip, "--thread side", "aside")
    assert len(fake.chat_requests[-1].body["messages"]) == 1
    run(ip, "--new", "fresh")
    assert len(fake.chat_requests[-1].body["messages"]) == 1
    ip.run_line_magic("chat", "thread side")
    run(ip, "", "back on side")
    assert next(m["content"] for m in fake.chat_requests[-1].body["messages"]) == "aside"


def test_every_request_option_reaches_the_server(ip, fake: FakeOpenAIServer) -> None:
    run(ip, "-m gpt-4o -s 'Be terse.' -t 0.3 --max-tokens 50 --no-stream", "options")
    body = fake.chat_requests[-1].body
    assert body["model"] == "gpt-4o" and body["temperature"] == 0.3 and body["max_tokens"] == 50
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}
    assert not body.get("stream")


def test_output_variable_and_formats(ip, fake: FakeOpenAIServer) -> None:
    run(ip, "-o answer", "store this")
    assert (
        isinstance(ip.user_ns["answer"], Reply) and ip.user_ns["answer"].text == "Echo: store this"
    )
    with FakeOpenAIServer(reply='{"a": 1, "b": [2, 3]}') as jserver:
        ip.run_line_magic("chat", f"endpoint {jserver.base_url}")
        run(ip, "-f json -o data", "give json")
        assert ip.user_ns["data"] == {"a": 1, "b": [2, 3]}
    with FakeOpenAIServer(reply="Here:\n```python\nprint('hi')\n```\nDone.") as cserver:
        ip.run_line_magic("chat", f"endpoint {cserver.base_url}")
        run(ip, "-f code", "write code")
        assert ip.rl_next_input == "print('hi')"  # a kernel turns this into the next cell
        with pytest.raises(UsageError, match="not JSON"):
            run(ip, "-f json", "not json this time")


def test_interpolation_of_variables_and_dataframes(ip, fake: FakeOpenAIServer) -> None:
    ip.user_ns["city"] = "Paris"
    ip.user_ns["df"] = pd.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    run(
        ip, "", 'Weather in {city}? Data: {df}. Code: `{ return 1; }` JSON {"k": {"v": 1}} {{city}}'
    )
    sent = fake.chat_requests[-1].body["messages"][-1]["content"]
    assert sent.startswith("Weather in Paris? Data: DataFrame with 2 rows × 2 columns")
    assert '`{ return 1; }` JSON {"k": {"v": 1}} {city}' in sent
    run(ip, "--no-interpolate", "Keep {city} as is")
    assert fake.chat_requests[-1].body["messages"][-1]["content"] == "Keep {city} as is"


def test_in_out_references(ip, fake: FakeOpenAIServer) -> None:
    ip.run_cell("x = 41 + 1", store_history=True)
    n = ip.execution_count - 1
    run(ip, "", f"Explain {{In[{n}]}}")
    assert fake.chat_requests[-1].body["messages"][-1]["content"] == "Explain x = 41 + 1"


def test_dry_run_sends_nothing_and_shows_the_estimate(ip, fake: FakeOpenAIServer) -> None:
    ip.user_ns["topic"] = "owls"
    out = run(ip, "--dry-run", "Tell me about {topic}")
    text = shown(out)
    assert "Tell me about owls" in text
    assert "would send 1 message" in text and "up to 1,024 reply tokens" in text and "$" in text
    assert fake.chat_requests == []


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("", "   ", "cell is empty"),
        ("--bogus", "hi", r"^%%chat: unknown option --bogus\. %%chat\? lists the options\.$"),
        ("--temprature 0.3", "hi", r"unknown option --temprature \(did you mean --temperature\?\)"),
        ("--max-tokns=5", "hi", r"unknown option --max-tokns \(did you mean --max-tokens\?\)"),
        ("--no-cahce", "hi", r"unknown option --no-cahce \(did you mean --no-cache\?\)"),
        ("Summarise this", "hi", r"unexpected 'Summarise' on the magic line: .*the cell below"),
        ("-t hot", "hi", "invalid float"),
        ("-t 7", "hi", "temperature"),
        ("--max-tokens 0", "hi", "max_tokens"),
        ("-o 1bad", "hi", "variable name"),
        ("--no-cache --refresh", "hi", "contradict"),
        ("", "Summarise {dff}", "did you mean"),
        ("--thread", "hi", "expected one argument"),
        ("--max-cost -1", "hi", "max cost"),
    ],
)
def test_bad_input_is_one_line_and_sends_nothing(
    ip, fake: FakeOpenAIServer, line: str, cell: str, message: str
) -> None:
    ip.user_ns["df"] = pd.DataFrame({"a": [1]})
    with pytest.raises(UsageError, match=message) as info:
        run(ip, line, cell)
    assert "\n" not in str(info.value).strip()
    assert fake.chat_requests == []


def test_no_key_for_openai_is_a_clear_error(ip, session: ChatSession) -> None:
    session.configure(base_url="https://api.openai.com/v1", api_key=None)
    session.settings.api_key = None
    with pytest.raises(UsageError, match="No API key"):
        run(ip, "", "hi")


def test_unreachable_endpoint_is_a_clear_error(ip, session: ChatSession) -> None:
    ip.run_line_magic("chat", "endpoint http://127.0.0.1:9/v1")
    session.configure(max_retries=0)
    with pytest.raises(UsageError, match=r"127\.0\.0\.1:9"):
        run(ip, "", "hi")


def test_budget_refusal_through_the_magic(ip, fake: FakeOpenAIServer) -> None:
    ip.run_line_magic("chat", "budget 0.00001")
    with pytest.raises(UsageError, match="Budget: spent"):
        run(ip, "", "too expensive")
    with pytest.raises(UsageError, match="max-cost"):
        run(ip, "--max-cost 0", "also refused")
    assert fake.chat_requests == []


def test_cached_rerun_shows_the_badge(ip, fake: FakeOpenAIServer) -> None:
    run(ip, "--thread a", "same question")
    out = run(ip, "--thread b", "same question")
    assert "cached (saved $" in shown(out)
    assert len(fake.chat_requests) == 1
    run(ip, "--thread c --refresh", "same question")
    run(ip, "--thread d --no-cache", "same question")
    assert len(fake.chat_requests) == 3


def test_interrupt_keeps_partial_and_shows_no_traceback(ip, session: ChatSession) -> None:
    original = session.base_url
    with FakeOpenAIServer(tokens_per_second=10) as slow:
        ip.run_line_magic("chat", f"endpoint {slow.base_url}")
        threading.Timer(1.0, _thread.interrupt_main).start()
        with pytest.raises(UsageError, match="Interrupted") as info, capture_output() as out:
            ip.run_cell_magic("chat", "-o partial", "word " * 60)
        assert "\n" not in str(info.value)
        reply = ip.user_ns["partial"]
        assert reply.interrupted and 0 < len(reply.text) < len("Echo: " + "word " * 60)
        assert "interrupted" in shown(out)
        ip.run_line_magic("chat", f"endpoint {original}")
    # the next cell works
    out = run(ip, "--new", "after the interrupt")
    assert "Echo: after the interrupt" in shown(out)


def test_line_magic_status_and_subcommands(ip, fake: FakeOpenAIServer) -> None:
    with capture_output() as out:
        ip.run_line_magic("chat", "")
    assert (
        "127.0.0.1" in out.stdout
        and "model gpt-4o-mini" in out.stdout
        and "thread main" in out.stdout
    )
    ip.run_line_magic("chat", "model gpt-4o")
    assert get_session().settings.model == "gpt-4o"
    ip.run_line_magic("chat", "system Answer in French.")
    assert get_session().settings.system == "Answer in French."
    ip.run_line_magic("chat", "system off")
    assert get_session().settings.system is None
    run(ip, "", "remember me")
    with capture_output() as out:
        ip.run_line_magic("chat", "history")
        ip.run_line_magic("chat", "threads")
        ip.run_line_magic("chat", "models")
        ip.run_line_magic("chat", "usage")
    assert "remember me" in out.stdout and "* main (1 turn)" in out.stdout
    assert "fake-model" in out.stdout and "| gpt-4o |" in out.stdout and "spent $" in out.stdout
    ip.run_line_magic("chat", "reset")
    assert get_session().threads["main"].turns == 0
    ip.run_line_magic("chat", "price gpt-4o 1 2")
    assert get_session().prices.lookup("gpt-4o").input == 1
    for bad, msg in [
        ("frobnicate", "unknown subcommand"),
        ("price x y z", "must be a number"),
        ("budget -3", "positive"),
        ("endpoint nonsense", "not an endpoint URL"),
        ("thread", "name the thread"),
        ("key sk-abc123", "Never put an API key"),
        ("history ghost", "No thread named"),
        ("offline maybe", "on|off"),
    ]:
        with pytest.raises(UsageError, match=msg):
            ip.run_line_magic("chat", bad)


def test_config_traits_reach_the_session(ip) -> None:
    ip.run_line_magic("config", "ChatMagics.model = 'gpt-4.1-mini'")
    ip.run_line_magic("config", "ChatMagics.max_tokens = 77")
    assert (
        get_session().settings.model == "gpt-4.1-mini" and get_session().settings.max_tokens == 77
    )
    ip.run_line_magic("config", "ChatMagics.temperature = 9.0")  # refused, logged by %config
    assert get_session().settings.temperature is None


def test_help_is_real(ip) -> None:
    doc = ip.find_cell_magic("chat").__doc__
    assert "--dry-run" in doc and "--no-interpolate" in doc and "-o VAR" in doc


# Settings that are no ChatMagics trait, and why.
NOT_TRAITS = {
    "api_key": "a key is never written into config (%chat key, OPENAI_API_KEY)",
    "cache": "ChatSession(cache=...) and IPYCHAT_CACHE_DIR",
    "offline": "%chat offline on|off and IPYCHAT_OFFLINE",
    "key_origins": "%chat endpoint URL --send-key and IPYCHAT_KEY_ORIGINS",
}
# ChatMagics traits that are the view's own, not the session's.
VIEW_TRAITS = {"display_mode", "stream", "allow_remote_images"}


def test_every_setting_is_a_magics_trait_of_the_same_name_and_type(ip) -> None:
    """core.settings.Settings is the one source of configuration: `%config ChatMagics.X`
    reaches the session's X for every setting a config file may hold."""
    from dataclasses import fields

    from ipychat.core.settings import Settings
    from ipychat.notebook.magics import ChatMagics

    traits = set(ChatMagics.class_traits(config=True)) - VIEW_TRAITS
    defaults = Settings(max_retries=5, redact=True, temperature=0.5, azure_api_version="v1")
    assert traits == {f.name for f in fields(Settings)} - set(NOT_TRAITS)
    magics = ip.magics_manager.registry["ChatMagics"]
    for name in sorted(traits):
        value = getattr(defaults, name)
        if value is None:
            value = {"model": "gpt-4.1-mini", "system": "Be brief.", "base_url": "local"}.get(
                name, 7
            )
        setattr(magics, name, value)  # the trait takes a value of the setting's type
        assert getattr(get_session().settings, name) == value, name


def test_load_twice_is_harmless_and_unload_releases(ip, fake: FakeOpenAIServer) -> None:
    first = get_session()
    assert ip.find_cell_magic("chatmap") is not None
    ip.run_line_magic("load_ext", "ipychat")  # a second load changes nothing
    assert get_session() is first
    ip.run_line_magic("reload_ext", "ipychat")  # unload released the session; load made a new one
    assert get_session() is not first
    ip.run_line_magic("chat", f"endpoint {fake.base_url}")
    run(ip, "", "still works")
    second = get_session()
    ip.run_line_magic("unload_ext", "ipychat")
    assert not second.runner.running and not first.runner.running
    assert ip.find_cell_magic("chat") is None and ip.find_cell_magic("chatmap") is None
    ip.run_line_magic("load_ext", "ipychat")


def test_cache_subcommands(ip, fake: FakeOpenAIServer) -> None:
    run(ip, "--thread a", "cached question")
    run(ip, "--thread b", "cached question")
    with capture_output() as out:
        ip.run_line_magic("chat", "cache")
    assert " · 1 entry · " in out.stdout and "this session: 1 hit, 1 miss, saved $" in out.stdout
    with capture_output() as out:
        ip.run_line_magic("chat", "cache clear --model other-model")
    assert "removed 0 cached replies" in out.stdout
    with capture_output() as out:
        ip.run_line_magic("chat", "cache clear")
    assert "removed 1 cached reply" in out.stdout
    run(ip, "--thread c", "cached question")
    assert len(fake.chat_requests) == 2
    for bad in (
        "cache clear --older-than soon",
        "cache clear --older-than -1",
        "cache frob",
        "cache clear --model",
    ):
        with pytest.raises(UsageError):
            ip.run_line_magic("chat", bad)
    with pytest.raises(
        UsageError, match=r"unknown option --older-then \(did you mean --older-than"
    ):
        ip.run_line_magic("chat", "cache clear --older-then 3")


def test_offline_subcommand(ip, fake: FakeOpenAIServer) -> None:
    run(ip, "--thread a", "known")
    ip.run_line_magic("chat", "offline on")
    assert "cached" in shown(run(ip, "--thread b", "known"))
    with pytest.raises(UsageError, match="Offline mode"):
        run(ip, "--thread c", "unknown")
    ip.run_line_magic("chat", "offline off")
    assert len(fake.chat_requests) == 1


def test_panel_needs_a_notebook(ip) -> None:
    with pytest.raises(UsageError, match="needs a notebook front end"):
        ip.run_line_magic("chat", "panel")


def test_key_is_asked_for_and_never_shown(
    ip, fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-typed-" + "Q7" * 20
    monkeypatch.setattr("getpass.getpass", lambda prompt="": secret)
    with capture_output() as out:
        ip.run_line_magic("chat", "key")
        run_out = run(ip, "", "hi")
        ip.run_line_magic("chat", "")
    assert get_session().settings.api_key.reveal() == secret
    assert fake.chat_requests[-1].headers.get("authorization") == f"Bearer {secret}"
    for text in (out.stdout, shown(run_out), repr(get_session().settings), repr(get_session())):
        assert secret not in text
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "  ")
    with pytest.raises(UsageError, match="No key entered"):
        ip.run_line_magic("chat", "key")


def test_unknown_model_shows_approximate_counts_and_unknown_cost(
    ip, fake: FakeOpenAIServer
) -> None:
    text = shown(run(ip, "-m my-llama-3", "hello unknown"))
    assert "· unknown ·" in text  # the server counted the tokens; nobody knows the price
    out = shown(run(ip, "-m my-llama-3 --dry-run", "estimate me"))
    assert "cost unknown" in out and "≈" in out  # our count with a tokenizer that is not its own
    ip.run_line_magic("chat", "price my-llama-3 1 2")
    assert "$" in shown(run(ip, "-m my-llama-3 --dry-run", "estimate me"))
    ip.run_line_magic("chat", "budget 1")
    ip.run_line_magic("chat", "model other-unknown")
    with pytest.raises(UsageError, match="cost of this model is unknown"):
        run(ip, "", "refused under a budget")


def test_panel_is_displayed_and_replaced_in_a_notebook(ip, fake: FakeOpenAIServer) -> None:
    ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
    with capture_output() as out:
        ip.run_line_magic("chat", "panel")
    assert any("application/vnd.jupyter.widget-view+json" in o.data for o in out.outputs)
    first = ip.magics_manager.registry["ChatMagics"].commands.panel
    with capture_output():
        ip.run_line_magic("chat", "panel")
    assert ip.magics_manager.registry["ChatMagics"].commands.panel is not first
    run(ip, "", "seen by the panel")
    assert (
        "seen by the panel"
        in ip.magics_manager.registry["ChatMagics"].commands.panel.transcript_markdown()
    )


def test_streaming_footer_shows_the_estimate_live(ip, session: ChatSession) -> None:
    with FakeOpenAIServer(tokens_per_second=40) as slow:
        ip.run_line_magic("chat", f"endpoint {slow.base_url}")
        ip.run_line_magic("config", "ChatMagics.display_mode = 'notebook'")
        frames: list[str] = []
        with capture_output():
            publish = ip.display_pub.publish

            def seen(data, *args, **kwargs):  # every frame, also those cleared at the end
                frames.extend([data["text/markdown"]] if "text/markdown" in data else [])
                publish(data, *args, **kwargs)

            ip.display_pub.publish = seen
            result = ip.run_cell("%%chat\n" + "word " * 30).result
    live = [f for f in frames if "streaming" in f]
    assert live, "the footer showed the estimate while the reply streamed"
    assert "≤ $" in live[0] and "… tokens" in live[0]
    final = result._repr_mimebundle_()[0]["text/markdown"]  # the cell's result: the Reply
    assert "streaming" not in final and "thread main" in final


def test_alerts_are_shown_as_a_visible_line(ip, fake: FakeOpenAIServer) -> None:
    run(ip, "--max-tokens 1", "spend a little " * 100)
    spent = get_session().usage.spent
    ip.run_line_magic("chat", f"budget {spent / 0.85}")  # past 80% already
    text = shown(run(ip, "--max-tokens 1 --thread other", "hi"))  # fits the rest of it
    assert "⚠ ipychat:" in text and "budget" in text
    assert "⚠ ipychat:" not in shown(run(ip, "--max-tokens 1 --thread third", "hi"))  # once


# ----- issue 21.3: a map's bound, and the lever a refusal names ---------------------------------


def chatmap(ip, line: str, cell: str) -> str:
    with capture_output() as out:
        ip.run_cell_magic("chatmap", line, cell)
    return shown(out)


def labels_frame(n: int = 300) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review number {i} was quite good overall" for i in range(n)]})


LABEL = "One word sentiment label for: {text}"


def test_a_map_without_max_tokens_is_bounded_by_the_map_default(ip, fake: FakeOpenAIServer) -> None:
    # 300 one-word labels: bounded at 1,024 reply tokens a row, the map "might" cost $0.19
    # and a $0.01 budget refused it; at the map's own cap of 32 the bound is $0.0068.
    from ipychat.map.plan import MAP_MAX_TOKENS

    ip.user_ns["reviews"] = labels_frame()
    plan = chatmap(ip, "reviews -o label --dry-run", LABEL)
    assert (
        f"up to {300 * MAP_MAX_TOKENS:,} reply tokens ({MAP_MAX_TOKENS} per reply by default; "
        in plan
    )
    assert "--max-tokens N for longer)" in plan and "$0.0011–$0.0068" in plan
    ip.run_line_magic("chat", "budget 0.01")
    done = chatmap(ip, "reviews -o label", LABEL)
    assert "Done: 300 rows" in done and "(300 sent, 0 cached, 0 failed)" in done
    assert {r.body["max_tokens"] for r in fake.chat_requests} == {MAP_MAX_TOKENS}
    assert "_error" not in ip.user_ns["reviews"].columns
    # An explicit cap is the user's: the default applies to nothing else.
    ip.user_ns["few"] = labels_frame(3)
    chatmap(ip, "few -o label --max-tokens 500", LABEL)
    assert {r.body["max_tokens"] for r in fake.chat_requests[-3:]} == {500}


def test_a_map_over_the_budget_is_refused_with_the_max_tokens_that_fits(
    ip, fake: FakeOpenAIServer
) -> None:
    ip.run_line_magic("chat", "budget 0.005")
    ip.user_ns["reviews"] = labels_frame()
    with pytest.raises(UsageError) as info:
        chatmap(ip, "reviews -o label", LABEL)
    message = str(info.value)
    assert fake.chat_requests == [] and "\n" not in message
    assert message.startswith("Budget: spent $0.00 of $0.005; this map may cost up to $0.0068. ")
    fits = re.search(
        r"--max-tokens (\d+) fits, or raise the budget with %chat budget ([\d.]+)\.$", message
    )
    assert fits is not None, message
    n, budget = int(fits.group(1)), fits.group(2)
    # The figures are exact: one token more does not fit, the advice does, and so does the
    # suggested budget without --max-tokens.
    with pytest.raises(UsageError, match="Budget: spent"):
        chatmap(ip, f"reviews -o label --max-tokens {n + 1}", LABEL)
    assert "Done: 300 rows" in chatmap(ip, f"reviews -o label --max-tokens {n}", LABEL)
    ip.user_ns["again"] = labels_frame()
    ip.run_line_magic("chat", f"budget {budget}")
    ip.run_line_magic("chat", "cache clear")
    get_session().usage.rows.clear()  # the budget counts from zero again
    assert "Done: 300 rows" in chatmap(ip, "again -o label", LABEL)
    # --max-cost: the same lever, then the exact figure.
    with pytest.raises(
        UsageError,
        match=r"over --max-cost \$0.003: --max-tokens 11 fits, or "
        r"raise it to --max-cost 0\.0068\.$",
    ):
        chatmap(ip, "again -o label2 --max-cost 0.003 --no-cache", LABEL)
    # When no reply cap fits (the prompts alone cost more), fewer rows: --limit N.
    with pytest.raises(UsageError, match=r"over --max-cost \$0.0005: --limit (\d+) fits") as info:
        chatmap(ip, "again -o label2 --max-cost 0.0005 --no-cache", LABEL)
    rows = int(re.search(r"--limit (\d+)", str(info.value)).group(1))
    with pytest.raises(UsageError, match="over --max-cost"):
        chatmap(ip, f"again -o label2 --max-cost 0.0005 --no-cache --limit {rows + 1}", LABEL)
    assert f"Done: {rows} rows" in chatmap(
        ip, f"again -o label2 --max-cost 0.0005 --no-cache --limit {rows}", LABEL
    )


def test_a_reply_cut_at_the_map_default_keeps_its_text_and_says_so(ip) -> None:
    from ipychat.map.plan import MAP_MAX_TOKENS

    long = " ".join(f"word{i}" for i in range(400))
    with FakeOpenAIServer(reply=lambda body: "positive" if "short" in str(body) else long) as srv:
        ip.run_line_magic("chat", f"endpoint {srv.base_url}")
        ip.user_ns["df"] = pd.DataFrame({"text": ["short one", "ramble on", "short two"]})
        done = chatmap(ip, "df -o answer", "{text}")
        df = ip.user_ns["df"]
        assert df["answer"][0] == "positive" and df["answer"][1].startswith("word0 word1")
        assert df["_error"][1].startswith(
            f"cut: the reply reached the map's default cap of {MAP_MAX_TOKENS}"
        )
        assert pd.isna(df["_error"][0]) and pd.isna(df["_error"][2])
        assert "(3 sent, 0 cached, 0 failed)" in done  # text is kept: not a failure
        assert f"1 reply cut at the default cap of {MAP_MAX_TOKENS} tokens" in done
        # From the cache the note is the same.
        again = chatmap(ip, "df -o answer", "{text}")
        assert "(0 sent, 3 cached, 0 failed)" in again and "1 reply cut" in again
        assert ip.user_ns["df"]["_error"][1].startswith("cut:")
        # A cap the user chose cuts as asked, without a note.
        ip.user_ns["df2"] = pd.DataFrame({"text": ["ramble on"]})
        chatmap(ip, "df2 -o answer --max-tokens 5", "{text}")
        assert "_error" not in ip.user_ns["df2"].columns


# ----- issue 21.8: help, errors, numbers and plurals -----------------------------------------


def help_of(ip, cell: str) -> str:
    """What `%%chat?` (IPython's own help) prints."""
    with capture_output() as out:
        ip.run_cell(cell)
    return out.stdout


@pytest.mark.parametrize(
    ("asked", "usage", "groups", "example"),
    [
        (
            "%%chat?\n",
            "Usage: %%chat [OPTIONS]  (the prompt is the rest of the cell)",
            ("Request:", "Conversation:", "Output:", "Cache:", "Cost and safety:"),
            "  %%chat -m gpt-4o -t 0 --max-tokens 200 -o answer\n",
        ),
        (
            "%%chatmap?\n",
            "Usage: %%chatmap DF (-o COL [COL ...] | --schema NAME) [OPTIONS]",
            (
                "What to map:",
                "Typed answers:",
                "Request:",
                "Pace:",
                "Cache and cost:",
                "Batch API:",
            ),
            "  %%chatmap reviews -o sentiment --max-tokens 5\n",
        ),
        (
            "%chat?",
            "Usage: %chat [SUBCOMMAND ARGS]",
            ("Settings:", "Conversations:", "Spend and cache:", "Batch API:"),
            "  %chat usage --plot\n",
        ),
    ],
)
def test_help_shows_the_magic_as_typed_grouped_with_examples(
    ip, asked: str, usage: str, groups: tuple[str, ...], example: str
) -> None:
    text = help_of(ip, asked)
    assert usage in text and "Examples:" in text and example in text
    assert "chat_cell" not in text and "::" not in text and "<COL" not in text
    positions = [text.index(f"\n{group}\n") for group in groups]
    assert positions == sorted(positions)
    assert "options:" not in text  # every option is in a group


def test_help_flag_and_per_subcommand_help(ip, fake: FakeOpenAIServer) -> None:
    with capture_output() as out:
        ip.run_cell_magic("chat", "--help", "not sent")
        ip.run_line_magic("chat", "budget --help")
        ip.run_line_magic("chat", "--help")
    assert out.stdout.startswith("Usage: %%chat [OPTIONS]")
    assert "`%chat budget [USD|off]`: show or set the spend budget of this session" in out.stdout
    assert "Usage: %chat [SUBCOMMAND ARGS]" in out.stdout
    assert fake.chat_requests == []


@pytest.mark.parametrize(
    ("magic", "line", "message"),
    [
        ("chat", "usgae", r"^%chat usgae: unknown subcommand \(did you mean %chat usage\?\)\. "),
        ("chat", "bugdet 5", r"did you mean %chat budget\?"),
        ("chat", "usage --plto", r"^%chat usage: unknown option --plto \(did you mean --plot\?\)"),
        (
            "chatmap",
            "df -o out --concurency 4",
            r"unknown option --concurency \(did you mean "
            r"--concurrency\?\)\. %%chatmap\? lists the options\.$",
        ),
        ("chatmap", "df -o out --max-cots 1", r"did you mean --max-cost\?"),
    ],
)
def test_unknown_flags_and_subcommands_get_the_nearest_known_one(
    ip, fake: FakeOpenAIServer, magic: str, line: str, message: str
) -> None:
    ip.user_ns["df"] = pd.DataFrame({"text": ["a"]})
    with pytest.raises(UsageError, match=message):
        if magic == "chat":
            ip.run_line_magic(magic, line)
        else:
            ip.run_cell_magic(magic, line, "{text}")
    assert fake.chat_requests == []


# A join of two clauses with both their marks: "…Bearer ***).: set", "later.; try" ("sk-...9Zx9",
# OpenAI's masked key, is no join).
DOUBLED = re.compile(r"[.;:,]\s*[;:,]|[;:,]\s*\.")


def test_a_401_reads_as_one_sentence(ip, session: ChatSession) -> None:
    with FakeOpenAIServer(require_key="sk-right-" + "r" * 24) as guarded:
        ip.run_line_magic("chat", f"endpoint {guarded.base_url} --send-key")
        session.configure(max_retries=0)
        with pytest.raises(UsageError) as wrong:
            run(ip, "", "hi")
        session.configure(api_key=None)
        with pytest.raises(UsageError) as missing:
            run(ip, "", "hi")
    host = guarded.base_url.split("//")[1].removesuffix("/v1")
    assert str(missing.value) == (
        f"{host} wants an API key (HTTP 401): You didn't provide an API key. You need to "
        "provide your API key in an Authorization header using Bearer auth (i.e. "
        "Authorization: Bearer YOUR_KEY); set OPENAI_API_KEY or run %chat key"
    )
    assert str(wrong.value).startswith(f"{host} refused the API key (HTTP 401): Incorrect API")
    assert str(wrong.value).endswith("/account/api-keys; check OPENAI_API_KEY or run %chat key")
    for error in (wrong, missing):
        assert not DOUBLED.search(str(error.value).replace("://", "")), str(error.value)


def test_a_refused_connection_is_one_line_without_retry_chatter(
    ip, session: ChatSession, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
        ip.run_line_magic("chat", f"endpoint {url}")
        session.configure(max_retries=2)
        with caplog.at_level(logging.INFO, logger="ipychat"), pytest.raises(UsageError) as info:
            run(ip, "", "hi")
    assert str(info.value) == (
        f"The server at {url} is not reachable (connection refused, after 2 retries): check "
        "that it is running and the network, or set another URL with %chat endpoint URL"
    )
    retries = [r for r in caplog.records if r.getMessage().startswith("Retrying")]
    assert len(retries) == 2 and all(r.levelno < logging.WARNING for r in retries)


def test_money_and_counts_read_as_written(ip, fake: FakeOpenAIServer) -> None:
    with capture_output() as out:
        ip.run_line_magic("chat", "")
        ip.run_line_magic("chat", "budget 0.00005")
        ip.run_line_magic("chat", "price tiny-model 0.00001 0.5")
    assert "thread main (0 turns)" in out.stdout
    assert "spent $0.00 of $0.00005" in out.stdout
    assert "tiny-model: $0.00001 per 1M input tokens, $0.5 per 1M output tokens" in out.stdout
    with pytest.raises(UsageError) as info:
        run(ip, "", "refused under the budget")
    assert "Budget: spent $0.00 of $0.00005; this request may cost up to $0.0" in str(info.value)
    ip.run_line_magic("chat", "budget off")
    run(ip, "", "one turn")
    ip.user_ns["one"] = pd.DataFrame({"text": ["a"]})
    with capture_output() as out:
        ip.run_line_magic("chat", "")
        ip.run_line_magic("chat", "threads")
        ip.run_line_magic("chat", "thread main")
        ip.run_cell_magic("chatmap", "one -o out", "{text}")
    for text in ("thread main (1 turn) · spent", "* main (1 turn)", "thread: main (1 turn)"):
        assert text in out.stdout
    assert "1 row · 0 cached · 1 to send" in out.stdout and "Done: 1 row in " in out.stdout
    assert not re.search(r"\d(\.\d+)?e-\d", out.stdout)


def test_usage_plot_through_the_magic(ip, fake: FakeOpenAIServer, monkeypatch) -> None:
    with pytest.raises(UsageError, match="No requests yet in this session: nothing to plot"):
        ip.run_line_magic("chat", "usage --plot")
    ip.run_line_magic("chat", "budget 1")
    run(ip, "", "one")
    run(ip, "-m gpt-4o", "two")
    with capture_output() as out:
        ip.run_line_magic("chat", "usage --plot")
    (shown_plot,) = [o.data for o in out.outputs if "image/png" in o.data]
    assert shown_plot["image/png"][:8] == b"\x89PNG\r\n\x1a\n"
    assert shown_plot["text/plain"].startswith("<chart: spend and latency; spent $0.0")
    figure = get_session().usage.plot()  # the same chart from Python
    assert [t.get_text() for t in figure.axes[1].get_yticklabels()] == ["gpt-4o-mini", "gpt-4o"]
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed: import fails
    with pytest.raises(UsageError, match=r"^Charts need matplotlib, which is not installed: pip"):
        ip.run_line_magic("chat", "usage --plot")
    with pytest.raises(UsageError, match=r"%chat usage \[--plot\]"):
        ip.run_line_magic("chat", "usage plot")
