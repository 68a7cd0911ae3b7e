"""A small typed client for the kb REST API (urllib; kb's pydantic models for the answers).

from kb.client import KBClient
kb = KBClient("http://127.0.0.1:8000")
kb.add([DocumentIn(text="The cat sat on the mat")])
result = kb.query("a feline on a rug", filters={"category": "pets"})
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import IO, Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from kb.auth import sendable
from kb.errors import KBError, StoreTimeout
from kb.schemas import (
    AddResponse,
    BatchQueryResult,
    DeleteResponse,
    Document,
    DocumentIn,
    DocumentList,
    Health,
    Info,
    OnDuplicate,
    QueryResult,
    Stats,
)

M = TypeVar("M", bound=BaseModel)
Conflict = Literal["error", "skip", "upsert"]
# An add() body beyond its documents: {"documents": [], "on_conflict": ..., "on_duplicate": ...}
ADD_OVERHEAD = 128
# A request's timeout grows with its body at this rate: a service working through a large
# batch is busy, not gone (64 texts of 3 KB took 8.0 s on a 2-core machine, 24 KB/s, so a
# 1,024-document batch of them outlasted a fixed 120 s and the load said the service went away).
SLOWEST_BYTES_PER_S = 8 * 1024
# what a client told a URL is not a kb service's needs to hear
BASE_URL = "--url must be the kb service's base URL, such as http://127.0.0.1:8000"
# where the CLI's key comes from (kb.config.API_KEY_VARIABLE; importing it costs 50 ms)
KEY_SETTING = "--api-key / KB_API_KEY"


def add_bytes(doc: DocumentIn) -> int:
    """The bytes `doc` adds to an add() request body, encoded as add() encodes it (and the
    ", " before it), so a caller can keep a request under the service's body limit."""
    return len(json.dumps(_payload(doc)).encode("utf-8")) + 2


def _payload(doc: DocumentIn) -> dict[str, Any]:
    """A document as add() sends it (and add_bytes weighs it)."""
    return doc.model_dump(exclude_none=True)


class KBClientError(KBError):
    """An error answered by the service (status, code, message and details as it sent them),
    or status 0 when it could not be reached or nothing could be sent (an unusable URL or
    key: codes "invalid_url", "invalid_api_key")."""

    # whether the request may have reached the service and been carried out (unanswered: the
    # connection broke or timed out after it was sent; a refused connection took nothing)
    may_have_landed = False


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """kb's API never redirects, and urllib's default handler sends every header, the key
    too, on to wherever a redirect points (another host, https to http) and turns a POST
    into a GET without its body: a 3xx stays an HTTPError (_service_error says where to)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class KBClient:
    def __init__(self, url: str, *, timeout: float = 120.0, api_key: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.api_key = api_key
        _check_url(self.url)
        if api_key:
            _check_key(api_key)
        self._opener = urllib.request.build_opener(_RefuseRedirects)

    @property
    def key_in_the_clear(self) -> str | None:
        """The host a key is sent to unencrypted (http to a host other than this machine's
        loopback), or None: with no key, https or loopback."""
        parts = urllib.parse.urlsplit(self.url)
        if not self.api_key or parts.scheme != "http" or _is_loopback(parts.hostname or ""):
            return None
        return parts.hostname

    # ------------------------------------------------------------ documents

    def add(
        self,
        docs: Sequence[DocumentIn],
        on_conflict: Conflict = "error",
        on_duplicate: OnDuplicate = "allow",
    ) -> AddResponse:
        payload = [_payload(doc) for doc in docs]
        body = {"documents": payload, "on_conflict": on_conflict, "on_duplicate": on_duplicate}
        return self._call("POST", "/add", body, AddResponse)

    def get(self, doc_id: str) -> Document:
        # safe="": "/a" sent as /documents//a was read as another path than the id's
        return self._call(
            "GET", f"/documents/{urllib.parse.quote(doc_id, safe='')}", None, Document
        )

    def list_documents(
        self, *, limit: int = 20, offset: int = 0, where: dict[str, Any] | None = None
    ) -> DocumentList:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if where is not None:
            params["where"] = json.dumps(where)
        return self._call("GET", f"/documents?{urllib.parse.urlencode(params)}", None, DocumentList)

    def update(
        self,
        doc_id: str,
        *,
        text: str | None = None,
        metadata: dict[str, Any] | None = None,
        replace_metadata: bool = False,
    ) -> Document:
        body = {
            "id": doc_id,
            "text": text,
            "metadata": metadata,
            "replace_metadata": replace_metadata,
        }
        return self._call(
            "POST", "/update", {k: v for k, v in body.items() if v is not None}, Document
        )

    def delete(
        self, ids: Sequence[str] | None = None, *, where: dict[str, Any] | None = None
    ) -> DeleteResponse:
        body = {"ids": list(ids)} if ids is not None else {"where": where}
        return self._call("POST", "/delete", body, DeleteResponse)

    # ------------------------------------------------------------ search and status

    def query(self, query: str, **options: Any) -> QueryResult:
        return self._call("POST", "/query", {"query": query, **options}, QueryResult)

    def query_many(self, queries: Sequence[str], **options: Any) -> list[QueryResult]:
        body = {"queries": list(queries), **options}
        return self._call("POST", "/query", body, BatchQueryResult).results

    def health(self) -> Health:
        return self._call("GET", "/health", None, Health)

    def stats(self) -> Stats:
        return self._call("GET", "/stats", None, Stats)

    def info(self) -> Info:
        """Defaults, request limits and what this client's key may do."""
        return self._call("GET", "/info", None, Info)

    def backup(self) -> IO[bytes]:
        """The service's consistent backup as a byte stream (close it when read)."""
        response = self._open("GET", "/backup", None, accept="application/gzip")
        kind = response.headers.get_content_type()
        if kind != "application/gzip":  # a server other than kb's, answering 200
            response.close()
            raise _not_kb(self.url, "/backup", response.status, kind)
        return response  # type: ignore[no-any-return]

    # ------------------------------------------------------------ transport

    def _call(self, method: str, path: str, body: dict[str, Any] | None, model: type[M]) -> M:
        with self._open(method, path, body) as response:
            try:
                raw = response.read()
            except OSError as exc:  # a timeout or reset after the headers
                raise _unreachable(self.url, exc) from exc
            except http.client.HTTPException as exc:  # cut short (IncompleteRead)
                raise _garbled(self.url, path, exc) from exc
        try:
            return model.model_validate_json(raw)
        except ValidationError:  # another server answering 200 (a web page, say)
            kind = response.headers.get_content_type()
            raise _not_kb(self.url, path, response.status, kind) from None

    def _open(
        self, method: str, path: str, body: dict[str, Any] | None, accept: str = "application/json"
    ) -> Any:
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Accept", accept)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        timeout = self.timeout + (len(data) / SLOWEST_BYTES_PER_S if data else 0.0)
        try:
            return self._opener.open(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _service_error(exc, self.url, path) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise _unreachable(self.url, exc) from exc
        except http.client.HTTPException as exc:  # not HTTP (BadStatusLine), or cut short
            raise _garbled(self.url, path, exc) from exc
        except ValueError:  # UnicodeError too; its text can hold the key: not chained
            raise KBClientError(
                f"cannot send a request to {self.url}: the URL or the API key ({KEY_SETTING}) "
                "holds characters an HTTP request cannot carry",
                status=0,
                code="unsendable",
            ) from None


def _check_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, a bracket not closed
        usable = False
    if usable and (parts.username is not None or parts.password is not None):
        # not shown: it holds a password; a key goes in the Authorization header
        raise KBClientError(
            f"the service URL holds a user name or password: give the address alone, and the "
            f"key with {KEY_SETTING}",
            status=0,
            code="invalid_url",
        )
    if usable and (parts.query or parts.fragment):  # the route would go after them
        raise KBClientError(
            f"{url!r} holds a query or fragment: give the service's base URL, such as "
            "http://127.0.0.1:8000 (or https://host/prefix behind a proxy)",
            status=0,
            code="invalid_url",
        )
    if not usable:
        raise KBClientError(
            f"{url!r} is not a service URL: give one such as http://127.0.0.1:8000",
            status=0,
            code="invalid_url",
        )


def _check_key(key: str) -> None:
    """A key an Authorization header can carry as it is, or an error that says what is wrong
    without the key: a key file with Windows line endings ended in a traceback printing it."""
    if key != key.strip():
        problem = "has whitespace or a line break around it (a key file with CRLF endings?)"
    elif not sendable(key):
        problem = "holds characters other than printable ASCII without spaces"
    else:
        return
    raise KBClientError(f"the API key ({KEY_SETTING}) {problem}", status=0, code="invalid_api_key")


def _is_loopback(host: str) -> bool:
    """Whether `host` is this machine: localhost or a loopback address (any other DNS name
    may resolve anywhere)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unreachable(url: str, exc: OSError) -> KBClientError:
    reason = getattr(exc, "reason", exc)
    error = KBClientError(f"cannot reach {url}: {reason}", status=0, code="unreachable")
    error.may_have_landed = not _not_sent(reason)
    return error


def _not_sent(reason: object) -> bool:
    """Whether a failure came before the request was sent: a refused connection, a name that
    does not resolve, a TLS handshake that failed or timed out (https to a plain-HTTP service,
    a certificate not trusted): nothing can have been written."""
    if isinstance(reason, ConnectionRefusedError | socket.gaierror | ssl.SSLError):
        return True
    # the ssl module's own timeout: "_ssl.c:NNN: The handshake operation timed out"
    return isinstance(reason, TimeoutError) and "handshake" in str(reason)


def _garbled(url: str, path: str, exc: http.client.HTTPException) -> KBClientError:
    """An answer that is not whole HTTP: another kind of server, or one cut short. The
    request was sent, so it may have been carried out."""
    error = KBClientError(
        f"{url}{path} sent an answer that is not whole HTTP ({type(exc).__name__}): not a kb "
        f"service, or the connection was cut; {BASE_URL}",
        status=0,
        code="bad_answer",
    )
    error.may_have_landed = True
    return error


def _service_error(exc: urllib.error.HTTPError, url: str, path: str) -> KBClientError:
    if 300 <= exc.code < 400:
        exc.close()
        return _redirected(exc, path)
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        message, code = str(error["message"]), str(error["code"])
    except (ValueError, KeyError, TypeError):  # not kb's error shape: a proxy's, a web page
        return _not_kb(url, path, exc.code, exc.headers.get_content_type(), raw)
    if exc.code in (401, 403):  # it said: send "Authorization: Bearer <key>"
        message = f"{message.partition(': send ')[0]} ({KEY_SETTING})"
    elif code in ("not_found", "method_not_allowed") and "requested URL" in message:
        # no such route (not an unknown id): the URL given holds more than the base
        message = f"{url}{path}: {message} {BASE_URL}"
    answered = KBClientError(message, details=error.get("details"), code=code, status=exc.code)
    # the service's store did not answer a write in time, and may still apply it
    answered.may_have_landed = code == StoreTimeout.code and "write" in message
    return answered


def _not_kb(url: str, path: str, status: int, kind: str, raw: bytes = b"") -> KBClientError:
    """An answer that is not kb's (an HTML page, a proxy's error, another service's JSON):
    the URL and route asked, its status and type, and a plain text body's first line; an
    HTML page's body is left out (it was dumped whole, naming no URL)."""
    said = ""
    if raw and "html" not in kind:
        first = raw.decode("utf-8", "replace").strip().splitlines()
        said = f' ("{first[0][:100]}")' if first else ""
    route = path.partition("?")[0]
    return KBClientError(
        f"{url}{route} answered HTTP {status} ({kind}){said}: not a kb service? {BASE_URL}",
        status=status,
        code="not_kb",
    )


def _redirected(exc: urllib.error.HTTPError, path: str) -> KBClientError:
    """A 3xx, not followed: where it points, and the --url that would reach it."""
    location = exc.headers.get("Location")
    if not location:
        message = f"the service answered HTTP {exc.code} (a redirect without a Location)"
    else:
        target = urllib.parse.urljoin(exc.geturl(), location)[:300]
        base = target[: -len(path)] if target.endswith(path) else target
        message = f"the service answered a redirect to {target}; use --url {base.rstrip('/')}"
    return KBClientError(message, status=exc.code, code="redirect")
