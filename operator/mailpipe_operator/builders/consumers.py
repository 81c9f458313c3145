"""Consumer Deployments: one per email group, each running `mailpipe consume GROUP`."""

from __future__ import annotations

from mailpipe.config import EmailGroup
from mailpipe_operator.builders.meta import (
    GROUP_LABEL,
    Manifest,
    Pipeline,
    consumer_name,
    labels,
    metadata,
    selector_labels,
)
from mailpipe_operator.builders.workers import config_volume, container

COMPONENT = "consumer"
# Time a consumer gets after SIGTERM to finish its deliveries in flight, beyond one SMTP timeout.
DRAIN_MARGIN_SECONDS = 30


def consumer_deployment(pipeline: Pipeline, group: EmailGroup, *, replicas: int | None) -> Manifest:
    """Build the consumer Deployment of `group`.

    `replicas` is the operator's scaling decision; None leaves the field out, so that an HPA or
    KEDA object, or a person, owns it.
    """
    group_labels = {GROUP_LABEL: group.name}
    pod_labels = {**labels(pipeline, component=COMPONENT), **group_labels}
    grace_seconds = int(pipeline.spec.smtp.timeout_seconds) + DRAIN_MARGIN_SECONDS
    spec: Manifest = {
        "selector": {"matchLabels": {**selector_labels(pipeline, component=COMPONENT), **group_labels}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "terminationGracePeriodSeconds": grace_seconds,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                "containers": [
                    container(pipeline, name="consumer", args=["consume", group.name], serves_metrics=True)
                ],
                "volumes": [config_volume(pipeline)],
            },
        },
    }
    if replicas is not None:
        spec = {"replicas": replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(
            pipeline, name=consumer_name(pipeline, group.name), component=COMPONENT, extra_labels=group_labels
        ),
        "spec": spec,
    }
