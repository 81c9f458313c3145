"""Fixtures for the operator's cluster tests: the local control plane from scripts/cluster.sh,
the CRD, a namespace and a RabbitMQ virtual host of their own, and the operator under KopfRunner.

The operator runs in this process, outside the cluster, so it reaches the local RabbitMQ's
management API through MAILPIPE_OPERATOR_RABBITMQ_API_URL; each test module's pipeline uses its
own virtual host, so its queues and policy never touch anyone else's.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from mailpipe.config import ENVIRONMENT_DEFAULTS  # noqa: E402
from operator_helpers import wait_for  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[2]
KUBECONFIG = REPOSITORY / ".run" / "cluster" / "kubeconfig"
CRD_FILE = REPOSITORY / "crds" / "emailpipelines.mailpipe.io.yaml"
BROKER_API_URL = ENVIRONMENT_DEFAULTS["MAILPIPE_RABBITMQ_API_URLS"].split(",")[0]
RESYNC_SECONDS = "2"

# The handlers read these when they are imported, which happens when KopfRunner starts.
os.environ.setdefault("MAILPIPE_OPERATOR_RESYNC_SECONDS", RESYNC_SECONDS)
os.environ.setdefault("MAILPIPE_OPERATOR_RABBITMQ_API_URL", BROKER_API_URL)


@pytest.fixture(scope="session")
def api_client() -> Any:
    if not KUBECONFIG.exists():
        pytest.skip(f"{KUBECONFIG} is missing; start the control plane with `make cluster`")
    from kubernetes import client, config
    from kubernetes.config import kube_config

    # Point this process, kopf's login included, at the local cluster only. The client library
    # reads $KUBECONFIG once at import, so its default location is set as well.
    os.environ["KUBECONFIG"] = str(KUBECONFIG)
    kube_config.KUBE_CONFIG_DEFAULT_LOCATION = str(KUBECONFIG)
    config.load_kube_config(config_file=str(KUBECONFIG))
    api = client.ApiClient()
    try:
        client.VersionApi(api).get_code()
    except Exception as error:  # noqa: BLE001
        # Any failure here means the same thing: the control plane is not up.
        pytest.skip(f"the local control plane does not answer ({error}); start it with `make cluster`")
    return api


@pytest.fixture(scope="session")
def kube(api_client: Any) -> Any:
    from mailpipe_operator.kube import KubernetesClient

    return KubernetesClient(api_client)


@pytest.fixture(scope="session")
def crd_installed(kube: Any) -> None:
    kube.apply(yaml.safe_load(CRD_FILE.read_text()))

    def established() -> bool:
        found = kube.get(
            api_version="apiextensions.k8s.io/v1",
            kind="CustomResourceDefinition",
            name="emailpipelines.mailpipe.io",
            namespace=None,
        )
        conditions = ((found or {}).get("status") or {}).get("conditions") or []
        return any(item["type"] == "Established" and item["status"] == "True" for item in conditions)

    wait_for(established, timeout_seconds=30, message="the EmailPipeline CRD to be established")
    # The served schema may lag the Established condition by a moment after an update.
    wait_for(lambda: kube.kind_exists(api_version="mailpipe.io/v1alpha1", kind="EmailPipeline"),
             timeout_seconds=30, message="the EmailPipeline kind to be served")


@pytest.fixture(scope="module")
def namespace(kube: Any) -> Iterator[str]:
    name = f"mp-op-{uuid.uuid4().hex[:8]}"
    kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    release_pipelines(kube, name)
    kube.delete(api_version="v1", kind="Namespace", name=name, namespace=None)


def release_pipelines(kube: Any, namespace: str) -> None:
    """Drop the finalizers of pipelines left behind by a failed test; with the operator stopped,
    nothing else would, and the namespace would stay Terminating."""
    from kubernetes.dynamic import DynamicClient

    dynamic = DynamicClient(kube._dynamic.client)
    resource = dynamic.resources.get(api_version="mailpipe.io/v1alpha1", kind="EmailPipeline")
    for item in dynamic.get(resource, namespace=namespace).items:
        dynamic.patch(
            resource,
            name=item.metadata.name,
            namespace=namespace,
            body={"metadata": {"finalizers": []}},
            content_type="application/merge-patch+json",
        )


@pytest.fixture(scope="module")
def broker_vhost() -> Iterator[str]:
    from mailpipe.adapters.rabbitmq_api import RabbitMQAdmin

    name = f"mp-op-{uuid.uuid4().hex[:8]}"
    with RabbitMQAdmin(BROKER_API_URL) as admin:
        admin.declare_vhost(name)
    yield name
    with RabbitMQAdmin(BROKER_API_URL) as admin:
        admin.delete_vhost(name)


@pytest.fixture(scope="module")
def broker(broker_vhost: str) -> Iterator[Any]:
    from mailpipe.adapters.rabbitmq_api import RabbitMQAdmin

    with RabbitMQAdmin(BROKER_API_URL, vhost=broker_vhost) as admin:
        yield admin


@pytest.fixture(scope="module")
def operator(crd_installed: None, volumes_available: None, namespace: str) -> Iterator[Any]:
    from kopf.testing import KopfRunner

    arguments = ["run", "--standalone", "--namespace", namespace, "-m", "mailpipe_operator.handlers"]
    with KopfRunner(arguments, timeout=60) as runner:
        yield runner
    assert runner.exception is None, runner.exception


@pytest.fixture(scope="session")
def volumes_available(api_client: Any) -> None:
    """Make volumes that earlier runs left Released bindable again, as `cluster.sh start` does."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    for volume in core.list_persistent_volume().items:
        if volume.status.phase == "Released":
            core.patch_persistent_volume(volume.metadata.name, [{"op": "remove", "path": "/spec/claimRef"}])
