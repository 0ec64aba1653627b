"""Fixtures of the engine tests: one real RabbitMQ node per session.

Without a ``rabbitmq-server`` on this machine the RabbitMQ tests fail with the reason (they are
never skipped): ``make test`` leaves them out on such a machine and says so in its output.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.jobs.conftest import fakes  # noqa: F401 - the fake upstreams, for the job chain
from tests.rabbitmq_server import EmbeddedRabbitMQ, RabbitMQServerError


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[EmbeddedRabbitMQ]:
    """A RabbitMQ node of the test session's own on loopback, stopped when the session ends."""
    try:
        server = EmbeddedRabbitMQ().start()
    except RabbitMQServerError as exc:
        pytest.fail(f"RabbitMQ tests cannot run: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()
