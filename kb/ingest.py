"""Drive a load: batches of validated documents from the loader into a sink (store or API)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Literal

from kb.loader import Item, Problem, Summary
from kb.records import derive_id
from kb.schemas import AddResponse, DocumentIn

Sink = Callable[[Sequence[DocumentIn]], AddResponse]


def ingest(
    entries: Iterable[Item | Problem],
    sink: Sink,
    *,
    batch_size: int,
    strict: bool = False,
    on_problem: Callable[[Problem], None] = lambda problem: None,
    on_batch: Callable[[int], None] = lambda count: None,
) -> Summary:
    """Write every good record through `sink`, batch by batch; collect the bad ones.

    A record repeating an earlier record's id is skipped when its content is the same and
    reported otherwise. With `strict`, the first bad record stops the load; the good records
    before it are written.
    """
    summary = Summary()
    seen: dict[str, Item] = {}
    batch: list[Item] = []

    def flush() -> None:
        if batch:
            result = sink([item.doc for item in batch])
            summary.added += result.added
            summary.updated += result.updated
            summary.skipped += result.skipped
            on_batch(len(batch))
            batch.clear()

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
    flush()
    return summary


def _classify(item: Item, seen: dict[str, Item]) -> Literal["new", "same"] | Problem:
    """'new' for an id met first, 'same' for an identical repeat, else the conflict."""
    doc_id = item.doc.id if item.doc.id is not None else derive_id(item.doc.text)
    first = seen.setdefault(doc_id, item)
    if first is item:
        return "new"
    if first.doc == item.doc:
        return "same"
    return Problem(item.source, item.line, f"id '{doc_id}' repeats {first.source}:{first.line}")
