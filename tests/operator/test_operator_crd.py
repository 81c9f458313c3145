"""Unit tests of the generated CRD, the RBAC rules and the status conditions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mailpipe_operator import crd, rbac
from mailpipe_operator.builders import consumers, cronjobs, monitoring, rabbitmq, workers
from mailpipe_operator.conditions import set_condition
from operator_helpers import make_pipeline

REPOSITORY = Path(__file__).resolve().parents[2]
CRD_FILE = REPOSITORY / "crds" / "emailpipelines.mailpipe.io.yaml"


def test_committed_crd_matches_generator() -> None:
    assert CRD_FILE.read_text() == crd.render(), (
        "crds/emailpipelines.mailpipe.io.yaml is stale; run "
        "`.venv/bin/python -m mailpipe_operator.crd > crds/emailpipelines.mailpipe.io.yaml`"
    )


def spec_properties() -> dict[str, object]:
    version = crd.custom_resource_definition()["spec"]["versions"][0]
    return version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]  # type: ignore[no-any-return]


def test_schema_has_defaults_and_bounds() -> None:
    rabbitmq_schema = spec_properties()["rabbitmq"]["properties"]  # type: ignore[index]
    assert rabbitmq_schema["replicas"] == {"type": "integer", "minimum": 1, "maximum": 9, "default": 3, "description": "RabbitMQ nodes."}
    group = spec_properties()["groups"]["items"]  # type: ignore[index]
    assert group["properties"]["scaling"]["properties"]["mode"]["enum"] == ["operator", "hpa", "keda", "none"]
    assert group["x-kubernetes-validations"][0]["rule"] == "self.minConsumers <= self.maxConsumers"


def test_schema_has_no_json_schema_leftovers() -> None:
    text = CRD_FILE.read_text()
    for leftover in ("$ref", "anyOf", "title:", "additionalProperties: false", ": null"):
        assert leftover not in text


def test_group_names_are_list_keys() -> None:
    groups = spec_properties()["groups"]
    assert groups["x-kubernetes-list-type"] == "map"  # type: ignore[index]
    assert groups["x-kubernetes-list-map-keys"] == ["name"]  # type: ignore[index]


@pytest.mark.parametrize("schedule", ["* * * * *", "*/15 * * * *", "0 3 * * mon-fri", "5,35 0-23/2 1 jan *", "@daily"])
def test_cron_rule_accepts(schedule: str) -> None:
    assert re.match(crd.CRON_RULE_REGEX, schedule)


@pytest.mark.parametrize("schedule", ["61 * * * *", "* 24 * * *", "* * 0 * *", "* * * 13 *", "* * * *", "@often"])
def test_cron_rule_rejects(schedule: str) -> None:
    assert not re.match(crd.CRON_RULE_REGEX, schedule)


def test_printer_columns() -> None:
    names = [column["name"] for column in crd.printer_columns()]
    assert names == ["Ready", "Groups", "Backlog", "Sent", "Dequeued", "Age"]


def test_rbac_covers_every_built_kind() -> None:
    pipeline = make_pipeline()
    manifests = [
        workers.config_map(pipeline),
        consumers.consumer_deployment(pipeline, pipeline.spec.groups[0], replicas=1),
        *cronjobs.cronjobs(pipeline),
        rabbitmq.statefulset(pipeline, replicas=3),
        rabbitmq.config_map(pipeline),
        rabbitmq.headless_service(pipeline),
        rabbitmq.client_service(pipeline),
        rabbitmq.pod_disruption_budget(pipeline),
        rabbitmq.service_account(pipeline),
        rabbitmq.peer_discovery_role(pipeline),
        rabbitmq.peer_discovery_role_binding(pipeline),
        rabbitmq.erlang_cookie_secret(pipeline, cookie="x"),
        monitoring.service_monitor(pipeline),
        monitoring.prometheus_rule(pipeline),
    ]
    granted = {
        (group, resource)
        for rule in rbac.policy_rules()
        if {"create", "patch", "get", "delete"} <= set(rule["verbs"])
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }
    for manifest in manifests:
        group = manifest["apiVersion"].rpartition("/")[0]
        plural = manifest["kind"].lower() + ("es" if manifest["kind"].endswith("s") else "s")
        assert (group, plural) in granted, f"no rule lets the operator manage {manifest['kind']}"


def test_rbac_grants_no_wildcards() -> None:
    for rule in rbac.policy_rules():
        assert "*" not in rule["verbs"]
        assert "*" not in rule["resources"]


def test_condition_transition_time_moves_on_change_only() -> None:
    first = set_condition([], type_="Ready", status="False", reason="NotReady", message="m", generation=1, now="t1")
    same = set_condition(first, type_="Ready", status="False", reason="Other", message="m2", generation=2, now="t2")
    flipped = set_condition(same, type_="Ready", status="True", reason="Ready", message="m3", generation=2, now="t3")
    assert same[0]["lastTransitionTime"] == "t1"
    assert same[0]["reason"] == "Other"
    assert flipped[0]["lastTransitionTime"] == "t3"
    assert len(flipped) == 1
