"""Reading records from a data source, shared by `rl` (problems) and `train-rm` (pairs, ratings).

A source is a JSONL file (errors name file:line), a JSON file (an array of objects, an object of equal-length
columns, or JSON Lines), anything `datasets` reads (.csv/.tsv/.parquet/.arrow files, a `save_to_disk` directory),
or `hf:NAME` (a Hub dataset: the network or the local cache). Row selection takes a slice `start:stop` of the split.
Every failure is a DataError with one line naming the source and, where there is one, the line or row.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rshape.rows import parse_rows


class DataError(Exception):
    """A bad data source or record: the message names the file and line (or row)."""


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {exc.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg}: column {exc.colno})") from None


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        yield from _jsonl_records(path)  # names the line with the bad bytes
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        yield from _jsonl_records(path)  # a .json file holding JSON Lines
        return
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {k: len(v) for k, v in data.items()}
        if len(set(lengths.values())) > 1:
            raise DataError(f"{path}: columns have mismatched lengths: " + ", ".join(f"{k} {n}" for k, n in lengths.items()))
        n = next(iter(lengths.values()))
        for i in range(n):
            yield f"{path}: row {i + 1}", {k: v[i] for k, v in data.items()}
        return
    if isinstance(data, list):
        for i, row in enumerate(data):
            yield f"{path}: item {i + 1}", row
        return
    raise DataError(f"{path}: expected JSON Lines, an array of objects or an object of columns")


def _datasets_records(source: str, split: str, subset: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    try:
        if source.startswith("hf:"):
            ds = datasets.load_dataset(source[3:], subset, split=split)
            label, first = source, 0
        elif Path(source).is_dir():
            ds = datasets.load_from_disk(source)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{source}: no split {split!r}; available: {', '.join(ds)}")
                ds = ds[split]
            label, first = source, 0
        else:
            suffix = Path(source).suffix.lower()
            builder = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".arrow": "arrow"}.get(suffix)
            if builder is None:
                raise DataError(f"{source}: unknown data format {suffix!r}; use .jsonl, .json, .csv, .tsv, .parquet, "
                                ".arrow, a save_to_disk directory or hf:NAME")
            kwargs = {"delimiter": "\t"} if suffix == ".tsv" else {}
            ds = datasets.load_dataset(builder, data_files=source, split="train", **kwargs)
            label, first = source, (2 if builder == "csv" else 0)  # csv: line 1 is the header
    except DataError:
        raise
    except Exception as exc:  # datasets raises many kinds; keep it to one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = ("; offline (HF_HUB_OFFLINE=1) and not in the local cache: download it once online, or save it "
                "with save_to_disk and give the directory") if source.startswith("hf:") and _offline() else ""
        raise DataError(f"{source}: cannot read with `datasets`: {msg}{hint}") from None
    for i, row in enumerate(ds):
        yield (f"{label}:{first + i}" if first else f"{label}: row {i + 1}"), row


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or \
        os.environ.get("HF_DATASETS_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def read_records(source: str, split: str = "train", subset: str | None = None,
                 rows: str | None = None) -> Iterator[tuple[str, Any]]:
    """(where, record) for every record of `source` (see the module docstring), from `split` (Hub datasets and
    `save_to_disk` dataset dicts; a file is one split) and Hub configuration `subset`, rows `start:stop` only."""
    selected = parse_rows(rows)
    if not source.startswith("hf:"):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{source}: file not found")
        if path.is_file() and path.suffix.lower() == ".jsonl":
            records = _jsonl_records(path)
        elif path.is_file() and path.suffix.lower() == ".json":
            records = _json_records(path)
        else:
            records = _datasets_records(source, split, subset)
    else:
        records = _datasets_records(source, split, subset)
    start, stop = selected.start or 0, selected.stop
    for i, record in enumerate(records):
        if stop is not None and i >= stop:
            return
        if i >= start:
            yield record
