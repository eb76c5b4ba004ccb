"""The check results bus: Kafka when bootstrap servers are set, an in-process queue otherwise.

Both sides see the same interface: `publish(key, value)` returns once the message is accepted,
and `consume()` yields batches whose `commit()` the consumer calls only after it has stored them,
so a crash redelivers what was not stored.

With Kafka, "accepted" means acknowledged by all in-sync replicas, or, while the broker is out of
reach, kept in a bounded queue in this process and sent in order once it is back: a publisher
waits at most `ERRANDS_KAFKA_PUBLISH_WAIT_S`, so an outage delays results instead of holding the
checker. A message that finds the queue full is dropped and counted.
"""

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context

from errands.config import Settings
from errands.core.metrics import (
    BUS_LAST_CONSUME,
    BUS_LAST_PUBLISH,
    BUS_PUBLISH_DROPPED,
    BUS_PUBLISH_FAILURES,
    BUS_PUBLISH_QUEUED,
)

__all__ = [
    "Batch",
    "Bus",
    "BusHealth",
    "KafkaBus",
    "MemoryBus",
    "Message",
    "kafka_options",
    "open_bus",
    "producer_options",
]

log = structlog.get_logger(__name__)

# Without Kafka, a full queue makes the publisher wait rather than grow memory without bound.
MEMORY_BUS_CAPACITY = 100_000
# A topic this process creates is replicated to this many brokers, or all if there are fewer.
MAX_REPLICATION_FACTOR = 3
# A consumer that cannot reach Kafka tries again this often, as the sink does with its database.
CONNECT_RETRY_S = 5.0
# Messages handed to the producer at once, and the pause before sending them again after a
# failure (doubling up to the maximum).
SEND_BATCH_MAX = 1000
SEND_RETRY_BASE_S = 0.5
SEND_RETRY_MAX_S = 5.0
# An idle consumer asks the broker for the end of its partitions this often, so the lag gauge
# and the consumer's health stay current while no message arrives.
LAG_REFRESH_S = 5.0
# How long one poll of an idle consumer waits (a message ends the wait at once); also how soon
# it notices a stop.
IDLE_POLL_MS = 200
# The longest a broker may hold a fetch waiting for messages. Kafka answers as soon as one is
# there; Tansu waits the whole time, which at the client's default (500 ms) added 130 ms to
# every message's way to the sink.
FETCH_MAX_WAIT_MS = 50
# Kafka is reported unhealthy once its last success is older than this.
HEALTH_STALE_S = 15.0
# aiokafka logs each failed connection attempt; one line per message text per this long is kept.
KAFKA_LOG_EVERY_S = 30.0


@dataclass(frozen=True)
class Message:
    key: bytes
    value: bytes


async def _nothing_to_commit() -> None:
    return None


@dataclass
class Batch:
    """Messages to store, then `commit()`. `lag` is messages not yet read, per partition."""

    messages: list[Message]
    commit: Callable[[], Awaitable[None]] = _nothing_to_commit
    lag: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class BusHealth:
    """What `/readyz` reports of the bus: `problem` is None while it works."""

    problem: str | None = None
    queued: int = 0


class Bus(Protocol):
    async def publish(self, key: bytes, value: bytes) -> None: ...

    def consume(self, stop: asyncio.Event, *, max_messages: int) -> AsyncGenerator[Batch, None]:
        """Batches of what has arrived, as soon as there is one message: while the consumer
        stores a batch the next one gathers, so batches grow with the load and none waits."""
        ...

    def health(self) -> BusHealth: ...


class MemoryBus:
    """An asyncio queue inside one process: the checker and the sink must run in that process.
    Messages not yet stored are lost if the process dies; Kafka is the durable choice."""

    def __init__(self, capacity: int = MEMORY_BUS_CAPACITY) -> None:
        self._queue: asyncio.Queue[Message] = asyncio.Queue(capacity)

    async def publish(self, key: bytes, value: bytes) -> None:
        await self._queue.put(Message(key, value))

    def health(self) -> BusHealth:
        return BusHealth(queued=self._queue.qsize())

    async def consume(
        self, stop: asyncio.Event, *, max_messages: int
    ) -> AsyncGenerator[Batch, None]:
        while not stop.is_set():
            first = asyncio.ensure_future(self._queue.get())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({first, stopping}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not first.done():
                first.cancel()
                return
            messages = [first.result()]
            while len(messages) < max_messages and not self._queue.empty():
                messages.append(self._queue.get_nowait())
            yield Batch(messages, lag={0: self._queue.qsize()})


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options for a managed Kafka: TLS with a CA and a client certificate, and SASL
    when a mechanism is set."""
    options: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
        options["ssl_context"] = context
    if settings.kafka_sasl_mechanism is not None:
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password
    return options


def producer_options(settings: Settings) -> dict[str, Any]:
    """Every message acknowledged by all in-sync replicas, and written once however often the
    producer retries it unless idempotence is switched off (for brokers without it)."""
    return {
        "acks": "all",
        "enable_idempotence": settings.kafka_enable_idempotence,
        "linger_ms": 5,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        **kafka_options(settings),
    }


@dataclass
class _Outgoing:
    message: Message
    sent: asyncio.Future[None]


class KafkaBus:
    """The producer starts on first publish and the consumer when `consume()` is iterated, so a
    process that only serves the API never connects to Kafka.

    One sender task hands queued messages to the producer in order and, when a send fails,
    sends them again from the first unacknowledged one, so results of one monitor keep their
    order; a message the broker stored before the failure may be stored twice, which the sink
    absorbs (it is idempotent on the check id)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._servers = settings.kafka_bootstrap_servers or ""
        self._topic = settings.kafka_topic
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._topic_ready = False
        self._queue: deque[_Outgoing] = deque()
        self._queued = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._publishing_since: float | None = None  # monotonic time of the first publish
        self._last_published: float | None = None
        self._publish_error: str | None = None
        self._consuming_since: float | None = None
        self._last_consumed: float | None = None
        self._consume_error: str | None = None
        self._dropped_unreported = 0
        self._last_drop_report = -KAFKA_LOG_EVERY_S

    async def _ensure_topic(self) -> None:
        """Create the topic if it is missing; a managed service may forbid this and have it
        created by its operator instead, which is fine."""
        if self._topic_ready:
            return
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self._servers, **kafka_options(self._settings)
        )
        try:
            await admin.start()
            if self._topic not in await admin.list_topics():
                cluster = await admin.describe_cluster()
                topic = NewTopic(
                    self._topic,
                    num_partitions=self._settings.kafka_topic_partitions,
                    replication_factor=min(MAX_REPLICATION_FACTOR, len(cluster["brokers"])),
                )
                with suppress(TopicAlreadyExistsError):
                    await admin.create_topics([topic])
        except KafkaConnectionError:
            raise  # Kafka itself is unreachable: nothing is known about the topic yet
        except KafkaError as error:
            log.warning("kafka_topic_not_created", topic=self._topic, error=repr(error))
        finally:
            await admin.close()
        self._topic_ready = True

    async def _started_producer(self) -> AIOKafkaProducer:
        async with self._starting:
            if self._producer is None:
                await self._ensure_topic()
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._servers, **producer_options(self._settings)
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def publish(self, key: bytes, value: bytes) -> None:
        """Queue the message and wait for its acknowledgement, at most the publish wait."""
        if self._sender is None:
            self._publishing_since = time.monotonic()
            self._sender = asyncio.create_task(self._send_queued(), name="kafka:sender")
        if len(self._queue) >= self._settings.kafka_publish_queue_max:
            self._drop_one()
            return
        outgoing = _Outgoing(Message(key, value), asyncio.get_running_loop().create_future())
        self._queue.append(outgoing)
        BUS_PUBLISH_QUEUED.set(len(self._queue))
        self._queued.set()
        with suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.shield(outgoing.sent), self._settings.kafka_publish_wait_s
            )

    def _drop_one(self) -> None:
        """Count a message refused by the full queue; log one line per `KAFKA_LOG_EVERY_S`
        with how many there were since the last."""
        BUS_PUBLISH_DROPPED.inc()
        self._dropped_unreported += 1
        now = time.monotonic()
        if now - self._last_drop_report >= KAFKA_LOG_EVERY_S:
            log.error(
                "kafka_publish_dropped", messages=self._dropped_unreported, reason="queue full"
            )
            self._dropped_unreported, self._last_drop_report = 0, now

    async def _send_queued(self) -> None:
        failures = 0
        while True:
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
            batch = [self._queue[n] for n in range(min(len(self._queue), SEND_BATCH_MAX))]
            try:
                await self._send(batch)
            except (KafkaError, OSError) as error:
                failures += 1
                self._topic_ready = False  # a broker that lost its data lost the topic too
                self._publish_error = f"{type(error).__name__}: {error}".rstrip(": ")
                BUS_PUBLISH_FAILURES.inc(len(batch))
                log.warning(
                    "kafka_publish_failed",
                    messages=len(batch),
                    queued=len(self._queue),
                    error=self._publish_error,
                )
                await asyncio.sleep(min(SEND_RETRY_BASE_S * 2 ** (failures - 1), SEND_RETRY_MAX_S))
                continue
            if failures:
                log.info("kafka_publish_resumed", after_failures=failures)
            failures = 0
            self._publish_error = None
            self._last_published = time.monotonic()
            BUS_LAST_PUBLISH.set_to_current_time()
            for outgoing in batch:
                self._queue.popleft()
                if not outgoing.sent.done():
                    outgoing.sent.set_result(None)
            BUS_PUBLISH_QUEUED.set(len(self._queue))

    async def _send(self, batch: list[_Outgoing]) -> None:
        """Hand a batch to the producer and wait until all of it is acknowledged, at most the
        request timeout (aiokafka's own waits, for metadata among others, can be longer)."""
        timeout_s = self._settings.kafka_request_timeout_ms / 1000
        try:
            async with asyncio.timeout(timeout_s):
                await self._ensure_topic()
                producer = self._producer or await self._started_producer()
                deliveries = [
                    await producer.send(self._topic, value=o.message.value, key=o.message.key)
                    for o in batch
                ]
                await asyncio.gather(*deliveries)
        except TimeoutError:
            raise KafkaTimeoutError(f"not acknowledged within {timeout_s:g} s") from None

    def health(self) -> BusHealth:
        """A problem while the last publish or consume failed, or succeeded too long ago while
        there was something to do."""
        now = time.monotonic()
        problems = []
        if self._queue and _stale(self._last_published, self._publishing_since, now):
            problems.append(f"publishing: {self._publish_error or 'no acknowledgement'}")
        if _stale(self._last_consumed, self._consuming_since, now):
            problems.append(f"consuming: {self._consume_error or 'no answer from Kafka'}")
        return BusHealth(problem="; ".join(problems) or None, queued=len(self._queue))

    async def consume(
        self, stop: asyncio.Event, *, max_messages: int
    ) -> AsyncGenerator[Batch, None]:
        """Batches of messages; while none arrive, an empty batch every `LAG_REFRESH_S` carries
        the lag read from the broker, so a stalled topic and an unreachable Kafka both show."""
        self._consuming_since = time.monotonic()
        consumer = await self._started_consumer(stop, max_messages)
        if consumer is None:
            return
        next_refresh = time.monotonic() + LAG_REFRESH_S
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=IDLE_POLL_MS, max_records=max_messages)
                if not fetched:
                    if time.monotonic() >= next_refresh:
                        next_refresh = time.monotonic() + LAG_REFRESH_S
                        lag = await self._idle_lag(consumer)
                        if lag is not None:
                            yield Batch([], lag=lag)
                    continue
                self._consumed()
                messages = [
                    Message(record.key or b"", record.value or b"")
                    for records in fetched.values()
                    for record in records
                ]
                offsets = {tp: records[-1].offset + 1 for tp, records in fetched.items()}
                lag = {
                    tp.partition: max((consumer.highwater(tp) or 0) - offsets[tp], 0)
                    for tp in fetched
                }
                yield Batch(messages, commit=self._committer(consumer, offsets), lag=lag)
        finally:
            await consumer.stop()

    async def _idle_lag(self, consumer: AIOKafkaConsumer) -> dict[int, int] | None:
        """Messages behind the end of each assigned partition, asked of the broker; None (and
        the consumer reported unhealthy) when it does not answer."""
        partitions = list(consumer.assignment())
        try:
            async with asyncio.timeout(self._settings.kafka_request_timeout_ms / 1000):
                ends = await consumer.end_offsets(partitions) if partitions else {}
                positions = {tp: await consumer.position(tp) for tp in partitions}
        except (KafkaError, OSError, TimeoutError) as error:
            self._consume_error = f"{type(error).__name__}: {error}".rstrip(": ")
            log.warning("kafka_consume_stalled", error=self._consume_error)
            return None
        self._consumed()
        return {tp.partition: max(ends[tp] - positions[tp], 0) for tp in partitions}

    def _consumed(self) -> None:
        self._last_consumed = time.monotonic()
        self._consume_error = None
        BUS_LAST_CONSUME.set_to_current_time()

    async def _started_consumer(
        self, stop: asyncio.Event, max_messages: int
    ) -> AIOKafkaConsumer | None:
        """A consumer of the group, started once Kafka answers; None when `stop` comes first."""
        while not stop.is_set():
            consumer = AIOKafkaConsumer(
                self._topic,
                bootstrap_servers=self._servers,
                group_id=self._settings.kafka_group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=max_messages,
                fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                # A dead sink's partitions move to the others after this long without heartbeats.
                session_timeout_ms=self._settings.kafka_session_timeout_ms,
                heartbeat_interval_ms=self._settings.kafka_session_timeout_ms // 3,
                **kafka_options(self._settings),
            )
            try:
                await self._ensure_topic()
                await consumer.start()
                return consumer
            except BaseException as error:
                await consumer.stop()
                if not isinstance(error, KafkaConnectionError):
                    raise
                log.warning("kafka_unreachable", servers=self._servers, error=str(error))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CONNECT_RETRY_S)
        return None

    @staticmethod
    def _committer(
        consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
    ) -> Callable[[], Awaitable[None]]:
        async def commit() -> None:
            try:
                await consumer.commit(offsets)
            except CommitFailedError as error:
                # The group rebalanced while this batch was being stored: its new owner reads
                # it again, and storing is idempotent on the check id.
                log.warning("kafka_commit_failed", error=str(error))

        return commit

    async def close(self) -> None:
        """Send what is queued, for at most the shutdown grace; what is left then is lost with
        the process, and counted."""
        if self._queue:
            with suppress(TimeoutError):
                async with asyncio.timeout(self._settings.shutdown_grace_s):
                    await asyncio.gather(*(outgoing.sent for outgoing in list(self._queue)))
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
            self._sender = None
        if self._queue:
            log.warning("kafka_publish_abandoned", messages=len(self._queue))
            BUS_PUBLISH_DROPPED.inc(len(self._queue))
            self._queue.clear()
            BUS_PUBLISH_QUEUED.set(0)
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


def _stale(last_success: float | None, since: float | None, now: float) -> bool:
    """Nothing has worked for `HEALTH_STALE_S`: counted from the last success, or from the start
    when there was none yet; never stale for a side that was not used."""
    reference = last_success if last_success is not None else since
    return reference is not None and now - reference > HEALTH_STALE_S


class _OncePerInterval(logging.Filter):
    """Lets a given message text of a logger through once per interval: aiokafka logs every
    failed connection attempt, many a second while a broker is down."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        if now - self._last.get(key, -self.interval_s) < self.interval_s:
            return False
        self._last[key] = now
        return True


def limit_kafka_logs(interval_s: float = KAFKA_LOG_EVERY_S) -> None:
    """Install the filter on each of aiokafka's loggers (a logger's filters do not see what its
    children log), once per process."""
    names = [name for name in logging.root.manager.loggerDict if name.startswith("aiokafka")]
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OncePerInterval) for f in logger.filters):
            logger.addFilter(_OncePerInterval(interval_s))


@asynccontextmanager
async def open_bus(settings: Settings) -> AsyncIterator[Bus]:
    """Kafka when `ERRANDS_KAFKA_BOOTSTRAP_SERVERS` is set, the in-process queue otherwise."""
    if not settings.kafka_bootstrap_servers:
        yield MemoryBus()
        return
    limit_kafka_logs()
    bus = KafkaBus(settings)
    try:
        yield bus
    finally:
        await bus.close()
