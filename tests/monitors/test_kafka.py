"""Check results through a real Kafka-compatible broker (Tansu): end to end, and a sink killed
mid-batch that loses and duplicates nothing."""

import asyncio
import logging
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import uuid
from contextlib import aclosing, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from errands.config import Settings
from errands.core import bus as bus_module
from errands.core.bus import KafkaBus, kafka_options, open_bus, producer_options
from errands.monitors.results import CheckResult, encode_check
from tests.fixtures.app import serve_app
from tests.fixtures.targets import TargetServer


async def scalar(url: str, query: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        cursor = await conn.execute(query)
        row = await cursor.fetchone()
    return int(row[0] or 0) if row else 0


async def wait_until(predicate: Any, within_s: float, message: str) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, message
        await asyncio.sleep(0.05)


async def test_the_kafka_bus_carries_batches_and_resumes_after_commit(
    kafka_settings: Settings,
) -> None:
    async with open_bus(kafka_settings) as bus:
        assert isinstance(bus, KafkaBus)
        for n in range(30):
            await bus.publish(f"k{n % 3}".encode(), f"v{n}".encode())
        stop = asyncio.Event()
        seen: list[bytes] = []
        async with aclosing(bus.consume(stop, max_messages=10)) as batches:
            async for batch in batches:
                assert len(batch.messages) <= 10
                seen.extend(message.value for message in batch.messages)
                await batch.commit()
                if len(seen) >= 20:
                    break
        # A consumer of the same group starts after the committed offsets.
        for n in range(30, 35):
            await bus.publish(b"k0", f"v{n}".encode())
        rest: list[bytes] = []
        async with aclosing(bus.consume(stop, max_messages=100)) as batches:
            async for batch in batches:
                rest.extend(message.value for message in batch.messages)
                await batch.commit()
                if len(seen) + len(rest) >= 35:
                    break
    assert sorted(seen + rest) == sorted(f"v{n}".encode() for n in range(35))


async def forward(
    client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, to: str
) -> None:
    """Relay one connection to `to` (host:port) both ways until either side closes."""
    host, port = to.rsplit(":", 1)
    broker_reader, broker_writer = await asyncio.open_connection(host, int(port))

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    await asyncio.gather(pipe(client_reader, broker_writer), pipe(broker_reader, client_writer))


async def test_a_sink_started_before_kafka_is_reachable_waits_for_it(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bootstrap address answers only later (a relay to the broker, started late)."""
    monkeypatch.setattr(bus_module, "CONNECT_RETRY_S", 0.1)
    async with open_bus(kafka_settings) as bus:
        await bus.publish(b"k", b"early")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        late_port = probe.getsockname()[1]
    late = kafka_settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{late_port}"})
    real = str(kafka_settings.kafka_bootstrap_servers)
    stop = asyncio.Event()

    with capture_logs() as logs:
        async with open_bus(late) as bus:
            batches = aclosing(bus.consume(stop, max_messages=10))
            async with batches as consumed:
                first = asyncio.ensure_future(anext(consumed))

                async def unreachable_logged() -> bool:
                    assert not first.done(), "the consumer gave up"
                    return any(log["event"] == "kafka_unreachable" for log in logs)

                await wait_until(unreachable_logged, 10, "no failed attempt was logged")
                relay = await asyncio.start_server(
                    lambda r, w: forward(r, w, real), "127.0.0.1", late_port
                )
                async with relay:
                    batch = await asyncio.wait_for(first, 30)
                    assert [m.value for m in batch.messages] == [b"early"]
                    stop.set()


async def test_a_sink_that_cannot_reach_kafka_stops_when_told(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bus_module, "CONNECT_RETRY_S", 0.1)
    unreachable = kafka_settings.model_copy(update={"kafka_bootstrap_servers": "127.0.0.1:1"})
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.5, stop.set)
    async with open_bus(unreachable) as bus:
        batches = [batch async for batch in bus.consume(stop, max_messages=10)]
    assert batches == []


async def test_end_to_end_from_monitor_to_uptime_through_kafka(
    kafka_settings: Settings, target_server: TargetServer
) -> None:
    ok = target_server.route("/ok", body=b"<title>Shop</title> open")
    closed = target_server.route("/closed", body=b"<title>Shop</title> closed")
    slow = target_server.route("/slow", delay_s=3)
    async with serve_app(kafka_settings, loops=["monitors", "sink"]) as running:
        api = running.client
        created = {}
        for name, body in {
            "ok": {"url": ok, "interval_s": 5, "regex": "open"},
            "closed": {"url": closed, "interval_s": 5, "regex": "open"},
            "plain": {"url": ok + "?plain", "interval_s": 5},
            "slow": {"url": slow, "interval_s": 5, "timeout_s": 0.5},
        }.items():
            response = await api.post("/monitors", json=body)
            assert response.status_code == 201, response.text
            created[name] = response.json()["id"]

        async def all_checked() -> bool:
            for monitor_id in created.values():
                if not (await api.get(f"/monitors/{monitor_id}/checks")).json():
                    return False
            return True

        await wait_until(all_checked, 30, "not every monitor's check reached the database")
        latest = {
            name: (await api.get(f"/monitors/{monitor_id}/checks?limit=1")).json()[0]
            for name, monitor_id in created.items()
        }
        assert latest["ok"]["regex_matched"] is True and latest["ok"]["up"] is True
        assert latest["closed"]["regex_matched"] is False and latest["closed"]["up"] is False
        assert latest["plain"]["regex_matched"] is None and latest["plain"]["status_code"] == 200
        assert latest["slow"]["error_kind"] == "timeout"
        assert latest["slow"]["status_code"] is None
        for window in ("1h", "30d"):
            uptime = (await api.get(f"/monitors/{created['ok']}/uptime?window={window}")).json()
            assert uptime["checks"] >= 1
            assert uptime["uptime_pct"] == 100.0
            assert uptime["p95_ms"] is not None
            down = (await api.get(f"/monitors/{created['slow']}/uptime?window={window}")).json()
            assert down["uptime_pct"] == 0.0
            assert down["p50_ms"] is None


def sink_process(settings: Settings, batch_size: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ERRANDS_DATABASE_URL": str(settings.database_url),
        "ERRANDS_DATA_DIR": str(settings.data_dir),
        "ERRANDS_KAFKA_BOOTSTRAP_SERVERS": str(settings.kafka_bootstrap_servers),
        "ERRANDS_KAFKA_TOPIC": settings.kafka_topic,
        "ERRANDS_KAFKA_GROUP_ID": settings.kafka_group_id,
        "ERRANDS_KAFKA_ENABLE_IDEMPOTENCE": "false",
        "ERRANDS_KAFKA_SESSION_TIMEOUT_MS": str(settings.kafka_session_timeout_ms),
        "ERRANDS_SINK_BATCH_SIZE": str(batch_size),
        "ERRANDS_LOG_LEVEL": "warning",
    }
    with log.open("ab") as stderr:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "errands", "sink"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )


def known_checks(count: int) -> list[CheckResult]:
    monitors = [uuid.uuid4() for _ in range(20)]
    start = datetime.now(UTC) - timedelta(hours=2)
    return [
        CheckResult(
            check_id=uuid.uuid4(),
            monitor_id=monitors[n % len(monitors)],
            checked_at=start + timedelta(milliseconds=300 * n),
            url="https://example.com/",
            status_code=200 if n % 7 else 502,
            response_time_ms=float(5 + n % 400),
            dns_ms=None,
            connect_ms=None,
            tls_ms=None,
            first_byte_ms=None,
            regex_matched=None,
            error_kind=None,
            error=None,
        )
        for n in range(count)
    ]


async def test_a_sink_killed_mid_batch_loses_and_duplicates_nothing(
    kafka_settings: Settings, tmp_path: Path
) -> None:
    total = 20_000
    checks = known_checks(total)
    async with open_bus(kafka_settings) as bus:
        await asyncio.gather(
            *(bus.publish(str(c.monitor_id).encode(), encode_check(c)) for c in checks)
        )
    url = str(kafka_settings.database_url)

    sink = sink_process(kafka_settings, batch_size=200, log=tmp_path / "sink.log")
    try:
        await wait_until(
            lambda: scalar(url, "SELECT count(*) FROM checks"), 60, "the sink stored nothing"
        )
        sink.send_signal(signal.SIGKILL)
        sink.wait(timeout=10)
    finally:
        if sink.poll() is None:
            sink.kill()
    stored_at_kill = await scalar(url, "SELECT count(*) FROM checks")
    assert 0 < stored_at_kill < total, "the sink was not killed mid-way"

    restarted = sink_process(kafka_settings, batch_size=2000, log=tmp_path / "sink.log")
    try:

        async def all_stored() -> bool:
            assert restarted.poll() is None, (tmp_path / "sink.log").read_text()
            return await scalar(url, "SELECT count(*) FROM checks") >= total

        await wait_until(all_stored, 60, "the restarted sink did not store every check")
        # Anything redelivered after the kill has been read by now; nothing more may appear.
        await asyncio.sleep(1.0)
    finally:
        restarted.terminate()
        restarted.wait(timeout=20)
    assert restarted.returncode == 0
    assert await scalar(url, "SELECT count(*) FROM checks") == total
    assert await scalar(url, "SELECT count(DISTINCT check_id) FROM checks") == total
    assert await scalar(url, "SELECT sum(checks) FROM check_rollups") == total
    expected_up = sum(1 for check in checks if check.up)
    assert await scalar(url, "SELECT sum(up) FROM check_rollups") == expected_up
    assert await scalar(url, "SELECT sum(responses) FROM check_rollups") == total


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA and a client certificate signed by it, as a managed Kafka service hands them out."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make test certificates")
    files = {name: directory / name for name in ("ca.pem", "ca.key", "client.pem", "client.key")}

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(files["ca.key"]),
        "-out",
        str(files["ca.pem"]),
    )
    csr = directory / "client.csr"
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=errands",
        "-keyout",
        str(files["client.key"]),
        "-out",
        str(csr),
    )
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(files["ca.pem"]),
        "-CAkey",
        str(files["ca.key"]),
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        str(files["client.pem"]),
    )
    return files


def test_managed_kafka_settings_give_tls_with_a_client_certificate_and_sasl(
    tmp_path: Path,
) -> None:
    files = make_certificates(tmp_path)
    settings = Settings(
        kafka_bootstrap_servers="kafka.example.com:12345",
        kafka_security_protocol="SASL_SSL",
        kafka_ssl_cafile=files["ca.pem"],
        kafka_ssl_certfile=files["client.pem"],
        kafka_ssl_keyfile=files["client.key"],
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="avnadmin",
        kafka_sasl_password="secret",
    )
    options = kafka_options(settings)
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert [cert["subject"] for cert in context.get_ca_certs()] == [((("commonName", "test-ca"),),)]
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "avnadmin",
        "secret",
    )

    plain = kafka_options(Settings(kafka_bootstrap_servers="localhost:9092"))
    assert plain == {"security_protocol": "PLAINTEXT"}


def test_a_client_key_that_does_not_match_is_refused(tmp_path: Path) -> None:
    files = make_certificates(tmp_path)
    settings = Settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=files["ca.pem"],
        kafka_ssl_certfile=files["client.pem"],
        kafka_ssl_keyfile=files["ca.key"],
    )
    with pytest.raises(ssl.SSLError):
        kafka_options(settings)


def test_the_producer_is_idempotent_unless_switched_off() -> None:
    settings = Settings(kafka_bootstrap_servers="kafka.example.com:12345")
    assert producer_options(settings)["enable_idempotence"] is True
    assert producer_options(settings)["acks"] == "all"
    switched_off = settings.model_copy(update={"kafka_enable_idempotence": False})
    assert producer_options(switched_off)["enable_idempotence"] is False


async def test_an_idle_consumer_still_reports_its_lag(
    kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to read, the consumer yields empty batches carrying the lag asked of the
    broker, so the lag gauge and the consumer's health do not freeze at their last value."""
    monkeypatch.setattr(bus_module, "LAG_REFRESH_S", 0.2)
    stop = asyncio.Event()
    async with open_bus(kafka_settings) as bus:
        await bus.publish(b"k", b"only")
        async with aclosing(bus.consume(stop, max_messages=10)) as batches:
            first = await asyncio.wait_for(anext(batches), 30)
            assert [m.value for m in first.messages] == [b"only"]
            await first.commit()
            idle = await asyncio.wait_for(anext(batches), 30)
        assert idle.messages == []
        assert sum(idle.lag.values()) == 0
        assert len(idle.lag) == kafka_settings.kafka_topic_partitions
        assert bus.health().problem is None


def test_aiokafka_repeats_are_logged_once_per_interval() -> None:
    bus_module.limit_kafka_logs()
    logger = logging.getLogger("aiokafka.conn")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        for attempt in range(20):
            logger.error("Unable connect to %r: %s", "127.0.0.1:1", f"refused {attempt}")
        logger.error("Something else happened")
    finally:
        logger.removeHandler(handler)
    assert [record.getMessage() for record in records] == [
        "Unable connect to '127.0.0.1:1': refused 0",
        "Something else happened",
    ]
