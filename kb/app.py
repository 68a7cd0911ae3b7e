"""The Flask application factory: wiring only."""

from __future__ import annotations

import logging

from flask import Flask

from kb import logs
from kb.api import register_blueprints
from kb.api.errors import register_error_handlers
from kb.api.observability import register_observability
from kb.api.request_target import register_request_target
from kb.api.security import register_security
from kb.api.util import EXTENSION, DocIdConverter, KBState
from kb.auth import KeyRing
from kb.config import Settings, unknown_variables
from kb.embeddings import Embedder, load_embedder
from kb.encoders import process as encoder_process
from kb.encoders.bulk import BulkEncoder
from kb.query_cache import QueryCache
from kb.store import KnowledgeStore
from kb.telemetry import Telemetry

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, embedder: Embedder | None = None) -> Flask:
    """A kb app over the configured store; pass `embedder` to share a loaded model. Built
    from the environment (no `settings`), it logs the KB_* variables no setting reads (the
    CLI warns of them itself)."""
    from_environment = settings is None
    settings = settings or Settings()
    logs.configure(settings.log_level, settings.log_format)
    if from_environment:
        for warning in unknown_variables():
            log.warning(warning)
    _one_blas_thread()
    keys = KeyRing.of(settings)
    log.info(keys.describe())  # so an API left open by mistake shows at start-up
    if "*" in settings.cors() and not keys.enabled:
        log.warning(
            "KB_CORS_ORIGINS=* and no API keys: any web page can read and write this service"
        )
    telemetry = Telemetry()
    inner = embedder if embedder is not None else load_embedder(settings)
    bulk = _bulk_encoder(inner, settings)
    encoder = telemetry.timed(bulk or inner)
    if settings.query_cache:
        encoder = QueryCache(encoder, settings.query_cache, telemetry.count_query_lookups)
    app = Flask("kb", static_folder=None)
    # Ids may start with "/" or hold "//": merged slashes would send /documents/%2Fa (the
    # id "/a") to the document "a". Set before any route is added: rules read it then.
    app.url_map.merge_slashes = False
    app.url_map.converters["doc_id"] = DocIdConverter
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    try:
        store = KnowledgeStore.open(settings, encoder)
    except BaseException:
        if bulk is not None:
            bulk.close()
        raise
    telemetry.count_documents(store.count)
    _say_overridden_min_score(settings, store)
    app.extensions[EXTENSION] = KBState(settings, store, keys, telemetry, bulk)
    register_observability(app)
    register_security(app)
    register_request_target(app)  # after the key check: a 401 first
    register_error_handlers(app)
    register_blueprints(app)
    return app


def _say_overridden_min_score(settings: Settings, store: KnowledgeStore) -> None:
    """A threshold `kb calibrate --write` stored outranks KB_MIN_SCORE: when that is set
    too, one warning naming both (the calibrated one was applied without a word)."""
    from kb.search import resolve_threshold, threshold_text

    threshold = resolve_threshold(store, None)
    if threshold.source != "calibrated" or "min_score" not in settings.model_fields_set:
        return
    log.warning(
        "threshold %s (calibrated by kb calibrate --write; KB_MIN_SCORE=%s is not used; "
        "kb calibrate --clear removes it)",
        threshold_text(threshold.min_score),
        threshold_text(settings.min_score),
    )


def _bulk_encoder(inner: Embedder, settings: Settings) -> BulkEncoder | None:
    """Large adds embed in an encoder process (kb.encoders.bulk), when it can run the
    backend and is not switched off."""
    if not encoder_process.wanted(settings, inner.backend):
        return None
    return BulkEncoder(
        inner, settings, settings.encoder_process_min_texts, settings.encoder_process_idle_s
    )


def _one_blas_thread() -> None:
    """numpy's OpenBLAS gives every matrix product all the cores and then keeps its threads
    spinning for more work; in a server whose requests already run on every core, that only
    takes CPU from them. One thread per product (process-wide, numpy's and FAISS's)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1, user_api="blas")


def close_app(app: Flask) -> None:
    """Stop the encoder process, release the store (file handles, the embedded Chroma
    system)."""
    state: KBState | None = app.extensions.pop(EXTENSION, None)
    if state is not None:
        if state.bulk is not None:
            state.bulk.close()
        state.store.close()
