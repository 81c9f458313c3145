"""Shared helpers of the chart tests: locating the tools, rendering the chart, reading metric names.

The tools come from `make tools` (Helm, kubectl, built into the cache that scripts/build-tools.sh
fills) and from Debian's prometheus package (promtool). A test skips only when its tool is absent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailpipe"
DASHBOARDS = CHART / "files" / "dashboards"
ALERT_RULES = CHART / "files" / "alert-rules.yaml"
# scripts/cluster.sh writes the admin kubeconfig of the local control plane here.
KUBECONFIG = Path(os.environ.get("MAILPIPE_STATE_DIR", REPO / ".run")) / "cluster" / "kubeconfig"

# Values that switch on every optional object of the chart.
ALL_FEATURES = (
    "dashboards.enabled=true",
    "prometheusRule.enabled=true",
    "examplePipeline.enabled=true",
)


def tool_versions() -> dict[str, str]:
    """Read the VERSION variables of scripts/versions.sh, which also keys the tools cache."""
    versions = {}
    for line in (REPO / "scripts" / "versions.sh").read_text().splitlines():
        match = re.fullmatch(r"([A-Z_]+)_VERSION=(\S+)", line.strip())
        if match:
            versions[match.group(1).lower()] = match.group(2)
    return versions


def kubernetes_version() -> str:
    """The Kubernetes release of the local control plane, without the leading v."""
    return tool_versions()["kubernetes"].lstrip("v")


def find_tool(name: str, *, cache_folder: str | None = None) -> str:
    """Return the path of a tool from the tools cache or PATH, or skip the test naming the fix."""
    if cache_folder is not None:
        tools_dir = Path(os.environ.get("MAILPIPE_TOOLS_DIR", Path.home() / ".cache" / "mailpipe" / "tools"))
        cached = tools_dir / cache_folder / "bin" / name
        if cached.is_file() and os.access(cached, os.X_OK):
            return str(cached)
    found = shutil.which(name)
    if found is None:
        hint = "run `make tools`" if cache_folder else "install Debian's prometheus package (`make packages`)"
        pytest.skip(f"{name} not found in the tools cache or on PATH; {hint}")
    return found


def run(command: Sequence[str], *, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command and return its result without raising, so that tests can assert on stderr."""
    return subprocess.run(list(command), input=input_text, capture_output=True, text=True, timeout=120)


def set_arguments(values: Iterable[str]) -> list[str]:
    """Turn `key=value` strings into Helm `--set` arguments."""
    arguments = []
    for value in values:
        arguments += ["--set", value]
    return arguments


def helm_template(
    helm: str,
    *values: str,
    namespace: str = "mailpipe",
    release: str = "mp",
    values_files: Sequence[Path] = (),
) -> subprocess.CompletedProcess[str]:
    """Render the chart with `helm template`. The Kubernetes version is given because a Helm
    built without release flags defaults to v1.20, older than the chart's kubeVersion."""
    command = [
        helm, "template", release, str(CHART),
        "--namespace", namespace,
        "--kube-version", kubernetes_version(),
        *[argument for path in values_files for argument in ("--values", str(path))],
        *set_arguments(values),
    ]
    return run(command)


def render(
    helm: str,
    *values: str,
    namespace: str = "mailpipe",
    release: str = "mp",
    values_files: Sequence[Path] = (),
) -> list[dict[str, Any]]:
    """Render the chart and return its objects, failing the test with Helm's message on error."""
    result = helm_template(helm, *values, namespace=namespace, release=release, values_files=values_files)
    assert result.returncode == 0, f"helm template failed with {values}:\n{result.stderr}"
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def objects_of_kind(objects: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [item for item in objects if item["kind"] == kind]


# Sample names that prometheus_client exposes for a metric family of each type.
SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def exported_metric_names() -> set[str]:
    """Collect every sample name that mailpipe.metrics exports.

    The module's collectors are registered into a fresh registry and read from its metric
    families. Families are used instead of samples because a labelled metric has no samples
    until a child exists, and each family's type gives the suffixes of its samples.
    """
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    import mailpipe.metrics

    registry = CollectorRegistry()
    for value in vars(mailpipe.metrics).values():
        if isinstance(value, MetricWrapperBase):
            registry.register(value)

    names = set()
    for family in registry.collect():
        for suffix in SAMPLE_SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


PROMQL_KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}


def metric_names_in(expression: str) -> set[str]:
    """Extract the metric names that a PromQL expression selects.

    Quoted strings, label matchers, range and subquery brackets and the label lists of grouping
    modifiers are removed first. What remains as an identifier not followed by `(` is a metric.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", text):
        name, is_call = match.group(1), match.group(2)
        if is_call or name.lower() in PROMQL_KEYWORDS:
            continue
        names.add(name)
    return names


def iter_alert_rules() -> Iterator[dict[str, Any]]:
    for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]:
        yield from group["rules"]


def iter_dashboards() -> Iterator[tuple[str, dict[str, Any]]]:
    import json

    for path in sorted(DASHBOARDS.glob("*.json")):
        yield path.name, json.loads(path.read_text())


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Yield every panel that shows data, including those inside collapsed rows."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel
