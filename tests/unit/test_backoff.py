"""The one backoff function behind every retry delay."""

from __future__ import annotations

import pytest

from mailpipe.backoff import backoff_delay_seconds
from mailpipe.config import RetryPolicy

POLICY = RetryPolicy(initial_delay_seconds=5, multiplier=2, max_delay_seconds=30)


def test_delay_grows_exponentially() -> None:
    delays = [backoff_delay_seconds(attempt, policy=POLICY) for attempt in (1, 2, 3)]
    assert delays == [5, 10, 20]


def test_delay_is_capped() -> None:
    assert backoff_delay_seconds(10, policy=POLICY) == 30


def test_jitter_spreads_within_fraction() -> None:
    low = backoff_delay_seconds(2, policy=POLICY, random_value=0.0)
    high = backoff_delay_seconds(2, policy=POLICY, random_value=1.0)
    assert low == pytest.approx(9.0)
    assert high == pytest.approx(11.0)


def test_jitter_never_exceeds_cap() -> None:
    assert backoff_delay_seconds(10, policy=POLICY, random_value=1.0) == 30


def test_rejects_zero_attempts() -> None:
    with pytest.raises(ValueError, match="failed_attempts"):
        backoff_delay_seconds(0, policy=POLICY)
