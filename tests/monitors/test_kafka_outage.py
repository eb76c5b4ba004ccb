"""A Kafka broker stopped for a minute under a real `errands serve`: checks go on, results wait in
order and are all stored once it is back, and /readyz and the metrics show the outage."""

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from errands.config import Settings
from tests.fixtures.app import free_port
from tests.fixtures.kafka import tansu_broker
from tests.fixtures.targets import TargetServer

OUTAGE_S = 60.0
MONITORS = 5
INTERVAL_S = 5


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in a /metrics answer (0 when it has none yet)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    )


async def stored_checks(database_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM checks")
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


@asynccontextmanager
async def errands_serve(
    settings: Settings, bootstrap: str, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    port = free_port()
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": str(settings.database_url),
        "ERRANDS_PORT": str(port),
        "ERRANDS_DATA_DIR": str(tmp_path),
        "ERRANDS_ALLOW_PRIVATE_TARGETS": "true",
        "ERRANDS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "ERRANDS_KAFKA_ENABLE_IDEMPOTENCE": "false",  # Tansu's memory storage refuses it
        "ERRANDS_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "ERRANDS_KAFKA_REQUEST_TIMEOUT_MS": "3000",
        "ERRANDS_KAFKA_PUBLISH_WAIT_S": "0.5",
        "ERRANDS_SHUTDOWN_GRACE_S": "2",
        "ERRANDS_LOG_LEVEL": "warning",
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "errands", "serve", env=env, stdout=output, stderr=output
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert process.returncode is None, log.read_text()[-3000:]
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "errands serve did not become ready"
                await asyncio.sleep(0.2)
            yield client
    finally:
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 30)


async def test_a_broker_outage_delays_results_without_dropping_or_holding_monitors(
    settings: Settings, target_server: TargetServer, tmp_path: Path
) -> None:
    site = target_server.route("/up", body=b"fine")
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    url = str(settings.database_url)
    with tansu_broker(port, tmp_path / "tansu.log") as broker:
        async with errands_serve(settings, bootstrap, tmp_path) as api:
            for n in range(MONITORS):
                created = await api.post(
                    "/monitors", json={"url": f"{site}?n={n}", "interval_s": INTERVAL_S}
                )
                assert created.status_code == 201, created.text

            async def all_stored() -> tuple[int, float]:
                made = metric((await api.get("/metrics")).text, "errands_checks_total")
                return await stored_checks(url), made

            deadline = time.monotonic() + 60
            while (found := await all_stored())[0] < MONITORS or found[0] < found[1]:
                assert time.monotonic() < deadline, f"checks not stored before the outage: {found}"
                await asyncio.sleep(0.5)

            broker.terminate()
            broker.wait(timeout=10)
            outage_started = time.monotonic()
            # Results the broker had acknowledged but the sink had not read yet went with its
            # memory storage; everything made from here on must be stored once it is back.
            await asyncio.sleep(1.0)
            stored_at_stop, made_at_stop = await all_stored()
            requests_before = len(target_server.requests["/up"])
            reported = queued = 0.0
            while time.monotonic() - outage_started < OUTAGE_S:
                ready = (await api.get("/readyz")).json()
                if ready["kafka"] is not None:
                    reported += 1
                    deep = await api.get("/readyz", params={"deep": "true"})
                    assert deep.status_code == 503, deep.text
                metrics = (await api.get("/metrics")).text
                queued = max(queued, metric(metrics, "errands_bus_publish_queued_messages"))
                await asyncio.sleep(1.0)
            assert reported > 0, "/readyz never showed the outage"
            assert queued > 0, "no result waited for the broker"
            # The monitors were not held by publishes that could not finish: every slot of the
            # outage was checked.
            checked_during = len(target_server.requests["/up"]) - requests_before
            assert checked_during >= MONITORS * (OUTAGE_S / INTERVAL_S - 2), checked_during
            metrics = (await api.get("/metrics")).text
            assert metric(metrics, "errands_bus_publish_failures_total") > 0

            with tansu_broker(port, tmp_path / "tansu.log"):
                restarted = time.monotonic()
                stored_before = await stored_checks(url)
                deadline = restarted + INTERVAL_S + 30
                while True:
                    stored, made = await all_stored()
                    if stored > stored_before and stored - stored_at_stop >= made - made_at_stop:
                        break
                    assert time.monotonic() < deadline, (
                        f"after the restart {stored - stored_at_stop} of the "
                        f"{made - made_at_stop} checks made since the outage were stored"
                    )
                    await asyncio.sleep(0.5)
                metrics = (await api.get("/metrics")).text
                assert metric(metrics, "errands_bus_publish_dropped_total") == 0
                assert (await api.get("/readyz")).json()["kafka"] is None
