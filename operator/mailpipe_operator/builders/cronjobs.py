"""CronJobs for the periodic roles: populate, publish, audit-dequeued and the healthcheck."""

from __future__ import annotations

from dataclasses import dataclass

from mailpipe.config import PipelineSpec
from mailpipe_operator.builders.meta import Manifest, Pipeline, job_name, labels, metadata
from mailpipe_operator.builders.workers import config_volume, container

HISTORY_LIMIT = 3
# A run that could not start within this time is skipped; the next schedule catches up.
STARTING_DEADLINE_SECONDS = 120


@dataclass(frozen=True)
class ScheduledRole:
    """A role that runs on a schedule: the CLI command and the spec field holding its schedule."""

    command: str

    def schedule(self, spec: PipelineSpec) -> str:
        schedules = {
            "populate": spec.populate.schedule,
            "publish": spec.publish.schedule,
            "audit-dequeued": spec.audit_dequeued.schedule,
            "healthcheck": spec.healthcheck.schedule,
        }
        return schedules[self.command]


SCHEDULED_ROLES = tuple(ScheduledRole(command) for command in ("populate", "publish", "audit-dequeued", "healthcheck"))


def cronjob(pipeline: Pipeline, role: ScheduledRole) -> Manifest:
    """Build the CronJob of one role; runs never overlap, and only a few finished Jobs are kept."""
    pod_labels = labels(pipeline, component=role.command)
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": metadata(pipeline, name=job_name(pipeline, role.command), component=role.command),
        "spec": {
            "schedule": role.schedule(pipeline.spec),
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": STARTING_DEADLINE_SECONDS,
            "successfulJobsHistoryLimit": HISTORY_LIMIT,
            "failedJobsHistoryLimit": HISTORY_LIMIT,
            "jobTemplate": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    # Every role is safe to run again, so one retry covers a lost node.
                    "backoffLimit": 1,
                    "template": {
                        "metadata": {"labels": pod_labels},
                        "spec": {
                            "restartPolicy": "Never",
                            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                            "containers": [
                                container(pipeline, name=role.command, args=[role.command], serves_metrics=False)
                            ],
                            "volumes": [config_volume(pipeline)],
                        },
                    },
                },
            },
        },
    }


def cronjobs(pipeline: Pipeline) -> list[Manifest]:
    return [cronjob(pipeline, role) for role in SCHEDULED_ROLES]
