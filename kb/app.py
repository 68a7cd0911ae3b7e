"""The Flask application factory: wiring only."""

from __future__ import annotations

import logging

from flask import Flask

from kb.api import register_blueprints
from kb.api.errors import register_error_handlers
from kb.api.util import EXTENSION, KBState
from kb.config import Settings
from kb.embeddings import Embedder
from kb.store import KnowledgeStore


def create_app(settings: Settings | None = None, *, embedder: Embedder | None = None) -> Flask:
    """A kb app over the configured store; pass `embedder` to share a loaded model."""
    settings = settings or Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = Flask("kb", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = KBState(settings, KnowledgeStore.open(settings, embedder))
    register_error_handlers(app)
    register_blueprints(app)
    return app


def close_app(app: Flask) -> None:
    """Release the store (file handles, the embedded Chroma system)."""
    state: KBState | None = app.extensions.pop(EXTENSION, None)
    if state is not None:
        state.store.close()
