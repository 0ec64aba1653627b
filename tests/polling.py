"""Waiting for conditions that announce themselves with no event (a fake's timed behaviour, a
job record, a key in Redis): poll with a deadline, never an open-ended sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds between two looks.
INTERVAL = 0.02
#: Default seconds to wait before failing.
DEADLINE = 20.0


def wait_until(
    condition: Callable[[], Any], what: str = "condition", timeout: float = DEADLINE
) -> None:
    """Poll ``condition`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(INTERVAL)


def poll(read: Callable[[], T], done: Callable[[T], Any], timeout: float = 5.0) -> T:
    """Read until ``done(value)`` or ``timeout`` seconds passed; return the last value read."""
    deadline = time.monotonic() + timeout
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(INTERVAL)
