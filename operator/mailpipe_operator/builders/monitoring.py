"""Metrics Services per component, and the Prometheus operator's ServiceMonitor and PrometheusRule."""

from __future__ import annotations

from mailpipe_operator.builders.meta import APP_NAME, Manifest, Pipeline, metadata, selector_labels
from mailpipe_operator.builders.rabbitmq import PROMETHEUS_PORT

METRICS_LABEL = "mailpipe.io/metrics"
MONITORING_API_VERSION = "monitoring.coreos.com/v1"


def metrics_service(pipeline: Pipeline, *, component: str, port: int) -> Manifest:
    """Build a Service exposing one component's metrics port, labelled for the ServiceMonitor."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(
            pipeline,
            name=f"{pipeline.name}-{component}-metrics",
            component=component,
            extra_labels={METRICS_LABEL: "true"},
        ),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(pipeline, component=component),
            "ports": [{"name": "metrics", "port": port, "targetPort": port}],
        },
    }


def metrics_services(pipeline: Pipeline) -> list[Manifest]:
    return [
        metrics_service(pipeline, component="consumer", port=pipeline.spec.monitoring.metrics_port),
        metrics_service(pipeline, component="rabbitmq", port=PROMETHEUS_PORT),
    ]


def service_monitor(pipeline: Pipeline) -> Manifest:
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": metadata(pipeline, name=pipeline.name, component="monitoring"),
        "spec": {
            "selector": {
                "matchLabels": {
                    "app.kubernetes.io/name": APP_NAME,
                    "app.kubernetes.io/instance": pipeline.name,
                    METRICS_LABEL: "true",
                }
            },
            # The dashboards and alert rules select and group by a `pipeline` label.
            "endpoints": [
                {
                    "port": "metrics",
                    "interval": "30s",
                    "relabelings": [
                        {
                            "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
                            "targetLabel": "pipeline",
                        }
                    ],
                }
            ],
        },
    }


def prometheus_rule(pipeline: Pipeline) -> Manifest:
    """Build alerts on metrics that the data plane exports (see mailpipe.metrics)."""
    instance = f'namespace="{pipeline.namespace}"'
    rules = [
        {
            "alert": "MailpipeHealthcheckFailing",
            "expr": f"min by (check) (mailpipe_healthcheck_status{{{instance}}}) == 0",
            "for": "10m",
            "labels": {"severity": "critical"},
            "annotations": {"summary": "Mailpipe healthcheck {{ $labels.check }} has failed for 10 minutes."},
        },
        {
            "alert": "MailpipeDequeuedEmails",
            "expr": f"sum by (group) (increase(mailpipe_dequeued_total{{{instance}}}[15m])) > 0",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "Emails of group {{ $labels.group }} failed for good in the last 15 minutes."},
        },
        {
            "alert": "MailpipeBacklogGrowing",
            "expr": f'sum by (group) (mailpipe_queue_messages{{{instance}, state="ready"}}) > 100000',
            "for": "30m",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "Group {{ $labels.group }} has had over 100000 ready messages for 30 minutes."},
        },
    ]
    return {
        "apiVersion": MONITORING_API_VERSION,
        "kind": "PrometheusRule",
        "metadata": metadata(pipeline, name=pipeline.name, component="monitoring"),
        "spec": {"groups": [{"name": f"mailpipe-{pipeline.name}", "rules": rules}]},
    }
