"""RabbitMQAdmin against the local RabbitMQ, each test session in a virtual host of its own,
plus the error translation against small HTTP servers started here on loopback."""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit, urlunsplit

import pytest

from mailpipe.adapters.rabbitmq_api import ManagementAPIError, RabbitMQAdmin
from mailpipe.config import Connections
from mailpipe.errors import ServiceUnavailableError

API_URL = Connections.from_environment(os.environ).rabbitmq_api_urls[0]


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = f"mailpipe-test-api-{uuid.uuid4().hex[:8]}"
    with RabbitMQAdmin(API_URL) as root:
        root.declare_vhost(name)
        yield name
        root.delete_vhost(name)


@pytest.fixture
def admin(vhost: str) -> Iterator[RabbitMQAdmin]:
    with RabbitMQAdmin(API_URL, vhost=vhost) as client:
        yield client


@pytest.fixture
def queue_name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.mark.services
class TestAgainstRabbitMQ:
    def test_nodes_are_listed_running(self, admin: RabbitMQAdmin) -> None:
        nodes = admin.nodes()

        assert nodes
        assert all(node["running"] for node in nodes)
        assert all(node["partitions"] == [] for node in nodes)

    def test_declared_quorum_queue_is_returned(self, admin: RabbitMQAdmin, queue_name: str) -> None:
        admin.declare_queue(queue_name, arguments={"x-queue-type": "quorum"})

        queue = admin.queue(queue_name)

        assert queue is not None
        assert queue["name"] == queue_name
        assert queue.get("type") == "quorum"
        assert queue["durable"] is True
        assert queue.get("members")
        assert queue_name in [listed["name"] for listed in admin.queues()]

    def test_declare_is_idempotent(self, admin: RabbitMQAdmin, queue_name: str) -> None:
        admin.declare_queue(queue_name, arguments={"x-queue-type": "classic"})
        admin.declare_queue(queue_name, arguments={"x-queue-type": "classic"})

        assert admin.queue(queue_name) is not None

    def test_declare_with_other_arguments_is_rejected(self, admin: RabbitMQAdmin, queue_name: str) -> None:
        admin.declare_queue(queue_name, arguments={"x-queue-type": "classic"})

        with pytest.raises(ManagementAPIError) as raised:
            admin.declare_queue(queue_name, arguments={"x-queue-type": "quorum"})

        assert raised.value.status_code == 400

    def test_missing_queue_is_none(self, admin: RabbitMQAdmin) -> None:
        assert admin.queue("no-such-queue") is None

    def test_delete_queue_removes_it(self, admin: RabbitMQAdmin, queue_name: str) -> None:
        admin.declare_queue(queue_name, arguments={})

        admin.delete_queue(queue_name)

        assert admin.queue(queue_name) is None

    def test_delete_missing_queue_succeeds(self, admin: RabbitMQAdmin) -> None:
        admin.delete_queue("no-such-queue")

    def test_publish_and_get_round_trip(self, admin: RabbitMQAdmin, queue_name: str) -> None:
        admin.declare_queue(queue_name, arguments={"x-queue-type": "classic"})

        routed = admin.publish(exchange="", routing_key=queue_name, payload="héllo wörld")
        messages = admin.get_messages(queue_name, count=5)

        assert routed is True
        assert [message["payload"] for message in messages] == ["héllo wörld"]
        assert messages[0]["routing_key"] == queue_name
        assert admin.get_messages(queue_name, count=5) == []

    def test_get_with_requeue_keeps_message(self, admin: RabbitMQAdmin, queue_name: str) -> None:
        admin.declare_queue(queue_name, arguments={"x-queue-type": "classic"})
        admin.publish(exchange="", routing_key=queue_name, payload="kept")

        first = admin.get_messages(queue_name, ackmode="ack_requeue_true")
        second = admin.get_messages(queue_name)

        assert [message["payload"] for message in first] == ["kept"]
        assert [message["payload"] for message in second] == ["kept"]
        assert second[0]["redelivered"] is True

    def test_publish_to_missing_queue_is_not_routed(self, admin: RabbitMQAdmin) -> None:
        assert admin.publish(exchange="", routing_key="no-such-queue", payload="lost") is False

    def test_policy_is_stored(self, admin: RabbitMQAdmin) -> None:
        admin.put_policy("test-limit", pattern="^limited$", definition={"delivery-limit": 7}, priority=3)

        policies = {policy["name"]: policy for policy in admin.policies()}

        assert policies["test-limit"]["pattern"] == "^limited$"
        assert policies["test-limit"]["definition"] == {"delivery-limit": 7}
        assert policies["test-limit"]["apply-to"] == "queues"
        assert policies["test-limit"]["priority"] == 3

    def test_exchanges_include_default(self, admin: RabbitMQAdmin) -> None:
        names = {exchange["name"] for exchange in admin.exchanges()}

        assert "" in names
        assert "amq.direct" in names

    def test_channels_of_new_vhost_are_empty(self, admin: RabbitMQAdmin) -> None:
        assert admin.channels() == []

    def test_wrong_password_is_rejected(self, vhost: str) -> None:
        with RabbitMQAdmin(_with_password(API_URL, "wrong-secret"), vhost=vhost) as client:
            with pytest.raises(ManagementAPIError) as raised:
                client.nodes()

        assert raised.value.status_code == 401
        assert "wrong-secret" not in str(raised.value)


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username or 'guest'}:{password}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class TestErrorTranslation:
    def test_refused_connection_is_unavailable(self) -> None:
        with RabbitMQAdmin(f"http://guest:top-secret@127.0.0.1:{_free_port()}") as client:
            with pytest.raises(ServiceUnavailableError) as raised:
                client.nodes()

        assert "unreachable" in str(raised.value)
        assert "top-secret" not in str(raised.value)

    def test_silent_server_times_out(self) -> None:
        with socket.socket() as listener:
            # The kernel completes the handshake from the backlog, and the test never accepts or replies.
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            url = f"http://guest:top-secret@127.0.0.1:{listener.getsockname()[1]}"
            with RabbitMQAdmin(url, timeout_seconds=0.3) as client:
                with pytest.raises(ServiceUnavailableError) as raised:
                    client.nodes()

        assert "timed out" in str(raised.value)
        assert "top-secret" not in str(raised.value)

    def test_server_error_is_unavailable(self) -> None:
        with LoopbackHTTPServer(status=503, body=b'{"error":"busy"}') as url:
            with RabbitMQAdmin(url) as client:
                with pytest.raises(ServiceUnavailableError) as raised:
                    client.queues()

        assert "503" in str(raised.value)

    def test_non_json_body_is_unavailable(self) -> None:
        with LoopbackHTTPServer(status=200, body=b"<html>proxy</html>") as url:
            with RabbitMQAdmin(url) as client:
                with pytest.raises(ServiceUnavailableError):
                    client.queues()

    def test_display_url_hides_password(self) -> None:
        client = RabbitMQAdmin("http://guest:top-secret@127.0.0.1:15673")

        assert "top-secret" not in client.display_url
        assert "127.0.0.1:15673" in client.display_url


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopbackHTTPServer:
    """A one-response HTTP server on loopback, for status codes RabbitMQ will not produce on demand."""

    def __init__(self, *, status: int, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
