"""What every search mode shares: a hit, widening a read of chunks until it holds enough
documents, what a result takes from a ranking, and cosine scores kept in [-1, 1] (equal for
equal vectors, and 1 for a text against itself).

Whatever the mode, a hit's `score` is the cosine similarity of the query with the chunk shown,
so the similarity threshold means the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from kb.records import CHUNKS, Record

T = TypeVar("T")
MAX_CANDIDATES = 10_000  # chunks a search reads at most to find its documents
FIRST_READ = 3  # chunks read first for each document wanted
# A cosine this close to 1 is 1: a stored vector's length is 1 only to float32's precision, so
# a text scores against itself (or an identical copy) from 0.9999992 to 1.000001, and a
# threshold of 1.0 missed about half of the exact copies.
NEAR_ONE = 2e-6


def clamp_cosines(scores: np.ndarray) -> np.ndarray:
    """Cosine scores within [-1, 1], those within NEAR_ONE of 1 made 1 (same dtype)."""
    clipped = np.clip(scores, -1.0, 1.0)
    return np.where(clipped >= 1.0 - NEAR_ONE, clipped.dtype.type(1.0), clipped)


def clamp_cosine(score: float) -> float:
    """One cosine score as `clamp_cosines` makes it."""
    return 1.0 if score >= 1.0 - NEAR_ONE else max(-1.0, score)


def cosines(vectors: np.ndarray, vector: np.ndarray) -> np.ndarray:
    """The cosine score of `vector` with each row of `vectors` (float32, clamped), the same
    for equal rows wherever they sit: a float32 matrix product (BLAS) gives identical vectors
    scores a few ulps apart by their place in its blocks, so identical texts would never tie
    and be ordered by id. Each row is summed alone in float64 and rounded to float32."""
    exact = np.einsum("ij,j->i", vectors, vector, dtype=np.float64)
    return clamp_cosines(exact.astype(np.float32))


def cosine_of_distance(distance: float) -> float:
    """Chroma's cosine distance as the cosine score (see clamp_cosines)."""
    return clamp_cosine(1.0 - float(distance))


@dataclass(slots=True)
class Hit:
    """A document's best chunk for one query (never changed once made: `replace` makes a new
    one; not frozen, because a frozen dataclass is slower to build and a query builds
    hundreds)."""

    record: Record  # without text and user metadata while `complete` is False
    score: float  # cosine similarity of the query with this chunk
    keyword: float | None = None  # BM25 of this document's best chunk, when it has one
    fused: float | None = None  # hybrid ordering score
    complete: bool = True  # False: only the ids are known; search fetches what it shows

    @property
    def chunked(self) -> bool:
        return int(self.record.metadata.get(CHUNKS, 1)) > 1


def widen(
    search: Callable[[int], Sequence[tuple[T, int, int]]], wanted: int, first: int | None = None
) -> list[T]:
    """Each query's documents from its best chunks, however many chunks share a document.

    `search(n)` reads the best n chunks of each query and answers (result, documents in it,
    chunks read). Ask for `first` chunks (FIRST_READ a document wanted unless given), then
    four times more each round, until every query has `wanted` documents or got fewer chunks
    than asked (no more match), or MAX_CANDIDATES.
    """
    n = min(first if first is not None else wanted * FIRST_READ, MAX_CANDIDATES)
    while True:
        found = search(n)
        done = all(documents >= wanted or chunks < n for _, documents, chunks in found)
        if done or n >= MAX_CANDIDATES:
            return [result for result, _, _ in found]
        n = min(n * 4, MAX_CANDIDATES)


@dataclass(frozen=True, slots=True)
class Ranking:
    """What a query's result takes from its ranking: the matches, and what the threshold
    dropped from the whole ranking (every mode reads its ranking alike, so the counts and
    near misses mean the same in each)."""

    matches: list[Hit]  # the best-ranked top_k scoring at least the threshold, ranking order
    candidates: int  # documents ranked: top_k in dense order, up to a side's depth in others
    rejected: int  # candidates scoring below the threshold
    misses: list[Hit]  # the top_k best-scored of those, best first: the near misses

    @classmethod
    def of(cls, hits: Sequence[Hit], top_k: int, min_score: float) -> Ranking:
        """A ranking's reading. The threshold picks before top_k cuts: keyword and hybrid
        order are not cosine order, so a weaker document ranked above passing ones is
        rejected, not shown in their place."""
        below = [hit for hit in hits if hit.score < min_score]
        passing = [hit for hit in hits if hit.score >= min_score]
        return cls(passing[:top_k], len(hits), len(below), best_scored(below, top_k))

    @property
    def best_rejected(self) -> float | None:
        return self.misses[0].score if self.misses else None


def best_scored(hits: Iterable[Hit], top_k: int) -> list[Hit]:
    """The top_k hits by score, best first; equal scores in id order, as everywhere."""
    return sorted(hits, key=lambda hit: (-hit.score, hit.record.doc_id))[:top_k]
