"""MongoDB store of email documents: `cron_emails`, `dequeued_mails` and the pipeline's bookkeeping.

Collections:
- `cron_emails`: one document per email, `_id` derived from its source row, so inserting the same
  email twice is a duplicate-key error and never a second email.
- `dequeued_mails`: the whole document of every email that failed for good, with every reason.
- `pending_emails_GROUP`, one per group: the group's emails that wait for the publisher, as
  chunks of at most `publish.chunkSize` copies of their `cron_emails` documents (packed in one
  BSON blob per chunk), oldest first. The
  publisher takes the first chunk and deletes it once its ids are published. Finding pending work
  thus reads one document, whatever the size of `cron_emails` or of the backlog, and a large
  campaign does not slow down the transactional group. (On MongoDB an index on
  `status` would do; FerretDB 1.24 scans for any filter but `{"_id": value}`, and scanning the
  published documents first made each chunk slower than the one before.)
- `populate_cursors`: how far populate has read each source.
- `publish_batches`: chunks whose ids are being published. A batch left here by a publisher that
  died is published again by the next run, which the consumer's claims make harmless.
- `delivery_claims`: one document per (email, attempt); inserting it is the atomic claim that keeps
  a redelivered or doubly published id from being sent twice.

Only operations that FerretDB 1.24 supports are used: no transactions, no change streams. Its
SQLite back end shapes this module. It evaluates filters other than `{"_id": value}` and
`{"_id": {"$in": [...]}}` by scanning (the second form only with the patch that `make services`
applies), so hot paths look documents up by `_id`. Each statement of a bulk write costs about as
much as a command of its own, so the consumer writes per batch, not per email. An update command
with about 100 statements or more deadlocked an unpatched FerretDB (each statement held a pooled
connection until the command ended), so bulk writes go out in batches of `BULK_BATCH_SIZE`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import bson
import pymongo
import pymongo.errors
from bson import Binary, CodecOptions
from pymongo import InsertOne, UpdateOne

from mailpipe.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)

BULK_BATCH_SIZE = 50
DUPLICATE_KEY = 11000


@dataclass(frozen=True)
class InsertCounts:
    created: int
    duplicates: int


@dataclass(frozen=True)
class PendingChunk:
    """Emails of one group that wait for the publisher, stored together as one document."""

    chunk_id: str
    emails: list[dict[str, Any]]


@dataclass(frozen=True)
class Outcome:
    """The result of one delivery attempt for one email, as `record_outcomes` stores it."""

    email_id: str
    status: str  # "sent", "retrying" or "dequeued"
    at: datetime
    attempt: int
    reason: str | None = None
    smtp_code: int | None = None


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _packed(emails: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the fields that hold a chunk's email copies: one BSON blob rather than a list.

    FerretDB decodes every field of a document it reads or deletes: about 80 ms for a chunk of
    1,000 copies as a list in one profile, while a blob is a single field. The copies are the publisher's own
    bookkeeping; `cron_emails` stays the place to read emails.
    """
    return {"count": len(emails), "emails_bson": Binary(b"".join(bson.encode(dict(email)) for email in emails))}


def _unpacked(chunk: Mapping[str, Any]) -> list[dict[str, Any]]:
    if "emails_bson" not in chunk:
        return list(chunk.get("emails", []))  # a chunk queued by an earlier version, as a list
    return list(bson.decode_all(bytes(chunk["emails_bson"]), CodecOptions(tz_aware=True)))


def now_utc() -> datetime:
    return datetime.now(UTC)


class MailStore:
    def __init__(self, url: str, *, database: str | None = None, timeout_seconds: float = 30.0) -> None:
        if not url.startswith(("mongodb://", "mongodb+srv://")):
            raise ConfigError("MAILPIPE_MONGODB_URL must look like mongodb://user:password@host:27017/database")
        timeout_ms = int(timeout_seconds * 1000)
        name = database or urlsplit(url).path.strip("/")
        if not name:
            raise ConfigError(
                "MAILPIPE_MONGODB_URL must name a database, for example mongodb://127.0.0.1:27017/mailpipe"
            )
        self._client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=timeout_ms,
        )
        self.database = self._client[name]
        self.emails = self.database["cron_emails"]
        self.dequeued = self.database["dequeued_mails"]
        self.cursors = self.database["populate_cursors"]
        self.batches = self.database["publish_batches"]
        self.claims = self.database["delivery_claims"]

    def close(self) -> None:
        self._client.close()

    def ensure_indexes(self) -> None:
        """Create the indexes that a MongoDB server uses for the pending-email query."""
        with _translated("creating indexes"):
            self.emails.create_index([("status", 1), ("group", 1)], name="status_group")

    # --- populate -------------------------------------------------------------------------

    def insert_emails(self, documents: Sequence[Mapping[str, Any]], *, chunk_size: int = 1000) -> InsertCounts:
        """Insert new email documents, and queue the pending ones for the publisher in chunks.

        Documents whose `_id` exists already count as duplicates. A duplicate that is still pending
        is queued again, in case an earlier run stopped between the two inserts. A chunk's `_id`
        comes from its first and last email, so the same chunk is never stored twice.
        """
        rejected = self._insert_new(self.emails, documents, "inserting emails")
        created = [document for index, document in enumerate(documents) if index not in rejected]
        duplicate_ids = [str(documents[index]["_id"]) for index in sorted(rejected)]
        pending = [document for document in created if document.get("status") == "pending"]
        if duplicate_ids:
            stored = self.emails_by_id(duplicate_ids)
            pending += [document for document in stored.values() if document.get("status") == "pending"]
        for group in sorted({str(document["group"]) for document in pending}):
            copies = [dict(document) for document in pending if document["group"] == group]
            chunks = [
                {"_id": f"{chunk[0]['_id']}..{chunk[-1]['_id']}", "group": group, **_packed(chunk)}
                for chunk in _batches(copies, chunk_size)
            ]
            self._insert_new(self.pending(group), chunks, "queueing pending emails")
        return InsertCounts(created=len(created), duplicates=len(duplicate_ids))

    def _insert_new(
        self, collection: pymongo.collection.Collection[dict[str, Any]], documents: Sequence[Mapping[str, Any]], action: str
    ) -> set[int]:
        """Insert documents in batches of 1,000; return the indexes of those whose `_id` existed.

        Any other write error raises ServiceUnavailableError naming the action."""
        duplicates: set[int] = set()
        for start in range(0, len(documents), 1000):
            batch = [dict(document) for document in documents[start : start + 1000]]
            try:
                collection.insert_many(batch, ordered=False)
            except pymongo.errors.BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                others = [item for item in errors if item.get("code") != DUPLICATE_KEY]
                if others:
                    raise ServiceUnavailableError(f"{action} failed: {others[0].get('errmsg')}") from error
                duplicates.update(start + int(item["index"]) for item in errors)
            except pymongo.errors.PyMongoError as error:
                raise ServiceUnavailableError(f"{action} failed: {error}") from error
        return duplicates

    def read_cursor(self, name: str) -> dict[str, Any] | None:
        with _translated("reading a populate cursor"):
            return self.cursors.find_one({"_id": name})

    def write_cursor(self, name: str, **fields: Any) -> None:
        with _translated("writing a populate cursor"):
            self.cursors.update_one({"_id": name}, {"$set": {**fields, "updated_at": now_utc()}}, upsert=True)

    # --- publish --------------------------------------------------------------------------

    def pending_chunk(self, group: str) -> PendingChunk | None:
        """Return the group's oldest chunk of emails that wait for the publisher."""
        with _translated("reading pending emails"):
            chunk = self.pending(group).find_one({})
        if chunk is None:
            return None
        return PendingChunk(chunk_id=str(chunk["_id"]), emails=_unpacked(chunk))

    def has_pending(self, group: str) -> bool:
        with _translated("reading pending emails"):
            return self.pending(group).find_one({}, {"_id": 1}) is not None

    def keep_pending(self, group: str, chunk_id: str, emails: Sequence[Mapping[str, Any]]) -> None:
        """Replace a chunk's emails with `emails`, deleting the chunk when none is left."""
        with _translated("updating pending emails"):
            if emails:
                self.pending(group).replace_one({"_id": chunk_id}, {"group": group, **_packed(emails)})
            else:
                self.pending(group).delete_one({"_id": chunk_id})

    def pending(self, group: str) -> pymongo.collection.Collection[dict[str, Any]]:
        return self.database[f"pending_emails_{group}"]

    def open_publish_batch(self, batch_id: str, *, group: str, chunk_id: str, email_ids: Sequence[str]) -> None:
        with _translated("opening a publish batch"):
            self.batches.insert_one(
                {"_id": batch_id, "group": group, "chunk_id": chunk_id, "ids": list(email_ids), "opened_at": now_utc()}
            )

    def close_publish_batch(self, batch_id: str) -> None:
        with _translated("closing a publish batch"):
            self.batches.delete_one({"_id": batch_id})

    def open_publish_batches(self, group: str) -> list[dict[str, Any]]:
        """Return the batches of a group that a publisher opened and never closed."""
        with _translated("reading open publish batches"):
            return [batch for batch in self.batches.find({}) if batch.get("group") == group]

    def store_baked(self, documents: Sequence[Mapping[str, Any]]) -> list[str]:
        """Replace pending emails with their finished documents; return the ids stored.

        The pending documents are deleted and the finished ones inserted. That is two commands for
        the whole list, where updates would cost FerretDB about one command's work per email.
        Between the two commands the emails are briefly absent. A publisher that stops there leaves its
        journal in `publish_batches`, and the next run inserts them again from the chunk. An email
        that is no longer pending (handled by an earlier run) is left alone and not returned.
        """
        if not documents:
            return []
        ids = [str(document["_id"]) for document in documents]
        with _translated("storing rendered emails"):
            self.emails.delete_many({"_id": {"$in": ids}, "status": "pending"})
        present = {ids[index] for index in self._insert_new(self.emails, documents, "storing rendered emails")}
        # Present again already: populate inserted it anew (pending) in the gap, or it was not
        # pending when deleted. Only a pending one is replaced.
        replaced: set[str] = set()
        with _translated("storing rendered emails"):
            for document in documents:
                email_id = str(document["_id"])
                if email_id in present:
                    if self.emails.replace_one({"_id": email_id, "status": "pending"}, dict(document)).matched_count:
                        replaced.add(email_id)
        return [email_id for email_id in ids if email_id not in present or email_id in replaced]

    # --- consume --------------------------------------------------------------------------

    def claim(self, keys: Sequence[tuple[str, int]], *, consumer: str) -> set[tuple[str, int]]:
        """Claim (email id, attempt) pairs; return those this call claimed first.

        The unique `_id` of `delivery_claims` makes each claim atomic: of two consumers that get the
        same id for the same attempt, exactly one insert succeeds.
        """
        if not keys:
            return set()
        now = now_utc()
        documents = [
            {"_id": f"{email_id}#{attempt}", "email_id": email_id, "attempt": attempt, "consumer": consumer, "claimed_at": now}
            for email_id, attempt in keys
        ]
        lost = {str(documents[index]["_id"]) for index in self._insert_new(self.claims, documents, "claiming emails")}
        return {key for key in keys if f"{key[0]}#{key[1]}" not in lost}

    def claim_of(self, email_id: str, attempt: int) -> dict[str, Any] | None:
        with _translated("reading a claim"):
            return self.claims.find_one({"_id": f"{email_id}#{attempt}"})

    def release_claims(self, keys: Sequence[tuple[str, int]], *, consumer: str) -> None:
        """Delete a consumer's claims whose emails were certainly not sent, so that a later delivery
        can send them. Claims that belong to another consumer are kept."""
        if not keys:
            return
        ids = [f"{email_id}#{attempt}" for email_id, attempt in keys]
        with _translated("releasing claims"):
            self.claims.delete_many({"_id": {"$in": ids}, "consumer": consumer})

    def emails_by_id(self, email_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Return the documents of the given ids that exist, by id."""
        found: dict[str, dict[str, Any]] = {}
        unique_ids = list(dict.fromkeys(email_ids))
        with _translated("reading emails"):
            for batch in _batches(unique_ids, 1000):
                for document in self.emails.find({"_id": {"$in": list(batch)}}):
                    found[str(document["_id"])] = document
        return found

    def record_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Record attempts and final states, one update per email, by `_id`."""
        operations = []
        for outcome in outcomes:
            fields: dict[str, Any] = {"status": outcome.status, "attempt_count": outcome.attempt}
            if outcome.status == "sent":
                fields["sent_at"] = outcome.at
                fields["smtp_reply"] = outcome.reason
                update: dict[str, Any] = {"$set": fields}
            else:
                update = {
                    "$set": fields,
                    "$push": {
                        "attempts": {
                            "attempt": outcome.attempt,
                            "at": outcome.at,
                            "reason": outcome.reason,
                            "smtp_code": outcome.smtp_code,
                        }
                    },
                }
            operations.append(UpdateOne({"_id": outcome.email_id}, update))
        self._bulk_write(self.emails, operations, "recording delivery outcomes")

    # --- dequeue --------------------------------------------------------------------------

    def dequeue(self, documents: Sequence[Mapping[str, Any]], *, stage: str) -> None:
        """Save failed emails whole in `dequeued_mails` and mark them dequeued.

        Each document must already carry its final `attempts` list and `dequeue_reason`. Saving
        twice (a redelivery after a crash) keeps the first copy.
        """
        if not documents:
            return
        now = now_utc()
        copies = [
            InsertOne(
                {
                    "_id": document["_id"],
                    "group": document.get("group"),
                    "stage": stage,
                    "reason": document.get("dequeue_reason"),
                    "attempts": document.get("attempts", []),
                    "email": dict(document),
                    "dequeued_at": now,
                }
            )
            for document in documents
        ]
        self._bulk_write(self.dequeued, copies, "saving dequeued emails", ignore_duplicates=True)
        marks = [
            UpdateOne(
                {"_id": document["_id"]},
                {
                    "$set": {
                        "status": "dequeued",
                        "dequeued_at": now,
                        "dequeue_reason": document.get("dequeue_reason"),
                        "attempts": document.get("attempts", []),
                        "attempt_count": document.get("attempt_count", 0),
                    }
                },
            )
            for document in documents
        ]
        self._bulk_write(self.emails, marks, "marking emails dequeued")

    # --- reporting ------------------------------------------------------------------------

    def count_by_status(self, group: str | None = None) -> dict[str, int]:
        pipeline: list[dict[str, Any]] = []
        if group is not None:
            pipeline.append({"$match": {"group": group}})
        pipeline.append({"$group": {"_id": "$status", "count": {"$sum": 1}}})
        with _translated("counting emails"):
            return {row["_id"]: row["count"] for row in self.emails.aggregate(pipeline)}

    def _bulk_write(
        self,
        collection: pymongo.collection.Collection[dict[str, Any]],
        operations: Sequence[Any],
        action: str,
        *,
        ignore_duplicates: bool = False,
    ) -> None:
        for batch in _batches(operations, BULK_BATCH_SIZE):
            try:
                collection.bulk_write(list(batch), ordered=False)
            except pymongo.errors.BulkWriteError as error:
                errors = error.details.get("writeErrors", [])
                unexpected = [item for item in errors if not (ignore_duplicates and item.get("code") == DUPLICATE_KEY)]
                if unexpected:
                    raise ServiceUnavailableError(f"{action} failed: {unexpected[0].get('errmsg')}") from error
            except pymongo.errors.PyMongoError as error:
                raise ServiceUnavailableError(f"{action} failed: {error}") from error


class _translated:
    """Context manager turning pymongo errors into ServiceUnavailableError naming the action."""

    def __init__(self, action: str) -> None:
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, pymongo.errors.PyMongoError):
            raise ServiceUnavailableError(f"{self._action} failed: {error}") from error
