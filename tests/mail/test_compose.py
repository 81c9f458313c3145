"""Address validation, Message-IDs and composed messages, checked by parsing the bytes back."""

from __future__ import annotations

import email
from datetime import datetime, timezone
from email import policy
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from typing import Any

import pytest

from mailpipe.errors import ConfigError, PermanentError
from mailpipe.mail.compose import (
    ComposedEmail,
    compose_email,
    make_message_id,
    validate_address,
)
from mailpipe.mail.render import RenderedContent

FRENCH_SUBJECT = (
    "Rappel : votre commande n° 88412 — livraison prévue à Besançon, frais réduits pour "
    "l'abonnement « Premium »"
)
ICELANDIC_NAME = "Ægir Þórsson, Ventes & Co"


def compose(**overrides: Any) -> ComposedEmail:
    arguments: dict[str, Any] = {
        "from_address": "news@mailpipe.example",
        "from_name": "Mailpipe News",
        "to": validate_address("ana@example.com"),
        "to_name": "Ana Silva",
        "reply_to": None,
        "content": RenderedContent(subject="Hello", text="Hello Ana\n", html="<p>Hello</p>\n"),
        "message_id": "<doc1.mailpipe@mailpipe.example>",
        "max_message_bytes": 1_000_000,
    }
    arguments.update(overrides)
    return compose_email(**arguments)


def parse(composed: ComposedEmail) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(composed.message)
    assert isinstance(message, EmailMessage)
    return message


def parse_utf8(composed: ComposedEmail) -> EmailMessage:
    # BytesParser (CPython 3.11) leaves non-ASCII bytes of a quoted display name as surrogate
    # escapes, so UTF-8 headers are parsed from the decoded text instead.
    message = email.message_from_string(composed.message.decode("utf-8"), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def decoded_body(part: MIMEPart) -> str:
    # SMTP needs CRLF line ends, which get_content returns as they were sent.
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def compose_error(**overrides: Any) -> PermanentError:
    with pytest.raises(PermanentError) as caught:
        compose(**overrides)
    return caught.value


# Addresses


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        ("a..b@example.com", "two periods in a row"),
        ("x@example.com>", "invalid characters"),
        ("no-domain", "must have an @-sign"),
        ("two@@example.com", "invalid characters"),
    ],
)
def test_invalid_address_fails(address: str, problem: str) -> None:
    with pytest.raises(PermanentError) as caught:
        validate_address(address)

    assert address in caught.value.reason
    assert problem in caught.value.reason


@pytest.mark.parametrize("address", ["", " ana@example.com", "ana@example.com\r\nBcc: x@y.z"])
def test_whitespace_address_fails(address: str) -> None:
    with pytest.raises(PermanentError, match="Invalid email address"):
        validate_address(address)


def test_ascii_address_unchanged() -> None:
    recipient = validate_address("ana.silva+news@example.com")

    assert recipient.address == "ana.silva+news@example.com"
    assert recipient.requires_smtputf8 is False


def test_idn_domain_becomes_ascii() -> None:
    recipient = validate_address("info@bücher.example")

    assert recipient.address == "info@xn--bcher-kva.example"
    assert recipient.requires_smtputf8 is False


def test_non_ascii_local_and_idn_domain() -> None:
    recipient = validate_address("jürgen@bücher.example")

    assert recipient.ascii_domain == "xn--bcher-kva.example"
    assert recipient.address == "jürgen@xn--bcher-kva.example"
    assert recipient.requires_smtputf8 is True


def test_sharp_s_kept_by_idna2008() -> None:
    recipient = validate_address("kunde@straße.example")

    assert recipient.address == "kunde@xn--strae-oqa.example"
    assert "strasse" not in recipient.address


def test_greek_local_part_needs_smtputf8() -> None:
    recipient = validate_address("δοκιμή@παράδειγμα.example")

    assert recipient.local_part == "δοκιμή"
    assert recipient.ascii_domain == "xn--hxajbheg2az3al.example"
    assert recipient.requires_smtputf8 is True


def test_domain_lowercased_local_kept() -> None:
    recipient = validate_address("Ana.Silva@Example.COM")

    assert recipient.address == "Ana.Silva@example.com"


# Message-IDs


def test_message_id_deterministic() -> None:
    first = make_message_id("65a1f0c2e4b0a1b2c3d4e5f6", domain="mailpipe.example")
    second = make_message_id("65a1f0c2e4b0a1b2c3d4e5f6", domain="mailpipe.example")

    assert first == "<65a1f0c2e4b0a1b2c3d4e5f6.mailpipe@mailpipe.example>"
    assert second == first


def test_message_id_differs_per_document() -> None:
    first = make_message_id("doc-1", domain="mailpipe.example")
    second = make_message_id("doc-2", domain="mailpipe.example")

    assert first != second


def test_message_id_encodes_odd_characters() -> None:
    message_id = make_message_id("a b<c>@d.ü", domain="mailpipe.example")

    assert message_id == "<a=20b=3Cc=3E=40d=2E=C3=BC.mailpipe@mailpipe.example>"


def test_message_id_escape_is_injective() -> None:
    plain = make_message_id("=20", domain="mailpipe.example")
    space = make_message_id(" ", domain="mailpipe.example")

    assert plain != space


def test_message_id_idn_domain() -> None:
    message_id = make_message_id("doc", domain="straße.example")

    assert message_id == "<doc.mailpipe@xn--strae-oqa.example>"


def test_message_id_bad_domain_fails() -> None:
    with pytest.raises(ConfigError, match="Invalid Message-ID domain 'bad domain'"):
        make_message_id("doc", domain="bad domain")


def test_message_id_empty_document_fails() -> None:
    with pytest.raises(ValueError, match="document_id"):
        make_message_id("", domain="mailpipe.example")


def test_message_id_parses_back() -> None:
    message_id = make_message_id("weird id/ü", domain="mailpipe.example")

    message = parse(compose(message_id=message_id))

    assert message["Message-ID"] == message_id


# Composition and round trips


def test_french_subject_round_trips() -> None:
    content = RenderedContent(subject=FRENCH_SUBJECT, text="Bonjour\n", html=None)

    message = parse(compose(content=content))

    assert message["Subject"] == FRENCH_SUBJECT


def test_icelandic_from_name_round_trips() -> None:
    message = parse(compose(from_name=ICELANDIC_NAME))

    assert message["From"].addresses[0].display_name == ICELANDIC_NAME
    assert message["From"].addresses[0].addr_spec == "news@mailpipe.example"


def test_ascii_message_is_pure_ascii() -> None:
    content = RenderedContent(subject=FRENCH_SUBJECT, text="Café ☕\n", html="<p>Café ☕</p>\n")

    composed = compose(from_name=ICELANDIC_NAME, to_name="Zoë", content=content)

    assert composed.requires_smtputf8 is False
    assert composed.message.isascii()


def test_headers_folded_to_78_characters() -> None:
    content = RenderedContent(subject=FRENCH_SUBJECT, text="Bonjour\n", html="<p>Bonjour</p>")

    composed = compose(from_name=ICELANDIC_NAME, content=content)

    header_block = composed.message.split(b"\r\n\r\n", 1)[0]
    for line in header_block.split(b"\r\n"):
        assert len(line) <= 78, line


def test_lines_end_with_crlf() -> None:
    composed = compose()

    assert b"\r\n" in composed.message
    assert b"\n" not in composed.message.replace(b"\r\n", b"")


def test_ascii_specials_in_name_quoted() -> None:
    message = parse(compose(to_name='Silva, Ana "AS" <VIP>'))

    assert message["To"].addresses[0].display_name == 'Silva, Ana "AS" <VIP>'
    assert message["To"].addresses[0].addr_spec == "ana@example.com"


def test_smtputf8_message_uses_utf8_headers() -> None:
    to = validate_address("δοκιμή@παράδειγμα.example")
    content = RenderedContent(subject=FRENCH_SUBJECT, text="Γειά σου\n", html=None)

    composed = compose(to=to, to_name="Δοκιμή", from_name=ICELANDIC_NAME, content=content)

    assert composed.requires_smtputf8 is True
    assert "δοκιμή@xn--hxajbheg2az3al.example".encode() in composed.message
    assert b"=?utf-8?" not in composed.message


def test_smtputf8_body_is_7bit() -> None:
    to = validate_address("δοκιμή@παράδειγμα.example")
    content = RenderedContent(subject="Γειά", text="Γειά σου\n", html="<p>Γειά σου</p>\n")

    composed = compose(to=to, content=content)

    body = composed.message.split(b"\r\n\r\n", 1)[1]
    assert body.isascii()


def test_smtputf8_headers_round_trip() -> None:
    to = validate_address("δοκιμή@παράδειγμα.example")
    content = RenderedContent(subject=FRENCH_SUBJECT, text="Γειά σου\n", html=None)

    composed = compose(to=to, to_name="Δοκιμή", from_name=ICELANDIC_NAME, content=content)
    message = parse_utf8(composed)

    assert message["Subject"] == FRENCH_SUBJECT
    assert message["From"].addresses[0].display_name == ICELANDIC_NAME
    assert message["To"].addresses[0].display_name == "Δοκιμή"
    assert message["To"].addresses[0].addr_spec == "δοκιμή@xn--hxajbheg2az3al.example"
    assert decoded_body(parse(composed)) == "Γειά σου\n"


def test_envelope_uses_ascii_domain() -> None:
    composed = compose(
        from_address="news@straße.example", to=validate_address("info@bücher.example")
    )

    assert composed.envelope_from == "news@xn--strae-oqa.example"
    assert composed.envelope_to == "info@xn--bcher-kva.example"
    assert parse(composed)["To"].addresses[0].addr_spec == "info@xn--bcher-kva.example"


def test_non_ascii_sender_needs_smtputf8() -> None:
    composed = compose(from_address="jürgen@bücher.example")

    assert composed.requires_smtputf8 is True


def test_multipart_alternative_with_html() -> None:
    content = RenderedContent(subject="Hi", text="Plain é\n", html="<p>Rich é</p>\n")

    message = parse(compose(content=content))

    assert message.get_content_type() == "multipart/alternative"
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    assert text_part is not None
    assert html_part is not None
    assert decoded_body(text_part) == "Plain é\n"
    assert decoded_body(html_part) == "<p>Rich é</p>\n"


def test_same_input_same_bytes() -> None:
    sent_at = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)

    first = compose(date=sent_at)
    second = compose(date=sent_at)

    assert first.message == second.message


def test_boundary_avoids_body_text() -> None:
    sent_at = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)
    boundary = parse(compose(date=sent_at)).get_boundary()
    assert boundary is not None
    text = f"Before\n--{boundary}\nAfter\n"
    content = RenderedContent(subject="Hi", text=text, html="<p>Hi</p>\n")

    message = parse(compose(date=sent_at, content=content))

    text_part = message.get_body(preferencelist=("plain",))
    assert message.get_boundary() != boundary
    assert text_part is not None
    assert decoded_body(text_part) == text


def test_text_only_without_html() -> None:
    content = RenderedContent(subject="Hi", text="Plain only\n", html=None)

    message = parse(compose(content=content))

    assert message.get_content_type() == "text/plain"
    assert decoded_body(message) == "Plain only\n"


def test_standard_headers_present() -> None:
    sent_at = datetime(2026, 3, 1, 9, 30, tzinfo=timezone.utc)

    message = parse(compose(date=sent_at, reply_to="support@mailpipe.example"))

    assert message["Date"].datetime == sent_at
    assert message["Message-ID"] == "<doc1.mailpipe@mailpipe.example>"
    assert message["Reply-To"].addresses[0].addr_spec == "support@mailpipe.example"
    assert message["MIME-Version"] == "1.0"


def test_date_defaults_to_now() -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)

    message = parse(compose())

    assert message["Date"].datetime >= before


def test_extra_headers_added() -> None:
    unsubscribe = "<mailto:unsubscribe@mailpipe.example?subject=u-42>"
    headers = {"List-Unsubscribe": unsubscribe, "X-Mailpipe-Id": "doc1"}

    message = parse(compose(headers=headers))

    assert message["List-Unsubscribe"] == unsubscribe
    assert message["X-Mailpipe-Id"] == "doc1"


def test_result_fields() -> None:
    composed = compose()

    assert composed.envelope_from == "news@mailpipe.example"
    assert composed.envelope_to == "ana@example.com"
    assert composed.message_id == "<doc1.mailpipe@mailpipe.example>"


# Bad input


@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\r"])
@pytest.mark.parametrize("field", ["from_name", "to_name"])
def test_line_break_in_name_fails(field: str, line_break: str) -> None:
    error = compose_error(**{field: f"Ana{line_break}Bcc: victim@example.com"})

    assert "display name" in error.reason
    assert "line break" in error.reason


@pytest.mark.parametrize("line_break", ["\r\n", "\n", "\r"])
def test_line_break_in_subject_fails(line_break: str) -> None:
    content = RenderedContent(subject=f"Hi{line_break}Bcc: x@example.com", text="", html=None)

    error = compose_error(content=content)

    assert "subject" in error.reason
    assert "line break" in error.reason


@pytest.mark.parametrize("character", ["\x00", "\x1b", "\u2028", "\x85"])
def test_control_character_in_name_fails(character: str) -> None:
    error = compose_error(to_name=f"Ana{character}Silva")

    assert "control character" in error.reason


def test_line_break_in_extra_header_fails() -> None:
    error = compose_error(headers={"X-Mailpipe-Id": "doc1\r\nBcc: x@example.com"})

    assert "X-Mailpipe-Id header" in error.reason


@pytest.mark.parametrize("name", ["Subject", "bcc", "Content-Type"])
def test_reserved_extra_header_fails(name: str) -> None:
    error = compose_error(headers={name: "value"})

    assert "set by compose_email" in error.reason


@pytest.mark.parametrize("name", ["Bad Name", "Colon:", ""])
def test_invalid_header_name_fails(name: str) -> None:
    error = compose_error(headers={name: "value"})

    assert "Invalid header name" in error.reason


@pytest.mark.parametrize("message_id", ["doc1@example", "<doc1>", "<a b@example>"])
def test_malformed_message_id_fails(message_id: str) -> None:
    error = compose_error(message_id=message_id)

    assert "Invalid Message-ID" in error.reason


def test_invalid_reply_to_fails() -> None:
    error = compose_error(reply_to="support@@mailpipe.example")

    assert "support@@mailpipe.example" in error.reason


def test_two_megabyte_body_fails() -> None:
    body = "x" * 2_000_000
    content = RenderedContent(subject="Big", text=body, html=None)

    error = compose_error(content=content, max_message_bytes=1_000_000)

    assert "2000000 bytes" in error.reason
    assert "1000000 bytes" in error.reason


def test_encoding_overhead_counts_toward_limit() -> None:
    # 28,000 bytes of UTF-8 fit under the limit, but base64 or quoted-printable makes the
    # encoded body at least a third larger.
    content = RenderedContent(subject="Accents", text="é" * 14_000, html=None)

    error = compose_error(content=content, max_message_bytes=30_000)

    assert "The message is" in error.reason
    assert "30000 bytes" in error.reason


def test_message_under_limit_passes() -> None:
    content = RenderedContent(subject="Fits", text="x" * 10_000, html=None)

    composed = compose(content=content, max_message_bytes=20_000)

    assert len(composed.message) <= 20_000


def test_recipient_is_frozen() -> None:
    recipient = validate_address("ana@example.com")

    with pytest.raises(AttributeError):
        recipient.address = "eve@example.com"  # type: ignore[misc]
