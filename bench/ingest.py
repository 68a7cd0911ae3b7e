"""Ingest: docs/s through `kb load` and `POST /add`, beside the encoder alone and a baseline."""

from __future__ import annotations

import json
import queue
import re
import resource
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import COLLECTION, ROOT
from bench.corpus import Kind, digest, documents, write_jsonl
from bench.harness import OtherLoad, Server, kb_command, kb_env, note, request, run_worker, scratch
from kb.cli.data import URL_IN_FLIGHT
from kb.config import cpu_count
from kb.ingest import BATCH_SIZE, batch_limits

SUMMARY = re.compile(r"added (\d+), updated (\d+), skipped (\d+), failed (\d+) in ([\d.]+)s")
ADD_BATCH = BATCH_SIZE  # what kb load --url sends per request
# and how (kb/cli/data.py: on_conflict "skip" without --upsert, --on-duplicate's default)
ADD_OPTIONS = {"on_conflict": "skip", "on_duplicate": "ignore"}


def kb_load(corpus: Path, store: Path, expected: int) -> dict[str, Any]:
    """`kb load FILE --quiet` into a fresh store: its own ingest time, the wall time, and the
    CPU it and its encoder process used (start-up included)."""
    started, cpu = time.perf_counter(), _children_cpu()
    done = subprocess.run(
        kb_command("load", str(corpus), "--quiet"),
        env=kb_env(store),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
    note("kb load", done.stderr)
    found = SUMMARY.search(done.stderr)
    if done.returncode or not found:
        raise RuntimeError(f"kb load failed ({done.returncode}):\n{done.stderr[-3000:]}")
    added, _, skipped, failed = (int(found[i]) for i in range(1, 5))
    if added != expected:
        raise RuntimeError(f"kb load added {added} of {expected}: {found[0]}")
    seconds = float(found[5])
    return {
        "summary": found[0],
        "ingest_s": seconds,  # as kb prints it (10 ms resolution), model and store open excluded
        "wall_s": wall,
        "docs_per_s": expected / max(seconds, 0.05),
        "wall_docs_per_s": expected / wall,
        "cpu_s": cpu,  # kb load and its encoder process, start-up included
        "cores": cpu / wall,
        "added": added,
        "skipped": skipped,
        "failed": failed,
    }


def _children_cpu() -> float:
    """CPU seconds of this process's finished children (and theirs), user and system."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def post_add(docs: Sequence[dict[str, Any]], store: Path, log: Path) -> dict[str, Any]:
    """Batches to POST /add as `kb load --url` sends them (FIRST_BATCH documents, doubling
    up to ADD_BATCH, its options): URL_IN_FLIGHT senders, each taking the next batch from a
    shared queue as kb load's request slots do, each over its own keep-alive connection
    (kb load's client opens one a request); first request to last reply."""
    bodies = add_bodies(docs)
    with Server(store, log) as server:
        ready_s = server.wait()
        conns = [server.connect(timeout=600) for _ in range(URL_IN_FLIGHT)]
        replies: list[tuple[int, bytes]] = []
        work: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        for body in bodies:
            work.put(body)

        def send(sender: int) -> None:
            while True:
                try:
                    body = work.get_nowait()
                except queue.Empty:
                    return
                replies.append(request(conns[sender], "POST", "/add", body))

        started = time.perf_counter()
        senders = [threading.Thread(target=send, args=(n,)) for n in range(URL_IN_FLIGHT)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        seconds = time.perf_counter() - started
        statuses = [status for status, _ in replies]
        # POST /add answers 201 Created
        answers = [json.loads(raw) for status, raw in replies if status == 201]
        added = sum(answer["added"] for answer in answers)
        skipped = sum(answer.get("skipped", 0) for answer in answers)
        health = json.loads(request(conns[0], "GET", "/health")[1])
        for conn in conns:
            conn.close()
        memory = server.memory()
    bad = [s for s in statuses if s != 201]
    if bad or added != len(docs) or skipped or health["documents"] != len(docs):
        raise RuntimeError(
            f"POST /add: statuses {sorted(set(statuses))}, added {added}, skipped {skipped}, "
            f"store holds {health['documents']} of {len(docs)}"
        )
    return {
        "seconds": seconds,
        "docs_per_s": len(docs) / seconds,
        "requests": len(bodies),
        "statuses": sorted(set(statuses)),
        "server_ready_s": ready_s,
        **memory,
    }


def add_bodies(docs: Sequence[dict[str, Any]]) -> list[bytes]:
    """The POST /add bodies `kb load --url` sends for these documents: batches of FIRST_BATCH
    documents, doubling up to ADD_BATCH, as a bulk load asks (no near-duplicate report)."""
    options = ADD_OPTIONS
    bodies, start = [], 0
    for size in batch_limits(ADD_BATCH):
        if start >= len(docs):
            break
        part = list(docs[start : start + size])
        bodies.append(json.dumps({"documents": part, **options}).encode())
        start += size
    return bodies


def run(
    kinds: Sequence[Kind], sizes: Sequence[int], repeat: int = 1, parts: Sequence[str] = ()
) -> list[dict[str, Any]]:
    cells = []
    for kind in kinds:
        for size in sizes:
            print(f"ingest: {kind} x {size} ...", flush=True)
            cells.append(cell(kind, size, repeat, parts or PARTS))
    return cells


PARTS = ("baseline", "encoder", "kb_load", "post_add")
WAYS = ("kb_load", "post_add")  # kb's; the others are what they are measured against


def cell(kind: Kind, size: int, repeat: int = 1, parts: Sequence[str] = PARTS) -> dict[str, Any]:
    """The parts (all four unless asked: a 100k paragraph cell takes hours), `repeat` rounds
    of them, each round starting one part later (the machine's speed drifts over minutes), and
    each round's CPU bound when the baseline and the encoder ran: each part's median run, and
    each way's median ratio to the baseline, to the encoder and to the bound of the same
    round, where both ran."""
    docs = documents(kind, size)
    other = OtherLoad()
    chosen = tuple(part for part in PARTS if part in parts)
    rounds: list[dict[str, dict[str, Any]]] = []
    with scratch() as work:
        corpus = write_jsonl(docs, work / f"{kind}-{size}.jsonl")
        for turn in range(repeat):
            order = chosen[turn % len(chosen) :] + chosen[: turn % len(chosen)]
            one = {part: _part(part, docs, corpus, work) for part in order}
            if {"baseline", "encoder"} <= one.keys():
                one["bound"] = _bound(size, one)
            rounds.append(one)
    result: dict[str, Any] = {"kind": kind, "docs": size, "rounds": repeat}
    result["corpus_sha256"] = digest(docs)
    result["other_cpu"] = other.share()
    for part in rounds[0]:
        runs = sorted((one[part] for one in rounds), key=lambda run: run["docs_per_s"])
        result[part] = runs[(len(runs) - 1) // 2] | {
            "runs_docs_per_s": [one[part]["docs_per_s"] for one in rounds]
        }
        result[part] |= _peaks([one[part] for one in rounds])
    for way in (*WAYS, "bound"):
        if way in result:
            result[way] |= {
                f"vs_{part}": _median_ratio(rounds, way, part, "docs_per_s")
                for part in ("baseline", "encoder", "bound")
                if part != way and part in result
            }
    if {"kb_load", "baseline"} <= result.keys():  # both whole processes, set-up included
        result["kb_load"]["wall_vs_baseline"] = _median_ratio(
            rounds, "kb_load", "baseline", "wall_docs_per_s"
        )
    return result


MEMORY = ("peak_rss_mib", "children_peak_rss_mib")


def _peaks(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The largest peaks over a part's rounds (the median round's are not the peak), each
    round's kb serve + children, and their largest."""
    if not all(MEMORY[0] in run for run in runs):
        return {}
    totals = [run[MEMORY[0]] + run.get(MEMORY[1], 0) for run in runs]
    peaks = {key: max(run.get(key, 0) for run in runs) for key in MEMORY}
    return peaks | {"runs_peak_total_mib": totals, "peak_total_mib": max(totals)}


def _median_ratio(
    rounds: Sequence[dict[str, dict[str, Any]]], way: str, part: str, rate: str
) -> float:
    """The median of one round's ratios, as the rates are one run's: the lower middle one
    with an even number of rounds (of two, the lower), as the rates' run is the slower
    middle one: a figure of the runs, not between them, never the kinder one."""
    return statistics.median_low(one[way][rate] / one[part][rate] for one in rounds)


def _bound(size: int, parts: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The most docs/s a pipeline with kb's encoder (its KB_BACKEND, as measured here: one
    call, the corpus sorted by length) and this store could reach in this round: the CPU of
    that encoder and of the baseline's Chroma adds (kb's store writes the same records and
    more), spread over every core without an idle moment. Its ratio to the baseline caps what
    "vs base" can reach for such a pipeline; another encoder or runtime has its own bound."""
    cores = cpu_count()
    encoder_cpu, add_cpu = parts["encoder"]["cpu_s"], parts["baseline"]["add_cpu_s"]
    return {
        "docs_per_s": size * cores / (encoder_cpu + add_cpu),
        "cores": cores,
        "encoder_cpu_s": encoder_cpu,
        "add_cpu_s": add_cpu,
    }


def _part(part: str, docs: Sequence[dict[str, Any]], corpus: Path, work: Path) -> dict[str, Any]:
    with scratch() as store:
        if part == "baseline":
            args = {"corpus": str(corpus), "store": str(store), "collection": COLLECTION}
            started = time.perf_counter()
            result = run_worker("baseline_ingest", args, kb_env(store))
            # the whole process, as kb load's wall_s: interpreter, imports, model, store
            wall = time.perf_counter() - started - result["count_tokens_s"]
            return result | {"wall_s": wall, "wall_docs_per_s": len(docs) / wall}
        if part == "encoder":
            return run_worker("encoder", {"corpus": str(corpus)}, kb_env(store))
        if part == "kb_load":
            return kb_load(corpus, store / "db", len(docs))
        return post_add(docs, store / "db", work / "serve.log")
