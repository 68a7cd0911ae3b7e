"""The kb command line as a process of its own: a reader that stops reading early, a Ctrl-C
while it starts, a warning kb logs (no test here has configured logging in it)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from kb.config import Settings
from kb.schemas import DocumentIn
from kb.store import KnowledgeStore


def kb_process(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    """`kb ARGS` in a process of its own, both output streams piped to this one."""
    return subprocess.Popen(
        [sys.executable, "-m", "kb", *args],
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.fixture
def large(tmp_path: Path, embedder) -> dict[str, str]:
    """A store whose export (and backup) is far larger than a pipe holds (64 KiB): 40
    documents of 30,000 random characters of metadata each, about 1.2 MB, so kb is still
    writing when the reader goes."""
    settings = Settings(chroma_path=tmp_path / "db", collection="cli_streams")
    store = KnowledgeStore.open(settings, embedder, searching=False)
    noise = [{"noise": secrets.token_hex(15_000)} for _ in range(40)]
    store.add([DocumentIn(id=f"d{i}", text=f"note {i}", metadata=m) for i, m in enumerate(noise)])
    store.close()
    return {"KB_CHROMA_PATH": str(settings.chroma_path), "KB_COLLECTION": settings.collection}


@pytest.mark.parametrize("args", [["export"], ["backup", "-"]])
def test_a_reader_that_stops_early_ends_the_command_quietly_with_141(
    large: dict[str, str], args: list[str]
) -> None:
    """`kb export | head -1` said "Error: cannot write standard output: Broken pipe", exit 1,
    as did `kb backup - | head -c 100` ("backup failed: ..."); a closed pipe is normal shell
    use, and it now ends as `seq 1000000 | head -1` does: nothing said, 141 (128 + SIGPIPE)
    (review helper 91)."""
    with kb_process(large, *args) as command:
        assert command.stdout is not None
        assert command.stderr is not None
        assert command.stdout.readline()  # what `head -1` reads, then it exits
        command.stdout.close()
        err = command.stderr.read().decode()
        assert command.wait(timeout=120) == 141, err
    assert err == ""


@pytest.mark.usefixtures("ctrl_c_raises")  # a SIGINT the suite ignores, kb would too
def test_a_ctrl_c_while_kb_loads_its_modules_is_one_line_and_130(tmp_path: Path) -> None:
    """A Ctrl-C in the second or so kb takes to import its modules printed the traceback of
    the import under way (review helper 91). The Ctrl-C is made to come then, always: a
    numpy found first on PYTHONPATH sends this process SIGINT as kb imports it."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "numpy.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGINT)\n")
    path = os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path, "KB_CHROMA_PATH": str(tmp_path / "db")}
    with kb_process(env, "--version") as command:
        out, err = command.communicate(timeout=120)
    assert (command.returncode, out, err.decode()) == (130, b"", "\nkb interrupted\n")


def test_a_damaged_keyword_index_is_a_kb_warning_line(tmp_path: Path, embedder) -> None:
    """The warning that the index was moved aside and rebuilt was the bare message Python's
    last-resort handler writes, not a `kb: warning:` line as the CLI's others (review
    helper 91)."""
    settings = Settings(chroma_path=tmp_path / "db", collection="cli_streams")
    store = KnowledgeStore.open(settings, embedder, searching=False)
    store.add([DocumentIn(id="a", text="A note on trees")])
    store.close()
    index = settings.chroma_path / "cli_streams.keyword.sqlite3"
    index.write_bytes(b"not a database" * 512)
    env = {"KB_CHROMA_PATH": str(settings.chroma_path), "KB_COLLECTION": settings.collection}
    with kb_process(env, "export") as command:
        out, err = command.communicate(timeout=120)
    assert command.returncode == 0, err
    assert out.decode().splitlines() == ['{"id": "a", "text": "A note on trees"}']
    said = re.escape(
        f"kb: warning: keyword index {index} is damaged (file is not a database): moved to {index}"
    )
    assert re.fullmatch(rf"{said}\.damaged-[0-9-]+, rebuilt\nexported 1 documents\n", err.decode())
