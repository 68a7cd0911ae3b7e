"""Large document batches embedded by an encoder process in `kb serve`.

Chroma's add, upsert and delete keep the GIL for the whole write (kb.encoders.process), so
while one POST /add writes, another request's encoder in the same process cannot start its
next batch. Requests with many texts go to a child process instead (started as below),
which keeps encoding while the parent writes; small adds, queries and chunking stay in-process,
where there is no round trip.

Starting the process costs half a CPU-second to a CPU-second (a second interpreter loading
the model: 0.45 s and 0.6 CPU-s on the Intel machine of the README's 2026-12-04 figures), on
the cores the adds need: it starts only once large adds have brought
STARTING_CHARS characters of text for each text of `min_texts` (200k at the default 256:
several seconds of encoding, about 2,000 short documents or 200 paragraphs). A load of 1,000
short documents, over before the process would pay off, never starts it (starting at its
first large add made it 8% slower, in alternating runs).

A large add that comes while the process is starting embeds its texts here a step of about
HANDOFF_CHARS characters at a time and sends the rest to the process as soon as it is up:
otherwise an add of many long texts begun before the process was ready would embed them all
here, however long that takes, while the process that started for it waits unused (and at
KB_ENCODER_PROCESS_IDLE_S is stopped as idle, never having embedded a text).

The process stops when no large add has used it for KB_ENCODER_PROCESS_IDLE_S seconds, so a
service that had one bulk load does not keep its memory (about 270 MiB) for good; the next
large adds start it again by the same rule. While it runs, the in-process encoder releases
its session for lone texts (kb.encoders.onnx_backend: about 110 MiB; lone queries run as
batches do meanwhile, 1-2 ms slower), so the two processes together hold less.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import numpy as np

from kb.embeddings import Embedder, WrappedEmbedder, identity
from kb.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from kb.config import Settings
    from kb.encoders.process import EncoderProcess

log = logging.getLogger(__name__)
STARTING_CHARS = 800  # x min_texts
HANDOFF_CHARS = 25_000  # while the process starts: about half a second of embedding here


class BulkEncoder(WrappedEmbedder):
    """An Embedder: `embed_documents` with at least `min_texts` texts runs in an encoder
    process, everything else in `inner`. The process starts in the background once such calls
    have brought STARTING_CHARS * `min_texts` characters (calls before it is ready embed
    in-process), and stops after `idle_s` seconds unused. If it cannot start or fails, texts
    are embedded in-process (same model, same vectors) and no other process is tried."""

    def __init__(
        self, inner: Embedder, settings: Settings, min_texts: int, idle_s: float = 120.0
    ) -> None:
        super().__init__(inner)
        self.min_texts = min_texts
        self.idle_s = idle_s
        # the process runs the encoder it stands in for, which may not be the one `settings`
        # name (an app given a loaded embedder); the model is checked when it starts
        self._settings = settings.model_copy(update={"backend": inner.backend})
        self._process: EncoderProcess | None = None
        self._starter: threading.Thread | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._chars = 0  # brought by large calls before the process was started
        self._using = 0  # calls embedding in the process now
        self._used = 0.0  # when the last of them ended (time.monotonic)
        self._reaper: threading.Thread | None = None  # stops the process when idle

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) < self.min_texts:
            return self.inner.embed_documents(texts)
        process = self._take(texts)
        parts, done = [], 0
        while process is None and done < len(texts) and self._starting():
            end = _step_end(texts, done, HANDOFF_CHARS)
            parts.append(self.inner.embed_documents(texts[done:end]))
            done = end
            if done < len(texts):
                process = self._use()
        rest = texts[done:]
        if rest:
            parts.append(
                self._embed_in(process, rest) if process else self.inner.embed_documents(rest)
            )
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _embed_in(self, process: EncoderProcess, texts: Sequence[str]) -> np.ndarray:
        """`texts` embedded by `process` (counted as in use by the caller; the use ends
        here), or here if it fails."""
        try:
            return process.embed_documents(texts)
        except ConfigError as exc:
            self._give_up(process, exc)
        finally:
            with self._lock:
                self._using -= 1
                self._used = time.monotonic()
        return self.inner.embed_documents(texts)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Wait for a start begun by a large add; whether the process is up."""
        starter = self._starter
        if starter is not None:
            starter.join(timeout)
        return self._process is not None

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            process, self._process = self._process, None
            starter, reaper = self._starter, self._reaper
        if starter is not None:
            starter.join()  # a process it starts now is closed by _start
        if reaper is not None:
            reaper.join()  # it may be closing an idle process
        if process is not None:
            process.close()
            self._hold_query_session(True)  # `inner` may be shared, and outlive this app

    def _take(self, texts: Sequence[str]) -> EncoderProcess | None:
        """The process, counted as in use, if it is up (the caller ends the use); else None,
        after counting these texts towards its start."""
        with self._lock:
            if self._process is None and self._starter is None:
                self._chars += sum(len(text) for text in texts)
                if self._chars >= STARTING_CHARS * self.min_texts and not self._closed.is_set():
                    self._starter = threading.Thread(
                        target=self._start, name="kb-encoder-start", daemon=True
                    )
                    self._starter.start()
        return self._use()

    def _use(self) -> EncoderProcess | None:
        """The process, counted as in use (the caller ends the use), if it is up."""
        with self._lock:
            if self._process is not None:
                self._using += 1
            return self._process

    def _starting(self) -> bool:
        """Whether a start is under way (the process neither up nor given up yet)."""
        starter = self._starter
        return self._process is None and starter is not None and starter.is_alive()

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
            if not self._closed.is_set():
                self._process, self._used = process, time.monotonic()
                log.info("encoder process started for adds of %d+ texts", self.min_texts)
                # released before the reaper exists, which opens it again when it stops this
                self._hold_query_session(False)
                self._reaper = threading.Thread(
                    target=self._stop_when_idle, args=(process,), name="kb-idle", daemon=True
                )
                self._reaper.start()
                return
        process.close()  # the app closed while it started

    def _stop_when_idle(self, process: EncoderProcess) -> None:
        """Close `process` once it has been unused for `idle_s` seconds; the next large adds
        start another by the same rule. Ends when the process is closed or replaced."""
        while not self._closed.wait(min(self.idle_s / 4, 5.0)):
            with self._lock:
                if self._process is not process:
                    return
                if self._using or time.monotonic() - self._used < self.idle_s:
                    continue
                self._process, self._starter, self._chars = None, None, 0
            log.info("encoder process stopped after %.0f s unused", self.idle_s)
            process.close()
            self._hold_query_session(True)
            return

    def _give_up(self, process: EncoderProcess, exc: ConfigError) -> None:
        log.error("the encoder process failed (%s); large adds embed in-process", exc.message)
        with self._lock:
            if self._process is process:
                self._process = None
        process.close()
        self._hold_query_session(True)

    def _hold_query_session(self, held: bool) -> None:
        """While the process runs, the in-process encoder's session for lone texts (ONNX's
        spinning one) is released: the process holds 250-330 MiB, this gives about 110 MiB
        of it back, and lone queries run 1-2 ms slower meanwhile, on a lane."""
        hold = getattr(self.inner, "hold_query_session", None)
        if hold is not None:
            hold(held)


def _step_end(texts: Sequence[str], start: int, chars: int) -> int:
    """The end of the step from `start`: texts up to about `chars` characters (one at least)."""
    end, total = start, 0
    while end < len(texts) and (end == start or total < chars):
        total += len(texts[end])
        end += 1
    return end
