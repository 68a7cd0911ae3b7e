"""Process plumbing shared by the benchmarks: kb subprocesses, servers, RSS, tables, results."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import COLLECTION, RESULTS, ROOT

NOTES: dict[str, dict[str, int]] = {}  # source -> warning/error line (digits as #) -> count
_NOTEWORTHY = re.compile(r"warn|error|deprecat|traceback", re.IGNORECASE)
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d[ T][\d:,.]+\s*")
KB = Path(sys.executable).with_name("kb")
JSON_HEADERS = {"Content-Type": "application/json", "Connection": "keep-alive"}


def kb_command(*args: str) -> list[str]:
    """`kb ...` as a user runs it (the venv's script), with the running interpreter's kb."""
    return [str(KB), *args] if KB.exists() else [sys.executable, "-m", "kb", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kb_env(store: Path, port: int | None = None) -> dict[str, str]:
    """The inherited environment (KB_BACKEND included) pointed at one store, offline."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ANONYMIZED_TELEMETRY": "False",
        "PYTHONPATH": str(ROOT),
        "KB_CHROMA_PATH": str(store),
        "KB_COLLECTION": COLLECTION,
        "KB_HOST": "127.0.0.1",
        # the query cells cycle data/eval's 66 questions: kept query vectors would measure
        # the cache, not a search (KB_QUERY_CACHE set by the caller is kept)
        "KB_QUERY_CACHE": os.environ.get("KB_QUERY_CACHE", "0"),
    }
    if port is not None:
        env["KB_PORT"] = str(port)
    return env


def served_as() -> dict[str, Any]:
    """What the servers and commands the cells start read (`kb_env`), each cell's store in
    place of STORE."""
    from bench.info import served

    return served(kb_env(Path("STORE")))


def utc_stamp() -> str:
    """The time now as results' file names carry it (20261204T061832Z)."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def save_results(name: str, figures: Any) -> Path:
    """Write a script's figures as bench/results/<name>.json and say where; a dict gets the
    synthetic corpus's hash (bench.corpus.fingerprint) unless it holds one."""
    from bench.corpus import fingerprint

    if isinstance(figures, dict) and "corpus_sha256" not in figures:
        figures = {**figures, "corpus_sha256": fingerprint()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"results in {out}")
    return out


@contextmanager
def scratch(prefix: str = "kb-bench-") -> Iterator[Path]:
    """A fresh directory under /tmp, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def note(source: str, output: str) -> None:
    """Remember the warnings and errors a subprocess printed, timestamps off, numbers as #."""
    for line in output.splitlines():
        if _NOTEWORTHY.search(line):
            key = re.sub(r"\d+", "#", _STAMP.sub("", line.strip()))[:300]
            seen = NOTES.setdefault(source, {})
            seen[key] = seen.get(key, 0) + 1


def process_cpu(pid: int) -> float:
    """CPU seconds (user and system, all threads) a live process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


class OtherLoad:
    """The share of the machine's CPU that processes outside the benchmark used meanwhile:
    this process, its waited-for children and the live `pids` are ours, the rest is not."""

    def __init__(self, *pids: int) -> None:
        self.pids = pids
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        ours += sum(process_cpu(pid) for pid in self.pids)
        return time.perf_counter(), _machine_cpu(), ours

    def share(self) -> float:
        wall, machine, ours = (b - a for a, b in zip(self.start, self._sample(), strict=True))
        return round(max(0.0, machine - ours) / (wall * (os.cpu_count() or 1)), 3)


def run_worker(task: str, args: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Run bench.workers `task` in its own interpreter; its JSON answer."""
    with scratch("kb-bench-worker-") as tmp:
        (tmp / "args.json").write_text(json.dumps(args))
        command = [sys.executable, "-m", "bench.workers", task, str(tmp / "args.json")]
        done = subprocess.run(
            [*command, str(tmp / "out.json")], env=env, cwd=ROOT, capture_output=True, text=True
        )
        note(f"worker {task}", done.stderr)
        if done.returncode:
            raise RuntimeError(f"worker {task} failed:\n{done.stderr[-3000:]}")
        return dict(json.loads((tmp / "out.json").read_text()))


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=JSON_HEADERS)
    response = conn.getresponse()
    return response.status, response.read()


class Server:
    """`kb serve` on a free loopback port over one store; stopped on exit."""

    def __init__(
        self,
        store: Path,
        log: Path,
        wrapper: Sequence[str] = (),
        env: dict[str, Any] | None = None,
    ) -> None:
        """`wrapper` runs the server under another program (a profiler); `env` adds
        variables (KB_* settings)."""
        self.port = free_port()
        self.log = log
        extra = {key: str(value) for key, value in (env or {}).items()}
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [*wrapper, *kb_command("serve")],
                env=kb_env(store, self.port) | extra,
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def connect(self, timeout: float = 120.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def wait(
        self,
        method: str = "GET",
        path: str = "/health",
        body: bytes | None = None,
        timeout: float = 600.0,
        interval: float = 0.05,
        accept: Callable[[bytes], bool] = lambda raw: True,
    ) -> float:
        """Poll until `path` answers 200 with a body `accept` takes; seconds waited. Raise if
        the server died."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kb serve exited:\n{self.log.read_text()[-3000:]}")
            conn = self.connect(timeout=120)
            try:
                status, raw = request(conn, method, path, body)
                if status == 200 and accept(raw):
                    return time.perf_counter() - started
            except (OSError, http.client.HTTPException):
                pass
            finally:
                conn.close()
            time.sleep(interval)
        raise RuntimeError(f"kb serve gave no accepted 200 on {path} in {timeout:.0f} s")

    def wait_ready(self, timeout: float = 600.0, interval: float = 0.05) -> float:
        """Poll /health until it says `ready` (the in-memory search copies are loaded, so
        steady-state figures do not mix in the slower start); seconds waited."""
        return self.wait(
            timeout=timeout, interval=interval, accept=lambda raw: bool(json.loads(raw)["ready"])
        )

    def ready(self) -> bool:
        """Whether /health says `ready` now."""
        conn = self.connect()
        try:
            status, raw = request(conn, "GET", "/health")
        finally:
            conn.close()
        return status == 200 and bool(json.loads(raw)["ready"])

    def memory(self) -> dict[str, float]:
        return memory(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        note("kb serve", self.log.read_text(errors="replace"))

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def memory(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a process, in MiB, and the sum of
    its live descendants' (kb serve's encoder process for large adds, multiprocessing's
    resource tracker)."""
    own = _status(pid)
    children = [_status(child) for child in descendants(pid)]
    return {
        "peak_rss_mib": own["VmHWM"],
        "rss_mib": own["VmRSS"],
        "children_peak_rss_mib": round(sum(c.get("VmHWM", 0.0) for c in children), 1),
        "children_rss_mib": round(sum(c.get("VmRSS", 0.0) for c in children), 1),
    }


def _status(pid: int) -> dict[str, float]:
    fields = {}
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:  # gone meanwhile
        return fields
    for line in lines:
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return fields


def descendants(pid: int) -> list[int]:
    """The live descendants of a process."""
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """Count and p50/p95/p99/mean/max in milliseconds."""
    if not seconds:
        return {"n": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}
    ms = [s * 1000 for s in seconds]
    cuts = statistics.quantiles(ms, n=100, method="inclusive") if len(ms) > 1 else ms * 99
    return {
        "n": len(ms),
        "p50_ms": round(cuts[49], 2),
        "p95_ms": round(cuts[94], 2),
        "p99_ms": round(cuts[98], 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "max_ms": round(max(ms), 2),
    }
