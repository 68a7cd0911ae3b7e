"""Query vectors kept by text: a search asked again skips the encoder.

The encoder is about half of a query's time (4.2 of 8.2 ms at 100k documents in-process,
`python -m bench.breakdown`), and the same text comes back often: the search page sends it
again for every change of a filter, the threshold or top_k, and clients page through
results or retry. The vectors are kept per process, least recently used out,
`KB_QUERY_CACHE` texts (384 floats each: 1.5 KiB). A process has one model, so a kept
vector never goes stale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from kb.embeddings import Embedder, WrappedEmbedder
from kb.lru import Lru


class QueryCache(WrappedEmbedder):
    """An embedder whose query vectors are kept by text, up to `size` texts; documents go
    to `inner` as they come. `counted(hits, misses)` hears of each call's lookups."""

    def __init__(
        self, inner: Embedder, size: int, counted: Callable[[int, int], None] | None = None
    ) -> None:
        super().__init__(inner)
        self._kept: Lru[str, np.ndarray] = Lru(size)
        self._counted = counted

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        looked_up = {text: self._kept.get(text) for text in texts}
        found = {text: vector for text, vector in looked_up.items() if vector is not None}
        missing = [text for text in looked_up if text not in found]
        if missing:
            for text, vector in zip(missing, self.inner.embed_queries(missing), strict=True):
                kept = vector.astype(np.float32, copy=True)
                kept.flags.writeable = False
                self._kept.put(text, kept)
                found[text] = kept
        if self._counted is not None:
            self._counted(len(texts) - len(missing), len(missing))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[text] for text in texts])  # a new array: the kept stay as kept
