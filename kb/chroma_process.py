"""A local Chroma server process (`chroma run`, shipped with chromadb), started and awaited."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kb.errors import StoreUnavailable

CHROMA = Path(sys.executable).with_name("chroma")
HEARTBEAT = "/api/v2/heartbeat"  # what a Chroma server answers when it is up


def start(data: Path, port: int, log: Path, timeout: float = 60) -> subprocess.Popen:
    """`chroma run` on 127.0.0.1:port over `data`, once it answers its heartbeat. A port
    something else listens on is refused first: that other server answered the heartbeat,
    and kb went on against it (its data, not `data`'s) while its own Chroma had exited."""
    if not _free(port):
        raise StoreUnavailable(f"cannot start Chroma on 127.0.0.1:{port}: the port is taken")
    data.mkdir(parents=True, exist_ok=True)
    command = [str(CHROMA), "run", "--path", str(data), "--host", "127.0.0.1"]
    with log.open("ab") as sink:
        server = subprocess.Popen(
            [*command, "--port", str(port)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_dies_with(os.getpid()),
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise StoreUnavailable(f"chroma run exited ({server.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"{url}{HEARTBEAT}", timeout=2):
                pass
        except OSError:
            time.sleep(0.2)
            continue
        if server.poll() is None:  # the answer was its own (another took the port meanwhile)
            return server
    stop(server)
    raise StoreUnavailable(f"the Chroma server on {url} did not answer in {timeout:.0f} s")


def _dies_with(parent: int) -> Callable[[], None] | None:
    """What the Chroma server runs before `chroma run`, on Linux: SIGTERM to it when kb
    exits, killed too (prctl's PR_SET_PDEATHSIG; None elsewhere). It runs in a session of its
    own, so a signal to kb's process group (a terminal's Ctrl-C, systemd's stop) is kb's
    alone: it killed Chroma at once, the requests under way failed 503 and kb exited 1 (review
    helper 91); kb stops it after its workers drain. The kernel signals it when the thread
    that started it ends: kb cluster's main thread, which starts it before any other thread
    of kb's runs (preexec_fn runs between fork and exec, where a lock another thread held
    stays held; prctl is looked up here, so the child only calls it)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

    def set_up() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # kb died before the call: no signal will come
            os._exit(1)

    return set_up


PR_SET_PDEATHSIG = 1  # linux/prctl.h


class Watch:
    """Whether `kb cluster`'s Chroma server is still running, looked at every second on a
    thread of its own: it ran on with every data request a 503 when its Chroma died
    (review helper 68). `exited` once it has gone unasked (its exit code is not known:
    gunicorn's master reaps any child of its process, the server too)."""

    def __init__(self, server: subprocess.Popen) -> None:
        self.server = server
        self.exited = False
        self._stopping = threading.Event()

    def start(self, gone: Callable[[], None]) -> None:
        """Call `gone` (once, from the watching thread) when the server exits unasked."""

        def watch() -> None:
            while not self._stopping.wait(WATCH_S):
                if self.server.poll() is not None:  # reaped by gunicorn: 0 (ECHILD)
                    if not self._stopping.is_set():
                        self.exited = True
                        gone()
                    return

        threading.Thread(target=watch, name="kb-chroma-watch", daemon=True).start()

    def stop(self) -> None:
        """kb is stopping the server itself: not a failure."""
        self._stopping.set()


WATCH_S = 1.0


def check(url: str, timeout: float = 5) -> None:
    """StoreUnavailable unless the Chroma server at `url` (KB_CHROMA_URL) answers its
    heartbeat: said as opening the store says it."""
    try:
        with urllib.request.urlopen(f"{url}{HEARTBEAT}", timeout=timeout):
            return
    except urllib.error.HTTPError as exc:  # something answers, not Chroma's API
        problem = f"{url}{HEARTBEAT} answered HTTP {exc.code}: not a Chroma server?"
    except (OSError, ValueError) as exc:  # refused, no such host, a timeout
        problem = str(getattr(exc, "reason", exc))
    raise StoreUnavailable(f"cannot reach the Chroma server at {url} (KB_CHROMA_URL): {problem}")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        # as a server binds: a port with only closed connections waiting out (TIME_WAIT,
        # after a restart) is free; one something listens on is not
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
