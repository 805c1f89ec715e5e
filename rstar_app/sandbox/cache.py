"""The parent's prefix cache: snapshot bytes keyed by the hash of the steps that produced them.

The bytes are opaque here (pickles made inside a worker, restored only inside another worker);
next to them the cache keeps the program's stdout, so re-running an identical program needs no
worker at all, and the CPU time spent so far, so a cached prefix still counts against the
program's CPU budget.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Entry:
    blob: bytes     # the pickled namespace + library state (snapshot.dumps)
    stdout: str     # the program's output so far
    cpu: float      # CPU seconds the program has used so far

    @property
    def size(self) -> int:
        return len(self.blob) + 2 * len(self.stdout) + 200


class SnapshotCache:
    """LRU of prefix key -> snapshot, bounded in bytes. Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.lock = threading.Lock()

    def longest(self, keys: list[str]) -> tuple[int, Entry | None]:
        """(k, entry) for the longest cached prefix codes[:k], (0, None) when there is none."""
        with self.lock:
            for k in range(len(keys), 0, -1):
                entry = self.entries.get(keys[k - 1])
                if entry is not None:
                    self.entries.move_to_end(keys[k - 1])
                    return k, entry
        return 0, None

    def put(self, key: str, entry: Entry) -> None:
        if entry.size > self.max_bytes:
            return
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.bytes -= old.size
            self.entries[key] = entry
            self.bytes += entry.size
            while self.bytes > self.max_bytes:
                _, dropped = self.entries.popitem(last=False)
                self.bytes -= dropped.size

    def drop(self, key: str) -> None:
        with self.lock:
            old = self.entries.pop(key, None)
            if old is not None:
                self.bytes -= old.size


def prefix_keys(codes: Sequence[str]) -> list[str]:
    """keys[k-1] identifies codes[:k] (length-prefixed, so step boundaries matter)."""
    h = hashlib.sha256(b"rstar-sandbox-v1")
    keys = []
    for code in codes:
        data = code.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "big") + data)
        keys.append(h.copy().hexdigest())
    return keys
