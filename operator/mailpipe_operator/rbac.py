"""The operator's permissions: exactly the API verbs and resources it uses.

The Helm chart's ClusterRole or Role is checked against `policy_rules()` by a test, so the two
cannot drift apart.
"""

from __future__ import annotations

from typing import Any

READ = ["get", "list", "watch"]
MANAGE = [*READ, "create", "patch", "update", "delete"]


def policy_rules() -> list[dict[str, Any]]:
    """Return the PolicyRules the operator needs, in the shape of a Role's `rules`."""
    return [
        # The resource itself: kopf watches it, patches its annotations (handler progress) and
        # finalizers, and writes its status.
        {"apiGroups": ["mailpipe.io"], "resources": ["emailpipelines"], "verbs": [*READ, "patch", "update"]},
        {"apiGroups": ["mailpipe.io"], "resources": ["emailpipelines/status"], "verbs": ["get", "patch", "update"]},
        # Objects created for each pipeline and owned by it.
        {"apiGroups": ["apps"], "resources": ["statefulsets", "deployments"], "verbs": MANAGE},
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "verbs": MANAGE},
        {
            "apiGroups": [""],
            "resources": ["services", "configmaps", "secrets", "serviceaccounts"],
            "verbs": MANAGE,
        },
        {"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": MANAGE},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": MANAGE},
        # Granting RabbitMQ's peer discovery `get endpoints` requires holding that permission.
        {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get"]},
        {"apiGroups": ["monitoring.coreos.com"], "resources": ["servicemonitors", "prometheusrules"], "verbs": MANAGE},
        # Whether the Prometheus operator's CRDs exist decides if monitoring objects are made.
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["get"]},
        # kopf posts the operator's events.
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
