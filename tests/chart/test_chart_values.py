"""values.yaml documents every value, the schema rejects invalid values naming the key, and the
template helpers follow the chart's naming rules."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from chart_helpers import CHART, helm_template

VALUES_FILE = CHART / "values.yaml"
PARAM_LINE = re.compile(r"^\s*## @param ([A-Za-z0-9_.]+) \S")


def value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Yield the dotted path of every key, nested maps included (lists count as leaves)."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from value_paths(value, prefix=f"{path}.")


def documented_paths() -> set[str]:
    return {match.group(1) for line in VALUES_FILE.read_text().splitlines() if (match := PARAM_LINE.match(line))}


def leaf_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Yield the dotted path of every value that is not a non-empty map."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaf_paths(value, prefix=f"{path}.")
        else:
            yield path


def test_every_value_has_param_comment() -> None:
    documented = documented_paths()
    values = yaml.safe_load(VALUES_FILE.read_text())
    for path in leaf_paths(values):
        # A map documented as a whole (resources, nodeSelector, the example's spec) covers its keys.
        ancestors = [".".join(path.split(".")[:depth]) for depth in range(1, path.count(".") + 1)]
        if any(ancestor in documented for ancestor in ancestors):
            continue
        assert path in documented, f"values.yaml: {path} has no '## @param {path} <description>' line"


def test_every_param_comment_names_existing_value() -> None:
    paths = set(value_paths(yaml.safe_load(VALUES_FILE.read_text())))
    for documented in documented_paths():
        assert documented in paths, f"values.yaml documents {documented}, which is not a value"


FREE_FORM_MAPS = {"commonLabels", "commonAnnotations", "labels", "annotations", "podLabels", "podAnnotations", "nodeSelector"}


def test_value_keys_are_camel_case() -> None:
    values = yaml.safe_load(VALUES_FILE.read_text())
    for path in value_paths(values):
        parent, _, key = path.rpartition(".")
        # Label, annotation and node selector maps contain Kubernetes label keys, not value names.
        if parent.rpartition(".")[2] in FREE_FORM_MAPS:
            continue
        assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", key), f"values.yaml: {path} is not camelCase"


def test_schema_describes_every_top_level_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load(VALUES_FILE.read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values)


# Each invalid setting, and the key that Helm's message must name. Schema errors name the key as a
# JSON pointer (/operator/replicaCount); the template's own checks name it in dotted form.
INVALID_VALUES = [
    ("operator.replicaCount=2", "/operator/replicaCount"),
    ("operator.logLevel=warning", "/operator/logLevel"),
    ("operator.watchNamespaces={Mail_Pipe}", "/operator/watchNamespaces/0"),
    ("operator.watchNamespaces={mailpipe,mailpipe}", "/operator/watchNamespaces"),
    ("operator.healthPort=80", "/operator/healthPort"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("image.digest=latest", "/image/digest"),
    ("image.repository=", "/image/repository"),
    ("operatr.replicaCount=1", "operatr"),
    ("dashboards.enabled=yes", "/dashboards/enabled"),
    ("examplePipeline.name=Not_A_Name", "/examplePipeline/name"),
    ("serviceAccount.create=false", "serviceAccount.name"),
]


@pytest.mark.parametrize(("setting", "key"), INVALID_VALUES, ids=[setting for setting, _ in INVALID_VALUES])
def test_invalid_value_fails_naming_key(helm: str, setting: str, key: str) -> None:
    result = helm_template(helm, setting)
    assert result.returncode != 0, f"helm template accepted {setting}"
    assert key in result.stderr, f"the error for {setting} does not name {key}:\n{result.stderr}"


def test_example_outside_watched_namespaces_fails_naming_key(helm: str) -> None:
    result = helm_template(helm, "examplePipeline.enabled=true", "operator.watchNamespaces={campaigns}", namespace="mailpipe")
    assert result.returncode != 0
    assert "examplePipeline.enabled" in result.stderr
    assert "operator.watchNamespaces" in result.stderr


def helper_definitions() -> list[tuple[str, str]]:
    """Return each `define` in _helpers.tpl with the line before it."""
    lines = (CHART / "templates" / "_helpers.tpl").read_text().splitlines()
    definitions = []
    for index, line in enumerate(lines):
        match = re.match(r'\{\{-? define "([^"]+)"', line)
        if match:
            definitions.append((match.group(1), lines[index - 1] if index else ""))
    return definitions


def test_helpers_are_prefixed_with_chart_name() -> None:
    definitions = helper_definitions()
    assert definitions
    for name, _ in definitions:
        assert name.startswith("mailpipe."), f"helper {name} lacks the 'mailpipe.' prefix"


def test_helpers_have_one_line_comment() -> None:
    for name, previous_line in helper_definitions():
        assert re.fullmatch(r"\{\{/\* .+ \*/\}\}", previous_line), f"helper {name} lacks a one-line comment above it"


def lookup(values: dict[str, Any], path: str) -> Any:
    value: Any = values
    for key in path.split("."):
        value = value[key]
    return value


def default_cell(value: Any) -> str:
    """Format a default for the README table; non-empty maps and lists are too long for a cell."""
    if isinstance(value, (dict, list)) and value:
        return "see values.yaml"
    return f"`{json.dumps(value)}`"


def parameter_table() -> list[str]:
    """Build the README's parameter rows from the `@param` lines of values.yaml, in file order."""
    values = yaml.safe_load(VALUES_FILE.read_text())
    rows = []
    for line in VALUES_FILE.read_text().splitlines():
        match = re.match(r"^\s*## @param (\S+) (.+)$", line)
        if match:
            path, description = match.groups()
            rows.append(f"| `{path}` | {description} | {default_cell(lookup(values, path))} |")
    return rows


def test_readme_lists_every_parameter() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [row for row in parameter_table() if row not in readme]
    assert not missing, "charts/mailpipe/README.md lacks or has stale parameter rows; expected:\n" + "\n".join(missing)
