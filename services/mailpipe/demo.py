"""`mailpipe demo`: seed a realistic audience, run the whole pipeline locally until every email is
sent or dequeued, and print a summary per group.

It uses the servers that `make services` starts: maildev receives the mail (its web UI shows
it), so the demo runs at maildev's pace (about 150 emails per second on a 2-core machine).
`mailpipe bench` measures the pipeline itself against smtp-sink.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

from mailpipe.adapters.mongo import MailStore
from mailpipe.adapters.mysql import ApplicationDatabase
from mailpipe.config import Config
from mailpipe.run import Supervisor, pipeline_children
from mailpipe.seed import ORDER_CONFIRMATION, insert_outbox_requests, insert_template, seed

log = logging.getLogger(__name__)

UNFINISHED = ("pending", "queued", "retrying", "failed")
MAILDEV_WEB_URL = os.environ.get("MAILPIPE_MAILDEV_WEB_URL", "http://127.0.0.1:1080")


@dataclass(frozen=True)
class GroupSummary:
    group: str
    sent: int
    retried: int
    dequeued: int
    emails_per_second: float
    seconds: float  # from `since` to the group's last email that reached a final state
    p50_seconds: float | None
    p95_seconds: float | None


def pipeline_finished(database: ApplicationDatabase, store: MailStore) -> bool:
    """Return whether populate has read every source to its end and no email is left in flight."""
    last_outbox = database.query("SELECT COALESCE(MAX(id), 0) AS id FROM email_outbox")[0]["id"]
    cursor = store.read_cursor("outbox") or {}
    if int(cursor.get("last_id", 0)) < int(last_outbox):
        return False
    for row in database.query("SELECT id FROM campaigns WHERE due_at <= UTC_TIMESTAMP(6) AND cancelled_at IS NULL"):
        if not (store.read_cursor(f"campaign:{row['id']}") or {}).get("done"):
            return False
    counts = store.count_by_status()
    return not any(counts.get(status, 0) for status in UNFINISHED)


def summarize(store: MailStore, *, since: datetime) -> list[GroupSummary]:
    """Summarize the emails that reached a final state at or after `since`, per group."""
    rows: dict[str, list[dict[str, Any]]] = {}
    projection = {"group": 1, "status": 1, "requested_at": 1, "sent_at": 1, "dequeued_at": 1, "attempt_count": 1}
    for document in store.emails.find({}, projection):
        finished_at = document.get("sent_at") or document.get("dequeued_at")
        if isinstance(finished_at, datetime) and finished_at >= since:
            rows.setdefault(document["group"], []).append(document)
    summaries = []
    for group, documents in sorted(rows.items()):
        sent = [document for document in documents if document["status"] == "sent"]
        latencies = sorted((document["sent_at"] - document["requested_at"]).total_seconds() for document in sent)
        window = 0.0
        if sent:
            window = max((document["sent_at"] - since).total_seconds() for document in sent)
        finished = [document.get("sent_at") or document.get("dequeued_at") for document in documents]
        seconds = max((at - since).total_seconds() for at in finished if isinstance(at, datetime))
        summaries.append(
            GroupSummary(
                group=group,
                sent=len(sent),
                retried=sum(1 for document in documents if int(document.get("attempt_count") or 1) > 1),
                dequeued=sum(1 for document in documents if document["status"] == "dequeued"),
                emails_per_second=len(sent) / window if window > 0 else 0.0,
                seconds=seconds,
                p50_seconds=_percentile(latencies, 50),
                p95_seconds=_percentile(latencies, 95),
            )
        )
    return summaries


def _percentile(values: list[float], percent: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def format_summary(summaries: list[GroupSummary]) -> str:
    if not summaries:
        return "Nothing new was sent: every email of this data set had been handled by an earlier run."
    lines = [f"{'group':<16}{'sent':>8}{'retried':>9}{'dequeued':>10}{'emails/s':>10}{'p50 s':>9}{'p95 s':>9}"]
    for summary in summaries:
        p50 = f"{summary.p50_seconds:.2f}" if summary.p50_seconds is not None else "-"
        p95 = f"{summary.p95_seconds:.2f}" if summary.p95_seconds is not None else "-"
        lines.append(
            f"{summary.group:<16}{summary.sent:>8}{summary.retried:>9}{summary.dequeued:>10}"
            f"{summary.emails_per_second:>10.1f}{p50:>9}{p95:>9}"
        )
    lines.append("Latency is from the outbox row (or the campaign's due time) to SMTP acceptance.")
    return "\n".join(lines)


def main(config: Config, *, config_path: str | None, users: int, transactional: int, timeout_seconds: float) -> int:
    started_at = datetime.now(UTC)
    # A third of the transactional requests exist from the start. The rest arrive while the
    # campaign is being sent, to show that urgent mail does not wait behind it.
    upfront = transactional // 3
    seeded = seed(config, users=users, transactional=upfront)
    database = ApplicationDatabase(config.connections.mysql_url)
    store = MailStore(config.connections.mongodb_url)
    store.ensure_indexes()
    trickle_left = transactional - upfront if seeded else 0
    order_template = insert_template(database, ORDER_CONFIRMATION) if trickle_left else 0

    log_directory = os.path.join(os.environ.get("MAILPIPE_STATE_DIR", ".run"), "logs", "demo")
    supervisor = Supervisor(
        pipeline_children(config, interval_seconds=1.0, metrics_base_port=config.spec.monitoring.metrics_port),
        config_path=config_path,
        periodic={"audit-dequeued": (["audit-dequeued"], 60.0), "healthcheck": (["healthcheck"], 60.0)},
        log_directory=log_directory,
    )
    print(f"Starting the pipeline; process logs go to {log_directory}/")
    supervisor.start()
    deadline = time.monotonic() + timeout_seconds
    finished = False
    ticks = 0
    try:
        with tqdm(total=0, unit="email", desc="sent or dequeued", dynamic_ncols=True) as progress:
            while time.monotonic() < deadline:
                supervisor.poll()
                if trickle_left:
                    batch = min(10, trickle_left)
                    insert_outbox_requests(database, count=batch, template_id=order_template, user_count=users, seed=trickle_left)
                    trickle_left -= batch
                # Counting scans cron_emails in FerretDB, which also serves the pipeline: every 3 s.
                if ticks % 3 == 0:
                    counts = store.count_by_status()
                    progress.total = sum(counts.values())
                    progress.n = counts.get("sent", 0) + counts.get("dequeued", 0)
                    progress.refresh()
                    if not trickle_left and pipeline_finished(database, store):
                        finished = True
                        break
                ticks += 1
                time.sleep(1.0)
    except KeyboardInterrupt:
        print("Interrupted; stopping the pipeline (nothing is lost: a new run continues where this one stopped).")
    finally:
        supervisor.stop()

    print()
    print(format_summary(summarize(store, since=started_at)))
    print(f"\nSee the mails in maildev's web UI: {MAILDEV_WEB_URL}")
    print("Dequeued mail is in MongoDB's dequeued_mails collection; `mailpipe audit-dequeued` mails a summary.")
    database.close()
    store.close()
    if not finished:
        print(f"The pipeline did not finish within {timeout_seconds:.0f} s; see the logs in {log_directory}/")
        return 1
    return 0
