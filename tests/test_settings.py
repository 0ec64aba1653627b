"""Settings come from the environment and ``.env``; bad values fail with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.settings import Settings, SettingsError, load_settings

#: Prefixes and names of every environment variable the settings read.
_OUR_VARIABLES = ("CIRCUIT_BREAKER_", "REDIS_URL", "SOULSPOT_", "LOG_LEVEL", "LOG_FORMAT")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run each test without our variables and in an empty directory (so no ``.env``)."""
    for name in list(os.environ):
        if name.startswith(_OUR_VARIABLES):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_defaults_match_the_design() -> None:
    # When nothing is configured
    settings = load_settings()

    # Then the embedded Redis is used and the breaker has the design's defaults
    assert settings.redis_url is None
    assert settings.key_prefix == "soulspot"
    assert settings.log_level == "INFO"
    assert settings.log_format == "auto"
    # (except the trial lease, which follows slskd's 10 s HTTP timeout instead of 60 s)
    assert settings.observability.circuit_breaker.config_for("slskd-api") == CircuitBreakerConfig(
        trial_lease=35.0
    )


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given every kind of setting in the environment
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6390/1")
    monkeypatch.setenv("SOULSPOT_KEY_PREFIX", "test")
    monkeypatch.setenv("LOG_LEVEL", "warning")
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setenv("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3")
    monkeypatch.setenv("CIRCUIT_BREAKER_TIMEOUT", "12.5")

    # When the settings are loaded
    settings = load_settings()

    # Then each value is taken, parsed to its type
    assert settings.redis_url == "redis://127.0.0.1:6390/1"
    assert settings.key_prefix == "test"
    assert settings.log_level == "WARNING"
    assert settings.log_format == "json"
    breaker = settings.observability.circuit_breaker
    assert breaker.failure_threshold == 3
    assert breaker.timeout == 12.5


def test_a_dotenv_file_in_the_working_directory_is_read(tmp_path: Path) -> None:
    # Given a .env file in the current directory
    (tmp_path / ".env").write_text(
        "SOULSPOT_KEY_PREFIX=fromfile\nCIRCUIT_BREAKER_SUCCESS_THRESHOLD=4\n"
        "CIRCUIT_BREAKER_SPOTIFY_API__TIMEOUT=9\n"
    )

    # When the settings are loaded
    settings = load_settings()

    # Then its values are used, the circuit breaker ones included
    assert settings.key_prefix == "fromfile"
    assert settings.observability.circuit_breaker.success_threshold == 4
    assert settings.observability.circuit_breaker.config_for("spotify-api").timeout == 9.0


def test_the_environment_wins_over_the_dotenv_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a value in both the .env file and the environment
    (tmp_path / ".env").write_text("CIRCUIT_BREAKER_FAILURE_THRESHOLD=4\n")
    monkeypatch.setenv("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "7")

    # Then the environment's is used
    assert load_settings().observability.circuit_breaker.failure_threshold == 7


def test_a_service_override_by_nested_variable_applies_to_that_service_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a timeout for slskd only
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_API__TIMEOUT", "30")
    monkeypatch.setenv("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "8")

    # When the configs of two services are built
    breakers = load_settings().observability.circuit_breaker
    slskd = breakers.config_for("slskd-api")
    spotify = breakers.config_for("spotify-api")

    # Then slskd gets its timeout on top of the shared defaults, and spotify the defaults
    assert (slskd.timeout, slskd.failure_threshold) == (30.0, 8)
    assert (spotify.timeout, spotify.failure_threshold) == (60.0, 8)


def test_a_service_override_by_json_variable_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given overrides for MusicBrainz as one JSON value
    monkeypatch.setenv(
        "CIRCUIT_BREAKER_MUSICBRAINZ_API", json.dumps({"timeout": 30, "on_backend_error": "reject"})
    )

    # When its config is built
    config = load_settings().observability.circuit_breaker.config_for("musicbrainz-api")

    # Then both overrides apply
    assert config.timeout == 30.0
    assert config.on_backend_error == "reject"


def test_an_unknown_service_gets_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a changed default
    monkeypatch.setenv("CIRCUIT_BREAKER_RESET_TIMEOUT", "100")

    # Then a service without overrides gets it
    config = load_settings().observability.circuit_breaker.config_for("lastfm-api")
    assert config.reset_timeout == 100.0


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "abc", "Input should be a valid integer"),
        ("CIRCUIT_BREAKER_TIMEOUT", "0", "greater than 0"),
        ("CIRCUIT_BREAKER_TIMEOUT_MULTIPLIER", "0.5", "greater than or equal to 1"),
        ("CIRCUIT_BREAKER_SLSKD_API__TIMEOUT", "-1", "greater than 0"),
        ("CIRCUIT_BREAKER_ON_BACKEND_ERROR", "maybe", "'allow' or 'reject'"),
        ("LOG_LEVEL", "LOUD", "'DEBUG'"),
        ("LOG_FORMAT", "xml", "'auto', 'json' or 'console'"),
    ],
)
def test_a_bad_value_fails_with_one_line_naming_the_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    # Given one invalid variable
    monkeypatch.setenv(name, value)

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then one line names the variable, its value and the reason
    message = str(raised.value)
    assert message.startswith(f"invalid setting {name}={value!r}: ")
    assert reason in message
    assert "\n" not in message
    assert isinstance(raised.value, ConfigurationError)


def test_malformed_json_override_fails_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a per-service override that is not JSON
    monkeypatch.setenv("CIRCUIT_BREAKER_SPOTIFY_API", "{timeout: 3")

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then the variable is named on one line
    assert str(raised.value).startswith("invalid setting CIRCUIT_BREAKER_SPOTIFY_API=")
    assert "\n" not in str(raised.value)


def test_contradicting_timeouts_of_a_service_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a service whose max_timeout is below the shared timeout
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_API__MAX_TIMEOUT", "10")

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then the service and the rule are named
    assert "slskd-api" in str(raised.value)
    assert "must not be below timeout" in str(raised.value)


def test_the_redacted_redis_url_hides_the_password() -> None:
    # Given a Redis URL with a password
    settings = Settings(redis_url="redis://worker:s3cret@127.0.0.1:6379/0")

    # Then the redacted form keeps everything else
    assert settings.redis_url_redacted == "redis://worker:***@127.0.0.1:6379/0"
    assert Settings(redis_url=None).redis_url_redacted is None


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soulspot_jobs.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_settings_command_prints_json_with_the_password_hidden() -> None:
    # When the settings command runs with a password in REDIS_URL
    result = _run_cli("settings", env={"REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0"})

    # Then it prints the settings as JSON without the password
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    assert printed["observability"]["circuit_breaker"]["failure_threshold"] == 5
    assert "hunter2" not in result.stdout


def test_the_cli_reports_a_bad_setting_in_one_line_and_exits_2() -> None:
    # When a command runs with an invalid variable
    result = _run_cli("settings", env={"CIRCUIT_BREAKER_FAILURE_THRESHOLD": "abc"})

    # Then it exits with 2 and one error line, without a traceback
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: invalid setting CIRCUIT_BREAKER_FAILURE_THRESHOLD='abc': "
        "Input should be a valid integer, unable to parse string as an integer"
    ]
    assert result.stdout == ""
