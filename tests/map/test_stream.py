"""session.map over Parquet bigger than memory (ipychat.map.stream): batches in, Parquet
parts out, resumed after a stop; against a real loopback FakeOpenAIServer."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ipychat.core.errors import ConfigError
from ipychat.engine.cache import ResponseCache
from ipychat.map.job import MapAborted
from ipychat.map.stream import StreamResult
from ipychat.session import ChatSession, Settings
from ipychat.testing import FakeOpenAIServer, Fault

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

ROWS = 2_500  # in 3 files of uneven size; batches of 400 rows cross the files' edges


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    names = [f"item {i}" for i in range(ROWS)]
    for k, (start, stop) in enumerate([(0, 700), (700, 1900), (1900, ROWS)]):
        table = pa.table({"name": names[start:stop], "n": list(range(start, stop))})
        pq.write_table(table, folder / f"part{k}.parquet", row_group_size=250)
    return folder


def new_session(fake: FakeOpenAIServer, tmp_path: Path) -> ChatSession:
    return ChatSession(
        Settings(base_url=fake.base_url, model="gpt-4o-mini"),
        cache=ResponseCache(tmp_path / "cache"),
    )


def read(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def test_a_glob_of_parquet_files_is_mapped_into_parts(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    with FakeOpenAIServer() as fake:
        session = new_session(fake, tmp_path)
        try:
            result = session.map(
                str(data / "*.parquet"), "Describe {name}", "d", to=out, batch_rows=400
            )
        finally:
            session.close()
    assert isinstance(result, StreamResult)
    assert (result.rows, result.parts, result.sent, result.resumed) == (ROWS, 7, ROWS, 0)
    assert sorted(p.name for p in out.glob("part-*")) == [f"part-{k:05d}.parquet" for k in range(7)]
    assert [len(read(p)) for p in sorted(out.glob("part-*"))] == [400] * 6 + [100]
    frame = read(out)
    assert frame["n"].tolist() == list(range(ROWS))  # in order, batches across files
    assert frame["d"].tolist() == [f"Echo: Describe item {i}" for i in range(ROWS)]
    assert frame["_error"].isna().all() and str(frame.dtypes["_error"]) == "string"
    assert len(fake.chat_requests) == ROWS
    assert result.line().startswith(f"Done: {ROWS:,} rows in ")


def test_a_stopped_run_resumes_from_its_parts_and_the_cache(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    answered = itertools.count()

    def reply(body: dict[str, Any]) -> Any:  # the key is revoked after 1,000 answers
        if next(answered) >= 1_000:
            return Fault.status(401, message="Incorrect API key provided.")
        return "Echo: " + body["messages"][-1]["content"]

    with FakeOpenAIServer(reply=reply) as fake:
        session = new_session(fake, tmp_path)
        try:
            with pytest.raises(MapAborted, match="re-run to finish"):
                session.map(str(data / "*.parquet"), "Describe {name}", "d", to=out, batch_rows=400)
            parts = sorted(p.name for p in out.glob("part-*"))
            first = [r for r in fake.chat_requests if r.status == 200]
            answered = itertools.count(-(10**9))  # the key works again
            result = session.map(
                str(data / "*.parquet"), "Describe {name}", "d", to=out, batch_rows=400
            )
        finally:
            session.close()
    assert parts == ["part-00000.parquet", "part-00001.parquet"]  # 800 rows written
    assert len(first) == 1_000  # 200 more answered in batch 3: cached, not written
    assert result.resumed == 2 and result.parts == 7
    assert result.cached == 200 and result.sent == ROWS - 1_000
    ok = [r for r in fake.chat_requests if r.status == 200]
    assert len(ok) == ROWS  # no row answered twice
    assert len({r.body["messages"][-1]["content"] for r in ok}) == ROWS
    assert read(out)["d"].tolist() == [f"Echo: Describe item {i}" for i in range(ROWS)]


def test_a_polars_lazyframe_streams_the_same(data: Path, tmp_path: Path) -> None:
    pl = pytest.importorskip("polars")
    with FakeOpenAIServer() as fake:
        session = new_session(fake, tmp_path)
        try:
            lazy = pl.scan_parquet(data / "*.parquet").filter(pl.col("n") % 2 == 0)
            result = session.map(lazy, "Describe {name}", "d", to=tmp_path / "o", batch_rows=300)
        finally:
            session.close()
    frame = read(tmp_path / "o")
    assert result.rows == ROWS // 2 and result.parts == 5
    assert frame["n"].tolist() == list(range(0, ROWS, 2))
    assert frame["d"].tolist() == [f"Echo: Describe item {i}" for i in range(0, ROWS, 2)]


def test_the_dry_run_plans_the_first_batch(data: Path, tmp_path: Path) -> None:
    with FakeOpenAIServer() as fake:
        session = new_session(fake, tmp_path)
        try:
            plan = session.map(
                str(data / "*.parquet"), "Describe {name}", "d", dry_run=True, batch_rows=400
            )
        finally:
            session.close()
    assert fake.chat_requests == []
    assert plan.rows == 400 and "planned the first batch of 400 rows only" in plan.line()


def test_what_cannot_be_streamed_is_refused_in_one_line(data: Path, tmp_path: Path) -> None:
    source = str(data / "*.parquet")
    with FakeOpenAIServer() as fake:
        session = new_session(fake, tmp_path)
        try:
            with pytest.raises(ConfigError, match=r"give to='out\.parquet'"):
                session.map(source, "Describe {name}", "d")
            with pytest.raises(ConfigError, match="No Parquet file at"):
                session.map(
                    str(tmp_path / "nothing.parquet"), "Describe {name}", "d", to=tmp_path / "o"
                )
            with pytest.raises(ConfigError, match="to= goes with a Parquet source"):
                session.map(
                    pd.DataFrame({"name": ["a"]}), "Describe {name}", "d", to=tmp_path / "o"
                )
            (tmp_path / "file").write_text("x")
            with pytest.raises(ConfigError, match="is a file"):
                session.map(source, "Describe {name}", "d", to=tmp_path / "file")
            session.map(source, "Describe {name}", "d", to=tmp_path / "o", batch_rows=1_000)
            with pytest.raises(ConfigError, match="holds other files than this map's parts"):
                session.map(source, "Summarise {name}", "d", to=tmp_path / "o", batch_rows=1_000)
        finally:
            session.close()
    assert len(fake.chat_requests) == ROWS  # only the one good map sent anything


def test_only_a_parquet_path_is_taken_for_a_streamed_source(tmp_path: Path) -> None:
    from ipychat.map.stream import is_stream_source

    # recall: what names Parquet (a file, a glob, a directory of parts)
    for source in ("data.parquet", "data/*.PARQUET", Path("out.parquet/"), str(tmp_path)):
        assert is_stream_source(source), source
    # precision: a str that is not a Parquet path is left to the frame's own error
    for source in ("x,y\n1,2", "reviews.csv", "sentiment", "", Path("notes.txt")):
        assert not is_stream_source(source), source
