"""The chart lints and renders, and its objects carry the labels, selectors and settings it promises."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from chart_helpers import ALL_FEATURES, ALERT_RULES, CHART, DASHBOARDS, kubernetes_version, objects_of_kind, render, run, set_arguments

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)
SELECTOR_LABELS = {"app.kubernetes.io/name": "mailpipe", "app.kubernetes.io/instance": "mp"}


@pytest.mark.parametrize("values", [(), ALL_FEATURES], ids=["defaults", "all-features"])
def test_helm_lint_passes_strictly(helm: str, values: tuple[str, ...]) -> None:
    command = [helm, "lint", str(CHART), "--strict", "--kube-version", kubernetes_version(), *set_arguments(values)]
    result = run(command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_defaults_render_operator_objects_only(helm: str) -> None:
    kinds = sorted(item["kind"] for item in render(helm))
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "Deployment", "ServiceAccount"]


def test_all_features_render_optional_objects(helm: str) -> None:
    objects = render(helm, *ALL_FEATURES)
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert len(objects_of_kind(objects, "ConfigMap")) == len(dashboards)
    assert len(objects_of_kind(objects, "PrometheusRule")) == 1
    assert len(objects_of_kind(objects, "EmailPipeline")) == 1


@pytest.mark.parametrize(
    "values",
    [(), ALL_FEATURES, (*ALL_FEATURES, "operator.watchNamespaces={mailpipe,campaigns}")],
    ids=["defaults", "all-features", "namespaced"],
)
def test_every_object_has_standard_labels(helm: str, values: tuple[str, ...]) -> None:
    for item in render(helm, *values):
        labels = item["metadata"].get("labels", {})
        for label in STANDARD_LABELS:
            assert label in labels, f"{item['kind']}/{item['metadata']['name']} lacks label {label}"
        assert labels["app.kubernetes.io/name"] == "mailpipe"
        assert labels["app.kubernetes.io/instance"] == "mp"


def test_common_labels_and_annotations_reach_every_object(helm: str) -> None:
    objects = render(helm, *ALL_FEATURES, "commonLabels.team=mail", "commonAnnotations.owner=mail-team")
    for item in objects:
        name = f"{item['kind']}/{item['metadata']['name']}"
        assert item["metadata"]["labels"].get("team") == "mail", name
        assert item["metadata"].get("annotations", {}).get("owner") == "mail-team", name


def test_deployment_selector_uses_name_and_instance_only(helm: str) -> None:
    (deployment,) = objects_of_kind(render(helm), "Deployment")
    assert deployment["spec"]["selector"] == {"matchLabels": SELECTOR_LABELS}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in SELECTOR_LABELS.items():
        assert pod_labels[key] == value


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = objects_of_kind(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_operator_runs_operator_command_as_non_root(helm: str) -> None:
    objects = render(helm)
    (deployment,) = objects_of_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert container["command"] == ["mailpipe-operator"]
    assert container["image"] == "ghcr.io/mailpipe/mailpipe:0.1.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (service_account,) = objects_of_kind(objects, "ServiceAccount")
    assert pod["serviceAccountName"] == service_account["metadata"]["name"]


def test_image_digest_replaces_tag(helm: str) -> None:
    digest = "sha256:" + "ab" * 32
    container = operator_container(render(helm, "image.tag=9.9.9", f"image.digest={digest}"))
    assert container["image"] == f"ghcr.io/mailpipe/mailpipe@{digest}"


def test_kind_deploy_image_values_reach_operator(helm: str) -> None:
    # The values that `make kind-deploy` sets for an image loaded into kind.
    container = operator_container(
        render(helm, "image.repository=mailpipe/mailpipe", "image.tag=0.1.0", "image.pullPolicy=Never")
    )
    assert container["image"] == "mailpipe/mailpipe:0.1.0"
    assert container["imagePullPolicy"] == "Never"


def test_operator_watches_all_namespaces_by_default(helm: str) -> None:
    assert "--all-namespaces" in operator_container(render(helm))["args"]


def test_operator_watches_listed_namespaces(helm: str) -> None:
    args = operator_container(render(helm, "operator.watchNamespaces={mailpipe,campaigns}"))["args"]
    assert "--namespace=mailpipe" in args
    assert "--namespace=campaigns" in args
    assert "--all-namespaces" not in args


def test_existing_service_account_is_used_without_creating_one(helm: str) -> None:
    objects = render(helm, "serviceAccount.create=false", "serviceAccount.name=platform-operator")
    assert objects_of_kind(objects, "ServiceAccount") == []
    (deployment,) = objects_of_kind(objects, "Deployment")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    (binding,) = objects_of_kind(objects, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "platform-operator"


def test_dashboard_configmaps_carry_sidecar_label_and_files(helm: str) -> None:
    configmaps = objects_of_kind(render(helm, "dashboards.enabled=true"), "ConfigMap")
    shipped = {}
    for configmap in configmaps:
        assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
        shipped.update(configmap["data"])
    for path in sorted(DASHBOARDS.glob("*.json")):
        assert json.loads(shipped[path.name]) == json.loads(path.read_text()), path.name


def test_dashboards_and_rules_go_to_chosen_namespace(helm: str) -> None:
    objects = render(helm, *ALL_FEATURES, "dashboards.namespace=monitoring", "prometheusRule.namespace=monitoring")
    for item in objects_of_kind(objects, "ConfigMap") + objects_of_kind(objects, "PrometheusRule"):
        assert item["metadata"]["namespace"] == "monitoring"


def test_prometheus_rule_contains_alert_rule_file(helm: str) -> None:
    (rule,) = objects_of_kind(render(helm, "prometheusRule.enabled=true", "prometheusRule.labels.release=kube-prometheus"), "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERT_RULES.read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"


def test_example_pipeline_spec_is_valid_pipeline_spec(helm: str) -> None:
    from mailpipe.config import PipelineSpec

    (pipeline,) = objects_of_kind(render(helm, "examplePipeline.enabled=true"), "EmailPipeline")
    assert pipeline["apiVersion"] == "mailpipe.io/v1alpha1"
    assert pipeline["metadata"]["namespace"] == "mailpipe"
    PipelineSpec.model_validate(pipeline["spec"])


def test_example_pipeline_image_defaults_to_chart_image(helm: str) -> None:
    objects = render(helm, "examplePipeline.enabled=true", "image.repository=mailpipe/mailpipe", "image.tag=0.1.0")
    (pipeline,) = objects_of_kind(objects, "EmailPipeline")
    assert pipeline["spec"]["image"] == "mailpipe/mailpipe:0.1.0"


def test_example_pipeline_keeps_explicit_image(helm: str) -> None:
    objects = render(helm, "examplePipeline.enabled=true", "examplePipeline.spec.image=registry.example/mailpipe:1.2.3")
    (pipeline,) = objects_of_kind(objects, "EmailPipeline")
    assert pipeline["spec"]["image"] == "registry.example/mailpipe:1.2.3"


@pytest.mark.parametrize(
    "values",
    [(), ("operator.watchNamespaces={mailpipe,campaigns}", "operator.logLevel=debug", "operator.livenessProbe.enabled=false")],
    ids=["defaults", "namespaced-debug-no-probe"],
)
def test_operator_arguments_parse_with_operator_cli(helm: str, values: tuple[str, ...]) -> None:
    from mailpipe_operator.main import parse_arguments

    parsed = parse_arguments(operator_container(render(helm, *values))["args"])
    if values:
        assert parsed.namespace == ["mailpipe", "campaigns"]
        assert parsed.verbose is True
        assert parsed.liveness_port == 0
    else:
        assert parsed.all_namespaces is True
        assert parsed.verbose is False
        assert parsed.liveness_port == 8080


def test_liveness_probe_targets_operator_health_port(helm: str) -> None:
    container = operator_container(render(helm, "operator.healthPort=9090"))
    assert "--liveness-port=9090" in container["args"]
    assert container["ports"] == [{"name": "health", "containerPort": 9090, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_disabled_liveness_probe_leaves_no_probe(helm: str) -> None:
    container = operator_container(render(helm, "operator.livenessProbe.enabled=false"))
    assert "livenessProbe" not in container
    assert "--liveness-port=0" in container["args"]
