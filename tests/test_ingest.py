"""The load pipeline: batches, repeats and problems in order, the read-ahead thread, several
writes in flight, and stores opened for loading only."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Iterator, Sequence
from itertools import islice

import pytest

from kb.config import Settings
from kb.embeddings import Embedder
from kb.ingest import FIRST_BATCH, batch_limits, ingest
from kb.loader import Item, Problem
from kb.records import derive_id
from kb.schemas import AddResponse, DocumentIn
from kb.store import KnowledgeStore


def items(count: int, start: int = 0) -> list[Item]:
    return [
        Item("input.jsonl", i + 1, DocumentIn(id=f"d{i}", text=f"text {i}"))
        for i in range(start, start + count)
    ]


def recorder(delay: float = 0.0) -> tuple[list[list[str]], list[int], object]:
    """A sink that records each batch's ids and the most sinks that ran at once."""
    batches: list[list[str]] = []
    most = [0]
    running = [0]
    lock = threading.Lock()

    def sink(docs: Sequence[DocumentIn]) -> AddResponse:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(delay)
        with lock:
            running[0] -= 1
            batches.append([str(doc.id) for doc in docs])
        return AddResponse(ids=[str(d.id) for d in docs], added=len(docs), updated=0, skipped=0)

    return batches, most, sink


@pytest.mark.parametrize("prepare", [None, list])
def test_batches_repeats_and_problems_are_counted_in_order(prepare) -> None:
    entries: list[Item | Problem] = [*items(5), items(1)[0], Problem("input.jsonl", 9, "bad")]
    entries += items(2, start=5)
    problems: list[Problem] = []
    batches, _, sink = recorder()
    summary = ingest(
        entries,
        sink,
        batch_size=2,
        on_problem=problems.append,
        prepare=prepare,  # type: ignore[arg-type]
    )
    assert sorted(i for batch in batches for i in batch) == [f"d{i}" for i in range(7)]
    assert (summary.added, summary.skipped, summary.failed) == (7, 1, 1)
    assert [p.line for p in problems] == [9]


@pytest.mark.parametrize(("first", "again"), [(True, 1), (1, 1.0), ([0, 1], [False, True])])
def test_a_repeat_differing_only_in_a_values_type_is_reported(first, again) -> None:
    """True, 1 and 1.0 are equal to Python, not as metadata: the repeat is a conflict."""
    entries = [
        Item("input.jsonl", line, DocumentIn(id="x", text="t", metadata={"flag": value}))
        for line, value in ((1, first), (2, again), (3, first))
    ]
    problems: list[Problem] = []
    batches, _, sink = recorder()
    summary = ingest(entries, sink, batch_size=10, on_problem=problems.append)
    assert batches == [["x"]]
    assert (summary.added, summary.skipped, summary.failed) == (1, 1, 1)
    assert [(p.line, p.message) for p in problems] == [(2, "id 'x' repeats input.jsonl:1")]


def test_strict_stops_at_the_first_problem_after_writing_what_came_before() -> None:
    entries: list[Item | Problem] = [*items(3), Problem("input.jsonl", 4, "bad"), *items(3, 3)]
    batches, _, sink = recorder()
    summary = ingest(entries, sink, batch_size=10, strict=True, prepare=list)  # type: ignore[arg-type]
    assert batches == [["d0", "d1", "d2"]]
    assert summary.failed == 1


def test_an_error_while_reading_ahead_stops_the_load() -> None:
    def entries() -> Iterator[Item]:
        yield from items(4)
        raise OSError("the disk went away")

    _, _, sink = recorder()
    with pytest.raises(OSError, match="went away"):
        ingest(entries(), sink, batch_size=2, prepare=list)  # type: ignore[arg-type]


def test_writes_in_flight_are_bounded() -> None:
    batches, most, sink = recorder(delay=0.05)
    summary = ingest(items(12), sink, batch_size=2, prepare=list, in_flight=2)  # type: ignore[arg-type]
    assert summary.added == 12
    assert len(batches) == 6
    assert most[0] == 2


def test_a_store_opened_for_loading_keeps_no_in_memory_copies(
    settings: Settings, embedder: Embedder
) -> None:
    loading = KnowledgeStore.open(settings, embedder, searching=False)
    try:
        loading.add([DocumentIn(id="a", text="Sourdough needs a lively starter")])
        loading.replica.wait_loaded()
        assert loading.replica.mirror is None
        assert not loading.replica.ready
        assert loading.count() == 1
    finally:
        loading.close()
    searching = KnowledgeStore.open(settings, embedder)
    try:
        searching.replica.wait_loaded()
        assert searching.replica.mirror is not None
        assert len(searching.replica.mirror) == 1
        assert searching.keyword.count() == 1  # the keyword index followed the load
    finally:
        searching.close()


def test_a_load_starts_with_small_batches_and_doubles_to_the_batch_size() -> None:
    assert list(islice(batch_limits(1024), 6)) == [FIRST_BATCH, 256, 512, 1024, 1024, 1024]
    assert list(islice(batch_limits(50), 3)) == [50, 50, 50]
    batches, _, sink = recorder()
    summary = ingest(items(1000), sink, batch_size=300, prepare=list)  # type: ignore[arg-type]
    assert [len(batch) for batch in batches] == [128, 256, 300, 300, 16]
    assert summary.added == 1000


def test_a_failed_write_waits_for_the_batches_in_flight_and_counts_them() -> None:
    """With two writes in flight, the batch sent after a refused one was stored too, and the
    load stopped with no counts: nothing said it had been written."""
    from kb.errors import KBError
    from kb.ingest import LoadStopped

    written: list[list[str]] = []

    def sink(docs: Sequence[DocumentIn]) -> AddResponse:
        ids = [str(doc.id) for doc in docs]
        if "d2" in ids:
            raise KBError("refused", status=413)
        written.append(ids)
        return AddResponse(ids=ids, added=len(ids))

    with pytest.raises(LoadStopped) as stopped:
        ingest(items(10), sink, batch_size=2, prepare=list, in_flight=2)  # type: ignore[arg-type]
    assert stopped.value.message == "refused"
    assert sorted(written) == [["d0", "d1"], ["d4", "d5"]]  # the third batch was in flight
    assert stopped.value.summary.added == 4


def test_every_failed_write_that_may_have_landed_is_counted_as_unsure() -> None:
    """Two requests in flight to a service that went away: the message named "the request
    that failed", and the other's documents, stored too, were neither counted nor named
    (review helper 65)."""
    from kb.client import KBClientError
    from kb.ingest import LoadStopped

    gone = threading.Barrier(2)

    def sink(docs: Sequence[DocumentIn]) -> AddResponse:
        ids = [str(doc.id) for doc in docs]
        if {"d2", "d4"} & set(ids):
            gone.wait(timeout=10)  # both in flight when the service goes
            error = KBClientError("cannot reach the service", status=0, code="unreachable")
            error.may_have_landed = True
            raise error
        return AddResponse(ids=ids, added=len(ids))

    with pytest.raises(LoadStopped) as stopped:
        ingest(items(10), sink, batch_size=2, prepare=list, in_flight=2)  # type: ignore[arg-type]
    assert (stopped.value.summary.added, stopped.value.unsure) == (2, 2)


def test_batches_end_before_their_weight_passes_the_limit() -> None:
    """Batches were cut by count only: a request of heavy documents passed the body limit.
    A document heavier than any request may be is a failed record (sent alone, it was
    refused and stopped the load)."""
    batches, _, sink = recorder()
    weights = {f"d{i}": w for i, w in enumerate([40, 40, 30, 90, 150, 10, 10])}
    summary = ingest(
        items(7),
        sink,
        batch_size=5,
        weigh=lambda doc: weights[str(doc.id)],
        max_weight=100,
    )
    assert batches == [["d0", "d1"], ["d2"], ["d3", "d5"], ["d6"]]
    assert (summary.added, summary.failed) == (6, 1)
    assert [str(problem) for problem in summary.problems] == [
        "input.jsonl:5: the document is 150 bytes as JSON; a request may carry 100 bytes of "
        "documents (KB_MAX_REQUEST_BYTES)"
    ]


def test_a_repeat_of_a_document_too_heavy_to_send_fails_too() -> None:
    """The repeat of a document no request could carry was counted as skipped, "the same as
    one written", though neither was written."""
    batches, _, sink = recorder()
    heavy = DocumentIn(id="big", text="x " * 100)
    entries = [*items(2), Item("input.jsonl", 3, heavy), Item("input.jsonl", 4, heavy)]
    summary = ingest(entries, sink, batch_size=5, weigh=lambda doc: len(doc.text), max_weight=100)
    assert batches == [["d0", "d1"]]
    assert (summary.added, summary.skipped, summary.failed) == (2, 0, 2)
    assert [problem.line for problem in summary.problems] == [3, 4]


@pytest.mark.parametrize(("prepare", "in_flight"), [(None, 1), (list, 1), (list, 2)])
def test_a_stop_finishes_the_writes_under_way_counts_them_and_starts_no_other(
    prepare, in_flight: int
) -> None:
    """`kb load` sets `stop` at a Ctrl-C, which printed "Aborted!" and no counts; raised in
    the loop, the interrupt could land inside ThreadPoolExecutor.submit and leave a write
    running that nothing counted."""
    from kb.ingest import LoadInterrupted

    stop = threading.Event()
    written: list[str] = []

    def sink(docs: Sequence[DocumentIn]) -> AddResponse:
        ids = [str(doc.id) for doc in docs]
        if "d4" in ids:
            stop.set()
            time.sleep(0.2)  # still writing when the loop next looks
        written.extend(ids)
        return AddResponse(ids=ids, added=len(ids))

    with pytest.raises(LoadInterrupted) as caught:
        ingest(items(40), sink, batch_size=2, prepare=prepare, in_flight=in_flight, stop=stop)
    time.sleep(0.3)  # a write left running would land now
    assert "d4" in written
    assert len(written) <= 6 + 2 * in_flight  # at most the batches already on their way
    assert caught.value.summary.added == len(written)


def test_a_stop_ends_a_wait_for_input() -> None:
    """stdin with nothing more to read: the load ends at the stop, not at the next line."""
    from kb.ingest import LoadInterrupted

    stop = threading.Event()
    more = threading.Event()

    def entries() -> Iterator[Item]:
        yield from items(3)
        more.wait(30)  # the input has nothing more for now
        yield from items(3, start=3)

    batches, _, sink = recorder()
    threading.Timer(0.3, stop.set).start()
    started = time.perf_counter()
    with pytest.raises(LoadInterrupted) as caught:
        ingest(entries(), sink, batch_size=2, prepare=list, stop=stop)  # type: ignore[arg-type]
    more.set()
    assert time.perf_counter() - started < 5
    assert caught.value.summary.added == sum(map(len, batches))


def test_a_repeated_text_without_ids_says_so_not_an_id_never_written() -> None:
    """It said "id '2e68...' repeats input.jsonl:1": the id derived from the text."""
    entries = [
        Item("input.jsonl", line, DocumentIn(text="same words", metadata={"n": line}))
        for line in (1, 2)
    ]
    problems: list[Problem] = []
    _, _, sink = recorder()
    summary = ingest(entries, sink, batch_size=10, on_problem=problems.append)
    assert (summary.added, summary.failed) == (1, 1)
    assert [(p.line, p.message) for p in problems] == [
        (2, "the same text as input.jsonl:1, with other metadata (no id to tell them apart)")
    ]


@pytest.mark.parametrize("written_first", [True, False])
def test_a_document_given_with_and_without_its_derived_id_is_one_document(
    written_first: bool,
) -> None:
    """An export writes out the id derived from the text: loaded in one command with the file
    it came from (no ids), the same document was failed as a conflict ("the same text ...
    with other metadata", or "id ... repeats"), rc 1 (review helper 58)."""
    text, metadata = "same words", {"n": 1}
    written = DocumentIn(id=derive_id(text), text=text, metadata=metadata)
    derived = DocumentIn(text=text, metadata=metadata)
    docs = [written, derived] if written_first else [derived, written]
    entries = [Item("input.jsonl", line, doc) for line, doc in enumerate(docs, start=1)]
    problems: list[Problem] = []
    batches, _, sink = recorder()
    summary = ingest(entries, sink, batch_size=10, on_problem=problems.append)
    assert (summary.added, summary.skipped, summary.failed, problems) == (1, 1, 0, [])
    assert [len(batch) for batch in batches] == [1]


def test_the_records_read_are_not_kept_to_the_end_of_the_load() -> None:
    """Each record read was kept whole (to tell a repeat of its id from a conflict) until the
    load ended: memory grew with the input, twice its size (review helper 81). Its place and
    content hash are enough."""
    alive: list[int] = []

    def reading() -> Iterator[Item]:
        for i in range(3000):
            if i == 2900:
                gc.collect()
                # type(), not isinstance: that reads __class__, and torch's deprecated
                # module attributes warn when read
                alive.append(sum(type(o) is DocumentIn for o in gc.get_objects()))
            yield Item("input.jsonl", i + 1, DocumentIn(id=f"d{i}", text=f"text {i}"))

    _, _, sink = recorder()
    summary = ingest(reading(), sink, batch_size=64)
    assert summary.added == 3000
    assert alive[0] < 1000  # the batches under way and read ahead, not 2,900
