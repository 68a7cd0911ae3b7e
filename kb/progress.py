"""A progress bar with docs/s for the loader: drawn on a terminal, silent otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    def __init__(self, total: int | None, *, enabled: bool, stream: TextIO = sys.stderr) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream
        self.done = 0
        self.started = time.perf_counter()

    def advance(self, count: int) -> None:
        self.done += count
        if self.enabled:
            self.stream.write("\r" + self.line())
            self.stream.flush()

    def line(self) -> str:
        rate = self.done / max(time.perf_counter() - self.started, 1e-9)
        if not self.total:
            return f"{self.done:,} docs  {rate:,.0f} docs/s"
        share = min(self.done / self.total, 1.0)
        bar = "#" * round(share * WIDTH)
        return (
            f"[{bar:<{WIDTH}}] {share:4.0%} {self.done:,}/{self.total:,} docs  {rate:,.0f} docs/s"
        )

    def clear(self) -> None:
        """Wipe the bar so a message can be printed on a clean line."""
        if self.enabled and self.done:
            self.stream.write("\r\033[K")
            self.stream.flush()
