"""The component timings the README's Speed section explains its choices with, each measured
here rather than quoted from a scratch script:

    python -m bench.micro [--docs 100000] [--only encoder|encoder_memory|products|chroma|...]

- encoder: ONNX texts/s on twelve-word-piece texts, and on paragraphs with batches capped by
  padded tokens (KB_EMBED_BATCH_TOKENS) and with batches of 64 texts alone; one query at a
  time (the bench's 86 labeled queries, the median of each one's median) on every core's
  threads and on one thread; for another backend than onnx, how far its vectors are from
  onnx's on the bench's queries, paragraphs and short texts.
- encoder_memory: the configured encoder's (KB_BACKEND) RSS growth, in a fresh process each,
  with and without its one-text session (KB_ENCODER_SPIN_SESSION): at load, then after 500
  short documents, then after 2,000 queries from 16 threads.
- products: one 100k x 384 matrix-vector product; 8 threads doing them at once (what numpy's
  multi-threaded OpenBLAS did before the mirror serialized them); one product of k vectors.
- chroma: one nearest-neighbour query (n=100) on the cached query store; 16 vectors in one
  query; one query while another Python thread keeps busy (the GIL hand-back).
- health: /health in-process, the count from the mirror and from Chroma.
- gil: how fast another Python thread runs (share of its idle rate) while Chroma adds 1,024
  records, gets them by id, and answers 50 queries, on a scratch store.
- text_filters: a hybrid search with each of a few text filters (`where_document`) on a copy
  of the query store, in process: the first after a write (one document rewritten before
  each, so the filter is decided afresh) and the same search again (the mirror keeps the
  decision until the next write), medians of 7; and Chroma's ids-only `get` for the filter
  (for a negation, its opposite), what every search asked before the mirror decided it.
- keyword: the in-memory BM25 index (kb.bm25) of `--docs` short and `--docs` paragraph texts,
  each built in a fresh process: its memory (the process's RSS growth; the texts are loaded
  first), and the p50 of a search (the bench's queries, 50 hits) before and after 1% of the
  rows are removed.

Opens the query benchmark's cached store (no `kb serve` may hold it). Writes
bench/results/micro-<docs>-<UTC time>.json, with the settings and machine it ran on.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from bench import COLLECTION, info
from bench.corpus import KINDS, Kind, documents, queries
from bench.harness import memory, save_results, scratch, utc_stamp
from bench.query import store_for
from kb.config import Settings
from kb.embeddings import load_embedder

Section = Callable[[int], dict[str, float]]  # the store's size -> named figures
TWELVE = "the quick brown fox jumps over a lazy dog today"  # 12 word pieces with [CLS]/[SEP]


def median_ms(call: Callable[[], Any], runs: int = 20) -> float:
    call()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def encoder() -> dict[str, float]:
    capped = load_embedder(Settings())
    uncapped = load_embedder(Settings(embed_batch_tokens=10**9))
    paragraphs = [d["text"] for d in documents("paragraph", 400)]
    twelve = [TWELVE] * 3000
    seconds = median_ms(lambda: capped.embed_documents(twelve), 3) / 1000
    out = {"twelve_tokens_per_s": len(twelve) / seconds}
    for name, embedder in (("capped", capped), ("batches_of_64", uncapped)):
        seconds = median_ms(lambda e=embedder: e.embed_documents(paragraphs), 3) / 1000
        out[f"paragraphs_per_s_{name}"] = len(paragraphs) / seconds
    one_thread = load_embedder(Settings(encoder_threads=1))
    for name, embedder in (("every_core", capped), ("one_thread", one_thread)):
        times = [median_ms(lambda e=embedder, q=q: e.embed_queries([q]), 5) for q in queries()]
        out[f"one_query_ms_{name}"] = statistics.median(times)
    if capped.backend != "onnx":  # an approximate backend: how far from fp32's vectors
        texts = [*queries(), *paragraphs, *(d["text"] for d in documents("short", 400))]
        got = capped.embed_documents(texts)
        want = load_embedder(Settings(backend="onnx")).embed_documents(texts)
        out["max_abs_diff_vs_onnx"] = float(np.abs(got - want).max())
        out["min_cosine_vs_onnx"] = float(np.sum(got * want, axis=1).min())
    return out


def encoder_memory() -> dict[str, float]:
    out = {}
    for spin in (True, False):
        cell = fresh(_encoder_memory_cell, spin)
        out.update(
            {f"{name}_{'with' if spin else 'without'}_session": v for name, v in cell.items()}
        )
    return out


def _encoder_memory_cell(spin: bool) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    def grown() -> float:
        return memory(os.getpid())["rss_mib"] - before

    before = memory(os.getpid())["rss_mib"]  # kb's modules are imported
    encoder = load_embedder(Settings(encoder_spin_session=spin))
    out = {"load_mib": grown()}
    encoder.embed_documents([d["text"] for d in documents("short", 500)])
    out["after_documents_mib"] = grown()
    asked = list(queries())
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: encoder.embed_queries([asked[i % len(asked)]]), range(2000)))
    out["after_queries_mib"] = grown()
    return out


def products() -> dict[str, float]:
    rng = np.random.default_rng(0)
    matrix = rng.random((100_000, 384), dtype=np.float32)
    vector = rng.random(384, dtype=np.float32)
    out = {"one_vector_ms": median_ms(lambda: matrix @ vector)}

    def eight_at_once() -> None:
        threads = [threading.Thread(target=lambda: [matrix @ vector for _ in range(10)])
                   for _ in range(8)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    out["eight_threads_ms_per_product"] = median_ms(eight_at_once, 3) / 80
    for k in (4, 16):
        batch = rng.random((k, 384), dtype=np.float32)
        out[f"one_product_of_{k}_vectors_ms"] = median_ms(lambda b=batch: b @ matrix.T)
    return out


def chroma(docs: int) -> dict[str, float]:
    from kb.collection import make_client

    path, _ = store_for(docs)
    # kb's client settings: the health section then opens the same store in this process
    collection = make_client(Settings(chroma_path=path)).get_collection(COLLECTION)
    sample = collection.get(limit=16, include=["embeddings"])["embeddings"]
    vectors = np.asarray(sample, dtype=np.float32)

    def ask(k: int) -> None:
        collection.query(query_embeddings=vectors[:k], n_results=100, include=["distances"])

    out = {"one_query_ms": median_ms(lambda: ask(1))}
    out["sixteen_in_one_ms"] = median_ms(lambda: ask(16))
    busy = [True]

    def spin() -> None:
        count = 0
        while busy[0]:
            count += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        out["one_query_beside_a_busy_thread_ms"] = median_ms(lambda: ask(1))
    finally:
        busy[0] = False
        spinner.join()
    return out


def health(docs: int) -> dict[str, float]:
    from kb.api.util import EXTENSION
    from kb.app import close_app, create_app

    path, _ = store_for(docs)
    app = create_app(Settings(chroma_path=path, collection=COLLECTION, log_level="WARNING"))
    try:
        store = app.extensions[EXTENSION].store
        store.replica.wait_loaded()
        client = app.test_client()
        out = {"health_ms": median_ms(lambda: client.get("/health")),
               "count_from_mirror_ms": median_ms(store.count)}  # fmt: skip
        mirror, store.replica.mirror = store.replica.mirror, None
        try:
            out["count_from_chroma_ms"] = median_ms(store.count)
        finally:
            store.replica.mirror = mirror
    finally:
        close_app(app)
    return out


TEXT_FILTERS: dict[str, dict[str, Any] | None] = {
    "none": None,
    "contains_the": {"$contains": "the"},  # ~3/5 of the short documents
    "contains_learning": {"$contains": "learning"},  # ~1/80
    "contains_absent": {"$contains": "zzyzx"},  # none
    "not_contains_learning": {"$not_contains": "learning"},
    "regex_learn": {"$regex": "[Ll]earn"},  # Chroma's dialect: looked up in Chroma
}


def text_filters(docs: int) -> dict[str, float]:
    from kb.document_filter import POSITIVE
    from kb.filters import CompiledFilter
    from kb.schemas import DocumentIn, QueryRequest
    from kb.search import search
    from kb.store import KnowledgeStore, WriteMode

    path, _ = store_for(docs)
    out: dict[str, float] = {}
    with scratch() as work:  # a copy: the section writes
        shutil.copytree(path, work / "store")
        settings = Settings(chroma_path=work / "store", collection=COLLECTION, log_level="WARNING")
        store = KnowledgeStore.open(settings, load_embedder(settings))
        try:
            store.replica.wait_loaded()
            for name, where_document in TEXT_FILTERS.items():
                body = {"query": "how do neural networks learn", "where_document": where_document}
                request = QueryRequest.model_validate(body)
                first, again = [], []
                for i in range(7):
                    text = f"A write between two searches, the {i}th."
                    store.add([DocumentIn(id="bench-write", text=text)], WriteMode.UPSERT)
                    first.append(_once_ms(lambda r=request: search(store, r)))
                    again.append(_once_ms(lambda r=request: search(store, r)))
                out[f"{name}_first_after_a_write_ms"] = statistics.median(first)
                out[f"{name}_again_ms"] = statistics.median(again)
                if where_document is not None:  # a negation is asked as its opposite
                    ((op, arg),) = where_document.items()
                    flt = CompiledFilter(None, {POSITIVE.get(op, op): arg})
                    out[f"{name}_chroma_ids_ms"] = median_ms(lambda f=flt: store.records.ids(f), 5)
        finally:
            store.close()
    return out


def _once_ms(call: Callable[[], Any]) -> float:
    """One call's time, no warm-up: what comes first is what is measured."""
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def gil() -> dict[str, float]:
    from kb.collection import make_client

    docs = documents("short", 1024)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(docs), 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    count, busy = [0], [True]

    def spin() -> None:
        while busy[0]:
            count[0] += 1

    def rate(call: Callable[[], Any]) -> tuple[float, float]:
        before, started = count[0], time.perf_counter()
        call()
        seconds = time.perf_counter() - started
        return (count[0] - before) / seconds, seconds * 1000

    out = {}
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        with scratch() as path:
            client = make_client(Settings(chroma_path=path))
            collection = client.create_collection(
                "gil", configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
            )
            idle, _ = rate(lambda: time.sleep(1))
            ids = [d["id"] for d in docs]
            calls = {
                "add": lambda: collection.add(
                    ids=ids,
                    documents=[d["text"] for d in docs],
                    metadatas=[d["metadata"] for d in docs],
                    embeddings=vectors,
                ),
                "get": lambda: collection.get(ids=ids, include=["metadatas"]),
                "query": lambda: [
                    collection.query(query_embeddings=vectors[i : i + 1], n_results=10)
                    for i in range(50)
                ],
            }
            for name, call in calls.items():
                speed, ms = rate(call)
                out[f"{name}_ms"] = ms
                out[f"other_thread_share_during_{name}"] = speed / idle
    finally:
        busy[0] = False
        spinner.join()
    return out


def keyword(docs: int) -> dict[str, float]:
    out = {}
    for kind in KINDS:
        cell = fresh(_keyword_cell, kind, docs)
        out.update({f"{kind}_{name}": value for name, value in cell.items()})
    return out


def fresh(cell: Callable[..., dict[str, float]], *args: Any) -> dict[str, float]:
    """`cell(*args)` in a fresh process: memory freed by one cell would serve the next."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(cell, *args).result()


def _keyword_cell(kind: Kind, docs: int) -> dict[str, float]:
    from kb.bm25 import Bm25
    from kb.keyword import query_tokens

    texts = [d["text"] for d in documents(kind, docs)]
    before = memory(os.getpid())["rss_mib"]
    index = Bm25()
    for first in range(0, docs, 1024):  # as kb.mirror adds a load's batches
        index.add_many(first, texts[first : first + 1024])
    out = {"bm25_mib": memory(os.getpid())["rss_mib"] - before}
    terms = [query_tokens(text) for text in queries()]

    def search_all() -> None:
        for query in terms:
            index.search(query, 50)

    out["search_ms"] = median_ms(search_all, 5) / len(terms)
    for row in np.random.default_rng(0).choice(docs, docs // 100, replace=False):
        index.remove(int(row))
    out["search_after_removals_ms"] = median_ms(search_all, 5) / len(terms)
    return out


def run_sections(
    prog: str, description: str | None, runs: dict[str, Section], argv: list[str]
) -> int:
    """The command line of a script of timed sections: --only picks sections (all by
    default), --docs the query benchmark's store; prints what the figures depend on
    (KB_BACKEND, kb's settings, the machine, the commit), then each figure, and writes them
    all to bench/results/<script>-<docs>-<UTC time>.json (a run never overwrites another's)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--only", action="append", choices=list(runs))
    args = parser.parse_args(argv)
    command = shlex.join([sys.executable, "-m", prog.rsplit(" ", 1)[-1], *argv])
    settings, machine = info.kb_settings(), info.machine()
    print(f"$ {command}\n{info.header(settings, machine)}", flush=True)
    run: dict[str, Any] = {
        "command": command,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": settings,
        "machine": machine,
        "sections": {},
    }
    for name in args.only or runs:
        run["sections"][name] = figures = runs[name](args.docs)
        for key, value in figures.items():
            print(f"{name:>14}  {key:<48} {value:12.6g}", flush=True)
    save_results(f"{prog.rsplit('.', 1)[-1]}-{args.docs}-{utc_stamp()}", run)
    return 0


def main(argv: list[str]) -> int:
    runs: dict[str, Section] = {
        "encoder": lambda docs: encoder(),
        "encoder_memory": lambda docs: encoder_memory(),
        "products": lambda docs: products(),
        "chroma": chroma,
        "health": health,
        "gil": lambda docs: gil(),
        "keyword": keyword,
        "text_filters": text_filters,
    }
    return run_sections("python -m bench.micro", __doc__, runs, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
