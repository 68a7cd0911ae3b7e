"""GET /openapi.json lists every route with its request and response schemas."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient


def test_every_route_is_documented(app: Flask, client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.")
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        assert path in spec["paths"], path
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = spec["paths"][path][method.lower()]
            assert operation["summary"]
            assert operation["responses"]


def test_schemas_are_referenced_and_defined(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    text = str(spec["paths"])
    for name in re.findall(r"#/components/schemas/([\w-]+)", text):
        assert name in spec["components"]["schemas"], name
    add = spec["paths"]["/add"]["post"]
    assert add["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "AddRequest"
    )
    assert "201" in add["responses"]
    assert "409" in add["responses"]
    query_schema = spec["components"]["schemas"]["QueryResult"]["properties"]
    assert {"matches", "threshold", "rejected", "best_rejected_score"} <= set(query_schema)
