"""One process per embedded store: an exclusive file lock on its directory."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TextIO

from kb.errors import ConfigError

LOCK_FILE = ".kb.lock"


class StoreLocked(ConfigError):
    status = 409
    code = "store_locked"


class StoreLock:
    """Held while a process has the store open; released on close or when the process dies."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_FILE
        self._file: TextIO | None = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise StoreLocked(
                f"the store at {directory} is open in {holder}; an embedded store takes one "
                "process at a time. Stop that process, or go through its API (kb load --url, "
                "kb backup --url)."
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
