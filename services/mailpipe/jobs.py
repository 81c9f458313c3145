"""The composition root: builds the real adapters from a Config and runs one role with them.

Roles never open connections themselves; these functions do, and close them when the role ends.
The CLI and the local supervisor (`run`) call them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType

from mailpipe import metrics
from mailpipe.adapters.mongo import MailStore
from mailpipe.adapters.mysql import ApplicationDatabase
from mailpipe.adapters.rabbitmq import QueueClient
from mailpipe.adapters.rabbitmq_publisher import PipelinedPublisher
from mailpipe.adapters.smtp import SmtpTransport
from mailpipe.config import Config
from mailpipe.roles.consume import ConsumeResult, Consumer
from mailpipe.roles.populate import PopulateResult, populate
from mailpipe.roles.publish import PublishResult, publish_group
from mailpipe.topology import CANARY_QUEUE, all_queues, group_queues

log = logging.getLogger(__name__)


def run_populate(config: Config, *, sources: tuple[str, ...] = ("outbox", "campaigns")) -> PopulateResult:
    database = ApplicationDatabase(config.connections.mysql_url)
    store = MailStore(config.connections.mongodb_url)
    try:
        store.ensure_indexes()
        result = populate(source=database, sink=store, spec=config.spec, sources=sources)
    finally:
        database.close()
        store.close()
    metrics.JOB_LAST_SUCCESS.labels(job="populate").set_to_current_time()
    log.info("populate finished: %s", dict(result.counts) or "nothing new")
    return result


def run_publish(config: Config, *, groups: Sequence[str] | None = None, max_chunks: int | None = None) -> dict[str, PublishResult]:
    names = list(groups) if groups else [group.name for group in config.spec.groups]
    for name in names:
        config.spec.group(name)  # fail early, naming the configured groups
    database = ApplicationDatabase(config.connections.mysql_url)
    store = MailStore(config.connections.mongodb_url)
    queue = QueueClient(config.connections.rabbitmq_url, name=f"mailpipe-publish-{socket.gethostname()}")
    results: dict[str, PublishResult] = {}
    publisher: PipelinedPublisher | None = None
    try:
        publisher = PipelinedPublisher(config.connections.rabbitmq_url, name=f"mailpipe-publish-{socket.gethostname()}")
        # The healthcheck's canary queue is part of the topology; declaring it here means a local
        # pipeline has it without the operator, and a deleted one is still reported as missing.
        queue.declare([definition for definition in all_queues(config.spec) if definition.name == CANARY_QUEUE])
        for name in names:
            queue.declare(group_queues(name, spec=config.spec))
            results[name] = publish_group(
                name, lookups=database, store=store, queue=publisher, spec=config.spec, max_chunks=max_chunks
            )
            log.info(
                "publish: group %s: %d queued, %d failed, %d republished from unfinished batches",
                name, results[name].queued, results[name].failed, results[name].republished,
            )
    finally:
        if publisher is not None:
            publisher.close()
        queue.close()
        database.close()
        store.close()
    metrics.JOB_LAST_SUCCESS.labels(job="publish").set_to_current_time()
    return results


class StopFlag:
    """Set by SIGTERM or SIGINT; long-running roles check it between batches and stop cleanly."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        log.info("received signal %d; finishing the current batch and stopping", signum)
        self._event.set()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        return self._event.wait(seconds)


def run_consumer(
    config: Config, group: str, *, stop: StopFlag, idle_exit_seconds: float | None = None
) -> ConsumeResult:
    config.spec.group(group)
    name = f"{socket.gethostname()}-{os.getpid()}"
    store = MailStore(config.connections.mongodb_url)
    queue = QueueClient(config.connections.rabbitmq_url, name=f"mailpipe-consume-{group}-{name}")
    transport = SmtpTransport(
        config.connections.smtp_url,
        security=config.spec.smtp.security,
        timeout_seconds=config.spec.smtp.timeout_seconds,
        on_connect=lambda: metrics.SMTP_CONNECTIONS.labels(group=group).inc(),
    )
    consumer = Consumer(group, spec=config.spec, store=store, queue=queue, transport=transport, name=name)
    try:
        return consumer.run(should_stop=stop.is_set, idle_exit_seconds=idle_exit_seconds)
    finally:
        queue.close()
        store.close()


def run_on_schedule(job_name: str, job: object, *, interval_seconds: float, stop: StopFlag) -> None:
    """Run `job()` every `interval_seconds` until stopped; a failed run is logged and retried."""
    assert callable(job)
    failures = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            job()
            failures = 0
        except Exception as error:  # noqa: BLE001
            # A scheduled job must outlive one bad run (a server restarting, say); the next run
            # starts from stored state, so nothing is lost by trying again.
            failures += 1
            log.error("%s failed (%d in a row): %s", job_name, failures, error, exc_info=failures == 1)
        elapsed = time.monotonic() - started
        stop.wait(max(0.0, interval_seconds - elapsed) if failures == 0 else min(30.0, interval_seconds * 2**failures))
