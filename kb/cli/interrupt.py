"""Ctrl-C during a long command: the first asks it to stop where it safely can, a second
quits at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

import click


@dataclass
class Asked:
    """Which signal asked the command to stop (None: none did)."""

    by: signal.Signals | None = None

    @property
    def exit_code(self) -> int:
        """128 + the signal, as a shell reports a command it stopped."""
        return 128 + (self.by or signal.SIGINT)


@contextmanager
def first_ctrl_c_stops(
    stop: threading.Event, what: str, *, sigterm: bool = False
) -> Iterator[Asked]:
    """While inside, the first SIGINT sets `stop` and says so (`what` is what happens next);
    a second raises KeyboardInterrupt as usual. With `sigterm`, a SIGTERM (timeout(1),
    systemd, a container's stop) asks the same, once, and later ones are ignored: it killed
    the command at once. A process that ignores a signal keeps ignoring it; off the main
    thread nothing is installed."""
    asked = Asked()
    if threading.current_thread() is not threading.main_thread():
        yield asked
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def ask(by: signal.Signals) -> None:
        asked.by = by
        stop.set()
        said = "Interrupted" if by is signal.SIGINT else "Terminated"
        click.echo(f"\n{said}: {what} (Ctrl-C again to quit now).", err=True)

    def on_ctrl_c(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        ask(signal.SIGINT)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # make passes a second one on
        if not stop.is_set():
            ask(signal.SIGTERM)

    if previous[signal.SIGINT] is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, on_ctrl_c)
    if sigterm and previous[signal.SIGTERM] is not signal.SIG_IGN:
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield asked
    finally:
        for sig, handler in previous.items():  # None: set outside Python, unknown here
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
