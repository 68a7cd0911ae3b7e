"""Share one expensive run between concurrent callers: items that arrive while the run is busy
go together into its next run. The encoder batches queries this way (sixteen clients cost a
few batched runs, not sixteen), the mirror batches the query vectors it scores against the
same matrix (one matrix product instead of one pass over the vectors per query), and the
collection batches its nearest-neighbour queries to Chroma."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

Run = Callable[[Sequence[Any]], Any]  # items -> one row per item (an array or a list)


class _Slot:
    def __init__(self, items: Sequence[Any]) -> None:
        self.items = items
        self.rows: Any = None  # this caller's rows of the run's answer
        self.error: BaseException | None = None
        self.done = False


class Batcher:
    """Whoever finds the run idle starts it for every waiting caller (itself included); the
    others wait for their rows. Nobody waits for a timer: an idle run starts at once."""

    def __init__(self, run: Run, max_items: int = 256, *, isolate: bool = False) -> None:
        """`isolate`: after a shared run fails, run each caller alone, so one caller's bad
        item fails only that caller (the encoder: a text its tokenizer refuses). Not for runs
        that fail for everyone when they fail (Chroma away: each retry would wait its own
        timeout while every new caller queues behind them)."""
        self._run_items = run
        self._max_items = max_items
        self._isolate = isolate
        self._waiting: list[_Slot] = []
        self._busy = False
        self._changed = threading.Condition()

    def __call__(self, items: Sequence[Any]) -> Any:
        slot = _Slot(items)
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
        return slot.rows

    def _take(self) -> list[_Slot]:
        batch: list[_Slot] = []
        size = 0
        while self._waiting and (
            not batch or size + len(self._waiting[0].items) <= self._max_items
        ):
            slot = self._waiting.pop(0)
            batch.append(slot)
            size += len(slot.items)
        return batch

    def _run(self, batch: list[_Slot]) -> None:
        try:
            self._answer(batch)
        except Exception as exc:
            self._each_alone(batch, exc)
        except BaseException as exc:  # an interrupt: nobody's rows are coming
            for slot in batch:
                slot.error = exc
        finally:
            with self._changed:
                for slot in batch:
                    slot.done = True
                self._busy = False
                self._changed.notify_all()

    def _answer(self, batch: list[_Slot]) -> None:
        rows = self._run_items([item for slot in batch for item in slot.items])
        start = 0
        for slot in batch:
            slot.rows = rows[start : start + len(slot.items)]
            start += len(slot.items)

    def _each_alone(self, batch: list[_Slot], exc: Exception) -> None:
        """After a shared run failed: with `isolate` each caller runs alone and only the
        culprit sees an error; otherwise every caller sees the run's."""
        if len(batch) == 1 or not self._isolate:
            for slot in batch:
                slot.error = exc
            return
        for slot in batch:
            try:
                self._answer([slot])
            except BaseException as own:
                slot.error = own
