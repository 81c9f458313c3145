"""The `audit-dequeued` role: emails the team one summary of the mail dequeued since the last run.

Each run reads the `dequeued_mails` documents that no report has covered and sends one summary
to the notification recipients. The summary has counts per group and per reason, then a table
of the oldest documents with their ids, attempts and reasons, but never an email's content.
Only then does the run mark those documents reported. A failed send marks nothing, so the next
run reports the same mail.

NOTE: a crash between the SMTP server accepting the summary and the marking makes the next run
report those documents a second time, under a new report id. Marking first instead would lose
the report for good on a failed send, which is worse for a failure report.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from uuid import uuid4

from mailpipe.adapters.mongo_audit import DequeuedRecord, MongoAuditStore
from mailpipe.adapters.notify import SmtpNotifier
from mailpipe.config import Config
from mailpipe.errors import ServiceUnavailableError
from mailpipe.metrics import AUDIT_REPORTED, JOB_LAST_SUCCESS, push_metrics

log = logging.getLogger(__name__)

JOB_NAME = "audit-dequeued"
# Documents covered by one report; more wait for the next run, so one email stays readable.
MAX_REPORTED_PER_RUN = 10_000
TABLE_ROWS = 50
REASON_ROWS = 20
REASON_MAX_CHARS = 120


class DequeuedStore(Protocol):
    def unreported_dequeued(self, limit: int) -> list[DequeuedRecord]: ...

    def mark_dequeued_reported(self, ids: Sequence[Any], *, report_id: str, reported_at: datetime) -> int: ...


class Notifier(Protocol):
    def notify(self, subject: str, text: str) -> None: ...


@dataclass(frozen=True)
class AuditResult:
    """Outcome of one run; `report_id` is None when there was nothing to report."""

    report_id: str | None
    reported: int
    per_group: dict[str, int] = field(default_factory=dict)
    per_reason: dict[str, int] = field(default_factory=dict)
    more_pending: bool = False


def main(config: Config) -> int:
    """Report newly dequeued mail, push the metrics and return the exit status."""
    store = MongoAuditStore.connect(config.connections.mongodb_url)
    try:
        result = run_audit(config=config, store=store, notifier=SmtpNotifier.from_config(config))
    except ServiceUnavailableError:
        # run_audit has logged what was and was not recorded; the next run picks up the rest.
        push_metrics(config.connections.pushgateway_url, job=JOB_NAME)
        return 1
    finally:
        store.close()
    JOB_LAST_SUCCESS.labels(job=JOB_NAME).set_to_current_time()
    push_metrics(config.connections.pushgateway_url, job=JOB_NAME)
    log.info("audit-dequeued finished: %d emails reported", result.reported)
    return 0


def run_audit(
    *,
    config: Config,
    store: DequeuedStore,
    notifier: Notifier,
    max_reported: int = MAX_REPORTED_PER_RUN,
    table_rows: int = TABLE_ROWS,
) -> AuditResult:
    """Send one summary of the unreported dequeued mail, then mark that mail reported.

    Raises ServiceUnavailableError when the store or the SMTP server fails.
    """
    if not config.spec.notifications.recipients:
        log.warning("no notification recipients configured; dequeued mail stays unreported until some are")
        return AuditResult(report_id=None, reported=0)

    records = store.unreported_dequeued(max_reported)
    if not records:
        log.info("no newly dequeued mail to report")
        return AuditResult(report_id=None, reported=0)

    reported_at = datetime.now(UTC)
    report_id = new_report_id(reported_at)
    more_pending = len(records) >= max_reported
    subject, text = format_report(
        records, report_id=report_id, reported_at=reported_at, table_rows=table_rows, more_pending=more_pending
    )
    try:
        notifier.notify(subject, text)
    except ServiceUnavailableError as error:
        log.error("report %s of %d dequeued emails not sent, none marked reported: %s", report_id, len(records), error)
        raise

    ids = [record["_id"] for record in records]
    try:
        store.mark_dequeued_reported(ids, report_id=report_id, reported_at=reported_at)
    except ServiceUnavailableError as error:
        log.error("report %s was sent but marking its emails failed; the next run reports them again: %s", report_id, error)
        raise

    AUDIT_REPORTED.inc(len(records))
    log.info("report %s sent: %d dequeued emails", report_id, len(records))
    return AuditResult(
        report_id=report_id,
        reported=len(records),
        per_group=dict(count_by_group(records)),
        per_reason=dict(count_by_reason(records)),
        more_pending=more_pending,
    )


def new_report_id(reported_at: datetime) -> str:
    """Return an id that sorts by time, with a random suffix so that two runs in one second differ."""
    return f"{reported_at:%Y%m%dT%H%M%SZ}-{uuid4().hex[:8]}"


def count_by_group(records: Sequence[DequeuedRecord]) -> Counter[str]:
    return Counter(record.get("group", "(no group)") for record in records)


def count_by_reason(records: Sequence[DequeuedRecord]) -> Counter[str]:
    return Counter(one_line(record.get("reason", "(no reason)")) for record in records)


def one_line(text: str, *, max_chars: int = REASON_MAX_CHARS) -> str:
    """Collapse whitespace (SMTP replies span lines) and cut the text to `max_chars`."""
    flat = " ".join(text.split())
    if len(flat) <= max_chars:
        return flat
    return flat[: max_chars - 3] + "..."


def format_report(
    records: Sequence[DequeuedRecord],
    *,
    report_id: str,
    reported_at: datetime,
    table_rows: int,
    more_pending: bool,
) -> tuple[str, str]:
    """Return the subject and plain text of the summary email."""
    noun = "email" if len(records) == 1 else "emails"
    subject = f"Mailpipe: {len(records)} dequeued {noun} (report {report_id})"
    lines = [
        f"Mailpipe report {report_id}, {reported_at:%Y-%m-%d %H:%M} UTC.",
        "",
        f"{len(records)} emails failed for good since the last report and were not sent.",
    ]
    if more_pending:
        lines.append(f"This report reached its limit of {len(records)} emails; the next run reports any others.")
    lines += ["", "Per group:"]
    lines += [f"  {count:>7}  {group}" for group, count in count_by_group(records).most_common()]
    lines += ["", "Per reason, most frequent first:"]
    reasons = count_by_reason(records)
    lines += [f"  {count:>7}  {reason}" for reason, count in reasons.most_common(REASON_ROWS)]
    if len(reasons) > REASON_ROWS:
        lines.append(f"  ({len(reasons) - REASON_ROWS} more distinct reasons)")
    table_records = records[:table_rows]
    lines += ["", f"The {len(table_records)} oldest, with their number of attempts:"]
    lines.append(f"  {'id':<26}  {'group':<16}  {'attempts':>8}  reason")
    for record in table_records:
        attempts = len(record.get("attempts", []))
        group = record.get("group", "(no group)")
        reason = one_line(record.get("reason", "(no reason)"))
        lines.append(f"  {str(record['_id']):<26}  {group:<16}  {attempts:>8}  {reason}")
    lines += ["", f"Each email is saved whole in the MongoDB collection dequeued_mails under its id, marked with report_id {report_id}."]
    return subject, "\n".join(lines) + "\n"
