"""Settings from the environment: a KB_* variable no setting reads is warned of, not dropped
without a word; KB_BACKEND=auto becomes the backend it picks."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kb.app import close_app, create_app
from kb.cli import main
from kb.config import Settings, is_kb_variable, unknown_variables
from kb.cpu import cpu_info
from kb.embeddings import Embedder
from kb.encoders import openvino_session
from tests.conftest import CPUINFO


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


@pytest.mark.parametrize(("pays", "picked"), [(True, "openvino-bf16"), (False, "onnx")])
def test_auto_backend_becomes_what_it_picks(
    pays: bool, picked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KB_BACKEND=auto: bf16 where it pays, else fp32 ONNX; every reader sees the pick."""
    monkeypatch.setattr(openvino_session, "bf16_pays", lambda: pays)
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


@pytest.mark.parametrize(
    ("amx", "bf16_units", "pays"),
    [(True, True, True), (False, True, False), (True, False, False), (False, False, False)],
)
def test_bf16_pays_only_with_amx(
    amx: bool, bf16_units: bool, pays: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AVX512-BF16 alone runs bf16, slower than fp32 ONNX (494 against 804 short texts/s on
    an Emerald Rapids guest without AMX): auto picks bf16 only where the CPU lists AMX."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(vendor="GenuineIntel", extra=" amx_bf16" if amx else ""))
    monkeypatch.setattr(openvino_session, "cpu_info", functools.partial(cpu_info, cpuinfo))
    monkeypatch.setattr(openvino_session, "bf16_available", lambda: bf16_units)
    openvino_session.bf16_pays.cache_clear()
    try:
        assert openvino_session.bf16_pays() is pays
        monkeypatch.setenv("KB_BACKEND", "auto")
        assert Settings().backend == ("openvino-bf16" if pays else "onnx")
    finally:
        openvino_session.bf16_pays.cache_clear()


def test_auto_picks_bf16_here_exactly_when_openvino_finds_bf16_units_and_amx() -> None:
    ov = pytest.importorskip("openvino")
    capable = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    amx = "amx_bf16" in cpu_info().flags
    assert Settings(backend="auto").backend == ("openvino-bf16" if capable and amx else "onnx")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KB_PORT": "abc"}, "KB_PORT: Input should be a valid integer"),
        ({"KB_MAX_TOP_K": "5000"}, "KB_MAX_TOP_K: Input should be less than or equal to 1000"),
        ({"KB_LOG_LEVEL": "verbose"}, "KB_LOG_LEVEL: must be one of DEBUG, INFO, WARNING"),
        ({"KB_TOP_K": "50", "KB_MAX_TOP_K": "10"}, "KB_TOP_K (50) exceeds KB_MAX_TOP_K (10)"),
        ({"KB_ONNX_CACHE": ""}, "KB_ONNX_CACHE: must not be empty"),
    ],
)
@pytest.mark.parametrize("command", [["serve"], ["export"], ["load", "-"], ["duplicates"]])
def test_an_invalid_setting_is_one_error_line_for_every_command(
    tmp_path: Path, env: dict[str, str], message: str, command: list[str]
) -> None:
    """Not pydantic's 31-line traceback (nor, for the log level, a ValueError once serving)."""
    env = {"KB_CHROMA_PATH": str(tmp_path / "db"), **env}
    result = CliRunner().invoke(main, command, env=env, input="")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {message}")
    assert result.stderr.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "db").exists()  # refused before any store was opened


def test_a_settings_error_never_shows_the_value_given() -> None:
    """A value may be a key: KB_API_KEYS is invalid beside a bad KB_PORT, its value unsaid."""
    env = {"KB_PORT": "abc", "KB_API_KEYS": "write:secretsecretsecret1", "KB_TOP_K": "x"}
    result = CliRunner().invoke(main, ["export"], env=env)
    assert result.exit_code == 1
    assert "secretsecret" not in result.output
    assert "abc" not in result.output


def test_log_levels_are_the_standard_names_in_any_case() -> None:
    assert Settings(log_level=" warning").log_level == "WARNING"
    assert Settings(log_level="Debug").log_level == "DEBUG"
    assert Settings(log_level="warn").log_level == "WARNING"  # the alias logging takes


def test_the_onnx_cache_expands_a_tilde_as_the_model_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'~/x' was a literal './~/x' folder; an empty value was '.', the working directory."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KB_ONNX_CACHE", "~/onnx")
    assert Settings().onnx_cache == tmp_path / "onnx"
    monkeypatch.setenv("KB_ONNX_CACHE", " ")
    with pytest.raises(ValueError, match="must not be empty"):
        Settings()


def test_the_store_path_expands_a_tilde_and_is_never_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An empty KB_CHROMA_PATH made the working directory the store; '~/x' a './~/x'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KB_CHROMA_PATH", "~/db")
    assert Settings().chroma_path == tmp_path / "db"
    for empty in ("", " "):
        monkeypatch.setenv("KB_CHROMA_PATH", empty)
        with pytest.raises(ValueError, match="must not be empty"):
            Settings()


def test_an_empty_store_path_is_one_line_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    source = tmp_path / "docs.jsonl"
    source.write_text('{"text": "a note"}\n')
    result = CliRunner().invoke(main, ["load", str(source)], env={"KB_CHROMA_PATH": ""})
    assert result.exit_code == 1
    assert "Error: KB_CHROMA_PATH: must not be empty" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]
