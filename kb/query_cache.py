"""Query vectors kept by text: a search asked again skips the encoder.

The encoder is most of a query's cost (about 4 of 8 ms at 100k documents, README Speed),
and the same text comes back often: the search page sends it again for every change of a
filter, the threshold or top_k, and clients page through results or retry. The vectors are
kept per process, least recently used out, `KB_QUERY_CACHE` texts (384 floats each: 1.5 KiB).
A process has one model, so a kept vector never goes stale.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from kb.embeddings import Embedder, WrappedEmbedder


class QueryCache(WrappedEmbedder):
    """An embedder whose query vectors are kept by text, up to `size` texts; documents go
    to `inner` as they come. `counted(hits, misses)` hears of each call's lookups."""

    def __init__(
        self, inner: Embedder, size: int, counted: Callable[[int, int], None] | None = None
    ) -> None:
        super().__init__(inner)
        self.size = size
        self._kept: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._counted = counted

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            looked_up = {text: self._touch(text) for text in texts}
        found = {text: vector for text, vector in looked_up.items() if vector is not None}
        missing = [text for text in looked_up if text not in found]
        if missing:  # encoded outside the lock: other searches' hits do not wait for it
            vectors = self.inner.embed_queries(missing)
            with self._lock:
                for text, vector in zip(missing, vectors, strict=True):
                    found[text] = self._keep(text, vector)
        if self._counted is not None:
            self._counted(len(texts) - len(missing), len(missing))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[text] for text in texts])  # a new array: the kept stay as kept

    def _touch(self, text: str) -> np.ndarray | None:
        vector = self._kept.get(text)
        if vector is not None:
            self._kept.move_to_end(text)
        return vector

    def _keep(self, text: str, vector: np.ndarray) -> np.ndarray:
        kept = vector.astype(np.float32, copy=True)
        kept.flags.writeable = False
        self._kept[text] = kept
        self._kept.move_to_end(text)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)
        return kept
