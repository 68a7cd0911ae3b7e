"""KB_BACKEND=openvino-bf16: the exported model run by OpenVINO in bfloat16."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from kb.config import Settings, cpu_count
from kb.embeddings import Embedder, load_embedder
from kb.encoders.onnx_backend import OnnxEmbedder
from kb.encoders.openvino_session import bf16_available, check_bf16
from kb.errors import ConfigError

pytest.importorskip("openvino")
if not bf16_available():
    pytest.skip("this CPU has no bfloat16 units", allow_module_level=True)

TEXTS = [
    "",
    "hi",
    "The cat sat on the mat.",
    "Café naïve façade — déjà vu, 東京 and emoji 🙂 are tokenized too.",
    "A document far longer than the model's window gets truncated. " * 60,
    *[f"note {i}: " + "about glaciers and fjords " * (i % 23) for i in range(97)],
]


@pytest.fixture(scope="module")
def bf16() -> Embedder:
    return load_embedder(Settings(backend="openvino-bf16"))


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def test_bf16_vectors_stay_within_a_thousandth_of_fp32(bf16: Embedder, embedder: Embedder) -> None:
    """Close enough to share a store with fp32 (same fingerprint), far closer than int8's."""
    assert isinstance(bf16, OnnxEmbedder)
    assert bf16.backend == "openvino-bf16"
    assert (bf16.fingerprint, bf16.dim) == (embedder.fingerprint, embedder.dim)
    got, want = bf16.embed_documents(TEXTS), embedder.embed_documents(TEXTS)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert float(np.abs(got - want).max()) < 5e-3
    assert float(cosines(got, want).min()) > 0.999
    assert float(np.abs(got - want).max()) > 0  # bf16 runs, not an fp32 fallback


def test_bf16_lanes_and_concurrent_queries_keep_their_own_rows(
    bf16: Embedder, embedder: Embedder
) -> None:
    """Batches on the streams (one a core) and queries from eight threads (each thread its own infer
    request): every row is its own text's vector (these texts' vectors differ by far more
    than bf16's error)."""
    assert isinstance(bf16, OnnxEmbedder)
    assert bf16.lanes == cpu_count()
    assert int(bf16._session._model.get_property("NUM_STREAMS")) == bf16.lanes  # a stream a lane
    if bf16._single is not None:  # one text on every core
        assert int(bf16._single._model.get_property("NUM_STREAMS")) == 1
        assert int(bf16._single._model.get_property("INFERENCE_NUM_THREADS")) == cpu_count()
    assert bf16.has_query_session == (cpu_count() > 1)
    want = embedder.embed_documents(TEXTS)
    assert float(cosines(bf16.embed_documents(TEXTS), want).min()) > 0.999
    with ThreadPoolExecutor(8) as pool:
        rows = list(pool.map(lambda text: bf16.embed_queries([text])[0], TEXTS))
    assert float(cosines(np.vstack(rows), want).min()) > 0.999
    assert float(cosines(want[10:11], want[11:12])[0]) < 0.999  # rows mixed up would fail


def test_bf16_ranks_like_fp32(bf16: Embedder) -> None:
    q = bf16.embed_queries(["A feline rested on the rug"])[0]
    cat, stocks = bf16.embed_documents(["The cat sat on the mat", "stock market crash"])
    assert float(q @ cat) > 0.5 > float(q @ stocks)


def test_the_encoder_process_runs_bf16(embedder: Embedder) -> None:
    from kb.encoders.process import EncoderProcess

    encoder = EncoderProcess(Settings(backend="openvino-bf16"))
    try:
        assert encoder.backend == "openvino-bf16"
        got = encoder.submit(TEXTS[:40]).result(timeout=120)
    finally:
        encoder.close()
    assert float(cosines(got, embedder.embed_documents(TEXTS[:40])).min()) > 0.999


def test_a_cpu_without_bf16_units_is_refused() -> None:
    check_bf16(["BF16", "FP32", "INT8"])
    with pytest.raises(ConfigError, match=r"bfloat16 units.*FP32, INT8.*onnx"):
        check_bf16(["FP32", "INT8"])


def test_the_onnx_embedder_refuses_a_backend_it_does_not_run() -> None:
    with pytest.raises(ValueError, match="'torch' is none of onnx, onnx-int8, openvino-bf16"):
        OnnxEmbedder("all-MiniLM-L6-v2", cache=Settings().onnx_cache, backend="torch")


def test_without_openvino_installed_the_backend_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails
    with pytest.raises(ConfigError, match=r"openvino.*\[openvino\]"):
        load_embedder(Settings(backend="openvino-bf16"))


@pytest.mark.parametrize("amx", [False, True])
def test_bf16_asked_for_without_amx_warns_once_that_it_runs_slower(
    bf16: Embedder, amx: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without AMX (a Xeon listing avx512_bf16 alone), bf16 ran slower than fp32: auto does
    not pick it (bf16_pays), and asked for by name it runs, saying so once a process."""
    from kb import cpu
    from kb.encoders import openvino_session
    from kb.encoders.openvino_session import AMX, OpenVinoSession

    flags = frozenset({"avx512f", "avx512_bf16", *([AMX] if amx else [])})
    monkeypatch.setattr(openvino_session, "cpu_info", lambda: cpu.Cpu("GenuineIntel", flags))
    openvino_session._warn_slower.cache_clear()
    assert isinstance(bf16, OnnxEmbedder)
    with caplog.at_level("WARNING", logger="kb.encoders.openvino_session"):
        for _ in range(2):
            OpenVinoSession(bf16._model_file, threads=1)
    said = [r.getMessage() for r in caplog.records if "without AMX" in r.getMessage()]
    assert len(said) == (0 if amx else 1)
