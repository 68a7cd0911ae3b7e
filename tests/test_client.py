"""kb.client.KBClient against a real `kb serve` over loopback."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kb.client import SLOWEST_BYTES_PER_S, KBClient, KBClientError
from kb.schemas import DocumentIn

IDS = ["a", "/a", "a//b", "a/b", "a/", "//x", "a b?c#d%2F"]


def test_ids_with_slashes_and_reserved_characters_round_trip(live_server: str) -> None:
    """get() quoted ids leaving "/" as is, and the service merged "//": get("/a") answered
    the document "a"."""
    client = KBClient(live_server)
    client.add([DocumentIn(id=doc_id, text=f"The note called {doc_id}") for doc_id in IDS])
    for doc_id in IDS:
        got = client.get(doc_id)
        assert (got.id, got.text) == (doc_id, f"The note called {doc_id}")
    client.delete(["/a"])
    assert client.get("a").id == "a"
    with pytest.raises(KBClientError) as missing:
        client.get("/a")
    assert missing.value.status == 404


def test_query_many_answers_each_query_in_order(live_server: str) -> None:
    client = KBClient(live_server)
    client.add(
        [
            DocumentIn(id="bread", text="Knead the dough and let the sourdough rise overnight"),
            DocumentIn(id="orbit", text="The satellite's orbit decays in the upper atmosphere"),
        ]
    )
    results = client.query_many(["baking bread at home", "spacecraft in orbit"], top_k=1)
    assert [result.matches[0].id for result in results] == ["bread", "orbit"]
    assert all(len(result.matches) == 1 for result in results)


def test_add_takes_the_200_of_an_add_that_created_nothing(live_server: str) -> None:
    """/add answers 201 only when it created a document, else 200 (review helper 82): both
    are an AddResponse to the client (and to `kb load --url`, which adds through it)."""
    client = KBClient(live_server)
    docs = [DocumentIn(id="note", text="A note kept once")]
    assert client.add(docs).added == 1
    again = client.add(docs, on_conflict="skip")
    assert (again.added, again.skipped) == (0, 1)
    changed = client.add([DocumentIn(id="note", text="A note, changed")], on_conflict="upsert")
    assert (changed.added, changed.updated) == (0, 1)


def test_list_documents_pages_and_filters(live_server: str) -> None:
    client = KBClient(live_server)
    client.add([DocumentIn(id=f"n{i}", text=f"Note {i}", metadata={"i": i}) for i in range(5)])
    first = client.list_documents(limit=2)
    assert (first.total, len(first.documents)) == (5, 2)
    rest = client.list_documents(limit=10, offset=2)
    assert {d.id for d in first.documents} | {d.id for d in rest.documents} == {
        f"n{i}" for i in range(5)
    }
    later = client.list_documents(where={"i": {"$gte": 3}})
    assert (later.total, sorted(d.id for d in later.documents)) == (2, ["n3", "n4"])


def test_a_service_that_stalls_after_its_headers_is_unreachable_not_a_traceback() -> None:
    """The body was read outside the client's error mapping: a read timeout after the
    headers escaped as a bare TimeoutError (`kb load --url` asking GET /info crashed)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]

        def stall() -> None:
            conn, _ = server.accept()
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
            conn.sendall(b"Content-Length: 100\r\n\r\n{")
            time.sleep(2)
            conn.close()

        thread = threading.Thread(target=stall)
        thread.start()
        with pytest.raises(KBClientError) as raised:
            KBClient(f"http://127.0.0.1:{port}", timeout=0.5).info()
        thread.join()
    assert (raised.value.status, raised.value.code) == (0, "unreachable")


def hang_up_server(server: socket.socket, stop: threading.Event) -> None:
    """Reads each request and closes the connection without an answer (a service killed
    while it held the request)."""
    server.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = server.accept()
        except TimeoutError:
            continue
        with conn:
            conn.recv(1 << 20)


def test_whether_an_unanswered_request_may_have_landed() -> None:
    """A request sent and left unanswered may have been carried out; a refused connection
    took nothing (kb load --url says which)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        stop = threading.Event()
        thread = threading.Thread(target=hang_up_server, args=(server, stop))
        thread.start()
        try:
            with pytest.raises(KBClientError) as unanswered:
                KBClient(f"http://127.0.0.1:{port}", timeout=5).stats()
        finally:
            stop.set()
            thread.join()
    with pytest.raises(KBClientError) as refused:
        KBClient(f"http://127.0.0.1:{port}", timeout=5).stats()  # closed: nothing listens
    assert (unanswered.value.code, unanswered.value.may_have_landed) == ("unreachable", True)
    assert (refused.value.code, refused.value.may_have_landed) == ("unreachable", False)


KEY = "s3cret-key-0123456789abcdef"


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server on a free loopback port, in a thread: its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def answering(
    status: int, kind: str, body: bytes, seen: list[tuple[str, str, str]] | None = None
) -> type[BaseHTTPRequestHandler]:
    """A handler answering every request with `status`, `kind` and `body`; into `seen`, what
    reached it (method, path, Authorization)."""

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if seen is not None:
                seen.append((self.command, self.path, self.headers.get("Authorization", "")))
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            self.do_GET()

        def log_message(self, *args: object) -> None:
            pass

    return Answer


@contextmanager
def redirecting(status: int = 302) -> Iterator[tuple[str, str, list[tuple[str, str, str]]]]:
    """A server answering every request with `status` to the same path on a second one, which
    records what reaches it (method, path, Authorization): (from, to, what the second got)."""
    seen: list[tuple[str, str, str]] = []
    with serving(answering(200, "application/json", b'{"status": "ok"}', seen)) as target:

        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                self.send_response(status)
                self.send_header("Location", target + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self.do_GET()

            def log_message(self, *args: object) -> None:
                pass

        with serving(Redirect) as origin:
            yield origin, target, seen


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_an_error_and_the_key_goes_nowhere_else(status: int) -> None:
    """urllib followed redirects and copied every header, the key too, to wherever one
    pointed (another host, https to http), and sent a POST /add on as a GET without its body."""
    with redirecting(status) as (origin, target, seen):
        client = KBClient(origin, api_key=KEY, timeout=5)
        calls = [client.info, client.backup, lambda: client.add([DocumentIn(text="x")])]
        errors = []
        for call in calls:
            with pytest.raises(KBClientError) as raised:
                call()
            errors.append(raised.value)
    assert seen == []  # not a request reached the target, so neither did the key
    for error, path in zip(errors, ["/info", "/backup", "/add"], strict=True):
        assert (error.status, error.code) == (status, "redirect")
        assert error.message == (
            f"the service answered a redirect to {target}{path}; use --url {target}"
        )
        assert KEY not in str(error)


AROUND = "has whitespace or a line break around it (a key file with CRLF endings?)"
NOT_ASCII = "holds characters other than printable ASCII without spaces"


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        *((key, AROUND) for key in (KEY + "\r", KEY + "\r\n", "\n" + KEY, f" {KEY} ", KEY + "\t")),
        *((key, NOT_ASCII) for key in (KEY + "é", "ключ" + KEY, KEY[:8] + "\x00" + KEY)),
        *((key, NOT_ASCII) for key in (KEY + "\u2028x", KEY[:8] + " " + KEY)),
    ],
)
def test_an_unusable_key_is_refused_without_showing_it(key: str, problem: str) -> None:
    """A key file with Windows line endings: the \\r reached the header and urllib's
    ValueError printed the key in full in a traceback. A character outside Latin-1 ended in a
    raw UnicodeEncodeError traceback; one in it, or a control character, went out as a
    header the service could not match."""
    with pytest.raises(KBClientError) as raised:
        KBClient("http://127.0.0.1:9", api_key=key)
    assert raised.value.code == "invalid_api_key"
    assert raised.value.message == f"the API key (--api-key / KB_API_KEY) {problem}"
    assert KEY[8:] not in str(raised.value)


@pytest.mark.parametrize("key", [KEY + "\r", KEY + "€"])
def test_a_header_urllib_cannot_send_is_an_error_without_the_key(key: str) -> None:
    """The backstop behind the check above: urllib's ValueError (or UnicodeEncodeError) while
    it sends, its text holding the key, becomes an error of the client's, not chained."""
    client = KBClient("http://127.0.0.1:9", api_key=KEY)
    client.api_key = key  # past the check
    with pytest.raises(KBClientError) as raised:
        client.stats()
    error = raised.value
    assert (error.status, error.code, error.may_have_landed) == (0, "unsendable", False)
    assert "--api-key / KB_API_KEY" in error.message
    assert KEY not in error.message
    assert error.__cause__ is None  # nor shown as the context: its text held the key
    assert error.__suppress_context__


@pytest.mark.parametrize(
    "url",
    ["127.0.0.1:8000", "localhost:8000", "ftp://host/", "http://", "http://h:x", "http://[::1"],
)
def test_a_url_that_is_not_http_is_refused_up_front(url: str) -> None:
    with pytest.raises(KBClientError) as raised:
        KBClient(url)
    assert raised.value.code == "invalid_url"


@pytest.mark.parametrize(
    "url", ["http://user:pa55word@127.0.0.1:8000", "http://127.0.0.1:8000/?x=1", "http://h/#top"]
)
def test_a_url_with_a_password_query_or_fragment_is_refused_without_the_password(url: str) -> None:
    """The route went after the query (`?x=1/add`: "method is not allowed"), and a user and
    password were sent to the name resolver and printed (review helper 65)."""
    with pytest.raises(KBClientError) as raised:
        KBClient(url)
    assert raised.value.code == "invalid_url"
    assert "pa55word" not in raised.value.message


def test_a_url_holding_more_than_the_base_says_so(live_server: str) -> None:
    """`--url http://host:port/kb/` got kb's own 404, which named no URL and no option."""
    with pytest.raises(KBClientError) as raised:
        KBClient(live_server + "/kb").stats()
    assert raised.value.status == 404
    assert raised.value.message.startswith(f"{live_server}/kb/stats: The requested URL")
    assert "--url must be the kb service's base URL" in raised.value.message
    with pytest.raises(KBClientError) as unknown:
        KBClient(live_server).delete(["no-such-id"])
    assert "--url" not in unknown.value.message  # an unknown id is no route's 404


def test_a_request_waits_longer_the_larger_its_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """A busy service took 129 s for a batch of 1,024 texts of 3 KB, past a fixed 120 s:
    the load said the service went away (review helper 65)."""
    waited: list[float] = []

    def opened(request: object, timeout: float) -> None:
        waited.append(timeout)
        raise OSError("test")

    client = KBClient("http://127.0.0.1:9", timeout=120)
    monkeypatch.setattr(client._opener, "open", opened)
    for docs in ([], [DocumentIn(text="x" * 300_000)]):
        with pytest.raises(KBClientError):
            client.add(docs) if docs else client.stats()
    assert waited[0] == 120
    assert waited[1] > 120 + 300_000 / SLOWEST_BYTES_PER_S - 1


def test_a_tls_handshake_that_fails_sent_nothing() -> None:
    """https:// to a plain-HTTP service (or an untrusted certificate) said the documents
    "may have been written" though no request had been sent (review helper 65)."""
    with serving(answering(200, "application/json", b"{}")) as url:
        secure = url.replace("http://", "https://")
        with pytest.raises(KBClientError) as raised:
            KBClient(secure, timeout=5).stats()
    assert (raised.value.code, raised.value.may_have_landed) == ("unreachable", False)


@pytest.mark.parametrize(
    ("url", "key", "exposed"),
    [
        ("http://kb.example:8000", KEY, "kb.example"),
        ("http://10.1.2.3:8000", KEY, "10.1.2.3"),
        ("http://[fd00::1]:8000", KEY, "fd00::1"),
        ("http://localhost.example", KEY, "localhost.example"),
        ("http://kb.example:8000", None, None),  # no key to expose
        ("https://kb.example", KEY, None),
        ("http://localhost:8000", KEY, None),
        ("http://LOCALHOST:8000", KEY, None),
        ("http://127.0.0.1:8000", KEY, None),
        ("http://127.8.9.10", KEY, None),
        ("http://[::1]:8000/", KEY, None),
    ],
)
def test_which_hosts_get_the_key_unencrypted(url: str, key: str | None, exposed: str | None):
    assert KBClient(url, api_key=key).key_in_the_clear == exposed


PAGE = b"<!DOCTYPE HTML>\n<html><head><title>Hello</title></head><body>" + b"x" * 500 + b"</html>"


@pytest.mark.parametrize("status", [200, 404, 501])
def test_an_answer_that_is_not_kbs_names_the_url_and_route(status: int) -> None:
    """A 200 web page ended in pydantic's ValidationError traceback ("Invalid JSON"); an
    error page was dumped as "HTTP 501: <!DOCTYPE HTML>..." naming no URL."""
    page = answering(status, "text/html; charset=utf-8", PAGE)
    with serving(page) as url, pytest.raises(KBClientError) as caught:
        KBClient(url).add([DocumentIn(text="a note")])
    assert caught.value.message == (
        f"{url}/add answered HTTP {status} (text/html): not a kb service? --url must be the kb "
        "service's base URL, such as http://127.0.0.1:8000"
    )
    assert caught.value.code == "not_kb"


def test_a_plain_text_error_shows_its_first_line_and_json_of_another_shape_is_not_kb() -> None:
    with serving(answering(502, "text/plain", b"Bad Gateway\nupstream down\n")) as url:
        with pytest.raises(KBClientError, match=r"/health answered HTTP 502 \(text/plain\) "):
            KBClient(url).health()
        with pytest.raises(KBClientError, match=r'\("Bad Gateway"\): not a kb service\?'):
            KBClient(url).health()
    other = answering(200, "application/json", b'{"hello": "world"}')
    not_kb = r"/stats answered HTTP 200 \(application/json\)"
    with serving(other) as url, pytest.raises(KBClientError, match=not_kb):
        KBClient(url).stats()


def test_a_backup_answer_that_is_not_gzip_is_not_kbs() -> None:
    not_kb = r"/backup answered HTTP 200 \(text/html\)"
    with (
        serving(answering(200, "text/html", PAGE)) as url,
        pytest.raises(KBClientError, match=not_kb),
    ):
        KBClient(url).backup()


@pytest.mark.parametrize(
    ("status", "said", "shown"),
    [
        (
            401,
            'this route needs an API key: send "Authorization: Bearer <key>"',
            "this route needs an API key (--api-key / KB_API_KEY)",
        ),
        (
            403,
            "this key is read-only; writes need a read-write key",
            "this key is read-only; writes need a read-write key (--api-key / KB_API_KEY)",
        ),
    ],
)
def test_a_key_refused_names_the_option_and_variable_that_give_it(
    status: int, said: str, shown: str
) -> None:
    """It said to send an Authorization header: the command line's way is --api-key."""
    body = json.dumps({"error": {"code": "unauthorized", "message": said, "details": []}})
    refusing = answering(status, "application/json", body.encode())
    with serving(refusing) as url, pytest.raises(KBClientError) as caught:
        KBClient(url).stats()
    assert caught.value.message == shown
    assert caught.value.status == status


@pytest.mark.parametrize(("what", "landed"), [("write", True), ("read", False)])
def test_a_store_timeout_of_a_write_may_have_landed(what: str, landed: bool) -> None:
    """The service's store did not answer a write in time and may still apply it: kb load
    --url counted such a batch as failed, not as one that may have been written (review
    helper 86)."""
    message = f"the Chroma server did not answer a {what} in time"
    body = json.dumps({"error": {"code": "store_timeout", "message": message, "details": []}})
    answer = answering(504, "application/json", body.encode())
    with serving(answer) as url, pytest.raises(KBClientError) as raised:
        KBClient(url, timeout=5).add([DocumentIn(text="Tides follow the moon.")])
    assert (raised.value.status, raised.value.may_have_landed) == (504, landed)
