"""Shared fixtures for tests that use the local servers from `make services`.

Each test that needs them gets its own MySQL database, MongoDB database and uniquely named email
groups (hence RabbitMQ queues), so tests never see each other's data. All are removed afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pymongo
import pymysql
import pytest

from mailpipe.config import ENVIRONMENT_DEFAULTS
from mailpipe.adapters.mysql import connection_arguments


@pytest.fixture
def unique_name() -> str:
    return f"mp{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mysql_url(unique_name: str) -> Iterator[str]:
    arguments = connection_arguments(ENVIRONMENT_DEFAULTS["MAILPIPE_MYSQL_URL"])
    server = {key: arguments[key] for key in ("host", "port", "user", "password")}
    connection = pymysql.connect(**server, autocommit=True)
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{unique_name}` CHARACTER SET utf8mb4")
    yield f"mysql://{server['user']}:{server['password']}@{server['host']}:{server['port']}/{unique_name}"
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS `{unique_name}`")
    connection.close()


@pytest.fixture
def mongodb_url(unique_name: str) -> Iterator[str]:
    base = ENVIRONMENT_DEFAULTS["MAILPIPE_MONGODB_URL"].rsplit("/", 1)[0]
    yield f"{base}/{unique_name}"
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(base, serverSelectionTimeoutMS=5000)
    client.drop_database(unique_name)
    client.close()
