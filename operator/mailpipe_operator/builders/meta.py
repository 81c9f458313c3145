"""Names, labels and metadata shared by every object that the operator creates for a pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mailpipe.config import PipelineSpec

Manifest = dict[str, Any]

API_GROUP = "mailpipe.io"
API_VERSION = "v1alpha1"
KIND = "EmailPipeline"
PLURAL = "emailpipelines"
APP_NAME = "mailpipe"
MANAGER = "mailpipe-operator"
GROUP_LABEL = "mailpipe.io/group"
CONFIG_PATH = "/etc/mailpipe/config.yaml"


@dataclass(frozen=True)
class Pipeline:
    """One EmailPipeline resource: its identity and its validated spec."""

    name: str
    namespace: str
    uid: str
    spec: PipelineSpec


def selector_labels(pipeline: Pipeline, *, component: str) -> dict[str, str]:
    """Return the labels that Services, workloads and budgets select their pods by."""
    return {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/instance": pipeline.name,
        "app.kubernetes.io/component": component,
    }


def labels(pipeline: Pipeline, *, component: str) -> dict[str, str]:
    """Return the full standard label set of one component's objects."""
    return {
        **selector_labels(pipeline, component=component),
        "app.kubernetes.io/part-of": APP_NAME,
        "app.kubernetes.io/managed-by": MANAGER,
    }


def owner_reference(pipeline: Pipeline) -> dict[str, Any]:
    """Return the reference that makes the garbage collector delete an object with its pipeline."""
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": KIND,
        "name": pipeline.name,
        "uid": pipeline.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def metadata(
    pipeline: Pipeline,
    *,
    name: str,
    component: str,
    extra_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": pipeline.namespace,
        "labels": {**labels(pipeline, component=component), **(extra_labels or {})},
        "ownerReferences": [owner_reference(pipeline)],
    }


def rabbitmq_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-rabbitmq"


def rabbitmq_headless_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-rabbitmq-headless"


def default_user_secret_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-rabbitmq-default-user"


def erlang_cookie_secret_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-rabbitmq-erlang-cookie"


def config_map_name(pipeline: Pipeline) -> str:
    return f"{pipeline.name}-config"


def consumer_name(pipeline: Pipeline, group: str) -> str:
    return f"{pipeline.name}-consumer-{group}"


def job_name(pipeline: Pipeline, job: str) -> str:
    return f"{pipeline.name}-{job}"
