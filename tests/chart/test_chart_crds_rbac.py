"""The chart installs the same CRD as crds/ and grants exactly the RBAC rules that the operator
declares in mailpipe_operator.rbac."""

from __future__ import annotations

from typing import Any

import yaml

from chart_helpers import CHART, REPO, objects_of_kind, render


def test_chart_crds_match_top_level_crds() -> None:
    top_level = {path.name: path.read_text() for path in (REPO / "crds").glob("*.yaml")}
    in_chart = {path.name: path.read_text() for path in (CHART / "crds").glob("*.yaml")}
    assert top_level, "crds/ holds no CRD file"
    assert sorted(in_chart) == sorted(top_level), "charts/mailpipe/crds/ and crds/ hold different files"
    for name, text in top_level.items():
        assert in_chart[name] == text, f"charts/mailpipe/crds/{name} differs from crds/{name}; copy it again"


def test_chart_crd_is_emailpipeline() -> None:
    kinds = []
    for path in (CHART / "crds").glob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                kinds.append((document["kind"], document["spec"]["names"]["kind"]))
    assert ("CustomResourceDefinition", "EmailPipeline") in kinds


def normalized(rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sort each rule's lists and the rules themselves, since RBAC ignores order."""
    result = []
    for rule in rules:
        result.append({key: sorted(value) if isinstance(value, list) else value for key, value in rule.items() if value})
    return sorted(result, key=repr)


def operator_rules() -> list[dict[str, Any]]:
    from mailpipe_operator.rbac import policy_rules

    return normalized(policy_rules())


# Cluster-scoped resources that an operator of this kind may need. A Role cannot grant these.
CLUSTER_SCOPED_RESOURCES = {
    "customresourcedefinitions", "namespaces", "nodes", "persistentvolumes", "storageclasses",
    "clusterroles", "clusterrolebindings", "priorityclasses", "validatingwebhookconfigurations",
    "mutatingwebhookconfigurations",
}


def test_operator_rules_name_only_known_resources() -> None:
    # A rule for a cluster-scoped resource missing from CLUSTER_SCOPED_RESOURCES would land in the
    # namespaced Roles, where it has no effect; the cluster test checks the list against the API.
    chart_rules = yaml.safe_load((CHART / "files" / "operator-rbac.yaml").read_text())
    for rule in chart_rules["clusterRules"]:
        assert set(rule["resources"]) <= CLUSTER_SCOPED_RESOURCES, rule
    for rule in chart_rules["namespacedRules"]:
        assert not set(rule["resources"]) & CLUSTER_SCOPED_RESOURCES, rule


def test_cluster_role_equals_operator_rules(helm: str) -> None:
    objects = render(helm)
    (cluster_role,) = objects_of_kind(objects, "ClusterRole")
    assert normalized(cluster_role["rules"]) == operator_rules()
    (binding,) = objects_of_kind(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    (service_account,) = objects_of_kind(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": service_account["metadata"]["name"], "namespace": "mailpipe"}
    ]


def test_watched_namespaces_get_roles_plus_cluster_scoped_rules(helm: str) -> None:
    objects = render(helm, "operator.watchNamespaces={mailpipe,campaigns}")
    roles = objects_of_kind(objects, "Role")
    assert sorted(role["metadata"]["namespace"] for role in roles) == ["campaigns", "mailpipe"]
    (cluster_role,) = objects_of_kind(objects, "ClusterRole")
    for role in roles:
        assert normalized(role["rules"] + cluster_role["rules"]) == operator_rules()
    for rule in cluster_role["rules"]:
        assert set(rule["resources"]) <= CLUSTER_SCOPED_RESOURCES, rule
    (cluster_binding,) = objects_of_kind(objects, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    bindings = objects_of_kind(objects, "RoleBinding")
    assert sorted(binding["metadata"]["namespace"] for binding in bindings) == ["campaigns", "mailpipe"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"][0]["namespace"] == "mailpipe"


def test_rbac_can_be_left_to_cluster_admin(helm: str) -> None:
    kinds = {item["kind"] for item in render(helm, "rbac.create=false")}
    assert kinds.isdisjoint({"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"})
