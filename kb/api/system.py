"""Service routes: health, stats and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from kb import __version__
from kb.api.openapi import build_spec
from kb.api.util import documented, reply, store
from kb.schemas import Health, ModelInfo, Stats, StoreInfo

bp = Blueprint("system", __name__)


@bp.get("/health")
@documented("Service status, document count, model and store", response=Health, errors=())
def health() -> tuple[Response, int]:
    kb = store()
    records = kb.records
    return reply(
        Health(
            status="ok",
            version=__version__,
            documents=kb.count(),
            model=ModelInfo(
                name=kb.embedder.name,
                backend=kb.embedder.backend,
                dim=kb.embedder.dim,
                fingerprint=kb.embedder.fingerprint,
            ),
            store=StoreInfo(mode=records.mode, location=records.location, collection=records.name),
        )
    )


@bp.get("/stats")
@documented("Document count and the values of each metadata key", response=Stats, errors=())
def stats() -> tuple[Response, int]:
    return reply(store().stats())


@bp.get("/openapi.json")
@documented("This OpenAPI document", errors=())
def openapi() -> Response:
    return jsonify(build_spec(current_app))
