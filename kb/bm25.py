"""BM25 in memory: the keyword index's ranking, in milliseconds at 100k chunks.

SQLite FTS5 ranks an OR query by scoring every chunk that holds any of its terms, one row at
a time, and with a metadata filter kb had to walk all of them: tens of milliseconds at 100k
chunks, a hundred with a filter. Here each term's postings are arrays, a query's scores are
one `bincount` over the postings of its terms, and a filter is a boolean mask over the rows.
Tokens are FTS5's (kb.tokens), and the scores are FTS5's bm25 (k1 1.2, b 0.75), so both
paths rank alike; the FTS5 table stays the persistent copy and answers until this index is
loaded.

The rows are kb.mirror's (it owns this index), so a metadata filter's mask over the mirror's
rows applies here as it is.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Sequence

import numpy as np

from kb.tokens import token_lists

K1, B = 1.2, 0.75
TF_CAP = 65_535  # term frequencies are kept as uint16; a higher one counts as this


class _Column:
    """A growing numpy column with spare capacity. Cells below a reader's length never change
    (except `alive`, set once to 0); growing copies into a new array, and readers keep the one
    they took."""

    def __init__(self, dtype: type, capacity: int = 4) -> None:
        self.data: np.ndarray = np.zeros(capacity, dtype=dtype)

    def put(self, start: int, values: Sequence[float]) -> None:
        """Write `values` from `start` on, growing if they do not fit."""
        end = start + len(values)
        if end > len(self.data):
            grown = np.zeros(max(end, 2 * len(self.data)), dtype=self.data.dtype)
            grown[:start] = self.data[:start]
            self.data = grown  # readers holding the old array still see their rows
        self.data[start:end] = values


class Bm25:
    """Postings (rows, term frequencies) per term, and each row's length. Rows are the
    mirror's: added in order, never reused (a row's text never changes, so neither does its
    length); a removed row is masked out.

    Six bytes a posting: a row (int32) and its term frequency (uint16, capped). A row's length
    is looked up by row at search time, and a term's document frequency is its postings'
    count, or, once rows have been removed, its live postings' (counted at search time, kept
    until the next write). At 100k paragraphs the index takes 92 MiB; with each posting's
    length, float term frequencies and each row's list of terms (to undo its frequencies on
    removal) it took 269, for 0.1 ms less a search (`python -m bench.micro --only keyword`).

    Searches take no lock: a term's postings are published as one (rows, tfs, count) tuple
    after the new postings are written past the readers' count, so a search sees each term
    either before or after a write, never half of one. Writes are serialized by the mirror
    (and by a lock here)."""

    def __init__(self) -> None:
        self.size = 0
        self._postings: dict[str, tuple[_Column, _Column, int]] = {}  # rows, tfs, how many
        self._lengths = _Column(np.float32)
        self._alive = _Column(np.int8)
        self._removed = 0  # rows removed so far
        # term -> (rows removed, postings, live postings) when last counted: a term's count
        # holds until a row is removed or the term gets new rows
        self._live: dict[str, tuple[int, int, int]] = {}
        self._stats = (0, 0.0)  # live rows and their summed length, published together
        self._writes = threading.Lock()

    def __len__(self) -> int:
        return self._stats[0]

    def add(self, row: int, text: str) -> None:
        self.add_many(row, [text])

    def add_many(self, first: int, texts: Sequence[str]) -> None:
        """Add rows first, first + 1, ... holding these texts (one publish per term)."""
        found = token_lists(texts)
        lengths = [float(len(terms)) for terms in found]
        postings: dict[str, tuple[list[int], list[int]]] = {}
        for row, terms in enumerate(found, first):
            for term, tf in Counter(terms).items():
                posted = postings.get(term)
                if posted is None:
                    posted = postings[term] = ([], [])
                posted[0].append(row)
                posted[1].append(tf if tf <= TF_CAP else TF_CAP)
        with self._writes:
            if first != self.size:
                raise ValueError(f"rows are added in order: expected {self.size}, got {first}")
            self._lengths.put(first, lengths)
            self._alive.put(first, [1] * len(texts))
            for term, (rows, tfs) in postings.items():
                columns = self._postings.get(term)
                if columns is None:
                    columns = (_Column(np.int32), _Column(np.uint16), 0)
                n = columns[2]
                columns[0].put(n, rows)
                columns[1].put(n, tfs)
                self._postings[term] = (columns[0], columns[1], n + len(rows))
            live, total = self._stats
            self._stats = (live + len(texts), total + sum(lengths))
            self.size = first + len(texts)

    def remove(self, row: int) -> None:
        with self._writes:
            if row >= self.size or not self._alive.data[row]:
                return
            self._alive.data[row] = 0
            self._removed += 1
            live, total = self._stats
            self._stats = (live - 1, total - float(self._lengths.data[row]))

    def search(
        self, terms: Sequence[str], limit: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best `limit` rows for these (already folded) terms and their scores, best
        first, with any more tied with the last of them (equal BM25 scores are common: the
        caller decides ties by id); `mask` (over the rows) keeps only the rows a filter
        allows."""
        size = self.size  # rows a concurrent add publishes later are left out
        found = self._postings_of(terms, size)
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        rows = np.concatenate([part[0] for part in found])
        weights = np.concatenate([part[1] for part in found])
        scores = np.bincount(rows, weights=weights, minlength=size)
        touched = np.zeros(len(scores), dtype=bool)  # live rows holding a term
        touched[rows] = True
        touched &= self._alive.data[:size].view(bool)
        if mask is not None:
            touched[: len(mask)] &= mask[: len(touched)]
            touched[len(mask) :] = False
        hits = np.flatnonzero(touched)
        if hits.size > limit:  # the best `limit`, and every row tied with the last of them
            last = scores[hits[np.argpartition(-scores[hits], limit - 1)[limit - 1]]]
            hits = hits[scores[hits] >= last]
        ordered = hits[np.argsort(-scores[hits], kind="stable")]
        return ordered, scores[ordered]

    def _postings_of(self, terms: Sequence[str], size: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each known term's rows below `size` and its BM25 weight in each (dead rows too:
        `search` masks them out)."""
        live, total = self._stats
        removed = self._removed
        if not live:
            return []
        # rows below `size` had their lengths (and alive flags) written before it was published
        row_lengths, alive = self._lengths.data, self._alive.data
        # FTS5's bm25 as tf * (K1 + 1) / (tf + K1 * (1 - B) + K1 * B * length / average)
        base, slope = K1 * (1 - B), K1 * B / (total / live)
        out = []
        for term in terms:  # a repeated term counts again, as a repeated FTS5 phrase does
            postings = self._postings.get(term)
            if postings is None:
                continue
            n = postings[2]
            rows, tfs = postings[0].data[:n], postings[1].data[:n]
            if rows.size and rows[-1] >= size:  # written after this search began
                keep = rows < size
                rows, tfs = rows[keep], tfs[keep]
            df = self._live_postings(term, rows, alive, removed) if removed else rows.size
            if df <= 0:
                continue
            # FTS5's idf, floored so that a term in most rows still counts a little (a write
            # meanwhile may have added a term's rows but not yet counted them live: min)
            df = min(df, live)
            idf = max(math.log((live - df + 0.5) / (df + 0.5)), 1e-6)
            tf = tfs.astype(np.float32)
            weights = np.take(row_lengths, rows)  # (take: 3x faster than rows as index)
            weights *= np.float32(slope)
            weights += np.float32(base)
            weights += tf
            np.divide(tf, weights, out=weights)
            weights *= np.float32(idf * (K1 + 1))
            out.append((rows, weights))
        return out

    def _live_postings(self, term: str, rows: np.ndarray, alive: np.ndarray, removed: int) -> int:
        """How many of a term's postings `rows` are of live rows (counted again only after a
        removal or an add)."""
        known = self._live.get(term)
        if known is not None and known[:2] == (removed, rows.size):
            return known[2]
        count = int(np.count_nonzero(np.take(alive, rows)))
        self._live[term] = (removed, rows.size, count)
        return count
