"""Fixtures of the chart tests: the tool binaries, found once per session."""

from __future__ import annotations

import pytest

from chart_helpers import find_tool, tool_versions


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm", cache_folder=f"helm-{tool_versions()['helm']}")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return find_tool("kubectl", cache_folder=f"kubernetes-{tool_versions()['kubernetes']}")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")
