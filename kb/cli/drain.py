"""waitress's main loop, with a graceful stop: SIGTERM (or a first Ctrl-C) stops accepting
connections and lets the requests under way finish and their answers go out, for at most
GRACE_S, before the app is closed; a second Ctrl-C stops at once. What each connection is
answered meanwhile, and when it closes: kb.cli.drain_channel.

waitress's own `run()` left its loop at the signal: its threads got 5 s, the answers they
wrote after the loop had stopped were never sent, and kb closed the app under a request still
embedding or writing, which answered a 500 (a 3,000-document /add, SIGTERM a second in).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

GRACE_S = 30  # seconds; gunicorn's graceful_timeout under `kb serve --workers N` too


class Drain:
    """Runs a waitress server (`waitress.create_server`'s) until asked to stop, then drains."""

    def __init__(self, server: Any) -> None:
        """Before the server runs: the connections it accepts are DrainingChannels."""
        from waitress.server import BaseWSGIServer

        from kb.cli.drain_channel import DrainingChannel

        self.server = server
        self.map: dict[int, Any] = getattr(server, "map", None) or server._map
        self._channel, self._listener = DrainingChannel, BaseWSGIServer
        for listener in self._listeners():
            listener.channel_class = DrainingChannel
        self.stopping = threading.Event()

    def terminate(self, signum: int, frame: FrameType | None) -> None:
        """The SIGTERM handler: stop as a first Ctrl-C does. Later ones are ignored: `make
        serve` passes the SIGTERM it gets on to kb serve, which the same signal to the process
        group had already reached (kb serve was killed by the second, and exited non-zero)."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.stopping.set()

    def run(self) -> None:
        from waitress import wasyncore

        adj = self.server.adj
        deadline: float | None = None
        while True:
            try:
                wasyncore.loop(
                    timeout=0.2 if deadline else adj.asyncore_loop_timeout,
                    map=self.map,
                    use_poll=adj.asyncore_use_poll,
                    count=1,
                )
            except KeyboardInterrupt:
                if deadline is not None:  # a second Ctrl-C: at once
                    self._stop_threads(0)
                    raise
                self.stopping.set()
            if not self.stopping.is_set():
                continue
            if deadline is None:
                deadline = time.monotonic() + GRACE_S
                self._close_listeners()
                self._begin()
            busy = sum(1 for channel in self._channels() if not self._idle(channel))
            if not busy:
                break
            if time.monotonic() > deadline:
                log.warning("stopping with %d request(s) under way after %.0f s", busy, GRACE_S)
                break
        self._stop_threads(5)

    def _close_listeners(self) -> None:
        """No new connections: a client connecting now is refused, not left waiting. Only the
        listening sockets close: waitress's own close() of a listener closes its trigger too,
        which the request threads pull at every buffered write, so a streamed answer (a
        backup) under way was cut off (review helper 86)."""
        from waitress import wasyncore

        for listener in self._listeners():
            wasyncore.dispatcher.close(listener)

    def _begin(self) -> None:
        """Tell every connection the drain has begun; close those with nothing under way (a
        kept-alive client's). One that becomes idle later stays open until the drain ends if
        its last answer did not close it (one begun before the SIGTERM): a request the client
        sends on it gets a 503, where the connection was closed under it (review helper 86)."""
        under_way = 0
        for channel in self._channels():
            channel.drain()
            if self._idle(channel):
                channel.handle_close()
            else:
                under_way += 1
        log.info("stopping: %d request(s) under way, waiting up to %.0f s", under_way, GRACE_S)

    def _listeners(self) -> list[Any]:
        return [d for d in list(self.map.values()) if isinstance(d, self._listener)]

    def _channels(self) -> list[Any]:
        return [d for d in list(self.map.values()) if isinstance(d, self._channel)]

    @staticmethod
    def _idle(channel: Any) -> bool:
        """No request being read (past empty lines), run or answered on it, and no bytes of
        one not read yet (closing over those reset the connection, and the client lost the
        answer before)."""
        from kb.cli.drain_channel import begun, waiting

        return (
            not channel.requests
            and not begun(channel.request)
            and not channel.total_outbufs_len
            and not waiting(channel)
        )

    def _stop_threads(self, timeout: float) -> None:
        """Stop the request threads, then close what is left (the trigger, connections)."""
        from waitress import wasyncore

        self.server.task_dispatcher.shutdown(timeout=timeout)
        wasyncore.close_all(self.map)
