"""Generate the EmailPipeline CustomResourceDefinition from the data plane's configuration model.

`python -m mailpipe_operator.crd > crds/emailpipelines.mailpipe.io.yaml` writes the committed
file; a test checks that the two are equal. The spec's schema is pydantic's JSON schema of
`PipelineSpec`, rewritten into a structural OpenAPI v3 schema: references inlined, nullable
fields marked, and CEL rules added where fields relate.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from mailpipe.config import PipelineSpec
from mailpipe_operator.builders.meta import API_GROUP, API_VERSION, KIND, PLURAL

Schema = dict[str, Any]

SINGULAR = "emailpipeline"
# Core Endpoints own `ep` as well and win in kubectl, so `emp` is offered beside it.
SHORT_NAMES = ["ep", "emp"]
# Object names get suffixes such as `-rabbitmq-headless` and must stay valid Service names
# (at most 63 characters), so the pipeline's own name is kept short.
MAX_NAME_LENGTH = 40
MAX_SCHEDULE_LENGTH = 120

_MINUTE = r"([0-5]?[0-9])"
_HOUR = r"([01]?[0-9]|2[0-3])"
_DAY_OF_MONTH = r"(0?[1-9]|[12][0-9]|3[01])"
_MONTH = r"(0?[1-9]|1[0-2]|jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_DAY_OF_WEEK = r"([0-7]|sun|mon|tue|wed|thu|fri|sat)"


def _cron_field(value: str) -> str:
    """Return a regex for one cron field: `*` or values or ranges, each with an optional step, comma-separated."""
    # `[*]` instead of an escaped star keeps the regex free of backslashes inside the CEL string.
    item = rf"([*]|{value}(-{value})?)(/[0-9]+)?"
    return rf"{item}(,{item})*"


# Stricter than the model's pattern: every field's values must lie within that field's range.
CRON_RULE_REGEX = (
    r"^(@(yearly|annually|monthly|weekly|daily|hourly)|"
    + r" +".join(_cron_field(field) for field in (_MINUTE, _HOUR, _DAY_OF_MONTH, _MONTH, _DAY_OF_WEEK))
    + r")$"
)
CRON_MESSAGE = (
    "must be a cron schedule of five fields within their ranges (minute 0-59, hour 0-23, "
    "day of month 1-31, month 1-12, day of week 0-7) or one of @yearly, @monthly, @weekly, @daily, @hourly"
)

# CEL rules on objects of the model, keyed by the model's class name.
OBJECT_RULES: dict[str, list[Schema]] = {
    "EmailGroup": [
        {
            "rule": "self.minConsumers <= self.maxConsumers",
            "message": "minConsumers must not exceed maxConsumers",
            "fieldPath": ".minConsumers",
        },
        {
            "rule": "self.batchSize <= self.prefetch",
            "message": "batchSize must not exceed prefetch",
            "fieldPath": ".batchSize",
        },
    ],
    "RetryPolicy": [
        {
            "rule": "self.initialDelaySeconds <= self.maxDelaySeconds",
            "message": "initialDelaySeconds must not exceed maxDelaySeconds",
            "fieldPath": ".initialDelaySeconds",
        }
    ],
}
# Keys that JSON schema has and a structural schema either forbids or does not need.
DROPPED_KEYS = {"title", "additionalProperties", "$defs"}


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_without_nulls(item) for item in value]
    return value


def _structural(node: Schema, definitions: dict[str, Schema]) -> Schema:
    """Rewrite one JSON-schema node (and its children) into structural OpenAPI v3."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**definitions[name], **{key: value for key, value in node.items() if key != "$ref"}}
        inlined = _structural(merged, definitions)
        rules = OBJECT_RULES.get(name)
        if rules:
            inlined["x-kubernetes-validations"] = rules
        return inlined

    if "anyOf" in node:
        variants = [variant for variant in node["anyOf"] if variant.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"cannot express a union of {len(variants)} types in a structural schema")
        rest = {key: value for key, value in node.items() if key != "anyOf"}
        nullable = _structural({**variants[0], **rest}, definitions)
        nullable["nullable"] = True
        return nullable

    result: Schema = {}
    for key, value in node.items():
        if key in DROPPED_KEYS:
            continue
        if key == "properties":
            result[key] = {name: _structural(child, definitions) for name, child in value.items()}
        elif key == "items":
            result[key] = _structural(value, definitions)
        elif key == "default":
            if value is not None:
                result[key] = _without_nulls(value)
        elif key == "exclusiveMinimum":
            result["minimum"] = value
            result["exclusiveMinimum"] = True
        elif key == "exclusiveMaximum":
            result["maximum"] = value
            result["exclusiveMaximum"] = True
        else:
            result[key] = value
    if "enum" in result and "type" not in result:
        result["type"] = "string"
    if "const" in result:
        result["enum"] = [result.pop("const")]
    return result


def _add_schedule_rules(schema: Schema) -> None:
    for name, child in schema.get("properties", {}).items():
        if name == "schedule":
            child.setdefault("maxLength", MAX_SCHEDULE_LENGTH)
            child["x-kubernetes-validations"] = [
                {"rule": f"self.matches('{CRON_RULE_REGEX}')", "message": CRON_MESSAGE}
            ]
        _add_schedule_rules(child)
    if "items" in schema:
        _add_schedule_rules(schema["items"])


def spec_schema() -> Schema:
    """Build the structural schema of `spec` from `PipelineSpec`."""
    source = PipelineSpec.model_json_schema(by_alias=True)
    schema = _structural(source, source.get("$defs", {}))
    groups = schema["properties"]["groups"]
    # Group names are the keys of the list, so the API server rejects duplicates itself.
    groups["x-kubernetes-list-type"] = "map"
    groups["x-kubernetes-list-map-keys"] = ["name"]
    _add_schedule_rules(schema)
    return schema


def _timestamp(description: str) -> Schema:
    return {"type": "string", "format": "date-time", "description": description}


def status_schema() -> Schema:
    """Build the schema of `status`, which only the operator writes."""
    integer = {"type": "integer", "format": "int64"}
    condition = {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": _timestamp("When the status last changed."),
            "observedGeneration": integer,
        },
    }
    group = {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "backlog": {**integer, "description": "Ready plus unacked messages in the work queue."},
            "ready": integer,
            "unacked": integer,
            "consumers": {**integer, "description": "Consumer replicas the operator set."},
            "readyConsumers": integer,
            "lastScaleTime": _timestamp("When the operator last changed the consumer count."),
            "lastScaleReason": {"type": "string"},
        },
    }
    job = {
        "type": "object",
        "properties": {
            "lastScheduleTime": _timestamp("When the CronJob last started a Job."),
            "lastSuccessfulTime": _timestamp("When a Job of the CronJob last succeeded."),
        },
    }
    return {
        "type": "object",
        "properties": {
            "observedGeneration": integer,
            "conditions": {
                "type": "array",
                "items": condition,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            },
            "groupCount": integer,
            "backlog": {**integer, "description": "Ready plus unacked messages in every work queue."},
            "sent": {**integer, "description": "Deliveries acknowledged on the work queues since they were declared."},
            "dequeued": {**integer, "description": "Messages acknowledged on the dead-letter queues since they were declared."},
            "groups": {
                "type": "array",
                "items": group,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
            "rabbitmq": {
                "type": "object",
                "properties": {"replicas": integer, "readyReplicas": integer},
            },
            "jobs": {"type": "object", "additionalProperties": job},
            "healthcheck": {
                "type": "object",
                "properties": {
                    "result": {"type": "string", "enum": ["Succeeded", "Failed", "Unknown"]},
                    "lastScheduleTime": _timestamp("When the healthcheck last started."),
                    "lastSuccessfulTime": _timestamp("When the healthcheck last passed."),
                },
            },
        },
    }


def printer_columns() -> list[Schema]:
    return [
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Groups", "type": "integer", "jsonPath": ".status.groupCount"},
        {"name": "Backlog", "type": "integer", "jsonPath": ".status.backlog"},
        {"name": "Sent", "type": "integer", "jsonPath": ".status.sent"},
        {"name": "Dequeued", "type": "integer", "jsonPath": ".status.dequeued"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def custom_resource_definition() -> Schema:
    root = {
        "type": "object",
        "description": "A Mailpipe email pipeline: RabbitMQ, scheduled jobs and scaled consumers.",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**spec_schema(), "default": {}},
            "status": status_schema(),
        },
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters",
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["mailpipe"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render() -> str:
    header = "# Generated by `python -m mailpipe_operator.crd` from mailpipe.config.PipelineSpec; do not edit.\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render())
