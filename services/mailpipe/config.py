"""Configuration: one model for the YAML file and for the EmailPipeline resource's spec.

The data plane reads `PipelineSpec` from a YAML file; the operator reads the same model from the
`spec` of an `EmailPipeline` resource, and `crds/` is generated from it. Keys are camelCase in
both places. Connection URLs carry credentials, so they never appear in the spec: they come from
environment variables (see `Connections`), which the operator fills from Secrets.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from urllib.parse import unquote, urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from mailpipe.errors import ConfigError

GROUP_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}$"
# Five fields (minute hour day-of-month month day-of-week) or one of cron's @ shortcuts.
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|hourly)"
    r"|([0-9A-Za-z*/,\-]+\s+){4}[0-9A-Za-z*/,\-]+)$"
)
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"


CRON_FIELD_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))
CRON_NAMES: tuple[dict[str, int], ...] = (
    {},
    {},
    {},
    {name: number for number, name in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(), start=1)},
    {name: number for number, name in enumerate("SUN MON TUE WED THU FRI SAT".split())},
)


def check_cron(schedule: str) -> str:
    """Raise ValueError naming the field unless `schedule` is a valid five-field cron schedule.

    Accepts what Kubernetes CronJobs accept: `*`, numbers, ranges `a-b`, steps `/n` (n > 0), lists,
    month and weekday names, and the @ shortcuts.
    """
    if schedule.startswith("@"):
        return schedule
    fields = schedule.split()
    labels = ("minute", "hour", "day of month", "month", "day of week")
    if len(fields) != 5:
        raise ValueError(f"cron schedule {schedule!r} must have 5 fields (minute hour day-of-month month day-of-week)")
    for field, label, (low, high), names in zip(fields, labels, CRON_FIELD_RANGES, CRON_NAMES):
        for item in field.split(","):
            span, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"cron schedule {schedule!r}: invalid step {step!r} in the {label} field")
            if span == "*":
                continue
            bounds = span.split("-")
            values = [names.get(bound.upper(), int(bound) if bound.isdigit() else None) for bound in bounds]
            if len(bounds) > 2 or any(value is None or not low <= value <= high for value in values):
                raise ValueError(f"cron schedule {schedule!r}: {span!r} is outside {low}-{high} in the {label} field")
    return schedule


def check_header_text(value: str) -> str:
    if any(ord(character) < 32 or ord(character) == 127 for character in value):
        raise ValueError("must not contain line breaks or other control characters")
    return value


def check_address(value: str) -> str:
    from email_validator import EmailNotValidError, validate_email

    try:
        validate_email(value, check_deliverability=False, allow_smtputf8=True)
    except EmailNotValidError as error:
        raise ValueError(f"invalid email address {value!r}: {error}") from error
    return value


class Model(BaseModel):
    """Base of every configuration model: camelCase keys, unknown keys rejected, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class SecretKeyRef(Model):
    """A key of a Kubernetes Secret in the pipeline's namespace."""

    name: Annotated[str, Field(min_length=1, max_length=253, description="Secret name.")]
    key: Annotated[str, Field(min_length=1, max_length=253, description="Key inside the Secret.")]


class SecretRefs(Model):
    """Secrets holding the connection URL (with credentials) of each external service."""

    mysql: SecretKeyRef = SecretKeyRef(name="mailpipe-mysql", key="url")
    mongodb: SecretKeyRef = SecretKeyRef(name="mailpipe-mongodb", key="url")
    smtp: SecretKeyRef = SecretKeyRef(name="mailpipe-smtp", key="url")
    rabbitmq: Annotated[
        SecretKeyRef | None,
        Field(description="Broker URL; when unset, the operator uses the cluster it manages."),
    ] = None


class ResourceList(Model):
    cpu: Annotated[str | None, Field(pattern=QUANTITY_PATTERN)] = None
    memory: Annotated[str | None, Field(pattern=QUANTITY_PATTERN)] = None


class Resources(Model):
    """Container resource requests and limits, in Kubernetes quantity notation."""

    requests: ResourceList = ResourceList()
    limits: ResourceList = ResourceList()


class Storage(Model):
    size: Annotated[str, Field(pattern=QUANTITY_PATTERN, description="Volume size per node.")] = "10Gi"
    storage_class_name: Annotated[
        str | None, Field(description="StorageClass; the cluster default when unset.")
    ] = None


class RabbitMQCluster(Model):
    """The RabbitMQ cluster that the operator runs as a StatefulSet."""

    replicas: Annotated[int, Field(ge=1, le=9, description="RabbitMQ nodes.")] = 3
    image: Annotated[str, Field(min_length=1)] = "rabbitmq:3.13-management"
    storage: Storage = Storage()
    resources: Resources = Resources(
        requests=ResourceList(cpu="500m", memory="1Gi"),
        limits=ResourceList(memory="2Gi"),
    )
    vhost: Annotated[str, Field(min_length=1)] = "/"
    delivery_limit: Annotated[
        int,
        Field(ge=1, le=1000, description="Deliveries of one message before it is dead-lettered."),
    ] = 20


class ScheduledJob(Model):
    schedule: Annotated[str, Field(pattern=CRON_PATTERN, description="Cron schedule.")]
    chunk_size: Annotated[int, Field(ge=1, le=100_000, description="Documents per chunk.")] = 1000

    _valid_schedule = field_validator("schedule")(classmethod(lambda cls, value: check_cron(value)))


class PopulateJob(ScheduledJob):
    schedule: Annotated[str, Field(pattern=CRON_PATTERN)] = "* * * * *"


class PublishJob(ScheduledJob):
    schedule: Annotated[str, Field(pattern=CRON_PATTERN)] = "* * * * *"


class AuditJob(Model):
    schedule: Annotated[str, Field(pattern=CRON_PATTERN)] = "*/15 * * * *"

    _valid_schedule = field_validator("schedule")(classmethod(lambda cls, value: check_cron(value)))


class HealthcheckJob(Model):
    schedule: Annotated[str, Field(pattern=CRON_PATTERN)] = "*/5 * * * *"

    _valid_schedule = field_validator("schedule")(classmethod(lambda cls, value: check_cron(value)))


class RetryPolicy(Model):
    """Delivery attempts per email and the delay between them (exponential, capped)."""

    max_attempts: Annotated[int, Field(ge=1, le=20, description="Attempts in all, the first included.")] = 5
    initial_delay_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0
    multiplier: Annotated[float, Field(ge=1, le=10)] = 2.0
    max_delay_seconds: Annotated[float, Field(gt=0, le=3600)] = 300.0

    @model_validator(mode="after")
    def _initial_delay_within_max(self) -> RetryPolicy:
        if self.initial_delay_seconds > self.max_delay_seconds:
            raise ValueError("initialDelaySeconds must not exceed maxDelaySeconds")
        return self


class Scaling(Model):
    """The scaler of a group's consumers: the operator from the backlog, an HPA, KEDA, or none."""

    mode: Literal["operator", "hpa", "keda", "none"] = "operator"
    cooldown_seconds: Annotated[
        int, Field(ge=0, le=86_400, description="Minimum time between two scale-downs.")
    ] = 300


class EmailGroup(Model):
    """One email group: its own queue and its own consumers."""

    name: Annotated[str, Field(pattern=GROUP_NAME_PATTERN, description="Group and queue name.")]
    min_consumers: Annotated[int, Field(ge=0, le=1000)] = 1
    max_consumers: Annotated[int, Field(ge=1, le=1000)] = 10
    target_backlog_per_consumer: Annotated[
        int, Field(ge=1, le=10_000_000, description="Ready plus unacked messages per consumer.")
    ] = 1000
    prefetch: Annotated[int, Field(ge=1, le=10_000, description="Unacked deliveries per consumer.")] = 100
    batch_size: Annotated[
        int,
        Field(
            ge=1,
            le=1000,
            description=(
                "Emails a consumer claims, sends and records together. A consumer killed in the middle"
                " of a batch leaves up to this many emails with an unknown outcome, dequeued for a"
                " person to check; 1 is the narrowest window and costs the most MongoDB writes."
            ),
        ),
    ] = 10
    scaling: Scaling = Scaling()

    @model_validator(mode="after")
    def _min_within_max(self) -> EmailGroup:
        if self.min_consumers > self.max_consumers:
            raise ValueError("minConsumers must not exceed maxConsumers")
        if self.batch_size > self.prefetch:
            raise ValueError(
                f"batchSize ({self.batch_size}) must not exceed prefetch ({self.prefetch}) in group"
                f" {self.name!r}; lower batchSize or raise prefetch"
            )
        return self


def default_groups() -> list[EmailGroup]:
    return [
        EmailGroup(name="announcements", min_consumers=3, max_consumers=10),
        EmailGroup(name="transactional", min_consumers=1, max_consumers=5, prefetch=20, batch_size=1),
    ]


class Sender(Model):
    """The sender of the emails, and the domain of their Message-IDs."""

    from_address: Annotated[str, Field(min_length=3, max_length=320)] = "news@mailpipe.example"
    from_name: Annotated[str, Field(max_length=200)] = "Mailpipe"
    reply_to: Annotated[str | None, Field(max_length=320)] = None
    message_id_domain: Annotated[str, Field(min_length=1, max_length=253)] = "mailpipe.example"

    _valid_addresses = field_validator("from_address", "reply_to")(
        classmethod(lambda cls, value: value if value is None else check_address(value))
    )
    _valid_name = field_validator("from_name")(classmethod(lambda cls, value: check_header_text(value)))


class Smtp(Model):
    security: Annotated[
        Literal["none", "starttls", "tls"],
        Field(description="Plain, STARTTLS after connecting, or TLS from the first byte."),
    ] = "none"
    timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    max_message_bytes: Annotated[
        int, Field(ge=1024, le=100_000_000, description="Larger rendered messages fail for good.")
    ] = 1_000_000


class Notifications(Model):
    """Team addresses for the dequeued-mail audit and failed healthchecks."""

    recipients: Annotated[list[str], Field(max_length=50)] = []
    from_address: Annotated[str, Field(min_length=3, max_length=320)] = "mailpipe@mailpipe.example"

    _valid_addresses = field_validator("from_address")(classmethod(lambda cls, value: check_address(value)))

    @field_validator("recipients")
    @classmethod
    def _valid_recipients(cls, recipients: list[str]) -> list[str]:
        return [check_address(recipient) for recipient in recipients]


class Monitoring(Model):
    metrics_port: Annotated[int, Field(ge=1024, le=65_535)] = 9100
    service_monitor: Annotated[bool, Field(description="Create a ServiceMonitor when its CRD exists.")] = True
    prometheus_rule: Annotated[bool, Field(description="Create a PrometheusRule when its CRD exists.")] = True
    pushgateway_url: Annotated[str | None, Field(description="Where short jobs push their metrics.")] = None


class PipelineSpec(Model):
    """Everything one pipeline needs: the YAML file and the EmailPipeline spec alike."""

    image: Annotated[str, Field(min_length=1, description="Mailpipe worker image.")] = (
        "ghcr.io/mailpipe/mailpipe:0.1.0"
    )
    paused: Annotated[bool, Field(description="Stop reconciling; running objects are left as they are.")] = False
    rabbitmq: RabbitMQCluster = RabbitMQCluster()
    secrets: SecretRefs = SecretRefs()
    populate: PopulateJob = PopulateJob()
    publish: PublishJob = PublishJob()
    audit_dequeued: AuditJob = AuditJob()
    healthcheck: HealthcheckJob = HealthcheckJob()
    retry: RetryPolicy = RetryPolicy()
    groups: Annotated[list[EmailGroup], Field(min_length=1, max_length=50)] = Field(default_factory=default_groups)
    sender: Sender = Sender()
    smtp: Smtp = Smtp()
    notifications: Notifications = Notifications()
    monitoring: Monitoring = Monitoring()

    @field_validator("groups")
    @classmethod
    def _group_names_unique(cls, groups: list[EmailGroup]) -> list[EmailGroup]:
        names = [group.name for group in groups]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"group names must be unique; repeated: {', '.join(duplicates)}")
        return groups

    def group(self, name: str) -> EmailGroup:
        for group in self.groups:
            if group.name == name:
                return group
        known = ", ".join(group.name for group in self.groups)
        raise ConfigError(f"unknown email group {name!r}; configured groups: {known}")


# Environment variables holding connection URLs, and the defaults that match `make services`.
ENVIRONMENT_DEFAULTS: Mapping[str, str] = {
    "MAILPIPE_MYSQL_URL": "mysql://mailpipe:mailpipe@127.0.0.1:13306/mailpipe_app",
    "MAILPIPE_MONGODB_URL": "mongodb://127.0.0.1:27018/mailpipe",
    "MAILPIPE_RABBITMQ_URL": "amqp://guest:guest@127.0.0.1:5673/%2F",
    "MAILPIPE_RABBITMQ_API_URLS": "http://guest:guest@127.0.0.1:15673",
    "MAILPIPE_SMTP_URL": "smtp://127.0.0.1:1025",
}


class Connections(Model):
    """Connection URLs of the external services; they may carry credentials, so never log them."""

    mysql_url: str
    mongodb_url: str
    rabbitmq_url: str
    rabbitmq_api_urls: list[str]
    smtp_url: str
    pushgateway_url: str | None = None

    @property
    def rabbitmq_vhost(self) -> str:
        """The virtual host of MAILPIPE_RABBITMQ_URL, where the workers' queues live."""
        path = urlsplit(self.rabbitmq_url).path
        return unquote(path[1:]) if len(path) > 1 else "/"

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Connections:
        def read(name: str) -> str:
            return environ.get(name) or ENVIRONMENT_DEFAULTS[name]

        api_urls = [url.strip() for url in read("MAILPIPE_RABBITMQ_API_URLS").split(",") if url.strip()]
        return cls(
            mysql_url=read("MAILPIPE_MYSQL_URL"),
            mongodb_url=read("MAILPIPE_MONGODB_URL"),
            rabbitmq_url=read("MAILPIPE_RABBITMQ_URL"),
            rabbitmq_api_urls=api_urls,
            smtp_url=read("MAILPIPE_SMTP_URL"),
            pushgateway_url=environ.get("MAILPIPE_PUSHGATEWAY_URL") or None,
        )


class Config(Model):
    """A loaded configuration: the pipeline spec plus the connections from the environment."""

    spec: PipelineSpec
    connections: Connections


def describe_validation_error(error: ValidationError) -> str:
    """Render pydantic's errors as one line per key, in the file's own key spelling."""
    lines = []
    for item in error.errors():
        location = ""
        for part in item["loc"]:
            if isinstance(part, int):
                location += f"[{part}]"
            elif location:
                location += f".{part}"
            else:
                location = str(part)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "string_pattern_mismatch" and item["loc"][-1] == "schedule":
            message = "must be a cron schedule of five fields, such as '*/5 * * * *', or @hourly"
        lines.append(f"{location or '(top level)'}: {message}")
    return "; ".join(lines)


def parse_spec(data: Mapping[str, Any] | None, *, source: str) -> PipelineSpec:
    """Validate a spec mapping (from YAML or from a resource), naming every bad key on failure."""
    try:
        return PipelineSpec.model_validate(dict(data or {}))
    except ValidationError as error:
        raise ConfigError(f"invalid configuration in {source}: {describe_validation_error(error)}") from error


def load_config(path: str | os.PathLike[str] | None, *, environ: Mapping[str, str] | None = None) -> Config:
    """Load the YAML file at `path` (defaults alone when None) and the connections from `environ`."""
    environment = os.environ if environ is None else environ
    data: Any = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise ConfigError(f"cannot read configuration file {source}: {error.strerror}") from error
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"configuration file {source} is not valid YAML: {error}") from error
        if not isinstance(data, dict):
            raise ConfigError(f"configuration file {source} must hold a mapping of keys, not {type(data).__name__}")
    spec = parse_spec(data, source=source)
    try:
        connections = Connections.from_environment(environment)
    except ValidationError as error:
        raise ConfigError(f"invalid connection settings: {describe_validation_error(error)}") from error
    return Config(spec=spec, connections=connections)


def redact_url(url: str) -> str:
    """Hide the password of a URL so that it can be logged."""
    return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", url)
