"""Row ranges of a dataset split, written `start:stop` in a recipe (either side may be empty)."""

from __future__ import annotations

import re

ROWS_RE = re.compile(r"^\s*(\d*)\s*:\s*(\d*)\s*$")


def parse_rows(rows: str | None) -> slice:
    """`"start:stop"` (either side may be empty) → slice; None → every row. ValueError on other text."""
    if rows is None:
        return slice(None)
    m = ROWS_RE.match(rows)
    if not m:
        raise ValueError("expected start:stop (e.g. 0:1000 or :500)")
    start, stop = (int(x) if x else None for x in m.groups())
    if start is not None and stop is not None and stop <= start:
        raise ValueError("an empty row range (stop ≤ start)")
    return slice(start, stop)
