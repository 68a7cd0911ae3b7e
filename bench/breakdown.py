"""Where one request's time goes, timed directly (no sampler): the encoder, the metadata
filter's mask, the vector search (the mirror's index, or an exact scan) and BM25 inside a
hybrid and a dense /query, in-process through Flask's test client; "rest" is the request's
median less the parts' (Flask, validation, fusion, the response).

    python -m bench.breakdown [--docs 100000] [--queries 200] [--filter none|selective|...]

Uses the query benchmark's cached store (no `kb serve` may hold it). Prints the median
request time and the median time of each timed call per request.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from bench import COLLECTION
from bench.corpus import FILTER_NAMES, filter_for, queries
from bench.query import store_for
from kb.api.util import EXTENSION
from kb.app import close_app, create_app
from kb.config import Settings

WARMUP = 20


def timed(obj: Any, name: str, into: dict[str, list[float]]) -> None:
    """Wrap obj.name so that each call's seconds are appended to into[name]."""
    call: Callable[..., Any] = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            into.setdefault(name, []).append(time.perf_counter() - started)

    setattr(obj, name, wrapper)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.breakdown", description=__doc__)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--filter", choices=FILTER_NAMES, default="none")
    args = parser.parse_args(argv)
    path, _ = store_for(args.docs)
    app = create_app(
        Settings(chroma_path=path, collection=COLLECTION, log_level="WARNING", query_cache=0)
    )
    try:
        store = app.extensions[EXTENSION].store
        store.replica.wait_loaded()
        mirror = store.replica.current_mirror()
        assert mirror is not None, "the mirror did not load"
        calls: dict[str, list[float]] = {}
        timed(store.embedder, "embed_queries", calls)
        timed(mirror, "nearest_rows", calls)  # the vector search
        timed(mirror, "keyword", calls)  # BM25
        timed(mirror, "selection", calls)  # the filter's mask
        client, texts = app.test_client(), list(queries())
        print(f"filter {args.filter}: {filter_for(args.filter, 0)[0] or 'none'} (the first)")
        asked = 0  # the varied filter: a new one for every request, warm-up included
        for mode in ("hybrid", "dense"):
            for text in texts[:WARMUP]:
                extra, asked = filter_for(args.filter, asked)[0], asked + 1
                client.post("/query", json={"query": text, "mode": mode, **extra})
            calls.clear()
            seconds = []
            for i in range(args.queries):  # the labeled queries after the warm-up's, cycled
                text = texts[WARMUP + i % (len(texts) - WARMUP)]
                extra, asked = filter_for(args.filter, asked)[0], asked + 1
                started = time.perf_counter()
                response = client.post("/query", json={"query": text, "mode": mode, **extra})
                seconds.append(time.perf_counter() - started)
                assert response.status_code == 200, response.json
            medians = {name: statistics.median(values) * 1000 for name, values in calls.items()}
            request = statistics.median(seconds) * 1000
            parts = ", ".join(f"{name} {ms:.2f} ms" for name, ms in medians.items())
            rest = request - sum(medians.values())
            print(f"{mode:>6}: request p50 {request:.1f} ms; {parts}; rest {rest:.1f} ms")
    finally:
        close_app(app)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
