"""The `healthcheck` role: checks the RabbitMQ cluster through its management HTTP API.

Runs a fixed set of checks, each giving one result line (name, passed or failed, detail), sets
`mailpipe_healthcheck_status{check}` per check and, when any check fails, sends one notification
email to the team. The CLI and the local supervisor call `main`; tests call `run_healthcheck`
with their own API clients and notifier.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from mailpipe.adapters.notify import SmtpNotifier
from mailpipe.adapters.rabbitmq_api import (
    AckMode,
    ChannelInfo,
    ExchangeInfo,
    FetchedMessage,
    ManagementAPIError,
    NodeInfo,
    QueueInfo,
    RabbitMQAdmin,
)
from mailpipe.config import Config, PipelineSpec
from mailpipe.errors import ServiceUnavailableError
from mailpipe.metrics import HEALTHCHECK_STATUS, JOB_LAST_SUCCESS, QUEUE_MESSAGES, push_metrics
from mailpipe.topology import CANARY_QUEUE, DEFAULT_EXCHANGE, all_queues, work_queue_name

log = logging.getLogger(__name__)

JOB_NAME = "healthcheck"

CHECK_NODES_RUNNING = "nodes_running"
CHECK_PARTITIONS = "partitions"
CHECK_QUEUES_PRESENT = "queues_present"
CHECK_MESSAGE_COUNTS = "message_counts"
CHECK_QUORUM_REPLICAS = "quorum_replicas"
CHECK_EXCHANGES = "exchanges"
CHECK_CHANNELS = "channels"
CHECK_CANARY = "canary"
CHECK_NAMES = (
    CHECK_NODES_RUNNING,
    CHECK_PARTITIONS,
    CHECK_QUEUES_PRESENT,
    CHECK_MESSAGE_COUNTS,
    CHECK_QUORUM_REPLICAS,
    CHECK_EXCHANGES,
    CHECK_CHANNELS,
    CHECK_CANARY,
)

# The exchanges every RabbitMQ virtual host is created with. Mailpipe publishes and dead-letters
# through the default exchange only, but a missing built-in one means a broken virtual host.
BUILT_IN_EXCHANGES = ("", "amq.direct", "amq.fanout", "amq.headers", "amq.match", "amq.topic")

# Queue statistics move while consumers work, so nodes may disagree for one read; the counts
# must agree in one of this many rounds of reads.
MESSAGE_COUNT_ROUNDS = 3
CANARY_TIMEOUT_SECONDS = 10.0
CANARY_POLL_INTERVAL_SECONDS = 0.2
# Messages fetched per poll; more than one drains canaries that earlier runs left behind.
CANARY_FETCH_COUNT = 20


class BrokerAPI(Protocol):
    """The part of one node's management API that the healthcheck reads and writes."""

    @property
    def display_url(self) -> str: ...

    def nodes(self) -> list[NodeInfo]: ...

    def queues(self) -> list[QueueInfo]: ...

    def exchanges(self) -> list[ExchangeInfo]: ...

    def channels(self) -> list[ChannelInfo]: ...

    def publish(self, *, exchange: str, routing_key: str, payload: str) -> bool: ...

    def get_messages(self, queue: str, *, count: int = 1, ackmode: AckMode = "ack_requeue_false") -> list[FetchedMessage]: ...


class Notifier(Protocol):
    def notify(self, subject: str, text: str) -> None: ...


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'FAILED'}: {self.detail}"


@dataclass(frozen=True)
class HealthReport:
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(result.ok for result in self.results)

    @property
    def failed_checks(self) -> list[str]:
        return [result.name for result in self.results if not result.ok]

    @property
    def exit_status(self) -> int:
        return 0 if self.ok else 1


def main(config: Config) -> int:
    """Check the configured RabbitMQ nodes, push the metrics and return the exit status.

    The job's last-success time is set only when every check passed, like the exit status.
    """
    # The vhost of the workers' broker URL, so that the checks read the queues they use.
    vhost = config.connections.rabbitmq_vhost
    admins = [RabbitMQAdmin(url, vhost=vhost) for url in config.connections.rabbitmq_api_urls]
    try:
        report = run_healthcheck(config=config, admins=admins, notifier=SmtpNotifier.from_config(config))
    finally:
        for admin in admins:
            admin.close()
    if report.ok:
        JOB_LAST_SUCCESS.labels(job=JOB_NAME).set_to_current_time()
        log.info("healthcheck passed: %d checks", len(report.results))
    else:
        log.error("healthcheck failed: %s", ", ".join(report.failed_checks))
    push_metrics(config.connections.pushgateway_url, job=JOB_NAME)
    return report.exit_status


def run_healthcheck(
    *,
    config: Config,
    admins: Sequence[BrokerAPI],
    notifier: Notifier,
    canary_timeout_seconds: float = CANARY_TIMEOUT_SECONDS,
) -> HealthReport:
    """Run every check, record the metrics, and notify the team when any check failed.

    `admins` contains one client per node's API URL. The cluster-wide checks use the first one
    that responds, and the message-count check reads from all of them.
    """
    report = HealthReport(tuple(_run_checks(spec=config.spec, admins=admins, canary_timeout_seconds=canary_timeout_seconds)))
    for result in report.results:
        HEALTHCHECK_STATUS.labels(check=result.name).set(1 if result.ok else 0)
        if result.ok:
            log.info("check %s passed: %s", result.name, result.detail)
        else:
            log.error("check %s failed: %s", result.name, result.detail)
    if not report.ok:
        _notify_failure(report, notifier=notifier, admins=admins)
    return report


def _run_checks(*, spec: PipelineSpec, admins: Sequence[BrokerAPI], canary_timeout_seconds: float) -> list[CheckResult]:
    try:
        primary, nodes = _first_answering(admins)
    except ServiceUnavailableError as error:
        return [CheckResult(name, False, str(error)) for name in CHECK_NAMES]

    expected = [queue.name for queue in all_queues(spec)]
    checks: list[tuple[str, Callable[[], CheckResult]]] = [
        (CHECK_NODES_RUNNING, lambda: evaluate_nodes_running(nodes)),
        (CHECK_PARTITIONS, lambda: evaluate_partitions(nodes)),
        (CHECK_QUEUES_PRESENT, lambda: _check_queues_present(primary, spec=spec, expected=expected)),
        (CHECK_MESSAGE_COUNTS, lambda: _check_message_counts(admins, expected=expected)),
        (CHECK_QUORUM_REPLICAS, lambda: evaluate_quorum_replicas(primary.queues(), expected=expected)),
        (CHECK_EXCHANGES, lambda: evaluate_exchanges(primary.exchanges())),
        (CHECK_CHANNELS, lambda: evaluate_channels(primary.channels(), primary.queues(), spec=spec)),
        (CHECK_CANARY, lambda: _check_canary(primary, timeout_seconds=canary_timeout_seconds)),
    ]
    return [_guarded(name, check) for name, check in checks]


def _guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except (ServiceUnavailableError, ManagementAPIError) as error:
        # An API error fails only the check that made the request; the other checks still run.
        return CheckResult(name, False, str(error))


def _first_answering(admins: Sequence[BrokerAPI]) -> tuple[BrokerAPI, list[NodeInfo]]:
    """Return the first API that lists the cluster's nodes, with that list."""
    failures: list[str] = []
    for admin in admins:
        try:
            return admin, admin.nodes()
        except (ServiceUnavailableError, ManagementAPIError) as error:
            # Another node's API may still respond, and the message-count check names this one.
            log.warning("RabbitMQ management API %s did not respond: %s", admin.display_url, error)
            failures.append(str(error))
    if not failures:
        raise ServiceUnavailableError("no RabbitMQ management API URL configured (MAILPIPE_RABBITMQ_API_URLS)")
    raise ServiceUnavailableError("no RabbitMQ management API responded: " + "; ".join(failures))


# Checks that read from the API, then hand the data to a pure evaluation.


def _check_queues_present(admin: BrokerAPI, *, spec: PipelineSpec, expected: Sequence[str]) -> CheckResult:
    queues = admin.queues()
    _record_queue_depths(queues, spec=spec)
    return evaluate_queues_present(queues, expected=expected)


def _check_message_counts(admins: Sequence[BrokerAPI], *, expected: Sequence[str]) -> CheckResult:
    result = CheckResult(CHECK_MESSAGE_COUNTS, False, "not run")
    for _ in range(MESSAGE_COUNT_ROUNDS):
        counts = [(admin.display_url, _message_counts(admin)) for admin in admins]
        result = evaluate_message_counts(counts, expected=expected)
        if result.ok:
            break
    return result


def _message_counts(admin: BrokerAPI) -> dict[str, int | None]:
    return {queue["name"]: queue.get("messages") for queue in admin.queues()}


def _check_canary(admin: BrokerAPI, *, timeout_seconds: float) -> CheckResult:
    """Publish a message with a unique payload to the canary queue and wait until it is fetched back."""
    # NOTE: two healthchecks running at once remove each other's canaries as stale and may both
    # fail, so the scheduler must not start a run while one is still going.
    payload = f"mailpipe-canary {uuid.uuid4()}"
    if not admin.publish(exchange=DEFAULT_EXCHANGE, routing_key=CANARY_QUEUE, payload=payload):
        return CheckResult(CHECK_CANARY, False, f"canary message was not routed: queue {CANARY_QUEUE} is missing")

    started = time.monotonic()
    stale = 0
    while True:
        messages = admin.get_messages(CANARY_QUEUE, count=CANARY_FETCH_COUNT)
        payloads = [message["payload"] for message in messages]
        if payload in payloads:
            elapsed = time.monotonic() - started
            detail = f"published and fetched back from {CANARY_QUEUE} in {elapsed:.2f} s"
            stale += len(payloads) - 1
            if stale:
                detail += f"; removed {stale} canary messages left by earlier runs"
            return CheckResult(CHECK_CANARY, True, detail)
        stale += len(payloads)
        if time.monotonic() - started > timeout_seconds:
            return CheckResult(
                CHECK_CANARY, False, f"canary message not fetched back from {CANARY_QUEUE} within {timeout_seconds} s"
            )
        time.sleep(CANARY_POLL_INTERVAL_SECONDS)


def _record_queue_depths(queues: Sequence[QueueInfo], *, spec: PipelineSpec) -> None:
    by_name = {queue["name"]: queue for queue in queues}
    for group in spec.groups:
        queue = by_name.get(work_queue_name(group.name))
        if queue is None:
            continue
        QUEUE_MESSAGES.labels(group=group.name, state="ready").set(queue.get("messages_ready", 0))
        QUEUE_MESSAGES.labels(group=group.name, state="unacked").set(queue.get("messages_unacknowledged", 0))


# Pure evaluations: API payloads in, one result out.


def evaluate_nodes_running(nodes: Sequence[NodeInfo]) -> CheckResult:
    stopped = [node["name"] for node in nodes if not node["running"]]
    if not nodes:
        return CheckResult(CHECK_NODES_RUNNING, False, "the API listed no nodes")
    if stopped:
        return CheckResult(CHECK_NODES_RUNNING, False, f"nodes not running: {', '.join(stopped)}")
    return CheckResult(CHECK_NODES_RUNNING, True, f"{len(nodes)} of {len(nodes)} nodes running")


def evaluate_partitions(nodes: Sequence[NodeInfo]) -> CheckResult:
    partitioned = [f"{node['name']} cannot see {', '.join(node['partitions'])}" for node in nodes if node["partitions"]]
    if partitioned:
        return CheckResult(CHECK_PARTITIONS, False, "network partition: " + "; ".join(partitioned))
    return CheckResult(CHECK_PARTITIONS, True, "no network partition")


def evaluate_queues_present(queues: Sequence[QueueInfo], *, expected: Sequence[str]) -> CheckResult:
    present = {queue["name"] for queue in queues}
    missing = [name for name in expected if name not in present]
    if missing:
        return CheckResult(CHECK_QUEUES_PRESENT, False, f"missing queues: {', '.join(missing)}")
    return CheckResult(CHECK_QUEUES_PRESENT, True, f"all {len(expected)} expected queues present")


def evaluate_message_counts(
    counts: Sequence[tuple[str, Mapping[str, int | None]]], *, expected: Sequence[str]
) -> CheckResult:
    """Compare the message count of each expected queue as each API endpoint reports it.

    `counts` pairs each endpoint's URL with its counts by queue name. A queue that an endpoint
    does not list, or lists without statistics yet (a queue declared seconds ago), is left out
    of the comparison, and the queues-present check reports the missing ones.
    """
    if not counts:
        return CheckResult(CHECK_MESSAGE_COUNTS, False, "no API endpoint to read message counts from")
    differing: list[str] = []
    compared = 0
    for name in expected:
        known = [(url, by_queue[name]) for url, by_queue in counts if by_queue.get(name) is not None]
        if not known:
            continue
        compared += 1
        if len({count for _, count in known}) > 1:
            views = ", ".join(f"{count} on {url}" for url, count in known)
            differing.append(f"{name} ({views})")
    if differing:
        return CheckResult(CHECK_MESSAGE_COUNTS, False, "message counts differ between nodes: " + "; ".join(differing))
    return CheckResult(
        CHECK_MESSAGE_COUNTS,
        True,
        f"{compared} of {len(expected)} queues report the same count on {len(counts)} API endpoints",
    )


def evaluate_quorum_replicas(queues: Sequence[QueueInfo], *, expected: Sequence[str]) -> CheckResult:
    wanted = set(expected)
    problems: list[str] = []
    checked = 0
    for queue in queues:
        if queue["name"] not in wanted or queue.get("type") != "quorum":
            continue
        checked += 1
        members = queue.get("members", [])
        online = set(queue.get("online", []))
        offline = [member for member in members if member not in online]
        if offline:
            problems.append(f"{queue['name']} has offline replicas {', '.join(offline)}")
        if not queue.get("leader"):
            problems.append(f"{queue['name']} has no leader")
    if problems:
        return CheckResult(CHECK_QUORUM_REPLICAS, False, "; ".join(problems))
    return CheckResult(CHECK_QUORUM_REPLICAS, True, f"all replicas online for {checked} quorum queues")


def evaluate_exchanges(exchanges: Sequence[ExchangeInfo]) -> CheckResult:
    present = {exchange["name"] for exchange in exchanges}
    missing = [name or "(default)" for name in BUILT_IN_EXCHANGES if name not in present]
    if missing:
        return CheckResult(CHECK_EXCHANGES, False, f"missing exchanges: {', '.join(missing)}")
    return CheckResult(CHECK_EXCHANGES, True, f"{len(present)} exchanges, the built-in ones included")


def evaluate_channels(channels: Sequence[ChannelInfo], queues: Sequence[QueueInfo], *, spec: PipelineSpec) -> CheckResult:
    """Report the open channels; fail only when no channel is open while consumers are expected.

    Consumers are expected when a group configured with consumers has messages ready in its work
    queue. An idle pipeline with no consumer connected is not a fault (consumers may be scaled to
    zero, or stopped between campaigns), but a backlog that no channel can be working on is.
    """
    ready = {queue["name"]: queue.get("messages_ready", 0) for queue in queues}
    waiting = [
        group.name
        for group in spec.groups
        if group.min_consumers > 0 and ready.get(work_queue_name(group.name), 0) > 0
    ]
    if waiting and not channels:
        return CheckResult(
            CHECK_CHANNELS, False, f"no channel open while messages wait in the queues of groups {', '.join(waiting)}"
        )
    return CheckResult(CHECK_CHANNELS, True, f"{len(channels)} channels open")


def format_failure_notification(report: HealthReport, *, endpoints: Sequence[str]) -> tuple[str, str]:
    """Return the subject and text of the email sent when checks failed."""
    subject = f"Mailpipe healthcheck failed: {', '.join(report.failed_checks)}"
    lines = [
        "The Mailpipe healthcheck found a problem with RabbitMQ.",
        "",
        *(result.line() for result in report.results),
        "",
        f"RabbitMQ management API endpoints: {', '.join(endpoints) or '(none configured)'}",
    ]
    return subject, "\n".join(lines) + "\n"


def _notify_failure(report: HealthReport, *, notifier: Notifier, admins: Sequence[BrokerAPI]) -> None:
    subject, text = format_failure_notification(report, endpoints=[admin.display_url for admin in admins])
    try:
        notifier.notify(subject, text)
    except ServiceUnavailableError as error:
        # The failed checks are already in the log, the metrics and the exit status.
        log.error("could not send the healthcheck failure notification: %s", error)
