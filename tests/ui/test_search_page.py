"""The search page in a real browser: search, filters, no-match, add, delete, keys, narrow."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from tests.ui.conftest import READ_KEY, WRITE_KEY, Server, kb_serve, seed

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page, Route

pytestmark = pytest.mark.ui

SCORE = re.compile(r"^score 0\.\d{3}$")


def open_page(page: Page, server: Server) -> None:
    page.goto(server.base + "/")
    # app.js sets this once /info and /stats have answered and the filters are filled.
    page.wait_for_selector("body[data-ready=true]", state="attached")


def search_form(page: Page) -> Locator:
    return page.locator("#search-form")


def add_form(page: Page) -> Locator:
    return page.locator("#add-form")


def search(page: Page, text: str) -> None:
    search_form(page).get_by_label("Question or keywords").fill(text)
    search_form(page).get_by_role("button", name="Search").click()


def cards(page: Page) -> Locator:
    return page.locator("#results > li")


def card(page: Page, doc_id: str) -> Locator:
    return cards(page).filter(has=page.locator(".match-id", has_text=re.compile(f"^{doc_id}$")))


def test_search_with_filters_shows_scored_results(
    page: Page, open_server: Server, expect: Any, artifacts: Path
) -> None:
    open_page(page, open_server)
    form = search_form(page)
    expect(page.locator("#min-score-value")).to_have_text("0.40")
    expect(page.locator("#min-score-default")).to_have_text("Default 0.40 (configured)")
    expect(form.get_by_label("Results (top k)")).to_have_value("5")
    category = form.get_by_label("Category")
    expect(category.locator("option")).to_have_text(
        ["Any category", "astronomy (3)", "cooking (2)", "gardening (2)"]
    )
    expect(form.get_by_label("Dated from")).to_have_attribute("min", "2021-03-14")
    expect(form.get_by_label("Dated up to")).to_have_attribute("max", "2025-01-18")

    form.get_by_label("Question or keywords").fill("which telescope shows faint stars?")
    category.select_option("astronomy")
    form.get_by_role("button", name="Search").click()
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")
    for chips in cards(page).locator(".chips").all():
        expect(chips).to_contain_text("category: astronomy")
    first = cards(page).first
    expect(first.locator(".score")).to_have_text(SCORE)
    expect(first.locator(".chip")).to_contain_text(
        ["difficulty: beginner", "tags: telescope, stars"]
    )
    expect(first.locator(".text")).to_contain_text("A refracting telescope gathers starlight")
    assert first.locator(".bar-fill").bounding_box()["width"] > 0  # type: ignore[index]
    page.screenshot(path=artifacts / "search-page.png", full_page=True)

    # Only one astronomy note is dated 2021; Enter in the date field submits the form.
    form.get_by_label("Dated up to").fill("2021-12-31")
    form.get_by_label("Dated up to").press("Enter")
    expect(cards(page)).to_have_count(1)
    expect(cards(page).locator(".match-id")).to_have_text("telescope")
    expect(page.locator("#search-status")).to_contain_text("scored at least 0.40 (configured)")


def test_a_chunked_document_shows_its_matching_passage(
    page: Page, open_server: Server, expect: Any
) -> None:
    status, stored = open_server.call("/documents/compost")
    assert status == 200
    assert stored["chunks"] >= 2, "the compost note must be long enough to be chunked"
    open_page(page, open_server)
    search(page, "red wiggler worms in stacked trays eat kitchen scraps")
    match = card(page, "compost")
    expect(match.locator(".passage-label")).to_be_visible()
    expect(match.locator(".text")).to_contain_text("red wiggler worms")
    expect(match.locator(".text")).not_to_contain_text("A compost heap turns kitchen scraps")


def test_an_unrelated_query_shows_no_confident_match(
    page: Page, open_server: Server, expect: Any, artifacts: Path
) -> None:
    question = "best beaches in Portugal for surfing"
    status, answer = open_server.call("/query", {"query": question})
    assert status == 200
    assert answer["status"] == "no_confident_match"
    open_page(page, open_server)
    search(page, question)
    panel = page.locator("#no-match")
    expect(panel).to_be_visible()
    expect(panel.get_by_role("heading")).to_have_text("No confident match")
    best = f"{answer['best_rejected_score']:.3f}"
    expect(page.locator("#no-match-text")).to_have_text(
        f"The best candidate scored {best}, below the threshold of 0.40 (configured)."
    )
    expect(panel.locator(".bar-mark")).to_have_count(1)
    expect(cards(page)).to_have_count(0)
    panel.get_by_role("button", name="Show the rejected candidates").click()
    expect(page.locator("#rejected > li").first.locator(".score")).to_have_text(f"score {best}")
    expect(page.locator("#rejected .delete-button")).to_have_count(0)
    page.screenshot(path=artifacts / "search-page-no-match.png", full_page=True)


def test_a_long_query_says_where_its_reading_stopped(
    page: Page, open_server: Server, expect: Any
) -> None:
    """The model reads a query's first 254 word pieces: the rest was ignored, and the page
    said nothing of it (review helper 99). The message's last sentence is shown under the
    outcome; a short query shows none."""
    question = " ".join(["How do I keep a compost heap warm?"] * 40)  # as the page sends it
    status, answer = open_server.call("/query", {"query": question})
    assert (status, answer["truncated"]) == (200, True)
    said = answer["message"][answer["message"].index("The model read only") :]
    assert said.endswith("so the rest was ignored: ask a shorter question.")
    open_page(page, open_server)
    search(page, question)
    expect(page.locator("#search-status .unread-note")).to_have_text(said)
    search(page, "which telescope shows faint stars?")
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")
    expect(page.locator("#search-status .unread-note")).to_have_count(0)


def test_a_keyword_search_finding_no_term_says_so(page: Page, tmp_path: Path, expect: Any) -> None:
    """Not "the knowledge base is empty": the server's message, under its own heading."""
    with kb_serve(tmp_path, {"KB_SEARCH_MODE": "keyword"}) as server:
        seed(server)
        status, answer = server.call("/query", {"query": "xyzzy"})
        assert (status, answer["status"]) == (200, "no_keyword_match")
        open_page(page, server)
        search(page, "xyzzy")
        panel = page.locator("#no-match")
        expect(panel.get_by_role("heading")).to_have_text("No keyword match")
        expect(page.locator("#no-match-text")).to_have_text(answer["message"])
        # it advised "search in hybrid or dense mode", which the page has no control for
        expect(page.locator("#no-match-advice")).to_have_text(
            "Use words the documents would contain: this service searches by keywords "
            "(KB_SEARCH_MODE=keyword), not by meaning."
        )


def test_the_threshold_slider_changes_what_counts_as_a_match(
    page: Page, open_server: Server, expect: Any
) -> None:
    open_page(page, open_server)
    slider = search_form(page).get_by_label("Minimum score")
    slider.fill("0.95")
    expect(page.locator("#min-score-value")).to_have_text("0.95")
    search(page, "how do I water tomato plants?")
    expect(page.locator("#no-match-text")).to_contain_text("below the threshold of 0.95 (request)")
    search_form(page).get_by_role("button", name="Reset").click()
    expect(page.locator("#min-score-value")).to_have_text("0.40")
    search_form(page).get_by_role("button", name="Search").click()
    expect(cards(page).first.locator(".match-id")).to_have_text("tomatoes")


def test_add_a_document_then_find_it(page: Page, open_server: Server, expect: Any) -> None:
    open_page(page, open_server)
    expect(page.locator("#key-status")).to_contain_text("This server is open")
    form = add_form(page)
    expect(form).to_be_visible()
    try:
        form.get_by_label("Text").fill(
            "A lunar eclipse happens when the Earth's shadow falls across the full Moon, "
            "which turns a deep coppery red."
        )
        form.get_by_label("Id (optional)").fill("ui-eclipse")
        form.get_by_label("Category").fill("astronomy")
        form.get_by_label("Difficulty").fill("beginner")
        form.get_by_label("Date").fill("2024-04-08")
        form.get_by_label("Tags").fill("moon, eclipse")
        form.get_by_role("button", name="Add document").click()
        expect(page.locator("#add-status")).to_have_text('Added "ui-eclipse".')
        expect(form.get_by_label("Text")).to_have_value("")  # ready for the next one
        # The filters follow the store: /stats is read again after a write.
        expect(search_form(page).get_by_label("Category")).to_contain_text("astronomy (4)")

        search(page, "why does the moon turn red during an eclipse?")
        found = card(page, "ui-eclipse")
        expect(found).to_have_count(1)
        expect(found.locator(".chip")).to_contain_text(
            ["category: astronomy", "date: 2024-04-08", "tags: moon, eclipse"]
        )
    finally:
        open_server.call("/delete", {"ids": ["ui-eclipse"]})


def test_delete_a_document_from_its_result(page: Page, open_server: Server, expect: Any) -> None:
    text = "Glass marbles were once made by hand from rods of coloured glass."
    status, _ = open_server.call("/add", {"id": "ui-marbles", "text": text})
    assert status == 201
    open_page(page, open_server)
    search(page, "how were glass marbles made?")
    doomed = card(page, "ui-marbles")
    delete = doomed.get_by_role("button", name="Delete ui-marbles")

    page.once("dialog", lambda dialog: dialog.dismiss())
    delete.click()
    expect(doomed).to_have_count(1)  # cancelled: still there

    page.once("dialog", lambda dialog: dialog.accept())
    delete.click()
    expect(doomed).to_have_count(0)
    expect(page.locator("#search-status")).to_contain_text('Deleted "ui-marbles".')
    expect(page.locator("#search-status")).to_be_focused()
    assert open_server.call("/documents/ui-marbles")[0] == 404


def test_an_api_error_shows_its_message(page: Page, open_server: Server, expect: Any) -> None:
    open_page(page, open_server)
    form = add_form(page)
    form.get_by_label("Text").fill("An id ending like a chunk's is refused.")
    form.get_by_label("Id (optional)").fill("bad#chunk1")
    form.get_by_role("button", name="Add document").click()
    alert = page.locator("#add-status")
    expect(alert).to_have_attribute("role", "alert")
    # an alert is read out at once: the status's aria-live="polite" had tamed it
    expect(alert).to_have_attribute("aria-live", "assertive")
    expect(alert).to_contain_text("id may not end with '#chunk<N>'")
    assert open_server.call("/documents/bad%23chunk1")[0] == 404
    form.get_by_label("Id (optional)").fill("")
    form.get_by_role("button", name="Add document").click()
    expect(alert).to_contain_text("Added")
    expect(alert).to_have_attribute("role", "status")
    expect(alert).to_have_attribute("aria-live", "polite")
    added = re.search(r'Added "([^"]+)"', alert.inner_text())
    assert added, alert.inner_text()
    assert open_server.call("/delete", {"ids": [added.group(1)]})[0] == 200


def test_the_page_works_from_the_keyboard(page: Page, open_server: Server, expect: Any) -> None:
    open_page(page, open_server)
    query = search_form(page).get_by_label("Question or keywords")
    expect(query).to_be_focused()  # autofocus: type at once
    page.keyboard.type("how do I feed a sourdough starter?")
    page.keyboard.press("Enter")
    expect(cards(page).first.locator(".match-id")).to_have_text("sourdough")

    page.keyboard.press("Tab")
    expect(search_form(page).get_by_role("button", name="Search")).to_be_focused()
    outline = page.evaluate(
        "() => { const s = getComputedStyle(document.activeElement);"
        " return [s.outlineStyle, s.outlineWidth]; }"
    )
    assert outline == ["solid", "3px"], outline

    unlabeled = page.evaluate(
        "() => [...document.querySelectorAll('input, select, textarea')]"
        ".filter((el) => el.type !== 'hidden' && el.labels.length === 0).map((el) => el.id)"
    )
    assert unlabeled == []
    nameless = page.evaluate(
        "() => [...document.querySelectorAll('button')]"
        ".filter((b) => !(b.getAttribute('aria-label') || b.textContent.trim()))"
        ".map((b) => b.outerHTML)"
    )
    assert nameless == []


def test_the_page_fits_a_narrow_screen(
    page: Page, open_server: Server, expect: Any, artifacts: Path
) -> None:
    page.set_viewport_size({"width": 375, "height": 812})
    open_page(page, open_server)
    search(page, "how do I water tomato plants?")
    expect(cards(page).first.locator(".match-id")).to_have_text("tomatoes")
    expect(add_form(page)).to_be_visible()
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow}px at 375px"
    for control in ("#query", "#search-button", "#min-score", "#add-text", "#add-button"):
        box = page.locator(control).bounding_box()
        assert box is not None
        assert box["x"] >= 0
        assert box["x"] + box["width"] <= 375, control
    page.screenshot(path=artifacts / "search-page-375.png", full_page=True)


def test_with_keys_a_read_key_searches_but_cannot_write(
    page: Page, keyed_server: Server, expect: Any
) -> None:
    open_page(page, keyed_server)
    key_status = page.locator("#key-status")
    expect(key_status).to_have_text("This server needs an API key. Enter it to search.")
    expect(page.get_by_label("API key")).to_be_focused()
    expect(page.locator("#add-section")).to_be_hidden()
    search(page, "which telescope shows faint stars?")
    expect(page.locator("#search-status")).to_have_text(
        "This server needs an API key: enter it at the top of the page."
    )

    page.get_by_label("API key").fill("not-the-key-0123456789")
    page.get_by_role("button", name="Use key").click()
    expect(key_status).to_have_text("The API key was not accepted. Check it and try again.")

    page.get_by_label("API key").fill(READ_KEY)
    page.get_by_label("API key").press("Enter")
    expect(key_status).to_contain_text("Read-only key")
    expect(search_form(page).get_by_label("Category")).to_contain_text("astronomy (3)")
    search_form(page).get_by_role("button", name="Search").click()
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")
    expect(page.locator("#add-section")).to_be_hidden()
    expect(cards(page).locator(".delete-button")).not_to_have_count(0)
    expect(page.locator(".delete-button:visible")).to_have_count(0)


def test_a_late_answer_to_a_rejected_key_does_not_undo_the_accepted_one(
    page: Page, keyed_server: Server, expect: Any
) -> None:
    """Found in CI: the stats asked with a rejected key answered 401 after the next key was
    accepted, and the page took that 401 for the new key ("not checked yet")."""
    wrong = "not-the-key-0123456789"
    held: list[Route] = []

    def handle(route: Route) -> None:
        if route.request.headers.get("authorization") == f"Bearer {wrong}":
            held.append(route)
        else:
            route.continue_()

    page.route("**/stats", handle)
    open_page(page, keyed_server)
    key_status = page.locator("#key-status")
    page.get_by_label("API key").fill(wrong)
    page.get_by_role("button", name="Use key").click()
    expect(key_status).to_have_text("The API key was not accepted. Check it and try again.")
    until(page, lambda: bool(held))

    page.get_by_label("API key").fill(READ_KEY)
    page.get_by_label("API key").press("Enter")
    expect(key_status).to_contain_text("Read-only key")
    release(page, held[0])  # its 401 comes now, for a key no longer in the field
    expect(key_status).to_contain_text("Read-only key")
    page.unroute("**/stats")


def test_with_keys_a_write_key_adds_and_is_kept_for_the_session(
    page: Page, keyed_server: Server, expect: Any
) -> None:
    open_page(page, keyed_server)
    page.get_by_label("API key").fill(WRITE_KEY)
    page.get_by_role("button", name="Use key").click()
    key_status = page.locator("#key-status")
    expect(key_status).to_have_text("Read-write key: you can search, add and delete.")
    form = add_form(page)
    try:
        form.get_by_label("Text").fill("Saturn's rings are made of countless chunks of ice.")
        form.get_by_label("Id (optional)").fill("ui-saturn")
        form.get_by_label("Category").fill("astronomy")
        form.get_by_role("button", name="Add document").click()
        expect(page.locator("#add-status")).to_have_text('Added "ui-saturn".')
        search(page, "what are Saturn's rings made of?")
        expect(
            card(page, "ui-saturn").get_by_role("button", name="Delete ui-saturn")
        ).to_be_visible()

        page.reload()  # the key lives in sessionStorage: no need to type it again
        page.wait_for_selector("body[data-ready=true]", state="attached")
        expect(key_status).to_have_text("Read-write key: you can search, add and delete.")
        expect(page.get_by_label("API key")).to_have_value(WRITE_KEY)

        # The key in the field is the one sent, and the server has the last word: a 403
        # turns the page read-only and says why.
        page.get_by_label("API key").fill(READ_KEY)
        form.get_by_label("Text").fill("This write is refused.")
        form.get_by_role("button", name="Add document").click()
        expect(key_status).to_contain_text("Read-only key")
        expect(page.locator("#add-section")).to_be_hidden()

        page.get_by_role("button", name="Forget key").click()
        expect(page.get_by_label("API key")).to_have_value("")
        expect(key_status).to_have_text("This server needs an API key. Enter it to search.")
        assert page.evaluate("() => sessionStorage.getItem('kb.apiKey')") is None
    finally:
        keyed_server.call("/delete", {"ids": ["ui-saturn"]})


def test_without_an_info_route_the_page_assumes_an_open_server(
    page: Page, open_server: Server, expect: Any
) -> None:
    # A kb from before API keys answers GET /info with a 404 in kb's error shape.
    missing = {"error": {"code": "not_found", "message": "Not Found", "details": []}}
    page.route("**/info", lambda route: route.fulfill(status=404, json=missing))
    open_page(page, open_server)
    expect(page.locator("#min-score-default")).to_have_text("Default 0.40 (configured)")
    expect(search_form(page).get_by_label("Results (top k)")).to_have_attribute("max", "100")
    expect(page.locator("#key-status")).to_contain_text("This server is open")
    expect(add_form(page)).to_be_visible()


# ------------------------------------------------------------------ races, checks, odd data


def until(page: Page, ready: Callable[[], bool]) -> None:
    """Wait, letting Playwright deliver events (route handlers run meanwhile), until ready()."""
    for _ in range(400):
        if ready():
            return
        page.wait_for_timeout(25)
    raise AssertionError("timed out waiting")


def hold(page: Page, held: list[Route], wanted: Callable[[dict[str, Any]], bool]) -> None:
    """Keep back the /query requests whose body is wanted() (let through the others) until the
    test calls release()."""

    def handle(route: Route) -> None:
        if wanted(route.request.post_data_json or {}):
            held.append(route)
        else:
            route.continue_()

    page.route("**/query", handle)


def release(page: Page, route: Route) -> None:
    """Let a held request reach kb, then give the page a moment to read its answer."""
    with page.expect_event("requestfinished"):
        route.continue_()
    page.wait_for_timeout(250)


def best_score(server: Server, query: str, min_score: float) -> str:
    status, answer = server.call("/query", {"query": query, "min_score": min_score})
    assert (status, answer["status"]) == (200, "no_confident_match"), answer
    return f"{answer['best_rejected_score']:.3f}"


def test_rejected_candidates_of_an_older_search_are_not_shown(
    page: Page, open_server: Server, expect: Any
) -> None:
    """The rejected list is asked for; before it comes, another search is shown. The late list
    belongs to the older search and must not fill the newer search's panel."""
    held: list[Route] = []
    hold(page, held, lambda body: bool(body.get("explain")))
    open_page(page, open_server)
    search_form(page).get_by_label("Minimum score").fill("0.95")
    search(page, "how do worms eat kitchen scraps")
    show = page.get_by_role("button", name="Show the rejected candidates")
    show.click()
    until(page, lambda: bool(held))

    newer = "telescope starlight lens"
    search(page, newer)
    expect(page.locator("#no-match-text")).to_contain_text(
        best_score(open_server, newer, 0.95) + ", below"
    )
    release(page, held[0])
    expect(page.locator("#rejected > li")).to_have_count(0)
    expect(show).to_be_visible()
    expect(page.locator("#search-status")).to_have_text("No confident match.")

    page.unroute("**/query")
    show.click()  # and the newer search's own list still comes
    expect(page.locator("#rejected > li").first.locator(".score")).to_have_text(
        "score " + best_score(open_server, newer, 0.95)
    )


def test_enter_during_a_running_search_sends_the_newer_one(
    page: Page, open_server: Server, expect: Any
) -> None:
    held: list[Route] = []
    hold(page, held, lambda body: "compost" in body.get("query", ""))
    open_page(page, open_server)
    query = search_form(page).get_by_label("Question or keywords")
    query.fill("how do I build a compost heap?")
    query.press("Enter")
    until(page, lambda: bool(held))
    # Busy, but not blocked: the button stays usable and the state is told another way.
    expect(page.locator("#results-section")).to_have_attribute("aria-busy", "true")
    expect(page.locator("#search-status")).to_have_text("Searching…")
    expect(search_form(page).get_by_role("button", name="Search")).to_be_enabled()

    query.fill("which telescope shows faint stars?")
    query.press("Enter")
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")
    release(page, held[0])  # the older answer arrives last, and is dropped
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")
    expect(page.locator("#results-section")).not_to_have_attribute("aria-busy", "true")
    assert "q=which+telescope" in page.url


def test_the_search_button_keeps_the_focus(page: Page, open_server: Server, expect: Any) -> None:
    open_page(page, open_server)
    search_form(page).get_by_label("Question or keywords").fill("how do I water tomatoes?")
    button = search_form(page).get_by_role("button", name="Search")
    button.focus()
    page.keyboard.press("Enter")
    expect(cards(page).first.locator(".match-id")).to_have_text("tomatoes")
    expect(button).to_be_focused()


def test_number_and_boolean_filter_values_match_as_listed(
    page: Page, open_server: Server, expect: Any
) -> None:
    """/stats lists 2, "2" and true as the text "2" and "true": choosing one finds them all."""
    levels = [("ui-level-int", 2), ("ui-level-text", "2"), ("ui-level-bool", True)]
    text = "A telescope lens for observers at level {}."
    documents = [
        {"id": doc_id, "text": text.format(level), "metadata": {"difficulty": level}}
        for doc_id, level in levels
    ]
    assert open_server.call("/add", {"documents": documents})[0] == 201
    try:
        open_page(page, open_server)
        form = search_form(page)
        difficulty = form.get_by_label("Difficulty")
        expect(difficulty).to_contain_text("2 (2)")
        expect(difficulty).to_contain_text("true (1)")
        form.get_by_label("Minimum score").fill("0")
        form.get_by_label("Question or keywords").fill("telescope lens for observers")
        ids = cards(page).locator(".match-id")

        difficulty.select_option("2")
        form.get_by_role("button", name="Search").click()
        expect(ids).to_have_count(2)
        assert sorted(ids.all_text_contents()) == ["ui-level-int", "ui-level-text"]

        difficulty.select_option("true")
        form.get_by_role("button", name="Search").click()
        expect(ids).to_have_text(["ui-level-bool"])

        difficulty.select_option("beginner")  # text stays a plain filter
        form.get_by_role("button", name="Search").click()
        expect(ids).not_to_have_count(0)
        for chips in cards(page).locator(".chips").all():
            expect(chips).to_contain_text("difficulty: beginner")
    finally:
        open_server.call("/delete", {"ids": [doc_id for doc_id, _ in levels]})


def test_the_key_sent_is_the_one_typed_and_kept_once_accepted(
    page: Page, keyed_server: Server, expect: Any
) -> None:
    open_page(page, keyed_server)
    field = page.get_by_label("API key")
    key_status = page.locator("#key-status")
    stored = "() => sessionStorage.getItem('kb.apiKey')"

    field.fill("not-the-key-0123456789")
    page.get_by_role("button", name="Use key").click()
    expect(key_status).to_have_text("The API key was not accepted. Check it and try again.")
    assert page.evaluate(stored) is None  # a refused key does not come back on reload

    field.fill(READ_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(key_status).to_contain_text("Read-only key")
    assert page.evaluate(stored) == READ_KEY

    field.fill(WRITE_KEY)  # typed, not yet applied: searches still send it
    expect(key_status).to_contain_text("not checked yet")
    search_form(page).get_by_label("Question or keywords").fill("telescope")
    with page.expect_request("**/query") as sent:
        search_form(page).get_by_role("button", name="Search").click()
    assert sent.value.headers["authorization"] == f"Bearer {WRITE_KEY}"
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")

    field.fill("not-the-key-0123456789")
    page.get_by_role("button", name="Use key").click()
    expect(key_status).to_contain_text("not accepted")
    assert page.evaluate(stored) is None  # nor does the accepted one it replaced


def contrast(first: str, second: str) -> float:
    """WCAG contrast ratio of two computed `rgb(r, g, b)` colours."""

    def luminance(color: str) -> float:
        channels = [int(part) / 255 for part in re.findall(r"\d+", color)[:3]]
        linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted([luminance(first), luminance(second)], reverse=True)
    return (light + 0.05) / (dark + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_field_borders_stand_out_from_field_and_page(
    page: Page, open_server: Server, scheme: str
) -> None:
    """WCAG 1.4.11: a field's outline is what shows where it is, so it needs 3:1."""
    page.emulate_media(color_scheme=scheme)
    open_page(page, open_server)
    colors = page.evaluate(
        """() => {
          const page = getComputedStyle(document.body).backgroundColor;
          const fields = '#query, #api-key, #category, #top-k, #date-from, #add-text';
          return [...document.querySelectorAll(fields)].map((field) => {
              const style = getComputedStyle(field);
              return [field.id, style.borderTopColor, style.backgroundColor, page];
            });
        }"""
    )
    assert len(colors) == 6
    for field, border, fill, background in colors:
        for behind in (fill, background):
            ratio = contrast(border, behind)
            assert ratio >= 3, f"{scheme}: #{field} border {border} on {behind}: {ratio:.2f}:1"


def test_hidden_characters_in_ids_and_metadata_cannot_fake_the_page(
    page: Page, open_server: Server, expect: Any
) -> None:
    doc_id = "ui-report\u202efdp.exe"
    document = {
        "id": doc_id,
        "text": "Quarterly zebra migration report for the savanna reserve.",
        "metadata": {"note\u202e": "Admin", "category": "wildlife"},
    }
    assert open_server.call("/add", document)[0] == 201
    try:
        open_page(page, open_server)
        search(page, "quarterly zebra migration report")
        found = cards(page).filter(has_text="zebra migration")
        title = found.locator(".match-id")
        # Not "ui-reportexe.pdf": the override is shown, not obeyed.
        expect(title).to_have_text("ui-report\\u202Efdp.exe")
        expect(title.locator(".hidden-char")).to_have_text("\\u202E")
        # The override in the key stays in the key: the value still follows it.
        chip = found.locator(".chip").filter(has_text="Admin")
        key = chip.locator(".chip-key").bounding_box()
        value = chip.locator(".chip-value").bounding_box()
        assert key is not None
        assert value is not None
        assert value["x"] >= key["x"] + key["width"] - 1, (key, value)

        asked: list[str] = []

        def dismiss(dialog: Any) -> None:
            asked.append(dialog.message)
            dialog.dismiss()

        page.once("dialog", dismiss)
        found.get_by_role("button", name="Delete ui-report\\u202Efdp.exe").click()
        until(page, lambda: bool(asked))
        assert 'Delete the document "ui-report\\u202Efdp.exe"?' in asked[0], asked
    finally:
        open_server.call("/delete", {"ids": [doc_id]})


def test_the_page_is_served_only_with_its_policy(
    page: Page, open_server: Server, browser: Browser
) -> None:
    response = page.goto(open_server.base + "/static/index.html")
    assert response is not None
    assert response.status == 404
    assert response.json()["error"]["code"] == "not_found"
    assert page.request.get(open_server.base + "/static/app.js").status == 200
    response = page.goto(open_server.base + "/")
    assert response is not None
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]

    # Trusted Types: the browser itself refuses an HTML string (in a context of its own, as
    # the refusal is logged as an error, which the page fixture counts as a failure).
    context = browser.new_context()
    try:
        tab = context.new_page()
        tab.goto(open_server.base + "/")
        refused = tab.evaluate(
            """() => {
              try { document.createElement('div').innerHTML = '<b>x</b>'; return 'allowed'; }
              catch (error) { return error.name; }
            }"""
        )
        assert refused == "TypeError"
    finally:
        context.close()


def test_a_failed_check_clears_the_previous_results(
    page: Page, open_server: Server, expect: Any
) -> None:
    open_page(page, open_server)
    search(page, "how do I build a compost heap?")
    expect(cards(page)).not_to_have_count(0)
    search_form(page).get_by_label("Results (top k)").fill("0")
    search(page, "which telescope shows faint stars?")
    status = page.locator("#search-status")
    expect(status).to_have_attribute("role", "alert")
    expect(status).to_contain_text("Results (top k) must be a whole number from 1 to 100.")
    expect(cards(page)).to_have_count(0)
    expect(search_form(page).get_by_label("Results (top k)")).to_be_focused()


def test_a_query_in_the_address_is_checked_like_a_typed_one(
    page: Page, open_server: Server, expect: Any
) -> None:
    page.goto(open_server.base + "/?q=%20%20")
    page.wait_for_selector("body[data-ready=true]", state="attached")
    expect(page.locator("#search-status")).to_have_text(
        "Type a question or keywords to search for."
    )
    expect(search_form(page).get_by_label("Question or keywords")).to_be_focused()

    page.goto(open_server.base + "/?q=which+telescope+shows+faint+stars%3F")
    page.wait_for_selector("body[data-ready=true]", state="attached")
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/html", "<!doctype html><title>Sign in to the Wi-Fi</title>"),
        ("application/json", '{"status": "ok", "matches": "none"}'),
    ],
    ids=["html", "wrong-json"],
)
def test_an_answer_that_is_not_kb_json_says_so(
    page: Page, open_server: Server, expect: Any, content_type: str, body: str
) -> None:
    """A proxy's or captive portal's 200 is not a search result, nor a JavaScript error."""
    page.route(
        "**/query",
        lambda route: route.fulfill(status=200, content_type=content_type, body=body),
    )
    open_page(page, open_server)
    search(page, "which telescope shows faint stars?")
    status = page.locator("#search-status")
    expect(status).to_have_attribute("role", "alert")
    expect(status).to_contain_text("Unexpected answer from the server")
    expect(cards(page)).to_have_count(0)


def test_a_best_score_just_below_the_threshold_is_not_rounded_up_to_it(
    page: Page, open_server: Server, expect: Any
) -> None:
    """0.5649 in three decimals is 0.565: the page said a score of 0.565 was below the
    threshold of 0.565 (review helper 57 found it in the API's message)."""
    status, answer = open_server.call("/query", {"query": "hello", "min_score": 0.99})
    assert (status, answer["status"]) == (200, "no_confident_match"), answer
    answer["best_rejected_score"] = 0.5649
    answer["threshold"] = {"min_score": 0.565, "source": "request"}
    page.route("**/query", lambda route: route.fulfill(status=200, json=answer))
    open_page(page, open_server)
    search(page, "hello")
    expect(page.locator("#no-match-text")).to_have_text(
        "The best candidate scored 0.5649, below the threshold of 0.565 (request)."
    )
    bar = page.locator("#no-match-bar .bar")
    expect(bar).to_have_attribute("aria-label", "best score 0.5649, threshold 0.565")


# ------------------------------------------------------------------ the search in the address


def address(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query, keep_blank_values=True)


def open_address(page: Page, server: Server, query: str) -> None:
    page.goto(f"{server.base}/?{query}")
    page.wait_for_selector("body[data-ready=true]", state="attached")


def test_a_search_is_kept_in_the_address_and_a_reload_runs_it_again(
    page: Page, open_server: Server, expect: Any
) -> None:
    open_page(page, open_server)
    form = search_form(page)
    question = "how do I look after a garden?"
    form.get_by_label("Question or keywords").fill(question)
    form.get_by_label("Category").select_option("gardening")
    form.get_by_label("Dated from").fill("2022-01-01")
    form.get_by_label("Dated up to").fill("2023-12-31")
    form.get_by_label("Minimum score").fill("0")  # moved, to a value that reads as false
    form.get_by_label("Results (top k)").fill("3")
    with page.expect_request("**/query") as first:
        form.get_by_role("button", name="Search").click()
    ids = cards(page).locator(".match-id")
    expect(ids).to_have_count(2)
    shown = ids.all_text_contents()
    assert sorted(shown) == ["compost", "tomatoes"]
    assert address(page) == {
        "q": [question],
        "category": ["gardening"],
        "from": ["2022-01-01"],
        "to": ["2023-12-31"],
        "min_score": ["0"],
        "top_k": ["3"],
    }

    with page.expect_request("**/query") as again:
        page.reload()
    page.wait_for_selector("body[data-ready=true]", state="attached")
    expect(form.get_by_label("Question or keywords")).to_have_value(question)
    expect(form.get_by_label("Category")).to_have_value("gardening")
    expect(form.get_by_label("Dated from")).to_have_value("2022-01-01")
    expect(form.get_by_label("Dated up to")).to_have_value("2023-12-31")
    expect(form.get_by_label("Minimum score")).to_have_value("0")
    expect(page.locator("#min-score-value")).to_have_text("0.00")
    expect(form.get_by_label("Results (top k)")).to_have_value("3")
    expect(ids).to_have_text(shown)
    assert again.value.post_data_json == first.value.post_data_json
    expect(page.locator("#search-status")).to_contain_text("scored at least 0.00 (request)")


def test_the_address_drops_what_was_cleared_and_keeps_other_parameters(
    page: Page, open_server: Server, expect: Any
) -> None:
    open_address(page, open_server, "ref=news%20letter&flag")
    form = search_form(page)
    form.get_by_label("Question or keywords").fill("which telescope shows faint stars?")
    form.get_by_label("Category").select_option("astronomy")
    form.get_by_label("Dated from").fill("2021-01-01")
    form.get_by_label("Minimum score").fill("0.2")
    form.get_by_label("Results (top k)").fill("7")
    form.get_by_role("button", name="Search").click()
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")
    query = "q=which+telescope+shows+faint+stars%3F"
    # The page's own parameters first; the others as they were written, in their order.
    expect(page).to_have_url(
        f"{open_server.base}/?{query}&category=astronomy&from=2021-01-01&min_score=0.2&top_k=7"
        "&ref=news%20letter&flag"
    )

    form.get_by_label("Category").select_option("")
    form.get_by_label("Dated from").fill("")
    form.get_by_role("button", name="Reset").click()
    form.get_by_label("Results (top k)").fill("5")  # the server's default
    form.get_by_role("button", name="Search").click()
    expect(page).to_have_url(f"{open_server.base}/?{query}&ref=news%20letter&flag")
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")


def test_an_address_value_the_dropdown_does_not_list_is_added_and_filters(
    page: Page, open_server: Server, expect: Any
) -> None:
    """/stats lists the 25 most common values: a link may name another, which must still
    work (and shows as text: the value is markup-like on purpose)."""
    rare = '<b>rare</b> & "odd"'
    common = [f"filler-{n:02}" for n in range(25)]
    documents = [
        # A list counts each of its values: 25 values twice each, and the rare one once.
        {
            "id": f"ui-common-{n}",
            "text": f"Zebra herds cross the plain, herd {n}.",
            "metadata": {"category": common},
        }
        for n in range(2)
    ]
    documents.append(
        {
            "id": "ui-rare",
            "text": "Zebra herds cross the river at dawn.",
            "metadata": {"category": rare},
        }
    )
    assert open_server.call("/add", {"documents": documents})[0] == 201
    try:
        status, stats = open_server.call("/stats")
        assert status == 200
        assert rare not in stats["metadata"]["category"]["values"]
        link = urlencode({"q": "zebra herds crossing", "category": rare, "min_score": "0"})
        open_address(page, open_server, link)
        category = search_form(page).get_by_label("Category")
        expect(category).to_have_value(rare)
        expect(category.locator("option:checked")).to_have_text(rare)
        expect(category.locator("b")).to_have_count(0)
        ids = cards(page).locator(".match-id")
        expect(ids).to_have_text(["ui-rare"])  # unfiltered, the other zebras would show

        # Stats read again (Use key does, as an add or a delete would) keep the choice.
        with page.expect_request("**/query"):
            page.get_by_role("button", name="Use key").click()
        expect(category).to_have_value(rare)
        expect(ids).to_have_text(["ui-rare"])
    finally:
        open_server.call("/delete", {"ids": [doc["id"] for doc in documents]})


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (
            {"min_score": "abc", "from": "14/03/2021"},
            'from "14/03/2021" (not a date written YYYY-MM-DD); '
            'min_score "abc" (not a number from 0 to 1)',
        ),
        (
            {"min_score": "1.5", "from": "2021-02-30"},
            'from "2021-02-30" (not a date written YYYY-MM-DD); '
            'min_score "1.5" (not a number from 0 to 1)',
        ),
    ],
    ids=["not-a-number", "out-of-range"],
)
def test_a_bad_threshold_or_date_in_the_address_is_named_and_the_search_runs(
    page: Page, open_server: Server, expect: Any, bad: dict[str, str], named: str
) -> None:
    question = "which telescope shows faint stars?"
    open_address(page, open_server, urlencode({"q": question, "to": "2021-12-31", **bad}))
    status = page.locator("#search-status")
    expect(status.locator(".address-note")).to_have_text(f"Ignored in the page address: {named}.")
    expect(status).to_contain_text("scored at least 0.40 (configured)")
    # The rest applies: only one note is dated up to 2021.
    expect(cards(page).locator(".match-id")).to_have_text(["telescope"])
    form = search_form(page)
    expect(form.get_by_label("Minimum score")).to_have_value("0.4")
    expect(form.get_by_label("Dated from")).to_have_value("")
    expect(page).to_have_url(
        f"{open_server.base}/?{urlencode({'q': question, 'to': '2021-12-31'})}"
    )


def test_a_threshold_finer_than_the_sliders_step_is_sent_as_written(
    page: Page, open_server: Server, expect: Any
) -> None:
    """The slider moves in steps of 0.01: min_score=0.455 in the address was sent as the
    step the browser snapped it to, and the address rewritten with it."""
    question = "which telescope shows faint stars?"
    with page.expect_request("**/query") as sent:
        open_address(page, open_server, urlencode({"q": question, "min_score": "0.455"}))
    assert sent.value.post_data_json["min_score"] == 0.455
    expect(page.locator("#min-score-value")).to_have_text("0.455")
    expect(page.locator("#search-status")).to_contain_text("scored at least 0.455 (request)")
    assert address(page)["min_score"] == ["0.455"]

    form = search_form(page)
    form.get_by_label("Minimum score").fill("0.3")  # moved: its own value from now on
    expect(page.locator("#min-score-value")).to_have_text("0.30")
    with page.expect_request("**/query") as moved:
        form.get_by_role("button", name="Search").click()
    assert moved.value.post_data_json["min_score"] == 0.3
    expect(page).to_have_url(f"{open_server.base}/?{urlencode({'q': question, 'min_score': 0.3})}")


@pytest.mark.parametrize(("top_k", "shown"), [("0", "0"), ("250", "250"), ("abc", "")])
def test_a_bad_top_k_in_the_address_gets_the_checks_error(
    page: Page, open_server: Server, expect: Any, top_k: str, shown: str
) -> None:
    open_address(page, open_server, urlencode({"q": "telescope", "top_k": top_k}))
    status = page.locator("#search-status")
    expect(status).to_have_attribute("role", "alert")
    expect(status).to_have_text("Results (top k) must be a whole number from 1 to 100.")
    field = search_form(page).get_by_label("Results (top k)")
    expect(field).to_have_value(shown)
    expect(field).to_be_focused()
    expect(cards(page)).to_have_count(0)


def test_a_long_text_is_cut_between_characters_not_inside_one(
    page: Page, open_server: Server, expect: Any
) -> None:
    """The preview stops at 1,200 characters; here the 1,200th is an emoji, two UTF-16
    units: it is shown whole, not cut to a lone surrogate."""
    head = "Surrogate boundary check for the preview cut. "
    # One long word is one word piece for the tokenizer: the text stays a single chunk.
    text = head + "x" * (1199 - len(head)) + "\U0001f600 and the text goes on after the cut."
    assert text.index("\U0001f600") == 1199
    assert open_server.call("/add", {"id": "ui-emoji", "text": text})[0] == 201
    try:
        status, stored = open_server.call("/documents/ui-emoji")
        assert (status, stored["chunks"]) == (200, 1)
        open_page(page, open_server)
        search_form(page).get_by_label("Minimum score").fill("0")
        search(page, "surrogate boundary check for the preview cut")
        found = card(page, "ui-emoji")
        expect(found).to_have_count(1)
        preview = found.locator("p.text").first
        lone = r"/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/"
        assert not preview.evaluate(f"(node) => {lone}.test(node.textContent)")
        assert preview.evaluate("(node, want) => node.textContent === want", text[:1200] + "…")
        expect(found.locator("summary")).to_have_text(f"Show all {len(text)} characters")
    finally:
        open_server.call("/delete", {"ids": ["ui-emoji"]})


# ------------------------------------------------------------------ review helper 64's finds


def test_a_key_given_after_a_refused_shared_link_runs_its_search(
    page: Page, keyed_server: Server, expect: Any
) -> None:
    """A link opened before the key was given: the key was accepted, but the search it had
    asked for was not run again, and its "needs an API key" alert stayed."""
    page.goto(keyed_server.base + "/?" + urlencode({"q": "which telescope shows faint stars?"}))
    page.wait_for_selector("body[data-ready=true]", state="attached")
    status = page.locator("#search-status")
    expect(status).to_have_text("This server needs an API key: enter it at the top of the page.")
    page.get_by_label("API key").fill(READ_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(cards(page).first.locator(".match-id")).to_have_text("telescope")
    expect(status).to_contain_text("scored at least")


def test_a_key_no_header_can_carry_is_said_to_be_wrong_not_the_server_unreachable(
    page: Page, keyed_server: Server, expect: Any
) -> None:
    """A zero-width space pasted after the key: fetch refused the header, and the page said
    the server could not be reached and was open, no key needed."""
    open_page(page, keyed_server)
    page.get_by_label("API key").fill(WRITE_KEY + "\u200b")
    page.get_by_role("button", name="Use key").click()
    key_status = page.locator("#key-status")
    expect(key_status).to_contain_text("holds a character an API key cannot")
    expect(page.locator("#filters-note")).not_to_contain_text("Could not reach")
    expect(page.locator("#add-section")).to_be_hidden()
    page.get_by_label("API key").fill(WRITE_KEY)
    page.get_by_role("button", name="Use key").click()
    expect(key_status).to_contain_text("Read-write key")
    expect(page.locator("#filters-note")).to_have_text("")  # the error is over


def test_an_error_loading_the_filters_clears_once_they_load(
    page: Page, open_server: Server, expect: Any
) -> None:
    """/stats failed once at start-up: the filters filled on the next load, and "The store
    is unreachable." stayed shown beside them."""
    failed: list[bool] = []

    def once(route: Route) -> None:
        if failed:
            route.continue_()
            return
        failed.append(True)
        error = {"code": "store_unavailable", "message": "The store is unreachable.", "details": []}
        route.fulfill(status=503, json={"error": error})

    page.route("**/stats", once)
    open_page(page, open_server)
    note = page.locator("#filters-note")
    expect(note).to_have_text("The store is unreachable.")
    page.get_by_role("button", name="Use key").click()
    expect(search_form(page).get_by_label("Category")).to_contain_text("astronomy")
    expect(note).to_have_text("")
    expect(note).not_to_have_class(re.compile("error"))


def test_scores_on_cards_are_not_rounded_across_the_threshold(
    page: Page, open_server: Server, expect: Any
) -> None:
    """A rejected card said "score 0.181" under a threshold of 0.181 (its score 0.1806), and
    a match "score 0.651" over one of 0.6511."""
    question = "which telescope shows faint stars?"
    status, answer = open_server.call("/query", {"query": question, "min_score": -1})
    assert status == 200
    best = {**answer["matches"][0], "score": 0.65113}  # 0.651 in three decimals
    missing = {**answer["matches"][1], "score": 0.65096}  # 0.651 too
    passing = {**answer, "matches": [best], "rejected": 0, "best_rejected_score": None}
    passing["threshold"] = {"min_score": 0.6511, "source": "request"}
    refused = {**answer, "status": "no_confident_match", "matches": [], "rejected": 1}
    refused["threshold"] = {"min_score": 0.651, "source": "request"}
    refused["best_rejected_score"] = missing["score"]

    def fulfill(route: Route) -> None:
        body = route.request.post_data_json or {}
        if body.get("query") == question:
            route.fulfill(status=200, json=passing)
        else:
            route.fulfill(status=200, json={**refused, "near_misses": [missing]})

    page.route("**/query", fulfill)
    open_page(page, open_server)
    search(page, question)
    expect(cards(page).first.locator(".score")).to_have_text("score 0.6511")  # not 0.651
    search(page, "something else")
    page.get_by_role("button", name="Show the rejected candidates").click()
    expect(page.locator("#rejected .score")).to_have_text(["score 0.65096"])  # not 0.651
    bar = page.locator("#rejected .bar")
    expect(bar).to_have_attribute("aria-label", "score 0.65096 of 1, threshold 0.651")


def test_filter_values_and_ids_cannot_be_reordered_or_made_to_look_alike(
    page: Page, tmp_path: Path, expect: Any
) -> None:
    """A listed value of 1e20 was sent as a 64-bit-overflowing integer (a 422); an override
    in a category reordered its option's count; ids differing by a combining grapheme joiner
    looked the same; an override in an id reversed the 409's message around it."""
    with kb_serve(tmp_path) as server:
        documents = [
            {"id": "big", "text": "A very large difficulty.", "metadata": {"difficulty": 1e20}},
            {"id": "spam", "text": "Spam.", "metadata": {"category": "spam\u202e0001"}},
            {"id": "invoice-7", "text": "Invoice seven."},
            {"id": "invoice-7\u034f", "text": "Invoice seven, again."},
            {"id": "rtl\u202egnp.exe", "text": "A file."},
        ]
        assert server.call("/add", {"documents": documents})[0] == 201
        open_page(page, server)
        form = search_form(page)
        texts = form.get_by_label("Category").locator("option").all_text_contents()
        assert "\u2068spam\u202e0001\u2069 (1)" in texts, texts
        form.get_by_label("Difficulty").select_option("1e+20")
        search(page, "large difficulty")
        expect(cards(page).first.locator(".match-id")).to_have_text("big")
        form.get_by_label("Difficulty").select_option("")
        search(page, "invoice seven")
        invoices = page.locator("#results .match-id", has_text="invoice")
        expect(invoices).to_have_count(2)
        assert sorted(invoices.all_text_contents()) == ["invoice-7", "invoice-7\\u034F"]
        add = add_form(page)
        add.get_by_label("Text").fill("A file.")
        add.get_by_label("Id (optional)").fill("rtl\u202egnp.exe")
        add.get_by_role("button", name="Add document").click()
        message = page.locator("#add-status")
        expect(message).to_contain_text("'rtl\\u202Egnp.exe'")
        assert "\u202e" not in (message.text_content() or "")


def test_a_delete_answered_after_a_newer_search_leaves_that_search_shown(
    page: Page, tmp_path: Path, expect: Any
) -> None:
    """The delete's answer replaced the newer search's status with 'Deleted ...' while its
    card of the deleted document stayed, its Delete button live."""
    with kb_serve(tmp_path) as server:
        seed(server)
        held: list[Route] = []
        page.route("**/delete", lambda route: held.append(route))
        page.on("dialog", lambda dialog: dialog.accept())
        open_page(page, server)
        search(page, "which telescope shows faint stars?")
        first = cards(page).first
        expect(first.locator(".match-id")).to_have_text("telescope")
        first.get_by_role("button", name="Delete telescope").click()
        until(page, lambda: bool(held))
        search(page, "faint stars through a telescope")
        status = page.locator("#search-status")
        expect(status).to_contain_text("scored at least")
        expect(cards(page).locator(".match-id", has_text="telescope")).not_to_have_count(0)
        release(page, held[0])
        expect(cards(page).locator(".match-id", has_text="telescope")).to_have_count(0)
        expect(status).to_contain_text("scored at least")
        assert server.call("/documents/telescope")[0] == 404


def test_deleting_a_document_deleted_meanwhile_removes_its_card(
    page: Page, open_server: Server, expect: Any
) -> None:
    """Someone else's delete between the search and the click left the card, its Delete
    button live, beside the server's 404."""
    text = "Pewter spoons were cast in brass moulds and polished with sand."
    assert open_server.call("/add", {"id": "ui-pewter", "text": text})[0] == 201
    open_page(page, open_server)
    search(page, "how were pewter spoons made?")
    doomed = card(page, "ui-pewter")
    expect(doomed).to_have_count(1)
    assert open_server.call("/delete", {"ids": ["ui-pewter"]})[0] == 200
    page.once("dialog", lambda dialog: dialog.accept())
    doomed.get_by_role("button", name="Delete ui-pewter").click()
    expect(doomed).to_have_count(0)
    status = page.locator("#search-status")
    expect(status).to_contain_text('"ui-pewter" was already deleted.')
    expect(status).to_have_attribute("role", "status")


def test_a_search_never_answered_is_given_up_and_said_so(
    page: Page, open_server: Server, expect: Any
) -> None:
    """A search whose answer never came showed "Searching…" until a newer one was sent."""
    held: list[Route] = []
    page.clock.install()
    open_page(page, open_server)
    hold(page, held, lambda body: True)
    search(page, "a question the server never answers")
    until(page, lambda: bool(held))
    status = page.locator("#search-status")
    expect(status).to_have_text("Searching…")
    page.clock.run_for(59_000)
    expect(status).to_have_text("Searching…")
    page.clock.run_for(2_000)
    expect(status).to_contain_text("The server did not answer within 60 seconds.")
    expect(status).to_have_attribute("role", "alert")
    expect(page.locator("#results-section")).not_to_have_attribute("aria-busy", "true")
    page.unroute("**/query")  # the held request went with the page's abort
    search(page, "which telescope shows faint stars?")  # the next search runs as usual
    expect(status).to_contain_text("scored at least")


def test_a_long_metadata_value_is_cut_in_its_chip(
    page: Page, open_server: Server, expect: Any
) -> None:
    """A 5,000-character value filled the card; its chip shows the start, the tooltip all."""
    long = "🧪" + "provenance " * 450
    doc = {"id": "ui-ledger", "text": "A ledger of glass shipments from Murano, 1750.",
           "metadata": {"source": long, "category": "history"}}  # fmt: skip
    assert open_server.call("/add", doc)[0] == 201
    try:
        open_page(page, open_server)
        search(page, "glass shipments ledger from Murano")
        chip = card(page, "ui-ledger").locator(".chip", has_text="source:").locator(".chip-value")
        expect(chip).to_have_count(1)
        shown = chip.inner_text()
        assert shown == long[:120] + "…", shown  # 120 code points, the emoji whole
        assert chip.get_attribute("title") == long
        category = card(page, "ui-ledger").locator(".chip", has_text="category:")
        expect(category.locator(".chip-value")).to_have_text("history")
        assert category.locator(".chip-value").get_attribute("title") is None
    finally:
        open_server.call("/delete", {"ids": ["ui-ledger"]})
