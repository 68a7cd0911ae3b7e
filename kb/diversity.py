"""Maximal marginal relevance: re-rank so the top results are not near-copies of each other."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kb.ranking import Hit
from kb.store import KnowledgeStore


def mmr(
    store: KnowledgeStore, query: np.ndarray, hits: Sequence[Hit], k: int, lam: float
) -> list[Hit]:
    """Greedily pick k hits maximizing lam * relevance - (1 - lam) * max similarity to the
    hits already picked; relevance is the cosine score, similarity is between shown chunks."""
    if len(hits) <= 1 or lam >= 1.0:
        return list(hits[:k])
    found = {
        r.id: r.embedding for r in store.records.get([h.record.id for h in hits], embeddings=True)
    }
    pool = [h for h in hits if h.record.id in found]
    vectors = np.asarray([found[h.record.id] for h in pool], dtype=np.float32)
    relevance = vectors @ query
    chosen: list[int] = []
    closest = np.full(len(pool), -np.inf, dtype=np.float32)
    while len(chosen) < min(k, len(pool)):
        penalty = np.where(np.isinf(closest), 0.0, closest)
        gain = lam * relevance - (1 - lam) * penalty
        gain[chosen] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        closest = np.maximum(closest, vectors @ vectors[best])
    return [pool[i] for i in chosen]
