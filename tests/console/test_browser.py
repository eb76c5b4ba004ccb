"""The console in a real browser, as a person uses it: sign in, add a monitor and watch its
state change, cancel a timer, add and remove alert channels and maintenance windows, open an
upload's pages, read and use pages by keyboard.

Chromium is Debian's headless build driven by selenium (tests/console/browser.py), started with
`--disable-background-networking --disable-component-update --no-first-run` and
`--host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"`, so it reaches nothing but the
servers these tests start on 127.0.0.1. Each browser step runs in a thread, because the app
under test is served by this test's event loop. A failing test saves a screenshot of the page
it was on (its path is printed in the failure report).
"""

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver

from errands.config import Settings
from tests.console.browser import start_chromium, wait_for
from tests.console.conftest import new_key
from tests.conversions.samples import pdf
from tests.fixtures.app import RunningApp, serve_app
from tests.fixtures.targets import TargetServer


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(
    chromium: WebDriver, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[WebDriver]:
    """The browser with no cookies left from another test; a screenshot if this test fails."""
    chromium.delete_all_cookies()
    yield chromium
    report = getattr(request.node, "call_report", None)
    if report is not None and report.failed:
        shot = tmp_path / "failure.png"
        chromium.save_screenshot(str(shot))
        report.sections.append(("screenshot", f"the page at failure: {shot}"))


async def in_browser(step: Callable[[], None]) -> None:
    await asyncio.to_thread(step)


def text_of(browser: WebDriver, selector: str) -> str:
    return str(browser.find_element(By.CSS_SELECTOR, selector).text)


@pytest.fixture
async def watched(settings: Settings) -> AsyncIterator[RunningApp]:
    """Keys on, with the checker and the sink running, checking every few seconds."""
    update = {"api_keys_enabled": True, "api_key_cache_s": 0.0}
    async with serve_app(settings.model_copy(update=update), loops=["monitors", "sink"]) as app:
        yield app


async def test_sign_in_add_a_monitor_and_watch_it_go_down_then_sign_out(
    browser: WebDriver, watched: RunningApp, database_url: str, target_server: TargetServer
) -> None:
    site = target_server.route("/shop", body=b"<title>Shop</title>")
    _, secret = await new_key(database_url, "admin")
    base = watched.base_url

    def sign_in_and_add() -> None:
        browser.get(f"{base}/console/monitors")
        assert browser.title == "Sign in · Errands"
        key_field = browser.switch_to.active_element
        assert key_field.get_attribute("id") == "key", "the key field has the focus"
        key_field.send_keys(secret, Keys.ENTER)
        wait_for("the monitors page", lambda: browser.title.startswith("Monitors"))
        assert "Signed in as ops" in text_of(browser, "header")
        browser.find_element(By.LINK_TEXT, "Add a monitor").click()
        browser.find_element(By.ID, "name").send_keys("Shop")
        browser.find_element(By.ID, "url").send_keys(site)
        interval = browser.find_element(By.ID, "interval_s")
        interval.clear()
        interval.send_keys("5")
        browser.find_element(By.CSS_SELECTOR, "main form button[type=submit]").click()
        wait_for(
            "the monitor's page", lambda: browser.find_element(By.TAG_NAME, "h1").text == "Shop"
        )

        def shows(state: str) -> bool:
            browser.refresh()
            return text_of(browser, "main p .state") == state

        wait_for("the monitor to be up", lambda: shows("up"))

    await in_browser(sign_in_and_add)
    target_server.route("/shop", status=503)

    def watch_it_go_down() -> None:
        browser.find_element(By.LINK_TEXT, "Monitors").click()

        def listed_down() -> bool:
            browser.refresh()
            return text_of(browser, "table.monitors tbody .state") == "down"

        # Down after three failed checks in a row (the default threshold), 5 s apart.
        wait_for("the monitors page to show it down", listed_down, timeout_s=60)
        assert browser.title == "Monitors (1 down) · Errands", "the title carries the state"
        browser.find_element(By.CSS_SELECTOR, "form.sign-out button").click()
        wait_for("the sign-in page", lambda: browser.title == "Sign in · Errands")
        browser.get(f"{base}/console/monitors")
        assert browser.title == "Sign in · Errands", "signed out for good"

    await in_browser(watch_it_go_down)


async def test_cancel_a_timer_from_its_page(browser: WebDriver, app: RunningApp) -> None:
    created = await app.client.post("/timer", json={"hours": 2, "url": "https://hook.example/"})
    timer_id = created.json()["id"]

    def cancel() -> None:
        browser.get(f"{app.base_url}/console/timers")
        browser.find_element(By.ID, "timer-id").send_keys(timer_id, Keys.ENTER)
        wait_for("the timer's page", lambda: "Timer" in browser.title)
        assert text_of(browser, "#timer-status") == "pending"
        browser.find_element(By.XPATH, "//button[text()='Cancel timer']").click()
        wait_for("the cancelled timer", lambda: text_of(browser, "#timer-status") == "cancelled")
        assert not browser.find_elements(By.XPATH, "//button[text()='Cancel timer']")

    await in_browser(cancel)
    assert (await app.client.get(f"/timer/{timer_id}")).json()["status"] == "cancelled"


async def test_add_a_channel_and_hold_alerts_then_remove_both(
    browser: WebDriver, app: RunningApp
) -> None:
    def add_and_remove() -> None:
        browser.get(f"{app.base_url}/console/alerts")
        browser.find_element(By.ID, "channel-name").send_keys("on-call")
        browser.find_element(By.ID, "channel-url").send_keys("https://hooks.example/errands")
        browser.find_element(By.XPATH, "//button[text()='Add channel']").click()
        wait_for("the channel's row", lambda: "hooks.example/errands" in text_of(browser, "main"))
        hold = browser.find_element(By.ID, "hold-minutes")
        hold.clear()
        hold.send_keys("45", Keys.ENTER)
        wait_for(
            "the window's row", lambda: "No maintenance windows." not in text_of(browser, "main")
        )

        browser.find_element(By.CSS_SELECTOR, "[aria-label='Remove the channel on-call']").click()
        wait_for("no channel", lambda: "No channels" in text_of(browser, "main"))
        browser.find_element(By.CSS_SELECTOR, "[aria-label^='Remove the window']").click()
        wait_for("no window", lambda: "No maintenance windows." in text_of(browser, "main"))

    await in_browser(add_and_remove)
    assert (await app.client.get("/channels")).json() == []
    assert (await app.client.get("/maintenance")).json() == []


async def test_open_the_pages_of_an_upload(browser: WebDriver, settings: Settings) -> None:
    async with serve_app(settings, loops=["conversions"]) as app:
        document = pdf([(300, 400), (400, 300)])
        upload = await app.client.post(
            "/uploads", files=[("files", ("report.pdf", document, "application/pdf"))]
        )
        upload_id = upload.json()["id"]

        def open_pages() -> None:
            browser.get(f"{app.base_url}/console/uploads")
            browser.find_element(By.LINK_TEXT, upload_id).click()

            def converted() -> bool:
                browser.refresh()
                return text_of(browser, "main > p .state") == "done"

            # Conversions run in child processes: slow on a busy machine.
            wait_for("the upload to be converted", converted, timeout_s=90)
            images = browser.find_elements(By.CSS_SELECTOR, "ol.pages img")
            assert [image.get_attribute("alt") for image in images] == [
                "Page 1 of report.pdf",
                "Page 2 of report.pdf",
            ]
            assert all(
                browser.execute_script("return arguments[0].naturalWidth", image) > 0
                for image in images
            ), "every page's PNG loaded"
            assert all(image.get_attribute("src").endswith(".preview.png") for image in images), (
                "the small previews, not the full pages"
            )
            browser.find_element(By.LINK_TEXT, "Page 2").click()
            wait_for("the PNG of page 2", lambda: browser.current_url.endswith(".png"))
            browser.back()
            original = browser.find_element(By.LINK_TEXT, "Download the original")
            assert original.get_attribute("href").endswith("original.pdf")

        await in_browser(open_pages)


async def test_the_monitor_form_is_usable_by_keyboard_alone(
    browser: WebDriver, app: RunningApp
) -> None:
    def by_keyboard() -> None:
        browser.get(f"{app.base_url}/console/monitors/new")
        body = browser.find_element(By.TAG_NAME, "body")
        body.send_keys(Keys.TAB)
        assert browser.switch_to.active_element.text == "Skip to content"
        visited = []
        for _ in range(30):
            browser.switch_to.active_element.send_keys(Keys.TAB)
            visited.append(browser.switch_to.active_element.get_attribute("id"))
            if visited[-1] == "url":
                break
        assert visited[-1] == "url", f"Tab reaches the form: {visited}"
        browser.switch_to.active_element.send_keys("https://keyboard.example/")
        for field, value in (("interval_s", None), ("timeout_s", "2")):
            browser.switch_to.active_element.send_keys(Keys.TAB)
            assert browser.switch_to.active_element.get_attribute("id") == field
            if value:
                browser.switch_to.active_element.send_keys(value)
        browser.switch_to.active_element.send_keys(Keys.ENTER)
        wait_for("the new monitor's page", lambda: "keyboard.example" in browser.title)

    await in_browser(by_keyboard)
    monitors = (await app.client.get("/monitors")).json()
    assert [(m["url"], m["timeout_s"]) for m in monitors] == [("https://keyboard.example/", 2.0)]


async def test_the_status_page_shows_public_monitors_with_their_daily_bars(
    browser: WebDriver, app: RunningApp
) -> None:
    for name, public in (("Shop", True), ("Back office", False)):
        created = await app.client.post(
            "/monitors",
            json={"url": f"https://{name.split()[0].lower()}.example/", "interval_s": 60,
                  "name": name, "public": public},
        )  # fmt: skip
        assert created.status_code == 201, created.text

    def read_status() -> None:
        browser.get(f"{app.base_url}/status")
        assert browser.find_element(By.TAG_NAME, "h1").text == "All systems up"
        names = [heading.text for heading in browser.find_elements(By.CSS_SELECTOR, "li h3")]
        assert names == ["Shop new"]
        chart = browser.find_element(By.CSS_SELECTOR, "li svg")
        assert chart.get_attribute("aria-label") == "Shop, daily uptime: 90 days, no checks"
        assert "Back office" not in browser.page_source

    await in_browser(read_status)
