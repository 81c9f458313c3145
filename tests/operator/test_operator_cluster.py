"""The operator on a real control plane (scripts/cluster.sh) against the local RabbitMQ.

The tests of this module share one pipeline and run in order: each starts from the state the
previous one left, as a user's successive edits would.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from mailpipe_operator.handlers import RESYNC_SECONDS
from operator_helpers import wait_for

pytestmark = pytest.mark.cluster

NAME = "news"
FAST_GROUP = "fast"
SLOW_GROUP = "slow"
TARGET_BACKLOG = 10
MAX_CONSUMERS = 4
COOLDOWN_SECONDS = 4


def pipeline_manifest(namespace: str, vhost: str, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "EmailPipeline",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "image": "mailpipe/mailpipe:test-1",
            "rabbitmq": {"replicas": 3, "vhost": vhost, "storage": {"size": "1Gi"}},
            "groups": [
                {
                    "name": f"{prefix}-{FAST_GROUP}",
                    "minConsumers": 1,
                    "maxConsumers": MAX_CONSUMERS,
                    "targetBacklogPerConsumer": TARGET_BACKLOG,
                    "scaling": {"cooldownSeconds": COOLDOWN_SECONDS},
                },
                {"name": f"{prefix}-{SLOW_GROUP}", "minConsumers": 1, "maxConsumers": 2},
            ],
        },
    }


@pytest.fixture(scope="module")
def prefix(broker_vhost: str) -> str:
    return broker_vhost


@pytest.fixture(scope="module")
def pipeline(operator: Any, kube: Any, namespace: str, broker_vhost: str, prefix: str) -> dict[str, Any]:
    return kube.apply(pipeline_manifest(namespace, broker_vhost, prefix))  # type: ignore[no-any-return]


def read_pipeline(kube: Any, namespace: str) -> dict[str, Any] | None:
    return kube.get(api_version="mailpipe.io/v1alpha1", kind="EmailPipeline", name=NAME, namespace=namespace)  # type: ignore[no-any-return]


def condition(kube: Any, namespace: str, type_: str) -> dict[str, Any]:
    found = read_pipeline(kube, namespace) or {}
    for item in (found.get("status") or {}).get("conditions") or []:
        if item["type"] == type_:
            return item  # type: ignore[no-any-return]
    return {}


def patch_spec(kube: Any, namespace: str, spec: dict[str, Any]) -> None:
    """Change the spec the way `kubectl patch --type merge` would, as a user and not as the operator."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(kube._dynamic.client)
    resource = dynamic.resources.get(api_version="mailpipe.io/v1alpha1", kind="EmailPipeline")
    dynamic.patch(resource, name=NAME, namespace=namespace, body={"spec": spec}, content_type="application/merge-patch+json")


def owned_objects(kube: Any, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
    kinds = [
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "Deployment"),
        ("batch/v1", "CronJob"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("v1", "Secret"),
        ("v1", "ServiceAccount"),
        ("policy/v1", "PodDisruptionBudget"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ]
    selector = f"app.kubernetes.io/instance={NAME}"
    found = {}
    for api_version, kind in kinds:
        for item in kube.list(api_version=api_version, kind=kind, namespace=namespace, label_selector=selector):
            found[(kind, item["metadata"]["name"])] = item
    return found


def versions(kube: Any, namespace: str) -> dict[tuple[str, str], str]:
    """Return each object's generation (workloads) or resourceVersion (others), which move only
    when someone changes the object's spec or data, not when controllers update its status."""
    result = {}
    for key, item in owned_objects(kube, namespace).items():
        meta = item["metadata"]
        result[key] = str(meta.get("generation") or meta["resourceVersion"])
    return result


def changed_after(kube: Any, namespace: str, before: dict[tuple[str, str], str], expected: set[tuple[str, str]]) -> set[tuple[str, str]]:
    def all_expected_changed() -> set[tuple[str, str]] | None:
        now = versions(kube, namespace)
        changed = {key for key, version in now.items() if before.get(key) != version}
        return changed if expected <= changed else None

    return wait_for(all_expected_changed, timeout_seconds=30, message=f"{sorted(expected)} to change")


def deployment(kube: Any, namespace: str, name: str) -> dict[str, Any]:
    return kube.get(api_version="apps/v1", kind="Deployment", name=name, namespace=namespace) or {}  # type: ignore[no-any-return]


def events(kube: Any, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = kube.list(api_version="v1", kind="Event", namespace=namespace, label_selector="")
    return [item for item in items if item.get("reason") == reason and item["involvedObject"]["name"] == NAME]


def test_pipeline_turns_ready_with_owned_objects(kube: Any, namespace: str, pipeline: dict[str, Any], prefix: str) -> None:
    wait_for(
        lambda: condition(kube, namespace, "Ready").get("status") == "True",
        timeout_seconds=90,
        message="Ready=True",
        describe=lambda: (read_pipeline(kube, namespace) or {}).get("status"),
    )

    objects = owned_objects(kube, namespace)
    expected = {
        ("StatefulSet", f"{NAME}-rabbitmq"),
        ("Service", f"{NAME}-rabbitmq"),
        ("Service", f"{NAME}-rabbitmq-headless"),
        ("Service", f"{NAME}-rabbitmq-metrics"),
        ("Service", f"{NAME}-consumer-metrics"),
        ("ConfigMap", f"{NAME}-rabbitmq-config"),
        ("ConfigMap", f"{NAME}-config"),
        ("Secret", f"{NAME}-rabbitmq-default-user"),
        ("Secret", f"{NAME}-rabbitmq-erlang-cookie"),
        ("PodDisruptionBudget", f"{NAME}-rabbitmq"),
        ("ServiceAccount", f"{NAME}-rabbitmq"),
        ("Role", f"{NAME}-rabbitmq"),
        ("RoleBinding", f"{NAME}-rabbitmq"),
        ("Deployment", f"{NAME}-consumer-{prefix}-{FAST_GROUP}"),
        ("Deployment", f"{NAME}-consumer-{prefix}-{SLOW_GROUP}"),
        ("CronJob", f"{NAME}-populate"),
        ("CronJob", f"{NAME}-publish"),
        ("CronJob", f"{NAME}-audit-dequeued"),
        ("CronJob", f"{NAME}-healthcheck"),
    }
    assert expected <= set(objects)
    uid = pipeline["metadata"]["uid"]
    for key in expected:
        references = objects[key]["metadata"].get("ownerReferences") or []
        assert [reference["uid"] for reference in references] == [uid], f"{key} is not owned by the pipeline"

    statefulset = objects[("StatefulSet", f"{NAME}-rabbitmq")]
    assert statefulset["status"]["readyReplicas"] == 3
    status = read_pipeline(kube, namespace)["status"]  # type: ignore[index]
    assert status["groupCount"] == 2
    assert status["backlog"] == 0
    assert status["observedGeneration"] == pipeline["metadata"]["generation"]


def test_broker_topology_declared(broker: Any, prefix: str) -> None:
    names = {queue["name"] for queue in broker.queues()}
    for group in (FAST_GROUP, SLOW_GROUP):
        assert f"{prefix}-{group}" in names
        assert f"{prefix}-{group}.dead" in names
        assert f"{prefix}-{group}.retry.1" in names
    assert "mailpipe-work-queues" in {policy["name"] for policy in broker.policies()}


def test_schedule_change_touches_only_its_cronjob(kube: Any, namespace: str) -> None:
    before = versions(kube, namespace)
    patch_spec(kube, namespace, {"populate": {"schedule": "*/7 * * * *"}})
    changed = changed_after(kube, namespace, before, {("CronJob", f"{NAME}-populate"), ("ConfigMap", f"{NAME}-config")})
    assert changed == {("CronJob", f"{NAME}-populate"), ("ConfigMap", f"{NAME}-config")}


def test_replica_change_touches_only_its_deployment(kube: Any, namespace: str, prefix: str) -> None:
    slow = f"{NAME}-consumer-{prefix}-{SLOW_GROUP}"
    before = versions(kube, namespace)
    patch_spec(kube, namespace, {"groups": [
        {"name": f"{prefix}-{FAST_GROUP}", "minConsumers": 1, "maxConsumers": MAX_CONSUMERS,
         "targetBacklogPerConsumer": TARGET_BACKLOG, "scaling": {"cooldownSeconds": COOLDOWN_SECONDS}},
        {"name": f"{prefix}-{SLOW_GROUP}", "minConsumers": 2, "maxConsumers": 2},
    ]})
    changed = changed_after(kube, namespace, before, {("Deployment", slow)})
    assert changed == {("Deployment", slow), ("ConfigMap", f"{NAME}-config")}
    assert deployment(kube, namespace, slow)["spec"]["replicas"] == 2


def test_image_change_touches_only_workers(kube: Any, namespace: str) -> None:
    before = versions(kube, namespace)
    workers = {key for key in before if key[0] in ("Deployment", "CronJob")}
    patch_spec(kube, namespace, {"image": "mailpipe/mailpipe:test-2"})
    changed = changed_after(kube, namespace, before, workers)
    assert changed == workers | {("ConfigMap", f"{NAME}-config")}
    for key in workers:
        item = owned_objects(kube, namespace)[key]
        template = item["spec"]["template"] if key[0] == "Deployment" else item["spec"]["jobTemplate"]["spec"]["template"]
        assert template["spec"]["containers"][0]["image"] == "mailpipe/mailpipe:test-2"


def test_rabbitmq_scale_up_applies(kube: Any, namespace: str) -> None:
    patch_spec(kube, namespace, {"rabbitmq": {"replicas": 4}})

    def four_ready() -> bool:
        statefulset = owned_objects(kube, namespace)[("StatefulSet", f"{NAME}-rabbitmq")]
        return statefulset["spec"]["replicas"] == 4 and (statefulset.get("status") or {}).get("readyReplicas") == 4

    wait_for(four_ready, timeout_seconds=60, message="the RabbitMQ StatefulSet to run 4 ready nodes")


def test_rabbitmq_scale_down_refused(kube: Any, namespace: str) -> None:
    patch_spec(kube, namespace, {"rabbitmq": {"replicas": 2}})
    degraded = wait_for(
        lambda: (found := condition(kube, namespace, "Degraded")).get("reason") == "ScaleDownRefused" and found,
        message="Degraded=True with reason ScaleDownRefused",
    )
    assert degraded["status"] == "True"
    assert "keeping 4" in degraded["message"]
    assert owned_objects(kube, namespace)[("StatefulSet", f"{NAME}-rabbitmq")]["spec"]["replicas"] == 4
    wait_for(lambda: events(kube, namespace, "ScaleDownRefused"), message="a ScaleDownRefused event")

    patch_spec(kube, namespace, {"rabbitmq": {"replicas": 4}})
    wait_for(lambda: condition(kube, namespace, "Degraded").get("status") == "False", message="Degraded=False again")


def test_storage_change_reported_not_applied(kube: Any, namespace: str) -> None:
    patch_spec(kube, namespace, {"rabbitmq": {"storage": {"size": "2Gi"}}})
    degraded = wait_for(
        lambda: (found := condition(kube, namespace, "Degraded")).get("reason") == "ImmutableFieldChanged" and found,
        message="Degraded=True with reason ImmutableFieldChanged",
    )
    assert "rabbitmq.storage" in degraded["message"]
    statefulset = owned_objects(kube, namespace)[("StatefulSet", f"{NAME}-rabbitmq")]
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "1Gi"
    wait_for(lambda: events(kube, namespace, "ImmutableFieldChanged"), message="an ImmutableFieldChanged event")

    patch_spec(kube, namespace, {"rabbitmq": {"storage": {"size": "1Gi"}}})
    wait_for(lambda: condition(kube, namespace, "Degraded").get("status") == "False", message="Degraded=False again")


def test_deleted_cronjob_returns(kube: Any, namespace: str) -> None:
    name = f"{NAME}-publish"
    old = kube.get(api_version="batch/v1", kind="CronJob", name=name, namespace=namespace)
    kube.delete(api_version="batch/v1", kind="CronJob", name=name, namespace=namespace)

    def recreated() -> bool:
        found = kube.get(api_version="batch/v1", kind="CronJob", name=name, namespace=namespace)
        return found is not None and found["metadata"]["uid"] != old["metadata"]["uid"]

    wait_for(recreated, timeout_seconds=30, message=f"CronJob {name} to be recreated")


def test_edited_deployment_put_back(kube: Any, namespace: str, prefix: str) -> None:
    name = f"{NAME}-consumer-{prefix}-{SLOW_GROUP}"
    current = deployment(kube, namespace, name)
    current["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(kube._dynamic.client)
    dynamic.replace(dynamic.resources.get(api_version="apps/v1", kind="Deployment"), body=current, namespace=namespace)

    def image_restored() -> bool:
        containers = deployment(kube, namespace, name)["spec"]["template"]["spec"]["containers"]
        return bool(containers[0]["image"] == "mailpipe/mailpipe:test-2")

    wait_for(image_restored, timeout_seconds=30, message="the operator to restore the consumer image")


def _monitoring_crd(plural: str, kind: str) -> dict[str, Any]:
    """A minimal stand-in for the Prometheus operator's CRD: same group, kind and version."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.lower(), "kind": kind},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }],
        },
    }


def test_monitoring_objects_appear_with_their_crds(kube: Any, namespace: str) -> None:
    for plural, kind in (("servicemonitors", "ServiceMonitor"), ("prometheusrules", "PrometheusRule")):
        kube.apply(_monitoring_crd(plural, kind))

    def created() -> bool:
        kinds = ("ServiceMonitor", "PrometheusRule")
        try:
            found = [kube.get(api_version="monitoring.coreos.com/v1", kind=kind, name=NAME, namespace=namespace) for kind in kinds]
        except Exception:  # noqa: BLE001 - the API server may not serve the new kinds yet
            return False
        return all(item is not None for item in found)

    wait_for(created, timeout_seconds=3 * RESYNC_SECONDS + 30, message="ServiceMonitor and PrometheusRule to be created")
    monitor = kube.get(api_version="monitoring.coreos.com/v1", kind="ServiceMonitor", name=NAME, namespace=namespace)
    assert monitor["metadata"]["ownerReferences"][0]["kind"] == "EmailPipeline"


def test_deleted_queue_redeclared(broker: Any, prefix: str) -> None:
    queue = f"{prefix}-{FAST_GROUP}.retry.1"
    broker.delete_queue(queue)
    wait_for(lambda: broker.queue(queue), timeout_seconds=30, message=f"queue {queue} to be declared again")


def test_backlog_scales_consumers_up_then_down(kube: Any, namespace: str, broker: Any, prefix: str) -> None:
    queue = f"{prefix}-{FAST_GROUP}"
    name = f"{NAME}-consumer-{queue}"
    for index in range(TARGET_BACKLOG * MAX_CONSUMERS + 5):
        assert broker.publish(exchange="", routing_key=queue, payload=f"document-{index}")

    wait_for(lambda: deployment(kube, namespace, name)["spec"]["replicas"] == MAX_CONSUMERS, timeout_seconds=60,
             message=f"{name} to scale up to {MAX_CONSUMERS}")
    wait_for(lambda: events(kube, namespace, "Scaled"), message="a Scaled event")

    broker.get_messages(queue, count=TARGET_BACKLOG * MAX_CONSUMERS + 5, ackmode="ack_requeue_false")
    wait_for(lambda: deployment(kube, namespace, name)["spec"]["replicas"] == 1, timeout_seconds=60,
             message=f"{name} to scale back down to 1 after the cooldown")

    def group_status() -> dict[str, Any] | None:
        groups = ((read_pipeline(kube, namespace) or {}).get("status") or {}).get("groups") or []
        found = next((item for item in groups if item["name"] == queue), None)
        return found if found and found.get("consumers") == 1 else None

    # The status is written after the Deployment, at the end of the same pass.
    group = wait_for(group_status, timeout_seconds=30, message=f"the status of group {queue} to show 1 consumer")
    assert group["lastScaleReason"].endswith("needs only 1 consumers")
    assert group["backlog"] == 0


def test_paused_pipeline_left_alone(kube: Any, namespace: str) -> None:
    name = f"{NAME}-audit-dequeued"
    patch_spec(kube, namespace, {"paused": True})
    wait_for(lambda: condition(kube, namespace, "Ready").get("reason") == "Paused", message="Ready reason Paused")
    kube.delete(api_version="batch/v1", kind="CronJob", name=name, namespace=namespace)
    # Proving that something does not happen takes a time window. Three resync intervals are
    # enough for an unpaused operator to put the CronJob back, as the deletion test shows.
    deadline = time.monotonic() + 3 * RESYNC_SECONDS
    while time.monotonic() < deadline:
        assert kube.get(api_version="batch/v1", kind="CronJob", name=name, namespace=namespace) is None
        time.sleep(0.5)

    patch_spec(kube, namespace, {"paused": False})
    wait_for(lambda: kube.get(api_version="batch/v1", kind="CronJob", name=name, namespace=namespace),
             timeout_seconds=30, message=f"CronJob {name} to return after unpausing")
    wait_for(lambda: condition(kube, namespace, "Ready").get("status") == "True", message="Ready=True again")


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"groups": [{"name": "a", "minConsumers": 5, "maxConsumers": 2}]}, "spec.groups[0].minConsumers"),
        ({"populate": {"schedule": "61 * * * *"}}, "spec.populate.schedule"),
        ({"rabbitmq": {"replicas": 0}}, "spec.rabbitmq.replicas"),
        ({"groups": [{"name": "a"}, {"name": "a"}]}, "spec.groups[1]"),
        ({"groups": [{"name": "Bad_Name"}]}, "spec.groups[0].name"),
        ({"retry": {"initialDelaySeconds": 600, "maxDelaySeconds": 60}}, "spec.retry.initialDelaySeconds"),
        ({"groups": [{"name": "a", "scaling": {"mode": "sometimes"}}]}, "spec.groups[0].scaling.mode"),
    ],
)
def test_invalid_resource_rejected(kube: Any, crd_installed: None, namespace: str, spec: dict[str, Any], field: str) -> None:
    manifest = {
        "apiVersion": "mailpipe.io/v1alpha1",
        "kind": "EmailPipeline",
        "metadata": {"name": "invalid", "namespace": namespace},
        "spec": spec,
    }
    # A plain create, as `kubectl create` sends it: server-side apply fails earlier on duplicate
    # list keys, with a 500 instead of the validation message.
    with pytest.raises(Exception) as raised:
        kube.create_if_absent(manifest)
    assert raised.value.__cause__ is not None
    cause = raised.value.__cause__
    assert isinstance(cause, ApiException)
    assert cause.status == 422
    assert field in str(cause.body)


def test_deletion_held_while_queued_then_everything_goes(kube: Any, namespace: str, broker: Any, prefix: str) -> None:
    queue = f"{prefix}-{SLOW_GROUP}"
    assert broker.publish(exchange="", routing_key=queue, payload="still-queued")
    wait_for(lambda: (read_pipeline(kube, namespace) or {}).get("status", {}).get("backlog") == 1, timeout_seconds=30,
             message="the pipeline to report a backlog of 1")
    kube.delete(api_version="mailpipe.io/v1alpha1", kind="EmailPipeline", name=NAME, namespace=namespace)

    wait_for(lambda: events(kube, namespace, "DeletionBlocked"), timeout_seconds=30, message="a DeletionBlocked event")
    assert read_pipeline(kube, namespace) is not None

    broker.get_messages(queue, count=1, ackmode="ack_requeue_false")
    wait_for(lambda: read_pipeline(kube, namespace) is None, timeout_seconds=60, message="the pipeline to be deleted")
    wait_for(lambda: not owned_objects(kube, namespace), timeout_seconds=60,
             message="the garbage collector to delete every owned object")
