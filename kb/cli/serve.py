"""`kb serve`: the API under waitress (one process) or gunicorn (several, KB_CHROMA_URL)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from gunicorn.app.base import BaseApplication

from kb import __version__, chroma_process, cluster_folder
from kb.auth import KeyRing
from kb.cli.base import fail, main, not_empty
from kb.cli.drain import GRACE_S, Drain
from kb.cli.gunicorn_worker import IdleLimitedWorker
from kb.cli.server_errors import use_json_errors, use_json_errors_in_gunicorn
from kb.config import Settings, cpu_count
from kb.errors import KBError
from kb.memory import limit_malloc_arenas


@main.command()
@click.option("--host", default=None, callback=not_empty, help="Interface to bind (KB_HOST).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (KB_PORT).")
@click.option(
    "--threads",
    type=click.IntRange(0, 256),
    default=None,
    help="Threads per worker (KB_THREADS); 0 = 8 per core.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Worker processes (KB_WORKERS; KB_CHROMA_URL).",
)
def serve(host: str | None, port: int | None, threads: int | None, workers: int | None) -> None:
    """Serve the REST API and the search page on the configured store."""
    overrides: dict[str, Any] = {"host": host, "port": port, "threads": threads, "workers": workers}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    _check_keys(settings)
    if settings.workers > 1 and not settings.chroma_url:
        fail(
            "several workers need a Chroma server (KB_CHROMA_URL): an embedded store is opened "
            "by one process at a time. Use threads (KB_THREADS), or `kb cluster`, which starts "
            "a Chroma server and the workers."
        )
    if settings.workers > 1:  # as one worker would say it, once, before gunicorn forks
        _check_chroma(settings)
    limit_malloc_arenas(settings.malloc_arenas)  # before the server's threads start
    if settings.workers > 1:
        listening = _bound(settings)
        _banner(settings)
        _gunicorn(settings, listening)
    else:
        _waitress(settings)


def _banner(settings: Settings) -> None:
    """What kb serve serves, once its port is bound: it was said before, and a busy port's
    error followed the line saying kb was on it (review helper 91)."""
    where = settings.chroma_url or settings.chroma_path
    click.echo(
        f"kb {__version__} on http://{settings.host}:{settings.port} (store {where}, collection "
        f"{settings.collection}, {settings.workers} worker(s) x {settings.server_threads()} "
        "threads)",
        err=True,
    )


@main.command()
@click.option(
    "--path",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default="chroma_server_db",
    show_default=True,
    help="Where the Chroma server keeps its data.",
)
@click.option(
    "--chroma-port",
    type=click.IntRange(1, 65535),
    default=8001,
    show_default=True,
    help="Port of the Chroma server it starts (on 127.0.0.1).",
)
@click.option("--workers", type=click.IntRange(2, 64), default=None, help="Default: 2 per core.")
@click.option("--seed", "seeds", multiple=True, help="Load these files first (like kb load).")
def cluster(data: Path, chroma_port: int, workers: int | None, seeds: tuple[str, ...]) -> None:
    """Start a local Chroma server and kb with several worker processes against it."""
    url = f"http://127.0.0.1:{chroma_port}"
    log = data / "chroma.log"
    count = workers or max(2, 2 * cpu_count())
    settings = Settings(chroma_url=url, workers=count)
    _check_keys(settings)  # before the Chroma server starts, and once, not per worker
    listening = _bound(settings)  # likewise: a busy port is one line, nothing started
    try:
        held = cluster_folder.claim(data, chroma_port)  # for as long as kb cluster runs
        try:
            server = chroma_process.start(data, chroma_port, log)
        except BaseException:
            cluster_folder.unclaim(data, held)
            raise
    except KBError as exc:
        for sock in listening:
            sock.close()
        fail(exc.message)
    watch = chroma_process.Watch(server)

    def stop_chroma() -> None:
        watch.stop()  # kb stops it: not a failure
        chroma_process.stop(server)
        held.release()  # the workers, its other holders (forked with it), have exited

    with owner_cleanup(stop_chroma):  # not from a worker's exit
        click.echo(f"Chroma server on {url} (data in {data}, log {log})", err=True)
        os.environ["KB_CHROMA_URL"] = url
        if seeds:
            _seed(seeds)
        limit_malloc_arenas(settings.malloc_arenas)
        banner = f"kb {__version__} on http://{settings.host}:{settings.port}, {count} workers"
        click.echo(banner, err=True)  # as the Chroma line and kb serve's: stdout stays empty
        owner = os.getpid()
        watch.start(lambda: os.kill(owner, signal.SIGTERM))  # gunicorn stops, as on SIGTERM
        try:
            _gunicorn(settings, listening)
        finally:  # gunicorn exits by SystemExit(0); a worker unwinds here too, as it exits
            if os.getpid() == owner and watch.exited:
                fail(f"the Chroma server exited, so kb cluster stopped: see {log}")


def _seed(seeds: tuple[str, ...]) -> None:
    """`kb load --quiet SEEDS` in a process of its own. Loaded here, a small input was
    embedded on this process' encoder threads, which outlive the load; gunicorn then forked
    the workers with a lock such a thread held (an import's), and every worker hung before
    answering its first request."""
    # after "--": a seed named like an option (`-notes.jsonl`) is a file, as for kb load
    command = [sys.executable, "-m", "kb", "load", "--quiet", "--", *seeds]
    loaded = subprocess.run(command, check=False)
    if loaded.returncode:
        fail(f"the seed load failed (exit code {loaded.returncode}); see its messages above")


def _check_chroma(settings: Settings) -> None:
    """The Chroma server of KB_CHROMA_URL answers, or one line: under gunicorn each worker
    failed to boot with a traceback of its own (247 lines), and gunicorn exited 3."""
    assert settings.chroma_url is not None
    try:
        chroma_process.check(settings.chroma_url)
    except KBError as exc:
        fail(exc.message)


def _check_keys(settings: Settings) -> None:
    """Refuse a bad KB_API_KEYS before the model loads; under gunicorn each worker would
    fail to boot with a traceback of its own."""
    try:
        KeyRing.of(settings)
    except KBError as exc:
        fail(exc.message)


def _waitress(settings: Settings) -> None:
    from kb.app import close_app, create_app

    # the port first: a busy one is said before the model loads and the store is opened
    # (waitress listens at once, so a client connecting meanwhile waits, it is not refused)
    late = _LateApp()
    server = _listen(late, settings)
    _banner(settings)
    # SIGTERM stops the server as a first Ctrl-C does: the requests under way finish, then
    # the app is closed (its encoder process too); one while the app is built (the model
    # loading) stops it once built, exit 0 (it was killed, exit 143)
    drain = Drain(server)
    signal.signal(signal.SIGTERM, drain.terminate)
    try:
        late.app = create_app(settings)
    except KBError as exc:
        server.close()
        fail(exc.message)
    try:
        server.print_listen("Serving on http://{}:{}")
        drain.run()
    finally:
        # stopped by Ctrl-C too: a SIGTERM now is ignored, while the app closes and while the
        # interpreter ends (which puts Python's handlers back to the default, fatal one)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        close_app(late.app)


class _LateApp:
    """The WSGI app waitress is bound with before kb's app exists (set before the server
    runs: no request reaches it earlier)."""

    app: Any = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        return self.app(environ, start_response)


def _listen(app: Any, settings: Settings) -> Any:
    """waitress's server on kb's sockets (`_bound`)."""
    import waitress

    use_json_errors(settings.max_request_bytes)
    return waitress.create_server(
        app,
        sockets=_bound(settings),
        threads=settings.server_threads(),
        ident="kb",
        channel_timeout=settings.idle_timeout,
        cleanup_interval=min(30, max(1, settings.idle_timeout // 2)),  # how often it looks
        max_request_body_size=body_cap(settings.max_request_bytes),
    )


def _bound(settings: Settings) -> list[socket.socket]:
    """Sockets listening on KB_PORT at every address KB_HOST names, bound as waitress binds
    them (IPv6 ones IPv6-only, addresses named twice bound once): the one place either
    server's sockets are made (waitress takes them as `sockets`, gunicorn as `fd://N`). A port
    in use or an address that is not this host's is one line, before anything starts (it was
    a 39-line traceback from waitress; gunicorn tried five times a second apart and wrote ten
    lines of its log, after `kb cluster` had started its Chroma server)."""
    if not settings.host.strip():
        fail("no address to listen on: KB_HOST is empty (--host, KB_HOST)")
    try:
        found = socket.getaddrinfo(
            settings.host, settings.port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP,
            socket.AI_PASSIVE,
        )  # fmt: skip
    except (OSError, UnicodeError):  # socket.gaierror is an OSError
        fail(
            f"cannot listen on {settings.host!r} (--host, KB_HOST): not an address or a host "
            "name of this machine"
        )
    bound: list[socket.socket] = []
    seen: set[tuple[str, int]] = set()
    try:
        for family, kind, proto, _, address in found:
            where = (str(address[0]).split("%", 1)[0], int(address[1]))
            if where in seen:
                continue
            seen.add(where)
            listening = socket.socket(family, kind, proto)
            bound.append(listening)
            if family == socket.AF_INET6:
                listening.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            # a restart does not wait for the last connections' TIME_WAIT
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listening.bind(address)
            listening.listen(LISTEN_BACKLOG)
    except OSError as exc:
        for listening in bound:
            listening.close()
        busy = " (another process is listening on it)" if exc.errno == errno.EADDRINUSE else ""
        fail(
            f"cannot listen on {settings.host}:{settings.port} (KB_HOST, KB_PORT): "
            f"{exc.strerror or exc}{busy}"
        )
    return bound


LISTEN_BACKLOG = 2048  # gunicorn's default, and waitress's


def body_cap(limit: int) -> int:
    """The largest body waitress reads for the app: twice the app's KB_MAX_REQUEST_BYTES.
    Waitress reads (and spools to disk) a whole body before the app runs, 1 GiB by default;
    past its cap it answers a 413 from the headers (kb.cli.server_errors), reading nothing.
    Bodies up to the cap still reach the app, whose 413 names the limit: what a client that
    is a little over (a bulk load's batch) gets."""
    return 2 * limit


def _gunicorn(settings: Settings, listening: list[socket.socket]) -> None:
    """Worker processes sharing the Chroma server, and their metrics through files; they
    accept on `listening` (gunicorn closes the sockets)."""
    use_json_errors_in_gunicorn()
    metrics = tempfile.mkdtemp(prefix="kb-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics  # before any worker imports the client
    with owner_cleanup(lambda: shutil.rmtree(metrics, ignore_errors=True)):
        _Cluster(settings, [sock.detach() for sock in listening]).run()


@contextmanager
def owner_cleanup(cleanup: Callable[[], None]) -> Iterator[None]:
    """Run `cleanup` on leaving, in the process that entered only. gunicorn forks its
    workers inside `run()`, and a worker's exit (a reload, a SIGTERM, a timeout) unwinds its
    copy of this stack: a plain `finally` removed the metrics folder every process shares
    (each request then answered 500) and stopped kb cluster's Chroma server from a worker."""
    owner = os.getpid()
    try:
        yield
    finally:
        if os.getpid() == owner:
            cleanup()


def _worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it exits: release its app (its store's scratch copies of every
    record, the change log's heartbeats, an encoder process). Without it each stop left
    every worker's copies in the temporary folder until kb next started on the host."""
    from kb.app import close_app

    app = getattr(worker, "wsgi", None)
    if app is not None:
        close_app(app)


def _child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


class _Cluster(BaseApplication):  # type: ignore[misc]
    """gunicorn with kb's app factory: each worker builds its own app after the fork."""

    def __init__(self, settings: Settings, fds: list[int]) -> None:
        self.settings, self.fds = settings, fds
        super().__init__()

    def load_config(self) -> None:
        options = {
            "bind": [f"fd://{fd}" for fd in self.fds],  # bound by kb (_bound)
            "workers": self.settings.workers,
            "threads": self.settings.server_threads(),
            "worker_class": IdleLimitedWorker,  # gthread, KB_IDLE_TIMEOUT on each connection
            "timeout": 120,  # a worker's first start builds its local copies of the store
            "graceful_timeout": GRACE_S,  # as kb serve's own drain (kb.cli.drain)
            # gunicorn's default request line (4,094 bytes) is shorter than kb's targets: an id
            # of 512 characters is up to 6,144 %-escaped. Its most is 8,190; 0 would be no
            # limit at all with its Python parser (8 MiB took 14.7 s of a worker's CPU,
            # 32 MiB 90 s: review helper 86)
            "limit_request_line": 8190,
            "accesslog": None,  # kb logs every request itself, with its request id
            "loglevel": self.settings.log_level.lower(),  # its own lines too (KB_LOG_LEVEL)
            "child_exit": _child_exit,  # in the arbiter
            "worker_exit": _worker_exit,
            "proc_name": "kb",
            # gunicorn's control socket is ~/.gunicorn/gunicorn.ctl for every gunicorn of the
            # user (two clusters took it from each other), an error line at each start where
            # HOME is not writable; kb uses none
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from kb.app import create_app

        return create_app(self.settings)
