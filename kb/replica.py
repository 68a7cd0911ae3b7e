"""Local copies of the collection's records, kept in step with Chroma: the keyword index
(BM25, on disk) and the in-memory mirror (vectors and metadata, for exact filtered search).

Chroma is the source of truth. An embedded store has one writer, this process: every write
bumps a generation number in the collection *before* it touches Chroma, and the copies record
the generation they applied, so a crash mid-write leaves them behind and the next open
rebuilds them. Against a Chroma server, other processes write too: writes are announced in a
change log (kb.changes) and each process re-reads what the others touched before it searches
(kb.shared_replica).
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np

from kb import staging
from kb.ann import AnnConfig, Lists, train, training_sample
from kb.collection import CALIBRATED_KEY, RecordCollection
from kb.errors import ConfigError
from kb.filters import CompiledFilter
from kb.keyword import KeywordIndex
from kb.lock import WriteLock
from kb.memory import release_freed_memory
from kb.mirror import Mirror
from kb.records import Record
from kb.repair import Found, Survey, report

log = logging.getLogger(__name__)

GENERATION_KEY = "kb_generation"
RESTORING_KEY = "kb_restoring"  # true while kb restore writes (Replica.restoring)
Apply = Callable[[Sequence[Record], Sequence[str]], None]


class Replica(ABC):
    """What both store modes share: the copies, their rebuild, and the mirror's loading."""

    def __init__(self, records: RecordCollection, dim: int, index: Path, writes: WriteLock) -> None:
        self.records = records
        # why the last read of other processes' writes outside search failed (a Chroma
        # server away), or None: /health then answers 503, as the reads it stands for would
        self.unreachable: str | None = None
        self.dim = dim
        self.keyword = KeywordIndex(index)
        self.mirror: Mirror | None = None  # filtered searches use Chroma until it is loaded
        self._writes = writes  # the store's write lock: a rebuild must not race a write
        self._lock = threading.RLock()  # applying to the copies
        self._loader: threading.Thread | None = None
        self._closing = threading.Event()  # a load in progress stops at its next page
        # held by a training thread's read of the keyword index's file, which nothing joins:
        # close waits for it, and no read begins after (a read-only connection opened after
        # close made the file's -wal and -shm again, inside a folder being removed)
        self._sampling = threading.Lock()
        self._behind = False  # an update of the copies failed: the next catch-up rebuilds

    def start(self, in_memory: bool = True) -> None:
        """Bring the keyword index up to date now; warm Chroma's vector index and load the
        mirror in the background, unless the process will not search (`in_memory` false:
        a bulk load, an export, a backup)."""
        self.catch_up()
        if not in_memory:
            return
        self._loader = threading.Thread(target=self._background, name="kb-mirror", daemon=True)
        self._loader.start()

    def _background(self) -> None:
        if not self._closing.is_set():
            self._warm()
        self._load_mirror()

    def _warm(self) -> None:
        """Chroma reads the HNSW index from disk on the first query (a second at 100k
        records): ask one now, while the service is still starting, not in the first
        user's request."""
        probe = np.zeros((1, self.dim), dtype=np.float32)
        probe[0, 0] = 1.0
        try:
            if self.records.count():
                self.records.nearest_ids(probe, 1)
        except Exception:  # only a warm-up: the first search will say what is wrong
            log.warning("could not warm the vector index", exc_info=True)

    def wait_loaded(self) -> None:
        """Wait for the mirror's load and its vector index's build."""
        if self._loader is not None:
            self._loader.join()
        mirror = self.mirror
        if mirror is not None:
            mirror.wait_index()

    @property
    def ready(self) -> bool:
        """Whether searches run on the in-memory copies (mirror, its vector index and BM25).
        Until then they are answered, slower, by Chroma and the keyword index's SQLite file."""
        mirror = self.mirror
        return mirror is not None and mirror.searches_all

    def close(self) -> None:
        """Stop a mirror load in progress (a SIGTERM soon after start need not wait for it),
        wait for the threads, close the keyword index."""
        self._closing.set()
        self.wait_loaded()
        with self._sampling:
            self.keyword.close()

    # ------------------------------------------------------------ what modes decide

    @abstractmethod
    def catch_up(self) -> None:
        """Apply what the copies have not seen; called before every search."""

    @abstractmethod
    def writing(self, ids: Sequence[str]) -> AbstractContextManager[Apply]:
        """Around one write to Chroma of these record ids: yields the function that applies
        the written records (and deleted ids) to the copies once Chroma has them."""

    @abstractmethod
    def settings_changed(self) -> None:
        """This process changed the collection's settings (its metadata): tell the other
        processes that use the store."""

    @abstractmethod
    def catch_up_quietly(self) -> None:
        """Before a read outside search (counts, stats, the defaults /info shows): apply what
        other processes wrote, without waiting for a poll under way and without failing the
        read (a failure is logged: the read answers from what this process has)."""

    @abstractmethod
    def current_mirror(self) -> Mirror | None:
        """The mirror, when it is loaded and has seen every write this process knows of."""

    def mirror_to_read(self) -> Mirror | None:
        """The mirror for a read outside search (counts, stats), after applying the writes
        other processes made; searches call catch_up once per request and current_mirror."""
        return self.current_mirror()

    # ------------------------------------------------------------ shared

    def mirror_for(self, flt: CompiledFilter) -> Mirror | None:
        """The mirror, when it is current and can answer this filter: no filter, or one on
        metadata, or a text filter decided on it (that mirror, current or not: the request
        is answered on the copy it began on). A text filter not yet decided is Chroma's.
        Every in-memory search path asks this."""
        if flt.where_document is not None:
            return None
        if flt.text_rows is not None:
            return flt.text_rows.mirror
        return self.current_mirror()

    @contextmanager
    def restoring(self) -> Iterator[None]:
        """Around kb restore's writes (kb.backup). Each page of a restore is a write of its
        own, so the write generation cannot show a restore cut short: a mark in the
        collection does, set first and cleared once every record is in. It stays set if the
        restore fails or is killed, and an embedded store that opens with it set removes
        what the restore left (LocalReplica.start)."""
        self.records.set_settings_value(RESTORING_KEY, True)
        yield
        self.records.set_settings_value(RESTORING_KEY, False)

    def _remove(self, found: Found, ids: list[str]) -> None:
        """Delete what a killed write left (kb.repair), as a write deletes, and say so."""
        if ids:
            with self._writes, self.writing(ids) as applied:
                self.records.delete(ids)
                applied([], ids)
        report(found, ids, self.records.name)

    def rebuild(self, generation: int) -> Found:
        """Rebuild the copies from every record in Chroma; what a killed write left among
        them (kb.repair) is returned, not removed."""
        seen = Survey()
        with self._writes, self._lock:
            log.info("rebuilding the keyword index of '%s'", self.records.name)
            self.keyword.rebuild(
                (
                    seen.see(r)
                    for page in self.records.pages(size=2000, embeddings=True)
                    for r in page
                ),
                generation,
            )
            if self.mirror is not None:
                self._load_mirror()
            self._behind = False
        return seen.found()

    def apply(self, upserted: Sequence[Record], deleted: Sequence[str], generation: int) -> None:
        with self._lock:
            try:
                self.keyword.apply(upserted, deleted, generation)
                if self.mirror is not None:
                    self.mirror.apply(upserted, deleted, generation)
            except Exception:  # the write stands in Chroma; the copies are rebuilt from it
                log.exception("updating the keyword index and mirror failed; rebuilding them")
                self._behind = True

    def _load_mirror(self) -> None:
        """Copy every record's vector, metadata and text into memory, from the keyword
        index's file (faster to read than Chroma), a page at a time; writes to the copies
        wait meanwhile. The vector index's lists are trained meanwhile, on the other core,
        and its build fills them once the load is done."""
        ann = AnnConfig.of(self.records.settings)
        unwanted = threading.Event()  # the load ended without a mirror: skip the k-means
        with self._lock:
            lists = self._train_lists(ann, unwanted)
            try:
                with self.keyword.snapshot() as (generation, pages):
                    mirror = Mirror(self.dim, generation, ann)
                    for page in pages:
                        if self._closing.is_set():
                            log.info("closing: the in-memory mirror's load stopped")
                            unwanted.set()
                            return
                        mirror.apply(page, [], generation, index=False)
            except Exception:  # searches use Chroma's filtered path, not a stale mirror
                log.exception("could not load the in-memory mirror")
                unwanted.set()
                self.mirror = None
                return
            # before the mirror is seen: a write waiting for the lock may start the build
            mirror.expect_lists(lists)
            self.mirror = mirror
        release_freed_memory()  # the pages read, before the index's build needs more
        mirror.build_index()

    def _train_lists(self, ann: AnnConfig, unwanted: threading.Event) -> Future[Lists | None]:
        """Train the vector index's lists on a sample of the keyword index's vectors, on a
        thread of its own (FAISS releases the GIL, which the mirror's load holds), for the
        build after the load: at 100k records k-means takes 4-5 s, most of a load's time.
        Its result is None when the records are too few for an index, or when the store
        closes or the load fails before the k-means begins (a k-means begun runs to its end,
        a few seconds; nothing waits for it)."""
        lists: Future[Lists | None] = Future()

        def pick(rows: int) -> np.ndarray:
            return training_sample(rows) if rows >= ann.min_rows else np.arange(0)

        def run() -> None:
            try:
                with self._sampling:
                    if self._closing.is_set():
                        lists.set_result(None)
                        return
                    rows, sample = self.keyword.sample(pick, self.dim)
                wanted = len(sample) and not (self._closing.is_set() or unwanted.is_set())
                lists.set_result(train(sample, rows) if wanted else None)
            except BaseException as exc:  # the build trains its own (kb.mirror)
                lists.set_exception(exc)

        threading.Thread(target=run, name="kb-ann-lists", daemon=True).start()
        return lists


class LocalReplica(Replica):
    """Copies of an embedded store: a persistent index beside it, one writing process."""

    def generation(self) -> int:
        """How many writes the collection has seen (or begun)."""
        value = self.records.settings_value(GENERATION_KEY)
        return int(value) if isinstance(value, int) else 0

    _restore_left = False  # opened with kb restore's mark still set: it was killed

    def catch_up(self) -> None:
        if self.keyword.generation == self.generation() and not (
            self._behind or self._restore_left
        ):
            return  # the common case: no lock, so searches never wait for a write
        with self._writes:
            generation = self.generation()
            # a write was not applied, or a restore never finished: killed part-way, perhaps
            unfinished = self.keyword.generation != generation or self._restore_left
            if unfinished or self._behind:
                # a repair's rebuild is committed one generation short: killed before it
                # removes what the write left, the next start finds the copies behind and
                # repairs again (committed at the collection's, the leftovers stayed for good)
                found = self.rebuild(generation - 1 if unfinished else generation)
                if unfinished:  # remove what it left (kb.repair)
                    removed = [*found.leftovers, *found.orphans]
                    self._remove(found, removed)  # a write: its generation is the copies'
                    if not removed:
                        self.apply([], [], generation)
            if self._restore_left:
                log.warning(
                    "a restore into '%s' was interrupted: what it left part-written is "
                    "removed; run kb restore --replace for the rest",
                    self.records.name,
                )
                self.records.set_settings_value(RESTORING_KEY, False)
                self._restore_left = False

    def staging(self) -> RecordCollection:
        """An empty collection beside the store's for kb restore --replace to fill
        (kb.staging), of the store's settings but its threshold, generation and marks (a
        leftover of a restore that failed in this process is dropped first)."""
        names = self.records.collection_names()
        for name in (f"{self.records.name}-{suffix}" for suffix in staging.SUFFIXES):
            if name not in names:
                continue
            left = self.records.named(name)
            if left.settings_value(staging.OWNER_KEY) != self.records.name:
                raise ConfigError(
                    f"the store holds a collection '{name}' kb did not make: rename or "
                    f"delete it to restore --replace into '{self.records.name}'"
                )
            left.drop()
        unkept = (CALIBRATED_KEY, GENERATION_KEY, RESTORING_KEY, *staging.MARKS)
        kept = {k: v for k, v in self.records.settings_values().items() if k not in unkept}
        return self.records.beside(staging.NEW, {**kept, **staging.stamp(self.records)})

    def switch_to(self, restored: RecordCollection) -> RecordCollection:
        """Put the filled collection in the store's place (kb.staging), at a generation of
        its own; the replaced collection, for `settle_switch`."""
        with self._writes:
            generation = self.generation() + 1
            restored.set_settings_value(GENERATION_KEY, generation)
            return staging.switch(self.records, restored)

    def settle_switch(self, replaced: RecordCollection) -> None:
        """Delete the replaced collection and rebuild the copies from the restored records;
        killed meanwhile, the next open does both (the copies are behind its generation)."""
        with self._writes:
            staging.retire(replaced)
            try:
                self.rebuild(self.generation())
            except Exception:  # the restore is done: the copies are rebuilt at the next open
                log.exception("could not rebuild the keyword index from the restored records")
                self._behind = True

    def start(self, in_memory: bool = True) -> None:
        """As Replica.start; a store left mid-restore (each page of a restore is a write of
        its own, so the generation does not show it) is swept as after a killed write."""
        self._restore_left = bool(self.records.settings_value(RESTORING_KEY))
        super().start(in_memory)

    @contextmanager
    def writing(self, ids: Sequence[str]) -> Iterator[Apply]:
        generation = self.generation() + 1
        self.records.set_settings_value(GENERATION_KEY, generation)  # before: see the module
        yield lambda upserted, deleted: self.apply(upserted, deleted, generation)

    def settings_changed(self) -> None:
        """An embedded store has one process: there is no other to tell."""

    def catch_up_quietly(self) -> None:
        """An embedded store has one process: no other wrote anything."""

    def current_mirror(self) -> Mirror | None:
        mirror = self.mirror
        return mirror if mirror is not None and mirror.generation == self.generation() else None
