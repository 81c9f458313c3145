"""Generated but realistic application data for the demo and the benchmark.

Fills the application's MySQL tables: an audience in several locales with non-ASCII names,
internationalized domains, plus-addressing, some unsubscribed and bounced users and a few
invalid addresses; an announcement template and campaign; and transactional outbox requests.
Seeding a database that already has users adds nothing, so running the demo again sends nothing new.
"""

from __future__ import annotations

import json
import logging
import random
import unicodedata
from datetime import UTC, datetime

from faker import Faker

from mailpipe.adapters.mysql import ApplicationDatabase
from mailpipe.config import Config

log = logging.getLogger(__name__)

LOCALES = ("en_US", "fr_FR", "de_DE", "es_ES", "el_GR", "ja_JP", "is_IS")
ASCII_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.example")
UNICODE_DOMAINS = ("bücher.example", "straße.example", "παράδειγμα.example", "日本語.example")
INVALID_ADDRESSES = ("a..b@example.com", "x@example.com>", "no-domain", "two@@example.com")

ANNOUNCEMENT = {
    "name": "winter-announcement",
    "subject": "{{ first_name | default('Hello') }}, our winter collection is here",
    "body_text": (
        "Hello {{ first_name | default('there') }},\n\n"
        "Our winter collection has arrived: warm coats, wool scarves and boots for snowy days.\n"
        "Members get 15% off until the end of the month.\n\n"
        "See you soon,\nThe Mailpipe Outfitters team\n"
    ),
    "body_html": (
        "<html><body><p>Hello {{ first_name | default('there') }},</p>"
        "<p>Our <strong>winter collection</strong> has arrived: warm coats, wool scarves and boots for snowy days.</p>"
        "<p>Members get 15% off until the end of the month.</p>"
        "<p>See you soon,<br>The Mailpipe Outfitters team</p></body></html>"
    ),
}
ORDER_CONFIRMATION = {
    "name": "order-confirmation",
    "subject": "Order {{ order_id }} confirmed",
    "body_text": (
        "Hello {{ first_name | default('there') }},\n\n"
        "Thank you for your order {{ order_id }} of {{ total }}.\n"
        "It will ship within two working days.\n"
    ),
    "body_html": (
        "<html><body><p>Hello {{ first_name | default('there') }},</p>"
        "<p>Thank you for your order <strong>{{ order_id }}</strong> of {{ total }}.</p>"
        "<p>It will ship within two working days.</p></body></html>"
    ),
}


def _ascii_slug(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    slug = "".join(character for character in decomposed if character.isascii() and character.isalnum())
    return slug.lower()


def generate_users(count: int, *, seed: int = 7) -> list[tuple[object, ...]]:
    """Return `count` user rows (email, first_name, last_name, locale, unsubscribed_at, bounced_at)."""
    rng = random.Random(seed)
    fakers = {locale: Faker(locale) for locale in LOCALES}
    for index, faker in enumerate(fakers.values()):
        faker.seed_instance(seed + index)
    now = datetime.now(UTC).replace(tzinfo=None)
    rows: list[tuple[object, ...]] = []
    for number in range(count):
        locale = LOCALES[number % len(LOCALES)]
        faker = fakers[locale]
        first_name: str | None = faker.first_name()
        last_name = faker.last_name()
        local_part = f"{_ascii_slug(first_name or '') or 'user'}.{_ascii_slug(last_name) or 'x'}{number}"
        roll = rng.random()
        if roll < 0.01:
            email = INVALID_ADDRESSES[number % len(INVALID_ADDRESSES)]
        elif roll < 0.06:
            email = f"{local_part}@{UNICODE_DOMAINS[number % len(UNICODE_DOMAINS)]}"
        elif roll < 0.11:
            email = f"{local_part}+news@{ASCII_DOMAINS[number % len(ASCII_DOMAINS)]}"
        else:
            email = f"{local_part}@{ASCII_DOMAINS[number % len(ASCII_DOMAINS)]}"
        if rng.random() < 0.02:
            first_name = None
        unsubscribed_at = now if rng.random() < 0.03 else None
        bounced_at = now if rng.random() < 0.01 else None
        rows.append((email, first_name, last_name, locale, unsubscribed_at, bounced_at))
    return rows


def insert_template(database: ApplicationDatabase, template: dict[str, str]) -> int:
    database.execute(
        "INSERT INTO templates (name, subject, body_text, body_html) VALUES (%s, %s, %s, %s)"
        " ON DUPLICATE KEY UPDATE subject = VALUES(subject), body_text = VALUES(body_text), body_html = VALUES(body_html)",
        (template["name"], template["subject"], template["body_text"], template["body_html"]),
    )
    return int(database.query("SELECT id FROM templates WHERE name = %s", (template["name"],))[0]["id"])


def insert_outbox_requests(database: ApplicationDatabase, *, count: int, template_id: int, user_count: int, seed: int) -> None:
    rng = random.Random(seed)
    user_ids = [row["id"] for row in database.query("SELECT id FROM users ORDER BY id LIMIT %s", (user_count,))]
    rows = []
    for _ in range(count):
        order_id = f"MP-{rng.randrange(100000, 999999)}"
        params = {"order_id": order_id, "total": f"{rng.randrange(5, 500)}.{rng.randrange(0, 99):02d} EUR"}
        rows.append(("transactional", rng.choice(user_ids), template_id, json.dumps(params)))
    database.execute_many(
        "INSERT INTO email_outbox (email_group, user_id, template_id, params) VALUES (%s, %s, %s, %s)", rows
    )


def seed(config: Config, *, users: int, transactional: int, campaign_group: str = "announcements") -> bool:
    """Seed the database unless it already has users; return whether anything was added."""
    database = ApplicationDatabase(config.connections.mysql_url)
    try:
        database.apply_schema()
        existing = int(database.query("SELECT COUNT(*) AS n FROM users")[0]["n"])
        if existing:
            log.info("seed: the database already has %d users; adding nothing", existing)
            return False
        log.info("seed: generating %d users in %d locales", users, len(LOCALES))
        rows = generate_users(users)
        for start in range(0, len(rows), 5000):
            database.execute_many(
                "INSERT INTO users (email, first_name, last_name, locale, unsubscribed_at, bounced_at)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                rows[start : start + 5000],
            )
        announcement_id = insert_template(database, ANNOUNCEMENT)
        order_id = insert_template(database, ORDER_CONFIRMATION)
        database.execute(
            "INSERT INTO campaigns (name, template_id, email_group, audience, due_at) VALUES (%s, %s, %s, 'all', %s)",
            ("Winter collection", announcement_id, campaign_group, datetime.now(UTC).replace(tzinfo=None)),
        )
        insert_outbox_requests(database, count=transactional, template_id=order_id, user_count=users, seed=11)
        log.info("seed: %d users, one campaign and %d transactional requests added", users, transactional)
        return True
    finally:
        database.close()
