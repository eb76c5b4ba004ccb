"""The check results bus: Kafka when bootstrap servers are set, an in-process queue otherwise.

Both sides see the same interface: `publish(key, value)` returns once the message is accepted
(for Kafka, acknowledged by all in-sync replicas), and `consume()` yields batches whose `commit()`
the consumer calls only after it has stored them, so a crash redelivers what was not stored.
"""

import asyncio
import ssl
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
    TopicAlreadyExistsError,
)
from aiokafka.helpers import create_ssl_context

from errands.config import Settings

__all__ = [
    "Batch",
    "Bus",
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


class Bus(Protocol):
    async def publish(self, key: bytes, value: bytes) -> None: ...

    def consume(
        self, stop: asyncio.Event, *, max_messages: int, linger_s: float
    ) -> AsyncGenerator[Batch, None]: ...


class MemoryBus:
    """An asyncio queue inside one process: the checker and the sink must run in that process.
    Messages not yet stored are lost if the process dies; Kafka is the durable choice."""

    def __init__(self, capacity: int = MEMORY_BUS_CAPACITY) -> None:
        self._queue: asyncio.Queue[Message] = asyncio.Queue(capacity)

    async def publish(self, key: bytes, value: bytes) -> None:
        await self._queue.put(Message(key, value))

    async def consume(
        self, stop: asyncio.Event, *, max_messages: int, linger_s: float
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
            # Linger a little so a burst is stored in one transaction rather than many.
            deadline = asyncio.get_running_loop().time() + linger_s
            while len(messages) < max_messages:
                if self._queue.empty():
                    remaining = deadline - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        break
                    with suppress(TimeoutError):
                        messages.append(await asyncio.wait_for(self._queue.get(), remaining))
                    continue
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
        **kafka_options(settings),
    }


class KafkaBus:
    """The producer starts on first publish and the consumer when `consume()` is iterated, so a
    process that only serves the API never connects to Kafka."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._servers = settings.kafka_bootstrap_servers or ""
        self._topic = settings.kafka_topic
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()
        self._topic_ready = False

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
        producer = self._producer or await self._started_producer()
        delivery = await producer.send(self._topic, value=value, key=key)
        await delivery

    async def consume(
        self, stop: asyncio.Event, *, max_messages: int, linger_s: float
    ) -> AsyncGenerator[Batch, None]:
        consumer = await self._started_consumer(stop, max_messages)
        if consumer is None:
            return
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(
                    timeout_ms=int(linger_s * 1000) or 1, max_records=max_messages
                )
                if not fetched:
                    continue
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
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


@asynccontextmanager
async def open_bus(settings: Settings) -> AsyncIterator[Bus]:
    """Kafka when `ERRANDS_KAFKA_BOOTSTRAP_SERVERS` is set, the in-process queue otherwise."""
    if not settings.kafka_bootstrap_servers:
        yield MemoryBus()
        return
    bus = KafkaBus(settings)
    try:
        yield bus
    finally:
        await bus.close()
