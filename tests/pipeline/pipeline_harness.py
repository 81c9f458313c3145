"""The pipeline tests' harness: runs the real roles against the local servers, plus SMTP servers for checks.

`smtp_sink` is Postfix's smtp-sink dumping every accepted message to files. `FaultySmtpServer`
is an aiosmtpd server for the faults smtp-sink cannot produce per attempt (fail the first k
attempts, 421 after n messages, no SMTPUTF8, a 550 for one recipient).
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP
from aiosmtpd.smtp import Envelope, Session

from mailpipe.adapters.mongo import MailStore
from mailpipe.adapters.mysql import ApplicationDatabase
from mailpipe.adapters.rabbitmq import QueueClient
from mailpipe.adapters.smtp import SmtpTransport
from mailpipe.config import ENVIRONMENT_DEFAULTS, Config, Connections, EmailGroup, PipelineSpec, RetryPolicy
from mailpipe.roles.consume import Consumer
from mailpipe.roles.populate import populate
from mailpipe.roles.publish import PublishResult, publish_group
from mailpipe.topology import group_queues

FINAL_STATUSES = ("sent", "dequeued")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class SinkServer:
    url: str
    dump_directory: Path

    def messages(self) -> list[email.message.EmailMessage]:
        """Parse every dumped message (smtp-sink's X- records come first, then the message)."""
        parsed = []
        for path in sorted(self.dump_directory.rglob("*")):
            if path.is_file():
                raw = path.read_bytes()
                parsed.append(email.message_from_bytes(raw, policy=email.policy.default))
        return parsed  # type: ignore[return-value]


@pytest.fixture
def smtp_sink() -> Iterator[SinkServer]:
    if shutil.which("smtp-sink") is None:
        pytest.fail("smtp-sink is missing; `make services` installs Debian's postfix package")
    directory = Path(tempfile.mkdtemp(prefix="mailpipe-sink-"))
    directory.chmod(0o777)  # smtp-sink writes as the unprivileged user it switches to
    port = free_port()
    user = "nobody" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    process = subprocess.Popen(
        ["smtp-sink", "-u", user, "-8", "-d", f"{directory}/%H%M%S.", f"127.0.0.1:{port}", "64"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(lambda: _port_open(port), timeout=10, what=f"smtp-sink on port {port}")
    yield SinkServer(url=f"smtp://127.0.0.1:{port}", dump_directory=directory)
    process.terminate()
    process.wait(timeout=10)
    shutil.rmtree(directory, ignore_errors=True)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


class _FaultyHandler:
    def __init__(self, server: FaultySmtpServer) -> None:
        self.server = server

    async def handle_MAIL(self, server: AioSMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        owner = self.server
        count = owner.messages_per_connection.get(id(session), 0)
        if owner.close_after is not None and count >= owner.close_after:
            return "421 4.7.0 Too many messages on this connection, closing"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(self, server: AioSMTP, session: Session, envelope: Envelope, address: str, options: list[str]) -> str:
        if address in self.server.reject_permanently:
            return "550 5.1.1 Mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: AioSMTP, session: Session, envelope: Envelope) -> str:
        owner = self.server
        recipient = envelope.rcpt_tos[0]
        with owner.lock:
            seen = owner.attempts.get(recipient, 0) + 1
            owner.attempts[recipient] = seen
            if seen <= owner.fail_first:
                return "451 4.3.0 Temporary failure, try again later"
            owner.messages_per_connection[id(session)] = owner.messages_per_connection.get(id(session), 0) + 1
            owner.accepted.append((recipient, bytes(envelope.original_content or b""), list(envelope.mail_options)))
        return "250 2.0.0 Accepted"


@dataclass
class FaultySmtpServer:
    """An aiosmtpd server with per-recipient fault injection."""

    fail_first: int = 0  # the first k DATA attempts of each recipient get 451
    close_after: int | None = None  # 421 on MAIL once a connection carried this many messages
    smtputf8: bool = True
    reject_permanently: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    accepted: list[tuple[str, bytes, list[str]]] = field(default_factory=list)
    messages_per_connection: dict[int, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    @property
    def url(self) -> str:
        assert self.controller is not None
        return f"smtp://127.0.0.1:{self.controller.port}"

    def start(self) -> None:
        self.controller = Controller(
            _FaultyHandler(self), hostname="127.0.0.1", port=free_port(),
            enable_SMTPUTF8=self.smtputf8, decode_data=False,
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()


@pytest.fixture
def faulty_smtp() -> Iterator[Callable[..., FaultySmtpServer]]:
    servers: list[FaultySmtpServer] = []

    def start(**options: Any) -> FaultySmtpServer:
        server = FaultySmtpServer(**options)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@dataclass
class Harness:
    """The application database, the store and the roles, wired to one test's databases."""

    config: Config
    database: ApplicationDatabase
    store: MailStore
    group: str
    urgent_group: str

    def with_smtp(self, url: str) -> Harness:
        connections = self.config.connections.model_copy(update={"smtp_url": url})
        return Harness(self.config.model_copy(update={"connections": connections}), self.database, self.store,
                       self.group, self.urgent_group)

    def with_batch_size(self, size: int) -> Harness:
        groups = [group.model_copy(update={"batch_size": size}) for group in self.config.spec.groups]
        spec = self.config.spec.model_copy(update={"groups": groups})
        return Harness(self.config.model_copy(update={"spec": spec}), self.database, self.store,
                       self.group, self.urgent_group)

    def add_template(self, *, subject: str, text: str, html: str | None = None) -> int:
        name = f"t{uuid.uuid4().hex[:8]}"
        self.database.execute(
            "INSERT INTO templates (name, subject, body_text, body_html) VALUES (%s, %s, %s, %s)", (name, subject, text, html)
        )
        return int(self.database.query("SELECT id FROM templates WHERE name = %s", (name,))[0]["id"])

    def add_users(self, rows: list[dict[str, Any]]) -> list[int]:
        ids = []
        for row in rows:
            self.database.execute(
                "INSERT INTO users (email, first_name, last_name, locale, unsubscribed_at, bounced_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (row["email"], row.get("first_name", "Ada"), row.get("last_name", "Lovelace"), row.get("locale", "en_US"),
                 row.get("unsubscribed_at"), row.get("bounced_at")),
            )
            ids.append(int(self.database.query("SELECT LAST_INSERT_ID() AS id")[0]["id"]))
        return ids

    def add_campaign(self, template_id: int, *, group: str | None = None, audience: str = "all") -> int:
        self.database.execute(
            "INSERT INTO campaigns (name, template_id, email_group, audience, due_at) VALUES (%s, %s, %s, %s, %s)",
            ("test campaign", template_id, group or self.group, audience, datetime.now(UTC).replace(tzinfo=None)),
        )
        return int(self.database.query("SELECT LAST_INSERT_ID() AS id")[0]["id"])

    def populate(self) -> None:
        populate(source=self.database, sink=self.store, spec=self.config.spec)

    def publish(self, group: str | None = None, *, queue: Any = None, store: Any = None) -> PublishResult:
        own_queue = queue is None
        client = queue or QueueClient(self.config.connections.rabbitmq_url)
        try:
            name = group or self.group
            client.declare(group_queues(name, spec=self.config.spec))
            return publish_group(name, lookups=self.database, store=store or self.store, queue=client,
                                 spec=self.config.spec)
        finally:
            if own_queue:
                client.close()

    def consume(self, group: str | None = None, *, timeout: float = 60.0, queue: QueueClient | None = None,
                stop_when_final: bool = True, transport: Any = None, grace_seconds: float | None = None,
                stop_after_seconds: float | None = None, store: Any = None) -> Consumer:
        """Consume until every email is sent or dequeued, or until the queue went idle when `stop_when_final` is false."""
        name = group or self.group
        client = queue or QueueClient(self.config.connections.rabbitmq_url)
        transport = transport or SmtpTransport(
            self.config.connections.smtp_url, timeout_seconds=self.config.spec.smtp.timeout_seconds
        )
        consumer = Consumer(name, spec=self.config.spec, store=store or self.store, queue=client, transport=transport,
                            name=f"test-{uuid.uuid4().hex[:6]}")
        if grace_seconds is not None:
            consumer.in_flight_grace = timedelta(seconds=grace_seconds)
        started = time.monotonic()
        deadline = started + timeout
        last_check = 0.0

        def should_stop() -> bool:
            nonlocal last_check
            if stop_after_seconds is not None:
                return time.monotonic() - started > stop_after_seconds
            if time.monotonic() > deadline:
                raise AssertionError(f"emails of group {name} not final after {timeout:g} s: {self.statuses()}")
            if not stop_when_final or time.monotonic() - last_check < 0.3:
                return False
            last_check = time.monotonic()
            return self.all_final(name)

        try:
            consumer.run(should_stop=should_stop, idle_exit_seconds=None if stop_when_final else 1.0)
        finally:
            client.close()
        return consumer

    def statuses(self) -> dict[str, int]:
        return self.store.count_by_status()

    def all_final(self, group: str) -> bool:
        counts = self.store.count_by_status(group)
        return bool(counts) and all(status in FINAL_STATUSES for status in counts)

    def document(self, email_id: str) -> dict[str, Any]:
        found = self.store.emails.find_one({"_id": email_id})
        assert found is not None, f"no cron_emails document {email_id}"
        return found

    def dequeued(self) -> dict[str, dict[str, Any]]:
        return {document["_id"]: document for document in self.store.dequeued.find({})}


@pytest.fixture
def harness(mysql_url: str, mongodb_url: str, unique_name: str) -> Iterator[Harness]:
    group = f"{unique_name}-news"
    urgent = f"{unique_name}-urgent"
    spec = PipelineSpec(
        groups=[EmailGroup(name=group, prefetch=50), EmailGroup(name=urgent, prefetch=10)],
        retry=RetryPolicy(max_attempts=5, initial_delay_seconds=0.2, multiplier=1.5, max_delay_seconds=1.0),
    ).model_copy(update={"smtp": PipelineSpec().smtp.model_copy(update={"timeout_seconds": 5.0})})
    connections = Connections.from_environment({**ENVIRONMENT_DEFAULTS, "MAILPIPE_MYSQL_URL": mysql_url,
                                                "MAILPIPE_MONGODB_URL": mongodb_url})
    database = ApplicationDatabase(mysql_url)
    database.apply_schema()
    store = MailStore(mongodb_url)
    yield Harness(Config(spec=spec, connections=connections), database, store, group, urgent)
    cleanup = QueueClient(connections.rabbitmq_url)
    channel = cleanup._channel  # noqa: SLF001 - tests remove their own queues
    for name in (group, urgent):
        for queue in group_queues(name, spec=spec):
            channel.queue_delete(queue.name)
    cleanup.close()
    database.close()
    store.close()
