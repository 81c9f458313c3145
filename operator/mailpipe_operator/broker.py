"""The operator's work on RabbitMQ itself, through the management API: keeping the topology
declared and reading each group's load. The topology comes from `mailpipe.topology`, the same
definitions that the consumers and the healthcheck use."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from mailpipe import topology
from mailpipe.config import PipelineSpec
from mailpipe_operator.scaling import GroupLoad

# Set by operators that run outside the cluster (development, tests): the management API URL,
# with credentials, used in place of the in-cluster address that Services resolve to.
API_URL_OVERRIDE_VARIABLE = "MAILPIPE_OPERATOR_RABBITMQ_API_URL"
REQUEST_TIMEOUT_SECONDS = 5.0


class Admin(Protocol):
    """The part of `mailpipe.adapters.rabbitmq_api.RabbitMQAdmin` the operator uses."""

    def queues(self) -> Any: ...
    def policies(self) -> Any: ...
    def declare_queue(self, name: str, *, arguments: dict[str, Any], durable: bool = True) -> None: ...
    def put_policy(
        self, name: str, *, pattern: str, definition: dict[str, Any], apply_to: str = ..., priority: int = ...
    ) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class BrokerReport:
    loads: dict[str, GroupLoad]
    sent: int
    dequeued: int
    redeclared: list[str]


def connect(api_url: str, *, vhost: str) -> Admin:
    # Imported here so that builders and tests of pure logic never load the HTTP client.
    from mailpipe.adapters.rabbitmq_api import RabbitMQAdmin

    return RabbitMQAdmin(api_url, timeout_seconds=REQUEST_TIMEOUT_SECONDS, vhost=vhost)


def override_url() -> str | None:
    return os.environ.get(API_URL_OVERRIDE_VARIABLE) or None


def ensure_topology(admin: Admin, spec: PipelineSpec, *, logger: logging.LoggerAdapter[Any] | logging.Logger) -> list[str]:
    """Declare every queue and the work-queue policy that is missing; return what was declared."""
    existing = {queue["name"] for queue in admin.queues()}
    declared = []
    for queue in topology.all_queues(spec):
        if queue.name not in existing:
            admin.declare_queue(queue.name, arguments=queue.arguments, durable=queue.durable)
            declared.append(f"queue {queue.name}")

    policy = topology.work_queue_policy(spec)
    current = {item["name"]: item for item in admin.policies()}.get(policy["name"])
    expected = (policy["pattern"], policy["definition"], policy["apply-to"], policy["priority"])
    if current is None or (current["pattern"], current["definition"], current["apply-to"], current["priority"]) != expected:
        admin.put_policy(
            policy["name"],
            pattern=policy["pattern"],
            definition=policy["definition"],
            apply_to=policy["apply-to"],
            priority=policy["priority"],
        )
        declared.append(f"policy {policy['name']}")
    if declared:
        logger.info("declared on the broker: %s", ", ".join(declared))
    return declared


def _acks(queue: dict[str, Any]) -> int:
    stats = queue.get("message_stats") or {}
    return int(stats.get("ack", 0))


def read_report(admin: Admin, spec: PipelineSpec, *, redeclared: list[str]) -> BrokerReport:
    """Read each group's ready and unacked counts and the pipeline's acknowledgement totals."""
    queues = {queue["name"]: queue for queue in admin.queues()}
    loads = {}
    sent = 0
    dequeued = 0
    for group in spec.groups:
        work = queues.get(topology.work_queue_name(group.name)) or {}
        dead = queues.get(topology.dead_letter_queue_name(group.name)) or {}
        loads[group.name] = GroupLoad(
            ready=int(work.get("messages_ready", 0)),
            unacked=int(work.get("messages_unacknowledged", 0)),
        )
        sent += _acks(work)
        dequeued += _acks(dead)
    return BrokerReport(loads=loads, sent=sent, dequeued=dequeued, redeclared=redeclared)
