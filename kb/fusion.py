"""Rank fusion for hybrid search: one ranking of documents from a dense and a keyword ranking.

Score fusion (the default) min-max normalizes each side's scores over its own candidates and
adds them, the dense side weighted DENSE_WEIGHT; a side that lacks a document adds 0.
Reciprocal rank fusion (Cormack et al.) adds 1 / (RRF_K + rank) from each side, where equal
scores on a side share a rank (1 + how many score better there: competition ranking), so a
document's value never depends on its id. Both work on arrays, so a query costs a few vector
operations however deep the candidate lists are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

RRF_K = 60
DENSE_WEIGHT = 0.5


@dataclass(frozen=True)
class Fused:
    """The best documents, best first: the fusion score of each, and where it stands in the
    dense and in the keyword ranking (-1 where it is absent)."""

    values: np.ndarray
    dense: np.ndarray
    keyword: np.ndarray


def fuse(
    dense_keys: np.ndarray,
    dense_scores: np.ndarray,
    keyword_keys: np.ndarray,
    keyword_scores: np.ndarray,
    method: str,
    limit: int | None = None,
    shown: np.ndarray | None = None,
    names: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Fused:
    """Fuse two rankings of document keys (each best first, one entry per document).

    Equal fusion scores are ordered by `shown` (one value per entry of both rankings: the
    score a result will show, higher first), then by key, or by `names(keys)` when given
    (keys that are numbers standing for ids: asked only when there is such a tie), so the
    order does not depend on how the candidates were found.
    """
    count = len(dense_keys)
    keys, where = np.unique(np.concatenate([dense_keys, keyword_keys]), return_inverse=True)
    if method == "rrf":
        parts = [_reciprocal(dense_scores), _reciprocal(keyword_scores)]
    else:
        parts = [
            DENSE_WEIGHT * _minmax(dense_scores),
            (1 - DENSE_WEIGHT) * _minmax(keyword_scores),
        ]
    values = np.bincount(where, weights=np.concatenate(parts), minlength=len(keys))
    dense_at = np.full(len(keys), -1)
    dense_at[where[:count]] = np.arange(count)
    keyword_at = np.full(len(keys), -1)
    keyword_at[where[count:]] = np.arange(len(keyword_keys))
    tiebreak = np.zeros(len(keys))
    if shown is not None:  # a document in both rankings shows its dense entry's score
        shown = np.asarray(shown, dtype=np.float64)
        tiebreak[where[count:]] = shown[count:]
        tiebreak[where[:count]] = shown[:count]
    order = np.lexsort((np.arange(len(keys)), -tiebreak, -values))
    if names is not None and _tied(values[order], tiebreak[order]):
        order = np.lexsort((names(keys), -tiebreak, -values))
    order = order[:limit]
    return Fused(values[order], dense_at[order], keyword_at[order])


def _tied(values: np.ndarray, tiebreak: np.ndarray) -> bool:
    """Whether two neighbours of an ordering are equal in both: only their keys order them."""
    return bool(np.any((values[1:] == values[:-1]) & (tiebreak[1:] == tiebreak[:-1])))


def _reciprocal(scores: np.ndarray) -> np.ndarray:
    """1 / (RRF_K + rank) for each score of a side, its rank 1 + the number of strictly
    better scores: equal scores share one (by position, ties' ranks went by their ids, and
    a document tied on one side and better on the other could finish below one it beat)."""
    scores = np.asarray(scores, dtype=np.float64)
    better = np.searchsorted(np.sort(-scores), -scores, side="left")
    return 1.0 / (RRF_K + 1 + better)


def _minmax(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if not scores.size:
        return scores
    low, span = scores.min(), scores.max() - scores.min()
    return (scores - low) / span if span else np.ones_like(scores)
