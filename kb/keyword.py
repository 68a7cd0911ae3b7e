"""The keyword side: a BM25 index (SQLite FTS5) over the same chunk records as the Chroma store.

It lives in a SQLite file beside the embedded store and is kept in step by the store's writes.
Chroma stays the source of truth: the index records the write generation it has seen, the
collection records the latest one, and an index that is missing or behind is rebuilt from
Chroma (after a crash between the two writes, or another process writing to a shared store).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from kb.records import Record

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
TOKEN = re.compile(r"\w+", re.UNICODE)
MAX_TERMS = 64


def query_terms(text: str) -> list[str]:
    """The distinct non-stopword terms of a query, in order."""
    words = [w.lower() for w in TOKEN.findall(text)]
    return list(dict.fromkeys(w for w in words if w not in STOPWORDS))[:MAX_TERMS]


class KeywordIndex:
    """BM25 over chunk texts, with FTS5's Porter stemmer; scores are -bm25 (higher is better)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(
                """
                CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
                    text, record_id UNINDEXED, doc_id UNINDEXED,
                    tokenize = 'porter unicode61 remove_diacritics 2');
                CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER);
                """
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @property
    def generation(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT value FROM state WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else -1

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def apply(self, upserted: Sequence[Record], deleted: Iterable[str], generation: int) -> None:
        """Index these records, drop these ids, and record the generation: one transaction."""
        gone = list(dict.fromkeys([*deleted, *(r.id for r in upserted)]))
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM chunks WHERE record_id = ?", [(i,) for i in gone])
            self._db.executemany(
                "INSERT INTO chunks (text, record_id, doc_id) VALUES (?, ?, ?)",
                [(r.text, r.id, r.doc_id) for r in upserted],
            )
            self._set_generation(generation)

    def rebuild(self, records: Iterable[Record], generation: int) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM chunks")
            self._db.executemany(
                "INSERT INTO chunks (text, record_id, doc_id) VALUES (?, ?, ?)",
                ((r.text, r.id, r.doc_id) for r in records),
            )
            self._set_generation(generation)

    def _set_generation(self, generation: int) -> None:
        self._db.execute(
            "INSERT INTO state (key, value) VALUES ('generation', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (generation,),
        )

    def search(
        self, text: str, limit: int, allowed: set[str] | None = None
    ) -> list[tuple[str, str, float]]:
        """(record id, document id, score) of the best-matching chunks, best first.

        `allowed` restricts the result to these record ids (the metadata filter's matches).
        """
        terms = query_terms(text)
        if not terms or (allowed is not None and not allowed):
            return []
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        sql = "SELECT record_id, doc_id, -bm25(chunks) FROM chunks WHERE chunks MATCH ?"
        with self._lock:
            if allowed is None:
                rows = self._db.execute(f"{sql} ORDER BY bm25(chunks) LIMIT ?", (match, limit))
                return [(r[0], r[1], float(r[2])) for r in rows]
            # a filtered search ranks every match and keeps the allowed ones
            rows = self._db.execute(f"{sql} ORDER BY bm25(chunks)", (match,))
            found = []
            for record_id, doc_id, score in rows:
                if record_id in allowed:
                    found.append((record_id, doc_id, float(score)))
                    if len(found) >= limit:
                        break
            return found
