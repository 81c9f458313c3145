"""The project's one error hierarchy.

Adapters translate driver exceptions into these, chained with `from`, so that roles decide on
meaning (retry later, fail for good, stop) and never on a driver's exception type.
"""

from __future__ import annotations


class MailpipeError(Exception):
    """Base of every error that Mailpipe raises on purpose."""


class ConfigError(MailpipeError):
    """Invalid or missing configuration; the command stops before doing any work."""


class ServiceUnavailableError(MailpipeError):
    """A backing service (MySQL, MongoDB, RabbitMQ) cannot be reached or failed an operation.

    The role stops its current chunk without recording anything half-done; running it again is safe.
    """


class DeliveryError(MailpipeError):
    """One email could not be rendered or sent; `reason` is what gets recorded on the email."""

    def __init__(self, reason: str, *, smtp_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.smtp_code = smtp_code


class RetryableError(DeliveryError):
    """A transient failure (an SMTP 4xx reply, a lost connection, a timeout): try again later."""


class SmtpUnavailableError(RetryableError):
    """The SMTP server cannot be reached or rejects the login: no email can be sent right now,
    and the message at hand was not sent."""


class PermanentError(DeliveryError):
    """A failure that another attempt cannot fix (an SMTP 5xx reply, an invalid address, a
    template error): the email is dequeued at once."""
