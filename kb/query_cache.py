"""Query vectors kept by text: a search asked again skips the encoder.

The encoder is about half of a query's time (4.2 of 8.2 ms at 100k documents in-process,
`python -m bench.breakdown`), and the same text comes back often: the search page sends it
again for every change of a filter, the threshold or top_k, and clients page through
results or retry. The vectors are kept per process, least recently used out,
`KB_QUERY_CACHE` texts, each by a 16-byte BLAKE2b digest of its text (about 1.8 KiB an entry
with its 384 floats, whatever the text's length: keyed by the text itself, 1,024 queries of
10,000 characters past Latin-1 held 40 MB; review helper 87). Two texts share a digest with a
chance of about 2^-128, never in practice. A process has one model, so a kept vector never
goes stale.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from kb.embeddings import Embedder, WrappedEmbedder
from kb.lru import Lru


class QueryCache(WrappedEmbedder):
    """An embedder whose query vectors are kept by text (its digest), up to `size` texts;
    documents go to `inner` as they come. `counted(hits, misses)` hears of each call's
    lookups."""

    def __init__(
        self, inner: Embedder, size: int, counted: Callable[[int, int], None] | None = None
    ) -> None:
        super().__init__(inner)
        self._kept: Lru[bytes, np.ndarray] = Lru(size)
        self._counted = counted

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        keys = {text: digest(text) for text in texts}  # each distinct text once
        found: dict[str, np.ndarray] = {}
        for text, key in keys.items():
            if (vector := self._kept.get(key)) is not None:
                found[text] = vector
        missing = [text for text in keys if text not in found]
        if missing:
            for text, vector in zip(missing, self.inner.embed_queries(missing), strict=True):
                kept = vector.astype(np.float32, copy=True)
                kept.flags.writeable = False
                self._kept.put(keys[text], kept)
                found[text] = kept
        if self._counted is not None:
            self._counted(len(texts) - len(missing), len(missing))
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[text] for text in texts])  # a new array: the kept stay as kept


def digest(text: str) -> bytes:
    """A text's key: 16 bytes, whatever its length (a lone surrogate, which no request
    carries, is hashed as it is held)."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
