"""Test pipelines and polling shared by the operator's unit and cluster tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from mailpipe.config import parse_spec
from mailpipe_operator.builders.meta import Pipeline

T = TypeVar("T")


def make_pipeline(spec: dict[str, Any] | None = None, *, name: str = "news", namespace: str = "mail") -> Pipeline:
    return Pipeline(name=name, namespace=namespace, uid="uid-1234", spec=parse_spec(spec or {}, source="test"))


def wait_for(
    check: Callable[[], T | None],
    *,
    timeout_seconds: float = 60,
    message: str,
    describe: Callable[[], object] | None = None,
) -> T:
    """Poll `check` until it returns something truthy; fail with `message` after the timeout,
    adding what `describe` returns then, such as the resource's conditions."""
    deadline = time.monotonic() + timeout_seconds
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.25)
    state = f"; state: {describe()!r}" if describe else ""
    pytest.fail(f"timed out after {timeout_seconds}s: {message} (last value: {last!r}){state}")
