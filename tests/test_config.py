"""Settings from the environment: a KB_* variable no setting reads is warned of, not dropped
without a word; KB_BACKEND=auto becomes the backend it picks."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb.app import close_app, create_app
from kb.cli import main
from kb.config import Settings, is_kb_variable, unknown_variables
from kb.embeddings import Embedder
from kb.encoders import openvino_session


def test_unknown_variables_name_the_nearest_setting() -> None:
    environ = {
        "KB_ENCODER_LANE": "1",  # misspelt: the nearest setting is named
        "kb_backend": "onnx",  # a setting in another case is read, so not reported
        "KB_CHROMA_PATH": "db",
        "KB_API_KEY": "k",  # the CLI's --api-key reads it
        "KB_SOMETHING_ELSE": "x",  # nothing near
        "PATH": "/bin",
        "MY_KB_THING": "y",
    }
    assert unknown_variables(environ) == [
        "KB_ENCODER_LANE is not a kb setting and is ignored (did you mean KB_ENCODER_LANES?)",
        "KB_SOMETHING_ELSE is not a kb setting and is ignored",
    ]
    assert unknown_variables({f"KB_{name.upper()}": "" for name in Settings.model_fields}) == []


def test_a_kb_variable_is_one_the_settings_read_in_any_case(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The test suite's and live services' clean-up drop what this matches, so it must match
    what pydantic-settings reads: a lowercase kb_top_k sets top_k."""
    monkeypatch.setenv("kb_top_k", "1")
    assert Settings().top_k == 1
    assert [is_kb_variable(name) for name in ("kb_top_k", "KB_TOP_K", "Kb_x")] == [True] * 3
    assert not any(is_kb_variable(name) for name in ("KBTOP_K", "XKB_TOP_K", "PYTHONPATH"))


def test_the_cli_warns_of_a_misspelt_variable_and_goes_on(tmp_path: Path) -> None:
    env = {"KB_CHROMA_PATH": str(tmp_path / "db"), "KB_COLECTION": "mine"}
    result = CliRunner().invoke(main, ["load", "-"], input='{"text": "A note."}\n', env=env)
    assert result.exit_code == 0, result.output
    assert (
        "kb: warning: KB_COLECTION is not a kb setting and is ignored "
        "(did you mean KB_COLLECTION?)" in result.stderr
    )
    assert "added 1," in result.stderr  # it went on


def test_an_app_built_from_the_environment_logs_them(
    tmp_path: Path,
    embedder: Embedder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("KB_CHROMA_PATH", str(tmp_path / "db"))
    monkeypatch.setenv("KB_MIN_SCORES", "0.9")
    with caplog.at_level(logging.WARNING, logger="kb.app"):
        app = create_app(embedder=embedder)
        close_app(app)
    warned = [r.getMessage() for r in caplog.records if r.name == "kb.app"]
    assert warned == [
        "KB_MIN_SCORES is not a kb setting and is ignored (did you mean KB_MIN_SCORE?)"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="kb.app"):  # settings given: the caller's
        app = create_app(Settings(chroma_path=tmp_path / "db2"), embedder=embedder)
        close_app(app)
    assert not [r for r in caplog.records if r.name == "kb.app"]


@pytest.mark.parametrize(("available", "picked"), [(True, "openvino-bf16"), (False, "onnx")])
def test_auto_backend_becomes_what_it_picks(
    available: bool, picked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KB_BACKEND=auto: bf16 where it can run, else fp32 ONNX; every reader sees the pick."""
    monkeypatch.setattr(openvino_session, "bf16_available", lambda: available)
    monkeypatch.setenv("KB_BACKEND", "auto")
    assert Settings().backend == picked
    assert Settings(backend="auto").backend == picked
    assert Settings(backend="onnx-int8").backend == "onnx-int8"  # a named one is kept


def test_bf16_is_unavailable_without_the_openvino_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    openvino_session.bf16_available.cache_clear()
    try:
        assert openvino_session.bf16_available() is False
    finally:
        openvino_session.bf16_available.cache_clear()


def test_auto_picks_bf16_here_exactly_when_openvino_finds_bf16_units() -> None:
    ov = pytest.importorskip("openvino")
    capable = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert Settings(backend="auto").backend == ("openvino-bf16" if capable else "onnx")
