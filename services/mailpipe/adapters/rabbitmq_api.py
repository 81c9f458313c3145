"""Client of RabbitMQ's management HTTP API, used by the healthcheck and by the operator.

This is the only module that talks HTTP to RabbitMQ. It returns the API's JSON payloads as
TypedDicts and translates transport failures and server faults into `ServiceUnavailableError`,
so callers never see a `requests` exception. The base URL may carry `user:password`; they are
sent as HTTP basic auth and never appear in logs or error messages.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, NotRequired, TypedDict, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import requests

from mailpipe.config import redact_url
from mailpipe.errors import MailpipeError, ServiceUnavailableError

log = logging.getLogger(__name__)

# The management API names the default exchange (whose name is empty) this way in URLs.
DEFAULT_EXCHANGE_PATH_NAME = "amq.default"

AckMode = Literal["ack_requeue_false", "ack_requeue_true", "reject_requeue_false", "reject_requeue_true"]


class NodeInfo(TypedDict):
    """One entry of GET /api/nodes (only the fields Mailpipe reads)."""

    name: str
    running: bool
    partitions: list[str]
    type: NotRequired[str]


class QueueInfo(TypedDict):
    """One entry of GET /api/queues/VHOST.

    Message counts are missing until the broker has emitted the queue's first statistics, which
    it does every 5 seconds by default. Only quorum queues have `members`, `online` and `leader`.
    """

    name: str
    vhost: str
    durable: bool
    arguments: dict[str, Any]
    type: NotRequired[str]
    messages: NotRequired[int]
    messages_ready: NotRequired[int]
    messages_unacknowledged: NotRequired[int]
    consumers: NotRequired[int]
    node: NotRequired[str]
    members: NotRequired[list[str]]
    online: NotRequired[list[str]]
    leader: NotRequired[str]


class ExchangeInfo(TypedDict):
    """One entry of GET /api/exchanges/VHOST; the default exchange has the empty name."""

    name: str
    vhost: str
    type: str
    durable: bool


class ChannelInfo(TypedDict):
    """One entry of GET /api/vhosts/VHOST/channels."""

    name: str
    vhost: str
    consumer_count: NotRequired[int]
    node: NotRequired[str]


PolicyInfo = TypedDict(
    "PolicyInfo",
    {
        "name": str,
        "vhost": str,
        "pattern": str,
        "apply-to": str,
        "definition": dict[str, Any],
        "priority": int,
    },
)


class FetchedMessage(TypedDict):
    """One message returned by POST /api/queues/VHOST/NAME/get."""

    payload: str
    payload_encoding: str
    payload_bytes: int
    routing_key: str
    exchange: str
    redelivered: bool
    message_count: int
    properties: dict[str, Any]


class ManagementAPIError(MailpipeError):
    """The management API rejected a request (a 4xx status): bad credentials, missing
    permissions, or arguments that conflict with an existing object. Retrying cannot help."""

    def __init__(self, message: str, *, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class RabbitMQAdmin:
    """One node's management API, scoped to one virtual host."""

    def __init__(self, base_url: str, *, timeout_seconds: float = 10.0, vhost: str = "/") -> None:
        parts = urlsplit(base_url)
        netloc = parts.hostname or ""
        if parts.port is not None:
            netloc = f"{netloc}:{parts.port}"
        self._api_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/api", "", ""))
        self._timeout_seconds = timeout_seconds
        self._vhost_path = quote(vhost, safe="")
        self._session = requests.Session()
        if parts.username is not None:
            self._session.auth = (unquote(parts.username), unquote(parts.password or ""))
        self.vhost = vhost
        self.display_url = redact_url(base_url)

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RabbitMQAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Reading

    def nodes(self) -> list[NodeInfo]:
        return cast(list[NodeInfo], self._request("GET", "/nodes"))

    def queues(self) -> list[QueueInfo]:
        return cast(list[QueueInfo], self._request("GET", f"/queues/{self._vhost_path}"))

    def queue(self, name: str) -> QueueInfo | None:
        """Return the queue `name`, or None when it does not exist."""
        return cast(QueueInfo | None, self._request("GET", self._queue_path(name), not_found_ok=True))

    def exchanges(self) -> list[ExchangeInfo]:
        return cast(list[ExchangeInfo], self._request("GET", f"/exchanges/{self._vhost_path}"))

    def channels(self) -> list[ChannelInfo]:
        return cast(list[ChannelInfo], self._request("GET", f"/vhosts/{self._vhost_path}/channels"))

    def policies(self) -> list[PolicyInfo]:
        return cast(list[PolicyInfo], self._request("GET", f"/policies/{self._vhost_path}"))

    # Changing

    def declare_queue(self, name: str, *, arguments: dict[str, Any], durable: bool = True) -> None:
        """Create the queue, or do nothing when an equivalent one exists.

        Raises ManagementAPIError (status 400) when a queue of that name exists with other
        arguments, because RabbitMQ cannot change a queue's arguments in place.
        """
        body = {"durable": durable, "auto_delete": False, "arguments": arguments}
        self._request("PUT", self._queue_path(name), json=body)

    def delete_queue(self, name: str) -> None:
        """Delete the queue and its messages; a queue that does not exist is already deleted."""
        self._request("DELETE", self._queue_path(name), not_found_ok=True)

    def put_policy(
        self,
        name: str,
        *,
        pattern: str,
        definition: dict[str, Any],
        apply_to: str = "queues",
        priority: int = 0,
    ) -> None:
        """Create or replace the policy `name` in this virtual host."""
        body = {"pattern": pattern, "definition": definition, "apply-to": apply_to, "priority": priority}
        self._request("PUT", f"/policies/{self._vhost_path}/{quote(name, safe='')}", json=body)

    def publish(self, *, exchange: str, routing_key: str, payload: str) -> bool:
        """Publish one persistent message; return whether any queue received it."""
        exchange_name = exchange or DEFAULT_EXCHANGE_PATH_NAME
        body = {
            "properties": {"delivery_mode": 2},
            "routing_key": routing_key,
            "payload": payload,
            "payload_encoding": "string",
        }
        path = f"/exchanges/{self._vhost_path}/{quote(exchange_name, safe='')}/publish"
        result = self._request("POST", path, json=body)
        return bool(result["routed"])

    def get_messages(
        self, queue: str, *, count: int = 1, ackmode: AckMode = "ack_requeue_false"
    ) -> list[FetchedMessage]:
        """Fetch up to `count` messages; the default ackmode removes them from the queue.

        The management API documents this call as a diagnostic tool, not a way to consume in
        production, which is what the healthcheck's canary uses it for.
        """
        body = {"count": count, "ackmode": ackmode, "encoding": "auto"}
        return cast(list[FetchedMessage], self._request("POST", f"{self._queue_path(queue)}/get", json=body))

    # Virtual hosts, for tests and for the operator's set-up.

    def declare_vhost(self, name: str) -> None:
        """Create the virtual host; the API grants the requesting user full permissions on it."""
        self._request("PUT", f"/vhosts/{quote(name, safe='')}")

    def delete_vhost(self, name: str) -> None:
        self._request("DELETE", f"/vhosts/{quote(name, safe='')}", not_found_ok=True)

    # Transport

    def _queue_path(self, name: str) -> str:
        return f"/queues/{self._vhost_path}/{quote(name, safe='')}"

    def _request(self, method: str, path: str, *, json: Any = None, not_found_ok: bool = False) -> Any:
        """Send one request and return its decoded JSON body (None for an empty body).

        With `not_found_ok`, a 404 returns None instead of raising.
        """
        request_line = f"{method} {path} on {self.display_url}"
        try:
            response = self._session.request(method, self._api_url + path, json=json, timeout=self._timeout_seconds)
        except requests.Timeout as error:
            # A slow node is treated like an absent one: the caller may try again later.
            raise ServiceUnavailableError(
                f"RabbitMQ management API timed out after {self._timeout_seconds} s: {request_line}"
            ) from error
        except requests.RequestException as error:
            # Refused or reset connections, DNS failures: the node or its API is down.
            raise ServiceUnavailableError(f"RabbitMQ management API unreachable: {request_line}: {error}") from error

        if response.status_code == 404 and not_found_ok:
            return None
        if response.status_code >= 500:
            raise ServiceUnavailableError(
                f"RabbitMQ management API failed with status {response.status_code}: {request_line}: {response.text[:200]}"
            )
        if response.status_code >= 400:
            raise ManagementAPIError(
                f"RabbitMQ management API rejected {request_line} with status {response.status_code}: "
                f"{response.text[:200]}",
                status_code=response.status_code,
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as error:
            # A proxy's HTML error page rather than the API: treat the node as unavailable.
            raise ServiceUnavailableError(f"RabbitMQ management API returned a body that is not JSON: {request_line}") from error
