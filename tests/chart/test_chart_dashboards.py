"""The Grafana dashboards follow the project's conventions, and every query is valid PromQL."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from chart_helpers import iter_dashboards, iter_panels, run

DASHBOARDS = dict(iter_dashboards())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Grafana's interval variables change with the time range, so a zoomed panel would compute a
# different rate. Every rate uses a fixed window instead.
VARIABLE_WINDOWS = ("$__rate_interval", "$__interval", "$__range", "$__auto")


def panels(name: str) -> list[dict[str, Any]]:
    return list(iter_panels(DASHBOARDS[name]))


def variables(name: str) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in DASHBOARDS[name]["templating"]["list"]}


def test_dashboards_exist() -> None:
    assert set(DASHBOARDS) >= {"mailpipe-overview.json", "mailpipe-rabbitmq.json"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_uid_is_fixed_file_name(name: str) -> None:
    # The uid keeps links and bookmarks stable across imports; Grafana limits it to 40 characters.
    uid = DASHBOARDS[name]["uid"]
    assert uid == name.removesuffix(".json")
    assert len(uid) <= 40
    assert DASHBOARDS[name]["id"] is None


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_has_datasource_variable(name: str) -> None:
    datasource = variables(name)["datasource"]
    assert datasource["type"] == "datasource"
    assert datasource["query"] == "prometheus"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_query_uses_datasource_variable(name: str) -> None:
    for panel in panels(name):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in variables(name).values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_pipeline_variable_chains_on_namespace(name: str) -> None:
    order = [variable["name"] for variable in DASHBOARDS[name]["templating"]["list"]]
    assert order.index("datasource") < order.index("namespace") < order.index("pipeline")
    namespace, pipeline = variables(name)["namespace"], variables(name)["pipeline"]
    assert "$" not in namespace["definition"]
    assert 'namespace="$namespace"' in pipeline["definition"]
    assert pipeline["definition"].endswith(", pipeline)")
    # Refresh on time range change, so that a new pipeline appears without reloading.
    assert namespace["refresh"] == pipeline["refresh"] == 2


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_metric_selector_filters_namespace_and_pipeline(name: str) -> None:
    for panel in panels(name):
        for target in panel["targets"]:
            selectors = re.findall(r"\b([a-z_:][a-z0-9_:]*)\{([^}]*)\}", target["expr"])
            assert selectors, f"{panel['title']}: no label selector in {target['expr']}"
            for metric, matchers in selectors:
                assert 'namespace="$namespace"' in matchers, f"{panel['title']}: {metric} ignores $namespace"
                assert 'pipeline="$pipeline"' in matchers, f"{panel['title']}: {metric} ignores $pipeline"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_has_unit(name: str) -> None:
    for panel in panels(name):
        assert panel["fieldConfig"]["defaults"].get("unit"), f"panel {panel['title']} has no unit"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_rates_use_fixed_windows(name: str) -> None:
    for panel in panels(name):
        for target in panel["targets"]:
            expression = target["expr"]
            for variable in VARIABLE_WINDOWS:
                assert variable not in expression, f"{panel['title']}: {variable} in {expression}"
            for window in re.findall(r"\[([^\]]*)\]", expression):
                assert re.fullmatch(r"[0-9]+[smhd]", window), f"{panel['title']}: window [{window}] is not fixed"
            if re.search(r"\b(rate|increase|irate)\(", expression):
                assert "[" in expression, f"{panel['title']}: rate without a window"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_legends_name_series(name: str) -> None:
    for panel in panels(name):
        for target in panel["targets"]:
            legend = target.get("legendFormat", "")
            assert legend and legend != "__auto", f"{panel['title']}: target {target['refId']} has no legend"
            grouping = " ".join(re.findall(r"\b(?:by|group_left)\s*\(([^)]*)\)", target["expr"]))
            # `le` is consumed by histogram_quantile, so it never reaches the legend.
            labels_kept = {label.strip() for label in grouping.split(",") if label.strip()} - {"le"}
            labels_in_legend = set(re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend))
            assert labels_in_legend == labels_kept, (
                f"{panel['title']}: legend {legend!r} should name the series by {sorted(labels_kept)}"
            )


def substitute_variables(expression: str) -> str:
    """Replace Grafana variables ($name, ${name}) with a sample value so that the expression is
    plain PromQL; label_replace's `$1` has no letters, so it stays."""
    return re.sub(r"\$\{?[a-z_]+\}?", "mail", expression)


def test_every_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    # promtool parses rule expressions, so each query becomes a recording rule of a throwaway file.
    rules = []
    for file_name, dashboard in DASHBOARDS.items():
        for panel in iter_panels(dashboard):
            for target in panel["targets"]:
                rules.append({"record": f"dashboard:query{len(rules)}", "expr": substitute_variables(target["expr"])})
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr
