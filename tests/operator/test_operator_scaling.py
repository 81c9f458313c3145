"""Unit tests of the consumer scaling decision."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from mailpipe_operator.scaling import GroupLoad, ScalingLimits, consumers_holding_unacked, decide_replicas

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
LIMITS = ScalingLimits(min_consumers=1, max_consumers=10, target_backlog_per_consumer=100, prefetch=50, cooldown_seconds=60)


def decide(ready: int, unacked: int = 0, *, current: int, seconds_since_scaling: float | None = None) -> int:
    last = None if seconds_since_scaling is None else NOW - timedelta(seconds=seconds_since_scaling)
    load = GroupLoad(ready=ready, unacked=unacked)
    return decide_replicas(load, current=current, limits=LIMITS, last_scaled_at=last, now=NOW).replicas


@pytest.mark.parametrize(
    ("ready", "current", "expected"),
    [(0, 1, 1), (100, 1, 1), (101, 1, 2), (450, 2, 5), (100_000, 3, 10)],
)
def test_scale_up_follows_backlog(ready: int, current: int, expected: int) -> None:
    assert decide(ready, current=current) == expected


def test_scale_up_ignores_cooldown() -> None:
    assert decide(500, current=1, seconds_since_scaling=1) == 5


def test_never_below_minimum() -> None:
    limits = ScalingLimits(min_consumers=3, max_consumers=10, target_backlog_per_consumer=100, prefetch=50, cooldown_seconds=0)
    decision = decide_replicas(GroupLoad(0, 0), current=5, limits=limits, last_scaled_at=None, now=NOW)
    assert decision.replicas == 3


def test_scale_down_waits_for_cooldown() -> None:
    assert decide(0, current=5, seconds_since_scaling=30) == 5


def test_scale_down_after_cooldown() -> None:
    assert decide(0, current=5, seconds_since_scaling=61) == 1


def test_scale_down_without_history() -> None:
    assert decide(0, current=5) == 1


def test_scale_down_keeps_consumers_with_unacked() -> None:
    # 160 unacked with a prefetch of 50 means at least 4 consumers hold deliveries.
    assert decide(0, unacked=160, current=6, seconds_since_scaling=120) == 4


def test_unacked_floor_capped_by_maximum() -> None:
    assert decide(0, unacked=5000, current=10, seconds_since_scaling=120) == 10


def test_lowered_maximum_applies_at_once() -> None:
    assert decide(100_000, current=15, seconds_since_scaling=1) == 10


def test_steady_state_reports_no_change() -> None:
    decision = decide_replicas(GroupLoad(150, 0), current=2, limits=LIMITS, last_scaled_at=None, now=NOW)
    assert not decision.changes(2)


@pytest.mark.parametrize(("unacked", "expected"), [(0, 0), (1, 1), (50, 1), (51, 2)])
def test_consumers_holding_unacked(unacked: int, expected: int) -> None:
    assert consumers_holding_unacked(GroupLoad(ready=0, unacked=unacked), prefetch=50) == expected
