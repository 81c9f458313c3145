"""MongoDB access for the `audit-dequeued` role: find dequeued mail not yet reported, mark it reported.

Reported documents get two fields, `reported_at` and `report_id`, rather than an entry in a
separate collection. Marking is then one update by `_id` per document, which FerretDB 1.24
serves from the primary key index, and each document carries its own audit trail.

FerretDB 1.24 pushes only filters of exactly `{"_id": value}` down to its storage, so the search
for unreported documents reads the whole `dequeued_mails` collection. The projection keeps the
saved emails out of the reply, but FerretDB still loads them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NotRequired, TypedDict, cast

from pymongo import MongoClient, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mailpipe.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)

DEQUEUED_COLLECTION = "dequeued_mails"
DEFAULT_DATABASE = "mailpipe"
# FerretDB 1.24 deadlocks on update commands of more than about 90 statements.
MAX_UPDATES_PER_BULK_WRITE = 50
# Only what the report shows: never the saved email itself.
SUMMARY_FIELDS = {"group": 1, "reason": 1, "attempts": 1, "dequeued_at": 1}


class AttemptRecord(TypedDict):
    at: datetime
    reason: str
    smtp_code: int | None


class DequeuedRecord(TypedDict):
    """A `dequeued_mails` document without its `email` field; `_id` is the cron_emails id."""

    _id: Any
    group: NotRequired[str]
    reason: NotRequired[str]
    attempts: NotRequired[list[AttemptRecord]]
    dequeued_at: NotRequired[datetime]


class MongoAuditStore:
    """The `dequeued_mails` collection, seen from the audit."""

    def __init__(self, database: Database[dict[str, Any]], *, client: MongoClient[dict[str, Any]] | None = None) -> None:
        self._collection: Collection[dict[str, Any]] = database[DEQUEUED_COLLECTION]
        self._client = client

    @classmethod
    def connect(cls, url: str, *, database: str | None = None, timeout_seconds: float = 10.0) -> MongoAuditStore:
        """Connect to the server at `url` and use `database`, else the URL's database, else "mailpipe"."""
        timeout_ms = int(timeout_seconds * 1000)
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(
                url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms
            )
        except PyMongoError as error:
            # Raised for a malformed URL or options only; the connection itself opens lazily.
            raise ConfigError(f"invalid MongoDB URL (MAILPIPE_MONGODB_URL): {error}") from error
        if database is not None:
            return cls(client[database], client=client)
        return cls(client.get_default_database(default=DEFAULT_DATABASE), client=client)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def unreported_dequeued(self, limit: int) -> list[DequeuedRecord]:
        """Return up to `limit` documents that no report has covered yet, oldest first."""
        try:
            cursor = (
                self._collection.find({"reported_at": {"$exists": False}}, SUMMARY_FIELDS)
                .sort([("dequeued_at", 1), ("_id", 1)])
                .limit(limit)
            )
            return cast(list[DequeuedRecord], list(cursor))
        except PyMongoError as error:
            # Nothing has been reported yet, so the next run can simply try again.
            raise ServiceUnavailableError(f"reading unreported {DEQUEUED_COLLECTION} failed: {error}") from error

    def mark_dequeued_reported(self, ids: Sequence[Any], *, report_id: str, reported_at: datetime) -> int:
        """Set `reported_at` and `report_id` on the documents `ids`; return how many matched.

        Writes in bulk writes of at most MAX_UPDATES_PER_BULK_WRITE updates. A failure part-way
        leaves the earlier batches marked and the later ones not.
        """
        marked = 0
        for start in range(0, len(ids), MAX_UPDATES_PER_BULK_WRITE):
            batch = ids[start : start + MAX_UPDATES_PER_BULK_WRITE]
            updates = [
                UpdateOne({"_id": mail_id}, {"$set": {"reported_at": reported_at, "report_id": report_id}})
                for mail_id in batch
            ]
            try:
                result = self._collection.bulk_write(updates, ordered=True)
            except PyMongoError as error:
                # The caller logs which report is affected; no retry here, so one retry path stays.
                raise ServiceUnavailableError(
                    f"marking {DEQUEUED_COLLECTION} as reported in {report_id} failed after {marked} of {len(ids)}: {error}"
                ) from error
            marked += result.matched_count
        return marked
