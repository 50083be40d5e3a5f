"""Users over time for the load shapes in loadtest/shapes/, kept apart from Locust so they can be
checked without importing it (Locust monkey-patches the interpreter on import)."""

from __future__ import annotations


def step_users(elapsed: float, users: int, duration: float, steps: int) -> int | None:
    """Equal steps up to `users` over `duration`; None when the test is over."""
    if elapsed >= duration:
        return None
    step = min(steps - 1, int(elapsed // (duration / steps)))
    return max(1, round(users * (step + 1) / steps))


def spike_users(elapsed: float, users: int, duration: float) -> int | None:
    """A quarter of `users`, all of them from 40% to 60% of `duration`, a quarter again after."""
    if elapsed >= duration:
        return None
    in_spike = 0.4 * duration <= elapsed < 0.6 * duration
    return users if in_spike else max(1, users // 4)
