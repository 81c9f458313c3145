"""The consumer scaling decision: a pure function from a group's backlog to a replica count.

Backlog is ready plus unacked messages in the group's work queue, as the RabbitMQ management
API reports them. The reconciler calls `decide_replicas` on every pass and applies the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class GroupLoad:
    """Message counts of one group's work queue, as the broker reports them."""

    ready: int
    unacked: int

    @property
    def backlog(self) -> int:
        return self.ready + self.unacked


@dataclass(frozen=True)
class ScalingLimits:
    min_consumers: int
    max_consumers: int
    target_backlog_per_consumer: int
    prefetch: int
    cooldown_seconds: int


@dataclass(frozen=True)
class ScalingDecision:
    replicas: int
    reason: str

    def changes(self, current: int) -> bool:
        return self.replicas != current


def consumers_holding_unacked(load: GroupLoad, *, prefetch: int) -> int:
    """Return the fewest consumers that can hold the unacked messages.

    Each consumer holds at most `prefetch` unacked deliveries, so at least this many consumers have
    some; removing them would send their messages back to the queue mid-delivery.
    """
    return math.ceil(load.unacked / prefetch)


def decide_replicas(
    load: GroupLoad,
    *,
    current: int,
    limits: ScalingLimits,
    last_scaled_at: datetime | None,
    now: datetime,
) -> ScalingDecision:
    """Decide how many consumers a group should run.

    Scaling up happens at once. Scaling down waits until `cooldown_seconds` have passed since the
    last change in either direction, so a backlog that comes in waves does not make consumers
    flap, and never goes below the consumers that hold unacked messages. The result always lies
    between the group's minimum and maximum.
    """
    needed = math.ceil(load.backlog / limits.target_backlog_per_consumer)
    floor = min(consumers_holding_unacked(load, prefetch=limits.prefetch), limits.max_consumers)
    target = max(limits.min_consumers, min(limits.max_consumers, max(needed, floor)))

    if target > current:
        return ScalingDecision(target, f"backlog {load.backlog} needs {target} consumers")
    if target == current:
        return ScalingDecision(current, "steady")

    if current > limits.max_consumers:
        # A lowered maximum applies at once; the cooldown only damps reactions to the backlog.
        return ScalingDecision(target, f"maximum lowered to {limits.max_consumers}")
    if last_scaled_at is not None:
        elapsed_seconds = (now - last_scaled_at).total_seconds()
        if elapsed_seconds < limits.cooldown_seconds:
            return ScalingDecision(current, f"cooling down for {limits.cooldown_seconds - elapsed_seconds:.0f}s")
    return ScalingDecision(target, f"backlog {load.backlog} needs only {target} consumers")
