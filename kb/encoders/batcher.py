"""Share encoder runs between concurrent callers: queries that arrive while the encoder is busy
go together in its next run, so sixteen clients cost a few batched runs, not sixteen."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

Encode = Callable[[Sequence[str]], np.ndarray]


class _Slot:
    def __init__(self, texts: Sequence[str]) -> None:
        self.texts = texts
        self.vectors: np.ndarray | None = None
        self.error: BaseException | None = None
        self.done = False


class Batcher:
    """Whoever finds the encoder idle runs it for every waiting caller (itself included); the
    others wait for their rows. Nobody waits for a timer: an idle encoder starts at once."""

    def __init__(self, encode: Encode, max_texts: int = 256) -> None:
        self._encode = encode
        self._max_texts = max_texts
        self._waiting: list[_Slot] = []
        self._busy = False
        self._changed = threading.Condition()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        slot = _Slot(texts)
        with self._changed:
            self._waiting.append(slot)
            while self._busy and not slot.done:
                self._changed.wait()
            if not slot.done:
                batch = self._take()
                self._busy = True
        if not slot.done:
            self._run(batch)
        if slot.error is not None:
            raise slot.error
        assert slot.vectors is not None
        return slot.vectors

    def _take(self) -> list[_Slot]:
        batch, size = [], 0
        while self._waiting and (
            not batch or size + len(self._waiting[0].texts) <= self._max_texts
        ):
            slot = self._waiting.pop(0)
            batch.append(slot)
            size += len(slot.texts)
        return batch

    def _run(self, batch: list[_Slot]) -> None:
        try:
            vectors = self._encode([text for slot in batch for text in slot.texts])
            start = 0
            for slot in batch:
                slot.vectors = vectors[start : start + len(slot.texts)]
                start += len(slot.texts)
        except BaseException as exc:  # every caller of this run sees the failure
            for slot in batch:
                slot.error = exc
        with self._changed:
            for slot in batch:
                slot.done = True
            self._busy = False
            self._changed.notify_all()
