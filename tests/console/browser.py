"""A real headless Chromium from Debian, driven by selenium, that can reach only 127.0.0.1.

Chromium starts with `--disable-background-networking --disable-component-update
--no-first-run` and `--host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"`: it makes no
request of its own, and every host name but 127.0.0.1 fails to resolve.
"""

import shutil
import time
from collections.abc import Callable

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

__all__ = ["CHROMIUM", "CHROMIUM_FLAGS", "start_chromium", "wait_for"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--window-size=1280,900",
)


def start_chromium() -> WebDriver:
    """Chromium as `make test` installs it (Debian's chromium and chromium-driver)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found: `make test` installs Debian's chromium and "
            "chromium-driver, or run `apt-get install chromium chromium-driver`"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_for(
    what: str, condition: Callable[[], bool], *, timeout_s: float = 30.0, poll_s: float = 0.25
) -> None:
    """Poll `condition` until it holds, failing with `what` after `timeout_s`. A page still
    loading (its elements not there yet, or replaced as it was read) counts as not yet."""
    deadline = time.monotonic() + timeout_s
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def _holds(condition: Callable[[], bool]) -> bool:
    try:
        return condition()
    except (NoSuchElementException, StaleElementReferenceException):
        return False
