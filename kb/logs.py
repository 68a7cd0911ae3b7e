"""Logging for the service and the CLI: JSON lines (or text) carrying the current request id."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import queue
import re
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from logging import Handler
from logging.handlers import QueueHandler, QueueListener
from typing import Any

# Set by the HTTP layer for the duration of a request; every log line written meanwhile,
# in any module, carries it.
request_id: ContextVar[str | None] = ContextVar("kb_request_id", default=None)

# LogRecord attributes that are not the caller's `extra` fields.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,  # which worker, when several serve one port
        }
        rid = request_id.get()
        if rid is not None:
            line["request_id"] = rid
        line |= {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False).translate(JSON_LINE_ESCAPES)


# What ends or rewrites a line beyond ASCII's controls: C1 controls (U+0085 is a newline to
# str.splitlines, U+009B a terminal's CSI) and the Unicode line and paragraph separators. JSON
# leaves them raw (ensure_ascii=False); as \uXXXX escapes the line holds the same strings.
BREAKS = [*range(0x80, 0xA0), 0x2028, 0x2029]
JSON_LINE_ESCAPES = {code: f"\\u{code:04x}" for code in BREAKS}
CONTROL_ESCAPES = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in [*range(32), 127, *BREAKS]
    if chr(code) != "\t"
} | {ord("\n"): "\\n", ord("\r"): "\\r"}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The line without its traceback, with the record's extra fields as key=value (an
        access line's route, status and duration: the text lines had none, review helper
        77), control characters escaped: a request path with a percent-encoded newline wrote
        lines of its own choosing into the log. A message or value holding a space, = or "
        is quoted: a path such as `/x status=200` planted a field (review helper 78)."""
        extra = " ".join(
            f"{key}={_quoted(value)}" for key, value in vars(record).items() if key not in _STANDARD
        )
        if extra and _NEEDS_QUOTES.search(record.message):
            record.message = json.dumps(record.message, ensure_ascii=False)
        line = super().formatMessage(record) + (f" {extra}" if extra else "")
        return line.translate(CONTROL_ESCAPES)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        rid = request_id.get()
        return f"{text} [request {rid}]" if rid is not None else text


_NEEDS_QUOTES = re.compile(r'[="]')  # in a message followed by fields: quoted


def _quoted(value: Any) -> str:
    """A field's value, quoted (as JSON) if it holds a space, = or " or is empty."""
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if re.search(r'[\s="]', text) or not text else text


class Thinned(logging.Filter):
    """Passes a logger's first record, then at most one every `every` seconds, which says how
    many it stands for. `take` does the same for one call site's lines."""

    def __init__(self, every: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every = every
        self._clock = clock
        self._lock = threading.Lock()
        self._passed = -math.inf  # when a record last passed
        self._held = 0  # records dropped since

    def take(self) -> str | None:
        """Whether a line may be written now: None if not (it is counted as held back), else
        what to add to it, how many were held back since the last and over how long ('' when
        none were)."""
        now = self._clock()
        with self._lock:
            if now - self._passed < self.every:
                self._held += 1
                return None
            held, since = self._held, now - self._passed
            self._held, self._passed = 0, now
        return f" ({held} more such line(s) in the last {since:.0f} s)" if held else ""

    def filter(self, record: logging.LogRecord) -> bool:
        added = self.take()
        if added:
            record.msg = f"{record.msg}{added}"
        return added is not None


QUEUE_WARNINGS_EVERY_S = 60.0  # waitress's "Task queue depth" lines: at most one a minute


QUEUED_LINES = 10_000  # log lines waiting for stderr, at most; more are dropped and counted
STOP_WAIT_S = 5.0  # at exit, how long the queued lines may take to reach stderr


class _Writer:
    """The thread that writes log lines. A request thread only formats its line (the request
    id is its context's) and queues it: writing to stderr under the handler's lock, with
    sixteen threads logging, made them queue for the lock behind a writer waiting for the GIL.
    The queue is bounded: with stderr stalled (a blocked pipe or log driver) it grew without
    end (200 MiB in 8,000 requests), and the exit's flush waited for ever, so SIGTERM did not
    stop kb serve (review helper 77)."""

    listener: QueueListener | None = None

    @classmethod
    def restart(cls, formatter: logging.Formatter) -> QueueHandler:
        cls.stop()
        lines: queue.Queue[logging.LogRecord | None] = queue.Queue(QUEUED_LINES)
        handler = _Dropping(lines)
        handler.setFormatter(formatter)  # QueueHandler.prepare formats in the caller's thread
        out = logging.StreamHandler(sys.stderr)
        out.setFormatter(logging.Formatter("%(message)s"))
        cls.listener = _Listener(lines, out)
        cls.listener.start()
        return handler

    @classmethod
    def stop(cls) -> None:
        """Write what is queued (for STOP_WAIT_S at most) and end the thread."""
        if cls.listener is not None:
            cls.listener.stop()
            cls.listener = None


class _Dropping(QueueHandler):
    """Queues a line unless the queue is full; a line it dropped is counted, and said in the
    next line it queues."""

    def __init__(self, lines: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__(lines)
        self.dropped = 0
        self._counting = threading.Lock()  # request threads drop lines at once

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.dropped:
            with self._counting:
                dropped, self.dropped = self.dropped, 0
            note = logging.makeLogRecord(
                {"name": __name__, "levelno": logging.WARNING, "levelname": "WARNING",
                 "msg": f"{dropped} log lines dropped: stderr did not take them"}
            )  # fmt: skip
            try:
                self.queue.put_nowait(self.prepare(note))
            except queue.Full:
                with self._counting:
                    self.dropped += dropped
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._counting:
                self.dropped += 1


class _Listener(QueueListener):
    """Stops within STOP_WAIT_S: a stderr that takes nothing keeps the rest unwritten."""

    def __init__(self, lines: queue.Queue[logging.LogRecord | None], *out: Handler) -> None:
        super().__init__(lines, *out)
        self.lines = lines

    def enqueue_sentinel(self) -> None:
        with contextlib.suppress(queue.Full):
            self.lines.put(None, timeout=STOP_WAIT_S)  # None: QueueListener's sentinel

    def stop(self) -> None:
        self.enqueue_sentinel()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)  # a daemon: one still writing ends with the process
            self._thread = None


atexit.register(_Writer.stop)


def configure(level: str, fmt: str) -> None:
    """Route kb's and the server's logs to stderr in the chosen format (idempotent)."""
    handler = _Writer.restart(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.set_name("kb")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "kb"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Noise beside kb's own lines: the Chroma client logs every HTTP request it makes at INFO,
    # and faiss's loader says at INFO, on every start, that it found no AVX-512 or AVX2 build:
    # the one it loads picks those instructions at run time (faiss.get_compile_options():
    # "DD AVX2 AVX512 ...").
    for noisy in ("httpx", "faiss.loader"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # Waitress warns of its task queue's depth each time a request finds every thread busy,
    # from inside the lock its threads take tasks under: under load, a line a request (351 in
    # one run of the query bench), each formatted while the other threads waited.
    waiting = logging.getLogger("waitress.queue")
    for old_filter in [f for f in waiting.filters if isinstance(f, Thinned)]:
        waiting.removeFilter(old_filter)
    waiting.addFilter(Thinned(QUEUE_WARNINGS_EVERY_S))
