"""Classify SMTP reply codes and turn replies into short, printable failure reasons.

The consumer uses these to decide whether a send succeeded, should be retried, or failed for
good, and to record the server's reply on the email.
"""

from __future__ import annotations

import re

from mailpipe.errors import DeliveryError, PermanentError, RetryableError

# Long enough for an enhanced status code and the server's explanation, short enough to keep
# stored reasons and notification emails readable.
MAX_REASON_CHARS = 300

_WHITESPACE_RUN = re.compile(r"\s+")


def is_success(code: int) -> bool:
    """Return whether `code` is a 2xx completion reply."""
    return 200 <= code <= 299


def is_transient(code: int) -> bool:
    """Return whether `code` is a 4xx reply: the same request may succeed later."""
    return 400 <= code <= 499


def is_permanent(code: int) -> bool:
    """Return whether `code` is a 5xx reply: repeating the same request will fail again."""
    return 500 <= code <= 599


def describe_reply(code: int, message: bytes | str) -> str:
    """Format a reply as one printable line, "CODE text", of at most MAX_REASON_CHARS characters.

    Bytes are decoded as UTF-8 with invalid sequences replaced, and the lines of a multiline
    reply are joined with spaces.
    """
    # Only the start of a long reply can be kept, so only that much is cleaned.
    text = message[: MAX_REASON_CHARS * 4]
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    # Control, format (such as bidirectional overrides) and separator characters become spaces,
    # so a reason always prints as one line that reads as it is stored.
    text = "".join(character if character.isprintable() else " " for character in text)
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    reason = f"{code} {text}" if text else str(code)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    return reason


def reply_error(code: int, message: bytes | str) -> DeliveryError:
    """Build the error for a reply that did not accept the email.

    A 5xx reply gives `PermanentError`. Any other code gives `RetryableError`, because a 4xx
    reply is transient by definition and an unexpected code says nothing certain about the
    address or the message.
    """
    reason = describe_reply(code, message)
    if is_permanent(code):
        return PermanentError(reason, smtp_code=code)
    return RetryableError(reason, smtp_code=code)
