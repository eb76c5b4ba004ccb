"""Alert state as the sink stores checks: thresholds, incidents, one alert per transition,
degraded, certificate warnings and maintenance windows."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from errands.core.db import Pool
from errands.core.resources import Resources
from errands.monitors import alerts, store
from errands.monitors.alerts import AlertState, StoredCheck
from errands.monitors.results import CheckResult, encode_check
from errands.monitors.sink import store_batch

START = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def stored(verdict: alerts.Verdict, minute: int) -> StoredCheck:
    return StoredCheck(
        check_id=uuid.uuid4(),
        checked_at=START + timedelta(minutes=minute),
        verdict=verdict,
        status_code=200 if verdict != "down" else 503,
        response_time_ms=10.0,
        error=None,
        tls_expires_at=None,
    )


def run(
    verdicts: str, *, failures: int = 3, successes: int = 1, state: alerts.State = "up"
) -> tuple[AlertState, list[tuple[str, str]]]:
    """Feed verdicts (u, d, s for up, down, slow) to the state machine; the final state and
    the transitions made."""
    names: dict[str, alerts.Verdict] = {"u": "up", "d": "down", "s": "degraded"}
    current = AlertState(state, None, None, 0, None)
    moves = []
    for minute, letter in enumerate(verdicts):
        current, transition = alerts.advance(
            current,
            stored(names[letter], minute),
            failure_threshold=failures,
            success_threshold=successes,
        )
        if transition is not None:
            moves.append((transition.from_state, transition.to_state))
    return current, moves


def test_down_only_after_the_failure_threshold_and_up_after_the_success_threshold() -> None:
    assert run("dd")[1] == []
    assert run("ddd")[1] == [("up", "down")]
    assert run("ddud")[1] == []  # a good check in between starts the count again
    assert run("dddu")[1] == [("up", "down"), ("down", "up")]
    assert run("dddudu", successes=2)[1] == [("up", "down")]
    assert run("ddduu", successes=2)[1] == [("up", "down"), ("down", "up")]
    assert run("dddddd")[0].state == "down"


def test_a_new_monitor_becomes_up_silently_and_can_start_down() -> None:
    state, moves = run("u", state="new")
    assert (state.state, moves) == ("up", [])
    assert run("ddd", state="new")[1] == [("new", "down")]


def test_slow_checks_make_a_monitor_degraded_and_fast_ones_bring_it_back() -> None:
    assert run("ss")[1] == []
    assert run("sssu")[1] == [("up", "degraded"), ("degraded", "up")]
    assert run("sssddd")[1] == [("up", "degraded"), ("degraded", "down")]


def test_a_transition_starts_at_the_first_check_of_its_run() -> None:
    current = AlertState("up", None, None, 0, None)
    for minute in range(3):
        current, transition = alerts.advance(
            current, stored("down", minute), failure_threshold=3, success_threshold=1
        )
    assert transition is not None
    assert transition.since == START


# --- Through the sink, on a real PostgreSQL ---------------------------------------------------


async def a_monitor(pool: Pool, **fields: Any) -> uuid.UUID:
    defaults: dict[str, Any] = {
        "url": f"https://{uuid.uuid4().hex}.example.com/",
        "interval_s": 60,
        "timeout_s": 10.0,
        "method": "GET",
        "regex": None,
    }
    created = await store.create_monitor(pool, store.MonitorFields(**{**defaults, **fields}))
    assert not isinstance(created, uuid.UUID)
    monitor_id: uuid.UUID = created["id"]
    return monitor_id


def a_check(
    monitor_id: uuid.UUID,
    at: datetime,
    *,
    status: int | None = 200,
    ms: float = 20.0,
    tls_expires_at: datetime | None = None,
) -> bytes:
    failed = status is None
    return encode_check(
        CheckResult(
            check_id=uuid.uuid4(),
            monitor_id=monitor_id,
            checked_at=at,
            url="https://example.com/",
            status_code=status,
            response_time_ms=None if failed else ms,
            dns_ms=None,
            connect_ms=None,
            tls_ms=None,
            first_byte_ms=None,
            regex_matched=None,
            error_kind="connect" if failed else None,
            error="could not connect to example.com:443" if failed else None,
            accepted=not failed and status is not None and status < 400,
            tls_expires_at=tls_expires_at,
        )
    )


async def rows(pool: Pool, query: str, *params: object) -> list[dict[str, Any]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall()


async def alert_types(pool: Pool, monitor_id: uuid.UUID) -> list[str]:
    found = await rows(
        pool, "SELECT type FROM alerts WHERE monitor_id = %s ORDER BY created_at, type", monitor_id
    )
    return [row["type"] for row in found]


def minutes_ago(n: float) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=n)


async def test_the_sink_opens_and_closes_one_incident_per_outage(resources: Resources) -> None:
    pool = resources.pool
    monitor_id = await a_monitor(pool)
    await store_batch(resources, [a_check(monitor_id, minutes_ago(10))])
    assert (await store.get_monitor(pool, monitor_id) or {})["state"] == "up"

    failures = [a_check(monitor_id, minutes_ago(9 - n), status=503) for n in range(3)]
    await store_batch(resources, failures[:2])
    assert (await store.get_monitor(pool, monitor_id) or {})["state"] == "up"
    await store_batch(resources, failures)  # redelivered with one more: only that one counts
    monitor = await store.get_monitor(pool, monitor_id)
    assert monitor is not None and monitor["state"] == "down"
    assert await alert_types(pool, monitor_id) == ["monitor.down"]

    await store_batch(resources, failures)  # stored again: nothing new
    await store_batch(resources, [a_check(monitor_id, minutes_ago(5), status=None)])
    assert await alert_types(pool, monitor_id) == ["monitor.down"]

    await store_batch(resources, [a_check(monitor_id, minutes_ago(4))])
    assert await alert_types(pool, monitor_id) == ["monitor.down", "monitor.up"]
    [incident] = await store.list_incidents(pool, monitor_id, 10)
    assert incident["state"] == "down"
    assert "503" in incident["cause"]
    assert incident["started_at"] == pytest.approx(minutes_ago(9), abs=timedelta(seconds=5))
    assert incident["resolved_at"] == pytest.approx(minutes_ago(4), abs=timedelta(seconds=5))
    assert incident["failed_checks"] == 4


async def test_one_batch_holding_a_whole_outage_records_both_transitions(
    resources: Resources,
) -> None:
    monitor_id = await a_monitor(resources.pool, failure_threshold=2)
    batch = [
        a_check(monitor_id, minutes_ago(5)),
        a_check(monitor_id, minutes_ago(4), status=500),
        a_check(monitor_id, minutes_ago(3), status=500),
        a_check(monitor_id, minutes_ago(2)),
    ]
    await store_batch(resources, batch)
    assert await alert_types(resources.pool, monitor_id) == ["monitor.down", "monitor.up"]
    [incident] = await store.list_incidents(resources.pool, monitor_id, 10)
    assert incident["resolved_at"] is not None
    assert incident["failed_checks"] == 2


async def test_slow_answers_make_a_degraded_incident(resources: Resources) -> None:
    monitor_id = await a_monitor(resources.pool, max_response_ms=100.0, failure_threshold=2)
    await store_batch(resources, [a_check(monitor_id, minutes_ago(5), ms=20)])
    await store_batch(
        resources, [a_check(monitor_id, minutes_ago(4 - n), ms=250) for n in range(2)]
    )
    monitor = await store.get_monitor(resources.pool, monitor_id)
    assert monitor is not None and monitor["state"] == "degraded"
    [incident] = await store.list_incidents(resources.pool, monitor_id, 10)
    assert incident["state"] == "degraded"
    assert "slower than 100 ms" in incident["cause"]
    assert await alert_types(resources.pool, monitor_id) == ["monitor.degraded"]


async def test_an_expiring_certificate_is_warned_about_once(resources: Resources) -> None:
    monitor_id = await a_monitor(resources.pool, tls_expiry_days=14)
    soon = datetime.now(UTC) + timedelta(days=3)
    later = datetime.now(UTC) + timedelta(days=90)
    await store_batch(resources, [a_check(monitor_id, minutes_ago(5), tls_expires_at=later)])
    assert await alert_types(resources.pool, monitor_id) == []
    for n in range(3):
        await store_batch(resources, [a_check(monitor_id, minutes_ago(4 - n), tls_expires_at=soon)])
    assert await alert_types(resources.pool, monitor_id) == ["monitor.tls_expiring"]
    renewed = soon + timedelta(days=1)
    await store_batch(resources, [a_check(monitor_id, minutes_ago(1), tls_expires_at=renewed)])
    assert await alert_types(resources.pool, monitor_id) == ["monitor.tls_expiring"] * 2


async def test_a_paused_monitor_changes_no_state(resources: Resources) -> None:
    monitor_id = await a_monitor(resources.pool, paused=True, failure_threshold=1)
    await store_batch(resources, [a_check(monitor_id, minutes_ago(1), status=500)])
    monitor = await store.get_monitor(resources.pool, monitor_id)
    assert monitor is not None and monitor["state"] == "new"
    assert monitor["due_at"] is None  # and it is not checked at all


async def test_alerts_in_a_maintenance_window_are_held(resources: Resources) -> None:
    pool = resources.pool
    held_id = await a_monitor(pool, failure_threshold=1)
    other_id = await a_monitor(pool, failure_threshold=1)
    await store.create_window(
        pool,
        monitor_ids=[held_id],
        starts_at=minutes_ago(30),
        ends_at=minutes_ago(-30),
        cron=None,
        duration_s=None,
    )
    await store_batch(
        resources,
        [
            a_check(held_id, minutes_ago(1), status=500),
            a_check(other_id, minutes_ago(1), status=500),
        ],
    )
    found = await rows(pool, "SELECT monitor_id, type, held FROM alerts ORDER BY held")
    assert [(row["monitor_id"], row["held"]) for row in found] == [
        (other_id, False),
        (held_id, True),
    ]
    # The state still changes: checks go on, only the notifications are held.
    monitor = await store.get_monitor(pool, held_id)
    assert monitor is not None and monitor["state"] == "down"
