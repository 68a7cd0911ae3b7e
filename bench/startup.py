"""Cold start: from spawning `kb serve` on an existing store to its first /query answer, and
on to /health saying `ready` (searches run on the in-memory copies). And the stop: SIGTERM
right after the first answer, while the in-memory copies load, to the process's exit."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.harness import OtherLoad, Server, scratch

RUNS = 3
POLL_S = 0.02
PROBE = json.dumps({"query": "how do I stop my model from overfitting?", "top_k": 5}).encode()


def cold_start(store: Path, runs: int = RUNS) -> dict[str, Any]:
    """Median of `runs` spawns; the process's memory after its first answer, too, and the
    share of the CPU other processes took meanwhile (every server is waited for, so its CPU
    counts as ours)."""
    seconds, ready, memories = [], [], []
    other = OtherLoad()
    with scratch() as work:
        for i in range(runs):
            started = time.perf_counter()
            with Server(store, work / f"serve-{i}.log") as server:
                server.wait("POST", "/query", PROBE, interval=POLL_S)
                seconds.append(time.perf_counter() - started)
                memories.append(server.memory())
                server.wait_ready(interval=POLL_S)
                ready.append(time.perf_counter() - started)
        stop = stop_while_loading(store, work)
    return {
        "median_s": statistics.median(seconds),
        "runs_s": seconds,
        "ready_median_s": statistics.median(ready),
        "ready_runs_s": ready,
        "peak_rss_mib_after_first_query": max(m["peak_rss_mib"] for m in memories),
        **stop,
        "other_cpu": other.share(),
    }


def stop_while_loading(store: Path, work: Path) -> dict[str, Any]:
    """Seconds from SIGTERM, sent at the first answer, to the exit of `kb serve`, and whether
    the in-memory copies were still loading then (a small store may be ready already)."""
    with Server(store, work / "serve-stop.log") as server:
        server.wait("POST", "/query", PROBE, interval=POLL_S)
        loading = not server.ready()
        started = time.perf_counter()
        server.proc.terminate()
        code = server.proc.wait(timeout=120)
        seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"kb serve exited with {code} on SIGTERM")
    return {"stop_s": seconds, "stop_while_loading": loading}
