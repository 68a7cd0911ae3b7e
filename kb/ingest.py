"""Drive a load: batches of validated documents from the loader into a sink (store or API)."""

from __future__ import annotations

import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal, TypeVar

from kb.errors import KBError
from kb.loader import Item, Problem, Summary
from kb.records import content_hash, derive_id
from kb.schemas import AddResponse, DocumentIn

Sink = Callable[[Any], AddResponse]
# Documents per batch. Chroma's HNSW insert costs a third of the encoder's time on short texts
# and less per record in bigger calls: 10k short documents load in 72 s at 256, 62 s at 1024.
BATCH_SIZE = 1024
# A load's first batch holds this many documents, and each next one twice as many up to the
# batch size: the store's first write then overlaps the encoder's next batch, even in a load
# of one batch's worth (otherwise it is all encoding, then all writing).
FIRST_BATCH = 128
Prepare = Callable[[Sequence[DocumentIn]], Any]
READER_THREAD = "kb-read"  # the thread reading the input ahead (see _read_ahead)
WRITER_THREAD = "kb-ingest"  # the threads writing batches (a ThreadPoolExecutor's prefix)
T = TypeVar("T")


class LoadInterrupted(Exception):
    """The load was asked to stop (`stop`, set by a Ctrl-C in `kb load`); `summary` counts
    what was written: the batches under way were finished, none after them was started."""

    def __init__(self, summary: Summary) -> None:
        super().__init__("the load was interrupted")
        self.summary = summary


class LoadStopped(KBError):
    """A write failed and the load stopped; `summary` counts what was written before it and
    by the batches already in flight when it failed."""

    def __init__(self, error: KBError, summary: Summary, unsure: int = 0) -> None:
        super().__init__(error.message, code=error.code, status=error.status)
        self.error = error
        self.summary = summary
        # failed writes that may have been carried out all the same (a request to a service
        # that went away: KBClientError.may_have_landed), this one's included
        self.unsure = unsure


def ingest(
    entries: Iterable[Item | Problem],
    sink: Sink,
    *,
    batch_size: int,
    strict: bool = False,
    on_problem: Callable[[Problem], None] = lambda problem: None,
    on_batch: Callable[[int], None] = lambda count: None,
    prepare: Prepare | None = None,
    in_flight: int = 1,
    ahead: int = 0,
    weigh: Callable[[DocumentIn], int] | None = None,
    max_weight: int | None = None,
    stop: threading.Event | None = None,
    wait_on_quit: bool = True,
) -> Summary:
    """Write every good record through `sink`, batch by batch; collect the bad ones.

    A record repeating an earlier record's id is skipped when its content is the same and
    reported otherwise. With `strict`, the first bad record stops the load; the good records
    before it are written.

    With `prepare` (the store's embedding half of an add), the work runs in three stages on
    three threads: the input is read and validated ahead, each batch is prepared (embedded)
    here, and the previous batch is committed by `sink` on a writer thread, so the encoder
    never waits for the parser or the store. `in_flight` sinks may run at once (a service
    embeds one request while it writes another). A `prepare` that returns a Future (an
    encoder in another process) is given `ahead` more batches before the oldest is written,
    so that encoder always has work queued.

    Once `stop` is set, no further batch is started: the writes under way finish, are
    counted, and LoadInterrupted carries the counts. (The flag is checked between batches: a
    KeyboardInterrupt raised wherever the main thread happened to be could land inside
    ThreadPoolExecutor.submit, leaving a write running that nothing waited for or counted.)
    A KeyboardInterrupt (a second Ctrl-C) waits for the writes under way unless not
    `wait_on_quit` (a service's requests, which may hang until their timeout).
    """
    summary = Summary()
    writer = ThreadPoolExecutor(in_flight, thread_name_prefix=WRITER_THREAD) if prepare else None
    pending: list[tuple[Future[AddResponse], int]] = []

    def count(result: AddResponse, size: int) -> None:
        summary.added += result.added
        summary.updated += result.updated
        summary.skipped += result.skipped
        summary.skipped_changed += result.skipped_changed
        summary.duplicates += len(result.duplicates)
        on_batch(size)

    def settle(keep: int = 0) -> None:
        while len(pending) > keep:
            future, size = pending.pop(0)
            count(future.result(), size)

    prepared: deque[tuple[Any, int]] = deque()  # prepared batches (or their futures)

    def flush(batch: list[Item]) -> None:
        docs = [item.doc for item in batch]
        if writer is None or prepare is None:
            count(sink(docs), len(docs))
            return
        prepared.append((prepare(docs), len(docs)))
        while len(prepared) > ahead:
            write(*prepared.popleft())

    def write(work: Any, size: int) -> None:
        if isinstance(work, Future):
            work = work.result()
        assert writer is not None
        settle(in_flight - 1)  # the oldest batch is written before this one goes
        pending.append((writer.submit(sink, work), size))

    def drain() -> int:
        """Wait for the batches in flight after a failed one; count those written. How many
        of them failed such that they may have been written all the same."""
        unsure = 0
        while pending:
            future, size = pending.pop(0)
            try:
                count(future.result(), size)
            except Exception as exc:  # its own failure: the first one is reported
                unsure += bool(getattr(exc, "may_have_landed", False))
        return unsure

    events = _events(entries, batch_size, strict, _Weights(weigh, max_weight))
    stopping = stop or threading.Event()
    ended = threading.Event()  # every event was taken: the input is read through
    interrupted = False
    try:
        source = _read_ahead(events, stopping, ended) if prepare else _to_end(events, ended)
        for event in source:
            if stopping.is_set():
                break
            if event is None:  # the same document twice in the input
                summary.skipped += 1
            elif isinstance(event, Problem):
                summary.failed += 1
                summary.problems.append(event)
                on_problem(event)
            else:
                flush(event)
        # asked to stop once the input was all read (its last batch sent): nothing is left
        # to a next run, and the batches prepared are written (it said "interrupted")
        interrupted = stopping.is_set() and not ended.is_set()
        while prepared and not interrupted:
            write(*prepared.popleft())
        settle()
    except KBError as exc:
        unsure = drain() + bool(getattr(exc, "may_have_landed", False))
        raise LoadStopped(exc, summary, unsure) from exc
    finally:
        if writer is not None:
            quitting = sys.exc_info()[0] is KeyboardInterrupt
            writer.shutdown(wait=not (quitting and not wait_on_quit), cancel_futures=quitting)
    if interrupted:
        raise LoadInterrupted(summary)
    return summary


class _Weights:
    """A batch's running weight against the most one request may carry (none: unbounded)."""

    def __init__(self, weigh: Callable[[DocumentIn], int] | None, most: int | None) -> None:
        self.weigh, self.most, self.total = weigh, most, 0
        self.weight = 0  # the last item weighed

    def too_heavy(self, item: Item) -> Problem | None:
        """Weigh `item`: a problem when no request can carry it (a request holding it alone
        would be refused, and the load stop there)."""
        if self.weigh is None or self.most is None:
            return None
        self.weight = self.weigh(item.doc)
        if self.weight <= self.most:
            return None
        return Problem(
            item.source,
            item.line,
            f"the document is {self.weight:,} bytes as JSON; a request may carry "
            f"{self.most:,} bytes of documents (KB_MAX_REQUEST_BYTES)",
            item.unit,
        )

    def fits(self, batch: list[Item]) -> bool:
        """Whether the item last weighed can join `batch` (counted in if so; an empty batch
        takes it)."""
        if self.weigh is None or self.most is None:
            return True
        if batch and self.total + self.weight > self.most:
            self.total = self.weight  # it starts the next batch
            return False
        self.total = self.weight if not batch else self.total + self.weight
        return True


def _events(
    entries: Iterable[Item | Problem], batch_size: int, strict: bool, weights: _Weights
) -> Iterator[list[Item] | Problem | None]:
    """The input in order as batches of new records, problems, and None for each identical
    repeat; with `strict`, nothing after the first problem but the batch before it."""
    seen: dict[str, tuple[str, str]] = {}  # id -> where it first came, its content's hash
    batch: list[Item] = []
    limits = batch_limits(batch_size)
    limit = next(limits)
    for entry in entries:
        problem: Problem
        if isinstance(entry, Problem):
            problem = entry
        else:
            verdict = _classify(entry, seen)
            if verdict == "new" and (heavy := weights.too_heavy(entry)):
                # not written: a repeat of it is not "the same as one written" (skipped)
                del seen[_key(entry)]
                verdict = heavy
            if verdict == "new":
                if not weights.fits(batch):
                    yield batch
                    batch, limit = [], next(limits)
                batch.append(entry)
                if len(batch) >= limit:
                    yield batch
                    batch, limit = [], next(limits)
                continue
            if verdict == "same":
                yield None
                continue
            problem = verdict
        yield problem
        if strict:
            break
    if batch:
        yield batch


def batch_limits(batch_size: int) -> Iterator[int]:
    """The size of each batch of a load in turn: FIRST_BATCH, doubling up to batch_size."""
    size = min(batch_size, FIRST_BATCH)
    while True:
        yield size
        size = min(batch_size, 2 * size)


def _to_end(events: Iterable[T], ended: threading.Event) -> Iterator[T]:
    """`events`; `ended` is set once they are all taken."""
    yield from events
    ended.set()


def _read_ahead(
    events: Iterator[T], interrupt: threading.Event, ended: threading.Event, depth: int = 4
) -> Iterator[T]:
    """`events`, produced on another thread up to `depth` ahead: reading and validating the
    input (Python, holding the GIL) overlaps the encoder and the store (native code that
    releases it). An error on that thread is raised here, in order. Ends early once
    `interrupt` is set, even while the input (stdin, say) has nothing to read; `ended` is
    set when every event was taken."""
    ahead: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for event in events:
                if not offer((event, None)):
                    return
            offer((_END, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            offer((_END, exc))

    reader = threading.Thread(target=produce, name=READER_THREAD, daemon=True)
    reader.start()
    try:
        while True:
            try:
                event, error = ahead.get(timeout=0.1)
            except queue.Empty:
                if interrupt.is_set():
                    return
                continue
            if event is _END:
                if error is not None:
                    raise error
                ended.set()
                return
            yield event
    finally:
        stop.set()
        reader.join(timeout=1)  # a reader blocked on stdin is a daemon: left behind


_END = object()


def _key(item: Item) -> str:
    """The id `item` is stored under: its own, or the one derived from its text."""
    return item.doc.id if item.doc.id is not None else derive_id(item.doc.text)


def _classify(item: Item, seen: dict[str, tuple[str, str]]) -> Literal["new", "same"] | Problem:
    """'new' for an id met first, 'same' for an identical repeat, else the conflict. Only
    the first's place and content hash are kept: kept whole, every record read stayed in
    memory to the end of the load, twice the input's size (review helper 81)."""
    doc_id = _key(item)
    mine = (item.where, content_hash(item.doc.text, item.doc.metadata))
    first = seen.setdefault(doc_id, mine)
    if first is mine:
        return "new"
    where, digest = first
    # by content alone: an export writes out the id derived from the text, and that record
    # is the same document as the one that did not give it (it was refused as a conflict)
    if digest == mine[1]:
        return "same"
    if item.doc.id is None:  # "id '2e68...' repeats" named an id the user never wrote
        problem = f"the same text as {where}, with other metadata (no id to tell them apart)"
    else:
        problem = f"id '{doc_id}' repeats {where}"
    return Problem(item.source, item.line, problem, item.unit)
