"""The rendered chart is valid for a real API server: the CRD is applied for real, then every
object of the chart goes through `kubectl apply --dry-run=server`, which runs the API server's
schema, CEL and admission checks without storing anything."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_helpers import ALL_FEATURES, CHART, KUBECONFIG, objects_of_kind, render, run

pytestmark = pytest.mark.cluster

NAMESPACE = "mailpipe-chart-test"
CRD_FILE = CHART / "crds" / "emailpipelines.mailpipe.io.yaml"


def kubectl_command(kubectl: str, *arguments: str) -> list[str]:
    return [kubectl, "--kubeconfig", str(KUBECONFIG), *arguments]


@pytest.fixture(scope="module")
def cluster(kubectl: str) -> Iterator[str]:
    """Check that the local control plane is reachable, then apply the CRD and the test namespace."""
    if not KUBECONFIG.is_file():
        pytest.skip(f"no kubeconfig at {KUBECONFIG}, so the local control plane is not running; start it with `make cluster`")
    ready = run(kubectl_command(kubectl, "get", "--raw", "/readyz"))
    if ready.returncode != 0:
        pytest.skip(f"the control plane of {KUBECONFIG} is not reachable ({ready.stderr.strip()}), so start it with `make cluster`")

    # Server-side apply with its own field manager, because the operator's tests apply the same CRD.
    applied = run(kubectl_command(
        kubectl, "apply", "--server-side", "--force-conflicts", "--field-manager=mailpipe-chart-tests", "-f", str(CRD_FILE),
    ))
    assert applied.returncode == 0, applied.stderr
    established = run(kubectl_command(
        kubectl, "wait", "--for=condition=Established", "--timeout=60s", "crd/emailpipelines.mailpipe.io",
    ))
    assert established.returncode == 0, established.stderr
    namespace = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
    created = run(kubectl_command(kubectl, "apply", "-f", "-"), input_text=namespace)
    assert created.returncode == 0, created.stderr
    # The CRD and the namespace stay. The operator's tests use the same CRD, and dry runs store
    # nothing in the namespace, while deleting it would make the next run wait for its termination.
    yield kubectl


def served_kinds(kubectl: str, api_group: str) -> set[str]:
    result = run(kubectl_command(kubectl, "api-resources", f"--api-group={api_group}", "-o", "name"))
    return set(result.stdout.split()) if result.returncode == 0 else set()


def dry_run_apply(kubectl: str, objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    manifest = yaml.safe_dump_all(objects)
    return run(kubectl_command(kubectl, "apply", "--dry-run=server", "--validate=strict", "-f", "-"), input_text=manifest)


def without_unserved_kinds(kubectl: str, objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop PrometheusRules when the API server lacks the Prometheus operator's CRDs.

    The local control plane does not install them, so those objects are checked only by the
    unit tests of the alert rules.
    """
    if "prometheusrules.monitoring.coreos.com" in served_kinds(kubectl, "monitoring.coreos.com"):
        return objects
    return [item for item in objects if item["kind"] != "PrometheusRule"]


@pytest.mark.parametrize(
    "values",
    [(), ALL_FEATURES, (*ALL_FEATURES, f"operator.watchNamespaces={{{NAMESPACE}}}", "rbac.create=true")],
    ids=["defaults", "all-features", "namespaced"],
)
def test_rendered_chart_passes_server_dry_run(cluster: str, helm: str, values: tuple[str, ...]) -> None:
    objects = without_unserved_kinds(cluster, render(helm, *values, namespace=NAMESPACE))
    result = dry_run_apply(cluster, objects)
    assert result.returncode == 0, result.stderr
    for item in objects:
        assert f"/{item['metadata']['name']} " in result.stdout, f"{item['kind']} {item['metadata']['name']} was not applied"


def test_example_pipeline_is_accepted_by_crd_schema(cluster: str, helm: str) -> None:
    (pipeline,) = objects_of_kind(render(helm, "examplePipeline.enabled=true", namespace=NAMESPACE), "EmailPipeline")
    result = dry_run_apply(cluster, [pipeline])
    assert result.returncode == 0, result.stderr
    assert "emailpipeline.mailpipe.io/example created (server dry run)" in result.stdout


INVALID_SPECS = [
    # The CRD's CEL rule compares the bounds of a group.
    ({"groups": [{"name": "announcements", "minConsumers": 20, "maxConsumers": 10}]}, "minConsumers"),
    # Group names become queue and object names, so the schema restricts them.
    ({"groups": [{"name": "Announcements!"}]}, "spec.groups[0].name"),
    ({"retry": {"maxAttempts": 0}}, "spec.retry.maxAttempts"),
    ({"colour": "blue"}, "spec.colour"),
]


@pytest.mark.parametrize(("spec", "field"), INVALID_SPECS, ids=[field for _, field in INVALID_SPECS])
def test_invalid_example_spec_is_rejected_naming_field(
    cluster: str, helm: str, tmp_path: Path, spec: dict[str, Any], field: str
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump({"examplePipeline": {"enabled": True, "spec": spec}}))
    objects = render(helm, namespace=NAMESPACE, values_files=[values_file])
    result = dry_run_apply(cluster, objects_of_kind(objects, "EmailPipeline"))
    assert result.returncode != 0, f"the API server accepted spec {spec}"
    assert field in result.stderr, f"the API server's message does not name {field}:\n{result.stderr}"


def test_helm_install_dry_run_prints_next_commands(cluster: str, helm: str) -> None:
    result = run([
        helm, "install", "mp", str(CHART), "--dry-run=server", "--kubeconfig", str(KUBECONFIG),
        "--namespace", NAMESPACE, "--set", "dashboards.enabled=true", "--set", "examplePipeline.enabled=true",
    ])
    # NOTE: an API server built without Kubernetes' version ldflags reports v0.0.0-master, which
    # fails the chart's kubeVersion constraint here. scripts/build-tools.sh must set gitVersion.
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"kubectl -n {NAMESPACE} rollout status deployment/mp-mailpipe-operator" in notes
    assert f"kubectl -n {NAMESPACE} get emailpipeline example --watch" in notes
    assert "create secret generic mailpipe-smtp" in notes


def test_cluster_rules_name_cluster_scoped_resources(cluster: str) -> None:
    listed = run(kubectl_command(cluster, "api-resources", "--namespaced=false", "-o", "name"))
    assert listed.returncode == 0, listed.stderr
    cluster_scoped = set(listed.stdout.split())
    rules = yaml.safe_load((CHART / "files" / "operator-rbac.yaml").read_text())

    def qualified(resource: str, group: str) -> str:
        return f"{resource}.{group}" if group else resource

    for rule in rules["clusterRules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert qualified(resource, group) in cluster_scoped, f"{resource} ({group}) is namespaced"
    for rule in rules["namespacedRules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                name = qualified(resource.split("/")[0], group)
                assert name not in cluster_scoped, f"{name} is cluster-scoped, so a Role cannot grant it"
