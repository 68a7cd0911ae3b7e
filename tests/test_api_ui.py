"""GET / serves the search page: labeled controls, its own assets only, nothing external."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
from flask.testing import FlaskClient

from kb.app import close_app, create_app
from kb.config import Settings
from kb.embeddings import Embedder
from tests.conftest import changed

CONTROLS = {
    "api-key",
    "query",
    "category",
    "difficulty",
    "date-from",
    "date-to",
    "min-score",
    "top-k",
    "add-text",
    "add-id",
    "add-category",
    "add-difficulty",
    "add-author",
    "add-date",
    "add-tags",
    "add-upsert",
}
ASSET_TYPES = {
    ".js": {"text/javascript", "application/javascript"},
    ".css": {"text/css"},
}
EXTERNAL = re.compile(r"https?://", re.IGNORECASE)


class PageParser(HTMLParser):
    """The page's form controls, label targets, forms and referenced assets."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: dict[str, dict[str, str | None]] = {}
        self.labels: set[str] = set()
        self.assets: list[str] = []
        self.forms: dict[str, list[dict[str, str | None]]] = {}
        self._form: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "form":
            self._form = attr.get("id") or ""
            self.forms[self._form] = []
        elif tag in {"input", "select", "textarea"} and attr.get("type") != "hidden":
            self.controls[attr.get("id") or f"<unnamed {tag}>"] = {"tag": tag, **attr}
        elif tag == "label" and attr.get("for"):
            self.labels.add(attr["for"] or "")
        elif tag == "script" and attr.get("src"):
            self.assets.append(attr["src"] or "")
        elif tag == "link" and attr.get("rel") == "stylesheet":
            self.assets.append(attr.get("href") or "")
        if tag == "button" and self._form is not None:
            self.forms[self._form].append(attr)

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._form = None


def page(client: FlaskClient) -> PageParser:
    response = client.get("/", buffered=True)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    parser = PageParser()
    parser.feed(response.get_data(as_text=True))
    return parser


def test_page_has_every_control_labeled(client: FlaskClient) -> None:
    parsed = page(client)
    assert set(parsed.controls) >= CONTROLS
    unlabeled = sorted(set(parsed.controls) - parsed.labels)
    assert not unlabeled, f"controls without <label for>: {unlabeled}"
    assert parsed.controls["api-key"]["type"] == "password"
    assert parsed.controls["min-score"]["type"] == "range"
    assert parsed.controls["top-k"]["type"] == "number"
    assert parsed.controls["date-from"]["type"] == parsed.controls["date-to"]["type"] == "date"
    # Enter submits a form only through a submit button (a button's default type).
    for form in ("search-form", "add-form", "key-form"):
        types = [button.get("type", "submit") for button in parsed.forms[form]]
        assert "submit" in types, form


def test_page_is_public_and_locked_to_its_origin(client: FlaskClient) -> None:
    response = client.get("/", buffered=True)
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_assets_are_served_with_their_types_and_nothing_is_external(
    client: FlaskClient,
) -> None:
    home = client.get("/", buffered=True).get_data(as_text=True)
    assert not EXTERNAL.findall(home)
    assets = page(client).assets
    assert {asset.rsplit(".", 1)[-1] for asset in assets} == {"js", "css"}
    for asset in assets:
        url = urljoin("/", asset)
        response = client.get(url, buffered=True)
        assert response.status_code == 200, url
        suffix = "." + url.rsplit(".", 1)[-1]
        assert response.mimetype in ASSET_TYPES[suffix], (url, response.mimetype)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        text = response.get_data(as_text=True)
        assert text.strip(), url
        assert not EXTERNAL.findall(text), f"{url} references an external URL"
        # The stylesheet pulls in nothing else (no @import, no url() to another host).
        assert "@import" not in text, url


def test_script_builds_the_dom_without_html_strings(client: FlaskClient) -> None:
    script = client.get("/static/app.js", buffered=True).get_data(as_text=True)
    for sink in (".innerHTML", ".outerHTML", ".insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_unknown_and_escaping_asset_paths_are_404(client: FlaskClient) -> None:
    for path in ("/static/nope.js", "/static/../api/ui.py", "/static/%2e%2e/app.py"):
        response = client.get(path, buffered=True)
        assert response.status_code == 404, path
        assert response.json["error"]["code"] == "not_found", path


@pytest.fixture
def secured(settings: Settings, embedder: Embedder) -> Iterator[FlaskClient]:
    own = changed(settings, api_keys="write:rw-0123456789abcdef, read:ro-0123456789abcdef")
    app = create_app(own, embedder=embedder)
    yield app.test_client()
    close_app(app)


def test_page_and_assets_need_no_key_but_the_api_does(secured: FlaskClient) -> None:
    for path in ("/", "/static/app.js", "/static/app.css"):
        assert secured.get(path, buffered=True).status_code == 200, path
    # What the page does first: without a key it learns from the 401 that one is needed.
    assert secured.get("/info").status_code == 401
    assert secured.get("/stats").status_code == 401
