"""Fixtures of the fake slskd's own tests: the fake with the tests' key, and a client of it.
A module may define its own ``fake`` (other arguments), which then takes the place of this one."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from soulspot_jobs.fakes.slskd import FakeSlskd
from tests.fakes.slskd_support import KEY


@pytest.fixture
def fake() -> Iterator[FakeSlskd]:
    """A fake slskd with the tests' key and downloads of 0.3 s."""
    with FakeSlskd(api_key=KEY, transfer_duration=0.3) as server:
        yield server


@pytest.fixture
def http(fake: FakeSlskd) -> Iterator[httpx.Client]:
    """An HTTP client of ``fake`` carrying the key."""
    with httpx.Client(base_url=fake.url, headers={"X-API-Key": KEY}, timeout=5) as client:
        yield client
