"""
The web UI in a real browser: ``twistd twistproxy --web`` as a child
process, headless Chromium (Debian's ``chromium``) driven by Playwright, curl
as the proxy's client and the test origin in the test's reactor.

The browser and curl run in a thread (Playwright's sync API blocks), so the
reactor keeps serving the origin meanwhile.  Screenshots of the main views
are saved under the test's tmp directory (``screenshots/``), as artefacts.
Skipped when chromium or the ``playwright`` package is missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
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


def _curl(proxy: int, url: str) -> subprocess.Popen[bytes]:
    assert CURL is not None
    return subprocess.Popen(
        [CURL, "--silent", "--show-error", "--max-time", "30", "-x",
         f"http://127.0.0.1:{proxy}", "-H", "X-Test: original", url],
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
            page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
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
            seen["page_errors"] = errors
        finally:
            browser.close()
    return seen


@needs_browser
@pytest_twisted.ensureDeferred
async def test_watch_filter_open_intercept_edit_resume(tmp_path: Path) -> None:
    """
    In Chromium, the UI (opened with its token) shows curl's flow live,
    filters it (and shows a bad filter's column), opens it with the
    keyboard and shows it as a curl command; then holds a second request
    by the intercept filter, its header is edited in the page and it is
    resumed: the origin got the edited header.  A click on a column's
    header sorts by it, either way.
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
    assert len(at_origin) == 1
    assert (b"X-Test", b"edited") in at_origin[0].headers
    assert (seen["sorted_asc"], seen["sorted_desc"]) == ("/echo?first=1", "/echo?second=1")
    assert seen["page_errors"] == []
    for name in ("list", "flow", "held", "resumed"):
        assert (shots / f"{name}.png").stat().st_size > 1000
