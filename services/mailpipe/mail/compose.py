"""Validate addresses and compose finished RFC 5322 messages.

The publisher validates each recipient, makes the email's Message-ID and composes the message
bytes once, and stores them on the email's document so that every retry sends the same bytes.
Bodies are always 7-bit (quoted-printable for non-ASCII text), so sending never depends on the
server offering 8BITMIME. Only messages that need SMTPUTF8 carry raw UTF-8, in their headers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime

import idna
from email_validator import EmailNotValidError, validate_email

from mailpipe.errors import ConfigError, PermanentError
from mailpipe.mail.mime import CRLF, address_header, encode_body, unstructured_header
from mailpipe.mail.render import RenderedContent

# Headers that compose_email sets itself, so callers may not add a second copy through `headers`.
_RESERVED_HEADERS = frozenset(
    {"from", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id", "mime-version",
     "content-type", "content-transfer-encoding"}
)
# A field name is printable ASCII except the colon (RFC 5322, section 2.2).
_HEADER_NAME = re.compile(r"[!-9;-~]+")
# Control characters other than tab, and the Unicode line and paragraph separators, which
# Unicode-aware programs treat as line breaks.
_CONTROL_CHARACTER = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
# Characters kept as they are in the left part of a Message-ID. Every other character is written
# as =XX per UTF-8 byte, so distinct document ids always give distinct Message-IDs.
_MESSAGE_ID_SAFE = re.compile(r"[A-Za-z0-9_-]")
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")


@dataclass(frozen=True)
class Recipient:
    """A valid address, in the form that goes into both the headers and the SMTP envelope."""

    # The local part as given (NFC-normalized), then "@" and the IDNA2008 ASCII domain.
    address: str
    local_part: str
    ascii_domain: str
    # True when the local part is not ASCII, so the message can only go to a server that offers
    # SMTPUTF8.
    requires_smtputf8: bool


@dataclass(frozen=True)
class ComposedEmail:
    """A finished message and its SMTP envelope."""

    envelope_from: str
    envelope_to: str
    message: bytes
    message_id: str
    requires_smtputf8: bool


def validate_address(address: str) -> Recipient:
    """Check an address's syntax and convert its domain to the IDNA2008 ASCII form.

    Raises `PermanentError` with the validator's explanation when the address is invalid.
    Surrounding whitespace is not stripped, so it makes the address invalid. The domain's DNS
    records are not checked.
    """
    try:
        validated = validate_email(address, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as error:
        # No later attempt can make a malformed address deliverable.
        raise PermanentError(f"Invalid email address {address!r}: {error}") from error

    return Recipient(
        address=f"{validated.local_part}@{validated.ascii_domain}",
        local_part=validated.local_part,
        ascii_domain=validated.ascii_domain,
        requires_smtputf8=validated.smtputf8,
    )


def make_message_id(document_id: str, *, domain: str) -> str:
    """Make the Message-ID of an email document, the same one on every retry and re-render.

    Characters other than ASCII letters, digits, "-" and "_" in `document_id` are written as =XX
    per UTF-8 byte. Raises `ConfigError` when `domain` is not a valid host name.
    """
    if not document_id:
        raise ValueError("document_id must not be empty for a Message-ID")
    encoded_id = "".join(_encode_message_id_character(character) for character in document_id)
    return f"<{encoded_id}.mailpipe@{_ascii_host_name(domain)}>"


def compose_email(
    *,
    from_address: str,
    from_name: str,
    to: Recipient,
    to_name: str,
    reply_to: str | None,
    content: RenderedContent,
    message_id: str,
    max_message_bytes: int,
    headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> ComposedEmail:
    """Compose the message: text alone, or multipart/alternative with text and HTML.

    `date` defaults to the current time. Raises `PermanentError` when a header would be unsafe
    (a line break in a name or the subject), an address is invalid, or the message is larger
    than `max_message_bytes`.
    """
    sender = _validate_configured_address(from_address)
    reply_address = None if reply_to is None else _validate_configured_address(reply_to)
    extra_headers = dict(headers or {})
    _check_header_values(
        from_name=from_name, to_name=to_name, subject=content.subject, message_id=message_id,
        extra_headers=extra_headers,
    )
    _check_body_size(content, max_message_bytes=max_message_bytes)

    requires_smtputf8 = to.requires_smtputf8 or sender.requires_smtputf8 or (
        reply_address is not None and reply_address.requires_smtputf8
    )
    head = _header_block(
        from_field=address_header("From", from_name, sender.address, utf8=requires_smtputf8),
        to_field=address_header("To", to_name, to.address, utf8=requires_smtputf8),
        reply_to=reply_address,
        subject=content.subject,
        date=date or datetime.now(timezone.utc),
        message_id=message_id,
        extra_headers=extra_headers,
        utf8=requires_smtputf8,
    )
    data = head + encode_body(content.text, content.html, boundary_seed=message_id)
    if len(data) > max_message_bytes:
        raise PermanentError(
            f"The message is {len(data)} bytes, larger than the maximum of "
            f"{max_message_bytes} bytes: shorten the content or raise the maximum message size"
        )
    return ComposedEmail(
        envelope_from=sender.address,
        envelope_to=to.address,
        message=data,
        message_id=message_id,
        requires_smtputf8=requires_smtputf8,
    )


def _header_block(
    *,
    from_field: str,
    to_field: str,
    reply_to: Recipient | None,
    subject: str,
    date: datetime,
    message_id: str,
    extra_headers: Mapping[str, str],
    utf8: bool,
) -> bytes:
    fields = [from_field, to_field]
    if reply_to is not None:
        fields.append(address_header("Reply-To", "", reply_to.address, utf8=utf8))
    fields.append(unstructured_header("Subject", subject, utf8=utf8))
    fields.append(f"Date: {format_datetime(date)}")
    fields.append(f"Message-ID: {message_id}")
    for name, value in extra_headers.items():
        fields.append(unstructured_header(name, value, utf8=utf8))
    fields.append("MIME-Version: 1.0")
    return (CRLF.join(fields) + CRLF).encode("utf-8" if utf8 else "ascii")


@functools.lru_cache(maxsize=64)
def _validate_configured_address(address: str) -> Recipient:
    # The sender and reply-to addresses are the same for a whole run, so they are validated
    # once, not once per email.
    return validate_address(address)


def _check_header_values(
    *,
    from_name: str,
    to_name: str,
    subject: str,
    message_id: str,
    extra_headers: Mapping[str, str],
) -> None:
    _check_header_text(from_name, field="From display name")
    _check_header_text(to_name, field="To display name")
    _check_header_text(subject, field="subject")
    _check_header_text(message_id, field="Message-ID")
    if not _MESSAGE_ID.fullmatch(message_id):
        raise PermanentError(f"Invalid Message-ID {message_id!r}: expected <left@right>")

    for name, value in extra_headers.items():
        if not _HEADER_NAME.fullmatch(name):
            raise PermanentError(
                f"Invalid header name {name!r}: expected printable ASCII without spaces or colons"
            )
        if name.lower() in _RESERVED_HEADERS:
            raise PermanentError(f"Header {name!r} is set by compose_email and cannot be added")
        _check_header_text(value, field=f"{name} header")


def _check_header_text(value: str, *, field: str) -> None:
    if "\r" in value or "\n" in value:
        raise PermanentError(
            f"The {field} contains a line break (CR or LF), which would inject headers: "
            f"{value[:200]!r}"
        )
    control = _CONTROL_CHARACTER.search(value)
    if control is not None:
        raise PermanentError(
            f"The {field} contains the control character U+{ord(control.group()):04X}: "
            f"{value[:200]!r}"
        )


def _check_body_size(content: RenderedContent, *, max_message_bytes: int) -> None:
    # The raw UTF-8 size of the bodies is a lower bound of the encoded message's size, so an
    # oversized body fails here before it is encoded.
    body_bytes = len(content.text.encode("utf-8", "surrogatepass"))
    if content.html is not None:
        body_bytes += len(content.html.encode("utf-8", "surrogatepass"))
    if body_bytes > max_message_bytes:
        raise PermanentError(
            f"The message bodies are {body_bytes} bytes, larger than the maximum message size "
            f"of {max_message_bytes} bytes: shorten the content or raise the maximum message size"
        )


def _encode_message_id_character(character: str) -> str:
    if _MESSAGE_ID_SAFE.fullmatch(character):
        return character
    return "".join(f"={byte:02X}" for byte in character.encode("utf-8", "surrogatepass"))


@functools.lru_cache(maxsize=16)
def _ascii_host_name(domain: str) -> str:
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except idna.IDNAError as error:
        # The domain comes from the configuration, so every email would fail the same way.
        raise ConfigError(f"Invalid Message-ID domain {domain!r}: {error}") from error
