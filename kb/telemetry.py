"""Prometheus metrics: requests and latency by route and status, documents, encoder time.

Each app has its own registry (no process-wide state). Under several worker processes
(`PROMETHEUS_MULTIPROC_DIR` set before start, as `kb serve --workers` does), counters and
histograms are shared through files in that directory and summed at scrape time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kb.embeddings import WrappedEmbedder

if TYPE_CHECKING:
    import numpy as np
    from prometheus_client.core import Metric

    from kb.embeddings import Embedder

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ENCODER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


class _Gauges(Collector):
    """Values read when scraped (the document count), so they are never stale."""

    def __init__(self, documents: Callable[[], int]) -> None:
        self._documents = documents

    def describe(self) -> Iterator[Metric]:  # registering must not count the documents
        yield GaugeMetricFamily("kb_documents", "Documents in the knowledge base.")

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily("kb_documents", "Documents in the knowledge base.")
        gauge.add_metric([], float(self._documents()))
        yield gauge


class Telemetry:
    """The metrics one app records."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kb_http_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kb_http_request_duration_seconds",
            "Time from request to response, by route and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encoder = Histogram(
            "kb_encoder_duration_seconds",
            "Time spent in the encoder per call, by what was encoded.",
            ["kind"],
            buckets=ENCODER_BUCKETS,
            registry=self.registry,
        )
        self.texts = Counter(
            "kb_encoder_texts",
            "Texts encoded, by what was encoded.",
            ["kind"],
            registry=self.registry,
        )
        self.query_cache = Counter(
            "kb_query_cache_lookups",
            "Query texts looked up among the kept query vectors (KB_QUERY_CACHE), by result.",
            ["result"],
            registry=self.registry,
        )
        self._gauges: _Gauges | None = None

    def count_documents(self, documents: Callable[[], int]) -> None:
        """Report the knowledge base's size (read at every scrape) through `documents`."""
        self._gauges = _Gauges(documents)
        self.registry.register(self._gauges)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    def scrape(self) -> bytes:
        """The exposition text: this process's metrics, or every worker's when shared."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if self._gauges is not None:
            registry.register(self._gauges)
        return generate_latest(registry)

    def timed(self, embedder: Embedder) -> Embedder:
        return TimedEmbedder(embedder, self)

    def count_query_lookups(self, hits: int, misses: int) -> None:
        """What a QueryCache found kept (`hits`) and had encoded (`misses`) for one call."""
        self.query_cache.labels("hit").inc(hits)
        self.query_cache.labels("miss").inc(misses)


class TimedEmbedder(WrappedEmbedder):
    """An embedder that records its encoder time and text counts; otherwise the same."""

    def __init__(self, inner: Embedder, telemetry: Telemetry) -> None:
        super().__init__(inner)
        self._telemetry = telemetry

    def _timed(self, kind: str, call: Callable[[Sequence[str]], np.ndarray], texts: Sequence[str]):
        started = time.perf_counter()
        try:
            return call(texts)
        finally:
            self._telemetry.encoder.labels(kind).observe(time.perf_counter() - started)
            self._telemetry.texts.labels(kind).inc(len(texts))

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._timed("documents", self.inner.embed_documents, texts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._timed("queries", self.inner.embed_queries, texts)
