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
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TypeVar

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

ResultT = TypeVar("ResultT")


class _ConnectedJob:
    """A scheduled job with its connections; `keep_open` keeps them between runs of a tight schedule."""

    job_name = ""

    def __init__(self, config: Config, *, keep_open: bool) -> None:
        self.config = config
        self.keep_open = keep_open
        self._database: ApplicationDatabase | None = None
        self._store: MailStore | None = None
        self._publisher: PipelinedPublisher | None = None

    def _run(self, work: Callable[[], ResultT]) -> ResultT:
        """Run `work`, closing the connections after a failure (the next run reconnects)."""
        try:
            result = work()
        except BaseException:
            self.close()
            raise
        if not self.keep_open:
            self.close()
        metrics.JOB_LAST_SUCCESS.labels(job=self.job_name).set_to_current_time()
        return result

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
        if self._database is not None:
            self._database.close()
        if self._store is not None:
            self._store.close()
        self._database = None
        self._store = None
        self._publisher = None


class PopulateJob(_ConnectedJob):
    job_name = "populate"

    def __init__(self, config: Config, *, sources: tuple[str, ...], keep_open: bool = False) -> None:
        super().__init__(config, keep_open=keep_open)
        self.sources = sources

    def __call__(self) -> PopulateResult:
        return self._run(self._populate)

    def _populate(self) -> PopulateResult:
        if self._database is None or self._store is None:
            self._database = ApplicationDatabase(self.config.connections.mysql_url)
            self._store = MailStore(self.config.connections.mongodb_url)
            self._store.ensure_indexes()
        result = populate(source=self._database, sink=self._store, spec=self.config.spec, sources=self.sources)
        log.log(logging.INFO if result.counts else logging.DEBUG, "populate finished: %s", dict(result.counts) or "nothing new")
        return result


class PublishJob(_ConnectedJob):
    job_name = "publish"

    def __init__(self, config: Config, *, groups: Sequence[str] | None = None, max_chunks: int | None = None,
                 keep_open: bool = False) -> None:
        super().__init__(config, keep_open=keep_open)
        self.groups = list(groups) if groups else [group.name for group in config.spec.groups]
        for name in self.groups:
            config.spec.group(name)  # fail early, naming the configured groups
        self.max_chunks = max_chunks

    def __call__(self) -> dict[str, PublishResult]:
        return self._run(self._publish)

    def _open(self) -> tuple[ApplicationDatabase, MailStore, PipelinedPublisher]:
        if self._database is None or self._store is None or self._publisher is None:
            self.close()
            name = f"mailpipe-publish-{socket.gethostname()}"
            self._database = ApplicationDatabase(self.config.connections.mysql_url)
            self._store = MailStore(self.config.connections.mongodb_url)
            queue = QueueClient(self.config.connections.rabbitmq_url, name=name)
            try:
                # The healthcheck's canary queue is part of the topology. Declaring it here gives a
                # local pipeline that queue without the operator, and a deleted one is reported missing.
                queue.declare([queue_definition for queue_definition in all_queues(self.config.spec)
                               if queue_definition.name == CANARY_QUEUE])
                for group in self.groups:
                    queue.declare(group_queues(group, spec=self.config.spec))
            finally:
                queue.close()
            self._publisher = PipelinedPublisher(self.config.connections.rabbitmq_url, name=name)
        return self._database, self._store, self._publisher

    def _publish(self) -> dict[str, PublishResult]:
        database, store, publisher = self._open()
        results: dict[str, PublishResult] = {}
        for name in self.groups:
            result = publish_group(
                name, lookups=database, store=store, queue=publisher, spec=self.config.spec, max_chunks=self.max_chunks
            )
            results[name] = result
            log.log(
                logging.INFO if (result.queued or result.failed or result.republished) else logging.DEBUG,
                "publish: group %s: %d queued, %d failed, %d republished from unfinished batches",
                name, result.queued, result.failed, result.republished,
            )
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
            # A scheduled job must outlive one bad run, such as a server restarting. The next run
            # starts from stored state, so nothing is lost by trying again.
            failures += 1
            log.error("%s failed (%d in a row): %s", job_name, failures, error, exc_info=failures == 1)
        elapsed = time.monotonic() - started
        stop.wait(max(0.0, interval_seconds - elapsed) if failures == 0 else min(30.0, interval_seconds * 2**failures))
