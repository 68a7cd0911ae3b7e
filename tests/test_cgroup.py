"""A cgroup CPU quota caps the cores kb sizes its threads, lanes and workers for."""

from __future__ import annotations

import os
from pathlib import Path

from kb import cgroup
from kb.config import cpu_count


def write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def test_a_v2_quota_of_its_own_or_a_parents_cgroup_caps_the_cpus(tmp_path: Path) -> None:
    membership = "0::/system.slice/kb.service\n"
    write(tmp_path, "system.slice/kb.service/cpu.max", "max 100000\n")
    assert cgroup.cpu_limit(membership, tmp_path) is None
    write(tmp_path, "system.slice/cpu.max", "250000 100000\n")  # 2.5 CPUs: 3 cores busy
    assert cgroup.cpu_limit(membership, tmp_path) == 3
    write(tmp_path, "system.slice/kb.service/cpu.max", "50000 100000\n")
    assert cgroup.cpu_limit(membership, tmp_path) == 1


def test_a_container_sees_its_quota_at_the_root(tmp_path: Path) -> None:
    """docker --cpus 2: with a cgroup namespace the path is "/", without one it names a
    folder the container cannot see; either way the quota is in the root's cpu.max."""
    write(tmp_path, "cpu.max", "200000 100000\n")
    assert cgroup.cpu_limit("0::/\n", tmp_path) == 2
    assert cgroup.cpu_limit("0::/docker/0123abcd\n", tmp_path) == 2


def test_a_v1_cfs_quota_counts_and_minus_one_is_none(tmp_path: Path) -> None:
    membership = "4:memory:/x\n3:cpu,cpuacct:/kb\n0::/\n"
    write(tmp_path, "cpu,cpuacct/kb/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "cpu,cpuacct/kb/cpu.cfs_period_us", "100000\n")
    assert cgroup.cpu_limit(membership, tmp_path) is None
    write(tmp_path, "cpu,cpuacct/kb/cpu.cfs_quota_us", "400000\n")
    assert cgroup.cpu_limit(membership, tmp_path) == 4


def test_unreadable_files_mean_no_quota(tmp_path: Path) -> None:
    write(tmp_path, "cpu.max", "not numbers\n")
    assert cgroup.cpu_limit("0::/\n", tmp_path) is None
    assert cgroup.cpu_limit("garbage", tmp_path) is None
    assert cgroup.cpu_limit("", tmp_path) is None


def test_cpu_count_is_the_affinity_capped_by_the_quota(monkeypatch) -> None:
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr("kb.config.own_cpu_limit", lambda: None)
    assert cpu_count() == cores
    monkeypatch.setattr("kb.config.own_cpu_limit", lambda: 1)
    assert cpu_count() == 1
    monkeypatch.setattr("kb.config.own_cpu_limit", lambda: cores + 8)
    assert cpu_count() == cores
