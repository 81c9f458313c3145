"""The audit-dequeued role and its adapters: report formatting without servers, then runs against
the local FerretDB (a database per test session) with the summary read back from maildev."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from pymongo import MongoClient

from mailpipe.adapters.mongo_audit import DEQUEUED_COLLECTION, DequeuedRecord, MongoAuditStore
from mailpipe.adapters.notify import SmtpNotifier
from mailpipe.config import Config, Connections, Notifications, PipelineSpec
from mailpipe.errors import ConfigError, ServiceUnavailableError
from mailpipe.roles import audit
from mailpipe.roles.audit import format_report, one_line, run_audit

CONNECTIONS = Connections.from_environment(os.environ)
MAILDEV_URL = os.environ.get("MAILPIPE_MAILDEV_URL", "http://127.0.0.1:1080")
BODY_MARKER = "BODY-MUST-NOT-BE-REPORTED"
STARTED = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def dequeued_document(number: int, *, group: str = "news", reason: str = "550 5.1.1 mailbox unavailable") -> dict[str, Any]:
    """A dequeued_mails document shaped like the ones the consumers save."""
    attempt_time = STARTED + timedelta(minutes=number)
    return {
        "_id": f"mail-{number:05d}",
        "group": group,
        "reason": reason,
        "attempts": [
            {"at": attempt_time, "reason": "421 try later", "smtp_code": 421},
            {"at": attempt_time + timedelta(seconds=5), "reason": reason, "smtp_code": 550},
        ],
        "email": {"_id": f"mail-{number:05d}", "group": group, "text": BODY_MARKER, "html": f"<p>{BODY_MARKER}</p>"},
        "dequeued_at": attempt_time + timedelta(seconds=5),
    }


def make_config(recipients: list[str], *, smtp_url: str | None = None) -> Config:
    connections = CONNECTIONS if smtp_url is None else CONNECTIONS.model_copy(update={"smtp_url": smtp_url})
    return Config(spec=PipelineSpec(notifications=Notifications(recipients=recipients)), connections=connections)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def notify(self, subject: str, text: str) -> None:
        self.sent.append((subject, text))


class UnusedStore:
    """A store that fails the test when the role reads or writes it."""

    def unreported_dequeued(self, limit: int) -> list[DequeuedRecord]:
        raise AssertionError("the store must not be read")

    def mark_dequeued_reported(self, ids: Sequence[Any], *, report_id: str, reported_at: datetime) -> int:
        raise AssertionError("the store must not be written")


def wait_for_mails(recipient: str, *, count: int = 1, timeout_seconds: float = 10.0) -> list[dict[str, Any]]:
    """Poll maildev until `count` mails to `recipient` arrived; fail the test on timeout."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        mails = [
            mail
            for mail in requests.get(f"{MAILDEV_URL}/email", timeout=5).json()
            if any(to["address"] == recipient for to in mail.get("to", []))
        ]
        if len(mails) >= count or time.monotonic() > deadline:
            assert len(mails) >= count, f"expected {count} mails to {recipient} in maildev, found {len(mails)}"
            return mails
        time.sleep(0.1)


# Pure helpers.


class TestReportFormat:
    def records(self) -> list[DequeuedRecord]:
        documents = [dequeued_document(1), dequeued_document(2), dequeued_document(3, group="receipts", reason="invalid address")]
        for document in documents:
            del document["email"]
        return documents  # type: ignore[return-value]

    def test_counts_per_group_and_reason(self) -> None:
        subject, text = format_report(
            self.records(), report_id="R1", reported_at=STARTED, table_rows=50, more_pending=False
        )

        assert subject == "Mailpipe: 3 dequeued emails (report R1)"
        assert "        2  news" in text
        assert "        1  receipts" in text
        assert "        2  550 5.1.1 mailbox unavailable" in text
        assert "        1  invalid address" in text
        assert "limit" not in text

    def test_table_is_cut_to_rows(self) -> None:
        _, text = format_report(self.records(), report_id="R1", reported_at=STARTED, table_rows=2, more_pending=False)

        assert "The 2 oldest" in text
        assert "mail-00001" in text
        assert "mail-00002" in text
        assert "mail-00003" not in text

    def test_table_shows_attempts(self) -> None:
        _, text = format_report(self.records(), report_id="R1", reported_at=STARTED, table_rows=50, more_pending=False)

        row = next(line for line in text.splitlines() if "mail-00003" in line)
        assert row.split()[:4] == ["mail-00003", "receipts", "2", "invalid"]

    def test_more_pending_is_announced(self) -> None:
        _, text = format_report(self.records(), report_id="R1", reported_at=STARTED, table_rows=50, more_pending=True)

        assert "the next run reports any others" in text

    def test_reason_is_one_line(self) -> None:
        assert one_line("550-5.1.1 first\r\n550 5.1.1 second") == "550-5.1.1 first 550 5.1.1 second"

    def test_long_reason_is_cut(self) -> None:
        cut = one_line("x" * 500, max_chars=20)

        assert len(cut) == 20
        assert cut.endswith("...")

    def test_no_recipients_reads_nothing(self) -> None:
        notifier = RecordingNotifier()

        result = run_audit(config=make_config([]), store=UnusedStore(), notifier=notifier)

        assert result.reported == 0
        assert result.report_id is None
        assert notifier.sent == []


class TestSmtpNotifierConfiguration:
    def test_no_recipients_sends_nothing(self) -> None:
        notifier = SmtpNotifier(f"smtp://127.0.0.1:{closed_port()}", from_address="a@mailpipe.example", recipients=[])

        notifier.notify("subject", "text")

    def test_unknown_scheme_is_rejected(self) -> None:
        with pytest.raises(ConfigError) as raised:
            SmtpNotifier("http://127.0.0.1:25", from_address="a@mailpipe.example", recipients=["b@mailpipe.example"])

        assert "'http'" in str(raised.value)

    def test_unreachable_server_is_unavailable(self) -> None:
        notifier = SmtpNotifier(
            f"smtp://user:pass-word@127.0.0.1:{closed_port()}",
            from_address="a@mailpipe.example",
            recipients=["b@mailpipe.example"],
        )

        with pytest.raises(ServiceUnavailableError) as raised:
            notifier.notify("subject", "text")

        assert "pass-word" not in str(raised.value)


# Runs against FerretDB and maildev.


@pytest.fixture(scope="module")
def database_name() -> Iterator[str]:
    name = f"mailpipe_test_audit_{uuid.uuid4().hex[:8]}"
    yield name
    client: MongoClient[dict[str, Any]] = MongoClient(CONNECTIONS.mongodb_url, serverSelectionTimeoutMS=5000)
    client.drop_database(name)
    client.close()


@pytest.fixture
def collection(database_name: str) -> Iterator[Any]:
    client: MongoClient[dict[str, Any]] = MongoClient(CONNECTIONS.mongodb_url, serverSelectionTimeoutMS=5000, tz_aware=True)
    documents = client[database_name][DEQUEUED_COLLECTION]
    documents.delete_many({})
    yield documents
    client.close()


@pytest.fixture
def store(database_name: str) -> Iterator[MongoAuditStore]:
    audit_store = MongoAuditStore.connect(CONNECTIONS.mongodb_url, database=database_name)
    yield audit_store
    audit_store.close()


@pytest.fixture
def recipient() -> str:
    return f"team-{uuid.uuid4().hex[:8]}@mailpipe.example"


@pytest.mark.services
class TestMongoAuditStore:
    def test_unreported_are_oldest_first(self, collection: Any, store: MongoAuditStore) -> None:
        collection.insert_many([dequeued_document(3), dequeued_document(1), dequeued_document(2)])

        records = store.unreported_dequeued(2)

        assert [record["_id"] for record in records] == ["mail-00001", "mail-00002"]

    def test_email_is_not_read(self, collection: Any, store: MongoAuditStore) -> None:
        collection.insert_one(dequeued_document(1))

        (record,) = store.unreported_dequeued(10)

        assert "email" not in record
        assert record.get("group") == "news"
        assert len(record.get("attempts", [])) == 2

    def test_marked_are_not_returned(self, collection: Any, store: MongoAuditStore) -> None:
        collection.insert_many([dequeued_document(number) for number in range(1, 121)])
        ids = [f"mail-{number:05d}" for number in range(1, 111)]

        marked = store.mark_dequeued_reported(ids, report_id="R1", reported_at=STARTED)
        left = store.unreported_dequeued(1000)

        assert marked == 110
        assert [record["_id"] for record in left] == [f"mail-{number:05d}" for number in range(111, 121)]
        assert collection.find_one({"_id": "mail-00050"})["report_id"] == "R1"


@pytest.mark.services
class TestAuditRun:
    def test_new_mail_is_reported_in_one_email(
        self, collection: Any, store: MongoAuditStore, recipient: str
    ) -> None:
        collection.insert_many(
            [dequeued_document(1), dequeued_document(2), dequeued_document(3, group="receipts", reason="invalid address")]
        )
        config = make_config([recipient])

        result = run_audit(config=config, store=store, notifier=SmtpNotifier.from_config(config))
        mails = wait_for_mails(recipient)

        assert result.reported == 3
        assert result.per_group == {"news": 2, "receipts": 1}
        assert result.per_reason == {"550 5.1.1 mailbox unavailable": 2, "invalid address": 1}
        assert len(mails) == 1
        assert mails[0]["subject"] == f"Mailpipe: 3 dequeued emails (report {result.report_id})"
        assert "mail-00003" in mails[0]["text"]
        assert BODY_MARKER not in mails[0]["text"]
        assert collection.find_one({"_id": "mail-00001"})["report_id"] == result.report_id

    def test_second_run_reports_nothing(self, collection: Any, store: MongoAuditStore, recipient: str) -> None:
        collection.insert_many([dequeued_document(1), dequeued_document(2)])
        config = make_config([recipient])
        first = run_audit(config=config, store=store, notifier=SmtpNotifier.from_config(config))
        notifier = RecordingNotifier()

        second = run_audit(config=config, store=store, notifier=notifier)

        assert first.reported == 2
        assert second.reported == 0
        assert second.report_id is None
        assert notifier.sent == []

    def test_only_new_mail_is_reported_next(self, collection: Any, store: MongoAuditStore) -> None:
        config = make_config(["team@mailpipe.example"])
        collection.insert_many([dequeued_document(1), dequeued_document(2)])
        run_audit(config=config, store=store, notifier=RecordingNotifier())
        collection.insert_one(dequeued_document(3))
        notifier = RecordingNotifier()

        result = run_audit(config=config, store=store, notifier=notifier)

        assert result.reported == 1
        assert len(notifier.sent) == 1
        assert "mail-00003" in notifier.sent[0][1]
        assert "mail-00001" not in notifier.sent[0][1]

    def test_failed_send_marks_nothing(self, collection: Any, store: MongoAuditStore) -> None:
        collection.insert_many([dequeued_document(1), dequeued_document(2)])
        config = make_config(["team@mailpipe.example"], smtp_url=f"smtp://127.0.0.1:{closed_port()}")

        with pytest.raises(ServiceUnavailableError):
            run_audit(config=config, store=store, notifier=SmtpNotifier.from_config(config))

        assert len(store.unreported_dequeued(10)) == 2
        assert collection.count_documents({"report_id": {"$exists": True}}) == 0

    def test_limit_leaves_rest_for_next_run(self, collection: Any, store: MongoAuditStore) -> None:
        config = make_config(["team@mailpipe.example"])
        collection.insert_many([dequeued_document(number) for number in range(1, 61)])

        first = run_audit(config=config, store=store, notifier=RecordingNotifier(), max_reported=50)
        second = run_audit(config=config, store=store, notifier=RecordingNotifier(), max_reported=50)

        assert first.reported == 50
        assert first.more_pending is True
        assert second.reported == 10
        assert second.more_pending is False

    def test_main_reports_and_returns_zero(self, collection: Any, database_name: str, recipient: str) -> None:
        collection.insert_one(dequeued_document(1))
        base_url = CONNECTIONS.mongodb_url.rsplit("/", 1)[0]
        config = make_config([recipient]).model_copy(
            update={"connections": CONNECTIONS.model_copy(update={"mongodb_url": f"{base_url}/{database_name}"})}
        )

        assert audit.main(config) == 0
        assert len(wait_for_mails(recipient)) == 1
        assert audit.main(config) == 0
        assert collection.count_documents({"report_id": {"$exists": True}}) == 1
