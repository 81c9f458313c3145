"""Dashboards and alert rules use only metrics that exist: those mailpipe.metrics exports and
RabbitMQ's own rabbitmq_* metrics."""

from __future__ import annotations

import re
import urllib.request

import pytest

from chart_helpers import REPO, exported_metric_names, iter_alert_rules, iter_dashboards, iter_panels, metric_names_in


def dashboard_expressions() -> list[tuple[str, str]]:
    expressions = []
    for file_name, dashboard in iter_dashboards():
        for panel in iter_panels(dashboard):
            for target in panel["targets"]:
                expressions.append((f"{file_name}: {panel['title']}", target["expr"]))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                expressions.append((f"{file_name}: variable {variable['name']}", variable["definition"]))
    return expressions


def alert_expressions() -> list[tuple[str, str]]:
    return [(rule["alert"], rule["expr"]) for rule in iter_alert_rules()]


def label_values_metric(expression: str) -> str:
    """Return the query of a Grafana `label_values(query, label)` variable, which is PromQL."""
    if expression.startswith("label_values("):
        return expression[len("label_values("):].rsplit(",", 1)[0]
    return expression


def unknown_metrics(expression: str, exported: set[str]) -> set[str]:
    names = metric_names_in(label_values_metric(expression))
    return {name for name in names if name not in exported and not name.startswith("rabbitmq_")}


def test_exported_names_include_suffixed_samples() -> None:
    exported = exported_metric_names()
    assert "mailpipe_deliveries_total" in exported
    assert "mailpipe_smtp_send_duration_seconds_bucket" in exported
    assert "mailpipe_smtp_send_duration_seconds_count" in exported
    assert "mailpipe_queue_messages" in exported
    assert "mailpipe_build_info" in exported
    assert "mailpipe_deliveries" not in exported


def test_metric_name_extraction_ignores_labels_and_functions() -> None:
    expression = (
        'sum by (group, le) (rate(mailpipe_x_bucket{group=~"a|b", job="y"}[5m])) '
        '/ on (instance) group_left (node) rabbitmq_identity_info * time() '
        '- label_replace(mailpipe_y, "dst", "$1", "src", "(.+)")'
    )
    assert metric_names_in(expression) == {"mailpipe_x_bucket", "rabbitmq_identity_info", "mailpipe_y"}


DASHBOARD_EXPRESSIONS = dashboard_expressions()
ALERT_EXPRESSIONS = alert_expressions()


@pytest.mark.parametrize(("where", "expression"), DASHBOARD_EXPRESSIONS, ids=[where for where, _ in DASHBOARD_EXPRESSIONS])
def test_dashboard_query_uses_exported_metrics(where: str, expression: str) -> None:
    assert metric_names_in(label_values_metric(expression)), f"{where}: no metric found in {expression}"
    unknown = unknown_metrics(expression, exported_metric_names())
    assert not unknown, f"{where} uses metrics that mailpipe.metrics does not export: {sorted(unknown)}"


@pytest.mark.parametrize(("alert", "expression"), ALERT_EXPRESSIONS, ids=[alert for alert, _ in ALERT_EXPRESSIONS])
def test_alert_rule_uses_exported_metrics(alert: str, expression: str) -> None:
    assert metric_names_in(expression), f"{alert}: no metric found in {expression}"
    unknown = unknown_metrics(expression, exported_metric_names())
    assert not unknown, f"alert {alert} uses metrics that mailpipe.metrics does not export: {sorted(unknown)}"


def test_every_exported_metric_is_on_a_dashboard() -> None:
    used = set()
    for _, expression in dashboard_expressions():
        used |= metric_names_in(label_values_metric(expression))
    families = {name.removesuffix("_total").removesuffix("_bucket") for name in used}
    for name in sorted(exported_metric_names()):
        if name.endswith(("_created", "_sum", "_count")):
            continue
        family = name.removesuffix("_total").removesuffix("_bucket")
        assert family in families, f"metric {name} is exported but no dashboard panel shows it"


def rabbitmq_prometheus_port() -> int:
    for line in (REPO / "scripts" / "ports.sh").read_text().splitlines():
        if line.startswith("RABBITMQ_PROMETHEUS_PORT="):
            return int(line.split("=", 1)[1])
    raise AssertionError("scripts/ports.sh sets no RABBITMQ_PROMETHEUS_PORT")


@pytest.mark.services
def test_rabbitmq_metrics_exist_on_local_broker() -> None:
    # The prefix check above cannot catch a misspelt rabbitmq_* name, so compare with the names
    # that the local broker's prometheus plugin really serves.
    url = f"http://127.0.0.1:{rabbitmq_prometheus_port()}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            exposition = response.read().decode()
    except OSError as error:
        pytest.skip(f"RabbitMQ's metrics endpoint {url} is not reachable ({error}); start it with `make services`")
    served = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            served.add(line.split()[2])
        elif line and not line.startswith("#"):
            served.add(re.split(r"[{ ]", line, maxsplit=1)[0])

    used = set()
    for _, expression in DASHBOARD_EXPRESSIONS + ALERT_EXPRESSIONS:
        used |= {name for name in metric_names_in(label_values_metric(expression)) if name.startswith("rabbitmq_")}
    assert used
    missing = used - served
    assert not missing, f"the local RabbitMQ serves no metric named {sorted(missing)}"
