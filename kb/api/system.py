"""Service routes: health, stats and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify

from kb import __version__
from kb.api.openapi import build_spec
from kb.api.security import presented_role
from kb.api.util import documented, reply, state, store
from kb.errors import StoreUnavailable
from kb.schemas import Health, Info, Limits, ModelInfo, Stats, StoreInfo
from kb.search import resolve_threshold
from kb.telemetry import CONTENT_TYPE

bp = Blueprint("system", __name__)


@bp.get("/health")
@documented(
    "Service status, document count, model and store", response=Health, errors=(), access="public"
)
def health() -> tuple[Response, int]:
    kb = store()
    records = kb.records
    # /health is public; where the store lives (a path, a server's URL) is for key holders
    location = records.location if presented_role() is not None else None
    documents = kb.count()  # on a server, reads the change log first
    if kb.replica.unreachable is not None:  # a load balancer must stop sending requests
        raise StoreUnavailable(f"the store cannot be read: {kb.replica.unreachable}")
    return reply(
        Health(
            status="ok",
            ready=kb.replica.ready,
            version=__version__,
            documents=documents,
            model=ModelInfo(
                name=kb.embedder.name,
                backend=kb.embedder.backend,
                dim=kb.embedder.dim,
                fingerprint=kb.embedder.fingerprint,
            ),
            store=StoreInfo(mode=records.mode, location=location, collection=records.name),
        )
    )


@bp.get("/stats")
@documented("Document count and the values of each metadata key", response=Stats, errors=())
def stats() -> tuple[Response, int]:
    return reply(store().stats())


@bp.get("/openapi.json")
@documented("This OpenAPI document", errors=(), uses_store=False)
def openapi() -> Response:
    return jsonify(build_spec(current_app, secured=state().keys.enabled))


@bp.get("/info")
@documented("Defaults, limits and what the presented key may do", response=Info, errors=())
def info() -> tuple[Response, int]:
    kb, settings = store(), state().settings
    role = presented_role()
    kb.replica.catch_up_quietly()  # a threshold another process stored since
    return reply(
        Info(
            auth_required=state().keys.enabled,
            role=role.value if role is not None else None,
            threshold=resolve_threshold(kb, None),
            top_k=settings.top_k,
            max_top_k=settings.max_top_k,
            search_mode=settings.search_mode,
            limits=Limits(**settings.model_dump(include=set(Limits.model_fields))),
        )
    )


@bp.get("/metrics")
@documented("Prometheus metrics", errors=(), media_type=CONTENT_TYPE)
def metrics() -> Response:
    return Response(state().telemetry.scrape(), content_type=CONTENT_TYPE)
