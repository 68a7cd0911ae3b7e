"""Large document batches embedded by an encoder process in `kb serve`.

Chroma's add, upsert and delete keep the GIL for the whole write (kb.encoders.process), so
while one POST /add writes, another request's encoder in the same process cannot start its
next batch. Requests with many texts go to a child process instead (started on first use),
which keeps encoding while the parent writes; small adds, queries and chunking stay in-process,
where there is no round trip.

Starting the process costs about a CPU-second and a half (a second interpreter loading the
model), on the cores the adds need: it starts only once large adds have brought
STARTING_CHARS characters of text for each text of `min_texts` (200k at the default 256:
several seconds of encoding, about 2,000 short documents or 200 paragraphs). A load of 1,000
short documents, over before the process would pay off, never starts it (starting at its
first large add made it 8% slower, in alternating runs).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from kb.embeddings import Embedder, WrappedEmbedder, identity
from kb.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

    from kb.config import Settings
    from kb.encoders.process import EncoderProcess

log = logging.getLogger(__name__)
STARTING_CHARS = 800  # x min_texts


class BulkEncoder(WrappedEmbedder):
    """An Embedder: `embed_documents` with at least `min_texts` texts runs in an encoder
    process, everything else in `inner`. The process starts in the background once such calls
    have brought STARTING_CHARS * `min_texts` characters (calls before it is ready embed
    in-process). If it cannot start or stops, texts are embedded in-process (same model, same
    vectors) and no other process is tried."""

    def __init__(self, inner: Embedder, settings: Settings, min_texts: int) -> None:
        super().__init__(inner)
        self.min_texts = min_texts
        self._settings = settings
        self._process: EncoderProcess | None = None
        self._starter: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._chars = 0  # brought by large calls before the process was started

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        process = self._ready(texts) if len(texts) >= self.min_texts else None
        if process is not None:
            try:
                return process.embed_documents(texts)
            except ConfigError as exc:
                self._give_up(process, exc)
        return self.inner.embed_documents(texts)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait for a start begun by a large add; whether the process is up."""
        starter = self._starter
        if starter is not None:
            starter.join(timeout)
        return self._process is not None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            process, self._process = self._process, None
        if self._starter is not None:
            self._starter.join()  # a process it starts now is closed by _start
        if process is not None:
            process.close()

    def _ready(self, texts: Sequence[str]) -> EncoderProcess | None:
        if self._starter is None:
            with self._lock:
                self._chars += sum(len(text) for text in texts)
                due = self._chars >= STARTING_CHARS * self.min_texts
                if due and self._starter is None and not self._closed:
                    self._starter = threading.Thread(
                        target=self._start, name="kb-encoder-start", daemon=True
                    )
                    self._starter.start()
        return self._process

    def _start(self) -> None:
        from kb.encoders.process import EncoderProcess

        try:
            process = EncoderProcess(self._settings)
        except ConfigError as exc:
            log.warning("no encoder process, large adds embed in-process: %s", exc.message)
            return
        if identity(process) != identity(self):
            # another model or precision: never mix their vectors
            log.warning("the encoder process loaded another model; large adds embed in-process")
            process.close()
            return
        with self._lock:
            if not self._closed:
                self._process = process
                log.info("encoder process started for adds of %d+ texts", self.min_texts)
                return
        process.close()  # the app closed while it started

    def _give_up(self, process: EncoderProcess, exc: ConfigError) -> None:
        log.error("the encoder process failed (%s); large adds embed in-process", exc.message)
        with self._lock:
            if self._process is process:
                self._process = None
        process.close()
