"""Browser fixtures: Debian's Chromium under Playwright, and seeded `kb serve` processes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.live import Service, call

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google services, and on a
# closed network the refused connections pile up and slow every page load.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
WRITE_KEY = "ui-write-0123456789abcdef"
READ_KEY = "ui-read-0123456789abcdef"
TIMEOUT_MS = 20_000

# Written for these tests: three categories, three difficulties, dates over five years, and one
# document long enough (> 256 word pieces) to be stored in chunks, so a match shows a passage.
COMPOST = "\n\n".join(
    [
        "A compost heap turns kitchen scraps and garden waste into dark, crumbly humus that "
        "feeds the soil. The process is driven by bacteria and fungi, which need air, water and "
        "a balance of carbon-rich brown material such as dry leaves, straw and cardboard with "
        "nitrogen-rich green material such as vegetable peelings, coffee grounds and grass "
        "clippings. A common rule of thumb is about three parts brown to one part green by "
        "volume.",
        "Build the heap at least a metre across so that it holds the heat the microbes produce. "
        "A well balanced heap warms up within a few days and can reach sixty degrees at its "
        "centre, hot enough to kill most weed seeds. Turn it with a fork every week or two to "
        "let air back in; a heap that smells sour or of ammonia is too wet or has too much "
        "green material, and a heap that stays cold is usually too dry or too small.",
        "Keep the heap as damp as a wrung-out sponge. In dry weather water it when you turn it, "
        "and in wet weather cover it with a lid or an old carpet. Avoid meat, dairy and cooked "
        "food, which attract rats, and diseased plants, which may survive a cool heap. Chopping "
        "material small speeds everything up, because the microbes work on surfaces.",
        "Finished compost is dark, smells of earth and no longer shows the original material. "
        "Depending on the season and how often it is turned this takes from two months to a "
        "year. Sieve out the lumps and put them back into the next heap.",
        "Wormeries are the small-space alternative: red wiggler worms living in stacked trays "
        "eat kitchen scraps and leave behind worm castings, a rich fertiliser, and a liquid "
        "that can be diluted and fed to house plants. Keep the worms out of frost and direct "
        "sun, and feed them little and often.",
    ]
)
SEED_DOCS: list[dict[str, Any]] = [
    {
        "id": "telescope",
        "text": "A refracting telescope gathers starlight with a lens: a larger aperture shows "
        "fainter stars and finer detail on the Moon.",
        "metadata": {
            "category": "astronomy",
            "difficulty": "beginner",
            "date": "2021-03-14",
            "tags": ["telescope", "stars"],
        },
    },
    {
        "id": "planets",
        "text": "Planets look like steady points of light that slowly drift against the "
        "background stars over a few weeks.",
        "metadata": {"category": "astronomy", "difficulty": "intermediate", "date": "2022-11-30"},
    },
    {
        "id": "black-holes",
        "text": "A black hole's event horizon is the boundary past which not even light can "
        "escape its gravity.",
        "metadata": {"category": "astronomy", "difficulty": "advanced", "date": "2024-08-02"},
    },
    {
        "id": "tomatoes",
        "text": "Water tomato plants deeply at the base in the morning, and stake them so the "
        "fruit stays off the soil.",
        "metadata": {
            "category": "gardening",
            "difficulty": "beginner",
            "date": "2022-05-20",
            "tags": ["vegetables"],
        },
    },
    {
        "id": "compost",
        "text": COMPOST,
        "metadata": {"category": "gardening", "difficulty": "intermediate", "date": "2023-09-09"},
    },
    {
        "id": "sourdough",
        "text": "Feed a sourdough starter equal weights of flour and water until it doubles, "
        "then use it to leaven a loaf of bread.",
        "metadata": {"category": "cooking", "difficulty": "intermediate", "date": "2025-01-18"},
    },
    {
        "id": "knife-skills",
        "text": "Hold the knife with a pinch grip and curl the fingers of your other hand into "
        "a claw to slice vegetables safely.",
        "metadata": {"category": "cooking", "difficulty": "beginner", "date": "2023-02-11"},
    },
]


# ------------------------------------------------------------------ kb serve


@dataclass
class Server:
    base: str
    log: Path
    key: str | None = None  # a write key, when the server has keys

    def call(self, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        return call(self.base, path, body, key=self.key)


@contextmanager
def kb_serve(
    root: Path, extra_env: dict[str, str] | None = None, key: str | None = None
) -> Iterator[Server]:
    """A `kb serve` process over its own store under `root`, with extra environment
    (KB_API_KEYS), for any fixture scope."""
    service = Service(
        root / "db",
        root / "serve.log",
        KB_THREADS="4",
        KB_ENCODER_THREADS="1",  # the machine's cores are shared; queries are tiny
        KB_LOG_FORMAT="text",
        **(extra_env or {}),
    )
    try:
        yield Server(service.start().base, service.log, key)
    finally:
        service.stop()


def seed(server: Server) -> None:
    status, body = server.call("/add", {"documents": SEED_DOCS})
    assert status == 201, body


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A seeded server without API keys: everyone may read and write."""
    with kb_serve(tmp_path_factory.mktemp("open")) as server:
        seed(server)
        yield server


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A seeded server with a read-only and a read-write key."""
    keys = {"KB_API_KEYS": f"write:{WRITE_KEY},read:{READ_KEY}"}
    with kb_serve(tmp_path_factory.mktemp("keyed"), keys, key=WRITE_KEY) as server:
        seed(server)
        yield server


# ------------------------------------------------------------------ the browser


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    # A missing browser fails the run: a skipped UI suite would look like a passing one.
    if not CHROMIUM.exists():
        found = shutil.which("chromium")
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}"
            + (f" (found {found})" if found else "")
            + ": run `apt-get install -y chromium` (`make test-ui` does it)",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the playwright package is missing: .venv/bin/pip install playwright==1.65.2",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        # Debian's Chromium, not a downloaded one: `playwright install` cannot work offline.
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        launched.close()


@pytest.fixture
def expect() -> Any:
    """Playwright's retrying assertions (imported here so collection works without it)."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    return expect


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (own sessionStorage); fails on script errors or CSP refusals."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    tab = context.new_page()
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        # Chromium logs every 4xx/5xx fetch; the tests provoke 401s, 404s and 422s on purpose.
        if message.type == "error" and "Failed to load resource" not in message.text:
            problems.append(f"console: {message.text}")

    tab.on("console", on_console)
    tab.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    yield tab
    context.close()
    assert not problems, "the page reported errors:\n" + "\n".join(problems)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
