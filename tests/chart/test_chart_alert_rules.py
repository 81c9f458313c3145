"""The alert rules pass promtool's checks and unit tests, and each alert explains its cause and next step."""

from __future__ import annotations

from pathlib import Path

import pytest

from chart_helpers import ALERT_RULES, iter_alert_rules, run

UNIT_TESTS = Path(__file__).with_name("alert-rules.test.yaml")
ALERTS = list(iter_alert_rules())


def test_promtool_check_rules_passes(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(ALERT_RULES)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    # promtool reads the rule file paths inside the unit test file relative to that file.
    result = run([promtool, "test", "rules", str(UNIT_TESTS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_names_are_unique() -> None:
    names = [rule["alert"] for rule in ALERTS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_alert_has_severity_and_text(rule: dict[str, object]) -> None:
    assert str(rule["alert"]).startswith("Mailpipe")
    labels = rule["labels"]
    annotations = rule["annotations"]
    assert isinstance(labels, dict) and isinstance(annotations, dict)
    assert labels["severity"] in {"warning", "critical"}
    assert annotations["summary"].endswith(".")
    assert len(annotations["description"]) > len(annotations["summary"])


@pytest.mark.parametrize("rule", ALERTS, ids=[rule["alert"] for rule in ALERTS])
def test_alert_keeps_pipeline_labels(rule: dict[str, object]) -> None:
    # Routing and the descriptions need to know which pipeline fired.
    expression = str(rule["expr"])
    if "by (" in expression:
        assert "namespace, pipeline" in expression, f"{rule['alert']} aggregates namespace or pipeline away"
