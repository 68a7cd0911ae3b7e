"""Ctrl-C during a long command: the first asks it to stop where it safely can, a second
quits at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import click


@contextmanager
def first_ctrl_c_stops(stop: threading.Event, what: str) -> Iterator[None]:
    """While inside, the first SIGINT sets `stop` and says so (`what` is what happens next);
    a second raises KeyboardInterrupt as usual. A process that ignores SIGINT (a background
    job of a script) keeps ignoring it; off the main thread nothing is installed."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or threading.current_thread() is not threading.main_thread():
        yield
        return

    def asked(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        click.echo(f"\nInterrupted: {what} (Ctrl-C again to quit now).", err=True)

    signal.signal(signal.SIGINT, asked)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
