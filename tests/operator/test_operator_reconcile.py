"""Unit tests of the reconciler's pure decisions: StatefulSet guards, healthcheck results, events."""

from __future__ import annotations

from typing import Any

from mailpipe_operator import reconcile
from mailpipe_operator.builders import rabbitmq
from mailpipe_operator.conditions import set_condition
from operator_helpers import make_pipeline


def running_statefulset(*, replicas: int, storage: str = "10Gi") -> dict[str, Any]:
    pipeline = make_pipeline({"rabbitmq": {"storage": {"size": storage}}})
    manifest = rabbitmq.statefulset(pipeline, replicas=replicas)
    claim = manifest["spec"]["volumeClaimTemplates"][0]
    claim["spec"]["storageClassName"] = "standard"
    return manifest


def test_new_statefulset_takes_spec() -> None:
    current = reconcile.Pass()
    replicas, claims = reconcile.guard_statefulset_change(make_pipeline(), None, current)
    assert replicas == 3
    assert claims is None
    assert current.problems == []


def test_scale_up_passes_guard() -> None:
    current = reconcile.Pass()
    pipeline = make_pipeline({"rabbitmq": {"replicas": 5}})
    replicas, _ = reconcile.guard_statefulset_change(pipeline, running_statefulset(replicas=3), current)
    assert replicas == 5
    assert current.problems == []


def test_scale_down_keeps_running_replicas() -> None:
    current = reconcile.Pass()
    pipeline = make_pipeline({"rabbitmq": {"replicas": 1}})
    replicas, _ = reconcile.guard_statefulset_change(pipeline, running_statefulset(replicas=3), current)
    assert replicas == 3
    assert [reason for reason, _ in current.problems] == ["ScaleDownRefused"]


def test_storage_change_keeps_claims() -> None:
    current = reconcile.Pass()
    pipeline = make_pipeline({"rabbitmq": {"storage": {"size": "20Gi"}}})
    existing = running_statefulset(replicas=3, storage="10Gi")
    _, claims = reconcile.guard_statefulset_change(pipeline, existing, current)
    assert claims is not None
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert [reason for reason, _ in current.problems] == ["ImmutableFieldChanged"]


def test_defaulted_storage_class_matches_unset() -> None:
    current = reconcile.Pass()
    _, claims = reconcile.guard_statefulset_change(make_pipeline(), running_statefulset(replicas=3), current)
    assert claims is None
    assert current.problems == []


def test_healthcheck_result_cases() -> None:
    cases = [
        ({}, "Unknown"),
        ({"lastScheduleTime": "2026-01-01T10:00:00Z", "lastSuccessfulTime": "2026-01-01T10:00:05Z"}, "Succeeded"),
        ({"lastScheduleTime": "2026-01-01T10:05:00Z", "lastSuccessfulTime": "2026-01-01T10:00:05Z"}, "Failed"),
        ({"lastScheduleTime": "2026-01-01T10:05:00Z"}, "Failed"),
        ({"lastScheduleTime": "2026-01-01T10:05:00Z", "active": [{"name": "job"}]}, "Unknown"),
    ]
    for job_status, expected in cases:
        assert reconcile.healthcheck_result(job_status) == expected, job_status


def test_persisting_problem_announced_once() -> None:
    problem = ("ScaleDownRefused", "RabbitMQ scale-down from 3 to 1 nodes is not supported; keeping 3")
    first = reconcile.problem_events([], [problem])
    assert [event.reason for event in first] == ["ScaleDownRefused"]

    reported = set_condition(
        [], type_="Degraded", status="True", reason=problem[0], message=problem[1], generation=1, now="t"
    )
    assert reconcile.problem_events(reported, [problem]) == []


def test_timestamps_round_trip() -> None:
    moment = reconcile.parse_timestamp("2026-01-01T10:00:00Z")
    assert moment is not None
    assert reconcile.timestamp(moment) == "2026-01-01T10:00:00Z"
    assert reconcile.parse_timestamp(None) is None
