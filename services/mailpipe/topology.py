"""RabbitMQ topology: the queues each email group uses and their arguments.

Pure data, used by the consumer (which declares its queues over AMQP), by the operator (which
declares them and their policy through the HTTP API) and by the healthcheck (which expects them),
so the three cannot disagree.

Per group GROUP:
- `GROUP`: the work queue, a quorum queue (replicated, FIFO, durable) holding document ids.
  A message delivered `delivery_limit` times without an ack is dead-lettered to `GROUP.dead`.
- `GROUP.retry.N` for each failed attempt N: a classic durable queue where a transient failure
  waits out its delay (per-message TTL), then expires back into `GROUP`. One queue per attempt
  keeps the delays of the messages in one queue alike, so a short delay never waits behind a
  long one, and a waiting email occupies neither a consumer nor the emails behind it.
- `GROUP.dead`: ids that hit the delivery limit; the consumer dequeues their documents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mailpipe.config import PipelineSpec

CANARY_QUEUE = "mailpipe.canary"
DEFAULT_EXCHANGE = ""


@dataclass(frozen=True)
class QueueDefinition:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    durable: bool = True


def work_queue_name(group: str) -> str:
    return group


def dead_letter_queue_name(group: str) -> str:
    return f"{group}.dead"


def retry_queue_name(group: str, failed_attempts: int) -> str:
    return f"{group}.retry.{failed_attempts}"


def group_queues(group: str, *, spec: PipelineSpec) -> list[QueueDefinition]:
    """Return every queue of one group, the work queue first."""
    work = QueueDefinition(
        name=work_queue_name(group),
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": spec.rabbitmq.delivery_limit,
            "x-dead-letter-exchange": DEFAULT_EXCHANGE,
            "x-dead-letter-routing-key": dead_letter_queue_name(group),
        },
    )
    dead = QueueDefinition(name=dead_letter_queue_name(group), arguments={"x-queue-type": "quorum"})
    retries = [
        QueueDefinition(
            name=retry_queue_name(group, attempt),
            arguments={
                "x-queue-type": "classic",
                "x-dead-letter-exchange": DEFAULT_EXCHANGE,
                "x-dead-letter-routing-key": work_queue_name(group),
            },
        )
        for attempt in range(1, max(2, spec.retry.max_attempts))
    ]
    return [work, dead, *retries]


def all_queues(spec: PipelineSpec) -> list[QueueDefinition]:
    """Return the queues of every configured group, plus the healthcheck's canary queue."""
    queues: list[QueueDefinition] = []
    for group in spec.groups:
        queues.extend(group_queues(group.name, spec=spec))
    queues.append(QueueDefinition(name=CANARY_QUEUE, arguments={"x-queue-type": "classic"}))
    return queues


def work_queue_policy(spec: PipelineSpec) -> dict[str, Any]:
    """Return the policy that the operator applies to the work queues (name, pattern, definition).

    The queues also carry these values as arguments. The policy lets an operator of the broker
    see and change them in one place, and brings them back if a queue is re-declared bare.
    """
    names = "|".join(sorted(group.name for group in spec.groups))
    return {
        "name": "mailpipe-work-queues",
        "pattern": f"^({names})$",
        "apply-to": "queues",
        "priority": 10,
        "definition": {"delivery-limit": spec.rabbitmq.delivery_limit},
    }
