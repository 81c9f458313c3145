"""The healthcheck role: pure evaluations without servers, then full runs against the local
RabbitMQ (a virtual host per test) with notifications checked through maildev's REST API."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import requests
from prometheus_client import REGISTRY

from mailpipe.adapters.notify import SmtpNotifier
from mailpipe.adapters.rabbitmq_api import ChannelInfo, NodeInfo, QueueInfo, RabbitMQAdmin
from mailpipe.config import Config, Connections, EmailGroup, Notifications, PipelineSpec, RabbitMQCluster
from mailpipe.roles import healthcheck
from mailpipe.roles.healthcheck import (
    CHECK_CANARY,
    CHECK_CHANNELS,
    CHECK_MESSAGE_COUNTS,
    CHECK_NAMES,
    CHECK_QUEUES_PRESENT,
    CheckResult,
    HealthReport,
    evaluate_channels,
    evaluate_exchanges,
    evaluate_message_counts,
    evaluate_nodes_running,
    evaluate_partitions,
    evaluate_quorum_replicas,
    format_failure_notification,
    run_healthcheck,
)
from mailpipe.topology import CANARY_QUEUE, all_queues

CONNECTIONS = Connections.from_environment(os.environ)
API_URL = CONNECTIONS.rabbitmq_api_urls[0]
MAILDEV_URL = os.environ.get("MAILPIPE_MAILDEV_URL", "http://127.0.0.1:1080")


class RecordingNotifier:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def notify(self, subject: str, text: str) -> None:
        self.sent.append((subject, text))


def node(name: str, *, running: bool = True, partitions: list[str] | None = None) -> NodeInfo:
    return {"name": name, "running": running, "partitions": partitions or []}


def queue(name: str, **fields: Any) -> QueueInfo:
    info: dict[str, Any] = {"name": name, "vhost": "/", "durable": True, "arguments": {}, **fields}
    return info  # type: ignore[return-value]


def make_spec(*, suffix: str = "", vhost: str = "/", recipients: list[str] | None = None) -> PipelineSpec:
    return PipelineSpec(
        groups=[EmailGroup(name=f"news{suffix}", min_consumers=1), EmailGroup(name=f"receipts{suffix}", min_consumers=1)],
        rabbitmq=RabbitMQCluster(vhost=vhost),
        notifications=Notifications(recipients=recipients or []),
    )


def status_metric(check: str) -> float | None:
    return REGISTRY.get_sample_value("mailpipe_healthcheck_status", {"check": check})


# Pure evaluations.


class TestEvaluations:
    def test_nodes_all_running_pass(self) -> None:
        result = evaluate_nodes_running([node("a"), node("b")])

        assert result.ok
        assert result.detail == "2 of 2 nodes running"

    def test_stopped_node_is_named(self) -> None:
        result = evaluate_nodes_running([node("a"), node("b", running=False)])

        assert not result.ok
        assert "b" in result.detail

    def test_no_nodes_fail(self) -> None:
        assert not evaluate_nodes_running([]).ok

    def test_partition_names_both_sides(self) -> None:
        result = evaluate_partitions([node("a", partitions=["b"]), node("b", partitions=["a"])])

        assert not result.ok
        assert "a cannot see b" in result.detail
        assert "b cannot see a" in result.detail

    def test_no_partition_passes(self) -> None:
        assert evaluate_partitions([node("a"), node("b")]).ok

    def test_offline_replica_is_named(self) -> None:
        queues = [queue("news", type="quorum", members=["a", "b", "c"], online=["a", "c"], leader="a")]

        result = evaluate_quorum_replicas(queues, expected=["news"])

        assert not result.ok
        assert "news has offline replicas b" in result.detail

    def test_quorum_queue_without_leader_fails(self) -> None:
        queues = [queue("news", type="quorum", members=["a"], online=["a"])]

        result = evaluate_quorum_replicas(queues, expected=["news"])

        assert not result.ok
        assert "no leader" in result.detail

    def test_unexpected_and_classic_queues_are_ignored(self) -> None:
        queues = [
            queue("other-app", type="quorum", members=["a", "b"], online=["a"], leader="a"),
            queue("news.retry.1", type="classic"),
        ]

        result = evaluate_quorum_replicas(queues, expected=["news.retry.1"])

        assert result.ok
        assert "0 quorum queues" in result.detail

    def test_differing_counts_name_queue_and_nodes(self) -> None:
        counts = [("http://a", {"news": 5, "receipts": 0}), ("http://b", {"news": 7, "receipts": 0})]

        result = evaluate_message_counts(counts, expected=["news", "receipts"])

        assert not result.ok
        assert "news (5 on http://a, 7 on http://b)" in result.detail
        assert "receipts" not in result.detail

    def test_counts_without_statistics_are_skipped(self) -> None:
        counts: list[tuple[str, dict[str, int | None]]] = [("http://a", {"news": None}), ("http://b", {"news": 3})]

        result = evaluate_message_counts(counts, expected=["news", "receipts"])

        assert result.ok
        assert "1 of 2 queues" in result.detail

    def test_no_endpoint_fails_counts(self) -> None:
        assert not evaluate_message_counts([], expected=["news"]).ok

    def test_missing_built_in_exchange_is_named(self) -> None:
        exchanges = [{"name": name, "vhost": "/", "type": "direct", "durable": True} for name in ("amq.direct", "amq.topic")]

        result = evaluate_exchanges(exchanges)  # type: ignore[arg-type]

        assert not result.ok
        assert "(default)" in result.detail
        assert "amq.fanout" in result.detail

    def test_backlog_without_channel_fails(self) -> None:
        spec = make_spec()

        result = evaluate_channels([], [queue("news", messages_ready=12)], spec=spec)

        assert not result.ok
        assert "news" in result.detail

    def test_idle_pipeline_without_channel_passes(self) -> None:
        spec = make_spec()

        result = evaluate_channels([], [queue("news", messages_ready=0), queue("news.dead", messages_ready=4)], spec=spec)

        assert result.ok
        assert result.detail == "0 channels open"

    def test_backlog_with_channel_passes(self) -> None:
        spec = make_spec()
        channels: list[ChannelInfo] = [{"name": "127.0.0.1:5000 -> 127.0.0.1:5673 (1)", "vhost": "/"}]

        assert evaluate_channels(channels, [queue("news", messages_ready=12)], spec=spec).ok

    def test_group_without_consumers_expects_no_channel(self) -> None:
        spec = PipelineSpec(groups=[EmailGroup(name="paused", min_consumers=0)])

        assert evaluate_channels([], [queue("paused", messages_ready=12)], spec=spec).ok

    def test_failure_notification_lists_every_check(self) -> None:
        report = HealthReport((CheckResult("nodes_running", True, "1 of 1"), CheckResult("canary", False, "lost")))

        subject, text = format_failure_notification(report, endpoints=["http://guest:***@127.0.0.1:15673"])

        assert subject == "Mailpipe healthcheck failed: canary"
        assert "nodes_running: ok: 1 of 1" in text
        assert "canary: FAILED: lost" in text
        assert "http://guest:***@127.0.0.1:15673" in text

    def test_report_exit_status(self) -> None:
        assert HealthReport((CheckResult("a", True, ""),)).exit_status == 0
        assert HealthReport((CheckResult("a", True, ""), CheckResult("b", False, ""))).exit_status == 1


# Runs against the local RabbitMQ.


@pytest.fixture
def vhost() -> Iterator[str]:
    name = f"mailpipe-test-health-{uuid.uuid4().hex[:8]}"
    with RabbitMQAdmin(API_URL) as root:
        root.declare_vhost(name)
        yield name
        root.delete_vhost(name)


@pytest.fixture
def recipient() -> str:
    return f"ops-{uuid.uuid4().hex[:8]}@mailpipe.example"


@pytest.fixture
def config(vhost: str, recipient: str) -> Config:
    # The workers' broker URL names the vhost; the healthcheck checks the queues there.
    broker_url = CONNECTIONS.rabbitmq_url.rsplit("/", 1)[0] + "/" + quote(vhost, safe="")
    connections = CONNECTIONS.model_copy(update={"rabbitmq_url": broker_url})
    return Config(spec=make_spec(vhost=vhost, recipients=[recipient]), connections=connections)


@pytest.fixture
def admin(vhost: str) -> Iterator[RabbitMQAdmin]:
    with RabbitMQAdmin(API_URL, vhost=vhost) as client:
        yield client


@pytest.fixture
def declared(config: Config, admin: RabbitMQAdmin) -> Config:
    for definition in all_queues(config.spec):
        admin.declare_queue(definition.name, arguments=definition.arguments, durable=definition.durable)
    return config


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


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.services
class TestAgainstRabbitMQ:
    def test_declared_topology_passes(self, declared: Config, admin: RabbitMQAdmin) -> None:
        notifier = RecordingNotifier()

        report = run_healthcheck(config=declared, admins=[admin], notifier=notifier)

        assert [result.name for result in report.results] == list(CHECK_NAMES)
        assert report.failed_checks == [], [result.line() for result in report.results]
        assert report.exit_status == 0
        assert notifier.sent == []
        assert all(status_metric(name) == 1 for name in CHECK_NAMES)

    def test_deleted_queue_fails_queues_present(self, declared: Config, admin: RabbitMQAdmin) -> None:
        work_queue = declared.spec.groups[1].name
        admin.delete_queue(work_queue)
        notifier = RecordingNotifier()

        report = run_healthcheck(config=declared, admins=[admin], notifier=notifier)

        failed = {result.name: result for result in report.results if not result.ok}
        assert list(failed) == [CHECK_QUEUES_PRESENT]
        assert failed[CHECK_QUEUES_PRESENT].detail == f"missing queues: {work_queue}"
        assert report.exit_status == 1
        assert status_metric(CHECK_QUEUES_PRESENT) == 0
        assert len(notifier.sent) == 1
        assert notifier.sent[0][0] == f"Mailpipe healthcheck failed: {CHECK_QUEUES_PRESENT}"

    def test_failure_sends_one_email(self, declared: Config, admin: RabbitMQAdmin, recipient: str) -> None:
        admin.delete_queue(declared.spec.groups[0].name)

        report = run_healthcheck(config=declared, admins=[admin], notifier=SmtpNotifier.from_config(declared))
        mails = wait_for_mails(recipient)

        assert report.failed_checks == [CHECK_QUEUES_PRESENT]
        assert len(mails) == 1
        assert mails[0]["subject"] == f"Mailpipe healthcheck failed: {CHECK_QUEUES_PRESENT}"
        assert f"missing queues: {declared.spec.groups[0].name}" in mails[0]["text"]
        assert "guest:guest" not in mails[0]["text"]

    def test_missing_canary_queue_fails_canary(self, declared: Config, admin: RabbitMQAdmin) -> None:
        admin.delete_queue(CANARY_QUEUE)

        report = run_healthcheck(config=declared, admins=[admin], notifier=RecordingNotifier())

        assert report.failed_checks == [CHECK_QUEUES_PRESENT, CHECK_CANARY]
        canary = next(result for result in report.results if result.name == CHECK_CANARY)
        assert "not routed" in canary.detail

    def test_canary_drains_stale_messages(self, declared: Config, admin: RabbitMQAdmin) -> None:
        admin.publish(exchange="", routing_key=CANARY_QUEUE, payload="left over by a crashed run")

        report = run_healthcheck(config=declared, admins=[admin], notifier=RecordingNotifier())

        canary = next(result for result in report.results if result.name == CHECK_CANARY)
        assert canary.ok
        assert "removed 1 canary messages" in canary.detail
        assert admin.get_messages(CANARY_QUEUE, count=10) == []

    def test_two_endpoints_agree(self, declared: Config, vhost: str) -> None:
        with RabbitMQAdmin(API_URL, vhost=vhost) as first, RabbitMQAdmin(API_URL, vhost=vhost) as second:
            first.publish(exchange="", routing_key=declared.spec.groups[0].name, payload="waiting")
            wait_for_ready_count(first, declared.spec.groups[0].name, expected=1)

            report = run_healthcheck(config=declared, admins=[first, second], notifier=RecordingNotifier())

        counts = next(result for result in report.results if result.name == CHECK_MESSAGE_COUNTS)
        assert counts.ok
        assert counts.detail.endswith("on 2 API endpoints")
        assert not counts.detail.startswith("0 of")

    def test_unreachable_endpoint_fails_counts_only(self, declared: Config, vhost: str) -> None:
        dead_url = f"http://guest:guest@127.0.0.1:{closed_port()}"
        with RabbitMQAdmin(dead_url, vhost=vhost) as dead, RabbitMQAdmin(API_URL, vhost=vhost) as alive:
            report = run_healthcheck(config=declared, admins=[dead, alive], notifier=RecordingNotifier())

        failed = {result.name: result for result in report.results if not result.ok}
        assert list(failed) == [CHECK_MESSAGE_COUNTS]
        assert "unreachable" in failed[CHECK_MESSAGE_COUNTS].detail

    def test_no_endpoint_responding_fails_every_check(self, declared: Config, vhost: str) -> None:
        notifier = RecordingNotifier()
        with RabbitMQAdmin(f"http://127.0.0.1:{closed_port()}", vhost=vhost) as dead:
            report = run_healthcheck(config=declared, admins=[dead], notifier=notifier)

        assert report.failed_checks == list(CHECK_NAMES)
        assert len(notifier.sent) == 1

    def test_backlog_without_consumer_fails_channels(self, declared: Config, admin: RabbitMQAdmin) -> None:
        work_queue = declared.spec.groups[0].name
        admin.publish(exchange="", routing_key=work_queue, payload="nobody consumes this")
        wait_for_ready_count(admin, work_queue, expected=1)

        report = run_healthcheck(config=declared, admins=[admin], notifier=RecordingNotifier())

        assert report.failed_checks == [CHECK_CHANNELS]

    def test_main_returns_zero_when_healthy(self, declared: Config) -> None:
        assert healthcheck.main(declared) == 0

    def test_main_returns_one_on_failure(self, declared: Config, admin: RabbitMQAdmin, recipient: str) -> None:
        admin.delete_queue(declared.spec.groups[0].name)

        assert healthcheck.main(declared) == 1
        assert len(wait_for_mails(recipient)) == 1


def wait_for_ready_count(admin: RabbitMQAdmin, name: str, *, expected: int, timeout_seconds: float = 15.0) -> None:
    """Wait until the API's statistics show `expected` ready messages (emitted every few seconds)."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        info = admin.queue(name)
        ready = info.get("messages_ready") if info else None
        if ready == expected or time.monotonic() > deadline:
            assert ready == expected, f"queue {name} shows {ready} ready messages, expected {expected}"
            return
        time.sleep(0.2)
