"""Settings come from the environment and ``.env``; bad values fail with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from soulspot_jobs import __version__
from soulspot_jobs.circuit_breaker.config import CircuitBreakerConfig
from soulspot_jobs.errors import ConfigurationError
from soulspot_jobs.settings import Settings, SettingsError, load_settings

#: Prefixes and names of every environment variable the settings read.
_OUR_VARIABLES = (
    "CIRCUIT_BREAKER_",
    "REDIS_URL",
    "SOULSPOT_",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "SLSKD_",
    "MUSICBRAINZ_",
    "SPOTIFY_",
)


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
        ("CIRCUIT_BREAKER_SLSKD_PEER__TIMEOUT", "0", "greater than 0"),
        ("SLSKD_PEER_MAX_EJECTION_PERCENT", "150", "less than or equal to 100"),
        ("SLSKD_PEER_IDLE_EXPIRY", "-1", "greater than 0"),
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
        [sys.executable, "-m", "soulspot_jobs.operate.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_settings_command_prints_json_with_the_password_hidden() -> None:
    # When the settings command runs with --json and a password in REDIS_URL
    result = _run_cli("settings", "--json", env={"REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0"})

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


@pytest.mark.parametrize(
    "variable", ["SLSKD_URL", "MUSICBRAINZ_URL", "SPOTIFY_API_URL", "SPOTIFY_ACCOUNTS_URL"]
)
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("not-a-url", "must be an http:// or https:// URL"),
        ("ftp://files.example", "must be an http:// or https:// URL"),
        ("127.0.0.1:5030", "must be an http:// or https:// URL"),
        ("http://", "has no host"),
        ("https:///path", "has no host"),
        ("http://host:99999", "port is not a number from 0 to 65535"),
        ("http://host:port", "port is not a number from 0 to 65535"),
        ("http://host name", "must not contain spaces"),
    ],
)
def test_an_upstream_url_must_be_http_with_a_host(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, reason: str
) -> None:
    # Given an upstream URL that no HTTP client could use
    monkeypatch.setenv(variable, value)

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then start-up stops with one line naming the variable, the value and what is expected
    message = str(raised.value)
    assert message.startswith(f"invalid setting {variable}={value!r}: {reason}")
    assert "http(s)://" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "value",
    [
        "http://127.0.0.1:5030",
        "https://musicbrainz.org",
        "http://user:p%40ss@slskd.lan:5030/base/",
        "http://[::1]:5030",
        "HTTPS://API.SPOTIFY.COM",
    ],
)
def test_a_usable_upstream_url_is_kept_as_given(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("SLSKD_URL", value)
    assert str(load_settings().slskd.url) == value


@pytest.mark.parametrize(
    "value",
    [
        "redis://127.0.0.1",
        "redis://:pw@127.0.0.1:6379/0",
        "redis://worker:pw@redis.lan:6380/15",
        "rediss://redis.example:6380",
        "unix:///run/redis/redis.sock",
        "unix://:pw@/run/redis/redis.sock?db=2",
    ],
)
def test_a_usable_redis_url_is_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("REDIS_URL", value)
    assert str(load_settings().redis_url) == value


@pytest.mark.parametrize(
    ("value", "shown", "reason"),
    [
        ("notaurl", "notaurl", "must be redis://"),
        ("http://127.0.0.1:6379", "http://127.0.0.1:6379", "must be redis://"),
        ("redis://", "redis://", "has no host"),
        ("redis://:hunter2@/0", "redis://:***@/0", "has no host"),
        ("redis://:hunter2@h:99999/0", "redis://:***@h:99999/0", "port is not a number"),
        ("redis://:hunter2/x@h/0", "redis://:***@h/0", "port is not a number"),
        ("redis://127.0.0.1/zero", "redis://127.0.0.1/zero", "database 'zero' is not a number"),
        ("unix://", "unix://", "has no socket path"),
        ("unix:///run/redis.sock?db=one", "unix:///run/redis.sock?db=one", "database 'one'"),
    ],
)
def test_an_unusable_redis_url_is_refused_with_its_password_hidden(
    monkeypatch: pytest.MonkeyPatch, value: str, shown: str, reason: str
) -> None:
    # Given a REDIS_URL redis-py could not connect by, maybe with a password in it
    monkeypatch.setenv("REDIS_URL", value)

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then one line names the variable and the value, without the password
    message = str(raised.value)
    assert message.startswith(f"invalid setting REDIS_URL={shown!r}: {reason}")
    assert "hunter2" not in message
    assert "\n" not in message


def test_a_bad_field_in_a_json_override_is_reported_under_the_variable_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a per-service override in its JSON form with a bad field
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_API", '{"timeout": 0}')

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then the error names the variable the user set, its value and the field
    assert str(raised.value) == (
        "invalid setting CIRCUIT_BREAKER_SLSKD_API='{\"timeout\": 0}' (field timeout): "
        "Input should be greater than 0"
    )


def test_a_bad_json_override_in_the_dotenv_file_is_reported_under_its_variable(
    tmp_path: Path,
) -> None:
    # Given the JSON form of an override, in lower case, in the .env file
    (tmp_path / ".env").write_text(
        'circuit_breaker_musicbrainz_api={"failure_threshold": "many"}\n'
    )

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then the variable, its value and the field are named
    assert str(raised.value).startswith(
        'invalid setting CIRCUIT_BREAKER_MUSICBRAINZ_API=\'{"failure_threshold": "many"}\' '
        "(field failure_threshold): Input should be a valid integer"
    )


def test_repr_and_json_of_the_settings_hide_every_secret() -> None:
    # Given settings with a password in each URL, an API key and a client secret
    settings = load_settings(
        REDIS_URL="redis://:redis-pw-1@127.0.0.1:6379/0",
        slskd={"url": "http://u:slskd-pw-2@127.0.0.1:5030", "api_key": "slskd-key-3"},
        musicbrainz={"url": "https://u:mb-pw-4@mb.example"},
        spotify={
            "api_url": "https://u:api-pw-5@api.example",
            "accounts_url": "https://u:acc-pw-6@accounts.example",
            "client_secret": "spotify-secret-7",
            "refresh_token": "refresh-token-8",
        },
    )
    secrets = ["redis-pw-1", "slskd-pw-2", "slskd-key-3", "mb-pw-4", "api-pw-5", "acc-pw-6"]
    secrets += ["spotify-secret-7", "refresh-token-8"]

    # When they are represented or dumped as JSON
    shown = [repr(settings), str(settings), settings.model_dump_json(), repr(settings.slskd)]

    # Then no secret is in any of them, and URLs keep everything but the password
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert "http://u:***@127.0.0.1:5030" in repr(settings)
    assert json.loads(settings.model_dump_json())["redis_url"] == "redis://:***@127.0.0.1:6379/0"
    # And the clients still get the real values
    assert str(settings.slskd.url) == "http://u:slskd-pw-2@127.0.0.1:5030"
    assert f"{settings.redis_url}" == "redis://:redis-pw-1@127.0.0.1:6379/0"
    assert set(settings.secret_values()) == set(secrets)


def test_a_percent_encoded_url_password_is_a_secret_in_both_forms() -> None:
    settings = load_settings(slskd={"url": "http://u:p%40ss%2Fw0rd@127.0.0.1:5030"})
    assert {"p%40ss%2Fw0rd", "p@ss/w0rd"} <= set(settings.secret_values())


def test_the_settings_command_prints_what_is_set_then_the_defaults() -> None:
    # When the settings command runs with a few variables set, secrets among them
    result = _run_cli(
        "settings",
        env={
            "SLSKD_URL": "http://admin:hunter2@slskd.lan:5030",
            "SLSKD_API_KEY": "k3y-that-is-secret",
            "CIRCUIT_BREAKER_SLSKD_API": '{"timeout": 30}',
        },
    )

    # Then it lists what was set, then the defaults in force, without nulls or secrets
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    defaults = lines.index("# Defaults")
    assert lines[:defaults] == [
        "# Set in the environment or .env",
        "CIRCUIT_BREAKER_SLSKD_API__TIMEOUT=30.0",
        "SLSKD_URL=http://admin:***@slskd.lan:5030",
        "SLSKD_API_KEY=**********",
    ]
    assert "# REDIS_URL unset: an embedded redis-server is used" in lines
    assert "CIRCUIT_BREAKER_FAILURE_THRESHOLD=5" in lines
    assert "MUSICBRAINZ_URL=https://musicbrainz.org" in lines
    assert lines[-1] == (
        "# Empty: SOULSPOT_ADMIN_TOKEN, SPOTIFY_CLIENT_ID, SPOTIFY_CLIENT_SECRET, "
        "SPOTIFY_REFRESH_TOKEN"
    )
    assert "null" not in result.stdout
    assert "hunter2" not in result.stdout and "k3y-that-is-secret" not in result.stdout
    # one line per setting in force: no nulls, no nested dumps, none twice
    assert all(line.startswith("#") or line.count("=") >= 1 for line in lines)
    assert not [line for line in lines if line.endswith(("={}", "=None"))]
    assert len(lines) <= len(set(lines)), "a setting is listed twice"


def test_the_settings_command_json_hides_secrets_too() -> None:
    # When the JSON form is asked for with secrets set
    result = _run_cli(
        "settings",
        "--json",
        env={
            "SLSKD_URL": "http://admin:hunter2@slskd.lan",
            "SPOTIFY_CLIENT_SECRET": "s3cr3t-v4lue",
        },
    )

    # Then every setting is there, secrets hidden
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["slskd"]["url"] == "http://admin:***@slskd.lan"
    assert printed["spotify"]["client_secret"] == "**********"
    assert printed["circuit_breakers"]["slskd-api"]["failure_threshold"] == 5
    assert "hunter2" not in result.stdout and "s3cr3t-v4lue" not in result.stdout


def test_the_cli_prints_its_version() -> None:
    result = _run_cli("--version", env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"soulspot-jobs {__version__}\n"


def test_the_cli_reports_a_bad_url_in_one_line_with_the_password_hidden() -> None:
    # When a command runs with an unusable REDIS_URL holding a password
    result = _run_cli("settings", env={"REDIS_URL": "redis://:hunter2@:6379/0"})

    # Then one line, exit status 2, no password
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "error: invalid setting REDIS_URL='redis://:***@:6379/0': has no host: "
        "redis://[:password@]host[:port][/db], rediss://... or unix:///path/to/socket"
    ]


def test_the_peer_breakers_have_their_own_defaults_and_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a peer override, a shared breaker default, and the peers' own settings
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_PEER__FAILURE_THRESHOLD", "4")
    monkeypatch.setenv("CIRCUIT_BREAKER_TIMEOUT", "30")
    monkeypatch.setenv("SLSKD_PEER_MAX_EJECTION_PERCENT", "25")
    monkeypatch.setenv("SLSKD_PEER_IDLE_EXPIRY", "3600")

    # When the settings are loaded
    settings = load_settings()
    breakers = settings.observability.circuit_breaker

    # Then the peers take their override on the peer defaults, not the services' defaults
    peer = breakers.peer_config()
    assert (peer.failure_threshold, peer.timeout, peer.max_timeout) == (4, 600.0, 21600.0)
    assert breakers.config_for("slskd-api").failure_threshold == 5
    assert breakers.config_for("slskd-api").timeout == 30.0
    assert (settings.slskd.peer_max_ejection_percent, settings.slskd.peer_idle_expiry) == (
        25.0,
        3600.0,
    )


def test_contradicting_timeouts_of_the_peers_are_refused_naming_their_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a peer max_timeout below the peers' timeout (600 s)
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_PEER__MAX_TIMEOUT", "60")

    # When the settings are loaded
    with pytest.raises(SettingsError) as raised:
        load_settings()

    # Then one line names the peers' variable and the rule
    message = str(raised.value)
    assert message.startswith("invalid setting CIRCUIT_BREAKER_SLSKD_PEER")
    assert "must not be below timeout (600.0)" in message
    assert "\n" not in message
