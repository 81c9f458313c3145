"""Header folding and encoding, and text body encoding, for composed messages."""

from __future__ import annotations

import quopri
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser

import pytest

from mailpipe.mail.mime import (
    CRLF,
    MAX_LINE_OCTETS,
    address_header,
    encode_text_body,
    fold,
    unstructured_header,
)

GREEK_NAME = "Κωνσταντίνος Παπαδόπουλος-Γεωργίου και Συνεργάτες"


def parse_header(field: str) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes((field + CRLF + CRLF).encode())
    assert isinstance(message, EmailMessage)
    return message


def unfold(field: str) -> str:
    return field.replace(CRLF, "")


def test_fold_short_line_unchanged() -> None:
    assert fold("Subject: short") == "Subject: short"


def test_fold_restores_on_unfold() -> None:
    line = "Subject: " + " ".join(f"word{number}" for number in range(40))

    folded = fold(line)

    assert unfold(folded) == line
    assert CRLF in folded


def test_fold_lines_fit_78() -> None:
    folded = fold("Subject: " + " ".join(f"word{number}" for number in range(40)))

    for line in folded.split(CRLF):
        assert len(line) <= 78, line


def test_fold_keeps_double_spaces() -> None:
    line = "Subject: " + "  ".join(["a" * 30] * 6)

    folded = fold(line)

    assert unfold(folded) == line
    for continuation in folded.split(CRLF)[1:]:
        assert continuation.strip(), folded


def test_fold_trailing_spaces_stay() -> None:
    line = "X-Note: " + " ".join(["b" * 20] * 4) + "   "

    folded = fold(line)

    assert unfold(folded) == line
    for continuation in folded.split(CRLF)[1:]:
        assert continuation.strip(), folded


def test_fold_not_after_name_alone() -> None:
    folded = fold("Subject: " + "x" * 100)

    assert folded == "Subject: " + "x" * 100


def test_ascii_subject_stays_readable() -> None:
    field = unstructured_header("Subject", "Your order has shipped", utf8=False)

    assert field == "Subject: Your order has shipped"


def test_non_ascii_subject_encoded() -> None:
    field = unstructured_header("Subject", "Prévu à Besançon", utf8=False)

    assert field.isascii()
    assert parse_header(field)["Subject"] == "Prévu à Besançon"


def test_utf8_subject_kept_raw() -> None:
    field = unstructured_header("Subject", "Prévu à Besançon", utf8=True)

    assert field == "Subject: Prévu à Besançon"


def test_encoded_word_lookalike_encoded() -> None:
    value = "Use =?utf-8?q?x?= literally"

    field = unstructured_header("Subject", value, utf8=False)

    assert "=?utf-8?q?x?=" not in field
    assert parse_header(field)["Subject"] == value


def test_overlong_word_becomes_encoded() -> None:
    value = "x" * (MAX_LINE_OCTETS + 100)

    field = unstructured_header("X-Token", value, utf8=False)

    assert max(len(line) for line in field.split(CRLF)) <= 78
    assert parse_header(field)["X-Token"] == value


def test_address_without_name() -> None:
    assert address_header("Reply-To", "", "a@example.com", utf8=False) == "Reply-To: a@example.com"


def test_plain_name_unquoted() -> None:
    field = address_header("To", "Ana Silva", "ana@example.com", utf8=False)

    assert field == "To: Ana Silva <ana@example.com>"


@pytest.mark.parametrize(
    "name", ['Silva, Ana', 'Ana "AS" Silva', "Back\\slash", "Ana  Silva", " Ana", "a.b"]
)
def test_special_name_quoted_round_trip(name: str) -> None:
    field = address_header("To", name, "ana@example.com", utf8=False)

    assert parse_header(field)["To"].addresses[0].display_name == name


def test_long_non_ascii_name_decodes() -> None:
    field = address_header("To", GREEK_NAME, "a@example.com", utf8=False)
    # CPython 3.11's address parser adds a space between adjacent encoded words of a display
    # name, although RFC 2047 (section 6.2) requires decoders to ignore that whitespace. The
    # RFC-following decoder of email.header checks the name instead.
    value = unfold(field).removeprefix("To: ").removesuffix(" <a@example.com>")

    assert str(make_header(decode_header(value))) == GREEK_NAME
    assert max(len(line) for line in field.split(CRLF)) <= 78
    assert parse_header(field)["To"].addresses[0].addr_spec == "a@example.com"


def test_utf8_name_with_comma_quoted() -> None:
    field = address_header("From", "Ægir Þórsson, Ventes & Co", "news@example.com", utf8=True)

    assert field == 'From: "Ægir Þórsson, Ventes & Co" <news@example.com>'


def test_ascii_body_is_7bit() -> None:
    transfer_encoding, body = encode_text_body("Hello\nWorld\n")

    assert transfer_encoding == "7bit"
    assert body == b"Hello\r\nWorld\r\n"


@pytest.mark.parametrize("text", ["a\rb\r\nc\nd", "a\r\nb\r\nc\r\nd"])
def test_body_line_ends_become_crlf(text: str) -> None:
    _, body = encode_text_body(text)

    assert body == b"a\r\nb\r\nc\r\nd"


def test_non_ascii_body_quoted_printable() -> None:
    text = "Crème brûlée\n" + "Texte très long " * 20 + "\n"

    transfer_encoding, body = encode_text_body(text)

    assert transfer_encoding == "quoted-printable"
    assert body.isascii()
    assert max(len(line) for line in body.split(b"\r\n")) <= 76
    assert quopri.decodestring(body).decode("utf-8") == text.replace("\n", "\r\n")


def test_overlong_ascii_line_quoted_printable() -> None:
    transfer_encoding, body = encode_text_body("x" * (MAX_LINE_OCTETS + 1))

    assert transfer_encoding == "quoted-printable"
    assert max(len(line) for line in body.split(b"\r\n")) <= 76


def test_body_keeps_unicode_separators() -> None:
    # Only CR and LF end lines in a message, so U+2028 stays text inside quoted-printable.
    text = "one\u2028two"

    _, body = encode_text_body(text)

    assert quopri.decodestring(body).decode("utf-8") == text
