"""The torch backend: sentence-transformers over a local model directory."""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from kb.chunking import Tokens
from kb.embeddings import resolve_model_path
from kb.errors import ConfigError
from kb.fingerprint import model_identity

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path


class SentenceTransformerEmbedder:
    """The model as its authors run it; the reference the ONNX backend is checked against."""

    backend = "torch"

    def __init__(self, model: str, *, device: str = "cpu", batch_size: int = 64) -> None:
        self.name, self.path = resolve_model_path(model)
        self.fingerprint, self.former_fingerprints = model_identity(self.path)
        self.batch_size = batch_size
        # Never reach for a hub: the weights are local, and the network is not ours to assume.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self._model: Any = load_model(self.path, device)
        # HF fast tokenizers are not safe to call from several threads at once ("Already
        # borrowed"); the server has many threads, so encoding is serialized.
        self._lock = threading.Lock()
        self.dim = int(self._model.get_embedding_dimension())
        self.max_tokens = int(self._model.max_seq_length)
        self._tokenizer = self._model.tokenizer

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:  # sentence-transformers sorts by length before batching
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

    def tokens(self, text: str) -> Tokens:
        """The word pieces the model reads (no special tokens): spans and word starts."""
        with self._lock:
            encoded = self._tokenizer(
                text,
                add_special_tokens=False,
                return_offsets_mapping=True,
                truncation=False,
                verbose=False,
            )
        return Tokens.of(encoded["offset_mapping"], encoded.word_ids())


def load_model(path: Path, device: str, **options: Any) -> Any:
    """The sentence-transformers model at `path` on `device` (the torch backend's, and the
    one the ONNX export traces); a device torch has not got, or a folder it cannot load, is
    a one-line ConfigError."""
    _check_device(device)
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in kb's output
    try:
        return SentenceTransformer(str(path), device=device, **options)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"could not load the model at {path}: {exc}") from exc


def _check_device(device: str) -> None:
    """Refuse a KB_DEVICE torch cannot parse ('gpu') or has not got here ('cuda' on a
    CPU-only build): torch's RuntimeError or AssertionError was a traceback."""
    import torch

    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        reason = str(exc).split(". ")[0].splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"KB_DEVICE={device!r} is not a torch device here: {reason}") from exc
