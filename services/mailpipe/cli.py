"""`mailpipe COMMAND`: the command-line entry point of every data-plane role.

Parses arguments, loads the configuration, sets up logging and metrics, and hands over to
`mailpipe.jobs` (or to the audit and healthcheck roles' own entry points).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from mailpipe import __version__, metrics
from mailpipe.config import Config, load_config
from mailpipe.errors import ConfigError, MailpipeError, ServiceUnavailableError

log = logging.getLogger("mailpipe")



def _port(text: str) -> int:
    """Parse a TCP port number for argparse, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid port {text!r}: expected a number from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {port}: expected a number from 1 to 65535")
    return port

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailpipe", description="High-volume email sending pipeline.")
    parser.add_argument("--version", action="version", version=f"mailpipe {__version__}")
    parser.add_argument(
        "--config",
        default=os.environ.get("MAILPIPE_CONFIG"),
        help="YAML configuration file (default: $MAILPIPE_CONFIG, else built-in defaults)",
    )
    parser.add_argument("--log-level", default=os.environ.get("MAILPIPE_LOG_LEVEL", "INFO"), help="DEBUG, INFO, WARNING or ERROR")
    # The same options after the command (`mailpipe consume news --config FILE`), as the
    # operator's containers pass them; SUPPRESS keeps a value given before the command.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--log-level", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_command = commands.add_parser

    def add_parser(name: str, **options: Any) -> argparse.ArgumentParser:
        return add_command(name, parents=[common], **options)

    commands.add_parser = add_parser  # type: ignore[method-assign]

    populate = commands.add_parser("populate", help="read due campaigns and new outbox rows into cron_emails")
    populate.add_argument("--source", choices=["all", "outbox", "campaigns"], default="all", help="which source to read")
    _add_schedule_options(populate)

    publish = commands.add_parser("publish", help="render pending emails and publish their ids to the group queues")
    publish.add_argument("--group", action="append", help="only this email group (repeatable; default: all groups)")
    publish.add_argument("--max-chunks", type=int, help="stop after this many chunks per group")
    _add_schedule_options(publish)

    consume = commands.add_parser("consume", help="send the emails of one group from its queue")
    consume.add_argument("group", help="email group, as configured under groups")
    consume.add_argument("--metrics-port", type=_port, help="serve /metrics on this port (default: monitoring.metricsPort)")
    consume.add_argument(
        "--idle-exit", type=float, metavar="SECONDS",
        help="exit after the work queue was empty this long (emails waiting in retry queues do not count)",
    )

    commands.add_parser("audit-dequeued", help="email the team a summary of newly dequeued mail")
    commands.add_parser("healthcheck", help="check the RabbitMQ cluster through its HTTP API")

    run = commands.add_parser("run", help="run the whole pipeline locally as separate processes")
    run.add_argument("--interval", type=float, default=1.0, help="seconds between populate and publish runs (default 1)")
    run.add_argument("--metrics-base-port", type=_port, default=9100, help="first of the consecutive /metrics ports")

    commands.add_parser("init-db", help="create the application tables in MySQL when missing (demo and tests)")

    seed = commands.add_parser("seed", help="fill MySQL with a generated audience, a campaign and transactional requests")
    seed.add_argument("--users", type=int, default=20_000, help="audience size (default 20000)")
    seed.add_argument("--transactional", type=int, default=300, help="outbox rows (default 300)")

    demo = commands.add_parser("demo", help="seed data and run the pipeline until every email is sent or dequeued")
    demo.add_argument("--users", type=int, default=20_000, help="audience size (default 20000)")
    demo.add_argument("--transactional", type=int, default=300, help="transactional requests (default 300)")
    demo.add_argument("--timeout", type=float, default=900.0, help="give up after this many seconds (default 900)")

    bench = commands.add_parser("bench", help="benchmark: emails end to end into smtp-sink beside raw SMTP speed")
    bench.add_argument("--emails", type=int, default=100_000, help="campaign size (default 100000)")
    bench.add_argument(
        "--consumers", type=int, default=None,
        help="campaign consumers (default: the campaign group's minConsumers, 3 unless configured)",
    )
    return parser


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--every", type=float, metavar="SECONDS", help="run again every SECONDS until stopped")
    parser.add_argument("--metrics-port", type=_port, help="with --every: serve /metrics on this port")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s",
    )
    # pika logs every connection step at INFO, and a refused connection as a dozen ERROR lines.
    # The adapters report each failure once, with what to do next.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    configure_logging(arguments.log_level)
    try:
        config = load_config(arguments.config)
        return dispatch(arguments, config)
    except ConfigError as error:
        log.error("%s", error)
        return 2
    except ServiceUnavailableError as error:
        log.error("stopped: %s; nothing half-done was recorded, so running the command again is safe", error)
        return 3
    except MailpipeError as error:
        log.error("failed: %s", error)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted")
        return 130


def dispatch(arguments: argparse.Namespace, config: Config) -> int:
    from mailpipe import jobs

    command = arguments.command
    pushgateway = config.connections.pushgateway_url or config.spec.monitoring.pushgateway_url
    # On a tight schedule the scheduled jobs keep their connections between runs; reconnecting
    # every second would add its own latency to urgent mail.
    keep_open = arguments.command in ("populate", "publish") and arguments.every is not None and arguments.every <= 10
    if command == "populate":
        sources = ("outbox", "campaigns") if arguments.source == "all" else (arguments.source,)
        return _scheduled(arguments, "populate", jobs.PopulateJob(config, sources=sources, keep_open=keep_open), pushgateway)
    if command == "publish":
        job = jobs.PublishJob(config, groups=arguments.group, max_chunks=arguments.max_chunks, keep_open=keep_open)
        return _scheduled(arguments, "publish", job, pushgateway)
    if command == "consume":
        config.spec.group(arguments.group)  # an unknown group fails before anything starts
        port = arguments.metrics_port if arguments.metrics_port is not None else config.spec.monitoring.metrics_port
        metrics.serve_metrics(port)
        stop = jobs.StopFlag()
        stop.install()
        jobs.run_consumer(config, arguments.group, stop=stop, idle_exit_seconds=arguments.idle_exit)
        return 0
    if command == "audit-dequeued":
        from mailpipe.roles import audit

        return audit.main(config)
    if command == "healthcheck":
        from mailpipe.roles import healthcheck

        return healthcheck.main(config)
    if command == "run":
        from mailpipe import run

        return run.main(config, config_path=arguments.config, interval_seconds=arguments.interval,
                        metrics_base_port=arguments.metrics_base_port)
    if command == "init-db":
        from mailpipe.adapters.mysql import ApplicationDatabase

        database = ApplicationDatabase(config.connections.mysql_url)
        database.apply_schema()
        database.close()
        log.info("application tables are in place")
        return 0
    if command == "seed":
        from mailpipe import seed

        seed.seed(config, users=arguments.users, transactional=arguments.transactional)
        return 0
    if command == "demo":
        from mailpipe import demo

        return demo.main(config, config_path=arguments.config, users=arguments.users,
                         transactional=arguments.transactional, timeout_seconds=arguments.timeout)
    if command == "bench":
        from mailpipe import bench

        return bench.main(config, emails=arguments.emails, consumers=arguments.consumers)
    raise ConfigError(f"unknown command {command!r}")


def _scheduled(arguments: argparse.Namespace, name: str, job: object, pushgateway: str | None) -> int:
    from mailpipe import jobs

    assert callable(job)
    if arguments.every is None:
        job()
        metrics.push_metrics(pushgateway, job=name)
        return 0
    if arguments.metrics_port:
        metrics.serve_metrics(arguments.metrics_port)
    stop = jobs.StopFlag()
    stop.install()
    jobs.run_on_schedule(name, job, interval_seconds=arguments.every, stop=stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
