"""kb.client.KBClient against a real `kb serve` over loopback."""

from __future__ import annotations

import pytest

from kb.client import KBClient, KBClientError
from kb.schemas import DocumentIn

IDS = ["a", "/a", "a//b", "a/b", "a/", "//x", "a b?c#d%2F"]


def test_ids_with_slashes_and_reserved_characters_round_trip(live_server: str) -> None:
    """get() quoted ids leaving "/" as is, and the service merged "//": get("/a") answered
    the document "a"."""
    client = KBClient(live_server)
    client.add([DocumentIn(id=doc_id, text=f"The note called {doc_id}") for doc_id in IDS])
    for doc_id in IDS:
        got = client.get(doc_id)
        assert (got.id, got.text) == (doc_id, f"The note called {doc_id}")
    client.delete(["/a"])
    assert client.get("a").id == "a"
    with pytest.raises(KBClientError) as missing:
        client.get("/a")
    assert missing.value.status == 404
