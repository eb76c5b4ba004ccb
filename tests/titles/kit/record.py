"""Record what headless Chromium shows as document.title for every page of kit.json.

    python tests/titles/kit/record.py

Serves each page from a local HTTP server on 127.0.0.1 with its Content-Type, opens it in
Debian's Chromium (installed with apt-get when missing), reads `document.title` through the
DevTools protocol after the load event, and writes it into kit.json as "chromium". Chromium is
kept from every address but 127.0.0.1.
"""

import asyncio
import itertools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientWebSocketResponse, web

KIT = Path(__file__).parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--remote-debugging-port=0",
]
TABS = 4
PAGE_TIMEOUT_S = 15.0


def install_chromium() -> None:
    if shutil.which(CHROMIUM) is None:
        subprocess.run(["apt-get", "update"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "--no-install-recommends", "chromium"], check=True
        )


async def serve(entries: list[dict[str, Any]]) -> tuple[web.AppRunner, int]:
    async def page(request: web.Request) -> web.Response:
        entry = entries[int(request.match_info["number"])]
        body = (KIT / "pages" / entry["page"]).read_bytes()
        return web.Response(body=body, headers={"Content-Type": entry["content_type"]})

    app = web.Application()
    app.router.add_get(r"/{number:\d+}", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


class DevTools:
    """Just enough of the DevTools protocol: commands with ids, and events by name."""

    def __init__(self, socket: ClientWebSocketResponse) -> None:
        self.socket = socket
        self.ids = itertools.count(1)
        self.answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: dict[tuple[str, str], asyncio.Queue[dict[str, Any]]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.socket:
            data = json.loads(message.data)
            if "id" in data:
                self.answers.pop(data["id"]).set_result(data)
            else:
                key = (data.get("sessionId", ""), data["method"])
                self.events.setdefault(key, asyncio.Queue()).put_nowait(data["params"])

    async def call(self, method: str, session: str = "", **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.answers[number] = future
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self.socket.send_json(message)
        answer = await future
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return dict(answer["result"])

    def event(self, session: str, method: str) -> "asyncio.Queue[dict[str, Any]]":
        return self.events.setdefault((session, method), asyncio.Queue())


async def record_with(tools: DevTools, port: int, numbers: list[int]) -> dict[int, str]:
    target = await tools.call("Target.createTarget", url="about:blank")
    session = (
        await tools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
    )["sessionId"]
    await tools.call("Page.enable", session)
    loaded = tools.event(session, "Page.loadEventFired")
    dialogs = tools.event(session, "Page.javascriptDialogOpening")

    async def dismiss_dialogs() -> None:
        while True:
            await dialogs.get()
            await tools.call("Page.handleJavaScriptDialog", session, accept=True)

    dismissing = asyncio.create_task(dismiss_dialogs())
    titles: dict[int, str] = {}
    for number in numbers:
        while not loaded.empty():
            loaded.get_nowait()
        await tools.call("Page.navigate", session, url=f"http://127.0.0.1:{port}/{number}")
        try:
            await asyncio.wait_for(loaded.get(), PAGE_TIMEOUT_S)
        except TimeoutError:
            print(f"page {number}: no load event in {PAGE_TIMEOUT_S:g} s, title read anyway")
        answer = await tools.call(
            "Runtime.evaluate", session, expression="document.title", returnByValue=True
        )
        titles[number] = answer["result"]["value"]
    dismissing.cancel()
    return titles


async def main() -> None:
    install_chromium()
    entries: list[dict[str, Any]] = json.loads((KIT / "kit.json").read_text())
    runner, port = await serve(entries)
    with tempfile.TemporaryDirectory() as profile:
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "about:blank",
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert browser.stderr is not None
            while True:
                line = (await browser.stderr.readline()).decode()
                if not line:
                    raise RuntimeError("Chromium exited before it listened")
                found = re.search(r"ws://\S+", line)
                if found:
                    break
            async with (
                ClientSession() as http,
                http.ws_connect(found.group(0), max_msg_size=0) as socket,
            ):
                tools = DevTools(socket)
                numbers = list(range(len(entries)))
                shares = [numbers[tab::TABS] for tab in range(TABS)]
                results = await asyncio.gather(
                    *(record_with(tools, port, share) for share in shares)
                )
        finally:
            browser.terminate()
            await browser.wait()
            await runner.cleanup()
    for titles in results:
        for number, title in titles.items():
            entries[number]["chromium"] = title
    (KIT / "kit.json").write_text(json.dumps(entries, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {len(entries)} titles")


if __name__ == "__main__":
    asyncio.run(main())
