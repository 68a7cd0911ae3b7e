"""A change log in the shared Chroma server, so every kb process sees the others' writes.

Each write logs the record ids it touches, first as *pending* (before the write) and then as
*done* (after it, with a fresh timestamp). A process polls for entries it has not seen and
re-reads those ids' current state from Chroma, so entries may be applied in any order, twice,
or late, and the copies still converge on what Chroma holds. Entries count as seen only once
their records were re-read (`seen`): a re-read that fails is tried again at the next poll. A
pending entry older than STALE_S belongs to a writer that died mid-write: the first reader to
see it removes what that write left (kb.shared_replica) and then marks it done (`settle`), so a
removal that fails is tried again at a later poll.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kb.collection import chroma_errors, chroma_write

log = logging.getLogger(__name__)

MARGIN_US = 30_000_000  # re-read this far behind the newest entry: clock skew, late commits
STALE_S = 120  # a pending entry this old lost its writer
HEARTBEAT_S = STALE_S / 4  # a write under way this long renews its pending entry's ts
RETRY_S = 0.2  # before marking a write done again
RETENTION_S = 3600  # entries older than this are pruned; a reader idle longer rebuilds
# A process prunes at its first write, then every PRUNE_EVERY writes or PRUNE_EVERY_S seconds
# (at its next write), whichever comes first: counted by writes alone, processes that each
# wrote fewer (kb load runs, restarted workers) never pruned, and the log grew for good.
PRUNE_EVERY = 200
PRUNE_EVERY_S = RETENTION_S / 4
PENDING, DONE = "pending", "done"
SETTINGS = "settings"  # an entry's kind: the collection's settings (its metadata) changed
# An entry lists at most this many characters of ids (as JSON); a write touching more is
# logged as several entries. A Chroma server refuses a request above its payload limit (about
# 40 MB here: an entry of 33 MB of ids went through, 39.6 MB was "Payload too large"), and a
# delete by filter or a restore's clear lists every record it deletes: an entry for 1.8
# million short ids, or about 75,000 of 512 characters, failed the delete.
ENTRY_CHARS = 4 * 1024 * 1024


def now_us() -> int:
    return time.time_ns() // 1000


def pieces(entry: str, ids: Sequence[str]) -> list[tuple[str, list[str]]]:
    """A write's log entries: `entry` with its ids, cut into `entry`, `entry-1`, ... where
    they exceed ENTRY_CHARS."""
    if len(json.dumps(list(ids))) <= ENTRY_CHARS:
        return [(entry, list(ids))]
    cut: list[list[str]] = [[]]
    size = 2  # the brackets
    for record_id in ids:
        grows = len(json.dumps(record_id)) + 2  # the separator
        if cut[-1] and size + grows > ENTRY_CHARS:
            cut.append([])
            size = 2
        cut[-1].append(record_id)
        size += grows
    return [(entry if k == 0 else f"{entry}-{k}", part) for k, part in enumerate(cut)]


@dataclass
class _Underway:
    """A write of this process between `begin` and `end`: its entries, and their heartbeat."""

    parts: list[tuple[str, list[str]]]
    stop: threading.Event
    beat: threading.Thread


@dataclass
class Poll:
    """What one poll of the log found: the record ids to re-read, and what `seen` records
    once they have been."""

    ids: set[str]
    fresh: dict[str, int]  # done entries not seen before -> their ts
    newest: int  # the newest done entry's ts (the cursor's next value)
    since: int  # the window the poll read: entries seen before it are forgotten
    polled: float  # when the poll began (monotonic)
    abandoned: set[str] = field(default_factory=set)  # ids of writes whose writer died
    stale: list[str] = field(default_factory=list)  # those writes' entries, for `settle`
    settings: bool = False  # another process changed the collection's settings


class ChangeLog:
    """The log collection beside the data collection: one entry per write (several for a
    write whose ids exceed ENTRY_CHARS)."""

    def __init__(self, collection: Any) -> None:
        self._log = collection
        self._origin = f"{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        self._seen: dict[str, int] = {}  # entry id -> its ts, for entries inside the window
        self._cursor = 0  # the newest ts seen
        self._polled = time.monotonic()
        self._writes = 0
        self._pruned: float | None = None  # when this process last pruned (monotonic)
        self._underway: dict[str, _Underway] = {}

    def reset(self) -> None:
        """Forget what was seen and start from now (after a full rebuild began)."""
        with self._lock:
            self._seen.clear()
            self._cursor = now_us() - MARGIN_US
            self._polled = time.monotonic()

    def begin(self, ids: Sequence[str]) -> str:
        """Log a write about to begin; a log that cannot be written fails it (the store's
        503) before anything is written."""
        entry = uuid.uuid4().hex
        parts = pieces(entry, ids)
        written: list[tuple[str, list[str]]] = []
        try:
            for piece, part in parts:
                self._put(piece, part, PENDING)  # seen by this process: applied locally
                written.append((piece, part))
        except Exception:  # no write follows: what was logged is done, not a dead writer's
            for piece, part in written:
                with contextlib.suppress(Exception):
                    self._put(piece, part, DONE)
            raise
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(parts, stop), name="kb-log-heartbeat", daemon=True
        )
        self._underway[entry] = _Underway(parts, stop, beat)
        beat.start()
        return entry

    def close(self) -> None:
        """Stop renewing the entries of writes still under way (the store is closing)."""
        for underway in list(self._underway.values()):
            underway.stop.set()

    def _heartbeat(self, parts: list[tuple[str, list[str]]], stop: threading.Event) -> None:
        """Renew a pending entry's ts every HEARTBEAT_S while its write is under way: judged
        by its first ts, a write longer than STALE_S (a large batch to a slow server) was
        taken for a dead writer's, and another host's repair deleted the chunks it had
        written so far. A writer that stops beating (killed, or paused that long) is one."""
        while not stop.wait(HEARTBEAT_S):
            for piece, part in parts:
                try:
                    self._put(piece, part, PENDING)
                except Exception:  # the next beat may reach the server; the write goes on
                    log.warning("could not renew change log entry %s", piece, exc_info=True)
            if stop.is_set():  # abandoned while this beat waited (`abandon` does not join
                with self._lock:  # it): the write is not this process's to have seen
                    for piece, _ in parts:
                        self._seen.pop(piece, None)

    def end(self, entry: str, *, reread: bool = False) -> None:
        """Mark the write done; with `reread` (our write failed, and the copies may not hold
        what it left in Chroma) this process re-reads its ids at the next poll too. Marking
        is tried twice, then given up with an error logged, not raised: the write stands in
        Chroma (a client told it failed would write again), and the other processes re-read
        its ids once the pending entry is STALE_S old."""
        underway = self._underway.pop(entry)
        underway.stop.set()  # first: a late beat must not make it pending again
        underway.beat.join()
        parts = underway.parts
        for piece, part in parts:
            self._mark_done(piece, part)
        if reread:
            with self._lock:
                for piece, _ in parts:
                    self._seen.pop(piece, None)
        self._writes += 1
        pruned = self._pruned
        if (
            pruned is None
            or self._writes % PRUNE_EVERY == 0
            or time.monotonic() - pruned > PRUNE_EVERY_S
        ):
            self.prune()

    def abandon(self, entry: str) -> None:
        """Leave a write whose outcome is unknown pending, as a dead writer's: the server did
        not answer it in time and may apply it later (kb.chroma_http), so marking it done now
        would have every process re-read its ids before it lands, and miss it for good. Its
        heartbeat stops and this process forgets it wrote it, so STALE_S after its last
        renewal every process, this one included, takes it as abandoned: the first removes
        what it left (kb.repair) and settles it, and each then re-reads its ids."""
        underway = self._underway.pop(entry)
        underway.stop.set()  # not joined: a beat in flight may itself wait out the timeout,
        with self._lock:  # and a late one only renews the entry, which stays pending anyway
            for piece, _ in underway.parts:
                self._seen.pop(piece, None)
        log.warning(
            "a write's outcome is unknown (the Chroma server did not answer it in time): "
            "change log entry %s stays pending, to be settled within %d s",
            entry,
            STALE_S,
        )

    def _mark_done(self, entry: str, ids: list[str]) -> None:
        for attempt in (1, 2):
            try:
                self._put(entry, ids, DONE)
                return
            except Exception:
                if attempt == 1:
                    time.sleep(RETRY_S)  # a reset connection is often back by then
                else:
                    log.exception(
                        "could not mark change log entry %s done; the other processes "
                        "see its write within %d s",
                        entry,
                        STALE_S,
                    )

    def settings_changed(self) -> None:
        """Log that this process changed the collection's settings (a calibrated threshold,
        say), which the other processes read when they open: they read them again at their
        next poll. A log that cannot be written is the store's 503 (the change stands)."""
        self._put(uuid.uuid4().hex, [], DONE, SETTINGS)

    def _put(self, entry: str, ids: Sequence[str], state: str, kind: str | None = None) -> None:
        ts = now_us()
        with self._lock:
            self._seen[entry] = ts
        metadata: dict[str, Any] = {"ts": ts, "state": state, "origin": self._origin}
        if kind is not None:
            metadata["kind"] = kind
        chroma_write(
            self._log.upsert,
            ids=[entry],
            embeddings=[[1.0]],
            documents=[json.dumps(list(ids))],
            metadatas=[metadata],
        )

    def changes(self) -> Poll | None:
        """The record ids other processes wrote since the last poll that was `seen`; None if
        this process may have missed entries (idle past the retention) and must rebuild."""
        with self._lock:
            polled = time.monotonic()
            if polled - self._polled > RETENTION_S / 2:
                return None
            since = self._cursor - MARGIN_US
            with chroma_errors():  # a server away is the store's 503, not a 500
                got = self._log.get(
                    where={"$or": [{"ts": {"$gte": since}}, {"state": PENDING}]},
                    include=["metadatas"],
                )
            fresh: dict[str, int] = {}
            stale, newest, settings = [], self._cursor, False
            for entry, meta in zip(got["ids"], got["metadatas"], strict=True):
                ts = int(meta["ts"])
                if meta["state"] == PENDING:
                    if entry not in self._seen and ts < now_us() - STALE_S * 1_000_000:
                        stale.append(entry)
                    continue
                newest = max(newest, ts)
                if self._seen.get(entry) != ts:
                    fresh[entry] = ts
                    settings = settings or meta.get("kind") == SETTINGS
        abandoned = self._ids(stale)
        ids = self._ids(list(fresh)) | abandoned
        return Poll(ids, fresh, newest, since, polled, abandoned, stale, settings)

    def settle(self, poll: Poll) -> None:
        """Mark the entries a poll found left pending by dead writers done, with a fresh ts,
        so every reader re-reads their ids once, as after any write. Called once what those
        writes left has been removed: until then they stay pending and are found again."""
        for entry in poll.stale:
            log.warning("change log entry %s was left pending by a dead writer", entry)
            chroma_write(self._log.update, ids=[entry], metadatas=[{"ts": now_us(), "state": DONE}])

    def seen(self, poll: Poll) -> None:
        """Mark a poll's entries seen, now that the records they name have been re-read."""
        with self._lock:
            self._polled = poll.polled
            self._cursor = max(self._cursor, poll.newest)
            self._seen.update(poll.fresh)
            self._seen = {e: ts for e, ts in self._seen.items() if ts >= poll.since}

    def _ids(self, entries: list[str]) -> set[str]:
        if not entries:
            return set()
        with chroma_errors():
            got = self._log.get(ids=entries, include=["documents"])
        return {rid for text in got["documents"] for rid in json.loads(text or "[]")}

    def prune(self) -> None:
        """Delete the done entries older than RETENTION_S (a reader idle longer rebuilds)."""
        self._pruned = time.monotonic()
        cutoff = now_us() - RETENTION_S * 1_000_000
        try:
            chroma_write(
                self._log.delete, where={"$and": [{"ts": {"$lt": cutoff}}, {"state": DONE}]}
            )
        except Exception:  # pruning is housekeeping: a failure must not fail the write
            log.exception("could not prune the change log")
