"""`mailpipe bench`: a benchmark, not a test. Sends a campaign end to end into Postfix's smtp-sink
while transactional requests keep arriving, then measures the raw SMTP limit of the same machine
with smtp-source into the same smtp-sink, and prints one comparison line.

It uses databases of its own in MySQL and MongoDB (`mailpipe_bench_<time>`), made for the run
and dropped at its end, so it never touches the demo's data.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import pymongo
import pymysql

from mailpipe.adapters.mongo import MailStore
from mailpipe import procstat
from mailpipe.adapters.mysql import ApplicationDatabase, connection_arguments
from mailpipe.adapters.rabbitmq import QueueClient
from mailpipe.config import Config, PipelineSpec
from mailpipe.demo import pipeline_finished, summarize
from mailpipe.run import Supervisor, pipeline_children
from mailpipe.seed import ANNOUNCEMENT, ORDER_CONFIRMATION, insert_template
from mailpipe.topology import dead_letter_queue_name, group_queues

log = logging.getLogger(__name__)

SMTP_SINK_ADDRESS = os.environ.get("MAILPIPE_BENCH_SMTP_SINK", "127.0.0.1:2525")
TRANSACTIONAL_PER_SECOND = 10
SERVERS = ("ferretdb", "rabbitmq", "mariadb", "smtp-sink")
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Niklaus")


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def create_databases(config: Config, name: str) -> tuple[str, str]:
    """Create the benchmark's MySQL database; return the MySQL and MongoDB URLs for `name`."""
    arguments = connection_arguments(config.connections.mysql_url)
    server = pymysql.connect(**{key: arguments[key] for key in ("host", "port", "user", "password")}, autocommit=True)
    with server.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    server.close()
    return _with_database(config.connections.mysql_url, name), _with_database(config.connections.mongodb_url, name)


def drop_databases(config: Config, name: str) -> None:
    """Drop the benchmark's databases, once no process of the run uses them any more."""
    arguments = connection_arguments(config.connections.mysql_url)
    server = pymysql.connect(**{key: arguments[key] for key in ("host", "port", "user", "password")}, autocommit=True)
    with server.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
    server.close()
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(_with_database(config.connections.mongodb_url, name))
    client.drop_database(name)
    client.close()


def seed_audience(database: ApplicationDatabase, emails: int) -> tuple[int, int]:
    """Insert `emails` deliverable users and a due campaign; return (campaign template, order template)."""
    database.apply_schema()
    rows = [
        (f"{FIRST_NAMES[number % len(FIRST_NAMES)].lower()}.{number}@bench.example", FIRST_NAMES[number % len(FIRST_NAMES)], "Bench", "en_US")
        for number in range(emails)
    ]
    for start in range(0, len(rows), 10_000):
        database.execute_many(
            "INSERT INTO users (email, first_name, last_name, locale) VALUES (%s, %s, %s, %s)", rows[start : start + 10_000]
        )
    return insert_template(database, ANNOUNCEMENT), insert_template(database, ORDER_CONFIRMATION)


def campaign_finished(
    store: MailStore, queue: QueueClient, group: str, *, campaign: int, spec: PipelineSpec, expected: int
) -> bool:
    # Counting scans cron_emails, which FerretDB does on the cores that serve the pipeline, so
    # count only once populate read the whole audience, the publisher has nothing left of this
    # group and its queues are empty.
    if not (store.read_cursor(f"campaign:{campaign}") or {}).get("done") or store.has_pending(group):
        return False
    queues = [definition.name for definition in group_queues(group, spec=spec)]
    if any(queue.queue_depth(name) for name in queues if name != dead_letter_queue_name(group)):
        return False
    counts = store.count_by_status(group)
    return counts.get("sent", 0) + counts.get("dequeued", 0) >= expected


def benchmark_groups(spec: PipelineSpec) -> tuple[str, str]:
    """Return the group that sends the campaign and the group of the transactional requests."""
    names = [group.name for group in spec.groups]
    campaign = "announcements" if "announcements" in names else names[0]
    urgent = "transactional" if "transactional" in names else names[-1]
    return campaign, urgent


def server_cpu_seconds(state_directory: str) -> dict[str, float]:
    """Return the CPU time used so far by each local server that `make services` started."""
    readings: dict[str, float] = {}
    for name in SERVERS:
        try:
            with open(os.path.join(state_directory, "pids", f"{name}.pid"), encoding="ascii") as pid_file:
                pid = int(pid_file.read().strip())
        except (OSError, ValueError):
            continue  # an external server, or one this checkout did not start
        readings[name] = procstat.tree_cpu_seconds(pid)
    return readings


def raw_smtp_rate(messages: int, *, message_bytes: int) -> float:
    """Emails per second that smtp-source pushes into smtp-sink over 8 parallel sessions."""
    if shutil.which("smtp-source") is None:
        raise RuntimeError("smtp-source is missing; `make services` installs Debian's postfix package")
    started = time.perf_counter()
    subprocess.run(
        ["smtp-source", "-s", "8", "-m", str(messages), "-l", str(message_bytes), "-f", "bench@bench.example",
         "-t", "sink@bench.example", SMTP_SINK_ADDRESS],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return messages / (time.perf_counter() - started)


def main(config: Config, *, emails: int, consumers: int | None) -> int:
    if consumers is None:
        consumers = max(1, config.spec.group(benchmark_groups(config.spec)[0]).min_consumers)
    name = f"mailpipe_bench_{datetime.now(UTC):%Y%m%d%H%M%S}"
    mysql_url, mongodb_url = create_databases(config, name)
    try:
        end_to_end = run_campaign(config, mysql_url, mongodb_url, emails=emails, consumers=consumers)
    finally:
        drop_databases(config, name)

    print(f"Measuring raw SMTP: smtp-source, {emails} messages into the same smtp-sink ...", flush=True)
    raw = raw_smtp_rate(emails, message_bytes=1500)
    print(f"end-to-end: {end_to_end:.0f} emails/s; raw SMTP: {raw:.0f} emails/s; ratio: {end_to_end / raw:.2f}")
    return 0


def run_campaign(config: Config, mysql_url: str, mongodb_url: str, *, emails: int, consumers: int) -> float:
    """Send the campaign through the pipeline, print its figures and return its emails per second."""
    environment = {
        "MAILPIPE_MYSQL_URL": mysql_url,
        "MAILPIPE_MONGODB_URL": mongodb_url,
        "MAILPIPE_SMTP_URL": f"smtp://{SMTP_SINK_ADDRESS}",
    }
    database = ApplicationDatabase(mysql_url)
    store = MailStore(mongodb_url)
    store.ensure_indexes()
    print(f"Seeding {emails} users ...", flush=True)
    campaign_template, order_template = seed_audience(database, emails)
    campaign_group, urgent_group = benchmark_groups(config.spec)

    log_directory = os.path.join(os.environ.get("MAILPIPE_STATE_DIR", ".run"), "logs", "bench")
    children = pipeline_children(
        config, interval_seconds=1.0, metrics_base_port=config.spec.monitoring.metrics_port,
        consumers={campaign_group: consumers, urgent_group: 1},
    )
    supervisor = Supervisor(children, config_path=None, environment=environment, log_directory=log_directory)
    started_at = datetime.now(UTC)
    database.execute(
        "INSERT INTO campaigns (name, template_id, email_group, audience, due_at) VALUES (%s, %s, %s, 'all', %s)",
        ("Benchmark campaign", campaign_template, campaign_group, started_at.replace(tzinfo=None)),
    )
    campaign_id = int(database.query("SELECT MAX(id) AS id FROM campaigns")[0]["id"])
    state_directory = os.environ.get("MAILPIPE_STATE_DIR", ".run")
    servers_before = server_cpu_seconds(state_directory)
    queue = QueueClient(config.connections.rabbitmq_url, name="mailpipe-bench")
    supervisor.start()
    print(f"Sending {emails} campaign emails into smtp-sink with {consumers} consumers; logs in {log_directory}/", flush=True)
    transactional = 0
    checks = 0
    try:
        # Transactional requests keep arriving while the campaign is sent; then the last ones drain.
        while True:
            supervisor.poll()
            for _ in range(TRANSACTIONAL_PER_SECOND):
                database.execute(
                    "INSERT INTO email_outbox (email_group, user_id, template_id, params) VALUES (%s, %s, %s, %s)",
                    (urgent_group, 1 + transactional % emails, order_template, '{"order_id": "MP-1", "total": "9.90 EUR"}'),
                )
                transactional += 1
            queue.sleep(1.0)  # serves the connection's heartbeats too
            checks += 1
            if checks % 5 == 0 and campaign_finished(
                store, queue, campaign_group, campaign=campaign_id, spec=config.spec, expected=emails
            ):
                break
        servers_after = server_cpu_seconds(state_directory)
        while not pipeline_finished(database, store):
            supervisor.poll()
            queue.sleep(2.0)
    finally:
        supervisor.stop()
        queue.close()

    summaries = {summary.group: summary for summary in summarize(store, since=started_at)}
    campaign = summaries.get(campaign_group)
    urgent = summaries.get(urgent_group)
    if campaign is None:
        raise RuntimeError("the benchmark campaign sent nothing; see the logs")
    # From the campaign's due time to the last of its emails to reach a final state, read from the
    # documents, so that the polling interval of this loop does not change the figure.
    handled = campaign.sent + campaign.dequeued
    elapsed = campaign.seconds
    end_to_end = handled / elapsed
    print(f"\nCampaign: {handled} emails in {elapsed:.1f} s ({end_to_end:.0f} emails/s)")
    if urgent and urgent.p95_seconds is not None:
        print(f"Transactional while the campaign ran: {urgent.sent} sent, p50 {urgent.p50_seconds:.2f} s, "
              f"p95 {urgent.p95_seconds:.2f} s from outbox row to SMTP acceptance")
    print("Per process: peak memory (VmHWM) and CPU time while the benchmark ran:")
    for child in children:
        print(f"  {child.name:<28}{child.peak_rss_bytes / 2**20:8.1f} MiB{child.cpu_seconds:9.1f} s CPU")
    for server, before in servers_before.items():
        used = servers_after.get(server, before) - before
        print(f"  {server + ' (server)':<28}{'':>12}{used:9.1f} s CPU")
    store.close()
    database.close()
    return end_to_end
