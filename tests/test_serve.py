"""`kb serve` runs the API under waitress; a client talks to it over loopback."""

from __future__ import annotations

from tests.live import call


def test_serve_answers_over_http(live_server: str) -> None:
    status, added = call(live_server, "/add", {"id": "cat", "text": "The cat sat on the mat"})
    assert (status, added["ids"]) == (201, ["cat"])
    status, result = call(live_server, "/query", {"query": "A feline rested on the rug"})
    assert status == 200
    assert [m["id"] for m in result["matches"]] == ["cat"]
    status, error = call(live_server, "/query", {"query": ""})
    assert status == 422
    assert error["error"]["details"][0]["field"] == "query"
