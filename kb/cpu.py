"""What the CPU is, as Linux lists it in /proc/cpuinfo: its vendor and feature flags.

Code paths are picked by them where a library's own choice is wrong: KB_BACKEND=auto wants
AMX for bfloat16 (kb.encoders.openvino_session.bf16_pays), and FAISS's bundled OpenBLAS is
told its kernels on Intel CPUs with AVX-512 (`openblas_core`, used by kb.ann).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# SkylakeX's kernels need these (AVX-512 foundation, conflict detection, byte/word,
# doubleword/quadword and vector-length extensions)
SKYLAKEX_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


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


def openblas_core(cpu: Cpu) -> str | None:
    """The OpenBLAS kernels to name (OPENBLAS_CORETYPE) for this CPU: SkylakeX's on an Intel
    CPU with AVX-512, else None (OpenBLAS's own detection). FAISS's wheel bundles OpenBLAS
    0.3.15, which takes Intel models newer than it for a Prescott and runs SSE3 kernels: on
    an Emerald Rapids guest (family 6, model 207) its k-means for the IVF lists ran at 23
    GFLOPS, at 108 with SkylakeX's (2026-12-07, `faiss.knn` of 20,000 rows against 1,265).
    AMD CPUs are left to it (on the AMD machines of 2026-12 `ready` at 100k, which waits
    for the index, took 11 s, against 32-37 s on two Intel guests)."""
    if cpu.vendor == "GenuineIntel" and cpu.flags >= SKYLAKEX_FLAGS:
        return "SKYLAKEX"
    return None
