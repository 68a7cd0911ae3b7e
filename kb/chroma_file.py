"""Chroma's own SQLite file in an embedded store's folder, read directly and read-only: what
Chroma's client does not say (a folder's collections before it is opened, a collection's
segment ids). Light: no chromadb or numpy import."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
CHROMA_FILE = "chroma.sqlite3"  # what an embedded Chroma store always holds


def query(
    folder: Path, sql: str, params: tuple[Any, ...] = (), *, unread: str | None = None
) -> list[tuple[Any, ...]] | None:
    """The rows `sql` reads from `folder`'s Chroma file; None when there is none or it cannot
    be read as Chroma's (not a database, a schema of another version), which is logged as a
    warning naming the file and the error when `unread` says what is then left undone. A
    relative folder is taken from the working directory (a file URI has no relative form:
    the default KB_CHROMA_PATH is relative, review helper 98)."""
    path = Path(folder).expanduser().absolute() / CHROMA_FILE
    if not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            return db.execute(sql, params).fetchall()
    except sqlite3.Error as exc:
        if unread is not None:
            log.warning("could not read %s (%s): %s", path, exc, unread)
        return None
