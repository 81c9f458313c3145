"""consume GROUP: take ids from the group's queue in FIFO order, send each email over SMTP and
record the outcome, then acknowledge.

Deliveries arrive in batches of up to the group's `batchSize` (RabbitMQ keeps up to `prefetch`
unacknowledged deliveries on their way, so the next batch is ready when this one ends). Per batch:
1. Read the batch's documents with one query.
2. Claim every (email id, attempt) pair with one insert into `delivery_claims`. Only the first
   insert of a pair wins, so an id delivered twice, or to two consumers, is sent at most once per
   attempt.
3. Send the claimed emails one at a time over the kept-open SMTP connection.
4. Record the outcomes (sent, retrying, dequeued) in MongoDB, publish retries to the delay queue
   for their attempt (with publisher confirms), and acknowledge the batch.
That makes three MongoDB commands per batch rather than three per email.

A consumer that dies leaves its deliveries unacknowledged, and RabbitMQ delivers them again. A
redelivered email whose outcome was recorded is acknowledged without sending. An email whose claim
exists but whose outcome was never recorded may have been accepted by the SMTP server just before
the consumer died. It is not sent again: after a grace period it is dequeued with the reason
"outcome unknown", so that a person can check and resend it. A dying consumer leaves at most one
batch in that state, the emails it had sent and those it had not yet tried alike. This keeps the
promise of never sending twice. A `batchSize` of 1 narrows the window to one email at the cost of
three MongoDB commands per email.

When the SMTP server cannot be reached or rejects the login, the outcomes so far are recorded and
the claims of the emails not yet sent are released. Those deliveries go back to the queue, and the
consumer pauses with a growing delay instead of using up every email's attempts.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from mailpipe import metrics
from mailpipe.adapters.mongo import Outcome, now_utc
from mailpipe.adapters.rabbitmq import Delivery
from mailpipe.adapters.smtp import Accepted
from mailpipe.backoff import backoff_delay_seconds
from mailpipe.config import PipelineSpec
from mailpipe.errors import PermanentError, RetryableError, ServiceUnavailableError, SmtpUnavailableError
from mailpipe.topology import dead_letter_queue_name, group_queues, retry_queue_name, work_queue_name

log = logging.getLogger(__name__)



class ConsumeStore(Protocol):
    def claim(self, keys: list[tuple[str, int]], *, consumer: str) -> set[tuple[str, int]]: ...
    def claim_of(self, email_id: str, attempt: int) -> dict[str, Any] | None: ...
    def release_claims(self, keys: list[tuple[str, int]], *, consumer: str) -> None: ...
    def emails_by_id(self, email_ids: list[str]) -> dict[str, dict[str, Any]]: ...
    def record_outcomes(self, outcomes: list[Outcome]) -> None: ...
    def dequeue(self, documents: list[dict[str, Any]], *, stage: str) -> None: ...


class ConsumeQueue(Protocol):
    def declare(self, queues: Any) -> None: ...
    def consume_batches(
        self, queue: str, *, prefetch: int, batch_size: int | None = ..., max_wait_seconds: float = ...
    ) -> Any: ...
    def cancel_consumer(self) -> None: ...
    def ack(self, delivery_tags: list[int]) -> None: ...
    def publish_ids(
        self, queue: str, email_ids: list[str], *, attempt: int = ..., expiration_ms: int | None = ...
    ) -> None: ...
    def serve_heartbeats(self) -> None: ...
    def get_batch(self, queue: str, *, max_count: int) -> list[Delivery]: ...
    def requeue(self, delivery_tags: list[int]) -> None: ...
    def sleep(self, seconds: float) -> None: ...


class Transport(Protocol):
    def send(self, *, envelope_from: str, envelope_to: str, message: bytes, smtputf8: bool) -> Accepted: ...
    def close(self) -> None: ...


@dataclass
class ConsumeResult:
    counts: dict[str, int] = field(default_factory=dict)
    batches: int = 0

    def add(self, outcome: str, amount: int = 1) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + amount


@dataclass
class _BatchWork:
    """Decisions of one batch, applied together at its end."""

    outcomes: list[Outcome] = field(default_factory=list)
    retries: list[tuple[str, int, float]] = field(default_factory=list)  # id, next attempt, delay
    dequeued: list[dict[str, Any]] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)


class Consumer:
    def __init__(
        self,
        group: str,
        *,
        spec: PipelineSpec,
        store: ConsumeStore,
        queue: ConsumeQueue,
        transport: Transport,
        name: str,
        clock: Callable[[], datetime] = now_utc,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.group = group
        self.spec = spec
        self.settings = spec.group(group)
        self.store = store
        self.queue = queue
        self.transport = transport
        self.name = name
        self.clock = clock
        self.draw = draw
        self.result = ConsumeResult()
        # A claim younger than this may belong to a consumer that is still sending its batch: each
        # email of the batch may take up to twice the SMTP timeout.
        self.in_flight_grace = timedelta(seconds=2 * spec.smtp.timeout_seconds * self.settings.batch_size + 10)
        self.dead_letter_check_seconds = 30.0

    def run(self, *, should_stop: Callable[[], bool], idle_exit_seconds: float | None = None) -> ConsumeResult:
        """Consume until `should_stop()` is true (checked between batches), or until the queue has
        been idle for `idle_exit_seconds` when that is given (tests, the benchmark)."""
        self.queue.declare(group_queues(self.group, spec=self.spec))
        log.info(
            "consume: %s consuming group %s (prefetch %d, batches of %d)",
            self.name, self.group, self.settings.prefetch, self.settings.batch_size,
        )
        idle_since = time.monotonic()
        next_dead_letter_check = time.monotonic()
        try:
            pause_seconds = 0.0
            batches = self.queue.consume_batches(
                work_queue_name(self.group), prefetch=self.settings.prefetch, batch_size=self.settings.batch_size
            )
            for batch in batches:
                if batch:
                    try:
                        self.handle_batch(batch)
                        pause_seconds = 0.0
                    except SmtpUnavailableError as error:
                        # The server is down or rejects the login: waiting helps every email, and
                        # retrying each one would only use up its attempts.
                        pause_seconds = min(60.0, max(1.0, pause_seconds * 2))
                        log.warning("consume: %s; pausing group %s for %.0f s", error.reason, self.group, pause_seconds)
                        self.queue.sleep(pause_seconds)
                    idle_since = time.monotonic()
                elif idle_exit_seconds is not None and time.monotonic() - idle_since > idle_exit_seconds:
                    break
                if time.monotonic() >= next_dead_letter_check:
                    self.handle_dead_letters()
                    next_dead_letter_check = time.monotonic() + self.dead_letter_check_seconds
                if should_stop():
                    break
        finally:
            self.queue.cancel_consumer()
            self.transport.close()
        log.info("consume: %s stopped after %d batches; outcomes %s", self.name, self.result.batches, self.result.counts)
        return self.result

    def handle_batch(self, batch: list[Delivery]) -> None:
        """Claim a batch's emails together, send them one at a time, then record every outcome and
        acknowledge the batch."""
        self.result.batches += 1
        work = _BatchWork()
        ids = [delivery.email_id for delivery in batch if delivery.email_id is not None]
        documents = self.store.emails_by_id(ids)
        candidates: list[tuple[Delivery, dict[str, Any]]] = []
        seen: set[tuple[str, int]] = set()
        for delivery in batch:
            document = self._sendable(delivery, documents, seen)
            if document is None:
                work.acks.append(delivery.delivery_tag)
            else:
                candidates.append((delivery, document))
        keys = [(str(document["_id"]), delivery.attempt) for delivery, document in candidates]
        try:
            claimed = self.store.claim(keys, consumer=self.name)
        except ServiceUnavailableError:
            # The claims may have been stored before the error. Nothing is sent yet, so they are
            # dropped if MongoDB is still reachable. Otherwise their emails end up "outcome unknown".
            self._keep_known(_BatchWork(), keys)
            raise
        for index, (delivery, document) in enumerate(candidates):
            try:
                if keys[index] in claimed:
                    self._deliver(delivery, document, work)
                else:
                    self._handle_unclaimed(delivery, document, work)
                work.acks.append(delivery.delivery_tag)
                self.queue.serve_heartbeats()
            except SmtpUnavailableError:
                # Nothing of this email or of the later ones was sent: their claims are released,
                # their deliveries go back to the queue untouched, and the consumer pauses.
                self.store.release_claims([key for key in keys[index:] if key in claimed], consumer=self.name)
                self._apply(work)
                self.queue.requeue([later.delivery_tag for later, _ in candidates[index:]])
                raise
            except Exception:
                # An unexpected error or a lost RabbitMQ connection: keep what is known, so that at
                # most this email ends up with an unknown outcome instead of the whole batch.
                self._keep_known(work, [key for key in keys[index + 1 :] if key in claimed])
                raise
        self._apply(work)

    def _keep_known(self, work: _BatchWork, untried: list[tuple[str, int]]) -> None:
        """Record the outcomes so far and release the claims of the emails not yet tried, if MongoDB
        and RabbitMQ are still reachable. Deliveries left unacknowledged come back from RabbitMQ."""
        try:
            self.store.release_claims(untried, consumer=self.name)
            self._apply(work)
        except Exception:  # noqa: BLE001 - the error that got here is the one to report
            log.exception("consume: %s could not record the outcomes of its batch before stopping", self.name)

    def _sendable(
        self, delivery: Delivery, documents: dict[str, dict[str, Any]], seen: set[tuple[str, int]]
    ) -> dict[str, Any] | None:
        """Return the document to send for a delivery, or None when there is nothing to send."""
        email_id = delivery.email_id
        if email_id is None:
            log.warning("consume: dropping malformed message %r from queue %s", delivery.raw_body, self.group)
            self._count("malformed")
            return None
        document = documents.get(email_id)
        if document is None:
            log.warning("consume: email %s not found in cron_emails; dropping its message", email_id)
            self._count("missing")
            return None
        if document.get("status") in ("sent", "dequeued") or (email_id, delivery.attempt) in seen:
            # Recorded already, or the same id twice in one batch (published again after a crash).
            self._count("duplicate")
            return None
        seen.add((email_id, delivery.attempt))
        return document

    def handle_dead_letters(self, *, max_count: int = 100) -> None:
        """Dequeue the emails whose ids RabbitMQ dead-lettered after too many deliveries.

        An id lands in `GROUP.dead` when its deliveries kept failing without an ack (a consumer
        crashing on it, say), so sending it again could crash again. It is recorded as failed
        instead, unless its outcome is already known.
        """
        deliveries = self.queue.get_batch(dead_letter_queue_name(self.group), max_count=max_count)
        if not deliveries:
            return
        work = _BatchWork()
        ids = [delivery.email_id for delivery in deliveries if delivery.email_id]
        documents = self.store.emails_by_id(ids)
        for delivery in deliveries:
            work.acks.append(delivery.delivery_tag)
            document = documents.get(delivery.email_id or "")
            if document is None or document.get("status") in ("sent", "dequeued"):
                continue
            reason = (
                f"delivered {self.spec.rabbitmq.delivery_limit} times without an acknowledgement"
                " (RabbitMQ's delivery limit); not sent again"
            )
            log.warning("consume: email %s dead-lettered: %s", document["_id"], reason)
            self._dequeue(document, attempt=delivery.attempt, reason=reason, smtp_code=None, at=self.clock(), work=work)
        self._apply(work)

    def _deliver(self, delivery: Delivery, document: dict[str, Any], work: _BatchWork) -> None:
        email_id = document["_id"]
        if document.get("status") in ("sent", "dequeued"):
            self._count("duplicate")
            return
        if "message" not in document:
            # Not rendered yet: the publisher marks an email queued only after storing its message.
            log.warning("consume: email %s has no rendered message (status %s); skipping", email_id, document.get("status"))
            self._count("missing")
            return
        started = time.perf_counter()
        try:
            accepted = self.transport.send(
                envelope_from=document["envelope_from"],
                envelope_to=document["envelope_to"],
                message=bytes(document["message"]),
                smtputf8=bool(document.get("smtputf8")),
            )
        except SmtpUnavailableError:
            raise
        except RetryableError as error:
            self._fail(delivery, document, error, work, retryable=True)
            return
        except PermanentError as error:
            self._fail(delivery, document, error, work, retryable=False)
            return
        finally:
            metrics.SEND_DURATION.labels(group=self.group).observe(time.perf_counter() - started)
        now = self.clock()
        work.outcomes.append(Outcome(email_id=email_id, status="sent", at=now, attempt=delivery.attempt, reason=accepted.reply))
        requested_at = document.get("requested_at")
        if isinstance(requested_at, datetime):
            metrics.END_TO_END_LATENCY.labels(group=self.group).observe(max(0.0, (now - requested_at).total_seconds()))
        self._count("sent")

    def _fail(
        self, delivery: Delivery, document: dict[str, Any], error: RetryableError | PermanentError,
        work: _BatchWork, *, retryable: bool,
    ) -> None:
        email_id = document["_id"]
        now = self.clock()
        attempt = delivery.attempt
        if retryable and attempt < self.spec.retry.max_attempts:
            delay = backoff_delay_seconds(attempt, policy=self.spec.retry, random_value=self.draw())
            log.info(
                "consume: email %s attempt %d/%d failed (%s); retrying in %.1f s",
                email_id, attempt, self.spec.retry.max_attempts, error.reason, delay,
            )
            work.outcomes.append(Outcome(email_id, "retrying", now, attempt, error.reason, error.smtp_code))
            work.retries.append((email_id, attempt + 1, delay))
            metrics.RETRIES.labels(group=self.group).inc()
            self._count("retried")
            return
        cause = "attempts exhausted" if retryable else "permanent failure"
        log.warning("consume: email %s dequeued after attempt %d (%s): %s", email_id, attempt, cause, error.reason)
        self._dequeue(document, attempt=attempt, reason=error.reason, smtp_code=error.smtp_code, at=now, work=work)

    def _handle_unclaimed(self, delivery: Delivery, document: dict[str, Any], work: _BatchWork) -> None:
        """Decide about an id whose claim for this attempt another delivery took first."""
        email_id = document["_id"]
        recorded_attempts = int(document.get("attempt_count", 0))
        if document.get("status") == "retrying" and recorded_attempts == delivery.attempt:
            # This attempt failed and was recorded, but the consumer that recorded it may have
            # stopped before publishing the next attempt. Unless the next attempt is claimed
            # already, it is published again: harmless, since claims send each attempt once.
            if self.store.claim_of(email_id, delivery.attempt + 1) is None:
                delay = backoff_delay_seconds(delivery.attempt, policy=self.spec.retry, random_value=self.draw())
                work.retries.append((email_id, delivery.attempt + 1, delay))
            self._count("duplicate")
            return
        if document.get("status") in ("sent", "dequeued") or recorded_attempts >= delivery.attempt:
            # This attempt's outcome is recorded: the delivery is a duplicate.
            self._count("duplicate")
            return
        claim = self.store.claim_of(email_id, delivery.attempt)
        claimed_at = claim.get("claimed_at") if claim else None
        now = self.clock()
        if isinstance(claimed_at, datetime) and now - claimed_at < self.in_flight_grace:
            # The claimer may still be sending: look again after a delay, without a new attempt.
            delay = self.spec.retry.initial_delay_seconds
            work.retries.append((email_id, delivery.attempt, delay))
            self._count("recheck")
            return
        owner = claim.get("consumer") if claim else "unknown"
        reason = (
            f"outcome unknown: consumer {owner} claimed attempt {delivery.attempt} and stopped before recording"
            " a result; not sent again, to avoid a duplicate"
        )
        log.warning("consume: email %s: %s", email_id, reason)
        self._dequeue(document, attempt=delivery.attempt, reason=reason, smtp_code=None, at=now, work=work)

    def _dequeue(
        self, document: dict[str, Any], *, attempt: int, reason: str, smtp_code: int | None, at: datetime, work: _BatchWork
    ) -> None:
        failed = dict(document)
        failed["attempts"] = [
            *document.get("attempts", []),
            {"attempt": attempt, "at": at, "reason": reason, "smtp_code": smtp_code},
        ]
        failed["dequeue_reason"] = reason
        failed["attempt_count"] = attempt
        work.dequeued.append(failed)
        metrics.DEQUEUED.labels(group=self.group, stage="consume").inc()
        self._count("dequeued")

    def _apply(self, work: _BatchWork) -> None:
        # Order matters: outcomes and retries are durable before the deliveries are acknowledged.
        self.store.record_outcomes(work.outcomes)
        for email_id, attempt, delay in work.retries:
            self.queue.publish_ids(
                retry_queue_name(self.group, min(max(attempt - 1, 1), self.spec.retry.max_attempts - 1)),
                [email_id],
                attempt=attempt,
                expiration_ms=max(1, int(delay * 1000)),
            )
        self.store.dequeue(work.dequeued, stage="consume")
        if work.acks:
            self.queue.ack(work.acks)

    def _count(self, outcome: str) -> None:
        self.result.add(outcome)
        metrics.DELIVERIES.labels(group=self.group, outcome=outcome).inc()
