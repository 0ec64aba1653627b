"""The window and slow-call settings, read from the environment like every breaker setting:
``CIRCUIT_BREAKER_<FIELD>`` for every service, ``CIRCUIT_BREAKER_<SERVICE>__<FIELD>`` for one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from soulspot_jobs.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No breaker variables of the machine's, and no ``.env``."""
    for name in list(os.environ):
        if name.startswith("CIRCUIT_BREAKER_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_the_default_is_the_designs_consecutive_count() -> None:
    config = load_settings().observability.circuit_breaker.config_for("slskd-api")
    assert config.sliding_window_type == "consecutive" and not config.windowed
    assert (config.sliding_window_size, config.minimum_calls) == (100, 10)
    assert (config.failure_rate_threshold, config.slow_call_rate_threshold) == (50.0, 100.0)
    assert config.slow_call_duration is None


def test_windows_and_slow_calls_are_read_for_every_service_and_per_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIRCUIT_BREAKER_SLIDING_WINDOW_TYPE", "count")
    monkeypatch.setenv("CIRCUIT_BREAKER_SLIDING_WINDOW_SIZE", "50")
    monkeypatch.setenv("CIRCUIT_BREAKER_MINIMUM_CALLS", "20")
    monkeypatch.setenv("CIRCUIT_BREAKER_FAILURE_RATE_THRESHOLD", "40")
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_API__SLIDING_WINDOW_TYPE", "time")
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_API__SLIDING_WINDOW_SIZE", "120")
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_API__SLOW_CALL_DURATION", "20")
    monkeypatch.setenv("CIRCUIT_BREAKER_SLSKD_API__SLOW_CALL_RATE_THRESHOLD", "60")

    breakers = load_settings().observability.circuit_breaker
    spotify, slskd = breakers.config_for("spotify-api"), breakers.config_for("slskd-api")

    assert (spotify.sliding_window_type, spotify.sliding_window_size) == ("count", 50)
    assert (spotify.minimum_calls, spotify.failure_rate_threshold) == (20, 40.0)
    assert (slskd.sliding_window_type, slskd.sliding_window_size) == ("time", 120)
    assert (slskd.slow_call_duration, slskd.slow_call_rate_threshold) == (20.0, 60.0)
    assert slskd.minimum_calls == 20


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("CIRCUIT_BREAKER_SLIDING_WINDOW_TYPE", "ring", "'consecutive', 'count' or 'time'"),
        ("CIRCUIT_BREAKER_FAILURE_RATE_THRESHOLD", "150", "less than or equal to 100"),
        ("CIRCUIT_BREAKER_MINIMUM_CALLS", "0", "greater than 0"),
        ("CIRCUIT_BREAKER_SPOTIFY_API__SLOW_CALL_DURATION", "-2", "greater than 0"),
    ],
)
def test_a_bad_window_value_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value).startswith(f"invalid setting {name}={value!r}: ")
    assert reason in str(raised.value)


def test_slow_calls_without_a_window_are_refused_naming_the_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIRCUIT_BREAKER_MUSICBRAINZ_API__SLOW_CALL_DURATION", "5")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "musicbrainz-api" in str(raised.value)
    assert "needs a sliding window" in str(raised.value)
