"""Reconcile one EmailPipeline: compare what exists with what the spec specifies, apply the
difference, and return the status and events to record.

Every pass applies every object with server-side apply; the API server changes only what
differs, so a pass over an unchanged pipeline writes nothing and a hand-edited field is put back.
Kubernetes calls go through `kube.KubernetesClient`, broker calls through `broker`.
"""

from __future__ import annotations

import logging
import secrets
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from mailpipe.config import EmailGroup
from mailpipe.errors import MailpipeError
from mailpipe_operator import broker
from mailpipe_operator.builders import consumers, cronjobs, monitoring, rabbitmq, workers
from mailpipe_operator.builders.meta import Manifest, Pipeline, consumer_name, default_user_secret_name, rabbitmq_name
from mailpipe_operator.conditions import Condition, ConditionStatus, find_condition, read_conditions, set_condition
from mailpipe_operator.kube import KubernetesClient
from mailpipe_operator.scaling import ScalingLimits, decide_replicas

Logger = logging.Logger | logging.LoggerAdapter[Any]

DEFAULT_USERNAME = "mailpipe"
CONFIRM_DELETE_ANNOTATION = "mailpipe.io/delete-with-backlog"
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


@dataclass(frozen=True)
class Event:
    type: str
    reason: str
    message: str


@dataclass
class Pass:
    """Findings of one reconciliation pass, turned into status at the end."""

    events: list[Event] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)
    rabbitmq: dict[str, int] = field(default_factory=dict)
    report: broker.BrokerReport | None = None
    broker_error: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)
    healthcheck: dict[str, str] = field(default_factory=dict)


def timestamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def lock_for(uid: str) -> threading.Lock:
    """Return the lock that keeps a timer pass and a change handler of one pipeline apart."""
    with _locks_guard:
        return _locks.setdefault(uid, threading.Lock())


def reconcile(
    kube: KubernetesClient,
    *,
    pipeline: Pipeline,
    generation: int,
    status: dict[str, Any],
    now: datetime,
    logger: Logger,
) -> tuple[dict[str, Any], list[Event]]:
    """Bring the pipeline's objects and broker topology in line with its spec; return (status, events)."""
    with lock_for(pipeline.uid):
        current = Pass()
        ensure_rabbitmq(kube, pipeline, current, logger=logger)
        kube.apply(workers.config_map(pipeline))
        apply_cronjobs(kube, pipeline, current)
        observe_broker(kube, pipeline, current, logger=logger)
        apply_consumers(kube, pipeline, current, status=status, now=now, logger=logger)
        apply_monitoring(kube, pipeline)
        return build_status(pipeline, current, old=status, generation=generation, now=now), current.events


# RabbitMQ


def ensure_rabbitmq_secrets(kube: KubernetesClient, pipeline: Pipeline, *, logger: Logger) -> None:
    """Create the Erlang cookie and default user once; an existing Secret is never replaced."""
    cookie = rabbitmq.erlang_cookie_secret(pipeline, cookie=secrets.token_hex(32))
    user = rabbitmq.default_user_secret(pipeline, username=DEFAULT_USERNAME, password=secrets.token_urlsafe(24))
    for manifest in (cookie, user):
        if kube.create_if_absent(manifest):
            logger.info("created Secret %s", manifest["metadata"]["name"])


def ensure_rabbitmq(kube: KubernetesClient, pipeline: Pipeline, current: Pass, *, logger: Logger) -> None:
    ensure_rabbitmq_secrets(kube, pipeline, logger=logger)
    for manifest in (
        rabbitmq.config_map(pipeline),
        rabbitmq.service_account(pipeline),
        rabbitmq.peer_discovery_role(pipeline),
        rabbitmq.peer_discovery_role_binding(pipeline),
        rabbitmq.headless_service(pipeline),
        rabbitmq.client_service(pipeline),
        rabbitmq.pod_disruption_budget(pipeline),
    ):
        kube.apply(manifest)

    existing = kube.get(api_version="apps/v1", kind="StatefulSet", name=rabbitmq_name(pipeline), namespace=pipeline.namespace)
    replicas, claim_templates = guard_statefulset_change(pipeline, existing, current)
    applied = kube.apply(rabbitmq.statefulset(pipeline, replicas=replicas, claim_templates=claim_templates))
    if existing is None and current.problems == []:
        current.events.append(Event("Normal", "Created", f"created RabbitMQ StatefulSet with {replicas} nodes"))
    applied_status = applied.get("status") or {}
    current.rabbitmq = {"replicas": replicas, "readyReplicas": int(applied_status.get("readyReplicas") or 0)}


def guard_statefulset_change(
    pipeline: Pipeline, existing: Manifest | None, current: Pass
) -> tuple[int, list[Manifest] | None]:
    """Keep the running replicas and claim templates where the spec requests a forbidden change.

    Removing RabbitMQ nodes without first moving their quorum queue members can lose a majority,
    so a scale-down is refused. Kubernetes forbids editing claim templates, so a new size or class
    is reported instead of failing every apply.
    """
    requested = pipeline.spec.rabbitmq.replicas
    if existing is None:
        return requested, None

    spec = existing.get("spec") or {}
    running = int(spec.get("replicas") or 0)
    replicas = requested
    if requested < running:
        replicas = running
        current.problems.append(
            ("ScaleDownRefused", f"RabbitMQ scale-down from {running} to {requested} nodes is not supported; keeping {running}")
        )

    existing_claims = spec.get("volumeClaimTemplates") or []
    if not _claims_match(existing_claims, rabbitmq.volume_claim_templates(pipeline)):
        current.problems.append(
            (
                "ImmutableFieldChanged",
                "rabbitmq.storage cannot change on an existing StatefulSet (its volume claim templates "
                "are immutable); keeping the current volumes. Delete the StatefulSet with "
                "--cascade=orphan to recreate it with the new storage.",
            )
        )
        return replicas, [_claim_for_apply(claim) for claim in existing_claims]
    return replicas, None


def _claim_key(claim: Manifest) -> tuple[str, str | None, str]:
    spec = claim.get("spec") or {}
    storage = str(((spec.get("resources") or {}).get("requests") or {}).get("storage"))
    return (claim["metadata"]["name"], spec.get("storageClassName"), storage)


def _claims_match(existing: list[Manifest], requested: list[Manifest]) -> bool:
    # The API server fills in the default StorageClass, so an unset class matches any.
    for old, new in zip(existing, requested, strict=False):
        old_name, old_class, old_size = _claim_key(old)
        new_name, new_class, new_size = _claim_key(new)
        if (old_name, old_size) != (new_name, new_size) or (new_class is not None and new_class != old_class):
            return False
    return len(existing) == len(requested)


def _claim_for_apply(claim: Manifest) -> Manifest:
    spec = claim.get("spec") or {}
    retained = {key: spec[key] for key in ("accessModes", "resources", "storageClassName") if spec.get(key)}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim["metadata"]["name"]}, "spec": retained}


# CronJobs


def apply_cronjobs(kube: KubernetesClient, pipeline: Pipeline, current: Pass) -> None:
    for role in cronjobs.SCHEDULED_ROLES:
        applied = kube.apply(cronjobs.cronjob(pipeline, role))
        job_status = applied.get("status") or {}
        times = {key: job_status[key] for key in ("lastScheduleTime", "lastSuccessfulTime") if job_status.get(key)}
        current.jobs[role.command] = times
        if role.command == "healthcheck":
            current.healthcheck = {"result": healthcheck_result(job_status), **times}


def healthcheck_result(job_status: Manifest) -> str:
    """Return Succeeded, Failed or Unknown for the healthcheck CronJob's last finished run."""
    scheduled = job_status.get("lastScheduleTime")
    succeeded = job_status.get("lastSuccessfulTime")
    if not scheduled or job_status.get("active"):
        # Never run, or running now: the last finished run is not known from the CronJob alone.
        return "Succeeded" if succeeded else "Unknown"
    return "Succeeded" if succeeded and succeeded >= scheduled else "Failed"


# Broker


def management_url(kube: KubernetesClient, pipeline: Pipeline) -> str | None:
    override = broker.override_url()
    if override:
        return override
    ref = pipeline.spec.secrets.rabbitmq
    secret_name = ref.name if ref else default_user_secret_name(pipeline)
    urls = kube.read_secret_value(name=secret_name, key=workers.API_URLS_KEY, namespace=pipeline.namespace)
    return urls.split(",")[0].strip() if urls else None


def observe_broker(kube: KubernetesClient, pipeline: Pipeline, current: Pass, *, logger: Logger) -> None:
    """Re-declare missing queues and the policy, then read each group's load."""
    url = management_url(kube, pipeline)
    if url is None:
        current.broker_error = f"no management API URL: Secret key {workers.API_URLS_KEY!r} is missing"
        return
    admin = broker.connect(url, vhost=pipeline.spec.rabbitmq.vhost)
    try:
        redeclared = broker.ensure_topology(admin, pipeline.spec, logger=logger)
        current.report = broker.read_report(admin, pipeline.spec, redeclared=redeclared)
    except MailpipeError as error:
        # The broker may still be starting or briefly away; the next pass tries again, and the
        # consumers keep their current replicas meanwhile.
        current.broker_error = str(error)
        logger.warning("RabbitMQ management API failed: %s; retrying on the next pass", error)
    finally:
        admin.close()


# Consumers


def _previous_group(status: dict[str, Any], name: str) -> dict[str, Any]:
    for group in status.get("groups") or []:
        if group.get("name") == name:
            return dict(group)
    return {}


def apply_consumers(
    kube: KubernetesClient,
    pipeline: Pipeline,
    current: Pass,
    *,
    status: dict[str, Any],
    now: datetime,
    logger: Logger,
) -> None:
    for group in pipeline.spec.groups:
        previous = _previous_group(status, group.name)
        existing = kube.get(
            api_version="apps/v1", kind="Deployment", name=consumer_name(pipeline, group.name), namespace=pipeline.namespace
        )
        running = int(((existing or {}).get("spec") or {}).get("replicas") or group.min_consumers)
        replicas, record = scale_group(group, current, running=running, previous=previous, now=now, logger=logger)
        applied = kube.apply(consumers.consumer_deployment(pipeline, group, replicas=replicas))
        ready = int((applied.get("status") or {}).get("readyReplicas") or 0)
        current.groups.append({**record, "readyConsumers": ready})


def scale_group(
    group: EmailGroup,
    current: Pass,
    *,
    running: int,
    previous: dict[str, Any],
    now: datetime,
    logger: Logger,
) -> tuple[int | None, dict[str, Any]]:
    """Decide one group's replicas; None hands them to an HPA or KEDA object."""
    load = current.report.loads.get(group.name) if current.report else None
    record: dict[str, Any] = {"name": group.name}
    for key in ("lastScaleTime", "lastScaleReason"):
        if previous.get(key):
            record[key] = previous[key]
    if load is not None:
        record.update(backlog=load.backlog, ready=load.ready, unacked=load.unacked)

    mode = group.scaling.mode
    if mode in ("hpa", "keda"):
        # NOTE: switching an existing group from "operator" to "hpa" or "keda" drops this field
        # manager's claim on replicas, which resets them to 1 until the HPA or KEDA acts.
        return None, record
    if mode == "none":
        return _record_replicas(record, group.min_consumers)
    if load is None:
        # Without the broker's numbers, keep what runs, within the group's bounds.
        return _record_replicas(record, max(group.min_consumers, min(group.max_consumers, running)))

    limits = ScalingLimits(
        min_consumers=group.min_consumers,
        max_consumers=group.max_consumers,
        target_backlog_per_consumer=group.target_backlog_per_consumer,
        prefetch=group.prefetch,
        cooldown_seconds=group.scaling.cooldown_seconds,
    )
    decision = decide_replicas(
        load, current=running, limits=limits, last_scaled_at=parse_timestamp(previous.get("lastScaleTime")), now=now
    )
    if decision.changes(running):
        logger.info("scaling consumers of group %s from %d to %d: %s", group.name, running, decision.replicas, decision.reason)
        current.events.append(
            Event("Normal", "Scaled", f"group {group.name}: {running} -> {decision.replicas} consumers ({decision.reason})")
        )
        record.update(lastScaleTime=timestamp(now), lastScaleReason=decision.reason)
    return _record_replicas(record, decision.replicas)


def _record_replicas(record: dict[str, Any], replicas: int) -> tuple[int, dict[str, Any]]:
    record["consumers"] = replicas
    return replicas, record


# Monitoring


def apply_monitoring(kube: KubernetesClient, pipeline: Pipeline) -> None:
    for manifest in monitoring.metrics_services(pipeline):
        kube.apply(manifest)
    settings = pipeline.spec.monitoring
    switches = [
        (settings.service_monitor, "ServiceMonitor", monitoring.service_monitor),
        (settings.prometheus_rule, "PrometheusRule", monitoring.prometheus_rule),
    ]
    for enabled, kind, build in switches:
        if not kube.kind_exists(api_version=monitoring.MONITORING_API_VERSION, kind=kind):
            continue
        if enabled:
            kube.apply(build(pipeline))
        else:
            kube.delete(api_version=monitoring.MONITORING_API_VERSION, kind=kind, name=pipeline.name, namespace=pipeline.namespace)


# Status


def build_status(pipeline: Pipeline, current: Pass, *, old: dict[str, Any], generation: int, now: datetime) -> dict[str, Any]:
    conditions = read_conditions(old)
    stamp = timestamp(now)

    def condition(type_: str, healthy: bool, reason: str, message: str) -> None:
        nonlocal conditions
        state: ConditionStatus = "True" if healthy else "False"
        conditions = set_condition(
            conditions, type_=type_, status=state, reason=reason, message=message, generation=generation, now=stamp
        )

    nodes_ready = current.rabbitmq.get("readyReplicas", 0) >= current.rabbitmq.get("replicas", 0)
    rabbitmq_ok = nodes_ready and current.broker_error is None
    rabbitmq_message = (
        current.broker_error
        or f"{current.rabbitmq.get('readyReplicas', 0)} of {current.rabbitmq.get('replicas', 0)} nodes ready"
    )
    condition("RabbitMQReady", rabbitmq_ok, "Available" if rabbitmq_ok else "Unavailable", rabbitmq_message)

    lagging = [group["name"] for group in current.groups if group.get("readyConsumers", 0) < group.get("consumers", 0)]
    consumers_ok = not lagging
    condition(
        "ConsumersReady",
        consumers_ok,
        "Available" if consumers_ok else "Progressing",
        "all consumers ready" if consumers_ok else f"consumers not ready in groups: {', '.join(lagging)}",
    )

    degraded = bool(current.problems)
    reasons = ", ".join(reason for reason, _ in current.problems)
    condition(
        "Degraded",
        degraded,
        reasons.split(", ")[0] if degraded else "AsExpected",
        "; ".join(message for _, message in current.problems) if degraded else "the spec is applied in full",
    )

    ready = rabbitmq_ok and consumers_ok
    condition("Ready", ready, "Ready" if ready else "NotReady", "pipeline is ready" if ready else "waiting for RabbitMQ or consumers")

    current.events.extend(problem_events(read_conditions(old), current.problems))
    report = current.report
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": conditions,
        "groupCount": len(pipeline.spec.groups),
        "groups": current.groups,
        "rabbitmq": current.rabbitmq,
        "jobs": current.jobs,
        "healthcheck": current.healthcheck,
    }
    if report is not None:
        status.update(
            backlog=sum(load.backlog for load in report.loads.values()),
            sent=report.sent,
            dequeued=report.dequeued,
        )
        if report.redeclared and old.get("observedGeneration") is not None:
            current.events.append(Event("Warning", "Redeclared", f"put back on the broker: {', '.join(report.redeclared)}"))
    return status


def problem_events(old_conditions: list[Condition], problems: list[tuple[str, str]]) -> list[Event]:
    """Return a warning per problem that the last status did not already report, so a problem
    that persists is announced once instead of on every pass."""
    previous = find_condition(old_conditions, "Degraded")
    known = previous["message"] if previous and previous["status"] == "True" else ""
    return [Event("Warning", reason, message) for reason, message in problems if message not in known]


def paused_status(old: dict[str, Any], *, generation: int, now: datetime) -> dict[str, Any]:
    conditions = set_condition(
        read_conditions(old),
        type_="Ready",
        status="Unknown",
        reason="Paused",
        message="reconciliation is paused (spec.paused); objects are left as they are",
        generation=generation,
        now=timestamp(now),
    )
    return {"observedGeneration": generation, "conditions": conditions}


def deletion_blocker(kube: KubernetesClient, pipeline: Pipeline, *, annotations: dict[str, str], logger: Logger) -> str | None:
    """Return why the pipeline may not go yet (emails still queued), or None when it may."""
    if annotations.get(CONFIRM_DELETE_ANNOTATION) == "true":
        return None
    current = Pass()
    observe_broker(kube, pipeline, current, logger=logger)
    hint = f'annotate it with {CONFIRM_DELETE_ANNOTATION}="true" to delete it anyway'
    if current.report is None:
        return f"cannot read the queues ({current.broker_error}); {hint}"
    backlog = {name: load.backlog for name, load in current.report.loads.items() if load.backlog}
    if backlog:
        queued = ", ".join(f"{name}: {count}" for name, count in sorted(backlog.items()))
        return f"emails are still queued ({queued}); wait for them to drain or {hint}"
    return None

