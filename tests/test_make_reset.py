"""`make reset-db`: it empties a kb store and nothing else, whatever KB_CHROMA_PATH holds."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def reset(
    path: str | None, *args: str, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "MAKE"))}
    if home is not None:
        env["HOME"] = str(home)
    if path is not None:
        env["KB_CHROMA_PATH"] = path
    return subprocess.run(
        ["make", "-s", "-C", str(ROOT), "reset-db", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def store(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "chroma.sqlite3").write_bytes(b"SQLite format 3\0")
    (folder / "segment").mkdir()
    (folder / ".gitkeep").touch()
    return folder


def test_a_path_with_a_space_empties_that_store_only(tmp_path: Path) -> None:
    """Unquoted, "/x/kb store" emptied /x/kb and ./store and left the store."""
    kept = tmp_path / "kb"
    kept.mkdir()
    (kept / "notes.txt").write_text("precious")
    target = store(tmp_path / "kb store")
    done = reset(str(target), "FORCE=1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"emptied '{target}'" in done.stdout
    assert sorted(p.name for p in target.iterdir()) == [".gitkeep"]
    assert (kept / "notes.txt").read_text() == "precious"


@pytest.mark.parametrize("blank", ["", " ", "\t "])
def test_a_blank_path_deletes_nothing(blank: str, tmp_path: Path) -> None:
    """A blank value gave find no path, and it emptied the checkout (".")."""
    done = reset(blank, "FORCE=1")
    assert done.returncode != 0
    assert "KB_CHROMA_PATH is empty: nothing deleted" in done.stdout
    assert (ROOT / "README.md").exists()


def test_a_folder_that_is_not_a_store_or_is_open_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "docs"
    other.mkdir()
    (other / "a.md").write_text("mine")
    done = reset(str(other), "FORCE=1")
    assert done.returncode != 0
    assert "holds no chroma.sqlite3, so it is not a kb store" in done.stdout
    assert (other / "a.md").exists()
    target = store(tmp_path / "db")
    assert "run 'make reset-db FORCE=1'" in reset(str(target)).stdout
    with (target / ".kb.lock").open("w") as held:  # as kb serve holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        done = reset(str(target), "FORCE=1")
    assert done.returncode != 0
    assert "a kb process has" in done.stdout
    assert (target / "chroma.sqlite3").exists()
    assert reset(str(target), "FORCE=1").returncode == 0
    assert not (target / "chroma.sqlite3").exists()
    missing = reset(str(tmp_path / "none"), "FORCE=1")
    assert missing.returncode == 0
    assert "is not a folder: nothing to delete" in missing.stdout


def test_a_leading_tilde_is_expanded_as_kb_expands_it(tmp_path: Path) -> None:
    """reset-db said '~/kb db' was not a folder, exit 0, and deleted nothing: kb's store was
    $HOME/kb db (review helper 91)."""
    home = tmp_path / "home"
    target = store(home / "kb db")
    done = reset("~/kb db", "FORCE=1", home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"emptied '{target}'" in done.stdout
    assert sorted(p.name for p in target.iterdir()) == [".gitkeep"]
    store(tmp_path / "open")  # and the checks hold on the expanded path
    with (tmp_path / "open" / ".kb.lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        refused = reset("~/../open", "FORCE=1", home=home)
    assert refused.returncode != 0
    assert "a kb process has" in refused.stdout
    assert (tmp_path / "open" / "chroma.sqlite3").exists()


def test_a_symlinked_store_folder_is_followed(tmp_path: Path) -> None:
    """reset-db said a symlinked store folder was empty already, exit 0, and deleted nothing
    (review helper 91). Links inside the store are removed, not followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("precious")
    real = store(tmp_path / "real")
    (real / "elsewhere").symlink_to(outside)
    link = tmp_path / "link"
    link.symlink_to(real)
    done = reset(str(link), "FORCE=1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"emptied '{link}'" in done.stdout
    assert sorted(p.name for p in real.iterdir()) == [".gitkeep"]
    assert link.is_symlink()
    assert (outside / "notes.txt").read_text() == "precious"
    other = tmp_path / "other"  # behind a link, a folder that is no store is refused still
    other.symlink_to(outside)
    refused = reset(str(other), "FORCE=1")
    assert refused.returncode != 0
    assert "holds no chroma.sqlite3, so it is not a kb store" in refused.stdout
    assert (outside / "notes.txt").exists()
