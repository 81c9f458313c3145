"""Team notifications by email: the audit's summary and the healthcheck's failure report.

A plain smtplib client that opens one connection per notification. Campaign mail goes through
the consumers' own transport instead, which keeps connections open for throughput.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Literal
from urllib.parse import unquote, urlsplit

from mailpipe.config import Config
from mailpipe.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)

Security = Literal["none", "starttls", "tls"]
DEFAULT_PORTS = {"smtp": 25, "smtps": 465}


class SmtpNotifier:
    """Sends one plain-text email per notification to a fixed list of recipients."""

    def __init__(
        self,
        smtp_url: str,
        *,
        from_address: str,
        recipients: Sequence[str],
        security: Security = "none",
        timeout_seconds: float = 30.0,
    ) -> None:
        parts = urlsplit(smtp_url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ConfigError(
                f"invalid SMTP URL with scheme {parts.scheme!r}: expected smtp://host:port or smtps://host:port"
            )
        self._host = parts.hostname
        self._port = parts.port or DEFAULT_PORTS[parts.scheme]
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password or "")
        # smtps:// means TLS from the first byte, regardless of `security`.
        self._security: Security = "tls" if parts.scheme == "smtps" else security
        self._timeout_seconds = timeout_seconds
        self._from_address = from_address
        self._recipients = list(recipients)

    @classmethod
    def from_config(cls, config: Config) -> SmtpNotifier:
        return cls(
            config.connections.smtp_url,
            from_address=config.spec.notifications.from_address,
            recipients=config.spec.notifications.recipients,
            security=config.spec.smtp.security,
            timeout_seconds=config.spec.smtp.timeout_seconds,
        )

    def notify(self, subject: str, text: str) -> None:
        """Send the notification; raise ServiceUnavailableError when the server does not accept it.

        With no recipients configured, only logs that the notification was not sent.
        """
        if not self._recipients:
            log.warning("no notification recipients configured; not sending %r", subject)
            return
        message = self._compose(subject, text)
        try:
            with self._connect() as client:
                if self._username is not None:
                    client.login(self._username, self._password)
                client.send_message(message)
        except (smtplib.SMTPException, OSError) as error:
            # Covers refused connections, timeouts, TLS failures and rejected recipients alike;
            # the caller decides whether a lost notification fails its job.
            raise ServiceUnavailableError(
                f"sending notification {subject!r} through {self._host}:{self._port} failed: {error}"
            ) from error
        log.info("sent notification %r to %d recipients", subject, len(self._recipients))

    def _compose(self, subject: str, text: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self._from_address
        message["To"] = ", ".join(self._recipients)
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        domain = self._from_address.rpartition("@")[2] or None
        message["Message-ID"] = make_msgid(domain=domain)
        message.set_content(text)
        return message

    def _connect(self) -> smtplib.SMTP:
        if self._security == "tls":
            return smtplib.SMTP_SSL(
                self._host, self._port, timeout=self._timeout_seconds, context=ssl.create_default_context()
            )
        client = smtplib.SMTP(self._host, self._port, timeout=self._timeout_seconds)
        if self._security == "starttls":
            try:
                client.starttls(context=ssl.create_default_context())
            except BaseException:
                client.close()
                raise
        return client
