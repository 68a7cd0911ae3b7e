"""GET /health and GET /stats."""

from __future__ import annotations

from flask.testing import FlaskClient


def test_health_reports_count_model_and_store(cooking: FlaskClient, settings) -> None:
    health = cooking.get("/health").json
    assert health["status"] == "ok"
    assert health["documents"] == 4
    assert health["model"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert health["model"]["dim"] == 384
    assert health["model"]["backend"] == "onnx"
    assert health["store"] == {
        "mode": "server" if settings.chroma_url else "embedded",
        "location": settings.chroma_url or str(settings.chroma_path),
        "collection": settings.collection,
    }


def test_stats_count_values_per_metadata_key(cooking: FlaskClient) -> None:
    stats = cooking.get("/stats").json
    assert stats["documents"] == 4
    assert stats["chunks"] == 4
    meta = stats["metadata"]
    assert meta["category"]["values"] == {"cooking": 2, "baking": 2}
    assert meta["difficulty"]["distinct"] == 3
    assert meta["tags"]["values"]["italian"] == 2
    assert meta["minutes"]["min"] == 12
    assert meta["minutes"]["max"] == 180
    assert meta["date"]["min"] == "2023-03-10"
    assert meta["date"]["max"] == "2025-02-01"
    assert not any(key.startswith("_kb_") for key in meta)
