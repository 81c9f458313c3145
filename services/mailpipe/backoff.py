"""Retry timing: the one backoff function that every retry in Mailpipe uses."""

from __future__ import annotations

from mailpipe.config import RetryPolicy


def backoff_delay_seconds(
    failed_attempts: int,
    *,
    policy: RetryPolicy,
    jitter_fraction: float = 0.1,
    random_value: float = 0.5,
) -> float:
    """Return the delay before the next attempt, after `failed_attempts` failures (1 or more).

    The delay grows exponentially from `initial_delay_seconds`, is capped at `max_delay_seconds`
    and is spread by up to `jitter_fraction` either way so that emails that failed together do
    not all come back together. `random_value` (0 to 1) is the caller's random draw; 0.5 means
    no jitter, which keeps the function pure and testable.
    """
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts must be 1 or more, got {failed_attempts}")
    if not 0.0 <= random_value <= 1.0:
        raise ValueError(f"random_value must be between 0 and 1, got {random_value}")
    base = policy.initial_delay_seconds * policy.multiplier ** (failed_attempts - 1)
    capped = min(base, policy.max_delay_seconds)
    spread = capped * jitter_fraction * (2.0 * random_value - 1.0)
    return min(capped + spread, policy.max_delay_seconds)
