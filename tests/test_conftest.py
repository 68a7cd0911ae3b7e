"""The suite's own clean-up: what one test leaves on the shared Chroma server."""

from __future__ import annotations

import chromadb

from kb.collection import _close_client
from tests.conftest import drop_collections


def test_a_dropped_collections_list_metadata_does_not_reach_the_next_one(
    chroma_server: str,
) -> None:
    # Chroma 1.5's delete_collection keeps list-valued metadata, keyed by internal ids the
    # next records reuse (chroma #7594); a later test's documents would carry old tags.
    host, port = chroma_server.removeprefix("http://").split(":")
    client = chromadb.HttpClient(host=host, port=int(port))
    try:
        old = client.create_collection("cleanup-old", embedding_function=None)
        old.add(
            ids=["a", "b"],
            embeddings=[[1.0, 0.0], [0.0, 1.0]],
            metadatas=[{"n": 1, "tags": ["stale", "x"]}, {"n": 2, "tags": ["stale"]}],
        )
        drop_collections(chroma_server, "cleanup-old")
        new = client.create_collection("cleanup-new", embedding_function=None)
        new.add(ids=["c", "d"], embeddings=[[1.0, 0.0], [0.0, 1.0]], metadatas=[{"n": 3}, {"n": 4}])
        assert new.get(ids=["c", "d"])["metadatas"] == [{"n": 3}, {"n": 4}]
        assert new.get(where={"tags": {"$contains": "stale"}})["ids"] == []
    finally:
        drop_collections(chroma_server, "cleanup-new")
        _close_client(client)
