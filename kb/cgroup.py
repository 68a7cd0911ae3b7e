"""The CPU quota a cgroup puts on this process: a container limited to 2 CPUs on a 64-core
host must size its threads for 2, which the affinity mask does not say."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path, PurePosixPath

ROOT = Path("/sys/fs/cgroup")
MEMBERSHIP = Path("/proc/self/cgroup")


@cache
def own_cpu_limit() -> int | None:
    """cpu_limit for this process, read once."""
    try:
        membership = MEMBERSHIP.read_text()
    except OSError:
        return None
    return cpu_limit(membership, ROOT)


def cpu_limit(membership: str, root: Path) -> int | None:
    """CPUs the tightest quota over the cgroups in `membership` (the text of
    /proc/self/cgroup) allows, rounded up; None when none is set or none can be read. Its
    own cgroup's and every parent's count (cgroup v2's cpu.max, v1's cfs quota); under a
    cgroup namespace the path is "/" and the quota sits at the root."""
    limits: list[int] = []
    for line in membership.splitlines():
        _, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if controllers == "":  # v2: one unified hierarchy
            limits += filter(None, map(_v2_limit, _folders(root, path)))
        elif "cpu" in controllers.split(","):
            for base in dict.fromkeys((root / controllers, root / "cpu")):
                limits += filter(None, map(_v1_limit, _folders(base, path)))
    return min(limits, default=None)


def _folders(base: Path, path: str) -> list[Path]:
    """The cgroup's folder under base and its parents' (a container that sees its own
    cgroup at the root has none of the deeper ones)."""
    parts = PurePosixPath(path).parts[1:]
    return [base.joinpath(*parts[:end]) for end in range(len(parts), -1, -1)]


def _v2_limit(folder: Path) -> int | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
        return _cpus(int(quota), int(period))
    except (OSError, ValueError):  # absent, or "max": no quota
        return None


def _v1_limit(folder: Path) -> int | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        return _cpus(quota, int((folder / "cpu.cfs_period_us").read_text()))
    except (OSError, ValueError):
        return None


def _cpus(quota: int, period: int) -> int | None:
    return math.ceil(quota / period) if quota > 0 and period > 0 else None
