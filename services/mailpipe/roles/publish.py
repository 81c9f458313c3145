"""publish: the middle-level publisher. Takes a group's pending emails in chunks, renders each
into its finished message, stores it in the document and publishes the ids to the group's queue.

Per chunk: one look-up of users and one of templates (`WHERE id IN (...)`), never one per email.
Populate queues pending emails in chunks of at most `publish.chunkSize` per group. The publisher
takes the oldest chunk and deletes it once every id in it is published.

Crash safety: the ids of the chunk's pending emails are journaled in `publish_batches` before
any of them is stored finished and published, `PUBLISH_STEP` at a time. The journal entry is
removed only after RabbitMQ confirmed every id and the chunk was deleted. A publisher killed
mid-chunk leaves its entry behind, and the next run publishes that batch's queued ids again and
keeps only the chunk's still-pending emails. Ids already published then sit in the queue twice,
and the consumer's claims send each email once.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from mailpipe import metrics
from mailpipe.adapters.mongo import PendingChunk, now_utc
from mailpipe.adapters.mysql import Template, User
from mailpipe.config import PipelineSpec
from mailpipe.errors import PermanentError
from mailpipe.mail.compose import compose_email, make_message_id, validate_address
from mailpipe.mail.render import TemplateRenderer, TemplateSource
from mailpipe.topology import work_queue_name

log = logging.getLogger(__name__)

PUBLISH_STEP = 100


class LookupSource(Protocol):
    def users_by_id(self, user_ids: list[int]) -> dict[int, User]: ...
    def templates_by_id(self, template_ids: list[int]) -> dict[int, Template]: ...


class PublishStore(Protocol):
    def pending_chunk(self, group: str) -> PendingChunk | None: ...
    def keep_pending(self, group: str, chunk_id: str, emails: list[dict[str, Any]]) -> None: ...
    def open_publish_batch(self, batch_id: str, *, group: str, chunk_id: str, email_ids: list[str]) -> None: ...
    def close_publish_batch(self, batch_id: str) -> None: ...
    def open_publish_batches(self, group: str) -> list[dict[str, Any]]: ...
    def store_baked(self, documents: list[dict[str, Any]]) -> list[str]: ...
    def emails_by_id(self, email_ids: list[str]) -> dict[str, dict[str, Any]]: ...
    def dequeue(self, documents: list[dict[str, Any]], *, stage: str) -> None: ...


class IdPublisher(Protocol):
    def publish_ids(self, queue: str, email_ids: list[str]) -> None: ...


@dataclass
class PublishResult:
    queued: int = 0
    failed: int = 0
    republished: int = 0
    chunks: int = 0


def publish_group(
    group: str,
    *,
    lookups: LookupSource,
    store: PublishStore,
    queue: IdPublisher,
    spec: PipelineSpec,
    renderer: TemplateRenderer | None = None,
    max_chunks: int | None = None,
) -> PublishResult:
    """Publish a group's pending emails until none is left (or `max_chunks` chunks are done)."""
    renderer = renderer or TemplateRenderer(max_output_chars=spec.smtp.max_message_bytes)
    result = PublishResult()
    result.republished = recover_open_batches(group, store=store, queue=queue)
    while max_chunks is None or result.chunks < max_chunks:
        chunk = store.pending_chunk(group)
        if chunk is None:
            break
        started = time.perf_counter()
        publish_chunk(group, chunk, lookups=lookups, store=store, queue=queue, spec=spec, renderer=renderer, result=result)
        metrics.PUBLISH_CHUNK_DURATION.labels(group=group).observe(time.perf_counter() - started)
        result.chunks += 1
    return result


def recover_open_batches(group: str, *, store: PublishStore, queue: IdPublisher) -> int:
    """Publish again the queued ids of batches that a previous publisher never closed."""
    republished = 0
    for batch in store.open_publish_batches(group):
        documents = store.emails_by_id(list(batch["ids"]))
        # Ids still pending were never marked queued; the next chunk picks them up normally.
        queued = [email_id for email_id in batch["ids"] if documents.get(email_id, {}).get("status") == "queued"]
        log.warning(
            "publish: batch %s of group %s was left open by an earlier run; publishing its %d queued ids again",
            batch["_id"], group, len(queued),
        )
        queue.publish_ids(work_queue_name(group), queued)
        # The chunk keeps only its emails that are still pending, including those that failed to
        # render before the crash and those the crash left absent. The next run publishes or
        # dequeues them.
        chunk = store.pending_chunk(group)
        if chunk is not None and chunk.chunk_id == batch.get("chunk_id"):
            statuses = store.emails_by_id([email["_id"] for email in chunk.emails])
            still_pending = [
                email for email in chunk.emails
                if statuses.get(email["_id"], {"status": "pending"}).get("status") == "pending"
            ]
            store.keep_pending(group, chunk.chunk_id, still_pending)
        store.close_publish_batch(batch["_id"])
        republished += len(queued)
    return republished


def publish_chunk(
    group: str,
    chunk: PendingChunk,
    *,
    lookups: LookupSource,
    store: PublishStore,
    queue: IdPublisher,
    spec: PipelineSpec,
    renderer: TemplateRenderer,
    result: PublishResult,
) -> None:
    documents = _still_pending(group, chunk, store)
    users = lookups.users_by_id([document["user_id"] for document in documents])
    templates = lookups.templates_by_id([document["template_id"] for document in documents])

    failed: list[dict[str, Any]] = []
    published = 0
    batch_id = uuid.uuid4().hex
    if documents:
        store.open_publish_batch(batch_id, group=group, chunk_id=chunk.chunk_id,
                                 email_ids=[document["_id"] for document in documents])
        # Rendered, stored and published a step at a time, so that consumers start on a chunk's
        # first emails at once. One step is stored and published in a second thread while the
        # main thread renders the next: rendering needs the CPU, storing mostly waits for servers.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish-store") as storer:
            in_flight: Future[int] | None = None
            for start in range(0, len(documents), PUBLISH_STEP):
                baked: list[dict[str, Any]] = []
                for document in documents[start : start + PUBLISH_STEP]:
                    try:
                        fields = bake(document, user=users.get(document["user_id"]),
                                      template=templates.get(document["template_id"]), spec=spec, renderer=renderer)
                    except PermanentError as error:
                        log.warning("publish: email %s of group %s fails: %s", document["_id"], group, error.reason)
                        failed.append(_with_failure(document, error.reason))
                        continue
                    baked.append({**document, **fields, "status": "queued"})
                if in_flight is not None:
                    published += in_flight.result()
                in_flight = storer.submit(_store_and_publish, group, baked, store=store, queue=queue)
            if in_flight is not None:
                published += in_flight.result()
    if failed:
        store.dequeue(failed, stage="publish")
    store.keep_pending(group, chunk.chunk_id, [])
    if documents:
        store.close_publish_batch(batch_id)
    result.queued += published
    metrics.PUBLISHED.labels(group=group, outcome="queued").inc(published)
    if failed:
        result.failed += len(failed)
        metrics.PUBLISHED.labels(group=group, outcome="failed").inc(len(failed))
        metrics.DEQUEUED.labels(group=group, stage="publish").inc(len(failed))
    log.info("publish: group %s chunk done: %d queued, %d failed", group, published, len(failed))


def _store_and_publish(group: str, baked: list[dict[str, Any]], *, store: PublishStore, queue: IdPublisher) -> int:
    stored = store.store_baked(baked)
    queue.publish_ids(work_queue_name(group), stored)
    return len(stored)


def _still_pending(group: str, chunk: PendingChunk, store: PublishStore) -> list[dict[str, Any]]:
    """Return the chunk's emails that still wait for the publisher, as stored now.

    An email missing from `cron_emails` was removed by a publisher that stopped between deleting
    and inserting it (see `store_baked`), so its copy in the chunk is used instead.
    """
    current = store.emails_by_id([email["_id"] for email in chunk.emails])
    documents = []
    skipped: dict[str, int] = {}
    for copy in chunk.emails:
        document = current.get(copy["_id"], copy)
        if document.get("status") == "pending":
            documents.append(document)
        else:
            status = str(document.get("status"))
            skipped[status] = skipped.get(status, 0) + 1
    if skipped:
        log.info("publish: chunk %s of group %s: skipping emails handled already, by status: %s",
                 chunk.chunk_id, group, skipped)
    return documents


def bake(
    document: dict[str, Any],
    *,
    user: User | None,
    template: Template | None,
    spec: PipelineSpec,
    renderer: TemplateRenderer,
) -> dict[str, Any]:
    """Render and compose one email; return the fields to store in its document."""
    if user is None:
        raise PermanentError(f"user {document['user_id']} not found")
    if template is None:
        raise PermanentError(f"template {document['template_id']} not found")
    recipient = validate_address(user.email)
    context: dict[str, Any] = {
        **document.get("params", {}),
        "first_name": user.first_name,
        "last_name": user.last_name,
        "email": user.email,
        "locale": user.locale,
    }
    content = renderer.render(
        TemplateSource(
            id=template.id,
            subject=template.subject,
            body_text=template.body_text,
            body_html=template.body_html,
            version=template.updated_at.isoformat(),
        ),
        context,
    )
    # The document's creation time makes the Message-ID unique across databases and re-seeded
    # data, while staying the same for every render of this document.
    created_at = document.get("created_at")
    stamp = f".{int(created_at.timestamp() * 1000)}" if isinstance(created_at, datetime) else ""
    message_id = make_message_id(f"{document['_id']}{stamp}", domain=spec.sender.message_id_domain)
    display_name = " ".join(part for part in (user.first_name, user.last_name) if part)
    composed = compose_email(
        from_address=spec.sender.from_address,
        from_name=spec.sender.from_name,
        to=recipient,
        to_name=display_name,
        reply_to=spec.sender.reply_to,
        content=content,
        message_id=message_id,
        max_message_bytes=spec.smtp.max_message_bytes,
        headers={"X-Mailpipe-Id": document["_id"], "X-Mailpipe-Group": document["group"]},
    )
    return {
        "envelope_from": composed.envelope_from,
        "envelope_to": composed.envelope_to,
        "message": composed.message,
        "message_id": composed.message_id,
        "smtputf8": composed.requires_smtputf8,
        "baked_at": now_utc(),
    }


def _with_failure(document: dict[str, Any], reason: str) -> dict[str, Any]:
    failed = dict(document)
    failed["dequeue_reason"] = reason
    failed["attempts"] = [*document.get("attempts", []), {"attempt": 0, "at": now_utc(), "reason": reason, "smtp_code": None}]
    return failed
