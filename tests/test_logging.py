"""Log lines: one JSON shape for structlog and stdlib loggers, secrets never written."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from soulspot_jobs.logging import REDACTED, configure_logging, redact
from soulspot_jobs.settings import Settings


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo each test's logging configuration so other tests see the defaults."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def _json_logging(level: str = "INFO") -> io.StringIO:
    """Configure JSON logging into a buffer and return the buffer."""
    stream = io.StringIO()
    configure_logging(Settings(log_format="json", log_level=level), stream=stream)
    return stream


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_has_level_message_and_fields() -> None:
    # Given JSON logging
    stream = _json_logging()

    # When a breaker event is logged
    structlog.get_logger("soulspot_jobs.circuit_breaker").warning(
        "Circuit breaker slskd-api is OPEN", circuit_breaker="slskd-api", state="open"
    )

    # Then the line has the documented shape
    [line] = _lines(stream)
    assert line["level"] == "WARNING"
    assert line["message"] == "Circuit breaker slskd-api is OPEN"
    assert line["circuit_breaker"] == "slskd-api"
    assert line["state"] == "open"
    assert line["timestamp"].endswith("Z")
    assert "event" not in line


def test_an_event_name_becomes_the_event_field_beside_the_message() -> None:
    # Given JSON logging
    stream = _json_logging()

    # When a line is logged with a machine-readable event name
    structlog.get_logger().info(
        "Circuit breaker spotify-api transitioned to HALF_OPEN state.",
        event_name="circuit_breaker.half_open",
    )

    # Then the sentence is the message and the name is the event
    [line] = _lines(stream)
    assert line["message"] == "Circuit breaker spotify-api transitioned to HALF_OPEN state."
    assert line["event"] == "circuit_breaker.half_open"
    assert "event_name" not in line


def test_bound_context_variables_are_added_to_each_line() -> None:
    # Given JSON logging and a job id bound to the context
    stream = _json_logging()

    # When something is logged inside that context
    with structlog.contextvars.bound_contextvars(job_id="j-1"):
        structlog.get_logger().info("job started")

    # Then the line carries the job id
    assert _lines(stream)[0]["job_id"] == "j-1"


def test_secret_fields_and_url_passwords_are_redacted() -> None:
    # Given JSON logging
    stream = _json_logging()

    # When secrets are logged as fields, nested, and inside URLs
    structlog.get_logger().info(
        "connecting to redis://:hunter2@127.0.0.1:6379/0",
        password="p",
        spotify_api_key="k",
        Authorization="Bearer t",
        client={"access_token": "t", "url": "https://bob:pw@api.example/v1"},
        redis_url="redis://worker:hunter2@127.0.0.1:6379/0",
    )

    # Then none of them is written, and the rest of each URL is kept
    text = stream.getvalue()
    for secret in ("hunter2", "Bearer t", '"p"', '"k"', "bob:pw"):
        assert secret not in text
    [line] = _lines(stream)
    assert line["message"] == "connecting to redis://:***@127.0.0.1:6379/0"
    assert line["password"] == line["spotify_api_key"] == line["Authorization"] == REDACTED
    assert line["client"] == {"access_token": REDACTED, "url": "https://bob:***@api.example/v1"}
    assert line["redis_url"] == "redis://worker:***@127.0.0.1:6379/0"


def test_stdlib_loggers_are_rendered_as_the_same_json() -> None:
    # Given JSON logging
    stream = _json_logging()

    # When a stdlib logger (as Dramatiq's) logs with %-arguments and extra fields
    logging.getLogger("dramatiq.worker.Worker").warning(
        "Worker %s lost its broker", "w-1", extra={"token": "t", "attempt": 2}
    )

    # Then it is one JSON line of the same shape
    [line] = _lines(stream)
    assert line["level"] == "WARNING"
    assert line["message"] == "Worker w-1 lost its broker"
    assert line["logger"] == "dramatiq.worker.Worker"
    assert line["attempt"] == 2
    assert line["token"] == REDACTED


def test_lines_below_the_configured_level_are_dropped() -> None:
    # Given JSON logging at WARNING
    stream = _json_logging("WARNING")

    # When lines are logged at INFO and at ERROR through both kinds of logger
    structlog.get_logger().info("hidden")
    logging.getLogger("dramatiq").info("hidden too")
    structlog.get_logger().error("shown")

    # Then only the error is written
    assert [line["message"] for line in _lines(stream)] == ["shown"]


def test_configuring_twice_keeps_one_handler() -> None:
    # When logging is configured twice
    _json_logging()
    stream = _json_logging()
    structlog.get_logger().info("once")

    # Then each line is written once, by the latest handler
    assert len(_lines(stream)) == 1


def test_auto_format_writes_json_when_not_on_a_terminal() -> None:
    # Given the automatic format and a stream that is not a terminal
    stream = io.StringIO()
    configure_logging(Settings(log_format="auto"), stream=stream)

    # When a line is logged
    structlog.get_logger().info("piped")

    # Then it is JSON
    assert _lines(stream)[0]["message"] == "piped"


def test_console_format_writes_readable_lines_without_secrets() -> None:
    # Given the console format
    stream = io.StringIO()
    configure_logging(Settings(log_format="console"), stream=stream)

    # When a line with a secret is logged
    structlog.get_logger().info("console line", token="abc")

    # Then it is one readable line with the secret redacted
    text = stream.getvalue()
    assert "console line" in text and REDACTED in text and "abc" not in text


def test_capture_logs_still_works_after_configuration() -> None:
    # Given configured logging
    _json_logging()

    # When logs are captured in a test
    with structlog.testing.capture_logs() as captured:
        structlog.get_logger().warning("tripped", circuit_breaker="spotify-api")

    # Then the event is captured
    assert captured == [
        {"event": "tripped", "circuit_breaker": "spotify-api", "log_level": "warning"}
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("amqp://user:p@ss@host/vhost", "amqp://user:***@host/vhost"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("https://user@host/path", "https://user@host/path"),
        ({"api_key": "k", "n": 3}, {"api_key": REDACTED, "n": 3}),
        (["x", ("unix://:pw@/tmp/sock",)], ["x", ("unix://:***@/tmp/sock",)]),
        (42, 42),
    ],
)
def test_redact_hides_passwords_and_secret_keys(value: object, expected: object) -> None:
    assert redact(value) == expected


def test_a_known_secret_is_masked_even_inside_a_traceback_and_a_foreign_message() -> None:
    # Given JSON logging with settings holding an API key and a URL password
    stream = io.StringIO()
    settings = Settings(
        log_format="json",
        slskd={"url": "http://admin:Pa55word-x@127.0.0.1:5030", "api_key": "key-abcdef-123"},
    )
    configure_logging(settings, stream=stream)

    # When a library logs the key in its message and an exception carries both in a traceback
    logging.getLogger("somelib").warning("sent X-API-Key=%s", "key-abcdef-123")
    try:
        raise RuntimeError("login admin/Pa55word-x with key-abcdef-123 refused")
    except RuntimeError:
        structlog.get_logger().exception("upstream refused")

    # Then neither secret is written, while the rest of each line is
    text = stream.getvalue()
    assert "key-abcdef-123" not in text and "Pa55word-x" not in text
    first, second = _lines(stream)
    assert first["message"] == "sent X-API-Key=***"
    assert "RuntimeError: login admin/*** with *** refused" in second["exception"]


def test_a_url_password_in_an_exception_is_masked() -> None:
    # Given JSON logging without any known secret
    stream = _json_logging()

    # When an exception whose text holds a URL with a password is logged
    try:
        raise ConnectionError("cannot reach http://bob:unknown-pw@10.0.0.1/")
    except ConnectionError:
        logging.getLogger("httpx").exception("request failed")

    # Then the password is masked in the rendered traceback
    assert "unknown-pw" not in stream.getvalue()
    assert "http://bob:***@10.0.0.1/" in _lines(stream)[0]["exception"]


def test_a_stream_handler_already_writing_to_the_same_stream_is_replaced() -> None:
    # Given a root handler in another format on the stream (as Dramatiq's worker command
    # installs with basicConfig) and one on another stream
    stream, other = io.StringIO(), io.StringIO()
    root = logging.getLogger()
    theirs = logging.StreamHandler(stream)
    theirs.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    elsewhere = logging.StreamHandler(other)
    root.addHandler(theirs)
    root.addHandler(elsewhere)

    # When logging is configured on that stream and a record is logged
    configure_logging(Settings(log_format="json"), stream=stream)
    logging.getLogger("dramatiq.WorkerProcess(0)").info("Worker process is ready for action.")

    # Then it is written once on that stream, as our JSON; the other stream keeps its handler
    [line] = _lines(stream)
    assert line["message"] == "Worker process is ready for action."
    assert theirs not in root.handlers
    assert elsewhere in root.handlers
    assert other.getvalue() == "Worker process is ready for action.\n"


def test_a_short_secret_is_left_to_the_other_redaction() -> None:
    # Given a very short API key (masking every "abc" in every line would garble the logs)
    stream = io.StringIO()
    configure_logging(Settings(log_format="json", slskd={"api_key": "abc"}), stream=stream)

    # When a line happens to hold those letters
    structlog.get_logger().info("abcdef")

    # Then it is written as is
    assert _lines(stream)[0]["message"] == "abcdef"


def test_a_console_traceback_shows_no_local_variable_holding_a_secret() -> None:
    # Given the console format and a long API key in the settings
    key = "k" * 50 + "-long-api-key-" + "z" * 50
    stream = io.StringIO()
    configure_logging(Settings(log_format="console", slskd={"api_key": key}), stream=stream)

    # When an exception is logged from a frame whose locals hold the key and a prefix of it
    def send(headers: dict[str, str], prefix: str) -> None:
        raise ConnectionError("upstream closed the connection")

    try:
        send({"X-API-Key": key}, key[:60])
    except ConnectionError:
        structlog.get_logger().exception("request failed")

    # Then the traceback is written, but no part of the key
    text = stream.getvalue()
    assert "ConnectionError: upstream closed the connection" in text
    assert "kkkkkkkkkk" not in text and "long-api-key" not in text
