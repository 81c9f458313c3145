"""`mailpipe run`: the local supervisor. Runs the roles that the operator deploys as separate
processes: populate and publish on a schedule, consumers per group, the audit and the
healthcheck periodically. A child that dies is started again with a growing delay. Ctrl-C (or
SIGTERM) tells every child to finish its current batch and stop. Nothing acknowledged is lost and
nothing unacknowledged is dropped, because RabbitMQ returns unacked deliveries to their queue.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from mailpipe import procstat
from mailpipe.config import Config
from mailpipe.jobs import StopFlag

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30.0


@dataclass
class Child:
    """One supervised process: a role's command line and its restart state."""

    name: str
    arguments: list[str]
    long_running: bool = True
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    peak_rss_bytes: int = 0
    environment: dict[str, str] = field(default_factory=dict)
    cpu_seconds_before: float = 0.0  # of the processes that exited
    cpu_seconds_current: float = 0.0  # last reading of the running process

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_seconds_before + self.cpu_seconds_current

    def sample(self) -> None:
        if self.process is not None:
            self.peak_rss_bytes = max(self.peak_rss_bytes, procstat.peak_rss_bytes(self.process.pid))
            self.cpu_seconds_current = procstat.cpu_seconds(self.process.pid) or self.cpu_seconds_current


def pipeline_children(
    config: Config,
    *,
    interval_seconds: float,
    metrics_base_port: int,
    consumers: dict[str, int] | None = None,
) -> list[Child]:
    """Return the long-running processes of a local pipeline, each with its own metrics port."""
    ports = iter(range(metrics_base_port, metrics_base_port + 1000))
    every = [f"--every={interval_seconds:g}"]
    # Publishers poll twice as often as populate: an idle run costs one small look-up, and an
    # urgent email then waits for at most one and a half polling intervals instead of two.
    publish_every = [f"--every={interval_seconds / 2:g}"]
    children = [
        Child("populate-outbox", ["populate", "--source=outbox", *every, f"--metrics-port={next(ports)}"]),
        Child("populate-campaigns", ["populate", "--source=campaigns", *every, f"--metrics-port={next(ports)}"]),
    ]
    for group in config.spec.groups:
        children.append(
            Child(f"publish-{group.name}", ["publish", f"--group={group.name}", *publish_every, f"--metrics-port={next(ports)}"])
        )
    for group in config.spec.groups:
        count = (consumers or {}).get(group.name, max(1, group.min_consumers))
        for index in range(count):
            children.append(Child(f"consume-{group.name}-{index}", ["consume", group.name, f"--metrics-port={next(ports)}"]))
    return children


class Supervisor:
    def __init__(self, children: list[Child], *, config_path: str | None, periodic: dict[str, tuple[list[str], float]] | None = None,
                 environment: dict[str, str] | None = None, log_directory: str | None = None) -> None:
        self.children = children
        self.config_path = config_path
        self.periodic = periodic or {}
        self.environment = environment or {}
        self.log_directory = log_directory
        self._periodic_due = {name: time.monotonic() + interval for name, (_, interval) in self.periodic.items()}
        self._periodic_running: dict[str, subprocess.Popen[bytes]] = {}

    def _command(self, arguments: list[str]) -> list[str]:
        base = [sys.executable, "-m", "mailpipe.cli"]
        if self.config_path:
            base.append(f"--config={self.config_path}")
        return [*base, *arguments]

    def _spawn(self, name: str, arguments: list[str]) -> subprocess.Popen[bytes]:
        output = None
        if self.log_directory:
            os.makedirs(self.log_directory, exist_ok=True)
            output = open(os.path.join(self.log_directory, f"{name}.log"), "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(
                self._command(arguments),
                env={**os.environ, **self.environment},
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order.
            )
        finally:
            if output is not None:
                output.close()  # the child has its own copy of the file descriptor

    def start(self) -> None:
        for child in self.children:
            child.process = self._spawn(child.name, child.arguments)
            child.started_at = time.monotonic()
            log.info("run: started %s (pid %d)", child.name, child.process.pid)

    def poll(self) -> None:
        """Restart dead children after their back-off, start due periodic jobs, track memory."""
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is not None:
                child.sample()
                status = process.poll()
                if status is None:
                    if now - child.started_at > 60:
                        child.restarts = 0  # a child that ran a minute is healthy again
                    continue
                child.restarts += 1
                child.cpu_seconds_before += child.cpu_seconds_current
                child.cpu_seconds_current = 0.0
                delay = min(30.0, 2.0 ** min(child.restarts, 5))
                child.next_start = now + delay
                child.process = None
                log.warning("run: %s exited with status %d; starting it again in %.0f s", child.name, status, delay)
            elif now >= child.next_start:
                child.process = self._spawn(child.name, child.arguments)
                child.started_at = now
                log.info("run: started %s again (pid %d)", child.name, child.process.pid)
        for name, (arguments, interval) in self.periodic.items():
            running = self._periodic_running.get(name)
            if running is not None and running.poll() is None:
                continue
            if now >= self._periodic_due[name]:
                self._periodic_running[name] = self._spawn(name, arguments)
                self._periodic_due[name] = now + interval

    def stop(self) -> None:
        """Ask every child to stop (SIGTERM), wait for them, and kill what is left after the grace."""
        for child in self.children:
            child.sample()
        processes = [child.process for child in self.children if child.process is not None]
        processes += [process for process in self._periodic_running.values() if process.poll() is None]
        for process in processes:
            process.terminate()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for process in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("run: pid %d did not stop within %.0f s; killing it", process.pid, STOP_GRACE_SECONDS)
                process.kill()
                process.wait()
        log.info("run: all processes stopped")


def main(config: Config, *, config_path: str | None, interval_seconds: float, metrics_base_port: int) -> int:
    children = pipeline_children(config, interval_seconds=interval_seconds, metrics_base_port=metrics_base_port)
    periodic = {"audit-dequeued": (["audit-dequeued"], 60.0), "healthcheck": (["healthcheck"], 30.0)}
    supervisor = Supervisor(children, config_path=config_path, periodic=periodic)
    stop = StopFlag()
    stop.install()
    supervisor.start()
    log.info("run: %d processes started; press Ctrl-C to stop", len(children))
    try:
        while not stop.wait(0.5):
            supervisor.poll()
    finally:
        supervisor.stop()
    return 0
