"""Query latency and throughput over loopback HTTP, beside a one-client Chroma baseline; the
server's peak memory after the load and its cold start on the same store."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kb
from bench import COLLECTION, RESULTS, info
from bench.corpus import (
    CORPUS_VERSION,
    FILTER_NAMES,
    VARIED,
    VARIED_COUNT,
    digest,
    documents,
    filter_for,
    passing,
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
# What kb writes into a store (its records' fields, metadata layout, chunking, Chroma's
# configuration, the keyword index's files): bump it with any change to that, and every kept
# query store is built again by the next run (a store of another format is never reused).
STORE_FORMAT = 1  # the stores kept before it was recorded have none: they are built again


def store_for(size: int, rebuild: bool = False) -> tuple[Path, dict[str, Any]]:
    """A store of `size` short documents, built with `kb load` once and kept for later runs
    while its marker's STORE_FORMAT and corpus hash are the current ones; its marker (who
    built it: commit, dirty tree, kb version) with `cached` and `built_by_other_commit`, whose
    warning is printed here (a store of an older commit is reused: --rebuild builds it anew)."""
    name = f"short-{size}-v{CORPUS_VERSION}"
    store, marker = STORES / name, STORES / f"{name}.json"
    docs = documents("short", size)
    corpus = digest(docs)
    head = info.git()
    if marker.exists() and store.is_dir() and not rebuild:
        built = json.loads(marker.read_text())
        stale = stale_store(built, corpus)
        if stale is None:
            found = {**built, "cached": True} | provenance(built, head["commit"])
            if warning := built_warning(found, head["commit"]):
                print(warning, flush=True)
                found["warning"] = warning.strip(" !")
            return store, found
        print(f"query: building the {size}-document store again: {stale}", flush=True)
    shutil.rmtree(store, ignore_errors=True)
    marker.unlink(missing_ok=True)
    STORES.mkdir(parents=True, exist_ok=True)
    print(f"query: building the {size}-document store with kb load ...", flush=True)
    with scratch() as work:
        path = write_jsonl(docs, work / "short.jsonl")
        built = {
            "docs": size,
            "collection": COLLECTION,
            "store_format": STORE_FORMAT,
            "commit": head["commit"],
            "dirty": head["dirty"],
            "kb_version": kb.__version__,
            "corpus_sha256": corpus,
            "built": datetime.now(UTC).isoformat(timespec="seconds"),
            "load": kb_load(path, store, size),
        }
    marker.write_text(json.dumps(built, indent=2) + "\n")
    return store, {**built, "cached": False} | provenance(built, head["commit"])


def stale_store(built: dict[str, Any], corpus: str) -> str | None:
    """Why a kept store's marker rules it out, or None: another STORE_FORMAT (none recorded:
    a store kept before the format was), or another corpus."""
    if built.get("store_format") != STORE_FORMAT:
        return f"store format {built.get('store_format', 'not recorded')}, now {STORE_FORMAT}"
    if built.get("corpus_sha256") != corpus:
        return "the synthetic corpus changed"
    return None


def provenance(built: dict[str, Any], head: str) -> dict[str, Any]:
    """HEAD's commit beside the builder's, and whether they differ (the marker's `dirty`
    says whether the builder's tree had uncommitted changes)."""
    return {"head": head, "built_by_other_commit": built.get("commit") != head}


def built_warning(built: dict[str, Any], head: str) -> str | None:
    """The line printed when a reused store was written by another kb than HEAD's."""
    if not built.get("built_by_other_commit"):
        return None
    by = str(built.get("commit") or "an unrecorded commit")[:10]
    dirty = " (dirty tree)" if built.get("dirty") else ""
    return (
        f"  ! query: the {built['docs']}-document store was built by {by}{dirty}, HEAD is "
        f"{head[:10]} (kb {built.get('kb_version')}, {built.get('built')}): its query, memory "
        "and start-up figures are on data an older kb load wrote; --rebuild builds it again"
    )


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


def searched(mode: str | None, env: dict[str, str] | None = None) -> str:
    """The search mode a server answers in: the one sent, else its KB_SEARCH_MODE (any
    case, `env` over the inherited environment), else kb's default."""
    from kb.config import Settings

    variables = {key.upper(): value for key, value in {**os.environ, **(env or {})}.items()}
    default = str(Settings.model_fields["search_mode"].default)
    return mode or variables.get("KB_SEARCH_MODE", default).lower()


def fewest(mode: str) -> int:
    """The fewest matches a search may answer with when no candidate fell below the
    threshold and its filter passes at least TOP_K documents: TOP_K, but none in keyword
    mode (no document holding a query term is no match)."""
    return 0 if mode == "keyword" else TOP_K


def answer_problem(raw: bytes, least: int = TOP_K) -> str | None:
    """Why a 200 answer to /query counts as an error, or None: not a QueryResult (matches
    with an id, a score and a text; the count of candidates the threshold rejected), more
    than TOP_K matches, or fewer than `least` while the threshold rejected none."""
    try:
        answer = json.loads(raw)
        matches, rejected = answer["matches"], answer["rejected"]
        shaped = (
            isinstance(matches, list)
            and isinstance(rejected, int)
            and all(
                isinstance(m, dict)
                and isinstance(m.get("id"), str)
                and isinstance(m.get("score"), int | float)
                and isinstance(m.get("text"), str)
                for m in matches
            )
        )
    except (ValueError, KeyError, TypeError):
        shaped = False
    if not shaped:
        return "200, not a query answer"
    if len(matches) > TOP_K:
        return f"200, more than {TOP_K} matches"
    if len(matches) < least and not rejected:
        return f"200, under {least} matches"
    return None


def load(
    server: Server,
    payloads: Sequence[bytes],
    clients: int,
    duration: float,
    spread: int = 7,
    least: int = TOP_K,
) -> dict[str, Any]:
    """`clients` threads, each with its own keep-alive connection, for `duration` seconds;
    client n starts at payload n * spread and takes the next one each time. A 200 whose
    answer is wrong (answer_problem, with `least`) is an error, not a latency."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]
    gate = threading.Barrier(clients + 1)
    stop = [0.0]

    def client(n: int) -> None:
        conn, i = server.connect(timeout=60), n * spread
        gate.wait()
        while (began := time.perf_counter()) < stop[0]:
            raw = b""
            try:
                conn.request("POST", "/query", payloads[i % len(payloads)], JSON_HEADERS)
                response = conn.getresponse()
                raw = response.read()
                status: int | str = response.status
            except (OSError, http.client.HTTPException) as exc:
                status, conn = type(exc).__name__, server.connect(timeout=60)
            took = time.perf_counter() - began
            if status == 200 and (problem := answer_problem(raw, least)) is not None:
                status = problem  # read after the clock stopped
            if status == 200:
                latencies[n].append(took)
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


FULL_ANSWERS = 5  # warm-up queries a filter asks with the threshold off (min_score -1)


def check_answers(
    server: Server,
    mode: str | None,
    docs: Sequence[dict[str, Any]] | None = None,
    least: int = TOP_K,
) -> dict[str, float]:
    """Warm up, and check each filter's answers: every match obeys the filter, no answer is
    wrong (answer_problem with `least`), and, where `docs` (the store's documents) hold at
    least TOP_K that pass the filter and `least` asks for TOP_K, the filter's first
    FULL_ANSWERS queries asked with the threshold off answer TOP_K matches. The mean matches
    shown per query, by filter."""
    conn, shown = server.connect(), {}
    for name in FILTER_NAMES:
        total = 0
        for i, body in enumerate(bodies(name, mode)[:WARMUP]):
            status, raw = request(conn, "POST", "/query", body)
            if status != 200:
                raise RuntimeError(f"/query answered {status}: {raw[:500]!r}")
            if problem := answer_problem(raw, least):
                raise RuntimeError(f"/query {body!r}: {problem}: {raw[:500]!r}")
            matches = json.loads(raw)["matches"]
            total += len(matches)
            wanted = filter_for(name, i)[0].get("filters", {})
            text = filter_for(name, i)[0].get("where_document", {}).get("$contains")
            for match in matches:
                for key, value in wanted.items():
                    allowed = value if isinstance(value, list) else [value]
                    assert match["metadata"][key] in allowed, (name, match)
                assert text is None or text in match["text"], (name, match)
            if docs is None or least < TOP_K or i >= FULL_ANSWERS:
                continue
            if passing(docs, name, i, TOP_K) < TOP_K:
                continue
            full = json.dumps({**json.loads(body), "min_score": -1.0}).encode()
            status, raw = request(conn, "POST", "/query", full)
            got = json.loads(raw).get("matches") if status == 200 else None
            if got is None or len(got) != TOP_K:
                raise RuntimeError(
                    f"/query {full!r} answered {status} with "
                    f"{'no' if got is None else len(got)} matches, not {TOP_K}: {raw[:500]!r}"
                )
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
                docs = documents("short", size)
                least = fewest(searched(mode))
                result["mean_matches_shown"] = check_answers(server, mode, docs, least)
                # the fewest matches an answer may have (its filter's first set stands for
                # the varied filter's, each a quarter of the documents)
                enough = {name: passing(docs, name, 0, TOP_K) >= TOP_K for name in FILTER_NAMES}
                del docs
                result["cells"] = []
                for name in FILTER_NAMES:
                    for n in clients:
                        print(f"query: {size} docs, filter {name}, {n} clients", flush=True)
                        # the varied filter's clients start far apart: each query
                        # asks a filter no other has asked (kb keeps what is asked again)
                        asked = bodies(name, mode, cell=len(result["cells"]) + 1)
                        spread = len(asked) // n if name == VARIED else 7
                        cell = load(server, asked, n, duration, spread, least * enough[name])
                        result["cells"].append({"filter": name, "clients": n, **cell})
                result["memory_after_load"] = server.memory()
        if "startup" in sections:
            print(f"startup: {size} documents ...", flush=True)
            result["cold_start"] = cold_start(store)
        results.append(result)
    return results
