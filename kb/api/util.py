"""Request parsing and response helpers shared by the views."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from flask import Response, current_app, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.routing import PathConverter

from kb import json_input
from kb.auth import KeyRing
from kb.config import Settings
from kb.encoders.bulk import BulkEncoder
from kb.errors import (
    BadRequest,
    KBError,
    RequestTimeout,
    UnsupportedMediaType,
    ValidationFailed,
    field_error,
    field_errors,
)
from kb.store import KnowledgeStore
from kb.telemetry import Telemetry

M = TypeVar("M", bound=BaseModel)
EXTENSION = "kb"
Access = Literal["public", "read", "write"]


@dataclass
class KBState:
    """What the app holds for the views: settings, the open store, keys and metrics."""

    settings: Settings
    store: KnowledgeStore
    keys: KeyRing
    telemetry: Telemetry
    bulk: BulkEncoder | None = None  # large adds' encoder process, closed with the app


def state() -> KBState:
    return current_app.extensions[EXTENSION]


def store() -> KnowledgeStore:
    return state().store


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def body(model: type[M]) -> M:
    """The request's JSON body validated as `model`; 400 for bad JSON, 413 past
    KB_MAX_REQUEST_BYTES, 415 for a body not sent as JSON, 422 for bad content."""
    try:
        raw = request.get_data(cache=True)  # raises 413 past MAX_CONTENT_LENGTH
        _whole(raw)
    except (TimeoutError, ClientDisconnected) as exc:  # gunicorn's workers read the body as
        # the app asks for it; Werkzeug's stream calls any error reading it a disconnection
        if isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError):
            raise _stalled() from exc
        raise
    if not raw.strip():
        raise BadRequest("the request needs a JSON body")
    if not _json_media(request.mimetype):
        # a browser sends text/plain or a form from any web page without asking first
        # (no CORS preflight): taken as JSON, a page could add or delete on a keyless
        # service on localhost
        problem = f"must be application/json (got '{request.mimetype or 'none'}')"
        raise UnsupportedMediaType(
            f"Content-Type {problem}",
            details=[field_error("Content-Type", problem, "media_type")],
        )
    try:
        data = json_input.loads(raw, parse_constant=_no_constants)
    except json_input.UnusableJSON as exc:
        raise unusable(exc, "body") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"not valid JSON: {exc}"
        raise BadRequest(
            f"the request body is {problem}", details=[field_error("body", problem)]
        ) from exc
    if not isinstance(data, dict):
        raise ValidationFailed(
            "the request body must be a JSON object",
            details=[field_error("body", "expected an object", "type_error")],
        )
    return validate(model, data)


def _whole(raw: bytes) -> None:
    """413 for a body of unstated length (chunked) that goes on past the limit: Werkzeug's
    read of one stops quietly at MAX_CONTENT_LENGTH (under gunicorn, which hands such a body
    to the app; waitress refuses it itself), and the cut body was a 400, "not valid JSON"."""
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is None or request.content_length is not None or len(raw) < limit:
        return
    if request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()


def _stalled() -> RequestTimeout:
    """408 for a body that stopped arriving for KB_IDLE_TIMEOUT seconds (kb.cli.gunicorn_worker;
    waitress reads a whole body before the app runs and closes such a connection itself)."""
    wait = state().settings.idle_timeout
    problem = f"no more of it arrived for {wait} s (KB_IDLE_TIMEOUT)"
    return RequestTimeout(
        f"the request body stopped arriving: {problem}",
        details=[field_error("body", problem, "timeout")],
    )


def _json_media(mimetype: str) -> bool:
    return mimetype == "application/json" or (
        mimetype.startswith("application/") and mimetype.endswith("+json")
    )


def unusable(exc: json_input.UnusableJSON, root: str) -> ValidationFailed:
    """422 naming the field of JSON that parsed but cannot be served; paths inside the body
    are named as pydantic names them ("documents.0.text"), inside a parameter after it."""
    prefix = "" if root == "body" else f"{root}."
    name = f"{prefix}{exc.path}" if exc.path else root
    return ValidationFailed(f"{name}: {exc.message}", details=[field_error(name, exc.message)])


def validate(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data, context={"settings": state().settings})
    except ValidationError as exc:
        raise validation_failed(exc) from exc


def validation_failed(exc: ValidationError) -> ValidationFailed:
    details = field_errors(exc)
    first = details[0]
    more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
    return ValidationFailed(f"{first['field']}: {first['message']}{more}", details=details)


class DocIdConverter(PathConverter):
    """A document id in a path: any text, "/" included, even first ("/documents/%2Fa" is the
    id "/a"; werkzeug's path converter cannot start with "/")."""

    regex = ".+?"
    part_isolating = False


@contextmanager
def fields_as_sent(given: str, sent: str) -> Iterator[None]:
    """Name the fields of a service error as the caller wrote them: the service names places
    in the list it was handed (`documents.0.id`, `ids.0`), which a request may have sent as
    one document's fields (`id`) or in its path."""
    try:
        yield
    except KBError as exc:
        exc.details = [_renamed(detail, given, sent) for detail in exc.details]
        raise


def _renamed(detail: dict[str, Any], given: str, sent: str) -> dict[str, Any]:
    name = detail.get("field")
    if not isinstance(name, str) or not (name == given or name.startswith(f"{given}.")):
        return detail
    return {**detail, "field": f"{sent}{name[len(given) :]}".lstrip(".")}


def reply(model: BaseModel, status: int = 200) -> tuple[Response, int]:
    return jsonify(model.model_dump(mode="json", exclude_none=False)), status


@dataclass
class RouteDoc:
    """What the OpenAPI document says of one view."""

    summary: str
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    alternatives: list[type[BaseModel]] = field(default_factory=list)
    status: int = 200
    # what each success status means, when a route has several (the same body each)
    statuses: dict[int, str] = field(default_factory=dict)
    errors: tuple[int, ...] = (400, 413, 415, 422)
    query: list[dict[str, Any]] = field(default_factory=list)
    access: Access = "read"  # what key the route needs when KB_API_KEYS is set
    media_type: str = "application/json"
    uses_store: bool = True  # may answer 503 when the store (Chroma) fails

    @property
    def refuses_query(self) -> bool:
        """Whether any query parameter is a 422: a route's options are in its body or path,
        and only public routes (probes, the search page) let a browser's or probe's pass."""
        return not self.query and self.access != "public"


def documented(summary: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Attach an OpenAPI description to a view; /openapi.json is built from these."""

    def attach(view: Callable[..., Any]) -> Callable[..., Any]:
        view.openapi = RouteDoc(summary, **kwargs)  # type: ignore[attr-defined]
        return view

    return attach
