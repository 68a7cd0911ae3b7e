"""A bounded mapping for caches read by many threads: the least recently used out."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """Up to `most` items; reading one makes it the most recently used. Reads take no
    lock: one racing an eviction finds the item or not, never a broken mapping (each
    OrderedDict call is one step under the GIL)."""

    def __init__(self, most: int) -> None:
        self.most = most
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()  # one writer at a time evicts

    def get(self, key: K) -> V | None:
        try:
            self._items.move_to_end(key)
        except KeyError:
            return None
        return self._items.get(key)  # None if evicted since the move

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.most:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
