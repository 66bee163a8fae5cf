"""
The web UI in a real browser: ``twistd twistproxy --web`` as a child
process, headless Chromium (Debian's ``chromium``) driven by Playwright, curl
as the proxy's client and the test origin in the test's reactor.

The browser and curl run in a thread (Playwright's sync API blocks), so the
reactor keeps serving the origin meanwhile.  Screenshots of the main views
are saved under the test's tmp directory (``screenshots/``), as artefacts;
with ``TWISTPROXY_README_SCREENSHOT=docs/_static/web-ui.png`` the README's
screenshot is written too.  Skipped when chromium or the ``playwright``
package is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from tests.e2e.origin import OriginFactory
from tests.e2e.test_twistd import CURL, free_port, output_contains, spawn, twistd_command

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    sync_playwright = None

needs_browser = pytest.mark.skipif(
    CHROMIUM is None or sync_playwright is None or CURL is None,
    reason="needs chromium, curl and the playwright package (pip install -e .[test])",
)

WAIT = 15_000  # milliseconds any one browser step may take


DATA = Path(__file__).parent.parent / "data"

README_SHOT = "TWISTPROXY_README_SCREENSHOT"
"""
Set to a path (``docs/_static/web-ui.png``), the browser test also writes
the README's screenshot there: the flow list with a loaded HAR's HTML page
open, highlighted.
"""


def _curl(proxy: int, url: str, *, include: bool = False) -> subprocess.Popen[bytes]:
    assert CURL is not None
    return subprocess.Popen(
        [CURL, "--silent", "--show-error", "--max-time", "30", "-x",
         f"http://127.0.0.1:{proxy}", "-H", "X-Test: original", *(["-i"] if include else []),
         url],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _drive(ui_url: str, proxy: int, origin: int, shots: Path) -> dict[str, Any]:
    """
    The user's session, in the browser (runs in a thread).

    :returns: What the test checks afterwards.
    """
    assert sync_playwright is not None
    seen: dict[str, Any] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"], timeout=WAIT)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.set_default_timeout(WAIT)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            confirmed: list[str] = []

            def dialog(d: Any) -> None:
                if d.type == "confirm" and d.message.startswith("Replay "):
                    confirmed.append(d.message)
                    d.accept()
                else:
                    errors.append(f"dialog: {d.message}")
                    d.dismiss()

            page.on("dialog", dialog)
            page.goto(ui_url)
            seen["url_after_login"] = page.url
            page.wait_for_selector("body[data-ready=yes]")

            # A flow made by curl appears live.
            first = f"http://127.0.0.1:{origin}/echo?first=1"
            done = _curl(proxy, first)
            done.communicate(timeout=30)
            row = page.locator("#viewport .row", has_text="/echo?first=1")
            row.wait_for()
            page.screenshot(path=str(shots / "list.png"))

            # Filtering: a filter it does not match hides it; one it does shows it.
            page.fill("#filter", "~u nothing-like-this")
            expect(page.locator("#viewport .row")).to_have_count(0)
            page.fill("#filter", "~u first & ~m GET")
            page.wait_for_selector('#list[data-filter="~u first & ~m GET"]')
            row.wait_for()
            seen["filtered_count"] = page.inner_text("#count")
            # An invalid filter says where the problem is.
            page.fill("#filter", "~d (")
            page.wait_for_selector("#filter.invalid")
            seen["filter_error"] = page.inner_text("#filter-error")
            page.fill("#filter", "")
            page.wait_for_selector('#list[data-filter=""]')
            row.wait_for()

            # Opening it with the keyboard: down, then Enter.
            page.click("#count")  # out of the filter box (its keys are its own)
            page.keyboard.press("ArrowDown")
            page.keyboard.press("Enter")
            try:
                page.wait_for_selector("#view h2")
            except Exception:
                raise AssertionError(errors) from None
            seen["view_title"] = page.inner_text("#view h2")
            page.wait_for_selector("#view pre.body-json")
            seen["view_body"] = page.inner_text("#view pre.body-json")
            page.screenshot(path=str(shots / "flow.png"))
            # Export as curl: the command is shown under the buttons.
            page.click("#view button.export-curl")
            page.wait_for_selector('#export-command[data-format="curl"]')
            seen["curl"] = page.inner_text("#export-command")

            # Interception: hold the second request, edit a header, resume.
            page.fill("#intercept", "~q & ~u second")
            page.press("#intercept", "Enter")
            page.wait_for_selector('#intercept[data-active="~q & ~u second"]')
            second = _curl(proxy, f"http://127.0.0.1:{origin}/echo?second=1")
            held = page.locator("#viewport .row.intercepted", has_text="/echo?second=1")
            held.wait_for()
            held.click()
            page.keyboard.press("Enter")
            page.wait_for_selector("#edit-headers")
            page.screenshot(path=str(shots / "held.png"))
            headers = page.input_value("#edit-headers")
            page.fill("#edit-headers", headers.replace("X-Test: original", "X-Test: edited"))
            page.click("#save-resume")
            out, err = second.communicate(timeout=30)
            seen["second"] = (second.returncode, out.decode(), err.decode())
            page.locator("#viewport .row:not(.intercepted)", has_text="/echo?second=1").wait_for()
            page.screenshot(path=str(shots / "resumed.png"))

            # Sorting: a click on the path header sorts by it, a second click the other way.
            path_head = '#head [data-sort="path"]'
            first_path = '#viewport .row[data-index="0"] .c-path'
            page.click(path_head)
            page.wait_for_selector(path_head + '[data-order="asc"]')
            seen["sorted_asc"] = page.inner_text(first_path)
            page.click(path_head)
            page.wait_for_selector(path_head + '[data-order="desc"]')
            seen["sorted_desc"] = page.inner_text(first_path)
            page.click(path_head)  # a third time: arrival order again
            page.wait_for_selector(path_head + '[data-order=""]')

            _load_highlight(page, shots, seen)
            _duplicate_edit_replay(page, seen)
            _edit_held_response(page, proxy, origin, shots, seen)
            _replay_several(page, seen)
            seen["confirmed"] = confirmed
            seen["page_errors"] = errors
        finally:
            browser.close()
    return seen


def _open(page: Any, text: str) -> None:
    """Open the flow whose row holds *text*: a click on it, then Enter."""
    page.locator("#viewport .row", has_text=text).first.click()
    page.keyboard.press("Enter")
    page.wait_for_selector(f'#view h2:has-text("{text}")')


def _load_highlight(page: Any, shots: Path, seen: dict[str, Any]) -> None:
    """Load a HAR file with the page's Load input; open its HTML page: highlighted."""
    page.set_input_files("#import-file", str(DATA / "browser.har"))
    page.wait_for_selector('#notice:has-text("loaded")')
    seen["loaded"] = page.inner_text("#notice")
    _open(page, "shop.example.com/?q=shoes")
    code = page.locator('#view pre.body-code[data-language="html"]')
    code.wait_for()
    seen["highlighted_text"] = code.inner_text()
    seen["highlighted_tags"] = code.locator("span.hl-t").all_inner_texts()
    seen["markup_in_view"] = page.locator("#view script, #view link, #view img").count()
    page.screenshot(path=str(shots / "highlighted.png"))
    readme = os.environ.get(README_SHOT)
    if readme:
        page.set_viewport_size({"width": 1280, "height": 880})
        page.screenshot(path=readme)
        page.set_viewport_size({"width": 1400, "height": 800})


def _duplicate_edit_replay(page: Any, seen: dict[str, Any]) -> None:
    """Duplicate the first flow, edit the copy's URL, replay the copy."""
    _open(page, "/echo?first=1")
    original = page.get_attribute("#view", "data-id")
    page.click("#duplicate")
    page.wait_for_selector(f'#view[data-id]:not([data-id="{original}"])')
    seen["duplicate_is_new"] = page.get_attribute("#view", "data-id") != original
    page.click("#edit")
    url = page.input_value("#edit-url")
    page.fill("#edit-url", url.replace("first=1", "duplicated=1"))
    page.click("#save-request")
    page.wait_for_selector('#view h2:has-text("/echo?duplicated=1")')
    page.click('#view .actions button:has-text("Replay")')
    page.locator("#viewport .row", has_text="/echo?duplicated=1").locator(
        '.c-marks:has-text("↻")').wait_for()


def _edit_held_response(page: Any, proxy: int, origin: int, shots: Path,
                        seen: dict[str, Any]) -> None:
    """Hold a response by the intercept filter, edit it in the page, resume it."""
    page.fill("#intercept", "~s & ~u third")
    page.press("#intercept", "Enter")
    page.wait_for_selector('#intercept[data-active="~s & ~u third"]')
    third = _curl(proxy, f"http://127.0.0.1:{origin}/echo?third=1", include=True)
    held = page.locator("#viewport .row.intercepted", has_text="/echo?third=1")
    held.wait_for()
    held.click()
    page.keyboard.press("Enter")
    page.wait_for_selector('#edit-response-body[data-loaded="yes"]')
    page.screenshot(path=str(shots / "held-response.png"))
    page.fill("#edit-status", "299")
    page.fill("#edit-reason", "Edited Here")
    page.fill("#edit-response-body", "edited in the page")
    page.click("#save-resume")
    out, err = third.communicate(timeout=30)
    seen["third"] = (third.returncode, out.decode(), err.decode())
    page.fill("#intercept", "")
    page.press("#intercept", "Enter")
    page.wait_for_selector('#intercept[data-active=""]')


def _replay_several(page: Any, seen: dict[str, Any]) -> None:
    """Check two flows and replay them; then replay all that a filter matches."""
    page.locator("#viewport .row", has_text="/echo?first=1").locator(".c-check").click()
    page.wait_for_selector('#replay-checked:has-text("Replay 1 checked")')
    page.locator("#viewport .row", has_text="/echo?second=1").click()  # selected,
    page.keyboard.press(" ")  # then checked with Space
    page.wait_for_selector('#replay-checked:has-text("Replay 2 checked")')
    page.click("#replay-checked")
    page.wait_for_selector('#notice:has-text("replaying")')
    seen["replayed_checked"] = page.inner_text("#notice")
    page.fill("#filter", "~u third")
    page.wait_for_selector('#list[data-filter="~u third"]')
    page.wait_for_selector('#count:has-text("1 flows")')
    page.click("#replay-matching")
    page.wait_for_selector('#notice:has-text("replaying 1 flows")')
    seen["replayed_matching"] = page.inner_text("#notice")


@needs_browser
@pytest_twisted.ensureDeferred
async def test_watch_filter_open_intercept_edit_resume(tmp_path: Path) -> None:
    """
    In Chromium, the UI (opened with its token) shows curl's flow live,
    filters it (and shows a bad filter's column), opens it with the
    keyboard and shows it as a curl command; then holds a second request
    by the intercept filter, its header is edited in the page and it is
    resumed: the origin got the edited header.  A click on a column's
    header sorts by it, either way.  A HAR file loaded with the page's
    Load input shows its flows, its HTML page highlighted (as text, no
    element of it in the page).  The first flow duplicated, the copy's URL
    edited and replayed; a held response's status, reason and body edited
    in the page reach curl; two checked flows, then all that a filter
    matches (confirmed), are replayed.
    """
    factory = OriginFactory()
    listening: Any = reactor.listenTCP(0, factory, interface="127.0.0.1")
    origin = listening.getHost().port
    proxy, web = free_port(), free_port()
    child = spawn([*twistd_command(), "-n", "--pidfile=", "twistproxy", "--port", str(proxy),
                   "--web", "--web-port", str(web)], tmp_path)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        await output_contains(child, "web UI: http", timeout=15)
        match = re.search(r"web UI: (http://\S+)", child.output)
        assert match is not None, child.output
        ui_url = match.group(1)
        assert ui_url.startswith(f"http://127.0.0.1:{web}/?token=")
        seen = await deferToThread(_drive, ui_url, proxy, origin, shots)
    finally:
        await child.stop()
        await listening.stopListening()
    print(f"screenshots: {shots}")
    assert seen["url_after_login"] == f"http://127.0.0.1:{web}/"  # the token left the URL
    assert seen["filtered_count"] == "1 flows"
    assert "column 4" in seen["filter_error"], seen["filter_error"]
    assert "/echo?first=1" in seen["view_title"]
    assert json.loads(seen["view_body"])["target"] == "/echo?first=1"
    assert seen["curl"].startswith("curl "), seen["curl"]
    assert f"http://127.0.0.1:{origin}/echo?first=1" in seen["curl"]
    assert "X-Test: original" in seen["curl"]
    code, out, err = seen["second"]
    assert code == 0, err
    sent = dict((k.lower(), v) for k, v in json.loads(out)["headers"])
    assert sent["x-test"] == "edited", out
    at_origin = [r for r in factory.received if r.target == b"/echo?second=1"]
    assert (b"X-Test", b"edited") in at_origin[0].headers  # (replayed later: twice in all)
    assert (seen["sorted_asc"], seen["sorted_desc"]) == ("/echo?first=1", "/echo?second=1")
    assert seen["loaded"] == "loaded 5 flows from browser.har"
    # The HTML page is highlighted, as text: its tags are spans, none is an element.
    har = json.loads((DATA / "browser.har").read_text())
    assert seen["highlighted_text"] == har["log"]["entries"][0]["response"]["content"]["text"]
    assert {"html", "link", "img", "script"} <= set(seen["highlighted_tags"]), seen[
        "highlighted_tags"]
    assert seen["markup_in_view"] == 0
    # The duplicate, edited, was replayed; the third response was edited in the page.
    assert seen["duplicate_is_new"]
    code, out, err = seen["third"]
    assert code == 0, err
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 299 Edited Here\n"), out
    assert f"content-length: {len(body)}" in head.lower() and body == "edited in the page"
    # Several replayed: the two checked, then the one the filter matched (confirmed).
    assert seen["replayed_checked"] == "replaying 2 flows"
    assert seen["replayed_matching"] == "replaying 1 flows"
    assert seen["confirmed"] == ["Replay the 1 flows matching ~u third?"]
    for _ in range(100):  # the replays run one after another
        targets = sorted(r.target for r in factory.received)
        if len(targets) == 7:
            break
        await deferToThread(time.sleep, 0.05)
    assert targets == sorted([b"/echo?first=1", b"/echo?second=1", b"/echo?duplicated=1",
                              b"/echo?third=1", b"/echo?first=1", b"/echo?second=1",
                              b"/echo?third=1"])
    assert seen["page_errors"] == []
    for name in ("list", "flow", "held", "resumed", "highlighted", "held-response"):
        assert (shots / f"{name}.png").stat().st_size > 1000
