"""What ingest and a query pay besides the model's own work, each measured here rather than
quoted from a scratch script:

    python -m bench.costs [--docs 100000] [--only lanes|caps|writes|shapes|overhead|caches|hooks]

- lanes: bulk encoding of 6,000 short texts by one session of every core's threads
  (KB_ENCODER_LANES=1) and by one-thread lanes (the default), quiet and beside a process busy
  70% of each 10 ms (as the store's writes keep a core during a load): docs/s and CPU-ms a text.
- caps: KB_EMBED_BATCH_TOKENS at 512, 1,024 and 2,048, for the lanes (which batch cap /
  lanes tokens) and for one session of every core's threads (KB_ENCODER_LANES=1):
  docs/s of 3,072 short texts and of 300 paragraphs, the caps alternating over three rounds.
- writes: the CPU (all threads) of Chroma's `add` of 1,024 short records, kb's encoder's
  vectors, into a scratch collection growing to 30,720, at Chroma's default ef_construction
  (100) and at 40: CPU-ms a record over the first and the last third, and the recall@10 and
  @100 of Chroma's search (kb's ef_search) against exact search for the bench's queries; and
  a `get` of 1,024 ids that are not stored (a load's id check).
- shapes: the CPU (all threads) of Chroma's `add` a record by what the records hold: vectors
  only; with documents; with the bench's scalar metadata (category, difficulty, author, date);
  with its `tags` list too; with `tags` joined into one string; and as kb stores them (its
  internal fields added): 10,240 short records a shape, each into a store of its own, the
  shapes in turn, twice (the mean).
- overhead: POST /add of 1k and 10k short documents as `kb load --url` sends them, through
  Flask's test client, the encoder replaced by a look-up of its vectors: the CPU a document,
  Chroma's writes and the rest (kb's own: validation, planning, the search copies).
- caches: three GET /health through Flask's test client right after a 48 MB sweep through
  memory (as an encoder run reads 42 MB of weights) and right after the same work.
- hooks: `kb serve` on the query benchmark's store; per request kind, the client's p50 over
  loopback HTTP and the p50 of the server's own time between its first and last request hook
  (the access log's duration_ms): what HTTP, waitress and Flask add outside kb's code.

Writes bench/results/costs-<docs>-<UTC time>.json, with the settings and machine it ran on.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import documents, queries
from bench.harness import Server, request, scratch
from bench.ingest import add_bodies
from bench.micro import Section, median_ms, run_sections
from bench.query import store_for
from kb.config import Settings
from kb.embeddings import Embedder, WrappedEmbedder, load_embedder

# Busy for 7 ms of every 10 ms: a rival for the cores, as Chroma's writes are during a load.
RIVAL = "import time\nwhile True:\n t = time.perf_counter()\n while time.perf_counter() - t < 0.007: pass\n time.sleep(0.003)"  # noqa: E501
ROUNDS = 2
WRITE_BATCH, WRITE_ROUNDS, SHAPE_ROUNDS = 1024, 30, 10
HNSW: dict[str, dict[str, int]] = {
    "ef_construction_100": {},
    "ef_construction_40": {"ef_construction": 40},
}


def lanes() -> dict[str, float]:
    texts = [d["text"] for d in documents("short", 6000)]
    encoders = {
        "one_session": load_embedder(Settings(encoder_lanes=1), bulk=True),
        "lanes": load_embedder(Settings(), bulk=True),
    }
    for encoder in encoders.values():
        encoder.embed_documents(texts[:256])  # warm
    out: dict[str, float] = {}
    for setting in ("quiet", "beside_a_busy_process"):
        rival = subprocess.Popen([sys.executable, "-c", RIVAL]) if setting != "quiet" else None
        try:
            rates: dict[str, list[tuple[float, float]]] = {name: [] for name in encoders}
            for _ in range(ROUNDS):  # alternating, the machine's speed drifts
                for name, encoder in encoders.items():
                    cpu, started = time.process_time(), time.perf_counter()
                    encoder.embed_documents(texts)
                    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
                    rates[name].append((len(texts) / wall, cpu * 1000 / len(texts)))
        finally:
            if rival is not None:
                rival.kill()
                rival.wait()
        for name, runs in rates.items():
            out[f"{setting}_{name}_docs_per_s"] = statistics.median(r for r, _ in runs)
            out[f"{setting}_{name}_cpu_ms_per_doc"] = statistics.median(c for _, c in runs)
    return out


CAPS = (512, 1024, 2048)


def caps() -> dict[str, float]:
    kinds = {
        "short": [d["text"] for d in documents("short", 3072)],
        "paragraph": [d["text"] for d in documents("paragraph", 300)],
    }
    out: dict[str, float] = {}
    for who, lanes in (("lanes", 0), ("session", 1)):  # 0: one per core; 1: one session
        encoders = {
            cap: load_embedder(Settings(embed_batch_tokens=cap, encoder_lanes=lanes), bulk=True)
            for cap in CAPS
        }
        for encoder in encoders.values():  # warm
            encoder.embed_documents(kinds["short"][:200] + kinds["paragraph"][:20])
        rates: dict[tuple[int, str], list[float]] = {}
        for _ in range(3):  # alternating, the machine's speed drifts
            for cap, encoder in encoders.items():
                for kind, texts in kinds.items():
                    started = time.perf_counter()
                    encoder.embed_documents(texts)
                    rate = len(texts) / (time.perf_counter() - started)
                    rates.setdefault((cap, kind), []).append(rate)
        for (cap, kind), runs in rates.items():
            out[f"{who}_cap_{cap}_{kind}_docs_per_s"] = statistics.median(runs)
    return out


def timed_adds(
    collection: Any, ids: list[str], vectors: np.ndarray, **fields: list[Any]
) -> list[float]:
    """Chroma's add of the records, WRITE_BATCH at a time: each add's CPU seconds (all
    threads). `fields`: documents and metadatas, a value a record."""
    cpu = []
    for first in range(0, len(ids), WRITE_BATCH):
        part = slice(first, first + WRITE_BATCH)
        batch = {key: values[part] for key, values in fields.items()}
        started = time.process_time()
        collection.add(ids=ids[part], embeddings=vectors[part], **batch)
        cpu.append(time.process_time() - started)
    return cpu


def writes() -> dict[str, float]:
    from kb.collection import make_client

    settings = Settings()
    docs = documents("short", WRITE_BATCH * WRITE_ROUNDS)
    encoder = load_embedder(settings, bulk=True)
    vectors = encoder.embed_documents([d["text"] for d in docs])
    asked = encoder.embed_queries(list(queries()))
    ranked = np.argsort(-(asked @ vectors.T), axis=1)  # exact search
    ids = np.array([d["id"] for d in docs])
    out: dict[str, float] = {}
    with scratch() as path:
        client = make_client(Settings(chroma_path=path))
        for name, hnsw in HNSW.items():
            hnsw = {"space": "cosine", "ef_search": settings.hnsw_ef_search, **hnsw}
            collection = client.create_collection(
                name, configuration={"hnsw": hnsw}, embedding_function=None
            )
            cpu = timed_adds(
                collection,
                list(ids),
                vectors,
                documents=[d["text"] for d in docs],
                metadatas=[d["metadata"] for d in docs],
            )
            third = len(cpu) // 3
            for label, runs in (("first_third", cpu[:third]), ("last_third", cpu[-third:])):
                out[f"{name}_add_cpu_ms_per_record_{label}"] = (
                    statistics.median(runs) * 1000 / WRITE_BATCH
                )
            out[f"{name}_add_cpu_s_all"] = sum(cpu)
            for k in (10, 100):
                found = collection.query(query_embeddings=asked, n_results=k, include=[])["ids"]
                out[f"{name}_recall_at_{k}"] = statistics.mean(
                    len(set(got) & set(ids[best[:k]])) / k
                    for got, best in zip(found, ranked, strict=True)
                )
        absent = [f"absent-{i}" for i in range(WRITE_BATCH)]
        out["get_1024_absent_ids_ms"] = median_ms(
            lambda: collection.get(ids=absent, include=["documents", "metadatas"])
        )
    return out


class _Precomputed(WrappedEmbedder):
    """An encoder that looks its vectors up: what is left of an add is kb's and Chroma's."""

    def __init__(self, inner: Embedder, vectors: dict[str, np.ndarray]) -> None:
        super().__init__(inner)
        self.vectors = vectors

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.vectors[text] for text in texts])


def shapes() -> dict[str, float]:
    """Chroma's add CPU a record by what the record holds, each shape into its own new
    collection, the same 10,240 short documents and vectors."""
    from kb.chunking import Chunk
    from kb.collection import make_client
    from kb.records import build_records

    docs = documents("short", WRITE_BATCH * SHAPE_ROUNDS)
    vectors = load_embedder(Settings(), bulk=True).embed_documents([d["text"] for d in docs])
    scalars = [{k: v for k, v in d["metadata"].items() if not isinstance(v, list)} for d in docs]
    joined = [{**d["metadata"], "tags": ",".join(d["metadata"]["tags"])} for d in docs]
    kb = [
        build_records(d["id"], d["text"], d["metadata"], [Chunk(0, d["text"])])[0].metadata
        for d in docs
    ]
    texts, ids = [d["text"] for d in docs], [d["id"] for d in docs]
    shaped: dict[str, dict[str, list[Any]]] = {
        "vectors_only": {},
        "with_documents": {"documents": texts},
        "with_scalar_metadata": {"documents": texts, "metadatas": scalars},
        "with_tags_list": {"documents": texts, "metadatas": [d["metadata"] for d in docs]},
        "with_tags_joined": {"documents": texts, "metadatas": joined},
        "as_kb_stores_it": {"documents": texts, "metadatas": kb},
    }
    cpu: dict[str, list[float]] = {name: [] for name in shaped}
    for _ in range(ROUNDS):
        for name, fields in shaped.items():
            with scratch() as path:  # a store of its own: the tables are shared by collections
                collection = make_client(Settings(chroma_path=path)).create_collection(
                    name, configuration={"hnsw": {"space": "cosine"}}, embedding_function=None
                )
                cpu[name].append(sum(timed_adds(collection, ids, vectors, **fields)))
    out: dict[str, float] = {"scalar_keys": len(scalars[0]), "kb_keys": len(kb[0])}
    for name, seconds in cpu.items():
        out[f"{name}_cpu_ms_per_record"] = statistics.mean(seconds) * 1000 / len(docs)
    return out


def overhead() -> dict[str, float]:
    docs = documents("short", 10000)
    texts = [d["text"] for d in docs]
    encoder = load_embedder(Settings(), bulk=True)
    known = _Precomputed(encoder, dict(zip(texts, encoder.embed_documents(texts), strict=True)))
    out: dict[str, float] = {}
    for size in (1000, 10000):  # the first 1,000 are the 1k corpus
        cpu, chroma = _add_cpu(docs[:size], known)
        out[f"add_{size}_cpu_ms_per_doc"] = cpu * 1000 / size
        out[f"add_{size}_chroma_write_cpu_ms_per_doc"] = chroma * 1000 / size
        out[f"add_{size}_kb_cpu_ms_per_doc"] = (cpu - chroma) * 1000 / size
    return out


def _add_cpu(docs: Sequence[dict[str, Any]], known: _Precomputed) -> tuple[float, float]:
    """CPU seconds of POST /add of `docs` into a fresh store whose encoder looks their vectors
    up (no encoder process), and of Chroma's writes among them."""
    from kb.app import close_app, create_app

    with scratch() as path:
        settings = Settings(chroma_path=path, log_level="WARNING", encoder_process_min_texts=0)
        app = create_app(settings, embedder=known)
        try:
            records = app.extensions["kb"].store.records
            write, chroma = records._write, 0.0

            def timed(part: Any, add: bool = False) -> None:
                nonlocal chroma
                started = time.process_time()
                write(part, add)
                chroma += time.process_time() - started

            records._write = timed
            client = app.test_client()
            started = time.process_time()
            for body in add_bodies(docs):
                reply = client.post("/add", data=body, content_type="application/json")
                if reply.status_code != 201:
                    raise RuntimeError(f"POST /add: {reply.status_code} {reply.data[:300]!r}")
            return time.process_time() - started, chroma
        finally:
            close_app(app)


def caches() -> dict[str, float]:
    from kb.app import close_app, create_app

    with scratch() as path:
        app = create_app(Settings(chroma_path=path, log_level="WARNING"))
        try:
            client = app.test_client()
            sweep = np.ones(48 * 2**20 // 8)  # 48 MB, more than the L3 cache

            def work() -> float:
                started = time.perf_counter()
                for _ in range(3):
                    client.get("/health")
                return time.perf_counter() - started

            for _ in range(50):
                work()
            cold, warm = [], []
            for _ in range(300):
                sweep.sum()
                cold.append(work())
                warm.append(work())
        finally:
            close_app(app)
    return {
        "three_health_after_a_48mb_sweep_ms": statistics.median(cold) * 1000,
        "three_health_after_the_same_work_ms": statistics.median(warm) * 1000,
    }


def hooks(docs: int) -> dict[str, float]:
    path, _ = store_for(docs)
    texts = queries()

    def query(**extra: Any) -> Callable[[int], bytes]:
        return lambda i: json.dumps({"query": texts[i % len(texts)], **extra}).encode()

    kinds: dict[str, tuple[str, str, Callable[[int], bytes | None]]] = {
        "health": ("GET", "/health", lambda i: None),
        "query_refused_422": ("POST", "/query", query(top_k=0)),
        "query_top_5": ("POST", "/query", query(top_k=5)),
        "query_top_1": ("POST", "/query", query(top_k=1)),
        "query_no_match": ("POST", "/query", query(top_k=5, min_score=0.99)),
    }
    per_kind = 250
    client: dict[str, list[float]] = {name: [] for name in kinds}
    with scratch() as work:
        log = work / "serve.log"
        with Server(path, log) as server:
            server.wait_ready()
            conn = server.connect()
            for i in range(40):
                request(conn, "POST", "/query", query(top_k=5)(i))
            for _ in range(ROUNDS):
                for name, (method, route, body) in kinds.items():
                    for i in range(per_kind):
                        payload, started = body(i), time.perf_counter()
                        request(conn, method, route, payload)
                        client[name].append(time.perf_counter() - started)
            time.sleep(1)  # the log's writer thread
        logged = _access_durations(log)[-ROUNDS * len(kinds) * per_kind :]
    server: dict[str, list[float]] = {name: [] for name in kinds}
    for i, name in enumerate(list(kinds) * ROUNDS):  # the log's lines in the requests' order
        server[name] += logged[i * per_kind : (i + 1) * per_kind]
    out: dict[str, float] = {}
    for name in kinds:
        out[f"{name}_client_ms"] = statistics.median(client[name]) * 1000
        out[f"{name}_server_ms"] = statistics.median(server[name])
        out[f"{name}_outside_ms"] = out[f"{name}_client_ms"] - out[f"{name}_server_ms"]
    return out


def _access_durations(log: Path) -> list[float]:
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return [line["duration_ms"] for line in lines if line.get("logger") == "kb.access"]


def main(argv: list[str]) -> int:
    runs: dict[str, Section] = {
        "lanes": lambda docs: lanes(),
        "caps": lambda docs: caps(),
        "writes": lambda docs: writes(),
        "shapes": lambda docs: shapes(),
        "overhead": lambda docs: overhead(),
        "caches": lambda docs: caches(),
        "hooks": hooks,
    }
    return run_sections("python -m bench.costs", __doc__, runs, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
