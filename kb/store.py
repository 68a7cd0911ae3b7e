"""KnowledgeStore: documents (chunked, embedded, with metadata) over one Chroma collection."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from concurrent.futures import Future
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from kb.chunking import Chunk, split
from kb.collection import RecordCollection
from kb.config import Settings
from kb.duplicates import nearest_stored
from kb.embeddings import Embedder, load_embedder
from kb.errors import (
    MAX_DETAILS,
    ConfigError,
    Conflict,
    KBError,
    NotFound,
    StoreUnavailable,
    ValidationFailed,
    field_error,
    named,
)
from kb.filters import CompiledFilter, and_where
from kb.keyword import KeywordIndex, index_file
from kb.lock import WriteLock
from kb.records import (
    CHUNK,
    CHUNKS,
    DOC,
    HASH,
    HEADS,
    START,
    Record,
    assemble,
    build_records,
    chunk_id,
    content_hash,
    derive_id,
    doc_id_of,
    of_version,
    same_content,
    twins_stale,
    user_metadata,
    whole_documents,
)
from kb.replica import LocalReplica, Replica
from kb.schemas import (
    AddResponse,
    DeleteResponse,
    Document,
    DocumentIn,
    DocumentList,
    Duplicate,
    Stats,
    UpdateFields,
    metadata_size_problem,
)
from kb.shared_replica import SharedReplica
from kb.stats import metadata_stats

log = logging.getLogger(__name__)
DEFAULT_OVERLAP = Settings.model_fields["chunk_overlap"].default


class WriteMode(StrEnum):
    """What to do when an added document's id already exists."""

    ERROR = "error"  # 409, nothing written
    SKIP = "skip"  # keep the stored document
    UPSERT = "upsert"  # replace it when its content changed


class KnowledgeStore:
    """Add, read, update and delete documents; every write is all-or-nothing."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        records: RecordCollection | None = None,
        *,
        searching: bool = True,
        existing: bool = False,
    ) -> None:
        """`searching` false: this process writes or reads documents but will not search, so
        the in-memory copies searches run on (kb.mirror) are neither loaded nor kept.
        `existing`: the collection must exist (a ConfigError names the ones there)."""
        self.settings = settings
        self.embedder = embedder
        self.window = _window(settings, embedder)
        self.overlap = _overlap(settings, self.window)
        if records is None:
            records = RecordCollection(settings, embedder, existing=existing)
        self.records = records
        self._damaged: set[str] = set()  # documents found torn under the write lock (logged)
        # Writes check ids and then write: serialize them so the check stays true.
        shared = self.records.mode == "server"
        # On a server, a service's write waits for the lock at most as long as for the
        # server's answer (a 503 past it); a command's (kb load, restore) waits as long as it
        # takes: its user sees it waiting, and a backup on the host may hold the lock for long.
        wait = settings.chroma_write_timeout if searching else None
        self._lock = WriteLock(_write_lock_path(settings), wait=wait) if shared else WriteLock()
        try:
            self.replica = _replica(settings, self.records, embedder.dim, self._lock)
        except BaseException:
            self.records.close()  # releases the embedded store's lock
            raise
        try:
            self.replica.start(in_memory=searching)
        except BaseException:
            self.close()  # the replica's files too (a server's scratch copies)
            raise

    @classmethod
    def open(
        cls,
        settings: Settings,
        embedder: Embedder | None = None,
        *,
        searching: bool = True,
        existing: bool = False,
    ) -> KnowledgeStore:
        # a store that will not search asks no lone queries: no session for them (kb.encoders:
        # about 0.12 s to open and 96 MiB held, for kb load, export, backup, duplicates), and
        # its batch session opens when it first embeds (export, backup, duplicates never do)
        if embedder is None:
            embedder = load_embedder(settings, bulk=not searching, lazy=not searching)
        return cls(settings, embedder, searching=searching, existing=existing)

    def close(self) -> None:
        """Release the store once a write under way has finished: closed under it (a SIGTERM
        to kb serve closes the app after waitress's 5 s wait for its threads), a write of
        several Chroma calls was cut between two, with no rollback."""
        with self._lock.this_process():
            self.replica.close()
            self.records.close()

    @property
    def keyword(self) -> KeywordIndex:
        return self.replica.keyword

    def writes(self) -> WriteLock:
        """The write lock: while it is held no write of this store (on a server: of any kb
        process on this host) lands. Backups hold it to copy a consistent state."""
        return self._lock

    # ------------------------------------------------------------ reads

    def count(self) -> int:
        """Number of documents (not chunks): from the mirror when it is current (/health and
        /metrics ask often; Chroma's count and filtered listing take milliseconds at 10k
        records), else all of Chroma's records less the later chunks. On a server the mirror
        first applies other processes' writes (one read of the change log)."""
        mirror = self.replica.mirror_to_read()
        if mirror is not None:
            return mirror.documents()
        later = self.records.ids(CompiledFilter(where={CHUNK: {"$gt": 0}}))
        return self.records.count() - len(later)

    def get(self, doc_id: str) -> Document:
        found = self.get_many([doc_id])
        if doc_id in found:
            return found[doc_id]
        if self._heads([doc_id]):  # stored, but not one whole version (`_whole`)
            raise Conflict(
                f"document '{doc_id}' is damaged: its chunks are not all of one version (a "
                "write that failed part-way, its rollback failing too, or a process killed in "
                "the middle of one), so its text is not one that was stored; write it again "
                "whole (/update with its text, or /add with upsert) or delete it",
                code="damaged_document",
                details=[field_error("id", "its chunks are not all of one version", "damaged")],
            )
        raise NotFound(f"no document with id '{doc_id}'", details=[_missing("id", doc_id)])

    def get_many(self, ids: Sequence[str]) -> dict[str, Document]:
        """The documents with these ids that exist whole, by id (`_whole`)."""
        groups = self._whole(self._chunks(self._heads(ids)), ids)
        return {doc_id: assemble(chunks) for doc_id, chunks in groups.items()}

    def documents_of(self, records: Sequence[Record]) -> dict[str, Document]:
        """The whole documents that these chunk records (of any index) belong to, by id, as
        of the records' version: one deleted or written since is left out."""
        wanted = {r.doc_id: r for r in records}
        groups: dict[str, list[Record]] = {}
        for record in self.records.get(_chunk_ids(list(wanted.values()))):
            groups.setdefault(record.doc_id, []).append(record)
        groups = self._whole(groups, list(wanted))
        return {
            doc_id: assemble(chunks)
            for doc_id, chunks in groups.items()
            if _head(chunks).metadata.get(HASH) == wanted[doc_id].metadata.get(HASH)
        }

    def _whole(
        self, groups: dict[str, list[Record]], doc_ids: Sequence[str]
    ) -> dict[str, list[Record]]:
        """`groups` (chunk records by document) when every document in them was read whole,
        else the documents `doc_ids` read again under the write lock. Reads take no lock, so
        a write landing between two of them tore a document: an old first chunk joined to
        the new later chunks (a GET during an update answered a text never stored), or a new
        version cut at the old one's chunk count (a search's match). A document still not
        whole under the lock is damaged (chunks missing or of another version: a write that
        failed part-way and whose rollback failed too, or a killed one) and is left out: it
        was served joined, a text never stored (review helper 82). On a Chroma server the
        read waits for the lock at most READ_WAIT_S, then is a 503 store_busy: a search or GET
        waited up to KB_CHROMA_WRITE_TIMEOUT behind a long write (fixer helper 103)."""
        if all(_is_whole(chunks) for chunks in groups.values()):
            return groups
        with self._lock.turn(read=True):
            groups = self._chunks(self._heads(doc_ids))
        damaged = {doc for doc, chunks in groups.items() if not _is_whole(chunks)}
        if damaged - self._damaged:  # not a write in between: damaged for good
            self._damaged |= damaged
            log.warning(
                "document(s) %s are damaged: their chunks are not all of one version (write "
                "them again whole, or delete them); reads leave them out",
                named(sorted(damaged)),
            )
        return {doc: chunks for doc, chunks in groups.items() if doc not in damaged}

    def is_damaged(self, doc_id: str) -> bool:
        """Whether reads found this document damaged, and no write of it came since."""
        return doc_id in self._damaged

    def _heads(self, ids: Sequence[str]) -> list[Record]:
        """The chunk-0 records of these document ids (a lookup by id is Chroma's fast path)."""
        unique = list(dict.fromkeys(ids))
        return [r for r in self.records.get(unique) if r.chunk == 0] if unique else []

    def list_documents(self, flt: CompiledFilter, limit: int, offset: int) -> DocumentList:
        """A page of the documents passing `flt` and how many pass, both from one read of
        their ids (in storage order, as a read with limit and offset gives them): counted
        and paged by two reads, a write between them made `total` disagree with its own
        page (one document listed, two shown). One deleted after the read is left out of
        its page. No lock is held (an unfiltered listing of 100k documents takes 0.2 s)."""
        ids = self.records.ids(_first_chunks(flt))
        page = ids[offset : offset + limit]
        found = self.get_many(page)
        docs = [found[doc_id] for doc_id in page if doc_id in found]
        return DocumentList(documents=docs, total=len(ids), limit=limit, offset=offset)

    def iter_documents(self, flt: CompiledFilter, page: int = 500) -> Iterator[Document]:
        """Every document matching the filter, in storage order, a page at a time."""
        for heads in self.records.pages(_first_chunks(flt), page):
            yield from self._assembled(heads)

    def _assembled(self, heads: Sequence[Record]) -> list[Document]:
        """The documents of these first chunks, in their order (one deleted since: left out)."""
        groups = self._whole(self._chunks(heads), [head.doc_id for head in heads])
        return [assemble(groups[head.doc_id]) for head in heads if head.doc_id in groups]

    def stats(self) -> Stats:
        """Counts and metadata summaries, from the in-memory mirror when it is current (no
        trip to Chroma), else from the first chunks' metadata in Chroma."""
        mirror = self.replica.mirror_to_read()
        metadatas: Iterable[dict[str, Any]]
        if mirror is not None:
            documents, metadatas = mirror.head_metadata()
            chunks = len(mirror)
        else:
            listed = self.records.metadatas(CompiledFilter(where=HEADS))
            documents, metadatas = len(listed), listed
            chunks = self.records.count()
        return Stats(
            documents=documents,
            chunks=chunks,
            metadata=metadata_stats(user_metadata(meta) for meta in metadatas),
        )

    def _chunks(self, heads: Sequence[Record], embeddings: bool = False) -> dict[str, list[Record]]:
        """All chunk records of the documents whose chunk-0 records are given."""
        groups = {head.doc_id: [head] for head in heads}
        rest = [
            chunk_id(head.doc_id, i) for head in heads for i in range(1, int(head.metadata[CHUNKS]))
        ]
        for record in self.records.get(rest, embeddings=embeddings) if rest else []:
            groups[record.doc_id].append(record)
        return groups

    # ------------------------------------------------------------ writes

    def add(
        self,
        docs: Sequence[DocumentIn],
        mode: WriteMode = WriteMode.ERROR,
        on_duplicate: str = "allow",
    ) -> AddResponse:
        """Write documents; `mode` decides about existing ids, `on_duplicate` about new
        documents nearly identical (KB_DUPLICATE_SCORE) to a stored one."""
        return self.commit(self.prepare(docs, mode, on_duplicate))

    def prepare(
        self,
        docs: Sequence[DocumentIn],
        mode: WriteMode = WriteMode.ERROR,
        on_duplicate: str = "allow",
    ) -> PreparedAdd:
        """The expensive half of `add`, without the write lock: check ids against the store
        and embed what is to be written. A loader embeds one batch while the previous one is
        committed; `commit` re-checks and embeds again only if the store changed meanwhile."""
        plan = self._planned(docs, mode, on_duplicate)
        self._embed(plan.records)
        return plan

    def prepare_later(
        self,
        docs: Sequence[DocumentIn],
        mode: WriteMode,
        on_duplicate: str,
        submit: Callable[[list[str]], Future[np.ndarray]],
    ) -> Future[PreparedAdd]:
        """`prepare` with the embedding queued on `submit` (an encoder process): the ids are
        checked now, and the plan is done when its vectors come back."""
        plan = self._planned(docs, mode, on_duplicate)
        done: Future[PreparedAdd] = Future()
        if not plan.records:
            done.set_result(plan)
            return done

        def attach(vectors: Future[np.ndarray]) -> None:
            try:
                _attach(plan.records, vectors.result())
                done.set_result(plan)
            except BaseException as exc:
                done.set_exception(exc)

        submit([record.text for record in plan.records]).add_done_callback(attach)
        return done

    def _planned(
        self, docs: Sequence[DocumentIn], mode: WriteMode, on_duplicate: str
    ) -> PreparedAdd:
        ids = [doc.id if doc.id is not None else derive_id(doc.text) for doc in docs]
        _reject_repeats(ids, docs)
        return self._plan(docs, ids, mode, on_duplicate, self._heads(ids))

    def commit(self, plan: PreparedAdd) -> AddResponse:
        """Write a prepared add, all or nothing."""
        with self._lock.turn():
            heads = self._heads(plan.ids)
            if _seen(heads) != plan.seen:  # written to since `prepare`: plan again
                plan = self._plan(plan.docs, plan.ids, plan.mode, plan.on_duplicate, heads)
                self._embed(plan.records)
            records, replaced, skipped = plan.records, plan.replaced, plan.skipped
            old = self._all_chunks(replaced)
            near = (
                {}
                if plan.on_duplicate == "ignore"
                else nearest_stored(
                    self.records,
                    # a document sent again with its stored text (new metadata) makes no new
                    # near-duplicate: one already stored was skipped or refused with it
                    _text_changed(records, old),
                    self.settings.duplicate_score,
                    # the request's own documents are not compared with each other, stored
                    # or not: a rerun of a write cut off between Chroma calls finds part of
                    # it stored, and then refused (or skipped) what the whole write took
                    replaced={head.doc_id for head in replaced} | set(plan.ids),
                    nearest=mirror.nearest_ids
                    if (mirror := self.replica.current_mirror()) is not None
                    else None,
                )
            )
            if near and plan.on_duplicate == "reject":
                place = {doc_id: i for i, doc_id in enumerate(plan.ids)}
                raise Conflict(
                    f"{len(near)} document(s) nearly duplicate stored ones: "
                    + ", ".join(
                        f"'{new}' ~ '{old}' ({score:.3f})" for new, (old, score) in near.items()
                    )
                    + "; nothing was written",
                    details=[
                        _duplicate(place[new], new, old, score)
                        for new, (old, score) in near.items()
                    ],
                )
            if near and plan.on_duplicate == "skip":
                records = [r for r in records if r.doc_id not in near]
                replaced = [h for h in replaced if h.id not in near]
                old = [r for r in old if r.doc_id not in near]
                skipped += len(near)
            self._write(records, old, self._unstored(records, replaced))
        written = len({r.doc_id for r in records})
        return AddResponse(
            ids=plan.ids,
            added=written - len(replaced),
            updated=len(replaced),
            skipped=skipped,
            skipped_changed=plan.skipped_changed,
            duplicates=[
                Duplicate(id=new, existing=old, score=score) for new, (old, score) in near.items()
            ],
        )

    def _plan(
        self,
        docs: Sequence[DocumentIn],
        ids: list[str],
        mode: WriteMode,
        on_duplicate: str,
        found: Sequence[Record],
    ) -> PreparedAdd:
        heads = {r.id: r for r in found}
        if heads and mode is WriteMode.ERROR:
            raise Conflict(
                f"{len(heads)} document id(s) already exist: {named(list(heads))}; nothing "
                'was written (send "upsert": true to replace them)',
                details=[
                    field_error(_id_field(i), "already exists", "duplicate_id")
                    for i, doc_id in enumerate(ids)
                    if doc_id in heads
                ],
            )
        todo, replaced, skipped, changed = [], [], 0, 0
        for doc_id, doc in zip(ids, docs, strict=True):
            head = heads.get(doc_id)
            if head is None:
                todo.append((doc_id, doc.text, doc.metadata))
                continue
            differs = head.metadata.get(HASH) != content_hash(doc.text, doc.metadata)
            stale = twins_stale(head.metadata, doc.metadata)  # written again, not "changed"
            if mode is WriteMode.UPSERT and (differs or stale):
                todo.append((doc_id, doc.text, doc.metadata))
                replaced.append(head)
            else:
                skipped += 1
                changed += differs
        records = self._records(todo)  # embedded by the caller
        return PreparedAdd(
            docs, ids, mode, on_duplicate, _seen(found), records, replaced, skipped, changed
        )

    def update(self, doc_id: str, fields: UpdateFields) -> Document:
        with self._lock.turn():
            old = self._all_chunks(self._heads([doc_id]))
            if not old:
                raise NotFound(f"no document with id '{doc_id}'", details=[_missing("id", doc_id)])
            version = _ordered(_version(old))  # `old` also holds any left-over chunks
            if fields.text is None and not _is_whole(version):  # would keep what is left
                raise Conflict(
                    f"document '{doc_id}' lacks chunks its first chunk counts (a write "
                    "interrupted part-way): send its whole text, or delete it",
                    details=[field_error("text", "the stored text is incomplete", "damaged")],
                )
            current = assemble(version)
            metadata = _patched(current.metadata, fields.metadata, fields.replace_metadata)
            if problem := metadata_size_problem(metadata, stored=current.metadata):
                raise ValidationFailed(problem, details=[field_error("metadata", problem)])
            text = fields.text if fields.text is not None else current.text
            same = same_content(text, metadata, current.text, current.metadata)
            if same and not twins_stale(version[0].metadata, metadata):
                return current
            if text == current.text:  # metadata only: keep the vectors
                chunks = [Chunk(int(r.metadata[START]), r.text) for r in version]
                records = build_records(doc_id, text, metadata, chunks)
                for record, before in zip(records, version, strict=True):
                    record.embedding = before.embedding
                # only the metadata is sent when every record is stored under its id: a
                # version missing chunks (its text the same, overlaps covering the gap) is
                # written whole, its chunks numbered anew
                whole = _is_whole(version)
                return assemble(self._write(records, old, metadata_only=whole))
            records = self._records([(doc_id, text, metadata)])
            self._embed(records)
            return assemble(self._write(records, old))  # as GET reads it from now on

    def delete(self, ids: Sequence[str]) -> DeleteResponse:
        place: dict[str, int] = {}  # each id's first place in `ids`
        for i, doc_id in enumerate(ids):
            place.setdefault(doc_id, i)
        unique = list(place)
        with self._lock.turn():
            heads = self._heads(unique)
            stored = {head.id for head in heads}
            missing = [doc_id for doc_id in unique if doc_id not in stored]
            if missing:
                raise NotFound(
                    f"{len(missing)} id(s) not found: {named(missing)}; nothing was deleted",
                    details=[
                        _missing(f"ids.{place[doc_id]}", doc_id) for doc_id in missing[:MAX_DETAILS]
                    ],
                )
            self._remove(heads)
        return DeleteResponse(deleted=len(unique), ids=unique)

    def delete_where(self, flt: CompiledFilter) -> DeleteResponse:
        with self._lock.turn():
            matched = self.records.get(flt=flt, texts=False)
            heads = self._heads(list(dict.fromkeys(record.doc_id for record in matched)))
            # a document matches by a chunk of its own version, not by one a killed write
            # left behind (kb.repair) with an older version's metadata
            mine = {head.doc_id: head for head in heads}
            ours = {r.doc_id for r in matched if r.doc_id in mine and _of(mine[r.doc_id], r)}
            heads = [head for head in heads if head.doc_id in ours]
            self._remove(heads)
        return DeleteResponse(deleted=len(heads), ids=[head.id for head in heads])

    def set_setting(self, key: str, value: Any) -> None:
        """Keep a setting in the collection's metadata (None removes it), for every process
        that uses the store: on a Chroma server the others read it again at their next
        search."""
        self.records.set_settings_value(key, value)
        self.replica.settings_changed()

    def clear(self) -> int:
        """Delete every record (restore --replace); the number deleted."""
        with self._lock.turn():
            ids = self.records.ids()
            if ids:
                self._delete_whole(ids)
        return len(ids)

    def staging(self) -> RecordCollection | None:
        """Where kb restore --replace writes: a new collection beside the store's, which
        takes its place once whole (kb.staging), or None to write in place: on a Chroma
        server (other processes hold the collection by its id), or when it is empty."""
        if not isinstance(self.replica, LocalReplica) or not self.records.count():
            return None
        return self.replica.staging()

    def restore_records(self, records: Sequence[Record]) -> None:
        """Write records exactly as a backup holds them (vectors included) into the store's
        collection (restore --replace into the one `staging` gave: kb.backup)."""
        if not records:
            return
        ids = {record.id for record in records}  # a backup holds each id once
        # embedded, the collection was empty (or emptied) under the write lock: its ids are
        # new, and Chroma's add costs less than an upsert (no lookup of a stored record); on
        # a server another host may have written one since, which the restore overwrites
        with self._lock.turn():
            self._write(records, [], ids if isinstance(self.replica, LocalReplica) else set())

    def switch_to(self, restored: RecordCollection) -> RecordCollection:
        """Put the collection `staging` gave, filled, in the store's place; the replaced
        one, for `settle_switch` (kb.staging)."""
        assert isinstance(self.replica, LocalReplica)
        with self._lock.turn():
            return self.replica.switch_to(restored)

    def settle_switch(self, replaced: RecordCollection) -> None:
        """Delete the collection a restore replaced; rebuild the copies from the restored."""
        assert isinstance(self.replica, LocalReplica)
        with self._lock.turn():
            self.replica.settle_switch(replaced)

    # ------------------------------------------------------------ helpers

    def _all_chunks(self, heads: Sequence[Record]) -> list[Record]:
        """Every chunk record of these documents, with embeddings (to restore on failure)."""
        if not heads:
            return []
        return self.records.get(self._stored_chunk_ids(heads), embeddings=True)

    def _stored_chunk_ids(self, heads: Sequence[Record]) -> list[str]:
        """The ids of every stored chunk of these documents: those their first chunks count,
        and any left over from a longer version of the document (which the first chunk no
        longer counts), found by the document id every chunk carries."""
        if not heads:  # Chroma refuses an empty $in
            return []
        ids = dict.fromkeys(_chunk_ids(heads))
        # a long list is asked in parts SQLite can bind (RecordCollection.ids)
        by_doc = CompiledFilter(where={DOC: {"$in": [head.doc_id for head in heads]}})
        ids.update(dict.fromkeys(self.records.ids(by_doc)))
        return list(ids)

    def _records(self, docs: Sequence[tuple[str, str, dict[str, Any] | None]]) -> list[Record]:
        """The chunk records of these documents, not yet embedded."""
        return [
            record
            for doc_id, text, metadata in docs
            for record in build_records(doc_id, text, metadata, self.chunk(text))
        ]

    def _embed(self, records: Sequence[Record]) -> None:
        """Embed records in one encoder call."""
        if records:
            _attach(records, self.embedder.embed_documents([record.text for record in records]))

    def chunk(self, text: str) -> list[Chunk]:
        if not self.settings.chunking or (text.isascii() and len(text) <= self.window):
            # Fits for sure: an ASCII character is at most one token. Skips a tokenizer pass.
            return [Chunk(0, text)]
        return split(text, self.embedder.tokens(text), self.window, self.overlap)

    def _unstored(self, records: Sequence[Record], replaced: Sequence[Record]) -> set[str]:
        """The ids known not to be stored, which Chroma's add (faster than upsert) may write:
        the one record of each one-chunk document whose id had no stored record when checked
        under the write lock (a document's own id is its first chunk's). Later chunks of new
        documents are left out: a failed write may have left them. None (an empty set) on a
        Chroma server: the lock holds for this host's processes, and Chroma's add ignores an
        id another host wrote since the check (acknowledged, never stored; last write wins)."""
        if self.records.mode == "server":
            return set()
        heads = {h.id for h in replaced}
        return {r.id for r in records if r.doc_id not in heads and int(r.metadata[CHUNKS]) == 1}

    def _write(
        self,
        records: Sequence[Record],
        previous: Sequence[Record],
        new: Set[str] = frozenset(),
        *,
        metadata_only: bool = False,
    ) -> Sequence[Record]:
        """Write records replacing `previous`; ids in `new` are known not to be stored, and
        with `metadata_only` every record is stored with its text and vector already. The
        records as written (`RecordCollection.upsert`)."""
        stale = sorted({r.id for r in previous} - {r.id for r in records})
        with self.replica.writing([*(r.id for r in records), *stale]) as applied:
            # deletes roll back too
            written = self.records.upsert(
                records, previous, new, stale, metadata_only=metadata_only
            )
            applied(written, stale)  # the copies hold what a read of Chroma gives
        # written whole again: no longer damaged (a damaged one found again is said again)
        self._damaged.difference_update(r.doc_id for r in records)
        return written

    def _remove(self, heads: Sequence[Record]) -> None:
        self._delete_whole(self._stored_chunk_ids(heads))

    def _delete_whole(self, ids: Sequence[str]) -> None:
        """Delete these records, each document whole. Chroma takes max_batch ids a call, so
        the calls are cut between documents: a store error part-way leaves documents deleted
        or kept whole (cut anywhere, a first chunk stayed with some of its chunks, and GET
        and search showed the document with its middle gone), and the error says how far
        the delete got."""
        parts = whole_documents(ids, self.records.max_batch, str)
        with self.replica.writing(ids) as applied:
            deleted: list[str] = []
            try:
                for part in parts:
                    self.records.delete(part)
                    deleted.extend(part)
            except KBError as exc:
                if not deleted:
                    raise
                applied([], deleted)
                gone = len({doc_id_of(record_id) for record_id in deleted})
                every = len({doc_id_of(record_id) for record_id in ids})
                raise StoreUnavailable(
                    f"the delete stopped part-way: {gone} of {every} documents were deleted "
                    f"(whole) before the store failed ({exc.message}); deleting again "
                    "deletes the rest"
                ) from exc
            applied([], ids)


def _replica(settings: Settings, records: RecordCollection, dim: int, lock: WriteLock) -> Replica:
    if records.mode == "server":
        return SharedReplica(records, dim, lock)
    return LocalReplica(records, dim, index_file(settings.chroma_path, settings.collection), lock)


def _window(settings: Settings, embedder: Embedder) -> int:
    """Tokens per chunk: KB_CHUNK_TOKENS, at most what the model reads (its window minus
    [CLS] and [SEP]; beyond it a chunk's end would be stored but never embedded)."""
    readable = embedder.max_tokens - 2
    if settings.chunk_tokens is not None and settings.chunk_tokens > readable:
        raise ConfigError(
            f"KB_CHUNK_TOKENS is {settings.chunk_tokens}, but {embedder.name} reads at most "
            f"{readable} tokens of a chunk: the rest would never be embedded"
        )
    return settings.chunk_tokens or readable


def _overlap(settings: Settings, window: int) -> int:
    """KB_CHUNK_OVERLAP, at most half a chunk (more, and the text would be stored several
    times over). The default's value, 32, is cut to half of a small KB_CHUNK_TOKENS, set
    explicitly or not (Settings cannot tell them apart once copied); any other value above
    half is refused rather than changed behind its owner's back."""
    most = window // 2
    if settings.chunk_overlap > most and settings.chunk_overlap != DEFAULT_OVERLAP:
        raise ConfigError(
            f"KB_CHUNK_OVERLAP is {settings.chunk_overlap}, more than half a chunk of {window} "
            f"tokens: at most {most}"
        )
    return min(settings.chunk_overlap, most)


def _write_lock_path(settings: Settings) -> Path:
    """The file every kb process on this host that writes to the same collection of the same
    Chroma server locks, wherever it was started: named by a digest of the server's address
    and the collection, in KB_LOCK_DIR. (Beside KB_CHROMA_PATH, relative by default, kb serve
    and a kb load started in other folders took two locks, and their writes raced.)"""
    key = f"{(settings.chroma_url or '').lower()}\n{settings.collection}"
    digest = hashlib.blake2b(key.encode(), digest_size=10).hexdigest()
    return settings.lock_dir / f"kb-{digest}.writes.lock"


def _first_chunks(flt: CompiledFilter) -> CompiledFilter:
    """The filter restricted to chunk 0 of each document (one record per document)."""
    return CompiledFilter(and_where(flt.where, HEADS), flt.where_document)


def _attach(records: Sequence[Record], vectors: np.ndarray) -> None:
    for record, vector in zip(records, vectors, strict=True):
        record.embedding = vector


def _is_whole(chunks: Sequence[Record]) -> bool:
    """Whether these are all the chunks of one version of a document: every index its first
    chunk counts, once, each carrying the first chunk's content hash."""
    head = next((record for record in chunks if record.chunk == 0), None)
    if head is None:
        return False
    count = int(head.metadata[CHUNKS])
    return (
        len(chunks) == count
        and {record.chunk for record in chunks} == set(range(count))
        and all(_of(head, record) for record in chunks)
    )


def _head(chunks: Sequence[Record]) -> Record:
    """A document's first chunk among its chunk records (`_whole` read it)."""
    return next(record for record in chunks if record.chunk == 0)


def _of(head: Record, record: Record) -> bool:
    """Whether a chunk record belongs to the version of the document its first chunk is."""
    count, version = int(head.metadata[CHUNKS]), head.metadata.get(HASH)
    return of_version(count, version, record.chunk, record.metadata.get(HASH))


def _version(chunks: Sequence[Record]) -> list[Record]:
    """The chunks of the version their first chunk is, without any a killed write left."""
    head = _head(chunks)
    return [record for record in chunks if _of(head, record)]


def _text_changed(records: Sequence[Record], old: Sequence[Record]) -> list[Record]:
    """The records of the documents that are new or whose text differs from their stored
    version's (`old`: every stored chunk of the documents replaced)."""
    stored: dict[str, list[Record]] = {}
    for record in old:
        stored.setdefault(record.doc_id, []).append(record)
    new: dict[str, list[Record]] = {}
    for record in records:
        new.setdefault(record.doc_id, []).append(record)
    same = {
        doc_id
        for doc_id, chunks in stored.items()
        if doc_id in new
        and any(record.chunk == 0 for record in chunks)
        and _is_whole(version := _version(chunks))  # a damaged one is compared
        and assemble(version).text == assemble(new[doc_id]).text
    }
    return [record for record in records if record.doc_id not in same]


def _ordered(records: Sequence[Record]) -> list[Record]:
    return sorted(records, key=lambda record: record.chunk)


def _chunk_ids(heads: Sequence[Record]) -> list[str]:
    return [chunk_id(h.doc_id, i) for h in heads for i in range(int(h.metadata[CHUNKS]))]


def _patched(
    current: dict[str, Any] | None, patch: dict[str, Any] | None, replace: bool
) -> dict[str, Any] | None:
    """JSON-merge-patch semantics: keys set, null removes; `replace` starts from nothing."""
    if patch is None:
        return current
    merged = {} if replace else dict(current or {})
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    return merged or None


@dataclass
class PreparedAdd:
    """An add with its ids checked and its records embedded, ready to commit."""

    docs: Sequence[DocumentIn]
    ids: list[str]
    mode: WriteMode
    on_duplicate: str
    seen: dict[str, Any]  # stored head id -> content hash, as the plan found them
    records: list[Record]
    replaced: list[Record]
    skipped: int
    skipped_changed: int  # of the skipped: stored versions that differ from what was sent


def _seen(heads: Sequence[Record]) -> dict[str, Any]:
    return {r.id: r.metadata.get(HASH) for r in heads}


def _reject_repeats(ids: Sequence[str], docs: Sequence[DocumentIn]) -> None:
    first: dict[str, int] = {}
    errors = []
    for i, doc_id in enumerate(ids):
        if doc_id in first:
            what = "id" if docs[i].id is not None else "text (its derived id)"
            errors.append(
                field_error(
                    _id_field(i), f"repeats the {what} of document {first[doc_id]}", "repeat"
                )
            )
        first.setdefault(doc_id, i)
    if errors:
        raise ValidationFailed(
            f"{len(errors)} document(s) repeat an earlier id in the same request", details=errors
        )


def _id_field(index: int) -> str:
    """The field of the index-th document's id, by its place in the list handed to `add` (a
    caller that had it another way renames it: kb.api.util.fields_as_sent)."""
    return f"documents.{index}.id"


def _duplicate(index: int, new: str, old: str, score: float) -> dict[str, Any]:
    message = f"'{new}' nearly duplicates '{old}' (score {score:.3f})"
    return field_error(_id_field(index), message, "near_duplicate")


def _missing(field: str, doc_id: str) -> dict[str, Any]:
    return field_error(field, f"'{doc_id}' does not exist", "not_found")
