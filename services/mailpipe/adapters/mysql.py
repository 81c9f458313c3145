"""The application's MySQL database, read-only: users, templates, campaigns and the outbox.

Every look-up takes a whole chunk (`WHERE id IN (...)` or a keyset page), never one row per email.
PyMySQL errors become ServiceUnavailableError.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import pymysql
import pymysql.cursors

from mailpipe.errors import ConfigError, ServiceUnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class User:
    id: int
    email: str
    first_name: str | None
    last_name: str | None
    locale: str
    unsubscribed: bool
    bounced: bool


@dataclass(frozen=True)
class Template:
    id: int
    subject: str
    body_text: str
    body_html: str | None
    updated_at: datetime


@dataclass(frozen=True)
class Campaign:
    id: int
    name: str
    template_id: int
    group: str
    audience: str
    due_at: datetime


@dataclass(frozen=True)
class OutboxRow:
    id: int
    group: str
    user_id: int
    template_id: int
    params: dict[str, Any]
    created_at: datetime
    params_error: str | None = None  # why `params` could not be read; the email then fails alone


def connection_arguments(url: str) -> dict[str, Any]:
    """Translate `mysql://user:password@host:port/database` into PyMySQL's keyword arguments."""
    parts = urlsplit(url)
    if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not parts.path.strip("/"):
        raise ConfigError("MAILPIPE_MYSQL_URL must look like mysql://user:password@host:3306/database")
    return {
        "host": parts.hostname,
        "port": parts.port or 3306,
        "user": unquote(parts.username or ""),
        "password": unquote(parts.password or ""),
        "database": parts.path.strip("/"),
    }


def _utc(value: datetime) -> datetime:
    # The schema stores UTC in DATETIME columns, which come back naive.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class ApplicationDatabase:
    """Reads the application's tables. One connection, reconnected when the server dropped it."""

    def __init__(self, url: str, *, connect_timeout_seconds: float = 10.0) -> None:
        self._arguments = connection_arguments(url)
        self._connect_timeout_seconds = connect_timeout_seconds
        self._connection: pymysql.connections.Connection[Any] | None = None

    def _connect(self) -> pymysql.connections.Connection[Any]:
        if self._connection is not None:
            try:
                self._connection.ping(reconnect=False)
                return self._connection
            except pymysql.Error:
                # The server closed the connection (idle timeout, restart): open a new one.
                self.close()
        try:
            self._connection = pymysql.connect(
                **self._arguments,
                charset="utf8mb4",
                autocommit=True,
                connect_timeout=int(self._connect_timeout_seconds),
                cursorclass=pymysql.cursors.DictCursor,
                init_command="SET time_zone = '+00:00'",
            )
        except pymysql.MySQLError as error:
            raise ServiceUnavailableError(
                f"cannot connect to MySQL at {self._arguments['host']}:{self._arguments['port']}: {error}"
            ) from error
        return self._connection

    @contextmanager
    def _cursor(self) -> Iterator[pymysql.cursors.DictCursor]:
        connection = self._connect()
        try:
            with connection.cursor() as cursor:
                yield cursor
        except (pymysql.OperationalError, pymysql.InterfaceError) as error:
            # A lost connection or a server-side failure: drop the connection so the next call
            # reconnects, and let the role stop this chunk.
            self.close()
            raise ServiceUnavailableError(f"MySQL query failed: {error}") from error

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except pymysql.Error:
                # Closing a connection that is already broken: nothing left to release.
                pass
            self._connection = None

    def apply_schema(self) -> None:
        """Create the contract's tables when missing (for the demo and the tests)."""
        schema = resources.files("mailpipe").joinpath("sql/schema.sql").read_text(encoding="utf-8")
        # The schema's comments contain semicolons, and none of its strings contains "--".
        without_comments = re.sub(r"--[^\n]*", "", schema)
        statements = [part.strip() for part in without_comments.split(";") if part.strip()]
        with self._cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def due_campaigns(self, now: datetime) -> list[Campaign]:
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT id, name, template_id, email_group, audience, due_at FROM campaigns"
                " WHERE due_at <= %s AND cancelled_at IS NULL ORDER BY due_at, id",
                (now.astimezone(UTC).replace(tzinfo=None),),
            )
            rows = cursor.fetchall()
        return [
            Campaign(
                id=row["id"],
                name=row["name"],
                template_id=row["template_id"],
                group=row["email_group"],
                audience=row["audience"],
                due_at=_utc(row["due_at"]),
            )
            for row in rows
        ]

    def audience_page(self, audience: str, *, after_user_id: int, limit: int) -> list[User]:
        """Return the next `limit` users of an audience after `after_user_id`, in id order.

        Unsubscribed and bounced users are included (and flagged) so that the caller can count
        them, and so that a page of only skipped users is not mistaken for the end.
        """
        condition, parameters = _audience_condition(audience)
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT id, email, first_name, last_name, locale,"
                " unsubscribed_at IS NOT NULL AS unsubscribed, bounced_at IS NOT NULL AS bounced"
                f" FROM users WHERE id > %s AND {condition} ORDER BY id LIMIT %s",
                (after_user_id, *parameters, limit),
            )
            return [_user(row) for row in cursor.fetchall()]

    def outbox_page(self, *, after_id: int, limit: int) -> list[OutboxRow]:
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT id, email_group, user_id, template_id, params, created_at FROM email_outbox"
                " WHERE id > %s ORDER BY id LIMIT %s",
                (after_id, limit),
            )
            rows = cursor.fetchall()
        return [_outbox_row(row) for row in rows]

    def users_by_id(self, user_ids: Iterable[int]) -> dict[int, User]:
        ids = sorted(set(user_ids))
        if not ids:
            return {}
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT id, email, first_name, last_name, locale,"
                " unsubscribed_at IS NOT NULL AS unsubscribed, bounced_at IS NOT NULL AS bounced"
                f" FROM users WHERE id IN ({_placeholders(ids)})",
                ids,
            )
            return {row["id"]: _user(row) for row in cursor.fetchall()}

    def templates_by_id(self, template_ids: Iterable[int]) -> dict[int, Template]:
        ids = sorted(set(template_ids))
        if not ids:
            return {}
        with self._cursor() as cursor:
            cursor.execute(
                "SELECT id, subject, body_text, body_html, updated_at FROM templates"
                f" WHERE id IN ({_placeholders(ids)})",
                ids,
            )
            return {
                row["id"]: Template(
                    id=row["id"],
                    subject=row["subject"],
                    body_text=row["body_text"],
                    body_html=row["body_html"],
                    updated_at=_utc(row["updated_at"]),
                )
                for row in cursor.fetchall()
            }

    def execute(self, statement: str, parameters: Sequence[Any] = ()) -> int:
        """Run one statement (the demo's seeding and the tests use this); returns the row count."""
        with self._cursor() as cursor:
            return int(cursor.execute(statement, parameters))

    def execute_many(self, statement: str, rows: Sequence[Sequence[Any]]) -> int:
        with self._cursor() as cursor:
            return int(cursor.executemany(statement, rows) or 0)

    def query(self, statement: str, parameters: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._cursor() as cursor:
            cursor.execute(statement, parameters)
            return list(cursor.fetchall())


def _placeholders(values: Sequence[Any]) -> str:
    return ", ".join(["%s"] * len(values))


def _audience_condition(audience: str) -> tuple[str, tuple[Any, ...]]:
    if audience == "all":
        return "TRUE", ()
    if audience.startswith("locale:") and len(audience) > len("locale:"):
        return "locale = %s", (audience.removeprefix("locale:"),)
    raise ConfigError(f"unknown campaign audience {audience!r}; expected 'all' or 'locale:<code>'; insert a corrected campaign row")


def _user(row: dict[str, Any]) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        first_name=row["first_name"],
        last_name=row["last_name"],
        locale=row["locale"],
        unsubscribed=bool(row["unsubscribed"]),
        bounced=bool(row["bounced"]),
    )


def _outbox_row(row: dict[str, Any]) -> OutboxRow:
    params: dict[str, Any] = {}
    params_error = None
    try:
        decoded = json.loads(row["params"]) if isinstance(row["params"], (str, bytes)) else row["params"]
    except ValueError as error:
        params_error = f"outbox row {row['id']}: params is not valid JSON: {error}"
    else:
        if isinstance(decoded, dict):
            params = decoded
        elif decoded is not None:
            params_error = f"outbox row {row['id']}: params must be a JSON object, not {type(decoded).__name__}"
    return OutboxRow(
        id=row["id"],
        group=row["email_group"],
        user_id=row["user_id"],
        template_id=row["template_id"],
        params=params,
        created_at=_utc(row["created_at"]),
        params_error=params_error,
    )
