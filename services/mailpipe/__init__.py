"""Mailpipe's data plane: populate, publish, consume, audit and healthcheck roles over MySQL,
MongoDB, RabbitMQ and SMTP. `mailpipe.cli` is the command-line entry point."""

__version__ = "0.1.0"
