"""Queue topology shared by the consumer, the operator and the healthcheck."""

from __future__ import annotations

from mailpipe.config import PipelineSpec, RetryPolicy
from mailpipe.topology import all_queues, group_queues


def test_work_queue_is_quorum_with_dead_letters() -> None:
    work = group_queues("news", spec=PipelineSpec())[0]
    assert work.name == "news"
    assert work.arguments["x-queue-type"] == "quorum"
    assert work.arguments["x-dead-letter-routing-key"] == "news.dead"
    assert work.arguments["x-delivery-limit"] == 20


def test_one_delay_queue_per_retry() -> None:
    names = [queue.name for queue in group_queues("news", spec=PipelineSpec())]
    assert names == ["news", "news.dead", "news.retry.1", "news.retry.2", "news.retry.3", "news.retry.4"]


def test_delay_queues_expire_into_work_queue() -> None:
    retry = group_queues("news", spec=PipelineSpec())[2]
    assert retry.arguments["x-dead-letter-exchange"] == ""
    assert retry.arguments["x-dead-letter-routing-key"] == "news"


def test_single_attempt_still_has_a_delay_queue() -> None:
    spec = PipelineSpec(retry=RetryPolicy(max_attempts=1))
    assert [queue.name for queue in group_queues("news", spec=spec)][-1] == "news.retry.1"


def test_all_queues_include_canary() -> None:
    assert all_queues(PipelineSpec())[-1].name == "mailpipe.canary"
