"""The compose stack, running: deploy/compose.yaml with the host-network test override, started
by `make stack-test` (deploy/scripts/stack-test.sh), which passes the bootstrap key the first
start printed. Skipped without that stack.
"""

import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from errands.core.auth import hash_key

LB = "http://127.0.0.1:18400"
LB_METRICS = "http://127.0.0.1:18405/metrics"
PROMETHEUS = "http://127.0.0.1:18490"
DATABASE = "postgresql://errands:errands@127.0.0.1:18432/errands"
KAFKA = "127.0.0.1:18492"
TOPIC = "errands.checks"
SITE = "http://127.0.0.1:18480/"
SCRAPED = {"127.0.0.1:18401", "127.0.0.1:18402", "127.0.0.1:18411", "127.0.0.1:18412"}

pytestmark = pytest.mark.skipif(
    "ERRANDS_TEST_STACK_KEY" not in os.environ, reason="needs the stack `make stack-test` starts"
)

Found = TypeVar("Found")


def eventually(probe: Callable[[], Found | None], within_s: float, what: str) -> Found:
    deadline = time.monotonic() + within_s
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s"
        time.sleep(1)


@pytest.fixture
def api() -> Iterator[httpx.Client]:
    key = os.environ["ERRANDS_TEST_STACK_KEY"]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=LB, headers=headers, timeout=10) as client:
        yield client


def test_through_the_load_balancer_only_health_answers_without_a_key() -> None:
    with httpx.Client(base_url=LB, timeout=10) as anonymous:
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/readyz").status_code == 200
        assert anonymous.get("/monitors").status_code == 401
        assert anonymous.post("/timer", json={"seconds": 1, "url": SITE}).status_code == 401
        assert anonymous.get("/metrics").status_code == 404, "metrics stay inside the stack"


def test_the_bootstrap_key_opens_the_api_and_only_its_hash_is_stored(api: httpx.Client) -> None:
    key = os.environ["ERRANDS_TEST_STACK_KEY"]

    assert api.get("/stats").status_code == 200
    with psycopg.connect(DATABASE) as conn:
        rows = conn.execute("SELECT name, scopes, key_hash FROM api_keys").fetchall()
        holding_the_key = conn.execute(
            "SELECT count(*) FROM api_keys WHERE strpos(api_keys::text, %s) > 0", [key]
        ).fetchone()
    assert rows == [("bootstrap", ["admin"], hash_key(key))]
    assert holding_the_key == (0,)


def test_a_monitors_checks_pass_through_kafka_into_postgresql_and_back(
    api: httpx.Client,
) -> None:
    created = api.post("/monitors", json={"url": SITE, "interval_s": 5, "regex": "stack test"})
    assert created.status_code == 201, created.text
    monitor_id = created.json()["id"]

    def two_checks() -> list[dict[str, object]] | None:
        response = api.get(f"/monitors/{monitor_id}/checks")
        assert response.status_code == 200, response.text
        checks: list[dict[str, object]] = response.json()
        return checks if len(checks) >= 2 else None

    checks = eventually(two_checks, 60, "two checks stored")
    assert all(check["up"] and check["regex_matched"] for check in checks), checks
    assert all(check["status_code"] == 200 for check in checks), checks
    published = asyncio.run(checks_on_the_topic(monitor_id))
    assert {str(check["check_id"]) for check in checks} <= published


async def checks_on_the_topic(monitor_id: str) -> set[str]:
    """The check ids the broker holds for one monitor, read from the start of every partition
    to where each ended when asked (checks keep arriving, so no quiet spell marks the end)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False)
    found: set[str] = set()
    await consumer.start()
    try:
        await consumer.topics()  # the topic's partitions, fresh from the broker
        partitions = [
            TopicPartition(TOPIC, partition)
            for partition in consumer.partitions_for_topic(TOPIC) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            assert time.monotonic() < deadline, "the topic was not read to its end in 60 s"
            batches = await consumer.getmany(*partitions, timeout_ms=1000)
            found |= {
                str(json.loads(message.value)["check_id"])
                for messages in batches.values()
                for message in messages
                if message.key == monitor_id.encode()
            }
    finally:
        await consumer.stop()
    return found


def test_both_api_processes_are_up_in_the_load_balancer(api: httpx.Client) -> None:
    for _ in range(20):
        assert api.get("/stats").status_code == 200
    metrics = httpx.get(LB_METRICS, timeout=10).text

    for server in ("api-1", "api-2"):
        status = f'haproxy_server_status{{proxy="api",server="{server}",state="UP"}} 1'
        assert status in metrics, f"{server} is not UP in HAProxy"


def test_prometheus_scrapes_every_process_and_the_load_balancer() -> None:
    def all_up() -> set[str] | None:
        targets = httpx.get(f"{PROMETHEUS}/api/v1/targets", timeout=10).json()
        up = {
            t["labels"]["instance"] for t in targets["data"]["activeTargets"] if t["health"] == "up"
        }
        return up if up >= {*SCRAPED, "127.0.0.1:18405"} else None

    eventually(all_up, 30, "every target scraped and up")
