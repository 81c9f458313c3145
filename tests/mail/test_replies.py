"""SMTP reply classification and the reasons recorded from replies."""

from __future__ import annotations

import pytest

from mailpipe.errors import PermanentError, RetryableError
from mailpipe.mail.replies import (
    MAX_REASON_CHARS,
    describe_reply,
    is_permanent,
    is_success,
    is_transient,
    reply_error,
)


@pytest.mark.parametrize("code", [200, 250, 251, 299])
def test_2xx_is_success(code: int) -> None:
    assert is_success(code)
    assert not is_transient(code)
    assert not is_permanent(code)


@pytest.mark.parametrize("code", [400, 421, 450, 451, 452, 499])
def test_4xx_is_transient(code: int) -> None:
    assert is_transient(code)
    assert not is_success(code)
    assert not is_permanent(code)


@pytest.mark.parametrize("code", [500, 550, 552, 553, 554, 599])
def test_5xx_is_permanent(code: int) -> None:
    assert is_permanent(code)
    assert not is_success(code)
    assert not is_transient(code)


@pytest.mark.parametrize("code", [-1, 0, 199, 354, 600])
def test_other_codes_unclassified(code: int) -> None:
    assert not is_success(code)
    assert not is_transient(code)
    assert not is_permanent(code)


def test_describe_bytes_reply() -> None:
    reason = describe_reply(550, b"5.1.1 <ana@example.com>: Recipient address rejected")

    assert reason == "550 5.1.1 <ana@example.com>: Recipient address rejected"


def test_describe_str_reply() -> None:
    assert describe_reply(421, "4.7.0 Too many messages") == "421 4.7.0 Too many messages"


def test_describe_multiline_joined() -> None:
    reason = describe_reply(550, b"5.7.1 Message rejected\n5.7.1 See policy page")

    assert reason == "550 5.7.1 Message rejected 5.7.1 See policy page"


def test_describe_invalid_utf8_replaced() -> None:
    reason = describe_reply(554, b"Rejected \xff\xfe here")

    assert reason == "554 Rejected \ufffd\ufffd here"


def test_describe_keeps_utf8_text() -> None:
    assert describe_reply(550, "Adresse inconnue: jürgen".encode()) == "550 Adresse inconnue: jürgen"


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\r", "\u2028", "\u202e"])
def test_describe_removes_unprintable(character: str) -> None:
    reason = describe_reply(550, f"bad{character}reply")

    assert reason == "550 bad reply"


def test_describe_empty_message() -> None:
    assert describe_reply(250, b"") == "250"


def test_describe_caps_length() -> None:
    reason = describe_reply(550, b"x" * 10_000)

    assert len(reason) == MAX_REASON_CHARS
    assert reason.startswith("550 xxx")
    assert reason.endswith("…")


def test_describe_short_reply_not_capped() -> None:
    message = "y" * (MAX_REASON_CHARS - 4)

    assert describe_reply(550, message) == f"550 {message}"


def test_5xx_reply_error_permanent() -> None:
    error = reply_error(550, b"5.1.1 User unknown")

    assert isinstance(error, PermanentError)
    assert error.smtp_code == 550
    assert error.reason == "550 5.1.1 User unknown"


@pytest.mark.parametrize("code", [421, 451, 354, -1])
def test_other_reply_error_retryable(code: int) -> None:
    error = reply_error(code, "try later")

    assert isinstance(error, RetryableError)
    assert error.smtp_code == code
