"""A map over Parquet bigger than memory: batches of rows in, Parquet parts out.

```
map_to_parquet(host, source, template, output, to="out.parquet", batch_rows=10_000)
  ├── source                   a path or glob of Parquet files, a pyarrow.dataset.Dataset,
  │                            or a polars.LazyFrame: read `batch_rows` rows at a time
  ├── to/_ipychat.json         what map the parts belong to (template, outputs, options,
  │                            source, batch size): another map's parts are never mixed in
  └── for each batch k         ipychat.map.job.run on it (the same plan, cache, pacing,
        │                      retries and `_error` as any map), then its rows written to
        └── to/part-0000k.parquet   (a temporary file renamed when whole)
```

Memory holds one batch (and the reader's buffers), whatever the size of the source. Batch
k is always rows [k × batch_rows, (k+1) × batch_rows) of the source, so a run that stops
(Ctrl-C, a crash, a global failure) resumes where it stopped: the parts already written
are kept and their rows not read again (a LazyFrame, sliced) or read and passed over (a
dataset), and the rows of the unfinished batch that were answered come from the cache.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ipychat.core.errors import ConfigError
from ipychat.map.options import MapOptions

if TYPE_CHECKING:
    from ipychat.map.host import Host
    from ipychat.map.plan import MapPlan

__all__ = ["DEFAULT_BATCH_ROWS", "StreamResult", "is_stream_source", "map_to_parquet"]

DEFAULT_BATCH_ROWS = 10_000
MANIFEST = "_ipychat.json"


def is_stream_source(source: Any) -> bool:
    """A Parquet path (a str or PathLike naming a `.parquet` file or glob, or a directory),
    a pyarrow dataset or a polars LazyFrame. Any other str is not taken for a path: a CSV
    text or a typo gets the frame's own "not a DataFrame" line, not a Parquet error."""
    kind = type(source)
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if not isinstance(text, str) or "\n" in text:
            return False
        return text.rstrip("/\\").lower().endswith(".parquet") or os.path.isdir(text)
    module = kind.__module__.split(".")[0]
    if module == "polars" and kind.__name__ == "LazyFrame":
        return True
    return module == "pyarrow" and any(c.__name__ == "Dataset" for c in kind.__mro__)


@dataclass(frozen=True)
class StreamResult:
    """How a streamed map went; `line()` is what a notebook prints."""

    path: Path
    rows: int  # in the source
    parts: int
    resumed: int  # parts found written by an earlier run, kept
    sent: int
    cached: int
    failed: int
    elapsed: float

    def line(self) -> str:
        kept = f", {self.resumed:,} kept from an earlier run" if self.resumed else ""
        return (
            f"Done: {self.rows:,} rows in {self.elapsed:.1f} s ({self.sent:,} sent, "
            f"{self.cached:,} cached, {self.failed:,} failed) · {self.parts:,} Parquet "
            f"parts{kept} in {self.path}"
        )

    def __str__(self) -> str:
        return self.line()


# ----- reading ---------------------------------------------------------------------------------


class _Source:
    """The rows of a source, batch by batch, as pandas DataFrames."""

    def __init__(self, source: Any, batch_rows: int) -> None:
        self.batch_rows = batch_rows
        self.lazy = None
        self.dataset = None
        if type(source).__name__ == "LazyFrame":
            self.lazy = source
            self.description = "a polars LazyFrame"
        elif isinstance(source, (str, os.PathLike)):
            files = sorted(glob.glob(os.fspath(source))) or [os.fspath(source)]
            missing = [f for f in files if not os.path.exists(f)]
            if missing:
                raise ConfigError(f"No Parquet file at {missing[0]}: give a path or a glob.")
            import pyarrow.dataset as ds

            self.dataset = ds.dataset(files, format="parquet")
            self.description = ", ".join(files)
        else:
            self.dataset = source
            self.description = "a pyarrow dataset"

    def count(self) -> int:
        if self.lazy is not None:
            import polars as pl

            return int(self.lazy.select(pl.len()).collect().item())
        assert self.dataset is not None
        return int(self.dataset.count_rows())

    def batches(self, skip: int) -> Iterator[Any]:
        """Batches `skip`, `skip + 1`, … as pandas DataFrames."""
        if self.lazy is not None:
            start = skip * self.batch_rows
            while True:
                frame = self.lazy.slice(start, self.batch_rows).collect()
                if frame.height == 0:
                    return
                yield frame.to_pandas()
                start += self.batch_rows
        yield from self._dataset_batches(skip)

    def _dataset_batches(self, skip: int) -> Iterator[Any]:
        import pyarrow as pa

        assert self.dataset is not None
        pending: list[Any] = []
        held, index = 0, 0
        for batch in self.dataset.to_batches(
            batch_size=self.batch_rows, batch_readahead=1, fragment_readahead=1
        ):
            pending.append(batch)
            held += batch.num_rows
            while held >= self.batch_rows:
                table = pa.Table.from_batches(pending)
                chunk, rest = table.slice(0, self.batch_rows), table.slice(self.batch_rows)
                pending, held = rest.to_batches(), rest.num_rows
                if index >= skip:
                    yield chunk.to_pandas()
                index += 1
        if held and index >= skip:
            yield pa.Table.from_batches(pending).to_pandas()


# ----- writing ---------------------------------------------------------------------------------


def _part(directory: Path, index: int) -> Path:
    return directory / f"part-{index:05d}.parquet"


def _fingerprint(source: _Source, template: str, options: MapOptions, model: str) -> str:
    chosen = {k: v for k, v in options.as_dict().items() if k not in ("pace", "name")}
    what = {
        "template": template,
        "outputs": options.outputs,
        "model": model,
        "options": chosen,
        "source": source.description,
        "batch_rows": source.batch_rows,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()


def _open_target(to: str | os.PathLike[str], fingerprint: str) -> tuple[Path, int]:
    """The parts directory, made or checked, and how many parts an earlier run wrote."""
    directory = Path(to)
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is a file: to= names a directory for the Parquet parts.")
    manifest = directory / MANIFEST
    if directory.exists() and any(directory.iterdir()):
        try:
            found = json.loads(manifest.read_text(encoding="utf-8")).get("map")
        except (OSError, ValueError):
            found = None
        if found != fingerprint:
            raise ConfigError(
                f"{directory} holds other files than this map's parts (another template, "
                "options, source or batch size): pick another to= or delete it."
            )
    directory.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({"map": fingerprint}), encoding="utf-8")
    written = 0
    while _part(directory, written).exists():
        written += 1
    return directory, written


def _write(frame: Any, path: Path, dtypes: Sequence[tuple[str, str]]) -> None:
    """One part, whole or not at all (written aside, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, dtype in dtypes:
        if name not in frame:
            frame[name] = None
        frame[name] = frame[name].astype(dtype)
    temporary = path.with_suffix(".tmp")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), temporary)
    os.replace(temporary, path)


# ----- the map ---------------------------------------------------------------------------------


def _check(source: Any, to: Any, dry_run: bool, batch_rows: int, options: dict[str, Any]) -> None:
    """What `map_to_parquet` refuses before reading anything, each in one line."""
    if not is_stream_source(source):
        raise ConfigError(
            f"to= goes with a Parquet source (a path or glob, a pyarrow dataset, a polars "
            f"LazyFrame), not a {type(source).__name__}: map the frame, then write it with "
            "to_parquet."
        )
    if to is None and not dry_run:
        raise ConfigError(
            "A Parquet source is mapped batch by batch into Parquet parts: give "
            "to='out.parquet' (a directory)."
        )
    if type(batch_rows) is not int or batch_rows < 1:
        raise ConfigError(f"batch_rows must be a positive whole number, not {batch_rows!r}.")
    if options.get("limit") is not None or options.get("inplace"):
        raise ConfigError("limit and inplace go with DataFrames, not with a Parquet source.")


def map_to_parquet(
    host: Host,
    source: Any,
    template: str,
    output: str | Sequence[str] = "col",
    *,
    to: str | os.PathLike[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    dry_run: bool = False,
    **options: Any,
) -> StreamResult | MapPlan:
    """`session.map(source, template, output, to=...)`: see the module docstring. The dry
    run plans the first batch and says so."""
    from ipychat.map.job import plan, run

    _check(source, to, dry_run, batch_rows, options)
    opts = MapOptions.of(output, **options)
    reader = _Source(source, batch_rows)
    if dry_run:
        first = next(reader.batches(0), None)
        if first is None:
            raise ConfigError(f"{reader.description} has no rows.")
        sample = plan(host, first, template, output, **options)
        return replace(sample, note=f"planned the first batch of {len(first):,} rows only")
    fingerprint = _fingerprint(reader, template, opts, opts.model or host.engine.model)
    directory, resumed = _open_target(to or "", fingerprint)
    text = "object" if opts.json else "string"
    dtypes = [(name, text) for name in opts.outputs] + [(opts.error_column, "string")]
    started = time.monotonic()
    sent = cached = failed = 0
    index = resumed
    for batch in reader.batches(resumed):
        result = run(host, batch, template, output, **options)
        _write(result.frame, _part(directory, index), dtypes)
        sent, cached = sent + result.summary.sent, cached + result.summary.cached
        failed += result.summary.failed
        index += 1
    return StreamResult(
        path=directory,
        rows=reader.count(),
        parts=index,
        resumed=resumed,
        sent=sent,
        cached=cached,
        failed=failed,
        elapsed=time.monotonic() - started,
    )
