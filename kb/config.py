"""Settings shared by the service and the CLI: every knob is a KB_* environment variable."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGED_MODEL = "all-MiniLM-L6-v2"


def default_cache() -> Path:
    """Where derived model files live: outside the repository, shared by checkouts."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kb" / "onnx"


class Settings(BaseSettings):
    """Configuration for one kb process; read from KB_* variables, overridable in code."""

    model_config = SettingsConfigDict(env_prefix="KB_", extra="ignore", validate_default=True)

    # Store
    chroma_path: Path = Field(Path("chroma_db"), description="Directory of the embedded store.")
    collection: str = Field("knowledge_base", description="Chroma collection name.")

    # Embedding
    model: str = Field(
        PACKAGED_MODEL,
        description="'all-MiniLM-L6-v2' (the packaged model) or a local sentence-transformers dir.",
    )
    backend: Literal["onnx", "onnx-int8", "torch"] = Field(
        "onnx", description="Encoder: ONNX Runtime (fp32 or int8 weights) or torch."
    )
    onnx_cache: Path = Field(
        default_factory=default_cache, description="Where the ONNX export of the model is kept."
    )
    encoder_threads: int = Field(0, ge=0, description="ONNX Runtime threads; 0 = one per core.")
    device: str = Field("cpu", description="Torch device (KB_BACKEND=torch).")
    embed_batch_size: int = Field(64, ge=1, le=4096)
    chunking: bool = Field(
        True, description="Split long texts into chunks; off = the model truncates them."
    )
    chunk_tokens: int | None = Field(
        None, ge=16, description="Tokens per chunk; default: the model's window minus 2."
    )
    chunk_overlap: int = Field(32, ge=0, description="Tokens shared by neighbouring chunks.")

    # Search
    min_score: float = Field(
        0.40, ge=-1.0, le=1.0, description="Default similarity threshold (minimum cosine score)."
    )
    top_k: int = Field(5, ge=1, le=100, description="Default number of matches per query.")
    search_mode: Literal["dense", "keyword", "hybrid"] = "hybrid"
    fusion: Literal["rrf", "score"] = "score"
    duplicate_score: float = Field(
        0.95, ge=-1.0, le=1.0, description="Cosine score from which documents are near-duplicates."
    )
    hybrid_depth: int = Field(100, ge=1, le=1000, description="Candidates per side to fuse.")

    # Limits
    max_request_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_documents_per_request: int = Field(10_000, ge=1)
    max_queries_per_request: int = Field(64, ge=1)
    max_text_chars: int = Field(200_000, ge=1)

    # Serving
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    threads: int = Field(8, ge=1, le=256, description="Worker threads of the WSGI server.")
    log_level: str = "INFO"

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str) -> str:
        # Chroma's rule: 3-512 chars of [a-zA-Z0-9._-], starting and ending alphanumeric.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", value):
            raise ValueError(
                "collection names need 3-512 characters of letters, digits, '.', '_' or '-', "
                "starting and ending with a letter or digit"
            )
        return value
