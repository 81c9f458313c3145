"""populate: turn due campaigns and new outbox rows into `cron_emails` documents, in chunks.

Each document's `_id` comes from its source (`o<outbox id>`, `c<campaign id>u<user id>`), so a
re-run, or a run after a crash mid-chunk, inserts nothing twice. Progress is kept per source in
`populate_cursors` and only moves after a chunk is stored.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from mailpipe import metrics
from mailpipe.adapters.mongo import InsertCounts, now_utc
from mailpipe.adapters.mysql import Campaign, OutboxRow, User
from mailpipe.config import PipelineSpec
from mailpipe.errors import ConfigError

log = logging.getLogger(__name__)

OUTBOX_CURSOR = "outbox"


class ApplicationSource(Protocol):
    def due_campaigns(self, now: datetime) -> list[Campaign]: ...
    def audience_page(self, audience: str, *, after_user_id: int, limit: int) -> list[User]: ...
    def outbox_page(self, *, after_id: int, limit: int) -> list[OutboxRow]: ...


class EmailSink(Protocol):
    def insert_emails(self, documents: list[dict[str, Any]], *, chunk_size: int = ...) -> InsertCounts: ...
    def read_cursor(self, name: str) -> dict[str, Any] | None: ...
    def write_cursor(self, name: str, **fields: Any) -> None: ...
    def dequeue(self, documents: list[dict[str, Any]], *, stage: str) -> None: ...


@dataclass
class PopulateResult:
    counts: Counter[str] = field(default_factory=Counter)

    def add(self, source: str, outcome: str, amount: int = 1) -> None:
        if amount:
            self.counts[f"{source}:{outcome}"] += amount
            metrics.POPULATED.labels(source=source, outcome=outcome).inc(amount)


def campaign_cursor(campaign_id: int) -> str:
    return f"campaign:{campaign_id}"


def populate(
    *,
    source: ApplicationSource,
    sink: EmailSink,
    spec: PipelineSpec,
    sources: tuple[str, ...] = ("outbox", "campaigns"),
    clock: Callable[[], datetime] = now_utc,
) -> PopulateResult:
    """Read every new outbox row and every due campaign's remaining audience into cron_emails."""
    result = PopulateResult()
    if "outbox" in sources:
        populate_outbox(source=source, sink=sink, spec=spec, result=result, clock=clock)
    if "campaigns" in sources:
        for campaign in source.due_campaigns(clock()):
            try:
                populate_campaign(campaign, source=source, sink=sink, spec=spec, result=result, clock=clock)
            except ConfigError as error:
                # A campaign the application described wrongly (an unknown audience, say) fails
                # alone and for good, so that it neither blocks later campaigns nor fails every run.
                log.error("populate: campaign %d (%s) fails and is skipped: %s", campaign.id, campaign.name, error)
                sink.write_cursor(campaign_cursor(campaign.id), done=True, failed=str(error))
                result.add("campaign", "failed")
    return result


def populate_outbox(
    *, source: ApplicationSource, sink: EmailSink, spec: PipelineSpec, result: PopulateResult, clock: Callable[[], datetime]
) -> None:
    cursor = sink.read_cursor(OUTBOX_CURSOR) or {}
    after_id = int(cursor.get("last_id", 0))
    groups = {group.name for group in spec.groups}
    while True:
        rows = source.outbox_page(after_id=after_id, limit=spec.populate.chunk_size)
        if not rows:
            return
        now = clock()
        documents = [outbox_document(row, now=now) for row in rows]
        _store_chunk(documents, sink=sink, source_name="outbox", result=result, groups=groups,
                     publish_chunk_size=spec.publish.chunk_size)
        after_id = rows[-1].id
        sink.write_cursor(OUTBOX_CURSOR, last_id=after_id)
        log.info("populate: stored outbox rows up to id %d", after_id)


def populate_campaign(
    campaign: Campaign,
    *,
    source: ApplicationSource,
    sink: EmailSink,
    spec: PipelineSpec,
    result: PopulateResult,
    clock: Callable[[], datetime],
) -> None:
    name = campaign_cursor(campaign.id)
    cursor = sink.read_cursor(name) or {}
    if cursor.get("done"):
        return
    groups = {group.name for group in spec.groups}
    after_user_id = int(cursor.get("last_user_id", 0))
    log.info("populate: expanding campaign %d (%s) from user id %d", campaign.id, campaign.name, after_user_id)
    while True:
        users = source.audience_page(campaign.audience, after_user_id=after_user_id, limit=spec.populate.chunk_size)
        # Only an empty page ends the audience: a page whose users were all skipped does not.
        if not users:
            break
        now = clock()
        documents = []
        for user in users:
            if user.unsubscribed:
                result.add("campaign", "skipped_unsubscribed")
            elif user.bounced:
                result.add("campaign", "skipped_bounced")
            else:
                documents.append(campaign_document(campaign, user, now=now))
        _store_chunk(documents, sink=sink, source_name="campaign", result=result, groups=groups,
                     publish_chunk_size=spec.publish.chunk_size)
        after_user_id = users[-1].id
        sink.write_cursor(name, last_user_id=after_user_id, done=False)
    sink.write_cursor(name, last_user_id=after_user_id, done=True)
    log.info("populate: campaign %d fully expanded", campaign.id)


def outbox_document(row: OutboxRow, *, now: datetime) -> dict[str, Any]:
    return {
        "_id": f"o{row.id}",
        "group": row.group,
        "source": "outbox",
        "source_id": row.id,
        "user_id": row.user_id,
        "template_id": row.template_id,
        "params": row.params,
        "params_error": row.params_error,
        "status": "pending",
        "created_at": now,
        "requested_at": row.created_at,
        "attempts": [],
    }


def campaign_document(campaign: Campaign, user: User, *, now: datetime) -> dict[str, Any]:
    return {
        "_id": f"c{campaign.id}u{user.id}",
        "group": campaign.group,
        "source": "campaign",
        "source_id": campaign.id,
        "user_id": user.id,
        "template_id": campaign.template_id,
        "params": {},
        "params_error": None,
        "status": "pending",
        "created_at": now,
        "requested_at": campaign.due_at,
        "attempts": [],
    }


def _store_chunk(
    documents: list[dict[str, Any]],
    *,
    sink: EmailSink,
    source_name: str,
    result: PopulateResult,
    groups: set[str],
    publish_chunk_size: int,
) -> None:
    if not documents:
        return
    # An email whose group has no queue, or whose outbox params are unreadable, fails alone: it is
    # stored and dequeued with its reason instead of blocking the chunk.
    unusable = []
    for document in documents:
        reason = document.get("params_error")
        if document["group"] not in groups:
            reason = f"email group {document['group']!r} is not configured; configured: {', '.join(sorted(groups))}"
        if reason:
            document["status"] = "failed"
            document["dequeue_reason"] = reason
            document["attempts"] = [{"attempt": 0, "at": document["created_at"], "reason": reason, "smtp_code": None}]
            unusable.append(document)
    counts = sink.insert_emails(documents, chunk_size=publish_chunk_size)
    result.add(source_name, "created", counts.created)
    result.add(source_name, "duplicate", counts.duplicates)
    if unusable:
        for document in unusable:
            log.warning("populate: email %s fails: %s", document["_id"], document["dequeue_reason"])
        sink.dequeue(unusable, stage="populate")
        result.add(source_name, "failed", len(unusable))
        for document in unusable:
            # Label values must come from a closed set: an unconfigured group counts as "unknown".
            label = document["group"] if document["group"] in groups else "unknown"
            metrics.DEQUEUED.labels(group=label, stage="populate").inc()
