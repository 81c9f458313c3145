"""What every worker container shares: the pipeline's config file, its connection URLs from
Secrets, and the metrics port. Consumers and CronJobs build their pods from these parts."""

from __future__ import annotations

from typing import Any

import yaml

from mailpipe.config import SecretKeyRef
from mailpipe_operator.builders.meta import (
    CONFIG_PATH,
    Manifest,
    Pipeline,
    config_map_name,
    default_user_secret_name,
    metadata,
)

CONFIG_VOLUME = "config"
# The key of a RabbitMQ Secret that holds the management API URLs, next to the AMQP URL's key.
API_URLS_KEY = "apiUrls"


def config_map(pipeline: Pipeline) -> Manifest:
    """Build the ConfigMap holding the spec as the data plane's YAML config file (camelCase keys)."""
    document = pipeline.spec.model_dump(by_alias=True, mode="json", exclude_none=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(pipeline, name=config_map_name(pipeline), component="config"),
        "data": {"config.yaml": yaml.safe_dump(document, sort_keys=False)},
    }


def _secret_env(name: str, ref: SecretKeyRef, *, optional: bool = False) -> dict[str, Any]:
    selector: dict[str, Any] = {"name": ref.name, "key": ref.key}
    if optional:
        selector["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": selector}}


def environment(pipeline: Pipeline) -> list[dict[str, Any]]:
    """Build the connection variables; each credential comes from a Secret, never from the spec."""
    secrets = pipeline.spec.secrets
    rabbitmq = secrets.rabbitmq or SecretKeyRef(name=default_user_secret_name(pipeline), key="url")
    env = [
        _secret_env("MAILPIPE_MYSQL_URL", secrets.mysql),
        _secret_env("MAILPIPE_MONGODB_URL", secrets.mongodb),
        _secret_env("MAILPIPE_SMTP_URL", secrets.smtp),
        _secret_env("MAILPIPE_RABBITMQ_URL", rabbitmq),
        # An external broker's Secret may leave the API URLs out; the data plane then uses its default.
        _secret_env(
            "MAILPIPE_RABBITMQ_API_URLS",
            SecretKeyRef(name=rabbitmq.name, key=API_URLS_KEY),
            optional=secrets.rabbitmq is not None,
        ),
    ]
    if pipeline.spec.monitoring.pushgateway_url:
        env.append({"name": "MAILPIPE_PUSHGATEWAY_URL", "value": pipeline.spec.monitoring.pushgateway_url})
    return env


def container(pipeline: Pipeline, *, name: str, args: list[str], serves_metrics: bool) -> dict[str, Any]:
    """Build a worker container that runs `mailpipe ARGS --config CONFIG_PATH`."""
    result: dict[str, Any] = {
        "name": name,
        "image": pipeline.spec.image,
        "command": ["mailpipe", *args, "--config", CONFIG_PATH],
        "env": environment(pipeline),
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": "/etc/mailpipe", "readOnly": True}],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if serves_metrics:
        port = pipeline.spec.monitoring.metrics_port
        result["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
        result["readinessProbe"] = {
            "httpGet": {"path": "/metrics", "port": "metrics"},
            "periodSeconds": 10,
        }
    return result


def config_volume(pipeline: Pipeline) -> dict[str, Any]:
    return {"name": CONFIG_VOLUME, "configMap": {"name": config_map_name(pipeline)}}
