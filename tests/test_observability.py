"""Request ids, structured access logs and the Prometheus metrics."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import threading
import time

import pytest
from flask.testing import FlaskClient

from kb import logs


def test_every_response_carries_a_request_id(client: FlaskClient) -> None:
    ids = {
        client.get("/health").headers["X-Request-ID"],
        client.post("/query", json={"query": ""}).headers["X-Request-ID"],  # an error too
        client.get("/no-such-route").headers["X-Request-ID"],
    }
    assert len(ids) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)


def test_a_callers_request_id_is_kept_and_a_strange_one_replaced(client: FlaskClient) -> None:
    kept = client.get("/health", headers={"X-Request-ID": "trace-42.a"})
    assert kept.headers["X-Request-ID"] == "trace-42.a"
    odd = client.get("/health", headers={"X-Request-ID": "a b\u00e9" * 3})
    assert re.fullmatch(r"[0-9a-f]{32}", odd.headers["X-Request-ID"])


def test_access_log_lines_are_json_with_the_request_id(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kb.access"):
        response = client.post("/query", json={"query": "bread"}, headers={"X-Request-ID": "r-1"})
    record = next(r for r in caplog.records if r.name == "kb.access")
    line = json.loads(logs.JsonFormatter().format(record))
    assert response.status_code == 200
    assert line["route"] == "/query"
    assert line["status"] == 200
    assert line["method"] == "POST"
    assert line["duration_ms"] >= 0
    assert line["level"] == "info"


def test_the_json_formatter_adds_the_current_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("kb.test.formatter")
    logger.addHandler(handler)
    token = logs.request_id.set("abc")
    try:
        logger.warning("hello %s", "there", extra={"docs": 3})
    finally:
        logs.request_id.reset(token)
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert (line["msg"], line["request_id"], line["docs"]) == ("hello there", "abc", 3)


def test_the_text_formatter_writes_one_line_a_record_whatever_the_message_holds() -> None:
    """A request path with a percent-encoded newline (the access log writes the path) wrote
    a line of the caller's choosing, a forged WARNING, into a text log."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.TextFormatter())
    logger = logging.getLogger("kb.test.text_formatter")
    logger.addHandler(handler)
    try:
        logger.warning("GET %s 404", "/x\n2026-12-06 16:40:00,000 WARNING kb.app: forged\r\x1b[2J")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second, *traceback = stream.getvalue().splitlines()
    assert first.endswith("GET /x\\n2026-12-06 16:40:00,000 WARNING kb.app: forged\\r\\x1b[2J 404")
    assert second.endswith(f"ERROR kb.test.text_formatter [{os.getpid()}]: failed")
    assert traceback[0] == "Traceback (most recent call last):"  # a traceback keeps its lines


def test_a_text_line_carries_the_records_fields() -> None:
    """KB_LOG_FORMAT=text dropped an access line's route, status, duration and pid, which the
    README promises of every request (review helper 77)."""
    record = logging.makeLogRecord(
        {"name": "kb.access", "levelno": logging.INFO, "levelname": "INFO",
         "msg": "GET /info 200", "route": "/info", "status": 200, "duration_ms": 1.5}
    )  # fmt: skip
    line = logs.TextFormatter().format(record)
    assert line.endswith(
        f"INFO kb.access [{os.getpid()}]: GET /info 200 route=/info status=200 duration_ms=1.5"
    )
    # a path cannot plant a field: a message or value holding = or a space is quoted
    forged = logging.makeLogRecord(
        {"name": "kb.access", "levelno": logging.INFO, "levelname": "INFO",
         "msg": "GET /x status=200 404", "path": "/x status=200", "status": 404}
    )  # fmt: skip
    assert (
        logs.TextFormatter()
        .format(forged)
        .endswith(': "GET /x status=200 404" path="/x status=200" status=404')
    )


@pytest.mark.parametrize("formatter", [logs.TextFormatter, logs.JsonFormatter])
def test_no_log_line_breaks_at_a_unicode_line_end_or_holds_a_c1_control(formatter) -> None:
    """U+0085, U+2028 and U+2029 end a line for str.splitlines and many log readers, and
    U+009B is a terminal's CSI: a percent-encoded path wrote them raw into text and JSON
    lines (review helper 62). They are escaped; other text stays as it is."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter())
    logger = logging.getLogger("kb.test.unicode_breaks")
    logger.addHandler(handler)
    path = "/documents/a\x85FAKE LINE\x9b31m\u2028LS\u2029PS é ü 文"
    try:
        logger.warning("GET %s 404", path)
    finally:
        logger.removeHandler(handler)
    (line,) = stream.getvalue().splitlines()
    assert not any(0x80 <= ord(c) < 0xA0 or c in "\u2028\u2029" for c in line)
    assert "é ü 文" in line
    if formatter is logs.JsonFormatter:
        assert json.loads(line)["msg"] == f"GET {path} 404"


def scrape(client: FlaskClient) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.get_data(as_text=True)


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in the metrics")


def test_metrics_count_requests_documents_and_encoder_time(cooking: FlaskClient) -> None:
    cooking.post("/query", json={"query": "pasta"})
    cooking.post("/query", json={"query": ""})
    text = scrape(cooking)
    assert sample(text, "kb_documents") == 4
    assert sample(text, "kb_http_requests_total", route="/add", status="201") == 1
    assert sample(text, "kb_http_requests_total", route="/query", status="200") == 1
    assert sample(text, "kb_http_requests_total", route="/query", status="422") == 1
    assert sample(text, "kb_http_request_duration_seconds_count", route="/query") == 2
    assert sample(text, "kb_encoder_texts_total", kind="documents") == 4
    assert sample(text, "kb_encoder_texts_total", kind="queries") == 1
    assert sample(text, "kb_encoder_duration_seconds_sum", kind="documents") > 0


def test_libraries_info_noise_is_kept_out_of_the_log() -> None:
    """The Chroma client's per-request lines and faiss's loader lines stay out at INFO; their
    warnings, and kb's own INFO lines, still go through."""
    logs.configure("INFO", "json")
    for noisy in ("httpx", "faiss.loader"):
        assert not logging.getLogger(noisy).isEnabledFor(logging.INFO)
        assert logging.getLogger(noisy).isEnabledFor(logging.WARNING)
    assert logging.getLogger("kb.access").isEnabledFor(logging.INFO)


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_thinned_passes_one_record_a_period_saying_how_many_it_stands_for() -> None:
    clock = [100.0]
    thinned = logs.Thinned(60, clock=lambda: clock[0])
    logger, kept = logging.getLogger("kb.test.thinned"), Kept()
    logger.addFilter(thinned)
    logger.addHandler(kept)
    try:
        for depth in range(1, 51):  # one a second: the first period
            logger.warning("Task queue depth is %d", depth)
            clock[0] += 1.0
        clock[0] = 160.0  # 60 s after the first line
        logger.warning("Task queue depth is %d", 7)
        clock[0] += 30.0
        logger.warning("Task queue depth is %d", 8)
        clock[0] = 400.0
        logger.warning("Task queue depth is %d", 9)
    finally:
        logger.removeFilter(thinned)
        logger.removeHandler(kept)
    assert kept.lines == [
        "Task queue depth is 1",
        "Task queue depth is 7 (49 more such line(s) in the last 60 s)",
        "Task queue depth is 9 (1 more such line(s) in the last 240 s)",
    ]


def test_a_call_site_thinned_by_take_is_told_what_to_add_to_its_line() -> None:
    clock = [0.0]
    thinned = logs.Thinned(60, clock=lambda: clock[0])
    assert thinned.take() == ""  # the first line passes as it is
    clock[0] = 10.0
    assert thinned.take() is None
    assert thinned.take() is None
    clock[0] = 75.0
    assert thinned.take() == " (2 more such line(s) in the last 75 s)"
    assert thinned.take() is None


def test_waitress_queue_depth_warnings_are_thinned_once_however_often_logs_are_configured() -> None:
    """Under load waitress warns on every request that waits for a thread."""
    logs.configure("INFO", "json")
    logs.configure("INFO", "json")
    waiting, kept = logging.getLogger("waitress.queue"), Kept()
    assert sum(isinstance(f, logs.Thinned) for f in waiting.filters) == 1
    waiting.addHandler(kept)
    try:
        for depth in range(20):
            waiting.warning("Task queue depth is %d", depth)
    finally:
        waiting.removeHandler(kept)
    assert kept.lines == ["Task queue depth is 0"]


def test_metric_labels_stay_bounded_whatever_the_request_line_says(client: FlaskClient) -> None:
    """Label values are series kept forever: a made-up method or path must not add one each."""
    for i in range(3):
        assert client.open(f"/nope{i}", method=f"X{i:06d}").status_code in (404, 405)
        client.open("/health", method=f"Y{i}")
        client.get(f"/nope{i}")
    client.delete("/health")  # a real method the route does not take: 405, no rule matched
    text = scrape(client)
    methods = set(re.findall(r'kb_http_requests_total\{[^}]*method="([^"]*)"', text))
    routes = set(re.findall(r'kb_http_requests_total\{[^}]*route="([^"]*)"', text))
    assert methods == {"other", "GET", "DELETE"}
    assert routes == {"<unmatched>"}
    assert sample(text, "kb_http_requests_total", method="other", route="<unmatched>") > 0


class Stalled(io.StringIO):
    """A stderr that takes nothing until released (a blocked pipe or log driver)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()

    def write(self, text: str) -> int:
        self.open.wait()
        return super().write(text)


def test_a_stalled_stderr_bounds_the_queued_lines_and_lets_the_process_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The queue of lines grew without end (200 MiB in 8,000 requests) and the exit's flush
    waited for ever, so SIGTERM did not stop kb serve (review helper 77)."""
    stalled = Stalled()
    monkeypatch.setattr(sys, "stderr", stalled)
    monkeypatch.setattr(logs, "QUEUED_LINES", 50)
    monkeypatch.setattr(logs, "STOP_WAIT_S", 0.3)
    try:
        logs.configure("INFO", "json")
        for i in range(500):
            logging.getLogger("kb.test").info("line %d", i)
        listener = logs._Writer.listener
        assert listener is not None
        assert listener.lines.qsize() <= 50
        stalled.open.set()  # stderr takes lines again: the next one says how many were lost
        deadline = time.monotonic() + 30
        while listener.lines.qsize() and time.monotonic() < deadline:
            time.sleep(0.01)
        logging.getLogger("kb.test").info("after")
        logs._Writer.stop()
        written = stalled.getvalue()
        assert re.search(r"\d+ log lines dropped: stderr did not take them", written), written
        assert '"msg": "after"' in written
        stalled = Stalled()  # stalled for good: stopping gives up after STOP_WAIT_S
        monkeypatch.setattr(sys, "stderr", stalled)
        logs.configure("INFO", "json")
        logging.getLogger("kb.test").info("never written")
        started = time.monotonic()
        logs._Writer.stop()
        assert time.monotonic() - started < 5
    finally:
        stalled.open.set()
        monkeypatch.undo()
        logs.configure("INFO", "json")


def test_store_failures_log_a_line_each_and_a_traceback_a_minute(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With the Chroma server away every scrape and probe wrote a 4 kB traceback (review
    helper 77)."""
    from kb import collection
    from kb.logs import Thinned
    from tests.test_openapi import _Down

    store = client.application.extensions["kb"].store
    monkeypatch.setattr(collection, "_TRACEBACKS", Thinned(60.0))
    monkeypatch.setattr(store.records, "_col", _Down())
    with caplog.at_level(logging.ERROR, logger="kb.collection"):
        for _ in range(5):
            assert client.get("/documents").status_code == 503
    failures = [r for r in caplog.records if r.name == "kb.collection"]
    assert len(failures) == 5
    assert all(
        r.getMessage().startswith("store operation failed: RuntimeError: connection refused")
        for r in failures
    )
    assert [r.exc_info is not None for r in failures] == [True, False, False, False, False]
