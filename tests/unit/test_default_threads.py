"""How many threads llama.cpp gets by default: the CPUs this process may use, under a container's
or a slice's CPU quota (cgroup v2 or v1), at most 8."""

from __future__ import annotations

import os

from rstar_app.models import llama_cpp as L


def _cgroup_fs(tmp_path, self_cgroup: str, files: dict[str, str]):
    """A fake /sys/fs/cgroup tree and /proc/self/cgroup; returns (root, self_cgroup file)."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    root.mkdir(exist_ok=True)
    me = tmp_path / "self_cgroup"
    me.write_text(self_cgroup)
    return str(root), str(me)


def test_a_v2_quota_at_the_mount_root_caps_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    for text, want in [("200000 100000\n", 2),   # 2 CPUs' worth of time on a 64-core host
                       ("150000 100000\n", 2),   # 1.5 CPUs: round up
                       ("50000 100000\n", 1),    # half a CPU: still one thread
                       ("max 100000\n", 8)]:     # no quota: the affinity mask, at most 8
        root, me = _cgroup_fs(tmp_path, "0::/\n", {"cpu.max": text})
        assert L.default_threads(root, me) == want, text


def test_a_v2_quota_of_a_nested_slice_or_its_parent_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    root, me = _cgroup_fs(tmp_path, "0::/app.slice/web.service\n", {
        "cpu.max": "max 100000\n",
        "app.slice/cpu.max": "300000 100000\n",              # the parent slice: 3 CPUs
        "app.slice/web.service/cpu.max": "max 100000\n",     # the service itself: no quota
    })
    assert L.cgroup_cpu_quota(root, me) == 3.0
    assert L.default_threads(root, me) == 3


def test_a_v1_cfs_quota_caps_the_threads(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    me_text = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/\n"
    root, me = _cgroup_fs(tmp_path, me_text, {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "400000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
    })
    assert L.default_threads(root, me) == 4


def test_no_quota_or_no_cgroup_files_leave_the_affinity_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    root, me = _cgroup_fs(tmp_path, "3:cpu,cpuacct:/\n0::/\n", {
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"})
    assert L.cgroup_cpu_quota(root, me) is None
    assert L.default_threads(root, me) == 3
    absent = str(tmp_path / "absent")
    assert L.default_threads(absent, absent) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert L.default_threads(absent, absent) == 8


def test_a_damaged_cgroup_file_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    root, me = _cgroup_fs(tmp_path, "garbage line\n0::/../../etc\n", {"cpu.max": "lots 0\n"})
    assert L.default_threads(root, me) == 6
