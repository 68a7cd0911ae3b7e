"""The CPU as /proc/cpuinfo lists it, and the OpenBLAS kernels FAISS is told to run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kb.ann import openblas_core
from kb.cpu import Cpu, cpu_info
from tests.conftest import CPUINFO

AVX512 = frozenset({"avx2", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def test_cpu_info_reads_the_first_processors_vendor_and_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor="GenuineIntel", extra=" amx_bf16"))
    cpu = cpu_info(cpuinfo)
    assert cpu.vendor == "GenuineIntel"
    assert {"avx512_bf16", "amx_bf16", "fpu"} <= cpu.flags
    assert "spectre_v1" not in cpu.flags  # the bugs line is not flags
    assert cpu_info(tmp_path / "missing") == Cpu("", frozenset())  # another system
    (tmp_path / "flagless").write_text("processor\t: 0\n")
    assert cpu_info(tmp_path / "flagless") == Cpu("", frozenset())


@pytest.mark.parametrize(
    ("cpu", "core"),
    [
        (Cpu("GenuineIntel", AVX512), "SKYLAKEX"),
        (Cpu("GenuineIntel", AVX512 | {"amx_bf16", "avx512_fp16"}), "SKYLAKEX"),
        (Cpu("GenuineIntel", AVX512 - {"avx512bw"}), None),  # Knights Landing's kind
        (Cpu("GenuineIntel", frozenset({"avx2", "fma"})), None),
        (Cpu("AuthenticAMD", AVX512), None),  # detected well: left to OpenBLAS
        (Cpu("", frozenset()), None),  # nothing known
    ],
)
def test_openblas_is_told_skylakex_kernels_only_on_intel_with_avx512(
    cpu: Cpu, core: str | None
) -> None:
    assert openblas_core(cpu) == core


PROBE = """
import ctypes, glob, json, os, sys
from kb import ann
faiss = ann._one_thread()
libs = os.path.join(os.path.dirname(os.path.dirname(faiss.__file__)), "faiss_cpu.libs")
found = glob.glob(os.path.join(libs, "libopenblas*.so*"))
name = None
if found:
    lib = ctypes.CDLL(found[0])  # the copy FAISS loaded: same path
    lib.openblas_get_corename.restype = ctypes.c_char_p
    name = lib.openblas_get_corename().decode()
print(json.dumps({"core": name, "left": os.environ.get("OPENBLAS_CORETYPE")}))
"""


def faiss_blas(env: dict[str, str]) -> dict[str, str | None]:
    """FAISS's OpenBLAS kernels in a new interpreter (this one may hold FAISS already)."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_faiss_runs_the_kernels_kb_names_and_nothing_else_sees_the_variable() -> None:
    """Its bundled OpenBLAS 0.3.15 ran Prescott's SSE3 kernels on an Emerald Rapids guest:
    the IVF lists' k-means at a fifth of the speed, `ready` 32 s at 100k."""
    core = openblas_core(cpu_info())
    if core is None:
        pytest.skip("OpenBLAS's own detection is kept on this CPU")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    probed = faiss_blas(env)
    if probed["core"] is None:
        pytest.skip("this FAISS build bundles no OpenBLAS")
    assert probed["core"].lower() == core.lower()
    assert probed["left"] is None  # set for the import alone
    # a caller's own choice stands
    assert faiss_blas({**env, "OPENBLAS_CORETYPE": "HASWELL"})["core"].lower() == "haswell"
