"""API keys (read-only, read-write), their errors, and CORS."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from kb.app import close_app, create_app
from kb.auth import KeyRing, Role
from kb.cli import main
from kb.config import Settings
from kb.embeddings import Embedder
from kb.errors import ConfigError
from tests.conftest import changed

WRITE_KEY = "rw-0123456789abcdef"
READ_KEY = "ro-0123456789abcdef"
KEYS = f"write:{WRITE_KEY}, read:{READ_KEY}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def secured(settings: Settings, embedder: Embedder) -> Iterator[Flask]:
    own = changed(settings, api_keys=KEYS, chroma_path=settings.chroma_path.with_name("secured"))
    app = create_app(own, embedder=embedder)
    yield app
    close_app(app)


@pytest.fixture
def api(secured: Flask) -> FlaskClient:
    return secured.test_client()


def test_keyring_parses_roles_and_compares_every_key() -> None:
    ring = KeyRing.parse(KEYS)
    assert ring.enabled
    assert ring.role_of(WRITE_KEY) is Role.WRITE
    assert ring.role_of(READ_KEY) is Role.READ
    assert ring.role_of(WRITE_KEY + "x") is None
    assert ring.role_of("") is None
    assert not KeyRing.parse("").enabled
    assert KeyRing.parse(f"rw:{WRITE_KEY}").role_of(WRITE_KEY) is Role.WRITE


@pytest.mark.parametrize("spec", [",", " ", " , ,"])
def test_keys_set_to_no_entries_are_refused_not_an_open_api(spec: str) -> None:
    with pytest.raises(ConfigError, match="KB_API_KEYS is set but holds no"):
        KeyRing.parse(spec)


def test_kb_serve_refuses_keys_with_no_entries_before_it_starts(tmp_path) -> None:
    env = {"KB_CHROMA_PATH": str(tmp_path / "db"), "KB_API_KEYS": " , "}
    # --workers 2 without a Chroma server is refused too, after the keys: never serves here
    result = CliRunner().invoke(main, ["serve", "--workers", "2"], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: KB_API_KEYS: set but holds no")


def test_kb_cluster_refuses_them_before_it_starts_a_chroma_server(tmp_path) -> None:
    """It skipped the check: each gunicorn worker failed to boot with its own traceback."""
    env = {"KB_API_KEYS": " , "}
    data = tmp_path / "chroma"
    result = CliRunner().invoke(main, ["cluster", "--path", str(data)], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: KB_API_KEYS: set but holds no")
    assert not data.exists()  # no server was started


@pytest.mark.parametrize("spec", [" , ", "write:short", f"read:{READ_KEY},write:{READ_KEY}"])
def test_every_kb_command_refuses_bad_keys_before_it_starts(spec: str, tmp_path) -> None:
    """Keys were checked only where a service starts: `kb export` ran with any of these."""
    store = tmp_path / "db"
    env = {"KB_CHROMA_PATH": str(store), "KB_API_KEYS": spec}
    result = CliRunner().invoke(main, ["export", "-o", str(tmp_path / "all.jsonl")], env=env)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: KB_API_KEYS: "), result.stderr
    assert READ_KEY not in result.stderr
    assert not store.exists()


def test_the_start_up_log_says_whether_keys_are_needed(
    settings: Settings, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kb.app"):
        close_app(create_app(settings, embedder=embedder))
        close_app(create_app(changed(settings, api_keys=KEYS), embedder=embedder))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("API keys")]
    assert said == [
        "API keys: none (KB_API_KEYS unset): every route is open to every caller",
        "API keys: 1 read-write, 1 read-only; every route but /health needs one",
    ]
    assert WRITE_KEY not in caplog.text


@pytest.mark.parametrize(
    "spec",
    [
        "admin:0123456789abcdef0",
        "0123456789abcdef0",
        "read:short",
        "write: spaced-key-0123",
        "read:" + "\u00e9" * 16,  # curl could never send it
        "write:inner space-0123456789",
        "write:tab\tkey-0123456789abc",
    ],
)
def test_bad_key_specs_are_refused_without_echoing_the_key(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        KeyRing.parse(spec)
    secret = spec.partition(":")[2].strip() or spec
    assert secret not in caught.value.message


def test_a_key_of_the_shortest_length_allowed_is_taken() -> None:
    assert KeyRing.parse("read:" + "k" * 16).enabled


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive(api: FlaskClient, scheme: str) -> None:
    """RFC 7235: an auth scheme's name is case-insensitive."""
    assert api.get("/stats", headers={"Authorization": f"{scheme} {READ_KEY}"}).status_code == 200


def test_a_key_listed_twice_is_refused() -> None:
    """As read and as write, it counted as one of each in the start-up log and wrote."""
    with pytest.raises(ConfigError, match="entries 1 and 3 hold the same key") as caught:
        KeyRing.parse(f"read:{WRITE_KEY}, read:{READ_KEY}, write:{WRITE_KEY}")
    assert WRITE_KEY not in caught.value.message


def test_health_needs_no_key_and_tells_where_the_store_is_to_key_holders_only(
    api: FlaskClient, client: FlaskClient
) -> None:
    assert api.get("/health").json["store"]["location"] is None
    assert (
        api.get("/health", headers=bearer("not-a-key-0123456789")).json["store"]["location"] is None
    )
    assert api.get("/health", headers=bearer(READ_KEY)).json["store"]["location"]
    assert client.get("/health").json["store"]["location"]  # no keys: an open service


def every_route(app: Flask) -> list[tuple[str, str]]:
    """(method, path) of each rule of the app, its variables filled in with "x"."""
    out = []
    for rule in app.url_map.iter_rules():
        path = rule.rule.replace("<path:filename>", "app.js")
        path = path.replace("<path:doc_id>", "x").replace("<doc_id>", "x")
        out += [(method, path) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


PUBLIC = {("GET", "/health"), ("GET", "/"), ("GET", "/static/app.js")}


def test_every_other_route_needs_a_key(secured: Flask) -> None:
    api = secured.test_client()
    routes = [route for route in every_route(secured) if route not in PUBLIC]
    assert {("POST", "/update"), ("GET", "/backup"), ("GET", "/metrics")} <= set(routes)
    for method, path in routes:
        for headers in ({}, bearer("not-a-key-0123456789"), {"Authorization": WRITE_KEY}):
            response = api.open(path, method=method, json={}, headers=headers)
            assert response.status_code == 401, (method, path, headers)
            assert response.json["error"]["code"] == "unauthorized"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for method, path in PUBLIC:
        with api.open(path, method=method) as response:  # a file's answer holds it open
            assert response.status_code == 200, path


def test_a_route_without_a_description_is_closed_not_open(
    settings: Settings, embedder: Embedder
) -> None:
    """Authorization read each route's access from its RouteDoc, and let a route without
    one through: the next view added without @documented would have been public."""
    own = changed(settings, api_keys=KEYS, chroma_path=settings.chroma_path.with_name("bare"))
    app = create_app(own, embedder=embedder)
    try:
        app.add_url_rule("/debug/dump", "dump", lambda: "internal data")
        web = app.test_client()
        assert web.get("/debug/dump").status_code == 401
        assert web.get("/debug/dump", headers=bearer(READ_KEY)).status_code == 403
        assert web.get("/debug/dump", headers=bearer(WRITE_KEY)).status_code == 200
        assert web.get("/no/such/route").status_code == 404
    finally:
        close_app(app)


def test_a_read_key_reads_but_does_not_write(api: FlaskClient) -> None:
    added = api.post("/add", json={"id": "b", "text": "Bread rises"}, headers=bearer(WRITE_KEY))
    assert added.status_code == 201
    assert api.post("/query", json={"query": "bread"}, headers=bearer(READ_KEY)).status_code == 200
    assert api.get("/documents/b", headers=bearer(READ_KEY)).status_code == 200
    for method, path, body in [
        ("POST", "/add", {"text": "cake"}),
        ("POST", "/update", {"id": "b", "text": "cake"}),
        ("PATCH", "/documents/b", {"metadata": {"a": 1}}),
        ("POST", "/delete", {"ids": ["b"]}),
        ("DELETE", "/documents/b", None),
    ]:
        response = api.open(path, method=method, json=body, headers=bearer(READ_KEY))
        assert response.status_code == 403, path
        assert response.json["error"]["code"] == "forbidden"
        # asking which methods a route takes writes nothing (review helper 62: a 403)
        options = api.open(path, method="OPTIONS", headers=bearer(READ_KEY))
        assert options.status_code == 200, path
        assert method in options.headers["Allow"]
        assert api.open(path, method="OPTIONS").status_code == 401, path
    assert api.get("/documents/b", headers=bearer(WRITE_KEY)).json["text"] == "Bread rises"


def test_info_tells_the_role_of_the_key(api: FlaskClient, client: FlaskClient) -> None:
    assert api.get("/info", headers=bearer(READ_KEY)).json["role"] == "read"
    info = api.get("/info", headers=bearer(WRITE_KEY)).json
    assert info["auth_required"] is True
    assert info["role"] == "write"
    assert info["threshold"] == {"min_score": 0.4, "source": "configured"}
    assert client.get("/info").json["auth_required"] is False  # no keys: open, and writable
    assert client.get("/info").json["role"] == "write"


def test_the_spec_documents_the_bearer_scheme(api: FlaskClient) -> None:
    spec = api.get("/openapi.json", headers=bearer(READ_KEY)).json
    assert spec["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert "security" not in spec["paths"]["/health"]["get"]
    add = spec["paths"]["/add"]["post"]
    assert add["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(add["responses"])


def test_keys_never_reach_the_log(api: FlaskClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        api.get("/stats", headers=bearer(READ_KEY))
        api.post("/add", json={"text": "x"}, headers=bearer(READ_KEY))
        api.get("/stats", headers=bearer("wrong-key-0123456789"))
    text = caplog.text + repr(api.application.extensions["kb"].settings)
    assert READ_KEY not in text
    assert "wrong-key-0123456789" not in text
    assert WRITE_KEY not in text


def test_cors_is_off_by_default(client: FlaskClient) -> None:
    response = client.get("/health", headers={"Origin": "http://example.test"})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_every_answer_forbids_content_sniffing(client: FlaskClient) -> None:
    """The page and its files said so; the JSON answers (and their errors) did not."""
    for response in (client.get("/health"), client.get("/documents/none"), client.get("/x")):
        assert response.headers["X-Content-Type-Options"] == "nosniff", response.status_code


def test_cors_allows_the_configured_origins(settings: Settings, embedder: Embedder) -> None:
    cors = changed(settings, cors_origins="http://app.test", api_keys=KEYS)
    app = create_app(cors, embedder=embedder)
    try:
        web = app.test_client()
        preflight = web.options(
            "/query",
            headers={
                "Origin": "http://app.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204  # before auth: browsers send no key here
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.test"
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        answer = web.post(
            "/query",
            json={"query": "x"},
            headers={"Origin": "http://app.test", **bearer(READ_KEY)},
        )
        assert answer.headers["Access-Control-Allow-Origin"] == "http://app.test"
        other = web.get("/health", headers={"Origin": "http://evil.test"})
        assert "Access-Control-Allow-Origin" not in other.headers
    finally:
        close_app(app)


def test_allowed_hosts_are_names_as_the_guard_compares_them(
    settings: Settings, embedder: Embedder
) -> None:
    """'kb.example:8000', 'kb.example.' and 'https://kb.example' were accepted at start-up
    and never matched a request's name (review helper 62)."""
    own = changed(settings, allowed_hosts="KB.example., 10.0.0.5, [::1]")
    assert own.hosts() == ["kb.example", "10.0.0.5", "::1"]
    for bad in ["kb.example:8000", "https://kb.example", "kb.example/x", "*.kb.example", "a b"]:
        with pytest.raises(ValueError, match="not a host name"):
            changed(settings, allowed_hosts=bad)
    app = create_app(own, embedder=embedder)
    try:
        web = app.test_client()
        for host in ["kb.example:8000", "KB.example.", "kb.example"]:
            assert web.get("/stats", headers={"Host": host}).status_code == 200, host
    finally:
        close_app(app)


def test_any_origin_still_varies_the_answer_by_origin(
    settings: Settings, embedder: Embedder
) -> None:
    """With '*', an answer to a request without an Origin carries no Access-Control-Allow-
    Origin, and said no `Vary: Origin`: a cache could serve it to a page (review helper 62)."""
    app = create_app(changed(settings, cors_origins="*"), embedder=embedder)
    try:
        web = app.test_client()
        plain, cross = web.get("/health"), web.get("/health", headers={"Origin": "http://a.test"})
        assert "Access-Control-Allow-Origin" not in plain.headers
        assert cross.headers["Access-Control-Allow-Origin"] == "*"
        assert plain.headers["Vary"] == cross.headers["Vary"] == "Origin"
    finally:
        close_app(app)


def test_origins_are_matched_as_browsers_send_them(settings: Settings, embedder: Embedder) -> None:
    """'https://APP.test:443' never matched the Origin a browser sends; 'app.test/' or a
    path was accepted and never matched either, and the API stayed closed without a word."""
    cors = changed(settings, cors_origins="https://APP.test:443, http://other.test:8080")
    assert cors.cors() == ["https://app.test", "http://other.test:8080"]
    for bad in ["https://app.test/", "app.test", "ftp://app.test", "https://app.test:99999"]:
        with pytest.raises(ValueError, match="not an origin"):
            changed(settings, cors_origins=bad)
    app = create_app(cors, embedder=embedder)
    try:
        web = app.test_client()
        allowed = web.get("/health", headers={"Origin": "https://app.test"})
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.test"
        other = web.get("/health", headers={"Origin": "http://evil.test"})
        assert "Access-Control-Allow-Origin" not in other.headers
        assert other.headers["Vary"] == "Origin"  # a cache must not serve it to app.test
    finally:
        close_app(app)


def test_any_origin_without_keys_is_warned_of(
    settings: Settings, embedder: Embedder, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="kb.app"):
        close_app(create_app(changed(settings, cors_origins="*"), embedder=embedder))
    assert "any web page can read and write this service" in caplog.text


@pytest.mark.parametrize("host", ["evil.example:8000", "evil.example", "kb.internal.:8000"])
def test_a_keyless_service_answers_no_other_host_name(client: FlaskClient, host: str) -> None:
    """DNS rebinding: a page on evil.example, its name re-pointed at 127.0.0.1, is
    same-origin with kb: it read the documents, downloaded a backup and deleted."""
    assert client.post("/add", json={"id": "secret", "text": "s"}).status_code == 201
    for method, path, body in [
        ("GET", "/documents", None),
        ("GET", "/backup", None),
        ("POST", "/delete", {"ids": ["secret"]}),
    ]:
        response = client.open(path, method=method, json=body, headers={"Host": host})
        assert response.status_code == 400, path
        assert "KB_ALLOWED_HOSTS" in response.json["error"]["message"]
    assert client.get("/documents/secret").status_code == 200


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1:8000", "localhost", "localhost:8000", "[::1]:8000", "10.1.2.3", "a.localhost"],
)
def test_addresses_and_localhost_are_always_answered(client: FlaskClient, host: str) -> None:
    assert client.get("/stats", headers={"Host": host}).status_code == 200


def test_allowed_hosts_and_keys_open_other_names(settings: Settings, embedder: Embedder) -> None:
    own = changed(settings, allowed_hosts="KB.internal, other.test", host="named.test")
    app = create_app(own, embedder=embedder)
    try:
        web = app.test_client()
        for host in ["kb.internal:8000", "other.test", "named.test:8000"]:
            assert web.get("/stats", headers={"Host": host}).status_code == 200, host
        assert web.get("/stats", headers={"Host": "evil.example"}).status_code == 400
    finally:
        close_app(app)
    own = changed(settings, api_keys=KEYS, chroma_path=settings.chroma_path.with_name("keyed"))
    app = create_app(own, embedder=embedder)
    try:  # with keys the key is the guard: a rebinding page has none
        headers = {"Host": "kb.example.com", **bearer(READ_KEY)}
        assert app.test_client().get("/stats", headers=headers).status_code == 200
    finally:
        close_app(app)
