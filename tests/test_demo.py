"""The README's first command runs this demo: it must finish every job it starts."""

from __future__ import annotations

import pytest

from soulspot_jobs import demo
from soulspot_jobs.settings import load_settings


def test_the_demo_imports_a_playlist_survives_an_slskd_outage_and_finishes_every_job(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the settings a user has, on the test Redis
    settings = load_settings(REDIS_URL=redis_url)

    # When the demo runs
    status = demo.run(settings)

    # Then it succeeded, showed deferred slskd jobs during the outage and every job done after
    out = capsys.readouterr().out
    assert status == 0
    assert "Deferred jobs" in out
    assert "slskd-api" in out
    assert "a MusicBrainz job finished meanwhile: done" in out
    assert out.count(" done ") >= 5
