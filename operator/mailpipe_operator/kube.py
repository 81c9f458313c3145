"""The operator's one Kubernetes client: apply, read, create once and delete any object.

Objects are applied with server-side apply under one field manager, so an unchanged manifest
changes nothing on the server and a field edited by hand is put back. "Already exists" on create
and "not found" on delete are the outcomes the caller expects, so they are not errors here.
The kubernetes package ships no type hints, hence the `no-untyped-call` ignores below.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Any, cast

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.resource import Resource

from mailpipe_operator.builders.meta import MANAGER, Manifest

CONFLICT = 409
NOT_FOUND = 404


class KubernetesError(Exception):
    """An API request failed for a reason other than the idempotent ones."""

    def __init__(self, message: str, *, status: int | None) -> None:
        super().__init__(message)
        self.status = status


def load_api_client() -> client.ApiClient:
    """Build an API client from the in-cluster service account, or else from the kubeconfig."""
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        # Not running in a pod: development and tests use $KUBECONFIG or ~/.kube/config. The
        # variable is read here because the library reads it only once, when it is imported.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
    return client.ApiClient()


def _describe(manifest: Manifest) -> str:
    meta = manifest.get("metadata", {})
    return f"{manifest.get('kind')} {meta.get('namespace', '')}/{meta.get('name')}"


def _error(action: str, subject: str, error: ApiException) -> KubernetesError:
    return KubernetesError(f"{action} {subject} failed: {error.status} {error.reason}", status=error.status)


class KubernetesClient:
    def __init__(self, api_client: client.ApiClient) -> None:
        # A discovery cache of this process's own: the library's default file is shared by every
        # process that talks to the same server address, and goes stale when CRDs come and go.
        cache_file = os.path.join(tempfile.mkdtemp(prefix="mailpipe-operator-"), "discovery.json")
        self._dynamic = DynamicClient(api_client, cache_file=cache_file)  # type: ignore[no-untyped-call]

    def _resource(self, api_version: str, kind: str) -> Resource:
        resource: Resource = self._dynamic.resources.get(api_version=api_version, kind=kind)
        return resource

    def kind_exists(self, *, api_version: str, kind: str) -> bool:
        """Return whether the API server serves `kind` now (a CRD such as ServiceMonitor may be absent).

        Asks the server's discovery endpoint each time instead of a cache, because a CRD can be
        installed or removed while the operator runs.
        """
        path = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            response = self._dynamic.request("GET", path)
        except ApiException as error:
            if error.status == 404:
                # The whole API group is absent.
                return False
            raise _error("discovering", api_version, error) from error
        listing = response.to_dict()
        resources = listing.get("resources", []) if isinstance(listing, dict) else []
        return any(resource.get("kind") == kind for resource in resources)

    def apply(self, manifest: Manifest) -> Manifest:
        """Apply `manifest` with server-side apply, taking over fields that someone else changed."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            result = self._dynamic.server_side_apply(  # type: ignore[no-untyped-call]
                resource,
                body=manifest,
                namespace=manifest["metadata"].get("namespace"),
                field_manager=MANAGER,
                force_conflicts=True,
            )
        except ApiException as error:
            raise _error("applying", _describe(manifest), error) from error
        return cast(Manifest, result.to_dict())

    def create_if_absent(self, manifest: Manifest) -> bool:
        """Create `manifest` unless an object of that name exists; return whether it was created."""
        resource = self._resource(manifest["apiVersion"], manifest["kind"])
        try:
            self._dynamic.create(resource, body=manifest, namespace=manifest["metadata"].get("namespace"))  # type: ignore[no-untyped-call]
        except ApiException as error:
            if error.status == CONFLICT:
                # Someone (usually an earlier pass of this operator) created it: keep theirs.
                return False
            raise _error("creating", _describe(manifest), error) from error
        return True

    def get(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> Manifest | None:
        resource = self._resource(api_version, kind)
        try:
            result = self._dynamic.get(resource, name=name, namespace=namespace)  # type: ignore[no-untyped-call]
        except ApiException as error:
            if error.status == NOT_FOUND:
                # A missing object is a valid result, not a failure, because the caller creates or skips it.
                return None
            raise _error("reading", f"{kind} {namespace}/{name}", error) from error
        return cast(Manifest, result.to_dict())

    def delete(self, *, api_version: str, kind: str, name: str, namespace: str | None) -> bool:
        """Delete an object; return False when it was already gone."""
        resource = self._resource(api_version, kind)
        try:
            self._dynamic.delete(resource, name=name, namespace=namespace)  # type: ignore[no-untyped-call]
        except ApiException as error:
            if error.status == NOT_FOUND:
                # Already deleted, which is what the caller asked for.
                return False
            raise _error("deleting", f"{kind} {namespace}/{name}", error) from error
        return True

    def list(self, *, api_version: str, kind: str, namespace: str, label_selector: str) -> list[Manifest]:
        resource = self._resource(api_version, kind)
        try:
            result = self._dynamic.get(resource, namespace=namespace, label_selector=label_selector)  # type: ignore[no-untyped-call]
        except ApiException as error:
            raise _error("listing", f"{kind} in {namespace}", error) from error
        return [cast(Manifest, item) for item in result.to_dict().get("items", [])]

    def read_secret_value(self, *, name: str, key: str, namespace: str) -> str | None:
        """Return one decoded value of a Secret, or None when the Secret or the key is missing."""
        secret = self.get(api_version="v1", kind="Secret", name=name, namespace=namespace)
        encoded = ((secret or {}).get("data") or {}).get(key)
        if encoded is None:
            return None
        return base64.b64decode(encoded).decode("utf-8")

