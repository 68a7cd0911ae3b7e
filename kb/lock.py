"""The store's locks: one process per embedded store (an exclusive file lock on its
directory), and the write lock that serializes a store's writes."""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from kb.errors import ConfigError, StoreUnavailable

LOCK_FILE = ".kb.lock"
# in the folder of `kb cluster`'s Chroma server (kb.cluster_folder.claim): no embedded store
CLUSTER_MARK = ".kb-cluster"
# a bounded wait for another process's write tries the file lock again after these pauses
MIN_PAUSE_S, MAX_PAUSE_S = 0.001, 0.05


class StoreLocked(ConfigError):
    """The store is open in another process: `situation` says so; the message adds what to
    do (stop it, or go through its API)."""

    status = 409
    code = "store_locked"
    ADVICE = "Stop that process, or go through its API (kb load --url, kb backup --url)."

    def __init__(self, directory: Path, holder: str) -> None:
        self.holder = holder
        self.situation = (
            f"the store at {directory} is open in {holder}; an embedded store takes one "
            "process at a time."
        )
        super().__init__(f"{self.situation} {self.ADVICE}")


class ClusterFolder(ConfigError):
    """An embedded store opened in the folder of `kb cluster`'s Chroma server: its writes
    would not be announced to the cluster's workers, nor the cluster's to its copies."""

    def __init__(self, directory: Path) -> None:
        super().__init__(
            f"{directory} (KB_CHROMA_PATH) holds the data of kb cluster's Chroma server "
            f"(it has {CLUSTER_MARK}), not an embedded store: run `kb cluster --path "
            f"{directory}` and go through it (KB_CHROMA_URL, or --url); to move the data, "
            "kb backup through it and kb restore into an embedded store"
        )


class StoreLock:
    """Held while a process has the store open; released on close or when the process dies.
    `cluster`: held by `kb cluster` for its Chroma server's folder, which any other holder
    (an embedded store) is refused."""

    def __init__(self, directory: Path, *, cluster: bool = False) -> None:
        if not cluster and (directory / CLUSTER_MARK).exists():
            raise ClusterFolder(directory)
        self.path = directory / LOCK_FILE
        self._file: TextIO | None = _open(self.path, "--path" if cluster else "KB_CHROMA_PATH")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise StoreLocked(directory, holder) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


def _open(path: Path, setting: str) -> TextIO:
    """The lock file, made with the store's directory when missing. A KB_CHROMA_PATH no
    store can live in (a regular file, a folder kb may not write) is a ConfigError naming
    it, which the command line and kb serve show in one line, not as a traceback."""
    directory = path.parent
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return path.open("a+", encoding="utf-8")
    except FileExistsError:  # mkdir's word for a file where the directory should be
        problem = "it is a file, not a directory"
    except OSError as exc:  # no permission, a parent that is a file, a read-only disk
        problem = exc.strerror or str(exc)
    raise ConfigError(f"cannot open the store at {directory} ({setting}): {problem}")


READ_WAIT_S = 5.0  # a read's wait for a shared store's write lock (kb.store, kb.shared_replica)


class StoreBusy(StoreUnavailable):
    """A write waited past its bound for the write lock another write holds (on a Chroma
    server that does not answer it, each write queued behind it waited out the ones before
    it: the k-th answered after about k x KB_CHROMA_WRITE_TIMEOUT). Nothing was sent."""

    code = "store_busy"


class WriteLock:
    """The store's write lock: a re-entrant thread lock, plus (for a shared server) a file
    lock that serializes the writes of every kb process on this host.

    `with lock:` waits as long as it takes (a start-up's rebuild, close). `lock.turn()` waits
    at most `wait` seconds in all (None: as long as it takes), then raises StoreBusy: the
    bound of a request's write, so that a host's writes queued behind one the Chroma server
    does not answer are each answered within their own wait and write timeouts."""

    def __init__(self, path: Path | None = None, wait: float | None = None) -> None:
        self._thread = threading.RLock()
        self._path = path
        self._wait = wait
        self._fd: int | None = None
        self._depth = 0

    def __enter__(self) -> WriteLock:
        self._acquire(None)
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None
        self._thread.release()

    @contextmanager
    def turn(self, read: bool = False) -> Iterator[WriteLock]:
        """The lock, waited for at most `wait` seconds (StoreBusy past them); a `read` (a
        document read again whole under the lock) at most READ_WAIT_S of them."""
        wait = self._wait if self._wait is None or not read else min(self._wait, READ_WAIT_S)
        why = "KB_CHROMA_WRITE_TIMEOUT: " if wait == self._wait else ""
        busy = (
            ""
            if wait is None
            # never raised without a bound
            else (
                f"another write has held the store's write lock for more than {wait:g} s ({why}the "
                "Chroma server may not be answering it, or a backup or restore is under way); this "
                "request changed nothing: retry it later"
            )
        )
        with self.within(wait, busy):
            yield self

    @contextmanager
    def within(self, wait: float | None, busy: str) -> Iterator[WriteLock]:
        """The lock, waited for at most `wait` seconds (None: as long as it takes), then
        StoreBusy(`busy`): the one bounded wait of a request's write, a read (`turn`) and a
        shared store's poll (kb.shared_replica)."""
        if not self._acquire(wait):
            raise StoreBusy(busy)
        try:
            yield self
        finally:
            self.__exit__()

    def _acquire(self, wait: float | None) -> bool:
        deadline = None if wait is None else time.monotonic() + wait
        if not self._thread.acquire(timeout=-1 if wait is None else wait):
            return False
        try:
            if self._path is not None and self._depth == 0:
                fd = _lock_file(self._path)
                try:
                    locked = _flock(fd, deadline)
                except BaseException:
                    os.close(fd)
                    raise
                if not locked:
                    os.close(fd)
                    self._thread.release()
                    return False
                self._fd = fd
        except BaseException:
            self._thread.release()
            raise
        self._depth += 1
        return True

    @contextmanager
    def this_process(self) -> Iterator[None]:
        """Held while no write of this process runs (the thread lock alone: another process's
        write on the host is not waited for)."""
        with self._thread:
            yield


def _flock(fd: int, deadline: float | None) -> bool:
    """Take the file lock, by `deadline` (time.monotonic) if one is given: flock has no
    timeout, so it is tried again after pauses that double up to MAX_PAUSE_S."""
    if deadline is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    pause = MIN_PAUSE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(pause, left))
            pause = min(pause * 2, MAX_PAUSE_S)


def _lock_file(path: Path) -> int:
    """The write lock's file, opened for reading (a flock needs no more), made when missing.
    In a shared folder such as /tmp another user's file opens for reading, where creating
    or writing it is refused (Linux's protected_regular)."""
    try:
        try:
            return os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError(
            f"cannot open the write lock {path} (KB_LOCK_DIR): {exc.strerror or exc}"
        ) from exc
