"""Bad input fails alone, with its reason recorded, while the rest of the chunk is sent."""

from __future__ import annotations

import email
import email.policy
import json
from typing import Any

import pytest

from pipeline_harness import FaultySmtpServer, Harness, SinkServer

pytestmark = pytest.mark.services

FRENCH_SUBJECT = (
    "Rappel : votre commande n° 88412 — livraison prévue à Besançon, frais réduits pour l'abonnement « Premium »"
)
ICELANDIC_SENDER = "Ægir Þórsson, Ventes & Co"


def _outbox(harness: Harness, *, user_id: int, template_id: int, params: dict[str, Any] | None = None) -> str:
    harness.database.execute(
        "INSERT INTO email_outbox (email_group, user_id, template_id, params) VALUES (%s, %s, %s, %s)",
        (harness.group, user_id, template_id, json.dumps(params or {})),
    )
    return f"o{harness.database.query('SELECT LAST_INSERT_ID() AS id')[0]['id']}"


def _reason(harness: Harness, email_id: str) -> str:
    dequeued = harness.dequeued()
    assert email_id in dequeued, f"{email_id} was not dequeued; statuses {harness.statuses()}"
    return str(dequeued[email_id]["reason"])


def test_each_bad_input_fails_alone(harness: Harness, faulty_smtp: Any) -> None:
    server: FaultySmtpServer = faulty_smtp(reject_permanently={"rejected@example.com"})
    harness = harness.with_smtp(server.url)
    good = harness.add_template(subject="Hello {{ first_name | default('there') }}", text="Body {{ note | default('') }}")
    strict = harness.add_template(subject="Hello {{ first_name }}", text="Body")
    undefined = harness.add_template(subject="Hi", text="Your code is {{ code }}")
    broken = harness.add_template(subject="Hi", text="{% if %}")
    line_break_subject = harness.add_template(subject="Hi\r\nBcc: victim@example.com", text="Body")
    users = harness.add_users([
        {"email": "a..b@example.com"},
        {"email": "x@example.com>"},
        {"email": "no-domain"},
        {"email": "two@@example.com"},
        {"email": "eve@example.com", "first_name": "Eve\r\nBcc: victim@example.com"},
        {"email": "null@example.com", "first_name": None},
        {"email": "fine@example.com"},
        {"email": "rejected@example.com"},
    ])
    expectations = {
        _outbox(harness, user_id=users[0], template_id=good): "a..b@example.com",
        _outbox(harness, user_id=users[1], template_id=good): "x@example.com>",
        _outbox(harness, user_id=users[2], template_id=good): "no-domain",
        _outbox(harness, user_id=users[3], template_id=good): "two@@example.com",
        _outbox(harness, user_id=users[4], template_id=good): "line break",
        _outbox(harness, user_id=users[5], template_id=strict): "first_name",
        _outbox(harness, user_id=users[6], template_id=undefined): "code",
        _outbox(harness, user_id=users[6], template_id=broken): "syntax",
        _outbox(harness, user_id=users[6], template_id=line_break_subject): "line break",
        _outbox(harness, user_id=999_999, template_id=good): "user 999999 not found",
        _outbox(harness, user_id=users[6], template_id=good, params={"note": "x" * 2_000_000}): "bytes",
        _outbox(harness, user_id=users[7], template_id=good): "550",
    }
    fine = _outbox(harness, user_id=users[6], template_id=good)

    harness.populate()
    harness.publish()
    harness.consume()

    for email_id, expected in expectations.items():
        assert expected.lower() in _reason(harness, email_id).lower(), email_id
    assert harness.document(fine)["status"] == "sent"
    assert len(server.accepted) == 1
    assert harness.document(list(expectations)[-1])["attempt_count"] == 1


def test_headers_round_trip_and_idna(harness: Harness, smtp_sink: SinkServer) -> None:
    sender = harness.config.spec.sender.model_copy(update={"from_name": ICELANDIC_SENDER})
    spec = harness.config.spec.model_copy(update={"sender": sender})
    harness = harness.with_smtp(smtp_sink.url)
    harness.config = harness.config.model_copy(update={"spec": spec})
    template = harness.add_template(subject=FRENCH_SUBJECT, text="Bonjour")
    users = harness.add_users([{"email": "kunde@straße.example"}, {"email": "client@bücher.example"}])
    ids = [_outbox(harness, user_id=user, template_id=template) for user in users]

    harness.populate()
    harness.publish()
    harness.consume()

    raw = {path.read_bytes() for path in smtp_sink.dump_directory.rglob("*") if path.is_file()}
    envelopes = sorted(line for message in raw for line in message.splitlines() if line.startswith(b"X-Rcpt-Args"))
    assert envelopes == [b"X-Rcpt-Args: <client@xn--bcher-kva.example>", b"X-Rcpt-Args: <kunde@xn--strae-oqa.example>"]
    for message in smtp_sink.messages():
        assert message["Subject"] == FRENCH_SUBJECT
        assert message["From"].addresses[0].display_name == ICELANDIC_SENDER
    assert all(harness.document(email_id)["status"] == "sent" for email_id in ids)


def test_unicode_local_part_needs_smtputf8(harness: Harness, faulty_smtp: Any) -> None:
    with_utf8: FaultySmtpServer = faulty_smtp(smtputf8=True)
    without_utf8: FaultySmtpServer = faulty_smtp(smtputf8=False)
    template = harness.add_template(subject="Γεια", text="Καλημέρα")
    user = harness.add_users([{"email": "δοκιμή@παράδειγμα.example"}])[0]
    first = _outbox(harness, user_id=user, template_id=template)
    harness.populate()
    harness.publish()

    harness.with_smtp(without_utf8.url).consume()
    second = _outbox(harness, user_id=user, template_id=template)
    harness.populate()
    harness.publish()
    harness.with_smtp(with_utf8.url).consume()

    assert "SMTPUTF8" in _reason(harness, first)
    assert harness.document(second)["status"] == "sent"
    recipient, message, options = with_utf8.accepted[0]
    assert recipient == "δοκιμή@xn--hxajbheg2az3al.example"
    assert "SMTPUTF8" in [option.upper() for option in options]
    assert email.message_from_bytes(message, policy=email.policy.default)["Subject"] == "Γεια"
