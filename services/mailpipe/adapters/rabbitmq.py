"""AMQP access to RabbitMQ with pika: declaring a group's queues, publishing ids with publisher
confirms, and consuming deliveries in batches.

Every publish waits for the broker's confirm, so an id that `publish_ids` returned for is on disk
in the queue. pika errors become ServiceUnavailableError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from mailpipe.errors import ServiceUnavailableError
from mailpipe.topology import QueueDefinition

log = logging.getLogger(__name__)

ATTEMPT_HEADER = "x-mailpipe-attempt"
PERSISTENT = pika.DeliveryMode.Persistent


@dataclass(frozen=True)
class Delivery:
    """One message taken from a queue: a document id and the attempt it is for."""

    delivery_tag: int
    email_id: str | None  # None when the body is not a valid id
    attempt: int
    redelivered: bool
    raw_body: bytes


class QueueClient:
    """One AMQP connection and one channel in confirm mode."""

    def __init__(self, url: str, *, heartbeat_seconds: int = 30, name: str = "mailpipe") -> None:
        parameters = pika.URLParameters(url)
        parameters.heartbeat = heartbeat_seconds
        parameters.blocked_connection_timeout = 60
        parameters.client_properties = {"connection_name": name}
        try:
            self._connection = pika.BlockingConnection(parameters)
            self._channel: BlockingChannel = self._connection.channel()
            self._channel.confirm_delivery()
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"cannot connect to RabbitMQ: {error!r}") from error
        # Delivery tags handed out and not yet acked or requeued: from the subscription, and from
        # basic.get. Deliveries that pika received but has not handed out yet are in neither.
        self._consumed: set[int] = set()
        self._fetched: set[int] = set()
        self._heartbeats_served_at = 0.0

    def close(self) -> None:
        try:
            if self._connection.is_open:
                self._connection.close()
        except pika.exceptions.AMQPError:
            # The connection is already gone; unacked deliveries return to their queue either way.
            pass

    def declare(self, queues: Sequence[QueueDefinition]) -> None:
        try:
            for queue in queues:
                self._channel.queue_declare(queue.name, durable=queue.durable, arguments=dict(queue.arguments))
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"declaring queues failed: {error!r}") from error

    def publish_ids(
        self,
        queue: str,
        email_ids: Sequence[str],
        *,
        attempt: int = 1,
        expiration_ms: int | None = None,
    ) -> None:
        """Publish each id as a persistent message and wait for every confirm.

        Raises ServiceUnavailableError when the broker rejects or cannot route a message. Ids
        before the failing one are queued, so callers must treat the whole call as retryable.
        """
        properties = pika.BasicProperties(
            delivery_mode=PERSISTENT,
            content_type="text/plain",
            headers={ATTEMPT_HEADER: attempt},
            expiration=str(expiration_ms) if expiration_ms is not None else None,
        )
        try:
            for email_id in email_ids:
                self._channel.basic_publish("", queue, email_id.encode("utf-8"), properties, mandatory=True)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as error:
            raise ServiceUnavailableError(f"RabbitMQ did not accept a message for queue {queue!r}: {error!r}") from error
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"publishing to queue {queue!r} failed: {error!r}") from error

    def queue_depth(self, queue: str) -> int:
        """Return the ready messages of a queue (passive declare; unacked ones are not counted)."""
        try:
            result = self._channel.queue_declare(queue, passive=True)
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"reading the depth of queue {queue!r} failed: {error!r}") from error
        return int(result.method.message_count)

    def purge(self, queue: str) -> None:
        try:
            self._channel.queue_purge(queue)
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"purging queue {queue!r} failed: {error!r}") from error

    def consume_batches(
        self, queue: str, *, prefetch: int, batch_size: int | None = None, max_wait_seconds: float = 0.05
    ) -> Iterator[list[Delivery]]:
        """Yield batches of up to `batch_size` deliveries (default: `prefetch`). A batch closes early
        after `max_wait_seconds` without a new message. An empty batch is yielded when the queue is
        idle, so the caller can check whether to stop. Heartbeats are served while this waits.

        With `prefetch` above `batch_size`, RabbitMQ keeps sending while the caller works on a batch."""
        size = min(batch_size or prefetch, prefetch)
        try:
            self._channel.basic_qos(prefetch_count=prefetch)
            batch: list[Delivery] = []
            for method, properties, body in self._channel.consume(queue, inactivity_timeout=max_wait_seconds):
                if method is None:
                    yield batch
                    batch = []
                    continue
                batch.append(_delivery(method, properties, body))
                self._consumed.add(method.delivery_tag)
                if len(batch) >= size:
                    yield batch
                    batch = []
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"consuming from queue {queue!r} failed: {error!r}") from error

    def get_batch(self, queue: str, *, max_count: int) -> list[Delivery]:
        """Take up to `max_count` messages from a queue without subscribing (basic.get)."""
        deliveries = []
        try:
            for _ in range(max_count):
                method, properties, body = self._channel.basic_get(queue)
                if method is None:
                    break
                deliveries.append(_delivery(method, properties, body))
                self._fetched.add(method.delivery_tag)
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"reading from queue {queue!r} failed: {error!r}") from error
        return deliveries

    def cancel_consumer(self) -> None:
        """Stop receiving; prefetched, unacked deliveries return to the queue."""
        try:
            self._channel.cancel()
        except pika.exceptions.AMQPError as error:
            log.warning("cancelling the consumer failed: %r", error)

    def ack(self, delivery_tags: Sequence[int]) -> None:
        """Acknowledge deliveries, with one frame when that frame cannot cover any other delivery.

        A multiple ack covers every delivery up to its tag. Only subscription deliveries qualify:
        they are handed out in tag order, so those that pika has not handed out have higher tags. A
        basic.get delivery is acked alone, since subscription deliveries not handed out yet may have
        lower tags than it."""
        if not delivery_tags:
            return
        tags = set(delivery_tags)
        highest = max(tags)
        single_frame = tags <= self._consumed and tags == {
            tag for tag in self._consumed | self._fetched if tag <= highest
        }
        try:
            if single_frame:
                self._channel.basic_ack(highest, multiple=True)
            else:
                for tag in sorted(tags):
                    self._channel.basic_ack(tag)
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"acknowledging deliveries failed: {error!r}") from error
        self._consumed -= tags
        self._fetched -= tags

    def requeue(self, delivery_tags: Sequence[int]) -> None:
        """Return deliveries to their queue unhandled (basic.nack with requeue)."""
        try:
            for tag in delivery_tags:
                self._channel.basic_nack(tag, requeue=True)
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"returning deliveries to the queue failed: {error!r}") from error
        self._consumed -= set(delivery_tags)
        self._fetched -= set(delivery_tags)

    def sleep(self, seconds: float) -> None:
        """Wait while still sending and receiving the broker's heartbeats."""
        try:
            self._connection.sleep(seconds)
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"the RabbitMQ connection failed: {error!r}") from error

    def serve_heartbeats(self) -> None:
        """Process pending heartbeats so that long work between batches does not drop the connection.

        Calls within a second of the last one return at once, well inside the heartbeat timeout
        (30 s by default)."""
        now = time.monotonic()
        if now - self._heartbeats_served_at < 1.0:
            return
        self._heartbeats_served_at = now
        try:
            self._connection.process_data_events(time_limit=0)
        except pika.exceptions.AMQPError as error:
            raise ServiceUnavailableError(f"the RabbitMQ connection failed: {error!r}") from error


def _delivery(method: Any, properties: Any, body: bytes) -> Delivery:
    headers = properties.headers or {}
    attempt = headers.get(ATTEMPT_HEADER, 1)
    if not isinstance(attempt, int) or attempt < 1:
        attempt = 1
    try:
        email_id: str | None = body.decode("utf-8")
        if not email_id or len(email_id) > 200 or not email_id.isprintable():
            email_id = None
    except UnicodeDecodeError:
        email_id = None
    return Delivery(
        delivery_tag=method.delivery_tag,
        email_id=email_id,
        attempt=attempt,
        redelivered=bool(method.redelivered),
        raw_body=body[:200],
    )
