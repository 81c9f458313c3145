"""Status conditions in the shape the Kubernetes API conventions give them."""

from __future__ import annotations

from typing import Any, Literal, TypedDict

ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(TypedDict):
    type: str
    status: ConditionStatus
    reason: str
    message: str
    lastTransitionTime: str
    observedGeneration: int


def set_condition(
    conditions: list[Condition],
    *,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int,
    now: str,
) -> list[Condition]:
    """Return `conditions` with `type_` set; its transition time moves only when its status changes."""
    previous = find_condition(conditions, type_)
    transition_time = previous["lastTransitionTime"] if previous and previous["status"] == status else now
    updated: Condition = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": transition_time,
        "observedGeneration": generation,
    }
    return [condition for condition in conditions if condition["type"] != type_] + [updated]


def find_condition(conditions: list[Condition], type_: str) -> Condition | None:
    for condition in conditions:
        if condition["type"] == type_:
            return condition
    return None


def read_conditions(status: dict[str, Any]) -> list[Condition]:
    conditions = status.get("conditions") or []
    return [condition for condition in conditions if isinstance(condition, dict) and "type" in condition]  # type: ignore[misc]
