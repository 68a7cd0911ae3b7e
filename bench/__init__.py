"""Benchmarks for kb (`make bench`): ingest, query, memory and start-up, each beside the
straightforward implementation a tutorial would write, measured in the same run."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
COLLECTION = "bench"
