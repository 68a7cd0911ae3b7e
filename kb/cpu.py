"""What the CPU is, as Linux lists it in /proc/cpuinfo: its vendor and feature flags.

Code paths are picked by them where a library's own choice is wrong: KB_BACKEND=auto wants
AMX for bfloat16 (kb.encoders.openvino_session.bf16_pays), and FAISS's bundled OpenBLAS is
told its kernels on Intel CPUs with AVX-512 (kb.ann.openblas_core).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class Cpu:
    vendor: str  # GenuineIntel, AuthenticAMD, ...; "" where unknown
    flags: frozenset[str]


def cpu_info(cpuinfo: Path = CPUINFO) -> Cpu:
    """The first processor's vendor and flags; nothing known where there is no such file
    (another system): callers then keep their defaults."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return Cpu("", frozenset())
    vendor, flags = "", None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
        if vendor and flags is not None:
            break
    return Cpu(vendor, flags or frozenset())
