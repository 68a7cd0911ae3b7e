"""The search page in a real browser: search, filters, no-match, add, delete, keys, narrow."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.ui.conftest import READ_KEY, WRITE_KEY, Server, kb_serve, seed

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page

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
    expect(alert).to_contain_text("id may not end with '#chunk<N>'")
    assert open_server.call("/documents/bad%23chunk1")[0] == 404


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

        # The server has the last word: a 403 turns the page read-only and says why.
        page.evaluate(f"() => sessionStorage.setItem('kb.apiKey', '{READ_KEY}')")
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
