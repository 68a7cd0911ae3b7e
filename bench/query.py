"""Query latency and throughput over loopback HTTP, beside a one-client Chroma baseline; the
server's peak memory after the load and its cold start on the same store."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import COLLECTION, RESULTS
from bench.corpus import (
    CORPUS_VERSION,
    FILTER_NAMES,
    VARIED,
    VARIED_COUNT,
    documents,
    filter_for,
    queries,
    write_jsonl,
)
from bench.harness import (
    JSON_HEADERS,
    OtherLoad,
    Server,
    kb_env,
    latency_summary,
    process_cpu,
    request,
    run_worker,
    scratch,
)
from bench.ingest import kb_load
from bench.startup import cold_start

STORES = RESULTS / "stores"
WARMUP = 20
TOP_K = 5


def store_for(size: int, rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """A store of `size` short documents, built with `kb load` once and kept for later runs."""
    name = f"short-{size}-v{CORPUS_VERSION}"
    store, marker = STORES / name, STORES / f"{name}.json"
    if marker.exists() and store.is_dir() and not rebuild:
        return store, {**json.loads(marker.read_text()), "cached": True}
    shutil.rmtree(store, ignore_errors=True)
    marker.unlink(missing_ok=True)
    STORES.mkdir(parents=True, exist_ok=True)
    print(f"query: building the {size}-document store with kb load ...", flush=True)
    with scratch() as work:
        corpus = write_jsonl(documents("short", size), work / "short.jsonl")
        built = {"docs": size, "collection": COLLECTION, "load": kb_load(corpus, store, size)}
    marker.write_text(json.dumps(built, indent=2) + "\n")
    return store, {**built, "cached": False}


def bodies(filter_name: str, mode: str | None, cell: int = 0) -> list[bytes]:
    """The cell's /query bodies: each query once, or with the varied filter VARIED_COUNT
    bodies whose filters no other cell (`cell`, its number) asks."""
    asked = list(queries())
    count = VARIED_COUNT if filter_name == VARIED else len(asked)
    first = cell * count if filter_name == VARIED else 0
    shared = {"mode": mode} if mode else {}
    return [
        json.dumps(
            {"query": asked[i % len(asked)], "top_k": TOP_K}
            | filter_for(filter_name, first + i)[0]
            | shared
        ).encode()
        for i in range(count)
    ]


def load(
    server: Server, payloads: Sequence[bytes], clients: int, duration: float, spread: int = 7
) -> dict[str, Any]:
    """`clients` threads, each with its own keep-alive connection, for `duration` seconds;
    client n starts at payload n * spread and takes the next one each time."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]
    gate = threading.Barrier(clients + 1)
    stop = [0.0]

    def client(n: int) -> None:
        conn, i = server.connect(timeout=60), n * spread
        gate.wait()
        while (began := time.perf_counter()) < stop[0]:
            try:
                conn.request("POST", "/query", payloads[i % len(payloads)], JSON_HEADERS)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                status, conn = type(exc).__name__, server.connect(timeout=60)
            if status == 200:
                latencies[n].append(time.perf_counter() - began)
            else:
                errors[n][str(status)] = errors[n].get(str(status), 0) + 1
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    other = OtherLoad(server.proc.pid)
    for thread in threads:
        thread.start()
    stop[0] = time.perf_counter() + duration
    gate.wait()
    started, server_cpu = time.perf_counter(), process_cpu(server.proc.pid)
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    server_cpu = process_cpu(server.proc.pid) - server_cpu
    done = [x for per in latencies for x in per]
    failed: dict[str, int] = {}
    for per in errors:
        for key, count in per.items():
            failed[key] = failed.get(key, 0) + count
    return {
        **latency_summary(done),
        "qps": len(done) / wall,
        # CPU seconds kb serve used (all its threads): cores busy, and per answered query
        "server_cores": server_cpu / wall,
        "server_cpu_ms_per_query": server_cpu * 1000 / max(len(done), 1),
        "errors": sum(failed.values()),
        "error_kinds": failed,
        "other_cpu": other.share(),
        "wall_s": wall,
    }


def check_answers(server: Server, mode: str | None) -> dict[str, float]:
    """Warm up, and check each filter's matches obey it; mean matches shown per query."""
    conn, shown = server.connect(), {}
    for name in FILTER_NAMES:
        total = 0
        for i, body in enumerate(bodies(name, mode)[:WARMUP]):
            status, raw = request(conn, "POST", "/query", body)
            if status != 200:
                raise RuntimeError(f"/query answered {status}: {raw[:500]!r}")
            matches = json.loads(raw)["matches"]
            total += len(matches)
            wanted = filter_for(name, i)[0].get("filters", {})
            text = filter_for(name, i)[0].get("where_document", {}).get("$contains")
            for match in matches:
                for key, value in wanted.items():
                    allowed = value if isinstance(value, list) else [value]
                    assert match["metadata"][key] in allowed, (name, match)
                assert text is None or text in match["text"], (name, match)
        shown[name] = total / WARMUP
    conn.close()
    return shown


def run(
    sizes: Sequence[int],
    clients: Sequence[int],
    duration: float,
    mode: str | None,
    sections: set[str],
    rebuild: bool = False,
) -> list[dict[str, Any]]:
    results = []
    for size in sizes:
        store, built = store_for(size, rebuild)
        result: dict[str, Any] = {"docs": size, "mode": mode, "store": str(store), "build": built}
        if "query" in sections:
            print(f"query: {size} documents, baseline ...", flush=True)
            args = {
                "store": str(store),
                "collection": COLLECTION,
                "filters": list(FILTER_NAMES),
                "duration": duration,
                "queries": list(queries()),
            }
            result["baseline"] = run_worker("baseline_query", args, kb_env(store))
            with scratch() as work, Server(store, work / "serve.log") as server:
                result["server_ready_s"] = server.wait()
                result["search_ready_s"] = server.wait_ready()  # the mirror is loaded
                conn = server.connect()
                health = json.loads(request(conn, "GET", "/health")[1])
                conn.close()
                if health["documents"] != size:
                    raise RuntimeError(f"the store holds {health['documents']} of {size} docs")
                result["mean_matches_shown"] = check_answers(server, mode)
                result["cells"] = []
                for name in FILTER_NAMES:
                    for n in clients:
                        print(f"query: {size} docs, filter {name}, {n} clients", flush=True)
                        # the varied filter's clients start far apart: each query
                        # asks a filter no other has asked (kb keeps what is asked again)
                        asked = bodies(name, mode, cell=len(result["cells"]) + 1)
                        spread = len(asked) // n if name == VARIED else 7
                        cell = load(server, asked, n, duration, spread)
                        result["cells"].append({"filter": name, "clients": n, **cell})
                result["memory_after_load"] = server.memory()
        if "startup" in sections:
            print(f"startup: {size} documents ...", flush=True)
            result["cold_start"] = cold_start(store)
        results.append(result)
    return results
