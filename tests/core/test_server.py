"""Slow and piled-up clients against a real `errands api` process: headers that trickle in get a
408, a body that stalls is cut off, connections past the cap are closed at once, and the API keeps
answering everyone else."""

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.app import free_port

HEADER_TIMEOUT_S = 1.0
BODY_IDLE_TIMEOUT_S = 1.0
MAX_CONNECTIONS = 20
# Far above the timeouts, far below "never": a connection still open by then was kept.
CLOSED_WITHIN_S = 8.0

Address = tuple[str, int]


@pytest.fixture
async def api_address(database_url: str, tmp_path: Path) -> AsyncIterator[Address]:
    port = free_port()
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": database_url,
        "ERRANDS_PORT": str(port),
        "ERRANDS_DATA_DIR": str(tmp_path),
        "ERRANDS_LOG_LEVEL": "warning",
        "ERRANDS_SERVER_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "ERRANDS_SERVER_BODY_IDLE_TIMEOUT_S": str(BODY_IDLE_TIMEOUT_S),
        "ERRANDS_SERVER_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    log = tmp_path / "api.log"
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "errands", "api", env=env, stdout=sink, stderr=sink
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, log.read_text()[-2000:]
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the API never started"
                await asyncio.sleep(0.1)
        yield ("127.0.0.1", port)
    finally:
        process.terminate()
        await process.wait()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails if it never does)."""
    async with asyncio.timeout(CLOSED_WITHIN_S):
        return await reader.read()


async def trickle_headers(writer: asyncio.StreamWriter) -> None:
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    for line in range(1000):
        await asyncio.sleep(HEADER_TIMEOUT_S / 4)
        writer.write(f"X-Slow-{line}: yes\r\n".encode())


async def healthz_status(address: Address) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"http://{address[0]}:{address[1]}/healthz")).status_code


async def test_headers_that_trickle_in_get_a_408_and_the_connection_closes(
    api_address: Address,
) -> None:
    reader, writer = await asyncio.open_connection(*api_address)
    trickling = asyncio.create_task(trickle_headers(writer))
    try:
        answer = await read_until_closed(reader)
    finally:
        trickling.cancel()
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"detail"' in answer


async def test_a_connection_that_never_sends_is_closed(api_address: Address) -> None:
    reader, writer = await asyncio.open_connection(*api_address)
    try:
        answer = await read_until_closed(reader)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_a_body_that_stalls_is_cut_off(api_address: Address) -> None:
    reader, writer = await asyncio.open_connection(*api_address)
    writer.write(
        b"POST /timer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"hours": 1,'
    )
    try:
        await read_until_closed(reader)
    finally:
        writer.close()
    # The server is still fine for everyone else.
    assert await healthz_status(api_address) == 200


async def test_a_keep_alive_client_that_keeps_asking_is_not_cut_off(api_address: Address) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        url = f"http://{api_address[0]}:{api_address[1]}/healthz"
        for _ in range(4):
            assert (await client.get(url)).status_code == 200
            await asyncio.sleep(HEADER_TIMEOUT_S / 2)


async def test_connections_past_the_cap_are_closed_at_once_and_the_api_recovers(
    api_address: Address,
) -> None:
    held = [await asyncio.open_connection(*api_address) for _ in range(MAX_CONNECTIONS)]
    try:
        reader, writer = await asyncio.open_connection(*api_address)
        started = time.monotonic()
        async with asyncio.timeout(HEADER_TIMEOUT_S / 2):
            assert await reader.read() == b"", "closed without an answer"
        writer.close()
        assert time.monotonic() - started < HEADER_TIMEOUT_S / 2
        # The held connections send nothing, so the header timeout frees their places.
        for held_reader, _ in held:
            await read_until_closed(held_reader)
        assert await healthz_status(api_address) == 200
    finally:
        for _, held_writer in held:
            held_writer.close()
