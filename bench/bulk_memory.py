"""Memory during a bulk load into a large store, and the encoder process's idle stop:

    python -m bench.bulk_memory [--docs 100000] [--batches 6] [--idle 10] [--kind short]

Copies the query benchmark's cached store of `--docs` short documents to a scratch
directory, starts `kb serve` on the copy (KB_ENCODER_PROCESS_IDLE_S=`--idle`), waits for
`ready`, then POSTs `--batches` requests of 1,024 new documents (short, or paragraphs with
`--kind paragraph`: longer texts, larger encoder batches) one after another, with the
options `kb load --url` sends (bench.ingest.ADD_OPTIONS) in batches of its full size (it keeps
two in flight; one at a time here, to read the memory after each). After each: the request's
seconds, kb serve's peak RSS
and its children's (the encoder process, multiprocessing's resource tracker). Then it waits
for the encoder process to stop for want of work and reports how long that took after the
last add's answer (the idle time runs from the end of that add's embedding, which comes
before its write, so this is less than the setting by about the write), and what memory is
left. Writes bench/results/bulk-memory-<docs>.json (bulk-memory-<docs>-paragraph.json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench import info
from bench.corpus import KINDS, documents
from bench.harness import Server, descendants, request, save_results, scratch
from bench.ingest import ADD_OPTIONS
from bench.query import store_for
from kb.ingest import BATCH_SIZE

OPTIONS = ADD_OPTIONS  # as kb load --url sends: on_conflict skip


def encoder_processes(pid: int) -> list[int]:
    """kb serve's encoder processes (multiprocessing's spawned children, not its tracker)."""
    found = []
    for child in descendants(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.append(child)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk_memory", description=__doc__)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--idle", type=float, default=10.0, help="KB_ENCODER_PROCESS_IDLE_S")
    parser.add_argument("--kind", choices=KINDS, default="short", help="the documents added")
    args = parser.parse_args(argv)
    source, built = store_for(args.docs)
    count = args.batches * BATCH_SIZE
    if args.kind == "short":  # the store holds the first `docs` of them
        new = documents("short", args.docs + count)[args.docs :]
    else:
        new = documents(args.kind, count)
    result: dict[str, Any] = {
        "docs": args.docs,
        "kind": args.kind,
        "idle_s": args.idle,
        "options": OPTIONS,
        "store": built,
        "machine": info.machine(),
        "settings": info.kb_settings(),
        "environment": info.environment(),
        "batches": [],
    }
    with scratch() as work:
        store = work / "store"
        shutil.copytree(source, store)
        server = Server(store, work / "serve.log", env={"KB_ENCODER_PROCESS_IDLE_S": args.idle})
        with server:
            result["ready_s"] = server.wait_ready()
            result["at_ready"] = server.memory()
            conn = server.connect(timeout=600)
            for start in range(0, len(new), BATCH_SIZE):
                body = json.dumps({"documents": new[start : start + BATCH_SIZE], **OPTIONS})
                started = time.perf_counter()
                status, raw = request(conn, "POST", "/add", body.encode())
                if status != 201 or json.loads(raw)["added"] != len(
                    new[start : start + BATCH_SIZE]
                ):
                    raise RuntimeError(f"POST /add answered {status}: {raw[:500]!r}")
                seconds = time.perf_counter() - started
                result["batches"].append({"seconds": seconds, **server.memory()})
            conn.close()
            last = time.perf_counter()
            deadline = last + 10 * args.idle
            while encoder_processes(server.proc.pid) and time.perf_counter() < deadline:
                time.sleep(0.2)
            result["encoder_stopped_after_s"] = (
                None if encoder_processes(server.proc.pid) else time.perf_counter() - last
            )
            result["after_idle_stop"] = server.memory()
    peak = max(b["peak_rss_mib"] + b["children_peak_rss_mib"] for b in result["batches"])
    result["peak_serve_plus_children_mib"] = peak
    for i, one in enumerate(result["batches"]):
        print(
            f"POST /add {i + 1}: {one['seconds']:.1f} s; kb serve peak {one['peak_rss_mib']:,.0f}"
            f" MiB, children {one['children_peak_rss_mib']:,.0f} MiB"
        )
    print(f"peak, kb serve + children: {peak:,.0f} MiB (at ready: "
          f"{result['at_ready']['peak_rss_mib']:,.0f} MiB)")  # fmt: skip
    stopped = result["encoder_stopped_after_s"]
    after = result["after_idle_stop"]
    print(
        "encoder process still running" if stopped is None
        else f"encoder process stopped {stopped:.1f} s after the last add's answer",
        f"(idle setting {args.idle:g} s); then kb serve {after['rss_mib']:,.0f} MiB, "
        f"children {after['children_rss_mib']:,.0f} MiB",
    )  # fmt: skip
    suffix = "" if args.kind == "short" else f"-{args.kind}"
    save_results(f"bulk-memory-{args.docs}{suffix}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
