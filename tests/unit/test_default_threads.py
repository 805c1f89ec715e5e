"""How many threads llama.cpp gets by default: the CPUs this process may use, under a container's
CPU quota, at most 8."""

from __future__ import annotations

import os

from rstar_app.models import llama_cpp as L


def test_a_cgroup_quota_caps_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")       # 2 CPUs' worth of time on a 64-core host
    assert L.default_threads(str(cpu_max)) == 2
    cpu_max.write_text("150000 100000\n")       # 1.5 CPUs: round up
    assert L.default_threads(str(cpu_max)) == 2
    cpu_max.write_text("max 100000\n")          # no quota: the affinity mask, at most 8
    assert L.default_threads(str(cpu_max)) == 8
    assert L.default_threads(str(tmp_path / "absent")) == 8


def test_the_affinity_mask_counts_not_the_host(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    assert L.default_threads(str(tmp_path / "absent")) == 3
