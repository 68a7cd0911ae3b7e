"""kb calibrate --clear, and the start-up warning of a calibrated threshold over KB_MIN_SCORE."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from kb.app import close_app, create_app
from kb.cli import main
from kb.collection import CALIBRATED_KEY
from kb.config import Settings
from kb.embeddings import Embedder
from kb.schemas import DocumentIn, QueryRequest
from kb.search import resolve_threshold, search
from kb.store import KnowledgeStore

DOG = DocumentIn.model_validate({"id": "d", "text": "Dogs bark to warn."})


def calibrated(settings: Settings, embedder: Embedder, threshold: float) -> None:
    """A store holding one document and a threshold as `kb calibrate --write` stores it."""
    store = KnowledgeStore.open(settings, embedder)
    try:
        store.add([DOG])
        store.set_setting(CALIBRATED_KEY, threshold)
    finally:
        store.close()


def clear(env: dict[str, str], *more: str) -> Result:
    return CliRunner().invoke(main, ["calibrate", "--clear", *more], env=env)


def test_clear_removes_the_calibrated_threshold_and_nothing_else(
    tmp_path: Path, embedder: Embedder
) -> None:
    """There was no way to remove it but a backup edited by hand and restored (review helper
    99): it outranked KB_MIN_SCORE for good."""
    settings = Settings(chroma_path=tmp_path / "db")
    calibrated(settings, embedder, 0.48)
    env = {"KB_CHROMA_PATH": str(tmp_path / "db"), "KB_MIN_SCORE": "0.3"}
    result = clear(env)
    assert result.exit_code == 0, result.output
    where = f"collection 'knowledge_base' in {tmp_path / 'db'}"
    said = f"removed the calibrated threshold 0.48 of {where}: KB_MIN_SCORE applies (0.30 in"
    assert said in result.output
    store = KnowledgeStore.open(settings, embedder)
    try:
        assert store.records.settings_value(CALIBRATED_KEY) is None
        assert resolve_threshold(store, None).source == "configured"
        assert store.count() == 1
    finally:
        store.close()
    result = clear(env)
    assert result.exit_code == 0, result.output
    assert f"no calibrated threshold stored in {where}" in result.output


def test_clear_on_a_server_reaches_a_running_service(
    server_settings: Settings, embedder: Embedder
) -> None:
    """Announced as --write's threshold is: the service's next search drops it."""
    calibrated(server_settings, embedder, 0.9)
    service = KnowledgeStore.open(server_settings, embedder)
    try:
        request = QueryRequest.model_validate({"query": "dogs", "mode": "dense"})
        assert search(service, request)[0].threshold.source == "calibrated"
        env = {
            "KB_CHROMA_URL": server_settings.chroma_url or "",
            "KB_COLLECTION": server_settings.collection,
            "KB_LOCK_DIR": str(server_settings.lock_dir),
        }
        result = clear(env)
        assert result.exit_code == 0, result.output
        assert "removed the calibrated threshold 0.90 of collection" in result.output
        threshold = search(service, request)[0].threshold
        assert (threshold.source, threshold.min_score) == ("configured", 0.4)
    finally:
        service.close()


@pytest.mark.parametrize(
    ("more", "given"),
    [
        (["--write"], "--write"),
        (["--pairs", "PAIRS"], "--pairs"),
        (["--queries", "."], "--queries"),
    ],
)
def test_clear_with_another_option_is_a_usage_error(
    tmp_path: Path, more: list[str], given: str
) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"a": "x", "b": "y", "label": 1}\n')
    args = [str(pairs) if arg == "PAIRS" else arg for arg in more]
    result = clear({"KB_CHROMA_PATH": str(tmp_path / "db")}, *args)
    assert result.exit_code == 2, result.output
    assert f"--clear takes no other option ({given} given)" in result.output
    assert not (tmp_path / "db").exists()


def app_warnings(
    caplog: pytest.LogCaptureFixture, settings: Settings | None, embedder: Embedder
) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kb.app"):
        app = create_app(settings, embedder=embedder)
        close_app(app)
    return [r.getMessage() for r in caplog.records if r.name == "kb.app"]


def test_a_calibrated_threshold_over_an_explicit_min_score_is_said_at_start_up(
    tmp_path: Path,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """KB_MIN_SCORE=0.30 was set, the calibrated 0.48 applied, and nothing said so."""
    settings = Settings(chroma_path=tmp_path / "db")
    calibrated(settings, embedder, 0.48)
    said = (
        "threshold 0.48 (calibrated by kb calibrate --write; KB_MIN_SCORE=0.30 is not used; "
        "kb calibrate --clear removes it)"
    )
    monkeypatch.setenv("KB_CHROMA_PATH", str(tmp_path / "db"))
    monkeypatch.setenv("KB_MIN_SCORE", "0.3")
    assert app_warnings(caplog, None, embedder) == [said]
    assert app_warnings(caplog, Settings(), embedder) == [said]  # kb serve's own settings
    monkeypatch.delenv("KB_MIN_SCORE")
    assert app_warnings(caplog, Settings(), embedder) == []  # not set: nothing overridden
