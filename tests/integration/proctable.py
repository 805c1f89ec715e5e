"""Process table from /proc (no psutil needed), shared by the sandbox integration tests."""

import os
from pathlib import Path


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, state)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            table[int(d)] = (int(fields[1]), fields[0])
    return table
