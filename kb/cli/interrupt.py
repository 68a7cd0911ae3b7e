"""Ctrl-C and SIGTERM during a long command: the first asks it to stop where it safely can (or
stops it as a Ctrl-C does), a second Ctrl-C quits at once; one home for kb's signal handling
(kb serve's drain has its own, kb.cli.drain)."""

from __future__ import annotations

import signal
import sys
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


class Terminated(KeyboardInterrupt):
    """A SIGTERM, raised as a Ctrl-C is so that the same clean-up runs."""


def stop_like_ctrl_c(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise Terminated, once; SIGTERM is ignored from then on, so a second
    one (make passes on the SIGTERM it gets, which the process group's had already reached)
    does not cut the clean-up short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """While inside (or around a command, as a decorator), SIGTERM (timeout(1), systemd, a
    container's stop) stops the command as a Ctrl-C does: it was fatal at once, and kb backup
    and export -o left their partial file behind, kb restore said nothing. A process that
    ignores SIGTERM keeps ignoring it; off the main thread nothing is installed."""
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN or threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    try:
        yield
    finally:  # None: a handler not set from Python (an embedding program's), unknown here
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def terminated() -> bool:
    """Whether the exception being handled is, or was caused by, a SIGTERM's Terminated."""
    exc = sys.exception()
    while exc is not None and not isinstance(exc, Terminated):
        exc = exc.__cause__ or exc.__context__
    return exc is not None
