"""BM25 in memory: the keyword index's ranking, in milliseconds at 100k chunks.

SQLite FTS5 ranks an OR query by scoring every chunk that holds any of its terms, one row at
a time, and with a metadata filter kb had to walk all of them: tens of milliseconds at 100k
chunks, a hundred with a filter. Here each term's postings are arrays, a query's scores are
one `bincount` over the postings of its terms, and a filter is a boolean mask over the rows.
Tokens are FTS5's (`unicode61 remove_diacritics 2`, then the Porter stemmer), and the scores
are FTS5's bm25 (k1 1.2, b 0.75), so both paths rank alike; the FTS5 table stays the
persistent copy and answers until this index is loaded.

The rows are kb.mirror's (it owns this index), so a metadata filter's mask over the mirror's
rows applies here as it is.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from array import array
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import Stemmer

K1, B = 1.2, 0.75
WORD = re.compile(r"[^\W_]+")  # unicode61: letters and digits; everything else separates
_stemmer = Stemmer.Stemmer("porter")  # the algorithm FTS5's porter tokenizer implements
_stem_lock = threading.Lock()  # a Stemmer object is not safe to share between threads


@lru_cache(maxsize=200_000)
def _fold(word: str) -> str:
    """Lower case, diacritics off (remove_diacritics 2), then the Porter stem."""
    if not word.isascii():
        decomposed = unicodedata.normalize("NFKD", word)
        word = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    with _stem_lock:
        return _stemmer.stemWord(word.lower())


def tokens(text: str) -> list[str]:
    return [_fold(word) for word in WORD.findall(text)]


class Bm25:
    """Postings (rows, term frequencies) per term and each row's length. Rows are the
    mirror's: added in order, never reused; a removed row is masked out."""

    def __init__(self) -> None:
        self.size = 0
        self._postings: dict[str, tuple[array, array]] = {}  # term -> (rows, tfs)
        self._df: Counter[str] = Counter()  # live rows holding the term
        self._terms: list[tuple[str, ...]] = []  # each row's distinct terms, to undo df
        self._lengths = array("f")
        self._alive = array("b")
        self._live = 0
        self._total = 0.0  # summed length of the live rows
        # Appending to an array fails while numpy views its buffer: searches copy under this.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._live

    def add(self, row: int, text: str) -> None:
        counts = Counter(tokens(text))
        length = float(sum(counts.values()))
        with self._lock:
            if row != self.size:
                raise ValueError(f"rows are added in order: expected {self.size}, got {row}")
            self.size += 1
            self._lengths.append(length)
            self._alive.append(1)
            self._live += 1
            self._total += length
            self._terms.append(tuple(counts))
            self._df.update(counts.keys())
            for term, tf in counts.items():
                rows, tfs = self._postings.setdefault(term, (array("i"), array("f")))
                rows.append(row)
                tfs.append(tf)

    def remove(self, row: int) -> None:
        with self._lock:
            if row >= self.size or not self._alive[row]:
                return
            self._alive[row] = 0
            self._live -= 1
            self._total -= self._lengths[row]
            self._df.subtract(self._terms[row])

    def search(
        self, terms: Sequence[str], limit: int, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best `limit` rows for these (already folded) terms and their scores, best
        first; `mask` (over the rows) keeps only the rows a filter allows."""
        found = self._postings_of(terms)
        if not found:
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        rows = np.concatenate([part[0] for part in found])
        weights = np.concatenate([part[1] for part in found])
        scores = np.bincount(rows, weights=weights, minlength=self.size)
        touched = np.zeros(len(scores), dtype=bool)  # live rows holding a term: score > 0
        touched[rows[weights > 0]] = True
        if mask is not None:
            touched[: len(mask)] &= mask[: len(touched)]
            touched[len(mask) :] = False
        hits = np.flatnonzero(touched)
        if hits.size > limit:
            hits = hits[np.argpartition(-scores[hits], limit - 1)[:limit]]
        ordered = hits[np.argsort(-scores[hits], kind="stable")]
        return ordered, scores[ordered]

    def _postings_of(self, terms: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each known term's (rows, BM25 weight in each row); dead rows weigh 0."""
        with self._lock:  # copies out under the lock, so appends never meet a reader's view
            if not self._live:
                return []
            live, average = self._live, self._total / self._live
            lengths = np.frombuffer(self._lengths, dtype=np.float32)
            alive = np.frombuffer(self._alive, dtype=np.int8)
            found = []
            for term in terms:  # a repeated term counts again, as a repeated FTS5 phrase does
                postings, df = self._postings.get(term), self._df.get(term, 0)
                if postings is None or df <= 0:
                    continue
                rows = np.frombuffer(postings[0], dtype=np.int32).copy()
                tfs = np.frombuffer(postings[1], dtype=np.float32).copy()
                found.append((df, rows, tfs, lengths[rows], alive[rows]))
            del lengths, alive  # release the buffers before the lock
        out = []
        for df, rows, tfs, length, alive_rows in found:
            # FTS5's idf, floored so that a term in most rows still counts a little
            idf = max(math.log((live - df + 0.5) / (df + 0.5)), 1e-6)
            norm = K1 * (1 - B + B * length / average)
            out.append((rows, idf * (K1 + 1) * tfs / (tfs + norm) * alive_rows))
        return out
