"""The exported model run by OpenVINO in bfloat16 (`KB_BACKEND=openvino-bf16`).

On a CPU with bf16 units (Intel AMX, AVX512-BF16) OpenVINO runs the fp32 export's matrix
products in bfloat16, with vectors about 1e-3 from fp32's (cosine above 0.999; int8's are
further off). With AMX that is about 3x the speed of ONNX Runtime's fp32 on batches (README,
The encoder); with AVX512-BF16 alone it was slower than fp32, so KB_BACKEND=auto picks it
only where the CPU has AMX (`bf16_pays`). The session here looks
like ONNX Runtime's to OnnxEmbedder (`get_inputs`, `run`), so tokenizing, batching, lanes and
the encoder process are the same code for every backend.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kb.cpu import cpu_info
from kb.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

log = logging.getLogger(__name__)

PRECISION = "bf16"
BF16 = "BF16"  # bfloat16 units, among OpenVINO's CPU capabilities
AMX = "amx_bf16"  # AMX's bfloat16 tiles, among the CPU flags Linux lists


@dataclass(frozen=True)
class _Input:
    name: str


class OpenVinoSession:
    """One compiled model whose runs go side by side on `streams` streams of `threads`
    threads each. Each calling thread has its own infer request (a request runs one call at
    a time); the outputs are copied out of it, so a caller's rows outlive its next run."""

    def __init__(self, model_file: Path, *, threads: int, streams: int = 1) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise ConfigError(
                "KB_BACKEND=openvino-bf16 needs the 'openvino' package "
                "(pip install -e '.[openvino]'; make install does)"
            ) from exc
        core = ov.Core()
        check_bf16(cpu_capabilities(core))
        if AMX not in cpu_info().flags:
            _warn_slower()
        self._model = core.compile_model(
            str(model_file),
            "CPU",
            {
                "INFERENCE_PRECISION_HINT": PRECISION,
                "NUM_STREAMS": max(1, streams),
                "INFERENCE_NUM_THREADS": max(1, streams) * max(1, threads),
            },
        )
        self._names = [node.get_any_name() for node in self._model.inputs]
        self._local = threading.local()

    def get_inputs(self) -> list[_Input]:
        return [_Input(name) for name in self._names]

    def run(self, outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """ONNX Runtime's `run(None, feeds)`: every output, as new arrays."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._model.create_infer_request()
        result = request.infer(feeds, share_inputs=True, share_outputs=False)
        return list(result.to_tuple())


@functools.cache
def bf16_available() -> bool:
    """Whether this backend can run here: the openvino package is installed and OpenVINO finds
    bfloat16 units on the CPU (a fact of the machine, so asked once; `bf16_pays` asks)."""
    try:
        import openvino as ov
    except ImportError:
        return False
    return BF16 in cpu_capabilities(ov.Core())


@functools.cache
def bf16_pays() -> bool:
    """Whether KB_BACKEND=auto picks this backend: it can run here and the CPU has AMX. With
    AMX, bf16 ran 2.7x fp32's short texts/s (README, The encoder); with AVX512-BF16 alone it
    ran slower than ONNX Runtime's fp32 (a 2-core Xeon listing avx512_bf16 and no amx flags,
    2026-12-07: 494 against 804 short texts/s, 51 against 75 paragraphs/s, alternating in one
    process). The flags are read first: no AMX, no 0.2 s import of openvino."""
    return AMX in cpu_info().flags and bf16_available()


@functools.cache
def _warn_slower() -> None:
    """Say once a process that bf16 asked for on a CPU without AMX runs slower than fp32
    (`bf16_pays`): the backend runs, as asked, but its name promises speed."""
    log.warning(
        "KB_BACKEND=openvino-bf16 on a CPU without AMX: bf16 ran slower than onnx's fp32 "
        "on such a CPU (494 against 804 short texts/s, a 2-core Xeon with AVX512-BF16); "
        "KB_BACKEND=onnx, onnx-int8 or auto is faster here"
    )


def cpu_capabilities(core: Any) -> list[str]:
    """What OpenVINO finds the CPU can compute in (FP32, INT8, BF16, ...)."""
    return list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_bf16(capabilities: list[str]) -> None:
    """Refuse a CPU without bfloat16 units: OpenVINO would run fp32 there, slower than ONNX
    Runtime, under a backend name that says bf16."""
    if BF16 not in capabilities:
        raise ConfigError(
            "KB_BACKEND=openvino-bf16 needs a CPU with bfloat16 units (Intel AMX or "
            f"AVX512-BF16); this one offers {', '.join(capabilities)}. Use onnx or onnx-int8."
        )
