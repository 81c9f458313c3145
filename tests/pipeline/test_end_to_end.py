"""The data plane end to end on the real servers: MariaDB, FerretDB, RabbitMQ and SMTP."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mailpipe.adapters.mongo import MailStore
from mailpipe.adapters.rabbitmq import QueueClient
from mailpipe.adapters.smtp import SmtpTransport
from mailpipe.errors import ServiceUnavailableError

from pipeline_harness import FaultySmtpServer, Harness, SinkServer, free_port

pytestmark = pytest.mark.services


def _campaign_for(harness: Harness, count: int, *, subject: str = "Hello {{ first_name }}") -> list[int]:
    template = harness.add_template(subject=subject, text="Hi {{ first_name }}, news for you.",
                                    html="<p>Hi {{ first_name }}</p>")
    user_ids = harness.add_users([{"email": f"user{number}@example.com", "first_name": f"Name{number}"}
                                  for number in range(count)])
    harness.add_campaign(template)
    return user_ids


def _publish_campaign(harness: Harness, count: int) -> None:
    """Make a campaign to `count` new users, then populate and publish it."""
    _campaign_for(harness, count)
    harness.populate()
    harness.publish()


def test_emails_arrive_exactly_once_with_headers(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    _publish_campaign(harness, 40)
    harness.consume()

    messages = smtp_sink.messages()
    recipients = collections.Counter(str(message["To"]) for message in messages)
    assert len(messages) == 40
    assert all(count == 1 for count in recipients.values())
    assert len({message["Message-ID"] for message in messages}) == 40
    first = next(message for message in messages if "user7@example.com" in str(message["To"]))
    assert first["Subject"] == "Hello Name7"
    assert first["Message-ID"] == harness.document(first["X-Mailpipe-Id"])["message_id"]
    assert harness.statuses() == {"sent": 40}


def test_rerunning_populate_and_publish_adds_nothing(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    _campaign_for(harness, 25)

    harness.populate()
    harness.populate()
    first = harness.publish()
    second = harness.publish()
    harness.consume()

    assert harness.store.emails.count_documents({}) == 25
    assert first.queued == 25
    assert second.queued == 0
    assert len(smtp_sink.messages()) == 25


def test_transient_failures_are_retried_then_sent(harness: Harness, faulty_smtp: Any) -> None:
    server: FaultySmtpServer = faulty_smtp(fail_first=2)
    harness = harness.with_smtp(server.url)
    _publish_campaign(harness, 3)
    harness.consume()

    assert harness.statuses() == {"sent": 3}
    assert all(attempts == 3 for attempts in server.attempts.values())
    assert len(server.accepted) == 3
    document = harness.document(f"c1u{1}")
    assert document["attempt_count"] == 3
    assert [attempt["smtp_code"] for attempt in document["attempts"]] == [451, 451]


class _StopsBeforeRetry(QueueClient):
    """A consumer connection whose process dies when it first publishes a retry."""

    def publish_ids(self, queue: str, email_ids: Any, **options: Any) -> None:
        if options.get("attempt", 1) > 1:
            raise KeyboardInterrupt("simulated consumer death between recording and retrying")
        super().publish_ids(queue, email_ids, **options)


def test_lost_retry_is_published_again(harness: Harness, faulty_smtp: Any) -> None:
    server: FaultySmtpServer = faulty_smtp(fail_first=1)
    harness = harness.with_smtp(server.url).with_batch_size(1)
    _publish_campaign(harness, 1)

    with pytest.raises(KeyboardInterrupt):
        harness.consume(queue=_StopsBeforeRetry(harness.config.connections.rabbitmq_url))
    recorded = harness.document("c1u1")
    harness.consume()

    assert recorded["status"] == "retrying"
    assert harness.statuses() == {"sent": 1}
    assert harness.document("c1u1")["attempt_count"] == 2
    assert len(server.accepted) == 1


def test_always_failing_server_dequeues_after_five(harness: Harness, faulty_smtp: Any) -> None:
    server: FaultySmtpServer = faulty_smtp(fail_first=1000)
    harness = harness.with_smtp(server.url)
    _publish_campaign(harness, 2)
    harness.consume()

    dequeued = harness.dequeued()
    assert harness.statuses() == {"dequeued": 2}
    assert len(dequeued) == 2
    for document in dequeued.values():
        assert len(document["attempts"]) == 5
        assert all(attempt["smtp_code"] == 451 for attempt in document["attempts"])
        assert document["email"]["message_id"]
    assert all(attempts == 5 for attempts in server.attempts.values())


def test_server_closing_connection_is_reconnected(harness: Harness, faulty_smtp: Any) -> None:
    server: FaultySmtpServer = faulty_smtp(close_after=3)
    harness = harness.with_smtp(server.url)
    _publish_campaign(harness, 10)
    consumer = harness.consume()

    assert harness.statuses() == {"sent": 10}
    assert len(server.accepted) == 10
    assert consumer.transport.connections_opened >= 4  # type: ignore[attr-defined]


class _CrashBeforeAck(QueueClient):
    """A consumer connection that dies after outcomes are recorded but before any ack."""

    def ack(self, delivery_tags: Any) -> None:
        self._connection.close()
        raise ServiceUnavailableError("simulated consumer crash before the ack")


def test_crash_before_ack_sends_nothing_twice(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    _publish_campaign(harness, 20)

    with pytest.raises(ServiceUnavailableError):
        harness.consume(queue=_CrashBeforeAck(harness.config.connections.rabbitmq_url))
    sent_before_restart = len(smtp_sink.messages())
    consumer = harness.consume(stop_when_final=False)

    assert sent_before_restart > 0
    assert len(smtp_sink.messages()) == 20
    assert harness.statuses() == {"sent": 20}
    assert consumer.result.counts.get("duplicate", 0) == sent_before_restart


class _PublisherKilledAfter(QueueClient):
    """A publisher connection that dies after a given number of publishes."""

    def __init__(self, url: str, *, limit: int) -> None:
        super().__init__(url)
        self.limit = limit
        self.published = 0

    def publish_ids(self, queue: str, email_ids: Any, **options: Any) -> None:
        for email_id in email_ids:
            if self.published >= self.limit:
                self._connection.close()
                raise ServiceUnavailableError("simulated publisher crash")
            super().publish_ids(queue, [email_id], **options)
            self.published += 1


def test_publisher_killed_mid_chunk_loses_and_doubles_nothing(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    template = harness.add_template(subject="Offer", text="Hello {{ first_name }}")
    harness.add_users([{"email": f"buyer{number}@example.com", "first_name": "Bo"} for number in range(995)])
    # Invalid addresses fail to render; they must still be dequeued after the crash.
    harness.add_users([{"email": f"broken{number}..x@example.com"} for number in range(5)])
    harness.add_campaign(template)
    harness.populate()

    with pytest.raises(ServiceUnavailableError):
        harness.publish(queue=_PublisherKilledAfter(harness.config.connections.rabbitmq_url, limit=430))
    recovered = harness.publish()
    harness.consume(timeout=180)

    messages = smtp_sink.messages()
    recipients = collections.Counter(str(message["To"]) for message in messages)
    # Stored before the crash: published again. Still pending: published for the first time.
    assert recovered.republished >= 430
    assert recovered.republished + recovered.queued == 995
    assert len(messages) == 995
    assert max(recipients.values()) == 1
    assert harness.statuses() == {"sent": 995, "dequeued": 5}


class _StopsBetweenDeleteAndInsert:
    """A store whose publisher stops after deleting the pending documents of its second step."""

    def __init__(self, store: MailStore) -> None:
        self.store = store
        self.steps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def store_baked(self, documents: list[dict[str, Any]]) -> list[str]:
        self.steps += 1
        if self.steps == 2:
            self.store.emails.delete_many({"_id": {"$in": [document["_id"] for document in documents]}})
            raise KeyboardInterrupt("simulated publisher death between delete and insert")
        return self.store.store_baked(documents)


def test_publisher_death_while_replacing_loses_nothing(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    _campaign_for(harness, 250)
    harness.populate()

    with pytest.raises(KeyboardInterrupt):
        harness.publish(store=_StopsBetweenDeleteAndInsert(harness.store))
    absent = 250 - sum(harness.statuses().values())
    recovered = harness.publish()
    harness.consume(timeout=120)

    recipients = collections.Counter(str(message["To"]) for message in smtp_sink.messages())
    assert absent == 100
    assert recovered.republished == 100
    assert recovered.queued == 150
    assert harness.statuses() == {"sent": 250}
    assert len(recipients) == 250
    assert max(recipients.values()) == 1


def test_urgent_group_has_its_own_queue(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    _campaign_for(harness, 30)
    template = harness.add_template(subject="Your code", text="Code {{ code }}")
    user = harness.add_users([{"email": "urgent@example.com"}])[0]
    harness.database.execute(
        "INSERT INTO email_outbox (email_group, user_id, template_id, params) VALUES (%s, %s, %s, %s)",
        (harness.urgent_group, user, template, '{"code": "123456"}'),
    )
    harness.populate()
    harness.publish(harness.urgent_group)

    harness.consume(harness.urgent_group)

    messages = smtp_sink.messages()
    assert [str(message["To"]) for message in messages] == ["Ada Lovelace <urgent@example.com>"]
    assert "Code 123456" in messages[0].get_body(("plain",)).get_content()  # type: ignore[union-attr]
    # The campaign's audience is every user, the urgent recipient included.
    assert harness.store.count_by_status(harness.group) == {"pending": 31}


def test_dead_lettered_ids_are_dequeued(harness: Harness, smtp_sink: SinkServer) -> None:
    # Batches of 5 under a prefetch of 50: when the consumer takes the dead-lettered id, RabbitMQ
    # has already sent it deliveries that it has not handled yet, and they must stay unacked.
    harness = harness.with_smtp(smtp_sink.url).with_batch_size(5)
    _publish_campaign(harness, 60)
    # What RabbitMQ does once a message exceeded its delivery limit: move it to GROUP.dead.
    queue = QueueClient(harness.config.connections.rabbitmq_url)
    poisoned = queue.get_batch(harness.group, max_count=1)[0]
    queue.publish_ids(f"{harness.group}.dead", [poisoned.email_id or ""])
    queue.ack([poisoned.delivery_tag])
    queue.close()

    harness.consume()

    assert harness.statuses() == {"dequeued": 1, "sent": 59}
    assert "delivery limit" in harness.dequeued()[poisoned.email_id or ""]["reason"]
    assert len(smtp_sink.messages()) == 59


def test_unreachable_smtp_pauses_without_using_attempts(harness: Harness, smtp_sink: SinkServer) -> None:
    _publish_campaign(harness, 5)
    closed_port = free_port()

    harness.with_smtp(f"smtp://127.0.0.1:{closed_port}").consume(stop_after_seconds=4)
    statuses_while_down = harness.statuses()
    claims_while_down = harness.store.claims.count_documents({})
    harness.with_smtp(smtp_sink.url).consume()

    assert statuses_while_down == {"queued": 5}
    assert claims_while_down == 0
    assert harness.dequeued() == {}
    assert harness.statuses() == {"sent": 5}
    assert len(smtp_sink.messages()) == 5


class _FailsAfterAcceptance:
    """An SMTP transport that raises `error` right after the server accepted the nth message."""

    def __init__(self, url: str, *, fail_on: int, error: BaseException) -> None:
        self.transport = SmtpTransport(url, timeout_seconds=5)
        self.fail_on = fail_on
        self.error = error
        self.sent = 0

    def send(self, **message: Any) -> Any:
        accepted = self.transport.send(**message)
        self.sent += 1
        if self.sent == self.fail_on:
            raise self.error
        return accepted

    def close(self) -> None:
        self.transport.close()


def _unknown(harness: Harness) -> set[str]:
    return {email_id for email_id, document in harness.dequeued().items() if "outcome unknown" in document["reason"]}


def _crash_then_recover(
    harness: Harness, smtp_sink: SinkServer, error: type[BaseException], **crash_options: Any
) -> list[str]:
    """Consume until `error` stops the consumer, consume again with a short grace period, and
    return the recipients of every message the sink received."""
    with pytest.raises(error):
        harness.consume(**crash_options)
    harness.consume(grace_seconds=0.5)
    return [str(message["To"]) for message in smtp_sink.messages()]


# (batch size, emails of the dying batch that the server had accepted)
@pytest.mark.parametrize(("batch_size", "accepted_in_batch"), [(1, 1), (5, 4)])
def test_consumer_death_leaves_its_batch_unknown(
    harness: Harness, smtp_sink: SinkServer, batch_size: int, accepted_in_batch: int
) -> None:
    harness = harness.with_smtp(smtp_sink.url).with_batch_size(batch_size)
    _publish_campaign(harness, 12)
    # KeyboardInterrupt simulates a process killed outright: no handler of the consumer runs.
    death = _FailsAfterAcceptance(smtp_sink.url, fail_on=4, error=KeyboardInterrupt("simulated kill"))

    recipients = _crash_then_recover(harness, smtp_sink, KeyboardInterrupt, transport=death)

    assert len(_unknown(harness)) == batch_size
    assert harness.statuses() == {"sent": 12 - batch_size, "dequeued": batch_size}
    assert len(recipients) == 12 - batch_size + accepted_in_batch
    assert len(set(recipients)) == len(recipients)


class _ClaimAnswerLost:
    """A store whose first claim is stored but then raises, as when MongoDB fails over mid-reply."""

    def __init__(self, store: MailStore) -> None:
        self.store = store
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def claim(self, keys: list[tuple[str, int]], *, consumer: str) -> set[tuple[str, int]]:
        claimed = self.store.claim(keys, consumer=consumer)
        if not self.failed:
            self.failed = True
            raise ServiceUnavailableError("simulated lost answer to the claim")
        return claimed


def test_lost_claim_answer_sends_everything_once(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    _publish_campaign(harness, 12)

    recipients = _crash_then_recover(harness, smtp_sink, ServiceUnavailableError, store=_ClaimAnswerLost(harness.store))

    assert harness.statuses() == {"sent": 12}
    assert len(recipients) == 12
    assert len(set(recipients)) == 12


def test_live_batch_claim_not_dequeued(harness: Harness, smtp_sink: SinkServer) -> None:
    # SMTP timeout 5 s and batches of 10: a live consumer may still be sending for up to 110 s.
    harness = harness.with_smtp(smtp_sink.url).with_batch_size(10)
    _publish_campaign(harness, 3)
    ids = list(harness.store.emails_by_id(["c1u1", "c1u2", "c1u3"]))
    harness.store.claim([(email_id, 1) for email_id in ids], consumer="busy-consumer")
    claimed_at = datetime.now(UTC) - timedelta(seconds=60)
    harness.store.claims.update_many({"consumer": "busy-consumer"}, {"$set": {"claimed_at": claimed_at}})

    consumer = harness.consume(stop_when_final=False, stop_after_seconds=2)

    assert harness.statuses() == {"queued": 3}
    assert harness.dequeued() == {}
    assert consumer.result.counts.get("recheck", 0) >= 3


def test_unexpected_error_leaves_one_unknown(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url).with_batch_size(10)
    _publish_campaign(harness, 12)
    failing = _FailsAfterAcceptance(smtp_sink.url, fail_on=4, error=RuntimeError("simulated bug"))

    recipients = _crash_then_recover(harness, smtp_sink, RuntimeError, transport=failing)

    assert len(_unknown(harness)) == 1
    assert harness.statuses() == {"sent": 11, "dequeued": 1}
    # The unknown one did reach the server, once: every email arrived exactly once.
    assert len(recipients) == 12
    assert len(set(recipients)) == 12


def test_unknown_audience_fails_only_its_campaign(harness: Harness, smtp_sink: SinkServer) -> None:
    harness = harness.with_smtp(smtp_sink.url)
    template = harness.add_template(subject="Hi", text="Hello")
    harness.add_users([{"email": "reader@example.com", "locale": "de_DE"}])
    broken = harness.add_campaign(template, audience="city:Paris")
    working = harness.add_campaign(template, audience="locale:de_DE")

    harness.populate()
    harness.populate()

    assert "unknown campaign audience 'city:Paris'" in harness.store.read_cursor(f"campaign:{broken}")["failed"]
    assert harness.store.read_cursor(f"campaign:{working}")["done"] is True
    assert harness.statuses() == {"pending": 1}
