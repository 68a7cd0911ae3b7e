"""`kb cluster`: a Chroma server and several gunicorn workers sharing it, as make serve-cluster."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kb.schemas import MAX_ID_CHARS
from kb.shared_replica import SCRATCH_PREFIX
from tests.live import call, free_ports


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """`kb cluster` with three workers; its log is tmp_path/cluster.log. Parametrized
    indirectly with {"seed": records, "env": {...}}, it is seeded with the records
    (`--seed`) and runs with the settings. Stopped, it leaves none of its workers' scratch
    copies behind."""
    scratch = set(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"))
    port, chroma_port = free_ports(2)
    given = getattr(request, "param", {})
    env = {**os.environ, "KB_PORT": str(port), "KB_CHROMA_PATH": str(tmp_path / "local")}
    env.update(given.get("env", {}))
    log = tmp_path / "cluster.log"
    command = [sys.executable, "-m", "kb", "cluster", "--path", str(tmp_path / "chroma")]
    command += ["--chroma-port", str(chroma_port), "--workers", "3"]
    if records := given.get("seed"):
        seed = tmp_path / "seed.jsonl"
        seed.write_text("".join(json.dumps(record) + "\n" for record in records))
        command += ["--seed", str(seed)]
    with log.open("wb") as sink:  # a group of its own: a cluster that never answers is killed
        proc = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if call(base, "/health")[0] == 200:
                    break
            except OSError:
                time.sleep(0.3)
        else:
            pytest.fail(f"kb cluster did not answer: {log.read_text()[-3000:]}")
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)  # its workers, its Chroma server and itself
        proc.wait()
        raise
    yield base
    proc.send_signal(signal.SIGTERM)  # gunicorn stops its workers, then kb stops Chroma
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    # each worker closes its store as it exits: its copies of every record were left
    assert set(Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*")) <= scratch


def answering_workers(log: Path, route: str) -> set[int]:
    """The pids of the worker processes that logged answers on this route."""
    pids = set()
    for line in log.read_text().splitlines():
        try:  # the workers are still writing: the last line may be half written
            record = json.loads(line) if line.startswith("{") else {}
        except ValueError:
            continue
        if record.get("logger") == "kb.access" and record.get("route") == route:
            pids.add(record["pid"])
    return pids


def test_workers_share_one_store_and_see_each_others_writes(cluster: str, tmp_path) -> None:
    words = ["aurora", "basalt", "cirrus", "delta", "estuary", "fjord", "geyser", "hoodoo"]
    for word in words:
        status, _ = call(cluster, "/add", {"id": word, "text": f"A field note on the {word}."})
        assert status == 201

    def found(word: str) -> list[str]:
        body = {"query": word, "mode": "keyword", "min_score": -1}
        return [m["id"] for m in call(cluster, "/query", body)[1]["matches"]]

    # Which worker accepts a connection is the kernel's choice: one after another, a single
    # worker may take them all (it did in CI). Concurrent bursts, repeated until a second
    # worker has answered, make the others accept too; each answer must see every write.
    log, deadline = tmp_path / "cluster.log", time.monotonic() + 60
    with ThreadPoolExecutor(len(words)) as pool:
        while True:
            assert list(pool.map(found, words)) == [[word] for word in words]
            if len(answering_workers(log, "/query")) >= 2 or time.monotonic() > deadline:
                break
        assert len(answering_workers(log, "/query")) >= 2
        assert call(cluster, "/delete", {"ids": ["delta"]})[0] == 200
        assert list(pool.map(found, ["delta"] * 8)) == [[]] * 8
    assert call(cluster, "/health")[1]["store"]["mode"] == "server"
    status, conflict = call(cluster, "/add", {"id": "aurora", "text": "again"})
    assert (status, conflict["error"]["code"]) == (409, "conflict")


def test_metrics_add_up_over_the_workers(cluster: str) -> None:
    for i in range(12):
        assert call(cluster, "/query", {"query": f"question {i}"})[0] == 200
    with urllib.request.urlopen(f"{cluster}/metrics", timeout=30) as response:
        text = response.read().decode()
    line = next(
        x for x in text.splitlines()
        if x.startswith("kb_http_requests_total") and 'route="/query"' in x
    )  # fmt: skip
    assert float(line.rsplit(" ", 1)[1]) == 12


def test_requests_gunicorn_refuses_itself_get_kbs_error_shape(cluster: str) -> None:
    """They were gunicorn's HTML page (waitress's were text/plain, fixed for kb serve)."""
    host, port = cluster.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(b"POST /add HTTP/1.1\r\nHost: localhost\r\nContent-Length: many\r\n\r\n")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"Content-Type: application/json" in headers
    assert b"x-request-id: " in headers.lower()
    error = json.loads(body)["error"]
    assert (error["code"], error["details"]) == ("bad_request", [])
    assert "content-length" in error["message"].lower()
    assert call(cluster, "/health")[0] == 200  # and the workers serve on
    # but a request line as long as kb's longest id makes is served: gunicorn's default
    # limit (4,094 bytes) answered 414 to GET and DELETE of a document /add had taken
    # (review helper 80), and to a listing's `where` of a few hundred values
    longest = "\U0001f600" * MAX_ID_CHARS  # 6,144 characters %-escaped
    assert call(cluster, "/add", {"id": longest, "text": "Long ids are ids."})[0] == 201
    path = "/documents/" + urllib.parse.quote(longest, safe="")
    status, document = call(cluster, path)
    assert status == 200, document
    assert document["id"] == longest
    where = urllib.parse.quote(json.dumps({"n": {"$in": list(range(100_000, 100_600))}}))
    assert 4094 < len(where) < 8000
    assert call(cluster, f"/documents?where={where}")[0] == 200
    # and one past gunicorn's most (8,190 bytes) is its 414, in kb's error shape: 0, for no
    # limit, left the head unbounded (8 MiB took 14.7 s of a worker's CPU; review helper 86)
    status, error = call(cluster, "/documents?where=" + "x" * 9000)
    assert status == 414, error
    assert "8190" in error["error"]["message"], error  # kb's shape, gunicorn's words
    assert call(cluster, path, method="DELETE")[0] == 200


SEED = [{"id": "moraine", "text": "Moraines mark where a glacier stopped."}]


@pytest.mark.parametrize("cluster", [{"seed": SEED}], indirect=True)
def test_a_cluster_seeded_with_a_small_file_answers(cluster: str) -> None:
    """A small seed was embedded in the master process, whose encoder threads outlived the
    load; the workers forked from it hung on a lock one of them held, and none answered."""
    assert call(cluster, "/documents/moraine")[0] == 200
    body = {"query": "glacier", "mode": "keyword", "min_score": -1}
    assert [m["id"] for m in call(cluster, "/query", body)[1]["matches"]] == ["moraine"]


def two_workers(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    """`kb cluster --workers 2` in a process group of its own, answering /health; its
    stdout and stderr in tmp_path/stdout and tmp_path/stderr."""
    port, chroma_port = free_ports(2)
    env = {**os.environ, "KB_PORT": str(port), "KB_CHROMA_PATH": str(tmp_path / "local")}
    command = [sys.executable, "-m", "kb", "cluster", "--path", str(tmp_path / "chroma")]
    command += ["--chroma-port", str(chroma_port), "--workers", "2"]
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            command, env=env, stdout=stdout, stderr=stderr, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if call(base, "/health")[0] == 200:
                return proc, base
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    pytest.fail(f"kb cluster did not answer: {err.read_text()[-3000:]}")


def test_kb_cluster_writes_nothing_on_stdout(tmp_path: Path) -> None:
    """Its banners and logs go to stderr (one banner line went to stdout, the other not)."""
    proc, base = two_workers(tmp_path)
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    port = base.rsplit(":", 1)[1]
    try:
        assert call(base, "/health")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert out.read_text() == ""
    assert f"on http://127.0.0.1:{port}, 2 workers" in err.read_text()
    # nor gunicorn's control socket, one path in HOME for all of the user's gunicorns
    assert "Control socket" not in err.read_text()


def test_a_chroma_port_something_listens_on_is_refused(tmp_path: Path) -> None:
    """Another server on --chroma-port answered the heartbeat: kb cluster went on against
    it (its data, not --path's) while the Chroma it started had exited."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "kb", "cluster", "--path", str(tmp_path / "chroma")]
        done = subprocess.run(
            [*command, "--chroma-port", str(port)], capture_output=True, text=True, timeout=120
        )
    assert done.returncode == 1
    assert (
        done.stderr.strip() == f"Error: cannot start Chroma on 127.0.0.1:{port}: the port is taken"
    )


def test_a_kb_port_in_use_is_one_line_before_chroma_starts(tmp_path: Path) -> None:
    """kb cluster started its Chroma server and announced the workers' address; gunicorn
    then tried the busy port five times a second apart, wrote ten lines of its log and
    exited. Now the port is taken first, as kb serve takes its own."""
    port, chroma_port = free_ports(2)
    env = {**os.environ, "KB_PORT": str(port), "KB_CHROMA_PATH": str(tmp_path / "local")}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        command = [sys.executable, "-m", "kb", "cluster", "--path", str(tmp_path / "chroma")]
        done = subprocess.run(
            [*command, "--chroma-port", str(chroma_port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == (
        f"Error: cannot listen on 127.0.0.1:{port} (KB_HOST, KB_PORT): Address already in use "
        "(another process is listening on it)"
    )
    assert done.stdout == ""
    assert not (tmp_path / "chroma").exists()  # no Chroma server was started


def test_a_worker_that_exits_leaves_the_others_and_its_successor_serving(
    cluster: str, tmp_path: Path
) -> None:
    """A worker's exit unwound its copy of the master's stack: the `finally` that removes the
    workers' shared metrics folder ran in the worker, and every request then answered 500
    (review helper 68: a reload, a SIGTERM to one worker, a worker timeout)."""
    log = tmp_path / "cluster.log"
    for i in range(6):
        assert call(cluster, "/query", {"query": f"question {i}"})[0] == 200
    (worker, *_) = answering_workers(log, "/query")
    os.kill(worker, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker)
    time.sleep(3)  # gunicorn starts its successor meanwhile
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(lambda i: call(cluster, "/query", {"query": f"q{i}"})[0], range(24))
        )
    assert answers == [200] * 24
    with urllib.request.urlopen(f"{cluster}/metrics", timeout=30) as response:
        assert response.status == 200
    assert call(cluster, "/health")[0] == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "cluster", [{"env": {"KB_THREADS": "2", "KB_IDLE_TIMEOUT": "2"}}], indirect=True
)
def test_clients_that_stall_mid_request_do_not_hold_the_workers(
    cluster: str, tmp_path: Path
) -> None:
    """gthread read a request blocking with no timeout: clients that sent part of a request
    and went quiet held every worker thread for good, and nothing was answered (review helper
    68: 32 such connections stopped a default `kb serve --workers 2`). They are closed after
    KB_IDLE_TIMEOUT seconds of silence now, a stalled body with kb's 408."""
    host, port = cluster.removeprefix("http://").split(":")
    stalled = []
    for i in range(12):  # twice the cluster's six threads
        sock = socket.create_connection((host, int(port)), timeout=60)
        stalled.append(sock)
        if i % 2:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")  # a head, cut
        else:
            head = b"POST /add HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            sock.sendall(head + b'Content-Length: 100\r\n\r\n{"id": ')  # a body, cut
    try:
        time.sleep(1)
        assert call(cluster, "/health")[0] == 200  # urllib waits 60 s: it hung for good
        for i, sock in enumerate(stalled):
            answer = b"".join(iter(lambda sock=sock: sock.recv(65536), b""))  # then closed
            if i % 2:
                continue
            status, _, rest = answer.partition(b"\r\n")
            assert status.startswith(b"HTTP/1.1 408 "), answer
            error = json.loads(rest.partition(b"\r\n\r\n")[2])["error"]
            assert error["code"] == "request_timeout"
            assert error["message"] == (
                "the request body stopped arriving: no more of it arrived for 2 s (KB_IDLE_TIMEOUT)"
            )
    finally:
        for sock in stalled:
            sock.close()
    assert call(cluster, "/health")[0] == 200
    log = (tmp_path / "cluster.log").read_text()
    assert "closed a connection silent for 2 s mid-request, sending or reading" in log
    assert "Traceback" not in log  # gunicorn logged each as an error, with 20 lines


def test_kb_cluster_stops_when_its_chroma_server_dies(tmp_path: Path) -> None:
    """It ran on with every data request a 503 (review helper 68): a supervisor restarting
    kb on failure never learnt of it."""
    proc, base = two_workers(tmp_path)
    err = tmp_path / "stderr"
    try:
        deadline = time.monotonic() + 120
        while len(answering_workers(err, "/health")) < 2 and time.monotonic() < deadline:
            call(base, "/health")  # both workers up: one booting as Chroma dies fails its boot
        os.kill(chroma_of(proc), signal.SIGKILL)
        assert proc.wait(timeout=90) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = err.read_text()
    assert f"Error: the Chroma server exited, so kb cluster stopped: see {tmp_path}" in said
    assert "Traceback" not in said


@pytest.mark.parametrize("cluster", [{"env": {"KB_LOG_LEVEL": "ERROR"}}], indirect=True)
def test_gunicorns_own_lines_follow_kb_log_level(cluster: str, tmp_path: Path) -> None:
    """KB_LOG_LEVEL=ERROR still let gunicorn's INFO lines through (review helper 77)."""
    assert call(cluster, "/health")[0] == 200
    log = (tmp_path / "cluster.log").read_text()
    assert "[INFO]" not in log
    assert "Booting worker" not in log


def stop(proc: subprocess.Popen) -> int:
    """kb cluster's exit code, once stopped by SIGTERM (killed, with its group, past 60 s)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait()


def chroma_of(proc: subprocess.Popen) -> int:
    """The pid of kb cluster's Chroma server."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    (chroma,) = [
        int(pid)
        for pid in children
        if b"chroma" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1]
    ]
    return chroma


def test_kb_cluster_holds_its_folder_while_it_runs(tmp_path: Path) -> None:
    """It took no lock (review helper 91): a second kb cluster, or kb serve, ran a second
    Chroma on the same chroma.sqlite3, and `make reset-db FORCE=1` emptied the folder under
    the running server. Stopped, the folder is refused as an embedded store."""
    proc, base = two_workers(tmp_path)
    folder = tmp_path / "chroma"
    env = {**os.environ, "KB_CHROMA_PATH": str(folder)}
    try:
        port, chroma_port = free_ports(2)
        command = [sys.executable, "-m", "kb", "cluster", "--path", str(folder)]
        second = subprocess.Popen(
            [*command, "--chroma-port", str(chroma_port)],
            env={**env, "KB_PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            said = second.communicate(timeout=120)[1]
        except subprocess.TimeoutExpired:  # it runs: a second Chroma on the folder
            os.killpg(second.pid, signal.SIGKILL)
            second.communicate()
            pytest.fail("a second kb cluster started on the folder")
        assert (second.returncode, said) == (
            1,
            f"Error: {folder} (--path) is open in pid {proc.pid} (kb serve, kb load or another "
            "kb cluster): stop that process first\n",
        )
        if shutil.which("make"):
            root = Path(__file__).resolve().parent.parent
            reset = subprocess.run(
                ["make", "-s", "-C", str(root), "reset-db", "FORCE=1"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert reset.returncode != 0
            assert f"refusing: a kb process has '{folder}' open" in reset.stdout
        assert (folder / "chroma.sqlite3").exists()
        assert call(base, "/add", {"id": "tarn", "text": "A tarn is a mountain lake."})[0] == 201
    finally:
        assert stop(proc) == 0
    opened = subprocess.run(
        [sys.executable, "-m", "kb", "export", "-o", os.devnull],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert opened.returncode == 1
    assert f"{folder} (KB_CHROMA_PATH) holds the data of kb cluster's Chroma server" in (
        opened.stderr
    )


def test_a_signal_to_kb_clusters_group_lets_requests_under_way_finish(tmp_path: Path) -> None:
    """Its Chroma server ran in kb's process group: a terminal's Ctrl-C or systemd's stop
    (SIGTERM to the group) killed it at once, a request under way failed 503 and kb exited 1
    saying the Chroma server had exited (review helper 91). It is in a session of its own
    now; kb stops it once the workers have drained."""
    proc, base = two_workers(tmp_path)
    body = json.dumps({"id": "cirque", "text": "A cirque is a bowl a glacier carved."}).encode()
    host, port = base.removeprefix("http://").split(":")
    try:
        chroma = chroma_of(proc)
        assert os.getpgid(chroma) != os.getpgid(proc.pid)
        with socket.create_connection((host, int(port)), timeout=60) as sock:
            head = f"POST /add HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n"
            sock.sendall(f"{head}Content-Type: application/json\r\n\r\n".encode() + body[:10])
            time.sleep(1)  # a worker is reading the body
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(2)  # as the group's other processes take it
            sock.sendall(body[10:])
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        assert answer.startswith(b"HTTP/1.1 201 "), answer
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = (tmp_path / "stderr").read_text().splitlines()
    assert [line for line in said if line.startswith("Error")] == []
    assert not _alive(chroma)  # stopped by kb (and reaped)


def test_kb_clusters_chroma_server_does_not_outlive_a_killed_kb(tmp_path: Path) -> None:
    """In a session of its own, it would run on after a SIGKILL to kb, holding its port and
    folder: it has SIGTERM from the kernel when kb dies (Linux's parent-death signal)."""
    proc, _ = two_workers(tmp_path)
    chroma = 0
    try:
        chroma = chroma_of(proc)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 60
        while _running(chroma) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(chroma)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its workers, if any are left
        if chroma and _running(chroma):
            os.kill(chroma, signal.SIGKILL)


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped (kb's exited: init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
