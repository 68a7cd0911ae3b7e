"""Fuzz the API from its own /openapi.json with schemathesis: no 5xx, no off-schema answer."""

from __future__ import annotations

import os

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from tests.conftest import COOKING, changed
from tests.test_security import KEYS, READ_KEY, WRITE_KEY

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Per operation: bounded so CI stays quick; FUZZ_EXAMPLES=500 for a deeper run.
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
# schemathesis' WSGI transport reads responses without closing them, so streamed files (the
# page's assets) are left for the garbage collector; a WSGI server closes them.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def fuzz(operation: schemathesis.APIOperation, headers: dict[str, str] | None = None) -> None:
    @given(case=operation.as_strategy())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(checks=CHECKS, headers=headers)

    run()


def fuzz_all(app: Flask, headers: dict[str, str] | None = None) -> None:
    """Every operation of the app's spec, sent with `headers`; all failures together."""
    admin = {"Authorization": f"Bearer {WRITE_KEY}"}  # to seed and to read the spec
    app.test_client().post("/add", json={"documents": COOKING}, headers=admin)
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=admin)
    failures = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            fuzz(operation, headers)
        except Exception as exc:  # collect every operation's failure, not just the first
            failures[operation.label] = exc
    assert not failures, "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())


def test_every_operation_answers_by_its_schema(app: Flask) -> None:
    fuzz_all(app)


@pytest.mark.parametrize("key", [READ_KEY, WRITE_KEY, "not-a-configured-key"])
def test_with_keys_every_answer_is_documented_too(
    settings: Settings, embedder: Embedder, key: str
) -> None:
    secured = create_app(changed(settings, api_keys=KEYS), embedder=embedder)
    try:
        fuzz_all(secured, {"Authorization": f"Bearer {key}"})
    finally:
        close_app(secured)
