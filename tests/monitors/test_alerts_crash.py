"""A sink killed with SIGKILL around transitions, through Kafka: every alert is recorded once
and each channel gets exactly one delivery row per alert, with the id derived from both."""

import asyncio
import signal
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from errands.config import Settings
from errands.core.bus import open_bus
from errands.core.db import open_pool
from errands.monitors import alerts, store
from errands.monitors.results import CheckResult, encode_check
from tests.monitors.test_kafka import scalar, sink_process, wait_until

MONITORS = 40
# Per monitor: 20 good checks, 3 failures (down at the third), then 27 good ones (up again).
PATTERN = [True] * 20 + [False] * 3 + [True] * 27


def checks_of(monitor_id: uuid.UUID, start: datetime) -> list[CheckResult]:
    return [
        CheckResult(
            check_id=uuid.uuid4(),
            monitor_id=monitor_id,
            checked_at=start + timedelta(seconds=10 * n),
            url="https://example.com/",
            status_code=200 if up else 502,
            response_time_ms=15.0,
            dns_ms=None,
            connect_ms=None,
            tls_ms=None,
            first_byte_ms=None,
            regex_matched=None,
            error_kind=None,
            error=None,
            accepted=up,
        )
        for n, up in enumerate(PATTERN)
    ]


async def test_a_sink_killed_around_transitions_sends_each_alert_once_per_channel(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    url = str(kafka_settings.database_url)
    async with open_pool(url, max_size=2) as pool:
        hooks = [
            await store.create_channel(
                pool, name=f"hook {n}", kind="webhook", target=f"https://hooks.example.com/{n}"
            )
            for n in range(2)
        ]
        monitor_ids = []
        for n in range(MONITORS):
            created = await store.create_monitor(
                pool,
                store.MonitorFields(
                    url=f"https://site{n}.example.com/",
                    interval_s=3600,
                    timeout_s=10,
                    method="GET",
                    regex=None,
                    channels=tuple(hook["id"] for hook in hooks),
                ),
            )
            assert not isinstance(created, uuid.UUID)
            monitor_ids.append(created["id"])

    start = datetime.now(UTC) - timedelta(hours=2)
    # Interleaved as checkers publish them: round by round across monitors.
    per_monitor = [checks_of(monitor_id, start) for monitor_id in monitor_ids]
    interleaved = [checks[n] for n in range(len(PATTERN)) for checks in per_monitor]
    async with open_bus(kafka_settings) as bus:
        for check in interleaved:
            await bus.publish(str(check.monitor_id).encode(), encode_check(check))
    total = len(interleaved)

    log = tmp_path / "sink.log"
    # Killed first while monitors are going down (their third failure is check 23 of 50), then
    # while they come back up (check 24).
    for kill_at in (22 * MONITORS + MONITORS // 2, 23 * MONITORS + MONITORS // 2):
        sink = sink_process(kafka_settings, batch_size=25, log=log)
        try:

            async def stored_enough(
                at_least: int = kill_at, process: subprocess.Popen[bytes] = sink
            ) -> bool:
                assert process.poll() is None, log.read_text()
                return await scalar(url, "SELECT count(*) FROM checks") >= at_least

            await wait_until(stored_enough, 60, "the sink stored too little")
            sink.send_signal(signal.SIGKILL)
            sink.wait(timeout=10)
        finally:
            if sink.poll() is None:
                sink.kill()
    assert await scalar(url, "SELECT count(*) FROM checks") < total, "killed too late"

    restarted = sink_process(kafka_settings, batch_size=500, log=log)
    try:

        async def all_stored() -> bool:
            assert restarted.poll() is None, log.read_text()
            return await scalar(url, "SELECT count(*) FROM checks") >= total

        await wait_until(all_stored, 60, "the restarted sink did not store every check")
        await asyncio.sleep(1.0)  # anything redelivered has been read by now
    finally:
        restarted.terminate()
        restarted.wait(timeout=20)

    async with await psycopg.AsyncConnection.connect(url, row_factory=dict_row) as conn:
        cursor = await conn.execute("SELECT id, monitor_id, type FROM alerts")
        recorded = await cursor.fetchall()
        cursor = await conn.execute("SELECT id, url FROM deliveries WHERE source = 'monitors'")
        deliveries = await cursor.fetchall()
        cursor = await conn.execute(
            "SELECT count(*) AS open FROM incidents WHERE resolved_at IS NULL"
        )
        still_open = await cursor.fetchone()
    assert sorted((row["monitor_id"], row["type"]) for row in recorded) == sorted(
        (monitor_id, kind) for monitor_id in monitor_ids for kind in ("monitor.down", "monitor.up")
    )
    expected_ids = {alerts.delivery_id(row["id"], hook["id"]) for row in recorded for hook in hooks}
    assert len(deliveries) == 2 * len(recorded) == 4 * MONITORS
    assert {row["id"] for row in deliveries} == expected_ids
    assert await scalar(url, "SELECT count(*) FROM incidents") == MONITORS
    assert still_open == {"open": 0}
