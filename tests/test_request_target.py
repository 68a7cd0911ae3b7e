"""Paths and query strings whose %-escapes are not UTF-8 are refused, naming the part:
Werkzeug read them as U+FFFD, so they named another document or another value."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.live import call
from tests.test_api_errors import assert_error_shape

ODD_ID = "\ufffd"  # what Werkzeug made of %ff


@pytest.fixture
def odd(client: FlaskClient) -> FlaskClient:
    response = client.post("/add", json={"id": ODD_ID, "text": "a document with an odd id"})
    assert response.status_code == 201, response.json
    return client


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH"])
def test_a_path_that_is_not_utf8_is_400_and_touches_no_document(odd: FlaskClient, method) -> None:
    # as a server hands /documents/%ff over (PEP 3333: bytes as latin-1); the test client
    # would decode the escape itself
    raw = {"PATH_INFO": "/documents/\xff"}
    response = odd.open(method=method, json={"text": "x"}, environ_overrides=raw)
    error = assert_error_shape(response, 400)
    assert error["details"][0]["field"] == "path"
    assert "not UTF-8" in error["message"]
    assert odd.get("/documents/%EF%BF%BD").json["text"] == "a document with an odd id"


def test_the_same_id_spelt_in_utf8_is_found(odd: FlaskClient) -> None:
    assert odd.delete("/documents/%EF%BF%BD").json == {"deleted": 1, "ids": [ODD_ID]}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("difficulty=%ff", "difficulty"),
        ("%ff=1", "\\xff"),
        ("where=%7B%22a%22%3A%22%ff%22%7D", "where"),
        ("limit=2&author=caf%e9", "author"),
    ],
)
def test_a_query_parameter_that_is_not_utf8_is_400_naming_it(
    odd: FlaskClient, query: str, field: str
) -> None:
    error = assert_error_shape(odd.get(f"/documents?{query}"), 400)
    assert error["details"][0]["field"] == field
    assert f"'{field}' is not UTF-8" in error["message"]


def test_utf8_escapes_and_plus_signs_are_read_as_before(client: FlaskClient) -> None:
    text = "crème brûlée for two"
    added = client.post("/add", json={"text": text, "metadata": {"dish": "crème brûlée"}})
    assert added.status_code == 201
    listed = client.get("/documents?dish=cr%C3%A8me+br%C3%BBl%C3%A9e")
    assert [doc["text"] for doc in listed.json["documents"]] == [text]


def test_a_served_path_that_is_not_utf8_is_400(live_server: str) -> None:
    """Through waitress, as a client sends it."""
    assert call(live_server, "/add", {"id": ODD_ID, "text": "odd"})[0] == 201
    status, answer = call(live_server, "/documents/%ff", method="DELETE")
    assert status == 400
    assert answer["error"]["details"][0]["field"] == "path"
    status, answer = call(live_server, "/documents?author=%ff")
    assert (status, answer["error"]["details"][0]["field"]) == (400, "author")
    assert call(live_server, "/documents/%EF%BF%BD")[1]["text"] == "odd"


@pytest.mark.parametrize(
    ("method", "path", "payload", "route"),
    [
        ("POST", "/query?top_k=1", {"query": "a document"}, "POST /query"),
        ("POST", "/add?upsert=true", {"id": ODD_ID, "text": "replaced?"}, "POST /add"),
        ("POST", "/delete?ids=x", {"ids": [ODD_ID]}, "POST /delete"),
        ("POST", "/update?id=x", {"id": ODD_ID, "text": "changed?"}, "POST /update"),
        ("PATCH", "/documents/%EF%BF%BD?text=x", {"text": "changed?"}, "PATCH /documents/<doc_id>"),
        ("DELETE", "/documents/%EF%BF%BD?dry_run=true", None, "DELETE /documents/<doc_id>"),
        ("GET", "/documents/%EF%BF%BD?fields=text", None, "GET /documents/<doc_id>"),
        ("GET", "/stats?top_k=3", None, "GET /stats"),
    ],
)
def test_a_route_that_takes_no_query_parameters_refuses_one_and_changes_nothing(
    odd: FlaskClient, method: str, path: str, payload: dict | None, route: str
) -> None:
    """The parameter was ignored: `POST /query?top_k=1` answered five matches, and
    `DELETE /documents/x?dry_run=true` deleted."""
    error = assert_error_shape(odd.open(path, method=method, json=payload), 422)
    name = path.partition("?")[2].partition("=")[0]
    assert error["details"][0] == {
        "field": name,
        "message": f"{route} takes no query parameters",
        "type": "unknown_parameter",
    }
    assert f"(got '{name}')" in error["message"]
    assert ("JSON body" in error["message"]) == (payload is not None)
    assert odd.get("/documents/%EF%BF%BD").json["text"] == "a document with an odd id"
    assert odd.get("/stats").json["documents"] == 1


def test_routes_that_read_query_parameters_or_are_public_still_take_them(
    odd: FlaskClient,
) -> None:
    assert odd.get("/documents?limit=1").json["documents"][0]["id"] == ODD_ID
    assert odd.get("/health?probe=1").status_code == 200
    with odd.get("/?q=anything") as page:  # a file's answer: closed, or it warns
        assert page.status_code == 200
    assert odd.options("/query?x=1").status_code == 200
