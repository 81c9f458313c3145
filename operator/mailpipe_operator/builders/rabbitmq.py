"""The RabbitMQ cluster: StatefulSet, Services, ConfigMap, Secrets, PodDisruptionBudget and the
RBAC its peer discovery needs.

Nodes find each other through Kubernetes peer discovery (the plugin reads the headless Service's
endpoints), so every pod starts in parallel and joins whichever node formed the cluster first.
"""

from __future__ import annotations

from typing import Any

from mailpipe_operator.builders.meta import (
    Manifest,
    Pipeline,
    default_user_secret_name,
    erlang_cookie_secret_name,
    metadata,
    rabbitmq_headless_name,
    rabbitmq_name,
    selector_labels,
    labels,
)

COMPONENT = "rabbitmq"
AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
PROMETHEUS_PORT = 15692
DISTRIBUTION_PORT = 25672
EPMD_PORT = 4369
DATA_VOLUME = "data"
# How long a stopping node waits for every quorum queue to keep a majority without it.
QUORUM_WAIT_SECONDS = 600
CLUSTER_DOMAIN = "cluster.local"


def _meta(pipeline: Pipeline, name: str) -> dict[str, Any]:
    return metadata(pipeline, name=name, component=COMPONENT)


def client_service_host(pipeline: Pipeline) -> str:
    return f"{rabbitmq_name(pipeline)}.{pipeline.namespace}.svc"


def amqp_url(pipeline: Pipeline, *, username: str, password: str) -> str:
    vhost = pipeline.spec.rabbitmq.vhost.replace("/", "%2F")
    return f"amqp://{username}:{password}@{client_service_host(pipeline)}:{AMQP_PORT}/{vhost}"


def management_url(pipeline: Pipeline, *, username: str, password: str) -> str:
    return f"http://{username}:{password}@{client_service_host(pipeline)}:{MANAGEMENT_PORT}"


def rabbitmq_conf(pipeline: Pipeline) -> str:
    """Render rabbitmq.conf: peer discovery through the headless Service, partition handling."""
    headless = rabbitmq_headless_name(pipeline)
    lines = [
        "cluster_formation.peer_discovery_backend = rabbit_peer_discovery_k8s",
        f"cluster_formation.k8s.host = kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "cluster_formation.k8s.address_type = hostname",
        f"cluster_formation.k8s.service_name = {headless}",
        f"cluster_formation.k8s.hostname_suffix = .{headless}.{pipeline.namespace}.svc.{CLUSTER_DOMAIN}",
        # A minority side of a partition pauses instead of accepting writes it would later lose.
        "cluster_partition_handling = pause_minority",
        "queue_leader_locator = balanced",
        "loopback_users.guest = false",
        f"listeners.tcp.default = {AMQP_PORT}",
        f"management.tcp.port = {MANAGEMENT_PORT}",
        f"prometheus.tcp.port = {PROMETHEUS_PORT}",
        "vm_memory_high_watermark.relative = 0.6",
        "disk_free_limit.absolute = 2GB",
    ]
    return "\n".join(lines) + "\n"


def config_map(pipeline: Pipeline) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(pipeline, f"{rabbitmq_name(pipeline)}-config"),
        "data": {
            "rabbitmq.conf": rabbitmq_conf(pipeline),
            "enabled_plugins": "[rabbitmq_management,rabbitmq_peer_discovery_k8s,rabbitmq_prometheus].\n",
        },
    }


def erlang_cookie_secret(pipeline: Pipeline, *, cookie: str) -> Manifest:
    """Build the Secret with the cookie that lets the nodes talk; created once, never replaced."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(pipeline, erlang_cookie_secret_name(pipeline)),
        "type": "Opaque",
        "stringData": {"cookie": cookie},
    }


def default_user_secret(pipeline: Pipeline, *, username: str, password: str) -> Manifest:
    """Build the Secret with the broker's first user and the URLs the workers connect with."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(pipeline, default_user_secret_name(pipeline)),
        "type": "Opaque",
        "stringData": {
            "username": username,
            "password": password,
            "url": amqp_url(pipeline, username=username, password=password),
            "apiUrls": management_url(pipeline, username=username, password=password),
        },
    }


def _service_ports(*, include_cluster_ports: bool) -> list[dict[str, Any]]:
    ports = [
        {"name": "amqp", "port": AMQP_PORT, "targetPort": "amqp"},
        {"name": "management", "port": MANAGEMENT_PORT, "targetPort": "management"},
    ]
    if include_cluster_ports:
        ports += [
            {"name": "epmd", "port": EPMD_PORT, "targetPort": "epmd"},
            {"name": "distribution", "port": DISTRIBUTION_PORT, "targetPort": "distribution"},
        ]
    return ports


def headless_service(pipeline: Pipeline) -> Manifest:
    """Build the headless Service that gives each node a stable DNS name for peer discovery."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(pipeline, rabbitmq_headless_name(pipeline)),
        "spec": {
            "clusterIP": "None",
            # Nodes must resolve each other before they are ready, or the cluster never forms.
            "publishNotReadyAddresses": True,
            "selector": selector_labels(pipeline, component=COMPONENT),
            "ports": _service_ports(include_cluster_ports=True),
        },
    }


def client_service(pipeline: Pipeline) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(pipeline, rabbitmq_name(pipeline)),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(pipeline, component=COMPONENT),
            "ports": _service_ports(include_cluster_ports=False),
        },
    }


def pod_disruption_budget(pipeline: Pipeline) -> Manifest:
    """Build the budget that lets a drain take one node at a time, so quorum queues keep a majority."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(pipeline, rabbitmq_name(pipeline)),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(pipeline, component=COMPONENT)}},
    }


def service_account(pipeline: Pipeline) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(pipeline, rabbitmq_name(pipeline))}


def peer_discovery_role(pipeline: Pipeline) -> Manifest:
    """Build the Role that lets the nodes read their Service's endpoints, and nothing else."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(pipeline, rabbitmq_name(pipeline)),
        "rules": [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]}],
    }


def peer_discovery_role_binding(pipeline: Pipeline) -> Manifest:
    name = rabbitmq_name(pipeline)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(pipeline, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": pipeline.namespace}],
    }


def _environment(pipeline: Pipeline) -> list[dict[str, Any]]:
    headless = rabbitmq_headless_name(pipeline)

    def from_secret(name: str, secret: str, key: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}

    def from_field(name: str, path: str) -> dict[str, Any]:
        return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        from_field("MY_POD_NAME", "metadata.name"),
        from_field("MY_POD_NAMESPACE", "metadata.namespace"),
        {"name": "RABBITMQ_USE_LONGNAME", "value": "true"},
        {
            "name": "RABBITMQ_NODENAME",
            "value": f"rabbit@$(MY_POD_NAME).{headless}.$(MY_POD_NAMESPACE).svc.{CLUSTER_DOMAIN}",
        },
        from_secret("RABBITMQ_ERLANG_COOKIE", erlang_cookie_secret_name(pipeline), "cookie"),
        from_secret("RABBITMQ_DEFAULT_USER", default_user_secret_name(pipeline), "username"),
        from_secret("RABBITMQ_DEFAULT_PASS", default_user_secret_name(pipeline), "password"),
        {"name": "RABBITMQ_DEFAULT_VHOST", "value": pipeline.spec.rabbitmq.vhost},
    ]


def _resources(pipeline: Pipeline) -> dict[str, Any]:
    resources = pipeline.spec.rabbitmq.resources.model_dump(exclude_none=True)
    return {kind: values for kind, values in resources.items() if values}


def volume_claim_templates(pipeline: Pipeline) -> list[Manifest]:
    storage = pipeline.spec.rabbitmq.storage
    claim_spec: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        claim_spec["storageClassName"] = storage.storage_class_name
    return [{"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": DATA_VOLUME}, "spec": claim_spec}]


def _container(pipeline: Pipeline) -> dict[str, Any]:
    diagnostics_probe = {"exec": {"command": ["rabbitmq-diagnostics", "-q", "check_port_connectivity"]}}
    return {
        "name": "rabbitmq",
        "image": pipeline.spec.rabbitmq.image,
        "env": _environment(pipeline),
        "ports": [
            {"name": "amqp", "containerPort": AMQP_PORT},
            {"name": "management", "containerPort": MANAGEMENT_PORT},
            {"name": "prometheus", "containerPort": PROMETHEUS_PORT},
            {"name": "distribution", "containerPort": DISTRIBUTION_PORT},
            {"name": "epmd", "containerPort": EPMD_PORT},
        ],
        "resources": _resources(pipeline),
        "volumeMounts": [
            {"name": DATA_VOLUME, "mountPath": "/var/lib/rabbitmq/mnesia"},
            {"name": "config", "mountPath": "/etc/rabbitmq"},
        ],
        "readinessProbe": {**diagnostics_probe, "initialDelaySeconds": 10, "periodSeconds": 30, "timeoutSeconds": 20},
        "livenessProbe": {
            "exec": {"command": ["rabbitmq-diagnostics", "-q", "status"]},
            "initialDelaySeconds": 120,
            "periodSeconds": 60,
            "timeoutSeconds": 30,
        },
        "lifecycle": {
            "preStop": {
                "exec": {
                    "command": [
                        "/bin/sh",
                        "-c",
                        f"rabbitmq-upgrade await_online_quorum_plus_one -t {QUORUM_WAIT_SECONDS}"
                        " && rabbitmq-upgrade drain",
                    ]
                }
            }
        },
    }


def statefulset(
    pipeline: Pipeline,
    *,
    replicas: int,
    claim_templates: list[Manifest] | None = None,
) -> Manifest:
    """Build the StatefulSet.

    `replicas` and `claim_templates` are separate from the spec because the reconciler may keep the
    running values: a scale-down is refused, and Kubernetes forbids changing claim templates.
    """
    pod_labels = labels(pipeline, component=COMPONENT)
    selector = selector_labels(pipeline, component=COMPONENT)
    anti_affinity = {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 100,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": selector},
                },
            }
        ]
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(pipeline, rabbitmq_name(pipeline)),
        "spec": {
            "replicas": replicas,
            "serviceName": rabbitmq_headless_name(pipeline),
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "serviceAccountName": rabbitmq_name(pipeline),
                    "terminationGracePeriodSeconds": QUORUM_WAIT_SECONDS + 60,
                    "securityContext": {"fsGroup": 999},
                    "affinity": {"podAntiAffinity": anti_affinity},
                    "containers": [_container(pipeline)],
                    "volumes": [{"name": "config", "configMap": {"name": f"{rabbitmq_name(pipeline)}-config"}}],
                },
            },
            "volumeClaimTemplates": claim_templates or volume_claim_templates(pipeline),
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Delete", "whenScaled": "Retain"},
        },
    }
