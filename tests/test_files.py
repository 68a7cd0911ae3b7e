"""kb.files.replacing: a file written whole or not at all, never more readable than it was."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kb.files import replacing


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask_022")
@pytest.mark.parametrize(("before", "during"), [(0o600, 0o600), (0o640, 0o640), (None, 0o644)])
def test_the_partial_file_has_the_destinations_mode_from_the_start(
    tmp_path: Path, before: int | None, during: int
) -> None:
    dest = tmp_path / "secret.jsonl"
    if before is not None:
        dest.write_text("old\n")
        dest.chmod(before)
    with replacing(dest) as partial:
        # before a byte is written: it was made at the first write, 0644, and held a 0600
        # file's data readable by every user until the rename
        assert partial.is_file()
        assert mode(partial) == during
        partial.write_text("new\n")
        assert mode(partial) == during
    assert dest.read_text() == "new\n"
    assert mode(dest) == during
    assert list(tmp_path.iterdir()) == [dest]


@pytest.mark.usefixtures("umask_022")
def test_a_read_only_destination_is_replaced_and_keeps_its_mode(tmp_path: Path) -> None:
    dest = tmp_path / "kb.gz"
    dest.write_text("old\n")
    dest.chmod(0o444)
    with replacing(dest) as partial:
        assert mode(partial) == 0o644  # its owner writes it
        partial.write_text("new\n")
    assert dest.read_text() == "new\n"
    assert mode(dest) == 0o444


def test_a_leftover_partial_of_the_same_name_is_replaced(tmp_path: Path) -> None:
    dest = tmp_path / "out.jsonl"
    leftover = tmp_path / f"out.jsonl.{os.getpid()}.partial"  # a killed process's, same pid
    leftover.write_text("stale\n")
    leftover.chmod(0o666)
    with replacing(dest) as partial:
        assert partial == leftover
        assert partial.read_text() == ""
        partial.write_text("new\n")
    assert dest.read_text() == "new\n"
    assert not leftover.exists()
