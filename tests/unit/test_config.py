"""The configuration model: defaults, file loading and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.config import PipelineSpec, load_config, parse_spec, redact_url
from mailpipe.errors import ConfigError


def test_defaults_have_two_groups() -> None:
    spec = PipelineSpec()
    assert [group.name for group in spec.groups] == ["announcements", "transactional"]
    assert spec.group("announcements").min_consumers == 3
    assert spec.retry.max_attempts == 5
    assert spec.publish.chunk_size == 1000


def test_example_file_matches_defaults() -> None:
    example = Path(__file__).parents[2] / "services" / "config.example.yaml"
    assert load_config(example, environ={}).spec == PipelineSpec()


@pytest.mark.parametrize(
    ("spec", "named_key"),
    [
        ({"groups": [{"name": "news", "nmae": "x"}]}, "groups[0].nmae: unknown key"),
        ({"retry": {"maxAttempts": 0}}, "retry.maxAttempts"),
        ({"groups": [{"name": "news", "minConsumers": 5, "maxConsumers": 2}]}, "minConsumers must not exceed maxConsumers"),
        ({"groups": [{"name": "Bad Name"}]}, "groups[0].name"),
        ({"publish": {"schedule": "every minute"}}, "publish.schedule"),
        ({"groups": [{"name": "a"}, {"name": "a"}]}, "repeated: a"),
        ({"unknownSection": {}}, "unknownSection: unknown key"),
    ],
)
def test_bad_values_name_the_key(spec: dict[str, object], named_key: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_spec(spec, source="test.yaml")
    assert named_key in str(raised.value)
    assert "test.yaml" in str(raised.value)


def test_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(path, environ={})


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_connections_come_from_environment() -> None:
    config = load_config(None, environ={"MAILPIPE_SMTP_URL": "smtp://mail.example:587",
                                        "MAILPIPE_RABBITMQ_API_URLS": "http://a:15672, http://b:15672"})
    assert config.connections.smtp_url == "smtp://mail.example:587"
    assert config.connections.rabbitmq_api_urls == ["http://a:15672", "http://b:15672"]


def test_unknown_group_lists_configured_ones() -> None:
    with pytest.raises(ConfigError, match="configured groups: announcements, transactional"):
        PipelineSpec().group("newsletters")


def test_redact_url_hides_password() -> None:
    assert redact_url("amqp://user:secret@host:5672/%2F") == "amqp://user:***@host:5672/%2F"


@pytest.mark.parametrize("schedule", ["* * * * *", "*/5 1-3 * JAN-MAR MON,FRI", "@hourly", "0 0 1,15 * 0"])
def test_valid_cron_schedules_pass(schedule: str) -> None:
    assert parse_spec({"publish": {"schedule": schedule}}, source="test.yaml").publish.schedule == schedule


@pytest.mark.parametrize(
    ("schedule", "message"),
    [("99 * * * *", "outside 0-59 in the minute field"), ("*/0 * * * *", "invalid step"), ("* * * *", "must be a cron schedule of five fields")],
)
def test_invalid_cron_schedules_name_the_field(schedule: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec({"auditDequeued": {"schedule": schedule}}, source="test.yaml")


def test_sender_name_rejects_line_breaks() -> None:
    with pytest.raises(ConfigError, match="sender.fromName"):
        parse_spec({"sender": {"fromName": "Evil\r\nBcc: victim@example.com"}}, source="test.yaml")


def test_notification_recipients_must_be_addresses() -> None:
    with pytest.raises(ConfigError, match="notifications.recipients"):
        parse_spec({"notifications": {"recipients": ["team@example.com", "nobody"]}}, source="test.yaml")


def test_rabbitmq_vhost_comes_from_url() -> None:
    config = load_config(None, environ={"MAILPIPE_RABBITMQ_URL": "amqp://u:p@host:5672/mail%2Fprod"})
    assert config.connections.rabbitmq_vhost == "mail/prod"
