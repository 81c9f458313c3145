"""Every Prometheus metric that the data plane exports, defined once, plus how to expose them.

Names follow Prometheus conventions: the `mailpipe_` prefix, base units (seconds, bytes), `_total`
on counters. Label values come from closed sets (group names from the configuration, outcomes,
components), never from addresses or document ids. The dashboards and alert rules under `charts/`
use only these names, which a test checks.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, push_to_gateway, start_http_server

from mailpipe import __version__
from mailpipe.errors import ConfigError

log = logging.getLogger(__name__)

# Seconds, from a few milliseconds (one SMTP exchange on a LAN) to several minutes (retries).
LATENCY_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)

BUILD_INFO = Info("mailpipe_build", "Mailpipe version of the running component.")
BUILD_INFO.info({"version": __version__})

POPULATED = Counter(
    "mailpipe_populated_total",
    "Rows that populate read, by source (campaign or outbox) and outcome "
    "(created, duplicate, skipped_unsubscribed, skipped_bounced, failed).",
    ["source", "outcome"],
)
PUBLISHED = Counter(
    "mailpipe_published_total",
    "Emails that publish handled, by group and outcome (queued, failed).",
    ["group", "outcome"],
)
PUBLISH_CHUNK_DURATION = Histogram(
    "mailpipe_publish_chunk_duration_seconds",
    "Time to look up, render, store and publish one chunk of documents.",
    ["group"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
DELIVERIES = Counter(
    "mailpipe_deliveries_total",
    "Deliveries that consumers handled, by group and outcome "
    "(sent, retried, dequeued, duplicate, recheck, missing, malformed).",
    ["group", "outcome"],
)
SEND_DURATION = Histogram(
    "mailpipe_smtp_send_duration_seconds",
    "Time of one SMTP transaction, MAIL FROM to the reply after DATA.",
    ["group"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
END_TO_END_LATENCY = Histogram(
    "mailpipe_end_to_end_latency_seconds",
    "Time from the request (outbox row or campaign due time) to SMTP acceptance.",
    ["group"],
    buckets=LATENCY_BUCKETS_SECONDS,
)
RETRIES = Counter(
    "mailpipe_retries_total",
    "Attempts that failed transiently and were scheduled again.",
    ["group"],
)
DEQUEUED = Counter(
    "mailpipe_dequeued_total",
    "Emails that failed for good and were saved to dequeued_mails, by group and stage (populate, publish, consume).",
    ["group", "stage"],
)
SMTP_CONNECTIONS = Counter(
    "mailpipe_smtp_connections_total",
    "SMTP connections opened by consumers, by group.",
    ["group"],
)
QUEUE_MESSAGES = Gauge(
    "mailpipe_queue_messages",
    "Messages in a group's queue as the RabbitMQ API reports them, by state (ready, unacked).",
    ["group", "state"],
)
HEALTHCHECK_STATUS = Gauge(
    "mailpipe_healthcheck_status",
    "Result of the last healthcheck, per check: 1 passed, 0 failed.",
    ["check"],
)
AUDIT_REPORTED = Counter(
    "mailpipe_audit_reported_total",
    "Dequeued emails reported to the team by audit-dequeued.",
)
JOB_LAST_SUCCESS = Gauge(
    "mailpipe_job_last_success_timestamp_seconds",
    "Unix time at which a job (populate, publish, audit-dequeued, healthcheck) last finished without error.",
    ["job"],
)


def serve_metrics(port: int) -> None:
    """Serve /metrics on all interfaces at `port` from a background thread (long-running roles)."""
    try:
        start_http_server(port)
    except OSError as error:
        raise ConfigError(
            f"cannot serve metrics on port {port}: {error.strerror}; choose another port with --metrics-port"
        ) from error
    log.info("serving metrics on port %d", port)


def push_metrics(gateway_url: str | None, *, job: str, registry: CollectorRegistry | None = None) -> None:
    """Push this process's metrics to a Pushgateway (short jobs); do nothing when none is configured.

    A failed push is logged and swallowed: losing one job's metrics must not fail the job.
    """
    if not gateway_url:
        return
    from prometheus_client import REGISTRY

    try:
        push_to_gateway(gateway_url, job=f"mailpipe_{job.replace('-', '_')}", registry=registry or REGISTRY)
    except OSError as error:
        # The gateway is optional infrastructure; the job's own work already succeeded.
        log.warning("pushing metrics for %s to the Pushgateway failed: %s", job, error)
