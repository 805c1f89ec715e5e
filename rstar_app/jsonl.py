"""Append-only JSONL that survives SIGKILL: one row per line, flushed and fsynced per row; on
reopen a torn last line (the row in flight when the process died) is cut off, never merged."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO


def read_rows(path: str | Path, *, repair: bool = True) -> list[dict]:
    """All complete rows; with repair, truncate the file after its last complete line."""
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    end = data.rfind(b"\n") + 1  # bytes after the last newline belong to a torn row
    rows = []
    for line in data[:end].splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if repair and end < len(data):
        with open(p, "r+b") as f:
            f.truncate(end)
    return rows


def append_row(f: IO[str], row: dict) -> None:
    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())
