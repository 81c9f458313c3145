"""SMTP transport for campaign and transactional mail: one kept-open connection per consumer.

Translates smtplib's outcomes into the project's errors: 4xx replies, lost connections and
timeouts are RetryableError; 5xx replies and a UTF-8 address that the server cannot take are
PermanentError. The connection is reopened when the server closes it (some servers reply 421
after a fixed number of messages per connection).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from mailpipe.errors import ConfigError, PermanentError, RetryableError, SmtpUnavailableError
from mailpipe.mail.replies import describe_reply, is_transient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    username: str | None
    password: str | None
    implicit_tls: bool


def parse_smtp_url(url: str) -> SmtpEndpoint:
    """Read `smtp://[user:password@]host[:port]` (or `smtps://` for TLS from the first byte)."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
        raise ConfigError("MAILPIPE_SMTP_URL must look like smtp://user:password@host:587 or smtps://host:465")
    implicit_tls = parts.scheme == "smtps"
    return SmtpEndpoint(
        host=parts.hostname,
        port=parts.port or (465 if implicit_tls else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        implicit_tls=implicit_tls,
    )


@dataclass(frozen=True)
class Accepted:
    """The server's reply after DATA for an accepted message."""

    code: int
    reply: str


class SmtpTransport:
    def __init__(
        self,
        url: str,
        *,
        security: str = "none",
        timeout_seconds: float = 30.0,
        local_hostname: str | None = None,
        on_connect: object = None,
    ) -> None:
        self._endpoint = parse_smtp_url(url)
        self._starttls = security == "starttls"
        self._implicit_tls = security == "tls" or self._endpoint.implicit_tls
        self._timeout_seconds = timeout_seconds
        self._local_hostname = local_hostname
        self._connection: smtplib.SMTP | None = None
        self._on_connect = on_connect if callable(on_connect) else None
        self.connections_opened = 0

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        try:
            connection.quit()
        except (smtplib.SMTPException, OSError):
            # The server may already have closed its side; the socket is released either way.
            connection.close()

    def _connect(self) -> smtplib.SMTP:
        if self._connection is not None:
            return self._connection
        endpoint = self._endpoint
        try:
            connection: smtplib.SMTP
            if self._implicit_tls:
                connection = smtplib.SMTP_SSL(
                    endpoint.host,
                    endpoint.port,
                    local_hostname=self._local_hostname,
                    timeout=self._timeout_seconds,
                    context=ssl.create_default_context(),
                )
            else:
                connection = smtplib.SMTP(
                    endpoint.host, endpoint.port, local_hostname=self._local_hostname, timeout=self._timeout_seconds
                )
            connection.ehlo()
            if self._starttls:
                connection.starttls(context=ssl.create_default_context())
                connection.ehlo()
            if endpoint.username is not None:
                connection.login(endpoint.username, endpoint.password or "")
        except smtplib.SMTPAuthenticationError as error:
            raise SmtpUnavailableError(
                f"SMTP login to {endpoint.host}:{endpoint.port} failed: {describe_reply(error.smtp_code, error.smtp_error)}",
                smtp_code=error.smtp_code,
            ) from error
        except (smtplib.SMTPException, OSError) as error:
            raise SmtpUnavailableError(f"cannot connect to SMTP server {endpoint.host}:{endpoint.port}: {error}") from error
        self._connection = connection
        self.connections_opened += 1
        if self._on_connect is not None:
            self._on_connect()
        log.debug("connected to SMTP server %s:%d", endpoint.host, endpoint.port)
        return connection

    def send(self, *, envelope_from: str, envelope_to: str, message: bytes, smtputf8: bool) -> Accepted:
        """Send one message; reopen the connection once if the server had closed it."""
        try:
            return self._send_once(envelope_from, envelope_to, message, smtputf8)
        except _ConnectionLost as lost:
            log.info("SMTP connection closed by the server (%s); reconnecting", lost)
            self.close()
        try:
            return self._send_once(envelope_from, envelope_to, message, smtputf8)
        except _ConnectionLost as lost:
            self.close()
            raise RetryableError(f"SMTP connection lost twice in a row: {lost}") from lost

    def _send_once(self, envelope_from: str, envelope_to: str, message: bytes, smtputf8: bool) -> Accepted:
        connection = self._connect()
        mail_options: list[str] = []
        if smtputf8:
            if not connection.has_extn("smtputf8"):
                raise PermanentError(
                    "the recipient address needs SMTPUTF8, which the SMTP server does not offer"
                )
            mail_options = ["SMTPUTF8", "BODY=8BITMIME"]
        for address in (envelope_from, envelope_to):
            if any(character in address for character in "<>\r\n"):
                raise PermanentError(f"invalid envelope address {address!r}")
        try:
            reply: bytes | str
            if smtputf8:
                connection.command_encoding = "utf-8"  # what smtplib's mail() does for SMTPUTF8
            # MAIL and RCPT are sent directly: smtplib's mail() and rcpt() parse each address
            # again with email.utils, about 7 % of a consumer's CPU in one profile, for addresses validated already.
            options = "".join(f" {option}" for option in mail_options)
            code, reply = connection.docmd("MAIL", f"FROM:<{envelope_from}>{options}")
            if code == 250:
                code, reply = connection.docmd("RCPT", f"TO:<{envelope_to}>")
        except (smtplib.SMTPException, OSError) as error:
            # Nothing of the message was sent yet, so sending it again at once cannot double it.
            raise _ConnectionLost(str(error)) from error
        if code in (250, 251):
            try:
                code, reply = connection.data(message)
            except smtplib.SMTPResponseException as error:
                # DATA itself was refused (no 354); smtplib raises instead of returning the reply.
                code, reply = error.smtp_code, error.smtp_error
            except (smtplib.SMTPException, OSError) as error:
                # The connection broke while the message was in flight: the server may or may not
                # have accepted it. It goes through the delayed retry path, like any transient error.
                self.close()
                raise RetryableError(f"SMTP connection failed during DATA: {error}") from error
            if code == 250:
                return Accepted(code=code, reply=describe_reply(code, reply))
        if code == 421:
            # "Service not available, closing transmission channel": nothing was accepted.
            raise _ConnectionLost(describe_reply(code, reply))
        self._reset(connection)
        raise _reply_error(code, reply, "message refused")

    def _reset(self, connection: smtplib.SMTP) -> None:
        """Abort the failed transaction so the connection can carry the next message."""
        try:
            connection.rset()
        except (smtplib.SMTPException, OSError):
            # A connection that cannot even reset is dropped; the next send reconnects.
            self.close()


class _ConnectionLost(Exception):
    """The connection closed before the message was accepted; safe to send again at once."""


def _reply_error(code: int, reply: bytes | str, what: str) -> RetryableError | PermanentError:
    reason = f"{what}: {describe_reply(code, reply)}"
    if is_transient(code):
        return RetryableError(reason, smtp_code=code)
    return PermanentError(reason, smtp_code=code)

