"""The copies of a collection on a Chroma server that other processes write to (kb.replica
has what both store modes share): a private keyword index, rebuilt when the process starts
and then kept in step through the change log (kb.changes), with the repair of what dead
writers left (kb.repair)."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kb.changes import ChangeLog, Poll
from kb.chroma_http import timed_out_writes
from kb.collection import RecordCollection
from kb.config import LOG_SUFFIX
from kb.errors import KBError
from kb.filters import CompiledFilter
from kb.lock import READ_WAIT_S, WriteLock
from kb.logs import Thinned
from kb.mirror import Mirror
from kb.records import DOC, Record, doc_id_of
from kb.repair import survey
from kb.replica import Apply, Replica

log = logging.getLogger(__name__)
SCRATCH_PREFIX = "kb-replica-"  # a process's copies, in the system's temporary folder
OWNER = "owner.lock"  # in each: locked by the process using it, for as long as it lives
WARN_EVERY_S = 60.0  # a change log that cannot be read is logged at most this often
HUNG_S = 10.0  # a poll of the change log running this long: the server is not answering
REPAIR_WAIT_S = (1.0, 60.0)  # after a failed repair, the pause before the next (doubling)
LOCK_WAIT_S = READ_WAIT_S  # once started, a poll's wait for the host's write lock (< HUNG_S)


def scratch_folder() -> tuple[Path, int]:
    """A new folder for this process's copies, and the descriptor of the lock it holds on
    it until it closes the store or dies; first, the folders of processes that died (killed,
    their store never closed) are removed: each held every record's text and vector, and
    every restart after a crash left one more."""
    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{SCRATCH_PREFIX}*"):
        _remove_if_orphaned(folder)
    folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    # locked before it has its name: a sweep never finds the owner file unlocked
    fd, made = tempfile.mkstemp(dir=folder)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(made, folder / OWNER)
    return folder, fd


def _remove_if_orphaned(folder: Path) -> None:
    """Remove a scratch folder whose owner lock no process holds. One without an owner file
    (made by an older kb, or being made) or not this user's to read is left."""
    try:
        fd = os.open(folder / OWNER, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # its process is alive
        return
    finally:
        os.close(fd)
    log.info("removing %s, left by a kb process that did not close its store", folder)
    shutil.rmtree(folder, ignore_errors=True)


class SharedReplica(Replica):
    """Copies of a collection on a Chroma server that other processes write to: a private
    index, rebuilt when the process starts and then kept in step through the change log."""

    def __init__(self, records: RecordCollection, dim: int, writes: WriteLock) -> None:
        self._scratch, self._owner = scratch_folder()
        super().__init__(records, dim, self._scratch / "keyword.sqlite3", writes)
        self.changes = ChangeLog(records.side_collection(LOG_SUFFIX))
        self._polls = threading.Lock()
        self._last_poll = -1.0  # when the newest poll began (monotonic)
        self._polling_since: float | None = None  # when the running poll began
        self._counts_warnings = Thinned(WARN_EVERY_S)  # a failed read for counts: not per scrape
        self._built = False
        self._started = False  # until then a poll waits for the host's write lock unbounded
        self._repair_after = 0.0  # no repair before this (monotonic): one failed
        self._repair_failures = 0  # in a row
        # record ids of this process's writes under way (how many writes each), and those of
        # them a poll re-read meanwhile: another writer's version, read from Chroma after
        # ours may have landed, which our own records must not overwrite (`_apply_own`)
        self._own: Counter[str] = Counter()
        self._overtaken: set[str] = set()

    def start(self, in_memory: bool = True) -> None:
        """As Replica.start, except that a process that will not search (kb load, export,
        backup, calibrate against a server) builds no copies now: that read every record
        from the server under the host's write lock (1.5 s at 10k records, the service's
        writes waiting meanwhile), for copies it never reads. The first search, if one
        comes, builds them (`_poll`); its writes are logged for the others all the same."""
        if in_memory:
            super().start(in_memory)
        self._started = True

    def close(self) -> None:
        self.changes.close()
        super().close()
        shutil.rmtree(self._scratch, ignore_errors=True)
        os.close(self._owner)

    def catch_up(self, wait: bool = True) -> None:
        """Poll the change log (one small read of it) and re-read what others wrote. Callers
        share a poll: one that began after they asked answers them all. Without `wait`, a
        poll already running is enough and nothing is awaited."""
        asked = time.monotonic()
        if not self._polls.acquire(blocking=wait):
            self._note_running_poll(asked)
            return
        try:
            if self._last_poll >= asked:  # a poll that began after we asked has finished
                return
            before, self._last_poll = self._last_poll, time.monotonic()
            self._polling_since = self._last_poll
            try:
                self._poll()
            except BaseException as exc:  # callers waiting for this poll poll again
                self._last_poll = before
                if isinstance(exc, Exception):  # every poll's outcome, searches' too
                    self.unreachable = exc.message if isinstance(exc, KBError) else f"{exc!r}"
                raise
            finally:
                self._polling_since = None
            self.unreachable = None
        finally:
            self._polls.release()

    def _note_running_poll(self, now: float) -> None:
        """A poll another caller runs has had no answer from the server for HUNG_S: it does
        not answer (chromadb's HTTP client waits for ever). /health said "ok" meanwhile, every
        search hanging behind that poll (review helper 77). A long poll whose reads come back
        (a rebuild of the copies, page by page) is not one (review helper 78)."""
        started = self._polling_since
        if started is None:
            return
        since = max(started, self.records.answered_at)
        if now - since > HUNG_S:
            self.unreachable = f"the Chroma server has not answered a read for {now - since:.0f} s"

    def _poll(self) -> None:
        poll = self.changes.changes() if self._built and not self._behind else None
        if poll is None:  # a write of ours applies to the copies once they are built
            with self._host_lock("this process's copies of the collection must be rebuilt"):
                # a rebuild that fails leaves the next poll rebuilding: the log is reset now,
                # and what this process missed before is read by a rebuild only
                self._behind = True
                self.changes.reset()  # before reading: writes during the rebuild are re-read
                if self._built:  # idle past the log's retention: settings changes missed too
                    self.records.reread_settings()
                self.rebuild(0)
                self._built = True
            return
        if poll.settings:
            self.records.reread_settings()
        if poll.ids:
            self._refresh(sorted(poll.ids))
        if poll.stale:
            self._settle(poll)
        self.changes.seen(poll)  # only now: a failed re-read is tried again next time

    def _settle(self, poll: Poll) -> None:
        """Remove what dead writers left, then mark their entries done. This is housekeeping
        the search does not need (a tail stays matchable meanwhile, as during STALE_S), so a
        failure fails no search: it is logged, the entries stay pending, and the repair is
        tried again at the first poll after a pause that doubles with each failure."""
        if time.monotonic() < self._repair_after:
            return
        try:
            if poll.abandoned:
                self._repair(poll.abandoned)
            self.changes.settle(poll)
        except Exception:
            low, high = REPAIR_WAIT_S
            wait = min(low * 2 ** min(self._repair_failures, 16), high)
            self._repair_failures += 1
            self._repair_after = time.monotonic() + wait
            log.warning(
                "could not remove what a dead writer left in %d document(s); trying again in "
                "%.0f s",
                len({doc_id_of(i) for i in poll.abandoned}),
                wait,
                exc_info=True,
            )
            return
        self._repair_failures = 0

    def _repair(self, ids: set[str]) -> None:
        """The documents a dead writer was writing (its change log entry left pending):
        delete the chunks their first chunk no longer counts (kb.repair). Chunks without a
        first chunk stay: another host may be writing that document in parts right now."""
        by_doc = CompiledFilter(where={DOC: {"$in": sorted({doc_id_of(i) for i in ids})}})
        with self._host_lock("removing what a dead writer left"):
            found = survey(self.records.get(flt=by_doc, texts=False))
            self._remove(found, found.leftovers)

    @contextmanager
    def _host_lock(self, needs: str) -> Iterator[None]:
        """The host's write lock, for a rebuild of the copies or a repair. Once the store has
        started, a poll (a search's, /health's) waits for it at most LOCK_WAIT_S, then raises
        StoreBusy saying what `needs` it: it waited as long as another write held the lock
        (a backup, restore or kb load of another process, a write the server does not
        answer), and the searches behind it as long (review helper 97). Start-up waits as
        long as it takes."""
        busy = (
            f"{needs}, which waits for the host's write lock: another write has held it for "
            f"more than {LOCK_WAIT_S:g} s (a backup, restore or kb load, or a write the Chroma "
            "server does not answer); retry later"
        )
        with self._writes.within(LOCK_WAIT_S if self._started else None, busy):
            yield

    def _refresh(self, ids: list[str]) -> None:
        """Copy these records' current state from Chroma (present: upsert, gone: delete).
        Fetch and apply hold the lock, so no apply of ours lands between them; ids a write
        of ours is writing are marked overtaken (`_apply_own`)."""
        with self._lock:
            found = self.records.get(ids, embeddings=True)
            present = {r.id for r in found}
            self.apply(found, [i for i in ids if i not in present], 0)
            self._overtaken.update(i for i in ids if i in self._own)

    @contextmanager
    def writing(self, ids: Sequence[str]) -> Iterator[Apply]:
        entry = self.changes.begin(ids)
        with self._lock:
            self._own.update(ids)
        failed, unanswered = True, timed_out_writes()
        try:
            yield self._apply_own
            failed = False
        finally:  # a failed write is announced too: every process re-reads whatever it left
            with self._lock:
                self._own.subtract(ids)
                done = {i for i in ids if self._own[i] <= 0}
                for record_id in done:
                    del self._own[record_id]
                self._overtaken -= done
            if failed and timed_out_writes() != unanswered:  # it may land later
                self.changes.abandon(entry)
            else:
                self.changes.end(entry, reread=failed)

    def _apply_own(self, upserted: Sequence[Record], deleted: Sequence[str]) -> None:
        """Apply a write of ours once Chroma has it, except to the records a poll re-read
        while it was under way: another host may have written them after ours landed, so
        they are read from Chroma again instead (ours, applied late, would have replaced
        the newer version in the copies for good, its change log entry already seen)."""
        if not self._built:  # no copies yet: their build reads this write from Chroma
            return
        with self._lock:
            overtaken = self._overtaken & {*(r.id for r in upserted), *deleted}
            if overtaken:
                upserted = [r for r in upserted if r.id not in overtaken]
                deleted = [i for i in deleted if i not in overtaken]
            self.apply(upserted, deleted, 0)
            if overtaken:
                self._refresh(sorted(overtaken))

    def settings_changed(self) -> None:
        self.changes.settings_changed()

    def current_mirror(self) -> Mirror | None:
        return self.mirror

    def mirror_to_read(self) -> Mirror | None:
        # Only searches polled the log, so a worker that never searched reported its start-up
        # counts forever. No wait: a backup reads the count holding the write lock, which a
        # running poll's rebuild may be waiting for (waiting here would deadlock them).
        if self.mirror is None:  # not loaded (or not kept): the caller reads Chroma itself
            return None
        self.catch_up_quietly()
        return self.mirror

    def catch_up_quietly(self) -> None:
        """A poll, unless one is running; its outcome (or a running one's hang) is what
        `unreachable` says: a skipped poll cleared an earlier failure, and /health said
        "ok" of a server every search found away (review helper 77: 41% of probes)."""
        try:
            self.catch_up(wait=False)
        except Exception:  # /metrics must still answer while the server is away
            added = self._counts_warnings.take()
            if added is not None:
                log.warning(
                    "could not read the change log; counts and settings may be behind%s",
                    added,
                    exc_info=True,
                )
