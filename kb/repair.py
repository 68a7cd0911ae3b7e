"""What a write killed part-way leaves in a collection, and how to tell it from documents.

Chroma has no transaction across calls, and some writes take several: an update that shrinks
a document upserts its new chunks, then deletes the chunks the new version no longer has; a
document of more chunks than one call takes is written in parts, its first chunk last. A
process killed between two such calls runs no rollback. What it leaves is recognisable:
chunks their document's first chunk does not count (the old version's tail, with its old
text, metadata and content hash), or chunks with no first chunk at all (a new document never
finished). GET reads a document by its first chunk and ignores them, but search matched
them, a delete by filter on their old metadata deleted the document, and an update built the
document's text from them. They are removed here.

When to look: every write sets the collection's write generation before it touches Chroma,
and the keyword index records it once the write is applied (kb.replica), so an index behind
the collection is exactly what a write that never finished leaves. The index is then rebuilt
from every record (kb.replica), which this module watches go by; what it finds is deleted as
any write deletes, after the rebuild. On a Chroma server no store re-opens after a writer on
another host dies: the first reader to find its change-log entry abandoned surveys the
documents it names and deletes their tails only (kb.shared_replica).

A document whose first chunk counts chunks that are missing or of another version cannot be
mended here (its text is gone): it is named in the log, as reads name it (kb.store).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from kb.errors import named
from kb.records import CHUNKS, HASH, Record, doc_id_of, of_version

log = logging.getLogger(__name__)


@dataclass
class Found:
    """What a pass over a collection found: record ids to delete, and documents that cannot
    be mended."""

    leftovers: list[str] = field(default_factory=list)  # chunks their first chunk disowns
    orphans: list[str] = field(default_factory=list)  # chunks of no first chunk
    damaged: list[str] = field(default_factory=list)


class Survey:
    """Watches every record of a collection go by (the keyword index's rebuild reads them
    all), keeping what tells leftovers from documents: ids, chunk indexes and versions."""

    def __init__(self) -> None:
        self._heads: dict[str, tuple[int, object]] = {}  # document -> chunk count, hash
        self._later: dict[str, list[tuple[str, int, object]]] = {}  # document -> id, index, hash

    def see(self, record: Record) -> Record:
        if record.chunk == 0:
            self._heads[record.doc_id] = (int(record.metadata[CHUNKS]), record.metadata.get(HASH))
        else:
            self._later.setdefault(record.doc_id, []).append(
                (record.id, record.chunk, record.metadata.get(HASH))
            )
        return record

    def found(self) -> Found:
        found = Found()
        for doc_id, chunks in self._later.items():
            head = self._heads.get(doc_id)
            if head is None:  # a document whose first chunk was never written
                found.orphans.extend(record_id for record_id, _, _ in chunks)
                continue
            count, version = head
            found.leftovers.extend(record_id for record_id, index, _ in chunks if index >= count)
            # a chunk within the count but of another version holds its place: not removable
            kept = sum(of_version(count, version, index, digest) for _, index, digest in chunks)
            if kept != count - 1:
                found.damaged.append(doc_id)
        found.damaged.extend(
            doc_id
            for doc_id, (count, _) in self._heads.items()
            if count > 1 and doc_id not in self._later
        )
        return found


def survey(records: Iterable[Record]) -> Found:
    """What a collection holding these records holds that a killed write left."""
    seen = Survey()
    for record in records:
        seen.see(record)
    return seen.found()


def report(found: Found, removed: list[str], collection: str) -> None:
    """Say what was removed, and which documents cannot be mended."""
    if removed:
        documents = sorted({doc_id_of(record_id) for record_id in removed})
        log.warning(
            "a write to '%s' was interrupted: removed %d chunk(s) it left behind, of %s",
            collection,
            len(removed),
            named(documents),
        )
    if found.damaged:
        log.warning(
            "document(s) %s of '%s' lack chunks their first chunk counts (an interrupted "
            "write of a document too long for one call, or an older kb); re-add or delete them",
            named(sorted(found.damaged)),
            collection,
        )
