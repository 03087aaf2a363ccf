"""JSONL and Parquet prompt files read into memory as a grain random-access data source.

Prompt sets for RL are small (tens of thousands of rows), so every file is parsed up front: that lets bad rows
be counted before training starts and lets the pipeline split by domain and filter by pass rate exactly.
Unusable rows are skipped and counted per reason (`LoadStats`); only a dataset with no usable row at all is
an error. Parquet needs pyarrow, imported only when a Parquet file is read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence

from ringjax.data.records import BadRow, LoadStats, PromptRecord, parse_row

BAD_JSON = "bad_json"


class RecordSource:
    """In-memory `grain.RandomAccessDataSource` of `PromptRecord`s."""

    def __init__(self, records: Sequence[PromptRecord]):
        self._records = tuple(records)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> PromptRecord:
        return self._records[index]

    def __repr__(self) -> str:
        return f"RecordSource(len={len(self._records)})"


def jsonl_rows(path: str | os.PathLike) -> Iterator[object]:
    """Decoded rows of a JSONL file; a line that is not valid UTF-8 JSON yields `BadRow`. Blank lines are ignored."""
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line.decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                yield BadRow(BAD_JSON)


def parquet_rows(path: str | os.PathLike, batch_rows: int = 4096) -> Iterator[object]:
    """Rows of a Parquet file as dicts (nulls as None), read in record batches."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f"reading Parquet prompt file {path} needs pyarrow (pip install pyarrow)") from e
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
        yield from batch.to_pylist()


def file_rows(path: str | os.PathLike) -> Iterator[object]:
    """Rows of one prompt file, chosen by extension (.jsonl or .parquet)."""
    name = os.fspath(path)
    if name.endswith(".jsonl"):
        return jsonl_rows(path)
    if name.endswith(".parquet"):
        return parquet_rows(path)
    raise ValueError(f"unsupported prompt file {name!r}: expected .jsonl or .parquet")


def parse_rows(rows: Iterable[object], default_domain: str, stats: LoadStats) -> list[PromptRecord]:
    """The usable rows as records; every row is counted in `stats`."""
    records = []
    for row in rows:
        try:
            if isinstance(row, BadRow):
                raise row
            records.append(parse_row(row, default_domain))
            stats.add(None)
        except BadRow as e:
            stats.add(e.reason)
    return records


def read_records(paths: str | os.PathLike | Sequence[str | os.PathLike],
                 default_domain: str = "math") -> tuple[RecordSource, LoadStats]:
    """Read and validate prompt files into one source; ValueError naming the files if no row is usable."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("no prompt files given")
    stats = LoadStats(files=[os.fspath(p) for p in paths])
    records = [r for p in paths for r in parse_rows(file_rows(p), default_domain, stats)]
    if not records:
        raise ValueError(f"no usable prompt rows in {stats.files}: read {stats.rows} rows, "
                         f"skipped {dict(stats.skipped)}")
    return RecordSource(records), stats
