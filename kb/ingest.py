"""Drive a load: batches of validated documents from the loader into a sink (store or API)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from kb.loader import Item, Problem, Summary
from kb.records import derive_id
from kb.schemas import AddResponse, DocumentIn

Sink = Callable[[Any], AddResponse]
# Documents per batch. Chroma's HNSW insert costs a third of the encoder's time on short texts
# and less per record in bigger calls: 10k short documents load in 72 s at 256, 62 s at 1024.
BATCH_SIZE = 1024
Prepare = Callable[[Sequence[DocumentIn]], Any]


def ingest(
    entries: Iterable[Item | Problem],
    sink: Sink,
    *,
    batch_size: int,
    strict: bool = False,
    on_problem: Callable[[Problem], None] = lambda problem: None,
    on_batch: Callable[[int], None] = lambda count: None,
    prepare: Prepare | None = None,
) -> Summary:
    """Write every good record through `sink`, batch by batch; collect the bad ones.

    A record repeating an earlier record's id is skipped when its content is the same and
    reported otherwise. With `strict`, the first bad record stops the load; the good records
    before it are written.

    With `prepare` (the store's embedding half of an add), each batch is prepared here while
    the previous one is committed by `sink` on a writer thread: encoder and store overlap.
    """
    summary = Summary()
    seen: dict[str, Item] = {}
    batch: list[Item] = []
    writer = ThreadPoolExecutor(1, thread_name_prefix="kb-ingest") if prepare else None
    pending: list[tuple[Future[AddResponse], int]] = []

    def count(result: AddResponse, size: int) -> None:
        summary.added += result.added
        summary.updated += result.updated
        summary.skipped += result.skipped
        summary.duplicates += len(result.duplicates)
        on_batch(size)

    def settle() -> None:
        while pending:
            future, size = pending.pop()
            count(future.result(), size)

    def flush() -> None:
        if not batch:
            return
        docs = [item.doc for item in batch]
        batch.clear()
        if writer is None or prepare is None:
            count(sink(docs), len(docs))
            return
        work = prepare(docs)
        settle()  # the previous batch is written before this one goes
        pending.append((writer.submit(sink, work), len(docs)))

    try:
        _feed(entries, batch, seen, summary, flush, batch_size, strict, on_problem)
        flush()
        settle()
    finally:
        if writer is not None:
            writer.shutdown(wait=True)
    return summary


def _feed(
    entries: Iterable[Item | Problem],
    batch: list[Item],
    seen: dict[str, Item],
    summary: Summary,
    flush: Callable[[], None],
    batch_size: int,
    strict: bool,
    on_problem: Callable[[Problem], None],
) -> None:

    for entry in entries:
        problem = entry
        if isinstance(entry, Item):
            verdict = _classify(entry, seen)
            if verdict == "new":
                batch.append(entry)
                if len(batch) >= batch_size:
                    flush()
                continue
            if verdict == "same":  # the same document twice in the input
                summary.skipped += 1
                continue
            problem = verdict
        summary.failed += 1
        summary.problems.append(problem)
        on_problem(problem)
        if strict:
            break


def _classify(item: Item, seen: dict[str, Item]) -> Literal["new", "same"] | Problem:
    """'new' for an id met first, 'same' for an identical repeat, else the conflict."""
    doc_id = item.doc.id if item.doc.id is not None else derive_id(item.doc.text)
    first = seen.setdefault(doc_id, item)
    if first is item:
        return "new"
    if first.doc == item.doc:
        return "same"
    return Problem(item.source, item.line, f"id '{doc_id}' repeats {first.source}:{first.line}")
