"""Recall of kb's dense search against exact search, with and without a metadata filter.

    python -m bench.recall [--size 100000] [--queries 200] [--k 10] [--ef-search N]

On a cached query store (built by `python -m bench --only query`), for each filter of the
query benchmark: the exact top k (every vector matching the filter, scored with numpy), then
recall@k and per-query time of Chroma's HNSW search with that `where` (what the baseline and
a tutorial service do) and of kb's dense search (`mode: dense`: the mirror's, through its
IVF index from KB_ANN_MIN_ROWS rows, or exact over a filter's rows where that is cheaper;
kb/ann.py, kb/mirror.py). The repeated filters only (FILTERS; not bench.query's "varied").
Runs in one process on
the store directly, so no `kb serve` may hold it. `--ef-search` sets KB_HNSW_EF_SEARCH (the
store keeps it until kb next opens it with another). Writes bench/results/recall-<size>-ef<N>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np

from bench import COLLECTION
from bench.corpus import FILTERS, queries
from bench.harness import save_results
from bench.query import store_for
from kb.config import Settings
from kb.embeddings import load_embedder
from kb.filters import compile_filter
from kb.records import CHUNK, DOC
from kb.schemas import QueryRequest
from kb.search import search
from kb.store import KnowledgeStore

PAGE = 5000


def exact_top(
    matrix: np.ndarray, ids: list[str], allowed: np.ndarray, vector: np.ndarray, k: int
) -> list[str]:
    scores = np.where(allowed, matrix @ vector, -np.inf)
    top = np.argpartition(-scores, k)[:k]
    return [ids[i] for i in top[np.argsort(-scores[top])] if np.isfinite(scores[i])]


def recall(found: list[list[str]], truth: list[list[str]]) -> float:
    """Mean over queries of the share of the exact top k that was found."""
    shares = [
        len(set(f) & set(t)) / len(t) if t else 1.0 for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(shares))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recall", description=__doc__)
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ef-search", type=int, default=None, help="default: KB_HNSW_EF_SEARCH")
    parser.add_argument("--nprobe", type=int, default=None, help="default: KB_ANN_NPROBE")
    args = parser.parse_args(argv)

    path, _ = store_for(args.size)
    settings = Settings(chroma_path=path, collection=COLLECTION)
    if args.ef_search is not None:
        settings = settings.model_copy(update={"hnsw_ef_search": args.ef_search})
    if args.nprobe is not None:
        settings = settings.model_copy(update={"ann_nprobe": args.nprobe})
    print(
        f"{args.size:,} documents, Chroma's HNSW ef_search {settings.hnsw_ef_search}, kb's IVF "
        f"nprobe {settings.ann_nprobe} (from {settings.ann_min_rows:,} chunks)",
        flush=True,
    )
    store = KnowledgeStore.open(settings, load_embedder(settings))
    try:
        store.replica.wait_loaded()
        col = store.records._col  # the raw Chroma collection: the reference reads around kb
        ids: list[str] = []
        metadatas: list[dict[str, Any]] = []
        blocks: list[np.ndarray] = []
        for offset in range(0, col.count(), PAGE):
            got = col.get(limit=PAGE, offset=offset, include=["embeddings", "metadatas"])
            ids += got["ids"]
            metadatas += got["metadatas"]
            blocks.append(np.asarray(got["embeddings"], dtype=np.float32))
        matrix = np.vstack(blocks)
        assert all(int(m[CHUNK]) == 0 for m in metadatas), "short documents are one chunk each"
        doc_of = {rid: str(m[DOC]) for rid, m in zip(ids, metadatas, strict=True)}
        docs = [doc_of[rid] for rid in ids]
        texts = list(queries())[: args.queries]
        vectors = store.embedder.embed_queries(texts)
        rows = []
        for name, (body, _) in FILTERS.items():
            flt = compile_filter(body.get("filters"), None, body.get("where_document"))
            where, where_document = flt.where, flt.where_document
            allowed = (
                np.isin(ids, col.get(where=where, where_document=where_document, include=[])["ids"])
                if where or where_document
                else np.ones(len(ids), dtype=bool)
            )
            truth = [exact_top(matrix, docs, allowed, v, args.k) for v in vectors]
            row: dict[str, Any] = {"filter": name, "matching": int(allowed.sum())}
            chroma, start = [], time.perf_counter()
            for vector in vectors:  # one query per call, as a service asks
                got = col.query(
                    query_embeddings=vector[None],
                    n_results=args.k,
                    where=where,
                    where_document=where_document,
                )
                chroma.append([doc_of[rid] for rid in got["ids"][0]])
            row["chroma_ms"] = (time.perf_counter() - start) * 1000 / len(texts)
            row["chroma_recall"] = recall(chroma, truth)
            found, start = [], time.perf_counter()
            for text in texts:
                request = QueryRequest.model_validate(
                    {"query": text, "top_k": args.k, "mode": "dense", "min_score": -1, **body}
                )
                found.append([m.id for m in search(store, request)[0].matches])
            row["kb_ms"] = (time.perf_counter() - start) * 1000 / len(texts)
            row["kb_recall"] = recall(found, truth)
            rows.append(row)
            print(
                f"{name:>9}  {row['matching']:>7,} match  Chroma recall@{args.k} "
                f"{row['chroma_recall']:.3f} {row['chroma_ms']:7.1f} ms/query   kb recall@{args.k} "
                f"{row['kb_recall']:.3f} {row['kb_ms']:6.1f} ms/query (encoder included)",
                flush=True,
            )
    finally:
        store.close()
    figures = {"size": args.size, "k": args.k, "ef_search": settings.hnsw_ef_search, "rows": rows}
    save_results(f"recall-{args.size}-ef{settings.hnsw_ef_search}", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
