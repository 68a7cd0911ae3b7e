"""The keyword side: a BM25 index (SQLite FTS5) over the same chunk records as the Chroma store.

It lives in a SQLite file beside the embedded store and is kept in step by the store's writes;
it also keeps each chunk's vector, so a keyword hit is scored without asking Chroma.
Chroma stays the source of truth: the index records the write generation it has seen, the
collection records the latest one, and an index that is missing or behind is rebuilt from
Chroma (after a crash between the two writes, or another process writing to a shared store).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import orjson

from kb.errors import StoreUnavailable
from kb.records import Record
from kb.tokens import TOKENIZER, tokens, words

STOPWORDS = frozenset(
    """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in
    into is it its itself just me more most my myself no nor not now of off on once only
    or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under
    until up very was we were what when where which while who whom why will with would
    you your yours yourself yourselves
    """.split()  # noqa: SIM905 (a word list reads better as text)
)
log = logging.getLogger(__name__)
MAX_TERMS = 64
T = TypeVar("T")
SAMPLE_PAGE = 10_000  # rows a query of `sample` reads
SCHEMA = 3  # bump when the tables change: an older index is dropped and rebuilt from Chroma
INDEX_SUFFIX = ".keyword.sqlite3"
# the longest collection name whose index is named after it in full: SQLite names the files
# beside an index by adding to its name ('-journal' the longest), and a file name has 255 bytes
NAME_KEPT = 255 - len(INDEX_SUFFIX) - len("-journal")
NAME_START = 150  # of a longer name, the characters its index's name keeps


def index_file(folder: Path, collection: str) -> Path:
    """The keyword index of an embedded store's collection: `<collection>.keyword.sqlite3`,
    or for a name longer than NAME_KEPT (kb takes 505 characters) the name's first
    NAME_START, '+' and a digest of all of it, so that the file, its side files and a damaged
    one moved aside stay within a file name's 255 bytes: the store could not open (review
    helper 97). '+' is in no collection name, so no other collection's index has that name."""
    if len(collection.encode()) <= NAME_KEPT:
        return folder / f"{collection}{INDEX_SUFFIX}"
    return folder / f"{collection[:NAME_START]}+{_digest(collection)}{INDEX_SUFFIX}"


def _digest(name: str) -> str:
    """A file name's stand-in for a name too long to be one (`index_file`, `_move_aside`)."""
    return hashlib.blake2b(name.encode(), digest_size=10).hexdigest()


def distinct_terms(text: str) -> list[str]:
    """The distinct non-stopword words of a query, in order, each one token of the index
    (kb.tokens.words: `snake_case` is two, so FTS5 ORs them as the in-memory index does,
    where it read one phrase)."""
    return list(dict.fromkeys(w for w in words(text) if w not in STOPWORDS))


def query_terms(text: str) -> list[str]:
    """The terms a keyword search looks for: the query's first MAX_TERMS distinct terms."""
    return distinct_terms(text)[:MAX_TERMS]


def query_tokens(text: str) -> list[str]:
    """The query's terms as the index holds them (folded and stemmed). Two words with one
    stem stay two terms: FTS5 scores each phrase of an OR query, so both count."""
    return [token for term in query_terms(text) for token in tokens(term)]


@dataclass(frozen=True)
class KeywordHit:
    record_id: str
    doc_id: str
    score: float  # -bm25: higher is better
    vector: np.ndarray  # the chunk's embedding, so fusion needs no trip to the store


class KeywordIndex:
    """BM25 over chunk texts, with FTS5's Porter stemmer, plus each chunk's vector.

    `entries` maps record ids to FTS rowids (a unique index: deletes by id are cheap) and
    keeps the chunk's float32 vector, so a keyword hit's cosine score is one dot product.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db, self._generation = _open(path)
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise
            # a copy: moved aside, an empty one made, and the store rebuilds it from Chroma
            aside = _move_aside(path, exc)
            log.warning("keyword index %s is damaged (%s): moved to %s, rebuilt", path, exc, aside)
            self._db, self._generation = _open(path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def generation(self) -> int:
        """The write generation the index has applied. Read before every search, so it is
        kept in memory (this process is the file's only writer), not asked of SQLite: with
        16 clients that query and its lock were a quarter of the server's time."""
        return self._generation

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def apply(self, upserted: Sequence[Record], deleted: Iterable[str], generation: int) -> None:
        """Index these records, drop these ids, and record the generation: one transaction."""
        gone = list(dict.fromkeys([*deleted, *(r.id for r in upserted)]))
        with self._lock:
            with self._db:
                self._db.execute("BEGIN")
                self._remove(gone)
                self._insert(upserted)
                self._set_generation(generation)
            self._generation = generation  # committed

    def rebuild(self, records: Iterable[Record], generation: int) -> None:
        """Replace the whole index; `records` must carry their embeddings."""
        with self._lock:
            with self._db:
                self._db.execute("BEGIN")
                self._db.execute("DELETE FROM chunks")
                self._db.execute("DELETE FROM entries")
                for batch in _batched(records, 1000):
                    self._insert(batch)
                self._set_generation(generation)
            self._generation = generation  # committed

    def _remove(self, record_ids: Sequence[str]) -> None:
        rowids: list[tuple[int]] = []
        for part in _batched(record_ids, 500):
            marks = ",".join("?" * len(part))
            sql = f"SELECT rowid FROM entries WHERE record_id IN ({marks})"
            rowids += self._db.execute(sql, part).fetchall()
        self._db.executemany("DELETE FROM chunks WHERE rowid = ?", rowids)
        self._db.executemany("DELETE FROM entries WHERE rowid = ?", rowids)

    def _insert(self, records: Sequence[Record]) -> None:
        rows = []
        for record in records:
            vector = np.asarray(record.embedding, dtype=np.float32).tobytes()
            cursor = self._db.execute(
                "INSERT INTO entries (record_id, doc_id, vector, metadata) VALUES (?, ?, ?, ?)",
                (record.id, record.doc_id, vector, json.dumps(record.metadata)),
            )
            rows.append((cursor.lastrowid, record.text))
        self._db.executemany("INSERT INTO chunks (rowid, text) VALUES (?, ?)", rows)

    @contextmanager
    def snapshot(self, page: int = 10_000) -> Iterator[tuple[int, Iterator[list[Record]]]]:
        """The generation the index is at and every record (id, text, metadata, vector) as of
        it, `page` at a time, read in one read transaction (`_reading`): the index stays
        usable meanwhile, and no more than a page is held at once."""
        with self._reading() as db:
            row = db.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
            rows = db.execute(
                "SELECT e.record_id, c.text, e.vector, e.metadata FROM entries AS e "
                "JOIN chunks AS c ON c.rowid = e.rowid"
            )

            def pages() -> Iterator[list[Record]]:
                while batch := rows.fetchmany(page):
                    # orjson reads what json wrote 4x faster (no value it cannot read is
                    # stored: Chroma takes no NaN, no lone surrogate, no integer past int64)
                    yield [
                        Record(rid, text, orjson.loads(meta), np.frombuffer(vector, np.float32))
                        for rid, text, vector, meta in batch
                    ]

            yield (int(row[0]) if row else -1), pages()

    def sample(self, pick: Callable[[int], np.ndarray], dim: int) -> tuple[int, np.ndarray]:
        """How many records the index holds, and the vectors of those at the positions `pick`
        chooses for that many (ascending, in rowid order), read in one read transaction
        (`_reading`)."""
        with self._reading() as db:
            rowids = np.array(
                [rowid for (rowid,) in db.execute("SELECT rowid FROM entries ORDER BY rowid")],
                dtype=np.int64,
            )
            wanted = rowids[pick(len(rowids))]
            vectors = np.empty((len(wanted), dim), dtype=np.float32)  # filled a page at a time
            for start in range(0, len(wanted), SAMPLE_PAGE):
                part = wanted[start : start + SAMPLE_PAGE]
                rows = db.execute(
                    "SELECT vector FROM entries WHERE rowid IN (SELECT value FROM json_each(?)) "
                    "ORDER BY rowid",
                    (json.dumps(part.tolist()),),
                )
                page = b"".join(vector for (vector,) in rows)
                vectors[start : start + len(part)] = np.frombuffer(page, np.float32).reshape(
                    -1, dim
                )
            return len(rowids), vectors

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on a connection of its own (WAL: a consistent view while the
        index's own connection writes), read-only: it never changes the index, and a missing
        file is an error, not a new empty index."""
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            db.execute("BEGIN")
            yield db
        finally:
            db.close()

    def _set_generation(self, generation: int) -> None:
        self._db.execute(
            "INSERT INTO state (key, value) VALUES ('generation', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (generation,),
        )

    def search(
        self, text: str, limit: int, allowed: Callable[[str], bool] | None = None
    ) -> list[KeywordHit]:
        """The best-matching chunks, best first.

        `allowed` restricts the result to the record ids it accepts (the filter's matches).
        """
        terms = query_terms(text)
        if not terms:
            return []
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        # equal scores by document id, as the in-memory index orders them at its cut
        ranked = (
            "SELECT c.rowid, -bm25(chunks) AS score, e.doc_id FROM chunks AS c "
            "JOIN entries AS e ON e.rowid = c.rowid WHERE chunks MATCH ? "
            "ORDER BY bm25(chunks), e.doc_id"
        )
        sql = (
            f"SELECT e.record_id, e.doc_id, r.score, e.vector FROM ({ranked} {{limit}}) AS r "
            "JOIN entries AS e ON e.rowid = r.rowid ORDER BY r.score DESC, r.doc_id"
        )
        with self._lock:
            if allowed is None:
                rows = self._db.execute(sql.format(limit="LIMIT ?"), (match, limit))
                return [_hit(row) for row in rows]
            # a filtered search ranks every match and keeps the allowed ones
            found = []
            for row in self._db.execute(sql.format(limit=""), (match,)):
                if allowed(row[0]):
                    found.append(_hit(row))
                    if len(found) >= limit:
                        break
            return found


def _open(path: Path) -> tuple[sqlite3.Connection, int]:
    """A connection to the index file (made, or its tables remade for another SCHEMA) and
    the generation it has applied."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # a lost tail is rebuilt from Chroma
        db.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value)")
        row = db.execute("SELECT value FROM state WHERE key = 'schema'").fetchone()
        if row is None or row[0] != SCHEMA:
            db.executescript(
                """
                DROP TABLE IF EXISTS chunks;
                DROP TABLE IF EXISTS entries;
                DELETE FROM state;
                """
            )
        db.executescript(
            f"""
            CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
                text, tokenize = '{TOKENIZER}');
            CREATE TABLE IF NOT EXISTS entries (
                rowid INTEGER PRIMARY KEY,
                record_id TEXT NOT NULL UNIQUE,
                doc_id TEXT NOT NULL,
                vector BLOB NOT NULL,
                metadata TEXT NOT NULL);
            INSERT OR REPLACE INTO state (key, value) VALUES ('schema', {SCHEMA});
            """
        )
        row = db.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        return db, int(row[0]) if row else -1
    except BaseException:
        db.close()
        raise


def _damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite found the file no database, or a malformed one (garbage written over
    it, a torn copy): not a lock, a permission or a full disk."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _move_aside(path: Path, exc: sqlite3.DatabaseError) -> Path:
    """Rename the damaged file to `<name>.damaged-<time>`, with its -wal and -shm (an old
    write-ahead log would be replayed into the new file); a KBError if it cannot be. A name
    too long for that (past 215 bytes) is moved aside under its digest: the rename failed,
    a traceback, and the store could not open (review helper 106)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = path.name
    if len(f"{name}.damaged-{stamp}-99-wal".encode()) > 255:
        name = _digest(name) + INDEX_SUFFIX
    try:
        aside = path.with_name(f"{name}.damaged-{stamp}")
        for n in itertools.count(1):
            if not aside.exists():
                break
            aside = path.with_name(f"{name}.damaged-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            side = path.with_name(path.name + suffix)
            if suffix == "" or side.exists():
                side.replace(aside.with_name(aside.name + suffix))
    except OSError as failed:
        raise StoreUnavailable(
            f"the keyword index {path} is damaged ({exc}) and could not be moved aside "
            f"({failed.strerror or failed}): move or delete it, and it is rebuilt from Chroma"
        ) from None
    return aside


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _hit(row: tuple[str, str, float, bytes]) -> KeywordHit:
    return KeywordHit(row[0], row[1], float(row[2]), np.frombuffer(row[3], dtype=np.float32))
