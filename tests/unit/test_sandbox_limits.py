"""SandboxLimits / ExecResult validation and the parent-side cache (pure, no processes)."""

import pytest

from rstar_app.sandbox import ExecResult, SandboxLimits
from rstar_app.sandbox.cache import Entry, SnapshotCache, prefix_keys


def test_defaults_are_the_documented_ones():
    lim = SandboxLimits()
    assert (lim.cpu_seconds, lim.wall_seconds, lim.memory_mb, lim.max_output) == (2, 5, 512, 4000)
    assert lim.max_processes == 0 and lim.max_file_bytes == 1 << 20


@pytest.mark.parametrize("changes", [
    {"cpu_seconds": 0}, {"cpu_seconds": -1}, {"wall_seconds": 0.01},
    {"cpu_seconds": 5, "wall_seconds": 2},          # wall must cover CPU
    {"memory_mb": 64}, {"memory_mb": 512.5}, {"memory_mb": True},
    {"max_output": 0}, {"max_open_files": 3}, {"max_processes": 5}, {"max_file_bytes": -1},
    {"recursion_limit": 10}, {"cache_mb": -1}, {"max_files": -2},
])
def test_invalid_limits_are_refused(changes):
    with pytest.raises(ValueError):
        SandboxLimits(**changes)


def test_limits_are_frozen_and_replace_validates():
    lim = SandboxLimits()
    with pytest.raises(Exception):
        lim.cpu_seconds = 9  # type: ignore[misc]
    assert lim.replace(cpu_seconds=1).cpu_seconds == 1
    with pytest.raises(ValueError):
        lim.replace(memory_mb=1)


def test_exec_result_kind_and_ok_must_agree():
    ExecResult(True, "x", None, "ok", 0.1)
    with pytest.raises(ValueError):
        ExecResult(True, "", "boom", "error", 0.1)
    with pytest.raises(ValueError):
        ExecResult(False, "", "?", "weird", 0.1)
    assert ExecResult(False, "", "t", "timeout", 1.0).cached is False


def test_prefix_keys_respect_step_boundaries():
    a = prefix_keys(["x=1\n", "y=2\n"])
    assert len(a) == 2 and a[0] == prefix_keys(["x=1\n"])[0]
    assert prefix_keys(["x=1\ny=2\n"])[0] != a[1]          # same text, different steps
    assert prefix_keys(["ab", "c"])[1] != prefix_keys(["a", "bc"])[1]
    assert prefix_keys(["\ud800"])  # lone surrogates do not crash hashing


def test_snapshot_cache_lru_and_byte_bound():
    cache = SnapshotCache(max_bytes=3000)
    keys = prefix_keys(["a", "b", "c", "d"])
    for k in keys[:3]:
        cache.put(k, Entry(b"x" * 700, "", 0.0))
    assert cache.longest(keys) == (3, cache.entries[keys[2]])
    cache.longest(keys[:1])                     # touch the first: the second is now oldest
    cache.put(keys[3], Entry(b"y" * 700, "", 0.0))
    assert keys[1] not in cache.entries and keys[0] in cache.entries
    assert cache.bytes <= cache.max_bytes
    cache.put("huge", Entry(b"z" * 5000, "", 0.0))   # larger than the whole cache: ignored
    assert "huge" not in cache.entries
    cache.drop(keys[0])
    assert cache.longest(keys[:1]) == (0, None)
